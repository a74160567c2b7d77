"""Training configs: default.py (the paper's recipe) and variants that import it."""
