"""Keeps TensorFlow's start-up and library chatter off a command's output.

Call `quiet_tensorflow` before TensorFlow is imported.  TensorFlow's C++ logs
obey TF_CPP_MIN_LOG_LEVEL once its logging is initialised, but a few lines
(oneDNN, CUDA probes on a CPU machine) are written while the library loads,
before that: the import runs with the process's stderr pointed at /dev/null.
"""

import contextlib
import os
import sys


@contextlib.contextmanager
def _stderr_to_devnull():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_tensorflow(verbose=False):
    """Imports TensorFlow (and TFDS) quietly unless `verbose`; sets the log levels."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _stderr_to_devnull():
        import tensorflow as tf
        import tensorflow_datasets  # noqa: F401  (its import logs too)
    from absl import logging

    logging.set_verbosity(logging.ERROR)
    tf.get_logger().setLevel("ERROR")
