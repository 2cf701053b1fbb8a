"""The run folder: what produced a run, what it scored, and who is writing it.

    config.json            the composed `configs.ExperimentConfig` (schema-versioned)
    commands.txt           every command that ran in this folder, resumes included
    machines.txt           for each of those commands: when it started, and on what CPU
    labeled_indices.json   which training images carried labels
    checkpoints/           tf.train checkpoints (weights by path, optimizer, epoch, time)
    history.csv            per epoch: training minutes, seconds, train and validation metrics
    results.json           final errors, written last: its presence marks a finished run
    m1/                    the M1 stage of an m1 / m1m2 run (the same layout, plus
                           m1.weights.h5; its results.json describes the M1)
    .lock                  held by the process training in the folder

Records are written whole (a temporary file, then one rename; commands.txt,
machines.txt and history.csv are appended a line at a time) with the
permissions the process's umask gives, so a reader never sees half a record and
a server running as another user can read what it needs.  TensorBoard's ``logs/`` sit beside them.
This module imports no TensorFlow.
"""

import csv
import errno
import fcntl
import fnmatch
import json
import os
import platform
import tempfile
import time

from ssl_dgm import configs

CONFIG = "config.json"
COMMANDS = "commands.txt"
MACHINES = "machines.txt"
RESULTS = "results.json"
M1_WEIGHTS = "m1.weights.h5"
LOCK = ".lock"

# Fields a resumed run may change: where the data lives, how the steps run, how
# long the stages train, which split is reported.
RESUMABLE = ("data.data_dir", "data.eval_split", "runtime.*",
             "*.optimization.epochs", "*.optimization.time_budget_minutes")
# Fields that may differ between a finished run and a description of it: where it
# was trained from, not what was trained or reported.
PLACEMENT = ("data.data_dir", "runtime.*", "m1_dir")


def _read_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once, at import: reading it means setting it, which must not race other threads.
_UMASK = _read_umask()


def umask():
    """The process's umask."""
    return _UMASK


def file_mode():
    """``0666 & ~umask``: the mode `open` gives a new file in this process."""
    return 0o666 & ~umask()


def atomic_write(path, text):
    """Writes `path` so that readers see the old or the new content, never a part.

    The file gets ``0666 & ~umask`` (0644 under umask 022), as `open` would give it.
    """
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp",
                                     prefix=".") as f:
        try:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), file_mode())
        except BaseException:
            os.unlink(f.name)
            raise
    os.replace(f.name, path)


def write_json(path, obj):
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path):
    """The JSON in `path`; a damaged file is a ValueError that names it."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}); "
                         f"restore it or remove the run folder") from None


def read_history(path):
    """history.csv's rows as dicts of floats; a torn last line (a kill mid-write) is
    dropped.  Values an epoch did not measure (``val_*`` between validation passes)
    are empty in the file and absent from its dict."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = []
    for row in rows:
        try:
            kept.append({k: float(v) for k, v in row.items() if v != ""})
        except (TypeError, ValueError):
            break
    return kept


def is_finished(folder):
    return os.path.exists(os.path.join(folder, RESULTS))


def read_config(folder):
    """The `ExperimentConfig` a run folder records."""
    path = os.path.join(folder, CONFIG)
    try:
        return configs.from_dict(read_json(path))
    except configs.ConfigError as error:
        raise ValueError(f"{path}: {error}") from None


def _matches(path, patterns):
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def differences(stored, wanted, free=RESUMABLE):
    """``[(path, stored value, wanted value)]`` of the leaves that differ, outside `free`."""
    old, new = configs.flatten(stored), configs.flatten(wanted)
    return [(path, old.get(path), new.get(path)) for path in sorted(set(old) | set(new))
            if not _matches(path, free) and old.get(path) != new.get(path)]


def describe(differing):
    """`differences`' output as one line: ``path: old there, new now, ...``."""
    return ", ".join(f"{path}: {old!r} there, {new!r} now" for path, old, new in differing)


def check_same_config(folder, config, free=RESUMABLE):
    """Raises ValueError if `folder` holds a run made with other settings.

    Fields matching a pattern of `free` may differ (by default those a resumed run
    may change; `PLACEMENT` to check that a finished run is the one `config`
    describes); a folder without config.json passes.
    """
    if not os.path.exists(os.path.join(folder, CONFIG)):
        return
    differing = differences(read_config(folder), config, free)
    if differing:
        raise ValueError(f"{folder} holds a run made with other settings ({describe(differing)}); "
                         f"use a new run folder, or the same settings to resume it")


class FolderLock:
    """An exclusive lock on a run folder, held while the object lives.

    `fcntl.flock` locks belong to the open file: the OS releases them when the
    process ends, however it ends, so a killed run leaves no stale lock.
    """

    def __init__(self, folder):
        self.path = os.path.join(folder, LOCK)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise ValueError(f"cannot lock {folder} ({error.strerror})") from None
            raise ValueError(f"{folder} is in use by process {holder}; wait for it to "
                             f"finish or use another folder") from None
        try:
            self.file.seek(0)
            self.file.truncate()
            self.file.write(str(os.getpid()))
            self.file.flush()
        except BaseException:
            self.file.close()
            raise

    def release(self):
        if not self.file.closed:
            self.file.close()


def lock(folder):
    """Creates (or reopens) the run folder and locks it; returns the `FolderLock`."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"the run folder {folder} is a file; give a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the run folder {folder}: {error.strerror}; "
                         f"choose a writable one") from None
    if not os.access(folder, os.W_OK):
        raise ValueError(f"the run folder {folder} is not writable; choose another")
    return FolderLock(folder)


def machine():
    """This machine as a run records it: its CPU's model name and core count, e.g.
    ``AMD EPYC, 2 cores`` (the architecture where the OS names no model)."""
    name = None
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), None)
    except OSError:
        pass
    return f"{name or platform.machine() or 'unknown CPU'}, {os.cpu_count()} cores"


def _lines(path):
    try:
        with open(path) as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except FileNotFoundError:
        return []


def commands(folder):
    """The commands that ran in `folder` (commands.txt), oldest first; ``[]`` if none."""
    return _lines(os.path.join(folder, COMMANDS))


def machines(folder):
    """The machines that trained in `folder` (`machine`'s text), each once, in the
    order they first did, led by ``"not recorded"`` where commands.txt holds commands
    that machines.txt does not (they ran before machines were recorded); ``[]`` where
    neither file is."""
    found = [line.split("  ", 1)[-1] for line in _lines(os.path.join(folder, MACHINES))]
    unrecorded = len(commands(folder)) > len(found)
    return list(dict.fromkeys(["not recorded"] * unrecorded + found))


def record(folder, config, command=None):
    """Records `config` (and `command`, with when and where it started) in a locked
    folder, refusing other settings.

    Call once everything `config` names has been checked: nothing is written before.
    """
    check_same_config(folder, config)
    write_json(os.path.join(folder, CONFIG), configs.to_dict(config))
    if command:
        with open(os.path.join(folder, COMMANDS), "a") as f:
            f.write(command + "\n")
        with open(os.path.join(folder, MACHINES), "a") as f:
            f.write(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "  " + machine()
                    + "\n")


def create(folder, config, command=None):
    """`lock`, then `record`: the folder of a run about to train.

    Returns:
      The `FolderLock`, to hold until the run ends.
    """
    held = lock(folder)
    try:
        record(folder, config, command)
    except BaseException:
        held.release()
        raise
    return held
