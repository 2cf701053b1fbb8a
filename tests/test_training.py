"""Run folders, schedules, and train.py end to end on real MNIST (tiny models)."""

import json
import os
import re
import stat
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from ssl_dgm import builders, configs, data, overrides, presets, rundir
from ssl_dgm.train import callbacks, evaluation
from tests.conftest import ROOT


def test_atomic_write_replaces_whole_files_with_umask_permissions(tmp_path):
    path = tmp_path / "a.json"
    old = os.umask(0o022)
    try:
        rundir.write_json(str(path), {"x": 1})
        rundir.write_json(str(path), {"x": 2})
    finally:
        os.umask(old)
    assert json.loads(path.read_text()) == {"x": 2}
    assert os.listdir(tmp_path) == ["a.json"]  # no temporary left behind
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_run_folder_refuses_other_settings_but_allows_more_epochs(tmp_path):
    config = presets.get("m2", labels=100)
    rundir.create(str(tmp_path), config).release()
    longer = overrides.override(config, {"m2.optimization.epochs": 900,
                                       "data.data_dir": "/elsewhere"})
    rundir.create(str(tmp_path), longer).release()
    with pytest.raises(ValueError, match=r"other settings \(data.labels: 100 there, 600 now\)"):
        rundir.create(str(tmp_path), overrides.override(config, {"data.labels": 600}))
    # A finished run is described only by what was trained and reported.
    rundir.check_same_config(str(tmp_path), overrides.override(longer, {
        "runtime.checkpoint_minutes": 1}), rundir.PLACEMENT)
    with pytest.raises(ValueError, match="m2.optimization.epochs: 900 there, 200 now"):
        rundir.check_same_config(str(tmp_path), config, rundir.PLACEMENT)


def test_a_folder_in_use_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path):
    lock = rundir.FolderLock(str(tmp_path))
    with pytest.raises(ValueError, match=rf"{tmp_path} is in use by process {os.getpid()}"):
        rundir.FolderLock(str(tmp_path))
    lock.release()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ssl_dgm import rundir; "
         "lock = rundir.FolderLock(sys.argv[1]); print('locked', flush=True); time.sleep(60)",
         str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ValueError, match=f"in use by process {holder.pid}"):
        rundir.FolderLock(str(tmp_path))
    holder.kill()
    holder.wait()
    rundir.FolderLock(str(tmp_path)).release()  # the OS released the killed holder's lock


class _Clock:
    """Stands in for `Checkpointing`: training seconds before and within the epoch."""

    def __init__(self, before, within):
        self.seconds_before, self.within = before, within

    def epoch_train_seconds(self):
        return self.within


def test_time_cosine_decays_over_the_budget_and_drives_a_compiled_fit():
    import keras

    schedule = callbacks.TimeCosine(_Clock(0, 0), 1e-3, budget_minutes=2.0)
    rates = [schedule.rate(s) for s in (0, 30, 60, 90, 120, 500)]
    np.testing.assert_allclose(rates, [1e-3, 8.5355e-4, 5e-4, 1.4645e-4, 0, 0], atol=1e-7)

    model = keras.Sequential([keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", jit_compile=True,
                  steps_per_execution=3)
    # 40 s before this epoch and 50 s into it: 90 of 120 s, so the rate is lr0 * 0.146.
    callback = callbacks.TimeCosine(_Clock(40, 50), 1e-3, budget_minutes=2.0)
    model.fit(np.ones((12, 2)), np.ones((12, 1)), batch_size=2, epochs=1, verbose=0,
              callbacks=[callback])
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1.4645e-4, rel=1e-3)


