"""Figures of a trained M2 / M1+M2 generator, as PNGs (matplotlib).

    python -m ssl_dgm.figures --export_dir=saved_models --output_dir=docs/figures
    python -m ssl_dgm.figures --model_dir=RUN --output_dir=docs/figures

* ``styles.png`` -- the paper's figure 1a: for each label (a column), a sweep
  over z.  With a 2-D z the sweep is a grid over z's prior quantiles; with a
  larger z, the first two latent dimensions sweep and the rest stay at 0.
* ``analogies.png`` -- figure 1b: validation images in the first column, then
  the same style (z = E[q(z|x, y*)]) drawn as every digit.
* ``samples.png`` -- class-conditional samples, one row per class.

All images are Bernoulli means, drawn through the ``generator`` signatures that
export.py saves (from the SavedModel itself with --export_dir, or the same
`serving.Generator` module around a run with --model_dir), so the figures show
what the SavedModel gives.
"""

import os

import numpy as np
import tensorflow as tf
from absl import app, flags

from ssl_dgm import builders, data, rundir, serving


def _save_grid(tiles, path, title, first_column_divider=False):
    """tiles: ``[rows, cols, H, W, 1]`` in [0, 1]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols, height, width = tiles.shape[:4]
    canvas = np.full((rows * (height + 1), cols * (width + 1)), 0.3)
    for r in range(rows):
        for c in range(cols):
            canvas[r * (height + 1):r * (height + 1) + height,
                   c * (width + 1):c * (width + 1) + width] = tiles[r, c, ..., 0]
    fig = plt.figure(figsize=(cols * 0.5 + 0.4, rows * 0.5 + 0.6))
    plt.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    if first_column_divider:
        plt.axvline(width + 0.5, color="tab:red", linewidth=1.5)
    plt.title(title, fontsize=9)
    plt.axis("off")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def styles(generator, num_classes, latent_size, steps=8):
    """``[steps * steps, K, H, W, 1]``: rows sweep z, columns are labels."""
    quantiles = tf.math.ndtri(tf.linspace(0.05, 0.95, steps)).numpy()
    z2 = np.stack(np.meshgrid(quantiles, quantiles[::-1]), -1).reshape(-1, 2)
    z = np.zeros((len(z2), latent_size), np.float32)
    z[:, :2] = z2
    columns = [generator.generate(tf.fill([len(z)], k), tf.constant(z))["images"].numpy()
               for k in range(num_classes)]
    return np.stack(columns, axis=1)


def load_generator(model_dir=None, export_dir=None):
    """``(generator, dataset)``: the newest exported generator in `export_dir` (loaded
    with `tf.saved_model.load` alone), or the `serving.Generator` of the finished run
    in `model_dir`; dataset is the TFDS name its validation images come from."""
    if export_dir is not None:
        card = os.path.join(export_dir, "model_card.json")
        dataset = rundir.read_json(card).get("dataset", "mnist") if os.path.exists(card) \
            else "mnist"
        return tf.saved_model.load(serving.newest(export_dir, "generator")), dataset
    model, config, results = builders.load_trained(model_dir)
    return serving.Generator(model, results["image_shape"]), config.data.dataset


def generator_sizes(generator):
    """``(classes, latent_size)`` from a generator's signatures."""
    spec = generator.analogies.get_concrete_function().structured_outputs["images"]
    latent = generator.generate.get_concrete_function().structured_input_signature[0][1]
    return int(spec.shape[1]), int(latent.shape[-1])


def make_figures(generator, validation_images, output_dir, seed=0):
    """Writes styles.png, analogies.png, samples.png of `generator`; returns their paths.

    Args:
      generator: a `serving.Generator`, or the SavedModel export.py wrote of one.
      validation_images: images to draw analogies of, ``[n, H, W, C]`` in [0, 1].
    """
    classes, latent_size = generator_sizes(generator)
    os.makedirs(output_dir, exist_ok=True)
    paths = {name: os.path.join(output_dir, f"{name}.png")
             for name in ("styles", "analogies", "samples")}

    grid = styles(generator, classes, latent_size)
    steps = int(round(np.sqrt(len(grid))))
    # Show the sweep for a few labels side by side: [steps, steps * shown, H, W, 1].
    shown = [k for k in (0, 2, 4, 7) if k < classes]
    panel = np.concatenate([grid[:, k].reshape(steps, steps, *grid.shape[2:]) for k in shown],
                           axis=1)
    which = "z" if latent_size == 2 else "z[0], z[1] (others 0)"
    _save_grid(panel, paths["styles"],
               f"Fixed label {shown}, sweep over {which}")

    rng = np.random.default_rng(seed)
    picked = validation_images[rng.choice(len(validation_images), 10, replace=False)]
    analogies = generator.analogies(tf.constant(picked))["images"].numpy()
    _save_grid(np.concatenate([picked[:, None], analogies], axis=1), paths["analogies"],
               "Left: validation images. Right: their style drawn as every digit",
               first_column_divider=True)

    per_class = 10
    labels = np.repeat(np.arange(classes), per_class).astype(np.int32)
    seeds = (seed * 100000 + np.arange(len(labels))).astype(np.int32)
    samples = generator.sample(tf.constant(labels), tf.constant(seeds))["images"].numpy()
    _save_grid(samples.reshape(classes, per_class, *samples.shape[1:]), paths["samples"],
               "Samples, one row per conditioning class")
    return paths


def main(argv):
    del argv
    flags_ = flags.FLAGS
    if (flags_.model_dir is None) == (flags_.export_dir is None):
        raise app.UsageError("give one of --model_dir and --export_dir")
    generator, dataset = load_generator(flags_.model_dir, flags_.export_dir)
    validation = data.load_split("validation", dataset, flags_.data_dir)
    for path in make_figures(generator, validation.images, flags_.output_dir,
                             flags_.seed).values():
        print(path)


if __name__ == "__main__":
    # Flags exist only when this module is the program, never on import.
    flags.DEFINE_string("model_dir", None, "A finished m2 or m1m2 run.")
    flags.DEFINE_string("export_dir", None, "An export folder (its newest generator).")
    flags.DEFINE_string("output_dir", "docs/figures", "Where the PNGs go.")
    flags.DEFINE_string("data_dir", os.environ.get("TFDS_DATA_DIR"), "TFDS data folder.")
    flags.DEFINE_integer("seed", 0, "Which validation images and sample seeds.")
    app.run(main)
