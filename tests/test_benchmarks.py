"""The benchmark scripts run end to end on tiny settings."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

TINY = {"train_examples": 300, "batch_size": 50, "labeled_batch_size": 20,
        "hidden_sizes": [8], "classifier_hidden_sizes": [8], "latent_size": 3,
        "m1_hidden_sizes": [8], "m1_latent_size": 4, "steps_per_execution": 3,
        "head_steps": 5}


def test_table1_harness_runs_a_tiny_grid_and_skips_finished_runs(mnist_data_dir, tmp_path):
    args = [sys.executable, os.path.join(ROOT, "benchmarks", "table1.py"),
            "--models=m1,m2,m1m2", "--labels=20", "--seeds=0", f"--root={tmp_path / 'runs'}",
            "--epochs=1", "--m1_epochs=1", f"--output={tmp_path / 'results'}",
            f"--data_dir={mnist_data_dir}", "--overrides=" + json.dumps(TINY),
            "--model_overrides=" + json.dumps({"m1m2": {"epochs": 2, "hidden_sizes": [6]}})]
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [len(results["cells"][k]) for k in ("m2/20", "m1m2/20")] == [1, 1]
    # --model_overrides reached only the m1m2 run.
    assert [results["cells"][k][0]["epochs"] for k in ("m2/20", "m1m2/20")] == [1, 2]
    stored = json.loads((tmp_path / "runs" / "m1m2_20_seed0" / "config.json").read_text())
    assert stored["hidden_sizes"] == [6]
    assert (tmp_path / "runs" / "m1_seed0" / "m1" / "m1.weights.h5").exists()
    table = (tmp_path / "results.md").read_text()
    assert "| paper M1+M2 (test) | 3.33" not in table  # N=20 is not in the paper
    assert "(n=1)" in table and "--models=m1,m2,m1m2" in table
    # The M1 it trained, measured by m1_activity.py.
    activity = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "m1_activity.py"),
                               f"--run={tmp_path / 'runs' / 'm1_20_seed0'}",
                               f"--data_dir={mnist_data_dir}", "--images=200",
                               f"--output={tmp_path / 'activity'}"],
                              capture_output=True, text=True, timeout=300)
    assert activity.returncode == 0, activity.stderr[-3000:]
    row = json.loads((tmp_path / "activity.json").read_text())["rows"][0]
    spread = row["posterior_mean_std"]
    assert row["latent_size"] == len(spread) == TINY["m1_latent_size"]
    assert spread == sorted(spread, reverse=True)
    assert row["active"] == sum(s > 0.1 for s in spread)
    assert row["m1_dir"] == str(tmp_path / "runs" / "m1_seed0" / "m1")  # the shared M1
    assert row["head_error_percent"] == results["cells"]["m1/20"][0]["error"]
    assert row["head"] == "spreading, 10 neighbours, alpha 0.99"  # the default head
    # The spreading grid on that M1 reproduces the head's recorded error at its settings.
    grid = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "spreading_grid.py"),
                           f"--m1_dir={tmp_path / 'runs' / 'm1_seed0' / 'm1'}", "--labels=20",
                           "--neighbours=10", "--alphas=0.99,0.9", "--train_examples=300",
                           f"--data_dir={mnist_data_dir}", f"--output={tmp_path / 'grid'}"],
                          capture_output=True, text=True, timeout=300)
    assert grid.returncode == 0, grid.stderr[-3000:]
    cells = json.loads((tmp_path / "grid.json").read_text())["rows"]
    assert [(c["neighbours"], c["alpha"]) for c in cells] == [(10, 0.99), (10, 0.9)]
    recorded = json.loads((tmp_path / "runs" / "m1_20_seed0" / "results.json").read_text())
    assert cells[0]["labels"]["error"] == recorded["validation_error"]
    # Both input kinds, re-measured on the reloaded runs, match what the runs recorded.
    runs = [tmp_path / "runs" / f"{m}_20_seed0" for m in ("m2", "m1m2")]
    inputs = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "input_errors.py"),
                             *(f"--run_dir={r}" for r in runs), f"--data_dir={mnist_data_dir}",
                             f"--output={tmp_path / 'inputs'}"],
                            capture_output=True, text=True, timeout=300)
    assert inputs.returncode == 0, inputs.stderr[-3000:]
    for row, run in zip(json.loads((tmp_path / "inputs.json").read_text())["runs"], runs):
        recorded = json.loads((run / "results.json").read_text())
        assert row["binarized"] == row["recorded"] == recorded["validation_error"]
        assert row["grayscale"] == recorded["validation_error_grayscale"]
    modified = os.path.getmtime(tmp_path / "runs" / "m2_20_seed0" / "results.json")
    second = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert os.path.getmtime(tmp_path / "runs" / "m2_20_seed0" / "results.json") == modified

    # An m1_dir override: every seed uses one finished M1. A finished run linked into
    # the new root is skipped when it is this grid's run, and refused when it is not.
    shared_m1 = tmp_path / "runs" / "m1_seed0" / "m1"
    (tmp_path / "shared").mkdir()
    os.symlink(tmp_path / "runs" / "m1m2_20_seed0", tmp_path / "shared" / "m1m2_20_seed0")

    def overriding(m1_dir, hidden=6):
        return "--model_overrides=" + json.dumps(
            {"m1m2": {"epochs": 2, "hidden_sizes": [hidden], "m1_dir": str(m1_dir)}})

    shared = [a for a in args if not a.startswith(("--models", "--seeds", "--root", "--output",
                                                   "--model_overrides"))]
    shared += ["--models=m1m2", "--seeds=0,1", f"--root={tmp_path / 'shared'}",
               f"--output={tmp_path / 'shared_results'}"]
    third = subprocess.run(shared + [overriding(shared_m1)], capture_output=True, text=True,
                           timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    cells = json.loads((tmp_path / "shared_results.json").read_text())["cells"]["m1m2/20"]
    assert [c["seed"] for c in cells] == [0, 1]
    seed1 = json.loads((tmp_path / "shared" / "m1m2_20_seed1" / "config.json").read_text())
    assert seed1["m1_dir"] == str(shared_m1) and seed1["seed"] == 1
    assert not (tmp_path / "shared" / "m1_seed1").exists()  # no M1 trained for seed 1
    report = (tmp_path / "shared_results.md").read_text()
    assert f"Every m1m2 run uses the one M1 in `{shared_m1}`" in report
    refused = subprocess.run(shared + [overriding(shared_m1, hidden=7)], capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode != 0
    assert "hidden_sizes: [6] there, [7] now" in refused.stderr
    missing = subprocess.run(shared + [overriding(tmp_path), "--seeds=2"],
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode != 0
    assert f"{tmp_path} is not a finished M1" in missing.stderr  # it holds a results.json


def test_throughput_benchmark_writes_its_table(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "throughput.py"),
                           "--hidden_sizes=16", "--classifier_hidden_sizes=16",
                           "--m1_hidden_sizes=16", "--latent_size=4", "--steps=2",
                           "--repeats=1", f"--output={tmp_path / 'tp'}"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "tp.json").read_text())
    assert len(result["rows"]) == 9 and result["matmul_gflops_2048"] > 0
    assert result["bfloat16_matmul_gflops_2048"] > 0
    ms = [row["ms_per_step"] for row in result["rows"]]
    assert result["m2_ratio_ssl_dgm_over_plain"] == ms[2] / ms[0]
    assert result["m2_ratio_ssl_dgm_over_plain_looped"] == ms[2] / ms[1]
    assert result["m2_ratio_keras_loop_over_plain"] == ms[3] / ms[0]
    assert result["m2_ratio_tf_softplus_over_plain"] == ms[4] / ms[0]
    assert result["m2_ratio_ssl_dgm_over_tf_softplus"] == ms[2] / ms[4]
    assert result["m2_ratio_bfloat16_over_float32"] == ms[5] / ms[2]
    assert result["m1m2_ratio_cached_over_per_step"] == ms[8] / ms[7]
    assert all(r["ms_per_step"] > 0 for r in result["rows"])
    assert "--steps=2" in (tmp_path / "tp.md").read_text()


def test_curve_report_and_readme_blocks_copy_generated_numbers(tmp_path):
    run = tmp_path / "runs" / "m2_20_seed0"
    run.mkdir(parents=True)
    (run / "commands.txt").write_text("python train.py --model=m2 --labels=20\n")
    (run / "history.csv").write_text(
        "epoch,train_minutes,epoch_train_seconds,epoch_seconds,val_error\n"
        "1,0.5,30.0,31.0,0.25\n2,1.0,28.0,29.0,0.125\n")
    (run / "results.json").write_text(json.dumps({"validation_error": 0.125}))
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "curve.py"),
                           f"--run_dir={run}", f"--output={tmp_path / 'docs' / 'curve'}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "docs" / "curve.md").read_text()
    assert "| 2 | 1.0 | 12.50% |" in report and "median 29.0 s per epoch" in report
    assert "python train.py --model=m2 --labels=20" in report
    assert (tmp_path / "docs" / "curve.png").stat().st_size > 0

    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "readme_blocks", os.path.join(ROOT, "benchmarks", "readme_blocks.py"))
    blocks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(blocks)
    blocks.ROOT = str(tmp_path)
    (tmp_path / "README.md").write_text(
        "intro\n<!-- begin: docs/curve.md -->\nstale 99%\n<!-- end: docs/curve.md -->\nend\n")
    blocks.main()
    readme = (tmp_path / "README.md").read_text()
    assert "stale 99%" not in readme and "| 2 | 1.0 | 12.50% |" in readme
    assert "![curves](docs/curve.png)" in readme and readme.endswith("end\n")
    (tmp_path / "docs" / "experiments.md").write_text(
        "<!-- begin: docs/curve.md -->\n<!-- end: docs/curve.md -->\n")
    blocks.main()
    experiments = (tmp_path / "docs" / "experiments.md").read_text()
    assert "| 2 | 1.0 | 12.50% |" in experiments
    assert "![curves](curve.png)" in experiments  # relative to docs/


def test_time_to_error_counts_the_m1_minutes_and_stops_at_the_budget(tmp_path):
    run = tmp_path / "m1m2_100_seed0"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "m1m2", "labels": 100}))
    (run / "history.csv").write_text(
        "epoch,train_minutes,val_error\n"
        "1,10.0,0.0900\n2,50.0,0.0333\n3,95.0,0.0300\n4,100.0,0.0250\n")
    (run / "results.json").write_text(json.dumps({"eval_error": 0.025,
                                                  "m1": {"train_minutes": 22.5}}))
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "time_to_error.py"),
                           f"--run_dir={run}", f"--output={tmp_path / 'tte'}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    row, = json.loads((tmp_path / "tte.json").read_text())["rows"]
    # 3.33% (the paper's M1+M2) is first reached at epoch 2: 22.5 M1 + 50 minutes.
    assert (row["reached_epoch"], row["reached_minutes"]) == (2, 72.5)
    # 120 minutes incl. M1 end after epoch 3 (117.5); epoch 4 ends at 122.5.
    assert (row["budget_epoch"], row["budget_error"]) == (3, 3.0)
    assert row["final_minutes"] == 122.5 and row["final_error"] == 2.5
    assert "| 3.33 | 2 (72.5) | 3.00 at 3 (≤ 120) | 2.50 (4, 122.5) |" in (
        tmp_path / "tte.md").read_text()


def _traced_matmul_flops(step, *args):
    """2·m·k·n summed over the MatMul ops of `step`'s traced graph."""
    import tensorflow as tf

    total = 0
    for op in tf.function(step).get_concrete_function(*args).graph.get_operations():
        if op.type == "MatMul":
            a, b = op.inputs[0].shape, op.inputs[1].shape
            m, k = (a[1], a[0]) if op.get_attr("transpose_a") else (a[0], a[1])
            total += 2 * m * k * (b[0] if op.get_attr("transpose_b") else b[1])
    return total