def test_progress_line_counts_down_and_never_below_zero():
    class Clock:
        epoch_start = 0.0

        def train_minutes(self):
            return 31.0  # past the 30-minute budget

    lines = []
    progress = callbacks.Progress("M2", 600, Clock(), time_budget_minutes=30, say=lines.append)
    progress.on_epoch_end(9, {"loss": 95.123, "val_error": 0.0721})
    assert lines[-1].startswith("M2 epoch 10/600  loss 95.12  val error 7.21%  ")
    assert lines[-1].endswith("ETA 0 s")
    assert callbacks._minutes(50 * 60) == "50 min" and callbacks._minutes(7200) == "2.0 h"


def test_logit_of_mean_inverts_to_the_mean_image():
    images = np.random.default_rng(0).uniform(0.1, 0.9, size=(50, 4, 4, 1)).astype(np.float32)
    bias = builders.logit_of_mean(images)
    np.testing.assert_allclose(1 / (1 + np.exp(-bias)), images.reshape(50, -1).mean(0),
                               rtol=1e-5)


def run_train(args, data_dir, cwd):
    env = dict(os.environ, TFDS_DATA_DIR=data_dir)
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


SMALL = ["--model=m2", "--labels=20", "--train_examples=400", "--batch_size=50",
         "--labeled_batch_size=20", "--hidden_sizes=16", "--classifier_hidden_sizes=16",
         "--latent_size=4", "--eval_split=validation", "--steps_per_execution=4",
         # Tests of the command's behaviour skip XLA's compile (about 14 s a process on a
         # slow 2-core machine); JIT below puts it back where the compiled step is tested.
         "--set", "runtime.jit_compile=false"]
JIT = ["--set", "runtime.jit_compile=true"]
# The M1 stage, tiny; `--set` reaches the fields without a flag of their own.
M1_SMALL = ["--m1_epochs=1", "--set", "m1.hidden_sizes=16", "--set", "m1.latent_size=6",
            "--set", "m1.kl_warmup_epochs=2"]
TF_NOISE = re.compile(r"oneDNN|cuda|cuInit|I0000|W0000|E0000|absl::|UserWarning|INFO:")


