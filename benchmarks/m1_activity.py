"""How many latent dimensions finished M1s use, beside their bound and head error.

    python benchmarks/m1_activity.py --run=M1_RUN_A --run=M1_RUN_B --output=docs/m1_activity

Each --run is a finished ``--model=m1`` run (M1 + a head); its M1 is the
run's ``--m1_dir`` or its own ``m1/`` folder.  M1+M2 models only the dimensions
whose posterior mean varies over the data (std > 0.1, as the original code did),
so this count is what the M2 stage sees.  For each run it writes the count, the
sorted per-dimension std of the posterior means on the validation split, M1's
stored validation -ELBO and settings, and the head's error.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.records import command_line, write_report  # noqa: E402

flags.DEFINE_multi_string("run", None, "Finished --model=m1 run directories.", required=True)
flags.DEFINE_string("data_dir", os.environ.get("TFDS_DATA_DIR"), "TFDS data folder.")
flags.DEFINE_string("output", None, "Writes OUTPUT.md and OUTPUT.json.", required=True)
flags.DEFINE_integer("images", 10000, "Validation images the spread is measured on.")
FLAGS = flags.FLAGS

THRESHOLD = 0.1


def head_settings(config):
    if config["m1_head"] == "spreading":
        return (f"spreading, {config['spreading_neighbours']} neighbours, "
                f"alpha {config['spreading_alpha']:g}")
    return f"softmax, lr {config['head_learning_rate']:g}, {config['head_steps']} steps"


def main(argv):
    del argv
    import numpy as np

    from ssl_dgm import data, training
    from ssl_dgm.m1 import posterior_means

    validation = data.load_split("validation", "mnist", FLAGS.data_dir)
    images = validation.images[:FLAGS.images]
    rows = []
    for run_dir in FLAGS.run:
        config = training.stored_config(
            training.read_json(os.path.join(run_dir, "config.json")))
        run = training.read_json(os.path.join(run_dir, "results.json"))
        if config["model"] != "m1":
            raise ValueError(f"{run_dir} is an {config['model']} run, not an m1 run")
        folder = config["m1_dir"] or os.path.join(run_dir, "m1")
        m1, summary = training.load_m1(folder, int(np.prod(images.shape[1:])))
        means = posterior_means(m1, images)
        spread = np.sort(means.std(axis=0))[::-1]
        rows.append({"run": run_dir, "m1_dir": folder, "active": int(np.sum(spread > THRESHOLD)),
                     "latent_size": int(spread.size),
                     "validation_negative_elbo": summary.get("validation_negative_elbo"),
                     "epochs": summary.get("epochs_done"), "config": summary["config"],
                     "head_error_percent": 100 * run["eval_error"],
                     "head": head_settings(config),
                     "posterior_mean_std": [round(float(s), 3) for s in spread]})
    command = command_line()
    lines = ["# Latent dimensions M1 uses", "", f"Written by `{command}`; spread of the "
             f"posterior means over the first {len(images)} validation images.", "",
             "| m1 run (its M1) | active dims (std > 0.1) | validation -ELBO | epochs | KL warm-up epochs |"
             " head error % (head settings) |", "|---|---|---|---|---|---|"]
    for r in rows:
        elbo, head = r["validation_negative_elbo"], r["head_error_percent"]
        lines.append(f"| `{r['run']}` (`{r['m1_dir']}`) | {r['active']} of {r['latent_size']} | "
                     f"{'—' if elbo is None else f'{elbo:.2f}'} | {r['epochs']} | "
                     f"{r['config'].get('m1_kl_warmup_epochs', 0)} | "
                     f"{head:.2f} ({r['head']}) |")
    lines.append("")
    write_report(FLAGS.output, "\n".join(lines), {"command": command, "rows": rows})


if __name__ == "__main__":
    app.run(main)
