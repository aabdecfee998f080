"""Codes -> numbers and pictures, one pipeline shared by a run and ``aeexp evaluate``.

:mod:`.metrics` (the metrics of the codes and their numeric kernels), :mod:`.views` (2-D views of the codes),
:mod:`.lists` (the metric and view lists of a config, built from their ``_target_`` entries), :mod:`.baseline` (PCA
of the same size through the same metric list), :mod:`.pipeline` (a model's codes measured and viewed, each step
guarded), :mod:`.figures` (pure plotting) and :mod:`.pictures` (a run's figures and pages as files). Nothing is
imported here, and nothing here imports :mod:`aeexp.training`.
"""

# Files of a run that other commands read (the sweep report, ``aeexp evaluate``).
EXPLORER = "explorer.html"  # the interactive page of the first 2-D view
RECONSTRUCTIONS = "reconstructions.npz"  # the example test images and the model's outputs: the report's panel