def test_throughput_flop_counts_equal_the_matmuls_of_the_traced_steps():
    import tensorflow as tf

    from benchmarks import throughput
    from ssl_dgm.m1 import M1
    from ssl_dgm.m2 import M2

    def gradients(model, *args):
        def step(*args):
            with tf.GradientTape() as tape:
                loss = model.training_terms(*args)["loss"]
            return tape.gradient(loss, model.trainable_variables)
        return step

    d, b_l, b_u = 6, 3, 4
    x_l, x_u = tf.random.uniform([b_l, d]), tf.random.uniform([b_u, d])
    m1 = M1(d, hidden_sizes=(5, 4), latent_size=2, seed=0)
    m1.build()
    assert _traced_matmul_flops(gradients(m1, x_u, None), x_u, None) == throughput.m1_flops(
        b_u, d, (5, 4), 2)
    m2 = M2(d, hidden_sizes=(5, 4), classifier_hidden_sizes=(7,), latent_size=2, seed=0, alpha=1.0)
    m2.build()
    batch = {"labeled_x": x_l, "labels": tf.constant([0, 1, 2]), "unlabeled_x": x_u}
    assert _traced_matmul_flops(gradients(m2, batch, None), batch, None) == throughput.m2_flops(
        b_l, b_u, d, (5, 4), (7,), 2, shared_first_layer=True)
    # The reference step; its optimizer adds no matmuls.
    plain = throughput.naive_m2_step((5, 4), (7,), 2, alpha=1.0, d=d).python_function
    traced = _traced_matmul_flops(plain, x_l, tf.constant([0, 1, 2]), x_u, tf.constant([0, 0]))
    assert traced == throughput.m2_flops(b_l, b_u, d, (5, 4), (7,), 2, shared_first_layer=False)


def test_throughput_tf_softplus_row_traces_tfs_softplus_and_restores_ours():
    import tensorflow as tf

    from benchmarks import throughput
    from ssl_dgm import distributions

    def op_types(x):
        graph = tf.function(lambda l: distributions.bernoulli(l).log_prob(x)).get_concrete_function(
            tf.TensorSpec([2, 3])).graph
        return {op.type for op in graph.get_operations()}

    ours = distributions.softplus
    x = tf.constant([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5]])
    with throughput.tf_softplus():
        assert "Softplus" in op_types(x)
    assert distributions.softplus is ours and "Softplus" not in op_types(x)
