"""Run directories, config checks, and train.py end to end on real MNIST."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ssl_dgm import training
from tests.conftest import ROOT


def test_atomic_write_replaces_whole_files(tmp_path):
    path = tmp_path / "a.json"
    training.write_json(str(path), {"x": 1})
    training.write_json(str(path), {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert os.listdir(tmp_path) == ["a.json"]  # no temporary left behind


def test_run_dir_refuses_other_settings_but_allows_more_epochs(tmp_path):
    config = training.TrainConfig(labels=100, epochs=3)
    training.prepare_run_dir(str(tmp_path), config)
    training.prepare_run_dir(str(tmp_path), training.TrainConfig(labels=100, epochs=9))
    with pytest.raises(ValueError, match="labels: 100 there, 600 now"):
        training.prepare_run_dir(str(tmp_path), training.TrainConfig(labels=600, epochs=9))


def test_a_finished_run_is_described_only_by_its_own_epochs_and_split(tmp_path):
    training.prepare_run_dir(str(tmp_path), training.TrainConfig(epochs=3, data_dir="/a"))
    finished = training.PLACEMENT_FIELDS
    training.check_same_config(str(tmp_path), training.TrainConfig(epochs=3, data_dir="/b"),
                               finished)
    with pytest.raises(ValueError, match="epochs: 3 there, 9 now"):
        training.check_same_config(str(tmp_path), training.TrainConfig(epochs=9), finished)
    with pytest.raises(ValueError, match="eval_split: 'test' there, 'validation' now"):
        training.check_same_config(str(tmp_path),
                                   training.TrainConfig(epochs=3, eval_split="validation"),
                                   finished)


def test_runs_made_before_labeled_weight_existed_count_as_weight_one(tmp_path):
    config = training.TrainConfig(labels=100, labeled_weight=1.0)
    training.prepare_run_dir(str(tmp_path), config)
    path = tmp_path / "config.json"
    stored = json.loads(path.read_text())
    del stored["labeled_weight"]  # as written before the field was added
    path.write_text(json.dumps(stored))
    training.prepare_run_dir(str(tmp_path), config)  # same run: resumes
    with pytest.raises(ValueError, match="labeled_weight: 1.0 there, None now"):
        training.prepare_run_dir(str(tmp_path), training.TrainConfig(labels=100,
                                                                     labeled_weight=None))


def test_fields_a_model_does_not_read_need_not_match(tmp_path):
    def made_before_m1_head_existed(folder, model):
        training.prepare_run_dir(str(folder), training.TrainConfig(model=model))
        stored = json.loads((folder / "config.json").read_text())
        del stored["m1_head"]
        (folder / "config.json").write_text(json.dumps(stored))

    # An m2 run made before m1_head existed (pinned: softmax) is the same m2 run under
    # today's default; an m1 run is not, and neither is an m2 run with other M2 fields.
    made_before_m1_head_existed(tmp_path / "m2", "m2")
    training.check_same_config(str(tmp_path / "m2"), training.TrainConfig(model="m2"))
    training.check_same_config(str(tmp_path / "m2"),
                               training.TrainConfig(model="m2", m1_epochs=7))
    with pytest.raises(ValueError, match="hidden_sizes"):
        training.check_same_config(str(tmp_path / "m2"),
                                   training.TrainConfig(model="m2", hidden_sizes=(7,)))
    made_before_m1_head_existed(tmp_path / "m1", "m1")
    with pytest.raises(ValueError, match="m1_head: 'softmax' there, 'spreading' now"):
        training.check_same_config(str(tmp_path / "m1"), training.TrainConfig(model="m1"))
    # A run on a finished M1 does not read how an M1 would be trained; one that trains
    # its own M1 does.
    on_m1 = training.TrainConfig(model="m1m2", m1_dir="runs/x/m1")
    training.prepare_run_dir(str(tmp_path / "on_m1"), on_m1)
    training.check_same_config(str(tmp_path / "on_m1"),
                               training.TrainConfig(model="m1m2", m1_dir="runs/x/m1",
                                                    m1_kl_warmup_epochs=50))
    training.prepare_run_dir(str(tmp_path / "own_m1"), training.TrainConfig(model="m1m2"))
    with pytest.raises(ValueError, match="m1_kl_warmup_epochs: 0 there, 50 now"):
        training.check_same_config(str(tmp_path / "own_m1"),
                                   training.TrainConfig(model="m1m2", m1_kl_warmup_epochs=50))


def test_config_rejects_unknown_model_and_bad_sizes():
    with pytest.raises(ValueError, match="unknown model"):
        training.TrainConfig(model="m3")
    with pytest.raises(ValueError, match="batch_size must be positive"):
        training.TrainConfig(batch_size=0)


def test_config_needs_a_budget_for_the_time_schedule_and_a_positive_labeled_weight():
    with pytest.raises(ValueError, match="give time_budget_minutes too"):
        training.TrainConfig(lr_schedule="cosine_time")
    with pytest.raises(ValueError, match="give time_budget_minutes too"):
        training.TrainConfig(m1_lr_schedule="cosine_time")
    with pytest.raises(ValueError, match="unknown m1_lr_schedule 'linear'"):
        training.TrainConfig(m1_lr_schedule="linear")
    with pytest.raises(ValueError, match="labeled_weight must be positive"):
        training.TrainConfig(labeled_weight=0.0)


class _Clock:
    """Stands in for `Checkpointing`: training seconds before and within the epoch."""

    def __init__(self, before, within):
        self.seconds_before, self.within = before, within

    def epoch_train_seconds(self):
        return self.within


def test_time_cosine_decays_over_the_budget_and_drives_a_compiled_fit():
    import keras

    schedule = training.TimeCosine(_Clock(0, 0), 1e-3, budget_minutes=2.0)
    rates = [schedule.rate(s) for s in (0, 30, 60, 90, 120, 500)]
    np.testing.assert_allclose(rates, [1e-3, 8.5355e-4, 5e-4, 1.4645e-4, 0, 0], atol=1e-7)

    model = keras.Sequential([keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", jit_compile=True,
                  steps_per_execution=3)
    # 40 s before this epoch and 50 s into it: 90 of 120 s, so the rate is lr0 * 0.146.
    callback = training.TimeCosine(_Clock(40, 50), 1e-3, budget_minutes=2.0)
    model.fit(np.ones((12, 2)), np.ones((12, 1)), batch_size=2, epochs=1, verbose=0,
              callbacks=[callback])
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1.4645e-4, rel=1e-3)


def test_logit_of_mean_inverts_to_the_mean_image():
    images = np.random.default_rng(0).uniform(0.1, 0.9, size=(50, 4, 4, 1)).astype(np.float32)
    bias = training.logit_of_mean(images)
    np.testing.assert_allclose(1 / (1 + np.exp(-bias)), images.reshape(50, -1).mean(0),
                               rtol=1e-5)


def run_train(args, data_dir, cwd):
    env = dict(os.environ, TFDS_DATA_DIR=data_dir)
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


SMALL = ["--model=m2", "--labels=20", "--train_examples=400", "--batch_size=50",
         "--labeled_batch_size=20", "--hidden_sizes=16", "--classifier_hidden_sizes=16",
         "--latent_size=4", "--eval_split=validation", "--steps_per_execution=4"]


def test_train_script_runs_resumes_and_writes_results(mnist_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    first = run_train([*SMALL, "--epochs=1", f"--model_dir={run_dir}"], mnist_data_dir, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "validation error" in first.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs_done"] == 1 and 0.0 <= results["validation_error"] <= 1.0
    indices = json.loads((run_dir / "labeled_indices.json").read_text())
    assert len(indices) == 20 and max(indices) < 400
    # The same command with more epochs resumes from the checkpoint.
    second = run_train([*SMALL, "--epochs=2", f"--model_dir={run_dir}"], mnist_data_dir,
                       tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr
    history = (run_dir / "history.csv").read_text().strip().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["1", "2"]
    assert json.loads((run_dir / "results.json").read_text())["epochs_done"] == 2
    # The finished run reloads with its trained weights: the same validation error.
    from ssl_dgm import data
    model, _, reloaded = training.load_trained(str(run_dir))
    validation = data.load_split("validation", data_dir=mnist_data_dir)
    error = training.evaluate_error(model, data.evaluation_dataset(validation, 1000, seed=0))
    assert error == pytest.approx(reloaded["validation_error"])
    grayscale = training.evaluate_error(
        model, data.evaluation_dataset(validation, 1000, seed=0, binarized=False))
    assert grayscale == pytest.approx(reloaded["validation_error_grayscale"])
    assert reloaded["eval_error_grayscale"] == reloaded["validation_error_grayscale"]
    # Other settings in the same directory are refused, clearly.
    third = run_train([*SMALL, "--epochs=2", "--seed=4", f"--model_dir={run_dir}"],
                      mnist_data_dir, tmp_path)
    assert third.returncode == 1 and "other settings (seed: 0 there, 4 now)" in third.stderr


def test_paper_weighting_and_the_time_schedule_from_the_command_line(mnist_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = run_train([*SMALL, "--epochs=2", "--labeled_weight=paper",
                        "--lr_schedule=cosine_time", "--time_budget_minutes=30",
                        f"--model_dir={run_dir}"], mnist_data_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["labeled_weight"] is None and config["lr_schedule"] == "cosine_time"
    model, _, _ = training.load_trained(str(run_dir))
    assert model.labeled_weight == pytest.approx(20 / 380)  # 20 labels in 400 images
    bad = run_train([*SMALL, "--labeled_weight=half", f"--model_dir={tmp_path / 'r'}"],
                    mnist_data_dir, tmp_path)
    assert bad.returncode == 1
    assert "--labeled_weight must be a number or 'paper', got 'half'" in bad.stderr


def test_train_script_rejects_labels_not_divisible_by_classes(mnist_data_dir, tmp_path):
    result = run_train([*SMALL, "--labels=105", f"--model_dir={tmp_path / 'r'}"],
                       mnist_data_dir, tmp_path)
    assert result.returncode == 1
    assert "--labels=105 must be a positive multiple of the number of classes (10)" in result.stderr


M1_SMALL = ["--m1_epochs=1", "--m1_hidden_sizes=16", "--m1_latent_size=6", "--epochs=1",
            "--head_steps=20"]


def run_on_finished_m1(model, flags, m1_dir, run_dir, data_dir, cwd):
    """A tiny run of `model` on the finished M1 in `m1_dir`: (process, results.json)."""
    done = run_train([*SMALL, *M1_SMALL, f"--model={model}", *flags, f"--m1_dir={m1_dir}",
                      f"--model_dir={run_dir}"], data_dir, cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads((run_dir / "results.json").read_text())


def test_m1m2_command_trains_m1_then_m2_and_reuses_a_finished_m1(mnist_data_dir, tmp_path):
    first_dir = tmp_path / "stacked"
    first = run_train([*SMALL, *M1_SMALL, "--model=m1m2", f"--model_dir={first_dir}"],
                      mnist_data_dir, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "m1m2 with 20 labels: validation error" in first.stdout
    results = json.loads((first_dir / "results.json").read_text())
    assert results["m1"]["epochs_done"] == 1 and results["epochs_done"] == 1
    assert 1 <= len(results["m1_active_dimensions"]) <= 6
    assert (first_dir / "m1" / "m1.weights.h5").exists()
    assert (first_dir / "m1" / "history.csv").exists() and (first_dir / "history.csv").exists()
    # Flags the command leaves out take m1m2's defaults; flags it gives win.
    stored = json.loads((first_dir / "config.json").read_text())
    assert (stored["labeled_weight"], stored["m1_kl_warmup_epochs"]) == (0.1, 50)
    assert (stored["hidden_sizes"], stored["epochs"]) == ([16], 1)
    assert training.MODEL_DEFAULTS["m1m2"]["hidden_sizes"] == (500,)  # given: 16
    # A second stacked run on the same M1 skips the M1 stage.
    second_dir = tmp_path / "again"
    second, second_results = run_on_finished_m1("m1m2", ["--seed=1"], first_dir / "m1",
                                                second_dir, mnist_data_dir, tmp_path)
    assert "reusing the finished M1" in second.stderr
    assert not (second_dir / "m1").exists()
    assert second_results["m1"] == results["m1"]
    # Codes cached once per training image instead of encoded per batch.
    cached_dir = tmp_path / "cached"
    _, cached_results = run_on_finished_m1("m1m2", ["--m1_codes=cached"], first_dir / "m1",
                                           cached_dir, mnist_data_dir, tmp_path)
    assert cached_results["epochs_done"] == 1 and 0.0 <= cached_results["validation_error"] < 1
    assert json.loads((cached_dir / "config.json").read_text())["m1_codes"] == "cached"


def test_m1_lr_schedule_makes_one_m1m2_command_train_the_m1_of_an_m1_command(
        mnist_data_dir, tmp_path):
    # The best recipe: M1 with cosine over its epochs, M2 annealed over a time budget.
    m1_run = tmp_path / "m1"
    done = run_train([*SMALL, *M1_SMALL, "--model=m1", "--lr_schedule=cosine",
                      "--m1_kl_warmup_epochs=2", f"--model_dir={m1_run}"], mnist_data_dir,
                     tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    stacked_args = [*SMALL, *M1_SMALL, "--model=m1m2", "--lr_schedule=cosine_time",
                    "--time_budget_minutes=30", "--m1_kl_warmup_epochs=2"]
    stacked_run, same_schedule_run = tmp_path / "stacked", tmp_path / "same_schedule"
    for extra, run_dir in ((["--m1_lr_schedule=cosine"], stacked_run), ([], same_schedule_run)):
        done = run_train([*stacked_args, *extra, f"--model_dir={run_dir}"], mnist_data_dir,
                         tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]

    def m1_weights(run_dir):
        m1, _ = training.load_m1(str(run_dir / "m1"), 28 * 28)
        return [w.numpy() for w in m1.weights]

    reference = m1_weights(m1_run)
    for ours, theirs in zip(m1_weights(stacked_run), reference):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    # Without it the M1 stage follows M2's schedule (barely decayed after one epoch of a
    # 30-minute budget) and ends elsewhere.
    assert not all(np.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
                   for ours, theirs in zip(m1_weights(same_schedule_run), reference))


def test_m1_command_reports_the_error_of_either_head(mnist_data_dir, tmp_path):
    run_dir = tmp_path / "m1"
    result = run_train([*SMALL, *M1_SMALL, "--model=m1", f"--model_dir={run_dir}"],
                       mnist_data_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert json.loads((run_dir / "config.json").read_text())["m1_head"] == "spreading"
    assert 0.0 <= results["validation_error"] < 0.9  # 20 labels beat chance on M1 features
    # The softmax head on the same M1.
    _, softmax = run_on_finished_m1("m1", ["--m1_head=softmax"], run_dir / "m1",
                                    tmp_path / "softmax", mnist_data_dir, tmp_path)
    assert softmax["m1"] == results["m1"]
    assert 0.0 <= softmax["validation_error"] < 0.9


def test_missing_m1_dir_is_a_clear_error(mnist_data_dir, tmp_path):
    result = run_train([*SMALL, *M1_SMALL, "--model=m1m2", f"--m1_dir={tmp_path / 'none'}",
                        f"--model_dir={tmp_path / 'r'}"], mnist_data_dir, tmp_path)
    assert result.returncode == 1 and "holds no finished M1" in result.stderr
