"""The benchmark scripts run end to end on tiny settings."""

import json
import os
import subprocess
import sys

import pytest

from ssl_dgm import rundir
from tests.conftest import ROOT

TINY = ["data.train_examples=300", "data.batch_size=50", "data.labeled_batch_size=20",
        "m2.hidden_sizes=8", "m2.classifier_hidden_sizes=8", "m2.latent_size=3",
        "m1.hidden_sizes=8", "m1.latent_size=4", "runtime.steps_per_execution=3",
        "head.steps=5", "m1.optimization.epochs=1", "m2.optimization.epochs=1",
        "runtime.jit_compile=false"]  # the harness is tested, not the compiled step


def harness(*args, root, output, data_dir):
    return subprocess.run([sys.executable, "-m", "benchmarks.table1", *args, f"--root={root}",
                           f"--output={output}", f"--data_dir={data_dir}",
                           *(f"--set={s}" for s in TINY)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_table1_harness_runs_a_tiny_grid_resumes_and_reports_missing_cells(mnist_data_dir,
                                                                          tmp_path):
    root, output = tmp_path / "runs", tmp_path / "results"
    first = harness("--models=m1,m2,m1m2", "--labels=20", "--seeds=0", root=root,
                    output=output, data_dir=mnist_data_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [len(results["cells"][k]) for k in ("m1/20", "m2/20", "m1m2/20")] == [1, 1, 1]
    assert results["missing"] == []
    # Within a seed, the runs on its M1 train first, then M2.
    order = [line.split("/")[-1] for line in first.stdout.splitlines() if line.startswith("== ")]
    assert order == ["m1_seed0: the M1 of seed 0", "m1_20_seed0", "m1m2_20_seed0", "m2_20_seed0"]
    # One M1 for the seed, trained by the m1 preset and used by its m1 and m1m2 runs.
    shared = root / "m1_seed0" / "m1"
    assert (shared / "m1.weights.h5").exists()
    for model in ("m1", "m1m2"):
        stored = json.loads((root / f"{model}_20_seed0" / "config.json").read_text())
        assert stored["m1_dir"] == str(shared) and not (root / f"{model}_20_seed0" / "m1").exists()
    recorded = [json.loads((root / f"{m}_20_seed0" / "results.json").read_text())
                for m in ("m1", "m2", "m1m2")]
    assert [r["eval_error"] * 100 for r in recorded] == [
        results["cells"][k][0]["error"] for k in ("m1/20", "m2/20", "m1m2/20")]
    # The grid's minutes count the shared M1 (and its run's head) once, not in each of
    # the two runs on it.
    shared = json.loads((root / "m1_seed0" / "results.json").read_text())
    assert results["total_train_minutes"] == pytest.approx(
        shared["total_train_minutes"] + sum(r["train_minutes"] for r in recorded))
    assert results["m1_train_minutes"] == {"0": recorded[2]["m1"]["train_minutes"]}
    table = (tmp_path / "results.md").read_text()
    assert table.count(f"| {rundir.machine()} |") == 3  # each run names its machine
    assert "| paper M1+M2 (test) | — |" in table  # N=20 is not in the paper
    assert "python -m benchmarks.table1 --models=m1,m2,m1m2" in table
    assert "`m2.hidden_sizes=8`" in table and "table1.py" not in table

    # Rerun with a second seed: the finished runs are skipped (not rewritten), the new
    # cells are trained, and a report written before they finish names what is missing.
    modified = os.path.getmtime(root / "m2_20_seed0" / "results.json")
    partial = subprocess.run([sys.executable, "-m", "benchmarks.table1", "--models=m2",
                              "--labels=20", "--seeds=0,1", f"--root={root}",
                              f"--output={tmp_path / 'partial'}", "--report_only"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert partial.returncode == 0, partial.stderr[-3000:]
    assert json.loads((tmp_path / "partial.json").read_text())["missing"] == ["m2/20 seed 1"]
    assert "Missing (1): m2/20 seed 1." in (tmp_path / "partial.md").read_text()
    assert " 1 of the 2 runs finished, " in (tmp_path / "partial.md").read_text()
    second = harness("--models=m2", "--labels=20", "--seeds=0,1", root=root, output=output,
                     data_dir=mnist_data_dir)
    assert second.returncode == 0, second.stderr[-3000:]
    assert os.path.getmtime(root / "m2_20_seed0" / "results.json") == modified
    cells = json.loads((tmp_path / "results.json").read_text())["cells"]["m2/20"]
    assert [c["seed"] for c in cells] == [0, 1]
    # With --records each finished run is copied there (no checkpoints; the M1 weights
    # kept), and a root that lost its runs is given them back instead of retraining.
    records, lost = tmp_path / "records", tmp_path / "lost"
    kept = harness("--models=m1m2", "--labels=20", "--seeds=0", f"--records={records}",
                   root=root, output=output, data_dir=mnist_data_dir)
    assert kept.returncode == 0, kept.stderr[-3000:]
    assert sorted(p.name for p in records.iterdir()) == ["m1_seed0", "m1m2_20_seed0"]
    assert (records / "m1_seed0" / "m1" / "m1.weights.h5").exists()
    assert not list(records.glob("*/checkpoints")) and not list(records.glob("*/*/checkpoints"))
    assert "[m1m2/20 seed 0](records/m1m2_20_seed0)" in (tmp_path / "results.md").read_text()
    moved = harness("--models=m1m2", "--labels=20", "--seeds=0", f"--records={records}",
                    root=lost, output=output, data_dir=mnist_data_dir)
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert "restored from" in moved.stdout and "M1 stage" not in moved.stdout
    assert (json.loads((lost / "m1m2_20_seed0" / "results.json").read_text())
            == json.loads((root / "m1m2_20_seed0" / "results.json").read_text()))
    # An unfinished attempt is replaced by the finished record; a record made with
    # other settings is not restored (the grid would train that run again).
    attempt = tmp_path / "attempt" / "m1m2_20_seed0"
    attempt.mkdir(parents=True)
    (attempt / "history.csv").write_text("epoch\n1\n")
    report_only = ["--models=m1m2", "--labels=20", "--seeds=0", f"--records={records}",
                   "--report_only"]
    replaced = harness(*report_only, root=attempt.parent, output=output,
                       data_dir=mnist_data_dir)
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert (attempt / "results.json").exists() and not (attempt / "history.csv").read_text() \
        .startswith("epoch\n1\n")
    other = tmp_path / "other"
    refused = harness(*report_only, "--set=m2.alpha=7", root=other, output=output,
                      data_dir=mnist_data_dir)
    assert refused.returncode == 0, refused.stderr[-3000:]
    assert "not restored, made with other settings (m2.alpha: None there, 7.0 now" in \
        refused.stdout
    assert (other / "m1_seed0" / "m1" / "m1.weights.h5").exists()  # its M1 is the grid's
    assert not (other / "m1m2_20_seed0").exists()
    assert "Missing (1): m1m2/20 seed 0." in (tmp_path / "results.md").read_text()
    # A finished run that is not this grid's run is refused, not reported.
    other = harness("--models=m2", "--labels=20", "--seeds=0", "--set=m2.alpha=7",
                    root=root, output=output, data_dir=mnist_data_dir)
    assert other.returncode != 0 and "m2.alpha: None there, 7.0 now" in other.stderr


def test_throughput_benchmark_writes_its_table(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--hidden_sizes=16",
                           "--classifier_hidden_sizes=16", "--m1_hidden_sizes=16",
                           "--latent_size=4", "--steps=2", "--repeats=1", "--probe_repeats=1",
                           f"--output={tmp_path / 'tp'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "tp.json").read_text())
    assert len(result["rows"]) == 7 and result["matmul_gflops_2048"] > 0
    ms = [row["ms_per_step"] for row in result["rows"]]
    assert result["m2_ratio_ssl_dgm_over_plain"] == ms[2] / ms[0]
    assert result["m2_ratio_ssl_dgm_over_plain_looped"] == ms[2] / ms[1]
    assert result["m1m2_ratio_cached_over_per_step"] == ms[5] / ms[4]
    assert result["m1m2_ratio_cached_shared_noise_over_per_step"] == ms[6] / ms[4]
    assert all(r["ms_per_step"] > 0 for r in result["rows"])
    assert "python -m benchmarks.throughput --hidden_sizes=16" in (tmp_path / "tp.md").read_text()


def test_readme_blocks_copy_generated_reports(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "report.md").write_text(
        "# Report\n\n| epoch | error |\n|---|---|\n| 2 | 12.50% |\n\n![curves](curve.png)\n"
        "[run](runs/a) [paper](https://arxiv.org/abs/1406.5298)\n\n## Runs\n\n| run 7 |\n")
    from benchmarks import readme_blocks

    original = readme_blocks.ROOT
    readme_blocks.ROOT = str(tmp_path)
    try:
        (tmp_path / "README.md").write_text(
            "intro\n<!-- begin: docs/report.md -->\nstale 99%\n<!-- end: docs/report.md -->"
            "\nend\n")
        (tmp_path / "docs" / "experiments.md").write_text(
            "<!-- begin: docs/report.md -->\n<!-- end: docs/report.md -->\n")
        readme_blocks.main()
        summary = readme_blocks.render("docs/report.md#summary")
    finally:
        readme_blocks.ROOT = original
    readme = (tmp_path / "README.md").read_text()
    assert "stale 99%" not in readme and "| 2 | 12.50% |" in readme
    assert "# Report" not in readme and readme.endswith("end\n")
    assert "![curves](docs/curve.png)" in readme and "[run](docs/runs/a)" in readme
    assert "[paper](https://arxiv.org/abs/1406.5298)" in readme and "| run 7 |" in readme
    assert "| 2 | 12.50% |" in summary and "Runs" not in summary and "run 7" not in summary
    experiments = (tmp_path / "docs" / "experiments.md").read_text()
    assert "![curves](curve.png)" in experiments  # relative to docs/


def test_time_to_error_counts_the_m1_minutes_and_stops_at_the_budget(tmp_path):
    run = tmp_path / "m1m2_100_seed0"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "m1m2", "data": {"labels": 100}}))
    (run / "history.csv").write_text(
        "epoch,train_minutes,val_error\n"  # epochs 2 and 5 did not validate
        "1,10.0,0.0900\n2,30.0,\n3,50.0,0.0333\n4,95.0,0.0300\n5,97.0,\n6,100.0,0.0250\n")
    (run / "results.json").write_text(json.dumps({"eval_error": 0.025,
                                                  "m1": {"train_minutes": 22.5}}))
    done = subprocess.run([sys.executable, "-m", "benchmarks.time_to_error", f"--run_dir={run}",
                           f"--output={tmp_path / 'tte'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    row, = json.loads((tmp_path / "tte.json").read_text())["rows"]
    # 3.33% (the paper's M1+M2) is first reached at epoch 3: 22.5 M1 + 50 minutes.
    assert (row["reached_epoch"], row["reached_minutes"]) == (3, 72.5)
    # 120 minutes incl. M1 end after epoch 5 (119.5), which did not validate: epoch 4's
    # error is the budget's; epoch 6 ends at 122.5.
    assert (row["budget_epoch"], row["budget_error"]) == (4, 3.0)
    assert row["final_minutes"] == 122.5 and row["final_error"] == 2.5
    assert "| 3.33 | 3 (72.5) | 3.00 at 4 (≤ 120) | 2.50 (6, 122.5) |" in (
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


def test_model_card_grades_the_generator_with_an_independent_judge(mnist_data_dir, tmp_path):
    import numpy as np
    import tensorflow as tf

    from ssl_dgm import data, presets, rundir, serving
    from ssl_dgm.m2 import M2

    model = M2(784, num_classes=10, latent_size=3, hidden_sizes=(8,),
               classifier_hidden_sizes=(6,), seed=0)
    model.build()
    run = tmp_path / "run"
    rundir.create(str(run), presets.get("m2"), "python train.py --model=m2").release()
    serving.save_all({"classifier": serving.Classifier(model, (28, 28, 1)),
                      "generator": serving.Generator(model, (28, 28, 1))},
                     str(tmp_path / "export"), 1)
    done = subprocess.run([sys.executable, "-m", "benchmarks.model_card", f"--model_dir={run}",
                           f"--export_dir={tmp_path / 'export'}", f"--data_dir={mnist_data_dir}",
                           f"--judge_dir={tmp_path / 'judge'}", "--judge_epochs=1",
                           "--judge_examples=2000", "--per_class=6", "--latency_calls=3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((tmp_path / "export" / "model_card.json").read_text())
    judge = json.loads((tmp_path / "judge" / "judge.json").read_text())
    assert (judge["dataset"], judge["epochs"], judge["train_images"]) == ("mnist", 1, 2000)
    assert 0.5 < judge["validation_accuracy"] <= 1.0  # a real classifier, not chance
    assert card["judge"] == judge and len(card["class_consistency_per_class"]) == 10
    assert card["training_commands"] == ["python train.py --model=m2"]
    # The shipped classifier's numbers, recomputed here from the model itself.
    validation = data.load_split("validation", data_dir=mnist_data_dir)
    grey = np.mean(np.argmax(model.predict(validation.images, verbose=0), -1)
                   != validation.labels)
    assert card["validation_error_grayscale"] == pytest.approx(grey, abs=1e-12)
    sample = tf.saved_model.load(str(tmp_path / "export" / "generator" / "1")).signatures["sample"]
    agree = [np.mean(np.argmax(model(sample(labels=tf.fill([6], k), seed=tf.constant(
        k * 6 + np.arange(6), tf.int32))["images"]).numpy(), -1) == k) for k in range(10)]
    assert card["class_consistency_own_classifier"] == pytest.approx(np.mean(agree))
    assert "independent judge" in (tmp_path / "export" / "MODEL_CARD.md").read_text()
