"""What the benchmark scripts share: writing a report beside the command that
produced it.  (A run's records are read with `ssl_dgm.rundir`, which imports no
TensorFlow.)"""

import json
import os
import shlex
import sys

from absl import flags


def command_line(module=None):
    """The running command, as a shell would retype it: ``python -m MODULE ...`` for a
    module run with -m (whose argv[0] would be its file's absolute path)."""
    program = ["-m", module] if module else [sys.argv[0]]
    return " ".join(["python", *program, *(shlex.quote(a) for a in sys.argv[1:])])


def write_report(output, text, record):
    """Writes OUTPUT.md (`text`) and OUTPUT.json (`record`) and prints the text."""
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    with open(output + ".md", "w") as f:
        f.write(text)
    with open(output + ".json", "w") as f:
        json.dump(record, f, indent=2)
    print(text)


def define_output(default):
    """Defines ``--output`` with `default`, once per process: absl refuses a flag defined
    twice, and tests import several benchmarks into one process (there the first
    import's default stands; each command line runs one benchmark and gets its own)."""
    if "output" not in flags.FLAGS:
        flags.DEFINE_string("output", default, "Writes OUTPUT.md and OUTPUT.json.")
