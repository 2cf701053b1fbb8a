import os

import pytest

import ssl_dgm  # noqa: F401  (selects the TensorFlow backend before keras is imported)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mnist_dir():
    """The real MNIST prepared for TFDS, if this machine has it (else None)."""
    for candidate in (os.environ.get("TFDS_DATA_DIR"),
                      os.path.join(ROOT, "..", "shared", "tensorflow_datasets")):
        if candidate and os.path.isdir(os.path.join(candidate, "mnist")):
            return os.path.abspath(candidate)
    return None


@pytest.fixture
def mnist_data_dir():
    path = mnist_dir()
    if path is None:
        pytest.skip("real MNIST not found: set TFDS_DATA_DIR or place it in "
                    "../shared/tensorflow_datasets")
    return path
