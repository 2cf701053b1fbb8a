"""The M2 Keras model: call, train_step, test_step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssl_dgm import objectives
from ssl_dgm.m2 import M2

BATCH_L, BATCH_U, DIM, CLASSES = 3, 5, 6, 4


def tiny_m2(**kwargs):
    model = M2(input_size=DIM, num_classes=CLASSES, latent_size=2, hidden_sizes=(7,),
               classifier_hidden_sizes=(8,), alpha=3.0, seed=1, **kwargs)
    model.build()
    return model


def batch(seed=0):
    rng = np.random.default_rng(seed)
    x_l = rng.integers(0, 2, (BATCH_L, 2, 3)).astype(np.float32)  # flattens to 6
    y_l = np.array([0, 3, 1], np.int64)
    x_u = rng.integers(0, 2, (BATCH_U, 2, 3)).astype(np.float32)
    return {"labeled_x": tf.constant(x_l), "labels": tf.constant(y_l),
            "unlabeled_x": tf.constant(x_u)}


def test_mixed_bfloat16_matches_float32_bounds_with_the_same_weights():
    exact = tiny_m2()
    mixed = tiny_m2(precision="mixed_bfloat16")
    for source, target in zip(exact.weights, mixed.weights):
        target.assign(source)  # weights stay float32 under the mixed policy
    assert all(w.dtype == "float32" for w in mixed.weights)
    assert mixed.encoder.projections[0].compute_dtype == "bfloat16"
    data = batch()
    seeds = tf.constant([[1, 2], [3, 4]])
    bounds = [objectives.m2_objective(model.flatten(data["labeled_x"]), data["labels"],
                                      model.flatten(data["unlabeled_x"]), model, model.alpha,
                                      seeds)
              for model in (exact, mixed)]
    for name in ("labeled_bound", "unlabeled_bound", "classification"):
        assert bounds[1][name].dtype == tf.float32
        # bfloat16 keeps 8 significant bits: agreement to ~1%, not bit-exact.
        np.testing.assert_allclose(bounds[1][name], bounds[0][name], rtol=2e-2, atol=1e-2)
    assert not np.array_equal(bounds[1]["unlabeled_bound"], bounds[0]["unlabeled_bound"])


def test_call_returns_class_probabilities_of_the_classifier():
    model = tiny_m2()
    x = batch()["unlabeled_x"]
    probabilities = model(x).numpy()
    assert probabilities.shape == (BATCH_U, CLASSES)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-6)
    logits = model.classifier(tf.reshape(x, [BATCH_U, DIM])).numpy()
    np.testing.assert_allclose(probabilities, tf.nn.softmax(logits).numpy(), rtol=1e-5)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_train_steps_lower_the_objective_and_report_its_terms(jit_compile):
    model = tiny_m2()
    model.compile(optimizer=keras.optimizers.Adam(0.05), jit_compile=jit_compile)
    data = batch()
    x_l, y_l, x_u = data["labeled_x"], data["labels"], data["unlabeled_x"]
    flat = lambda x: tf.reshape(x, [-1, DIM])
    fixed = tf.constant([[5, 5], [6, 6]])

    def objective():
        return objectives.m2_objective(flat(x_l), y_l, flat(x_u), model, model.alpha,
                                       fixed)["loss"].numpy()

    before = objective()
    for _ in range(30):
        logs = model.train_on_batch(data, return_dict=True)
    after = objective()
    assert after < before - 1.0, (before, after)
    assert set(logs) >= {"loss", "labeled_bound", "unlabeled_bound", "classification", "error"}
    assert all(np.isfinite(v) for v in logs.values())
    # 30 steps on three labeled points: the classifier fits them.
    assert np.argmax(model(x_l).numpy(), -1).tolist() == y_l.numpy().tolist()


@pytest.mark.parametrize("jit_compile", [False, True])
def test_blocks_of_steps_train_exactly_as_one_step_per_call(jit_compile):
    # 7 batches in blocks of 3 (3 + 3 + 1, the last block shorter): the same seven
    # optimizer steps, on the same data and random draws, as one step per call.
    data = batch()
    stream = tf.data.Dataset.range(7).map(  # another unlabeled batch at every step
        lambda i: {**data, "unlabeled_x": tf.roll(data["unlabeled_x"], i, axis=0)})
    reference = tiny_m2()
    initial = [w.numpy() for w in reference.weights]
    results = []
    for steps in (1, 3):
        model = tiny_m2()
        for weight, value in zip(model.weights, initial):  # same start, same seed state
            weight.assign(value)
        model.compile(optimizer=keras.optimizers.Adam(0.05), jit_compile=jit_compile)
        logs = model.fit(model.blocks(stream, steps), epochs=1, verbose=0).history
        results.append(([w.numpy() for w in model.trainable_weights],
                        int(model.optimizer.iterations), logs))
    (plain, plain_steps, plain_logs), (blocked, blocked_steps, blocked_logs) = results
    assert plain_steps == blocked_steps == 7
    assert not np.allclose(plain[0], reference.trainable_weights[0].numpy(), atol=1e-2)
    for a, b in zip(plain, blocked):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for name in ("loss", "unlabeled_bound", "classification"):
        np.testing.assert_allclose(plain_logs[name], blocked_logs[name], rtol=1e-4)


def test_test_step_error_matches_argmax_of_call():
    model = tiny_m2()
    model.compile(optimizer="adam")
    x_l, y_l = batch(3)["labeled_x"], batch(3)["labels"]
    logs = model.test_on_batch(x_l, y_l, return_dict=True)
    wrong = np.mean(np.argmax(model(x_l).numpy(), -1) != y_l.numpy())
    assert logs["error"] == pytest.approx(wrong)
    assert logs["labeled_bound"] > 0 and logs["unlabeled_bound"] > 0


def test_gaussian_likelihood_for_continuous_inputs():
    model = tiny_m2(likelihood="gaussian")
    assert model.decoder.layers_after[-1].units == 2 * DIM
    model.compile(optimizer="adam")
    data = batch()
    data = dict(data, labeled_x=data["labeled_x"] * 0.3, unlabeled_x=data["unlabeled_x"] - 0.5)
    logs = model.train_on_batch(data, return_dict=True)
    assert np.isfinite(logs["loss"])


def test_decoder_bias_initialises_the_mean_image():
    bias = np.linspace(-2, 2, DIM).astype(np.float32)
    model = tiny_m2(decoder_bias=bias)
    np.testing.assert_allclose(model.decoder.layers_after[-1].bias.numpy(), bias)
