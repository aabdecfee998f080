"""aeexp's Optuna sweeper for Hydra (``hydra/sweeper=aeexp_optuna``): a persistent, pruning study on Optuna's
ask-and-tell API. Hydra finds it in the ``hydra_plugins`` namespace; its logic lives in :mod:`aeexp.optuna_search`."""
