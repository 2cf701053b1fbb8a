"""Readers of the records a training run leaves in its directory (no TensorFlow)."""

import csv


def read_history(path):
    """history.csv as a list of {column: float} per epoch."""
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
