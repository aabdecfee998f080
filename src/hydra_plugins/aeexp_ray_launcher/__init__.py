"""aeexp's Ray launcher for Hydra (``hydra/launcher=ray``): each job of a sweep as a Ray task, on a local Ray
instance or a running cluster, through Ray's public API (``ray.init``, ``ray.remote``, ``ray.get``)."""
