"""The grid's records: an unfinished run is kept with its newest checkpoint only, and a
root that lost it resumes from there; nothing is restored over more progress; each run
says which machines trained it; the report's total counts each seed's M1 once."""

import os
import re

import pytest
import tensorflow as tf

from benchmarks import table1
from ssl_dgm import builders, presets, rundir


def _unfinished_run(folder, config, epochs, values):
    """A run folder as training leaves it: config, `epochs` history rows, TensorBoard
    logs, a lock file and a CheckpointManager's two newest of `values` saved."""
    folder.mkdir(parents=True)
    rundir.record(str(folder), config)
    (folder / "history.csv").write_text("epoch,loss\n" + "".join(
        f"{e},{1.0 / e}\n" for e in range(1, epochs + 1)))
    (folder / "logs").mkdir()
    (folder / "logs" / "events").write_text("tensorboard")
    (folder / rundir.LOCK).write_text("123")
    weight = tf.Variable(0.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(weight=weight),
                                         str(folder / "checkpoints"), max_to_keep=2)
    for value in values:
        weight.assign(value)
        manager.save()


def _restored_weight(checkpoints):
    weight = tf.Variable(-1.0)
    checkpoint = tf.train.Checkpoint(weight=weight)
    manager = tf.train.CheckpointManager(checkpoint, str(checkpoints), max_to_keep=2)
    prefix = builders.restore_newest(checkpoint, str(checkpoints), manager.checkpoints)
    return os.path.basename(prefix), float(weight.numpy())


def test_an_unfinished_run_is_recorded_with_its_newest_checkpoint_and_resumes(tmp_path):
    config = presets.get("m2", 100, 0)
    run, records = tmp_path / "root" / "m2_100_seed0", tmp_path / "records"
    _unfinished_run(run, config, 3, [1.0, 2.0, 3.0])

    assert table1.keep_unfinished(str(run), str(records))
    kept = records / "m2_100_seed0"
    assert sorted(p.name for p in kept.iterdir()) == ["checkpoints", "config.json",
                                                      "history.csv"]
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == [
        "checkpoint", "ckpt-3.data-00000-of-00001", "ckpt-3.index"]
    assert _restored_weight(kept / "checkpoints") == ("ckpt-3", 3.0)
    assert table1.epochs_done(str(kept)) == 3
    # The same progress again is not copied again; a finished run is not a snapshot.
    assert not table1.keep_unfinished(str(run), str(records))
    (tmp_path / "finished").mkdir()
    (tmp_path / "finished" / rundir.RESULTS).write_text("{}")
    assert not table1.keep_unfinished(str(tmp_path / "finished"), str(records))

    # A root without the run gets it back, resumable: a manager there saves the next
    # checkpoint after the restored one and keeps two.
    lost = tmp_path / "lost"
    messages = []
    assert table1.restore_records(str(records), str(lost), {"m2_100_seed0": config},
                                  messages.append) == ["m2_100_seed0"]
    assert messages == [f"== {lost / 'm2_100_seed0'}: restored from {records}, unfinished "
                        f"(3 epochs done): it resumes from its checkpoint"]
    checkpoints = lost / "m2_100_seed0" / "checkpoints"
    weight = tf.Variable(-1.0)
    checkpoint = tf.train.Checkpoint(weight=weight)
    manager = tf.train.CheckpointManager(checkpoint, str(checkpoints), max_to_keep=2)
    builders.restore_newest(checkpoint, str(checkpoints), manager.checkpoints)
    assert float(weight.numpy()) == 3.0
    weight.assign(4.0)
    manager.save()
    assert _restored_weight(checkpoints) == ("ckpt-4", 4.0)


def test_a_snapshot_is_not_restored_over_more_progress_or_other_settings(tmp_path):
    config = presets.get("m2", 100, 0)
    records, root = tmp_path / "records", tmp_path / "root"
    _unfinished_run(tmp_path / "old" / "m2_100_seed0", config, 2, [1.0, 2.0])
    assert table1.keep_unfinished(str(tmp_path / "old" / "m2_100_seed0"), str(records))
    _unfinished_run(root / "m2_100_seed0", config, 5, [4.0, 5.0])

    # The root's run is further along: it stays, and it replaces the older record.
    assert table1.restore_records(str(records), str(root), {"m2_100_seed0": config},
                                  print) == []
    assert _restored_weight(root / "m2_100_seed0" / "checkpoints") == ("ckpt-2", 5.0)
    assert table1.keep_unfinished(str(root / "m2_100_seed0"), str(records))
    assert table1.epochs_done(str(records / "m2_100_seed0")) == 5
    assert not table1.keep_unfinished(str(tmp_path / "old" / "m2_100_seed0"), str(records))

    # A grid with other settings does not resume it.
    messages = []
    other = presets.get("m2", 600, 0)
    assert table1.restore_records(str(records), str(tmp_path / "elsewhere"),
                                  {"m2_100_seed0": other}, messages.append) == []
    assert "not restored, made with other settings (data.labels: 100 there, 600 now" in \
        messages[0]


def test_each_command_records_its_machine_and_older_commands_say_not_recorded(tmp_path):
    folder = str(tmp_path / "run")
    config = presets.get("m2")
    rundir.create(folder, config, "python train.py --model=m2").release()
    rundir.create(folder, config, "python train.py --model=m2").release()  # a resume
    lines = (tmp_path / "run" / rundir.MACHINES).read_text().splitlines()
    assert len(lines) == 2 and all(line.endswith("  " + rundir.machine()) for line in lines)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", lines[0].split("  ")[0])
    assert rundir.machine().endswith(f", {os.cpu_count()} cores")
    assert rundir.machines(folder) == [rundir.machine()]
    assert rundir.commands(folder) == ["python train.py --model=m2"] * 2
    # Commands from before machines were recorded: said, not guessed.
    with open(os.path.join(folder, rundir.COMMANDS), "a") as f:
        f.write("python train.py --model=m2\n" * 2)  # 4 commands, 3 machines recorded
    (tmp_path / "run" / rundir.MACHINES).write_text("2026-12-01T00:00:00Z  CPU A, 2 cores\n"
                                                    "2026-12-02T00:00:00Z  CPU B, 2 cores\n"
                                                    "2026-12-03T00:00:00Z  CPU A, 2 cores\n")
    assert rundir.machines(folder) == ["not recorded", "CPU A, 2 cores", "CPU B, 2 cores"]
    assert rundir.machines(str(tmp_path)) == []  # no run here


def test_the_grid_total_counts_each_seeds_m1_once_and_only_where_a_finished_run_used_it():
    def run(seed, minutes, m1_minutes):
        return {"seed": seed, "train_minutes": minutes, "m1_train_minutes": m1_minutes}

    cells = {"m1/100": [run(0, 1.0, 10.0)],
             "m1m2/100": [run(0, 5.0, 10.0), run(1, 6.0, 12.0)],
             "m2/100": [run(2, 7.0, None)]}
    # Seed 1's shared run stopped after its M1, before its head; seed 2's M1 finished,
    # but no finished run of seed 2 used it yet.
    total, m1_minutes = table1.grid_minutes(cells, {0: 0.5, 2: 0.4})
    assert m1_minutes == {0: 10.0, 1: 12.0}
    assert total == pytest.approx(1 + 5 + 6 + 7 + 10 + 12 + 0.5)
