"""Faults: a killed run resumes and loses nothing; NaN losses stop clearly; bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import pytest
import tensorflow as tf

from ssl_dgm import presets, rundir
from ssl_dgm.train import callbacks
from tests.conftest import ROOT
from tests.test_training import SMALL, run_train


def test_killed_run_resumes_to_the_full_epoch_count(mnist_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, os.path.join(ROOT, "train.py"), *SMALL, "--epochs=6",
            "--train_examples=3000", "--steps_per_execution=1", "--checkpoint_minutes=0.002",
            f"--model_dir={run_dir}"]
    env = dict(os.environ, TFDS_DATA_DIR=mnist_data_dir)
    victim = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    history = run_dir / "history.csv"
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        if history.exists() and len(history.read_text().splitlines()) >= 3:  # 2 epochs done
            break
        time.sleep(0.2)
    time.sleep(0.5)  # into the next epoch
    assert victim.poll() is None, "the run finished before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (run_dir / "results.json").exists()

    resumed = run_train([*SMALL, "--epochs=6", "--train_examples=3000",
                         "--steps_per_execution=1", "--checkpoint_minutes=0.002",
                         f"--model_dir={run_dir}"], mnist_data_dir, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs_done"] == 6
    epochs = [int(line.split(",")[0]) for line in history.read_text().splitlines()[1:]]
    assert epochs == [1, 2, 3, 4, 5, 6]
    assert not [f for f in os.listdir(run_dir) if f.endswith(".tmp")]


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    model = keras.Sequential([keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.build((None, 2))
    checkpointing = callbacks.Checkpointing(model, str(tmp_path / "checkpoints"))
    checkpointing.set_model(model)
    checkpointing.on_epoch_begin(0)
    checkpointing.on_epoch_end(0)
    saved = checkpointing.manager.latest_checkpoint
    guard = callbacks.NonFiniteGuard(checkpointing)
    guard.set_model(model)
    guard.on_train_batch_end(0, {"loss": 1.5})  # finite: nothing happens
    with pytest.raises(FloatingPointError,
                       match=rf"non-finite loss nan at step 0; training stopped\. "
                             rf"Last good checkpoint: {saved}"):
        guard.on_train_batch_end(1, {"loss": float("nan")})
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) == saved


def test_diverging_run_exits_with_the_guard_message(mnist_data_dir, tmp_path):
    result = run_train([*SMALL, "--epochs=3", "--learning_rate=1e12", "--lr_schedule=constant",
                        f"--model_dir={tmp_path / 'r'}"], mnist_data_dir, tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "non-finite loss" in result.stderr and "Last good checkpoint" in result.stderr


@pytest.mark.parametrize("flag, message", [
    ("--model=m3", "value should be one of"),
    ("--eval_split=nope", "has no split 'nope'"),
    ("--dataset=no_such_dataset", "unknown TFDS dataset 'no_such_dataset'"),
    ("--labels=70000", "asks for 7000 images of class 0"),
    ("--train_examples=50001", "--train_examples=50001 exceeds the 50000 training images"),
    ("--strategy=multi_worker", "needs TF_CONFIG"),
])
def test_bad_flags_get_specific_errors(mnist_data_dir, tmp_path, flag, message):
    result = run_train([*SMALL, flag, f"--model_dir={tmp_path / 'r'}"],
                       mnist_data_dir, tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert message in result.stderr


def test_missing_data_dir_is_reported(tmp_path):
    env_dir = str(tmp_path / "absent")
    result = run_train([*SMALL, f"--data_dir={env_dir}", f"--model_dir={tmp_path / 'r'}"],
                       env_dir, tmp_path)
    assert result.returncode == 1
    assert f"data_dir {env_dir!r} does not exist" in result.stderr


def test_export_refuses_unfinished_and_wrong_runs(tmp_path):
    unfinished = tmp_path / "unfinished"
    rundir.create(str(unfinished), presets.get("m2")).release()
    m1_run = tmp_path / "m1"
    rundir.create(str(m1_run), presets.get("m1")).release()
    rundir.write_json(str(m1_run / "results.json"), {"model": "m1"})
    for run_dir, message in [(unfinished, "unfinished run"), (m1_run, "is an m1 run"),
                             (tmp_path / "nothing", "is not a folder")]:
        done = subprocess.run([sys.executable, os.path.join(ROOT, "export.py"),
                               f"--model_dir={run_dir}", f"--export_dir={tmp_path / 'out'}"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 1 and message in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_resume_falls_back_to_an_older_checkpoint_and_keeps_one_row_per_epoch(
        mnist_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    first = run_train([*SMALL, "--epochs=2", f"--model_dir={run_dir}"], mnist_data_dir,
                      tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    # As if killed after epoch 2's checkpoint was written but before its data was whole,
    # with the index gone too: the run is unfinished and its newest checkpoint unreadable.
    (run_dir / "results.json").unlink()
    (run_dir / "checkpoints" / "checkpoint").unlink()
    for path in (run_dir / "checkpoints").glob("ckpt-2.data-*"):
        path.unlink()
    resumed = run_train([*SMALL, "--epochs=3", f"--model_dir={run_dir}"], mnist_data_dir,
                        tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "ckpt-2 cannot be read; trying an older one" in resumed.stdout
    assert "resumed from" in resumed.stdout and "(epoch 1)" in resumed.stdout
    epochs = [int(line.split(",")[0]) for line in
              (run_dir / "history.csv").read_text().splitlines()[1:]]
    assert epochs == [1, 2, 3]
    # Resumed after an epoch that did not validate, the last one still has its columns.
    rows = rundir.read_history(str(run_dir / "history.csv"))
    assert ["val_error" in row for row in rows] == [False, False, True]
    assert json.loads((run_dir / "results.json").read_text())["epochs_done"] == 3


def test_a_run_whose_checkpoints_are_all_unreadable_is_not_restarted(mnist_data_dir,
                                                                      tmp_path):
    run_dir = tmp_path / "run"
    first = run_train([*SMALL, "--epochs=2", f"--model_dir={run_dir}"], mnist_data_dir,
                      tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (run_dir / "results.json").unlink()
    for path in (run_dir / "checkpoints").glob("ckpt-*.data-*"):
        path.unlink()
    kept = sorted(os.listdir(run_dir / "checkpoints"))
    again = run_train([*SMALL, "--epochs=3", f"--model_dir={run_dir}"], mnist_data_dir,
                      tmp_path)
    assert again.returncode == 1, again.stderr[-2000:]
    assert "none of the checkpoints in" in again.stderr and "(ckpt-2, ckpt-1)" in again.stderr
    assert sorted(os.listdir(run_dir / "checkpoints")) == kept  # nothing overwritten
    assert len((run_dir / "history.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize("flags, message", [
    (["--labels=7"], "--labels=7 must be a positive multiple of the number of classes (10)"),
    (["--dataset=mnistt"], "unknown TFDS dataset 'mnistt'"),
    (["--learning_rate=-1"], "--learning_rate: m2.optimization.learning_rate must be a "
                             "positive number"),
    (["--train_examples=-5"], "--train_examples: data.train_examples must be a positive"),
    (["--eval_split=test2"], "has no split 'test2'"),
])
def test_a_refused_start_writes_nothing_and_the_corrected_command_runs(
        mnist_data_dir, tmp_path, flags, message):
    run_dir = tmp_path / "run"
    refused = run_train([*SMALL, *flags, f"--model_dir={run_dir}"], mnist_data_dir, tmp_path)
    assert refused.returncode == 1 and message in refused.stderr, refused.stderr[-2000:]
    assert refused.stderr.count("\n") == 1  # one line, no traceback
    assert not run_dir.exists()


def test_files_where_folders_belong_and_damaged_records_are_one_line_errors(
        mnist_data_dir, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    done = run_train([*SMALL, f"--model_dir={a_file}"], mnist_data_dir, tmp_path)
    assert done.returncode == 1 and f"the run folder {a_file} is a file" in done.stderr
    run_dir = tmp_path / "run"
    rundir.create(str(run_dir), presets.get("m2")).release()
    (run_dir / "config.json").write_text('{"model": "m2", "se')  # truncated
    done = run_train([*SMALL, f"--model_dir={run_dir}"], mnist_data_dir, tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"{run_dir / 'config.json'} is not valid JSON" in done.stderr
    assert done.stderr.count("\n") == 1


def test_a_folder_in_use_refuses_a_second_command(mnist_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ssl_dgm import rundir; "
         "lock = rundir.FolderLock(sys.argv[1]); print('locked', flush=True); time.sleep(120)",
         str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = run_train([*SMALL, f"--model_dir={run_dir}"], mnist_data_dir, tmp_path)
        assert second.returncode == 1
        assert f"{run_dir} is in use by process {holder.pid}" in second.stderr
        assert not (run_dir / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_multi_worker_run_does_not_resume(mnist_data_dir, tmp_path):
    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    env = dict(os.environ, TFDS_DATA_DIR=mnist_data_dir, TF_CONFIG=json.dumps(
        {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}))
    done = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *SMALL,
                           "--strategy=multi_worker", f"--model_dir={tmp_path / 'r'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "a multi-worker run does not resume" in done.stderr


def test_malformed_tf_config_is_one_line(mnist_data_dir, tmp_path):
    env = dict(os.environ, TFDS_DATA_DIR=mnist_data_dir, TF_CONFIG='{"cluster": ')
    done = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *SMALL,
                           "--strategy=multi_worker", f"--model_dir={tmp_path / 'r'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "TF_CONFIG is malformed" in done.stderr
    assert done.stderr.count("\n") == 1
