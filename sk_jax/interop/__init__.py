"""PyTorch interop: weight port, the PyTorch reference, parity checks."""
