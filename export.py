"""Exports a finished M2 or M1+M2 run as SavedModels for TF Serving.

    python export.py --model_dir=runs/m1m2_100_seed0 [--export_dir=saved_models] [--version=N]

Writes ``<export_dir>/classifier/<N>/``, ``<export_dir>/generator/<N>/`` (see
ssl_dgm/serving.py for the signatures) and ``<export_dir>/models.config``.
"""

import sys

from absl import app, flags

flags.DEFINE_string("model_dir", None, "A finished m2 or m1m2 run directory.", required=True)
flags.DEFINE_string("export_dir", "saved_models", "Base folder of the exported models.")
flags.DEFINE_integer("version", None, "Version folder to write (default: next integer).")
flags.DEFINE_string("serving_base_path", "/models",
                    "Where the server will see export_dir, for models.config.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from ssl_dgm import quiet
    quiet.quiet_tensorflow(verbose=FLAGS["verbosity"].present)
    from ssl_dgm import serving

    try:
        written = serving.export_run(FLAGS.model_dir, FLAGS.export_dir, FLAGS.version,
                                     FLAGS.serving_base_path)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    app.run(main)
