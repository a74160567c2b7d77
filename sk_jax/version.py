"""The package version (sk_jax.__version__; written into every report)."""

__version__ = "0.1.0"
