"""Datasets: C4-format pre-training text and GLUE."""
