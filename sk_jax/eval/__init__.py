"""Evaluation: the paper's metrics, the compared methods, the report."""