def test_train_script_runs_reports_a_finished_run_and_reloads_it(mnist_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    first = run_train([*SMALL, *JIT, "--epochs=2", f"--model_dir={run_dir}"], mnist_data_dir,
                      tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    # Quiet: no TensorFlow / absl lines; a stage announcement and one short line per epoch.
    assert not TF_NOISE.search(first.stdout + first.stderr), first.stderr[-3000:]
    lines = first.stdout.splitlines()
    assert lines[0] == "M2 stage: 2 epochs"
    assert [l.split("  ")[0] for l in lines[1:3]] == ["M2 epoch 1/2", "M2 epoch 2/2"]
    assert all(len(l) < 100 and "ETA" in l for l in lines[1:3])
    # Validation (every 10 epochs by default) after the stage's last epoch only.
    assert ["val error" in l for l in lines[1:3]] == [False, True]
    assert lines[-1].startswith("m2, 20 labels: validation error ")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs_done"] == 2 and 0.0 <= results["validation_error"] <= 1.0
    assert (results["num_classes"], results["image_shape"]) == (10, [28, 28, 1])
    assert f"{100 * results['validation_error']:.2f}%" in lines[-1]
    indices = json.loads((run_dir / "labeled_indices.json").read_text())
    assert len(indices) == 20 and max(indices) < 400
    stored = json.loads((run_dir / "config.json").read_text())
    assert stored["schema_version"] == configs.SCHEMA_VERSION
    assert (stored["m2"]["hidden_sizes"], stored["data"]["labels"]) == ([16], 20)
    history = rundir.read_history(str(run_dir / "history.csv"))
    assert [row["epoch"] for row in history] == [1, 2]
    assert ["val_error" in row for row in history] == [False, True]
    assert set(history[0]) | {f"val_{k}" for k in history[0] if k.endswith("bound")} \
        <= set(history[1])
    assert history[1]["val_error"] == pytest.approx(
        float(re.search(r"val error ([0-9.]+)%", lines[2]).group(1)) / 100, abs=5e-5)

    # The same command again reports the finished run and writes nothing.
    written = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    again = run_train([*SMALL, "--epochs=2", f"--model_dir={run_dir}"], mnist_data_dir,
                      tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "holds this run, finished" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == written
    # Nor with its checkpoint index gone: results.json marks it finished.
    (run_dir / "checkpoints" / "checkpoint").rename(tmp_path / "index")
    again = run_train([*SMALL, "--epochs=2", f"--model_dir={run_dir}"], mnist_data_dir,
                      tmp_path)
    assert again.returncode == 0 and "holds this run, finished" in again.stdout
    (tmp_path / "index").rename(run_dir / "checkpoints" / "checkpoint")
    # A finished run is never retrained over its results, longer or otherwise.
    for other, message in ((["--epochs=3"], "m2.optimization.epochs: 2 there, 3 now"),
                           (["--epochs=2", "--seed=4"], "seed: 0 there, 4 now")):
        refused = run_train([*SMALL, *other, f"--model_dir={run_dir}"], mnist_data_dir,
                            tmp_path)
        assert refused.returncode == 1 and message in refused.stderr, refused.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == written

    # The finished run reloads with its trained weights: the same errors on both inputs.
    model, _, reloaded = builders.load_trained(str(run_dir))
    validation = data.load_split("validation", data_dir=mnist_data_dir)
    errors = evaluation.split_errors(model, validation, seed=0)
    assert errors["error"] == pytest.approx(reloaded["validation_error"])
    assert errors["error_grayscale"] == pytest.approx(reloaded["validation_error_grayscale"])
    assert reloaded["eval_error_grayscale"] == reloaded["validation_error_grayscale"]
    # A missing checkpoint shard is a one-line error at export, and nothing is written.
    for path in (run_dir / "checkpoints").glob("ckpt-2.data-*"):
        path.unlink()
    exported = subprocess.run([sys.executable, os.path.join(ROOT, "export.py"),
                               f"--model_dir={run_dir}", f"--export_dir={tmp_path / 'out'}"],
                              capture_output=True, text=True, timeout=300)
    assert exported.returncode == 1 and "cannot be read into this run's model" in exported.stderr
    assert exported.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_an_m1_trained_on_other_images_is_refused(tmp_path):
    stage = tmp_path / "m1"
    stage.mkdir()
    (stage / rundir.M1_WEIGHTS).write_bytes(b"")
    rundir.write_json(str(stage / rundir.RESULTS), {
        "m1": configs.to_dict(presets.M1_STAGE), "seed": 0, "dataset": "binary_alpha_digits",
        "image_shape": [20, 16, 1]})
    config = overrides.override(presets.get("m1m2"), {"m1_dir": str(stage)})
    with pytest.raises(ValueError, match=r"holds an M1 of \[20, 16, 1\] images "
                                         r"\(binary_alpha_digits\); this run's images are "
                                         r"\[28, 28, 1\]"):
        builders.adopt_m1(config, (28, 28, 1))
    adopted = builders.adopt_m1(config, (20, 16, 1))
    assert adopted.m1 == presets.M1_STAGE


def test_paper_weighting_and_the_time_schedule_from_the_command_line(mnist_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = run_train([*SMALL, "--epochs=1", "--labeled_weight=paper",
                        "--lr_schedule=cosine_time", "--time_budget_minutes=30",
                        f"--model_dir={run_dir}"], mnist_data_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((run_dir / "config.json").read_text())["m2"]
    assert config["labeled_weight"] is None
    assert config["optimization"]["lr_schedule"] == "cosine_time"
    model, _, _ = builders.load_trained(str(run_dir))
    assert model.labeled_weight == pytest.approx(20 / 380)  # 20 labels in 400 images
    assert model.alpha == pytest.approx(0.1 * 400 / 20)


def small(model):
    """SMALL for `model`: an m1 run has no q(y|x) to size (its flag would be refused)."""
    return [f for f in SMALL if model != "m1" or not f.startswith("--classifier_hidden")]


def run_on_finished_m1(model, flags, m1_dir, run_dir, data_dir, cwd):
    """A tiny run of `model` on the finished M1 in `m1_dir`: (process, results.json)."""
    done = run_train([*small(model), *M1_SMALL, "--epochs=1", f"--model={model}", *flags,
                      f"--m1_dir={m1_dir}", f"--model_dir={run_dir}"], data_dir, cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads((run_dir / "results.json").read_text())


def test_m1m2_trains_m1_then_m2_and_reuses_a_finished_m1(mnist_data_dir, tmp_path):
    first_dir = tmp_path / "stacked"
    first = run_train([*SMALL, *M1_SMALL, *JIT, "--epochs=1", "--model=m1m2",
                       f"--model_dir={first_dir}"], mnist_data_dir, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.startswith("M1 stage: 1 epochs\nM1 epoch 1/1  loss ")
    results = json.loads((first_dir / "results.json").read_text())
    active = len(results["m1_active_dimensions"])
    assert f"\nM2 stage on {active} M1 codes: 1 epochs\n" in first.stdout
    assert results["m1"]["epochs_done"] == 1 and results["epochs_done"] == 1
    assert 1 <= active <= 6
    import h5py  # Keras' own dependency

    with h5py.File(first_dir / "m1" / "m1.weights.h5") as weights:
        assert {"encoder", "decoder"} <= set(weights) and "optimizer" not in weights
    assert (first_dir / "m1" / "history.csv").exists() and (first_dir / "history.csv").exists()
    # Its checkpoints hold the M2 stage's weights and optimizer, not the frozen M1's; the
    # run reloads (M1 from its stage) to the validation error it reported.
    newest = tf.train.latest_checkpoint(str(first_dir / "checkpoints"))
    names = [name for name, _ in tf.train.list_variables(newest)]
    assert any(n.startswith("weights/classifier") for n in names), names
    assert not [n for n in names if n.startswith("weights/m1") or "/m1/" in n], names
    model, config, _ = builders.load_trained(str(first_dir))
    validation = data.load_split("validation", data_dir=mnist_data_dir)
    assert (evaluation.split_errors(model, validation, config.seed)["error"]
            == results["validation_error"])
    # Flags the command leaves out keep the m1m2 preset's values; flags it gives win.
    stored = json.loads((first_dir / "config.json").read_text())
    assert (stored["m2"]["labeled_weight"], stored["m1"]["kl_warmup_epochs"]) == (0.1, 2)
    assert stored["m2"]["hidden_sizes"] == [16]
    # A second stacked run on the same M1 skips the M1 stage and records that M1.
    second_dir = tmp_path / "again"
    second, second_results = run_on_finished_m1(
        "m1m2", ["--seed=1", "--set", "m1.latent_size=50"], first_dir / "m1", second_dir,
        mnist_data_dir, tmp_path)
    assert f"M1 stage: reusing the finished M1 in {first_dir / 'm1'}" in second.stdout
    assert not (second_dir / "m1").exists()
    assert second_results["m1"] == results["m1"]
    assert json.loads((second_dir / "config.json").read_text())["m1"] == stored["m1"]
    # Codes cached once per training image instead of encoded per batch, and one
    # noise draw per image for its labels' samples.
    cached_dir = tmp_path / "cached"
    _, cached_results = run_on_finished_m1(
        "m1m2", ["--set", "m2.codes=cached", "--set", "m2.label_noise=shared"],
        first_dir / "m1", cached_dir, mnist_data_dir, tmp_path)
    assert cached_results["epochs_done"] == 1 and 0.0 <= cached_results["validation_error"] < 1
    stored = json.loads((cached_dir / "config.json").read_text())["m2"]
    assert (stored["codes"], stored["label_noise"]) == ("cached", "shared")
    model, _, _ = builders.load_trained(str(cached_dir))
    assert model.shared_noise and model.codes == "cached"


def test_the_m1_of_an_m1_command_is_the_m1_of_an_m1m2_command(mnist_data_dir, tmp_path):
    m1_run, stacked_run = tmp_path / "m1", tmp_path / "stacked"
    for model, run_dir in (("m1", m1_run), ("m1m2", stacked_run)):
        done = run_train([*small(model), *M1_SMALL, "--epochs=1", f"--model={model}",
                          f"--model_dir={run_dir}"], mnist_data_dir, tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    # The presets share the M1 stage: same seed, same weights (the harness relies on it).
    theirs, _ = builders.load_m1(str(m1_run / "m1"))
    ours, _ = builders.load_m1(str(stacked_run / "m1"))
    assert len(ours.weights) == len(theirs.weights)
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    # M1's head reports an error better than chance on the spread labels; the softmax
    # head runs on the same M1.
    results = json.loads((m1_run / "results.json").read_text())
    assert json.loads((m1_run / "config.json").read_text())["head"]["kind"] == "spreading"
    assert 0.0 <= results["validation_error"] < 0.9
    _, softmax = run_on_finished_m1("m1", ["--set", "head.kind=softmax", "--set",
                                           "head.steps=20"], m1_run / "m1",
                                    tmp_path / "softmax", mnist_data_dir, tmp_path)
    assert softmax["m1"] == results["m1"] and 0.0 <= softmax["validation_error"] < 0.9


def test_missing_m1_dir_is_a_clear_error_and_writes_nothing(mnist_data_dir, tmp_path):
    result = run_train([*SMALL, *M1_SMALL, "--model=m1m2", f"--m1_dir={tmp_path / 'none'}",
                        f"--model_dir={tmp_path / 'r'}"], mnist_data_dir, tmp_path)
    assert result.returncode == 1 and "holds no finished M1" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "r").exists()


def test_validation_runs_every_n_epochs_and_after_the_last():
    from ssl_dgm.train.pipeline import validation_epochs

    assert validation_epochs(25, 10) == [10, 20, 25]
    assert validation_epochs(20, 10) == [10, 20]
    assert validation_epochs(3, 1) == [1, 2, 3]
    assert validation_epochs(2, 10) == [2]


def test_a_fit_keeps_one_iterator_and_runs_one_pass_per_epoch(tmp_path):
    from ssl_dgm.train import pipeline

    images = np.random.default_rng(0).uniform(size=(70, 2, 2, 1)).astype(np.float32)
    pass_of = lambda n: data.unlabeled_dataset(images[:n], 10, seed=0)  # noqa: E731
    # Repeated only where every epoch still ends at the end of its pass.
    for n, keras_steps, repeated in ((70, 1, True), (70, 7, True), (70, 3, False)):
        stream, steps = pipeline.one_iterator(pass_of(n), keras_steps)
        assert (steps, int(stream.cardinality()) < 0) == ((7, True) if repeated else
                                                           (None, False))
    # 7 batches a pass, blocks of 3, 3 and 1 steps: 7 optimizer steps an epoch.
    stage = configs.M1Config(hidden_sizes=(8,), latent_size=2, optimization=configs.
                             OptimizationConfig(epochs=3, learning_rate=1e-3))
    m1 = builders.build_m1(stage, 4, seed=0)
    runtime = configs.RuntimeConfig(steps_per_execution=3, validation_every=2)
    validation = data.evaluation_dataset(data.Split(images[:20], np.zeros(20, np.int64)), 10, 0)
    epochs, _ = pipeline.fit_stage(m1, pass_of(70), validation, str(tmp_path), stage.optimization,
                                   runtime, 7, "M1", say=lambda line: None)
    assert (epochs, int(m1.optimizer.iterations.numpy())) == (3, 21)
    history = rundir.read_history(str(tmp_path / "history.csv"))
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert ["val_loss" in row for row in history] == [False, True, True]
