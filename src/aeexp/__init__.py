"""aeexp: config-driven autoencoder experiments on MNIST-family images, tracked in MLflow."""

__version__ = "0.1.0"
