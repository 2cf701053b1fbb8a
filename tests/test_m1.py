"""M1 (the VAE), its softmax head, and the stacked M1+M2 model."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssl_dgm import distributions
from ssl_dgm.m1 import M1, LatentClassifier
from ssl_dgm.stacked import M1M2, active_dimensions

BATCH, DIM, LATENT = 3, 7, 5


def tiny_m1(seed=1):
    model = M1(DIM, latent_size=LATENT, hidden_sizes=(6,), seed=seed)
    model.build()
    return model


def binary_images(n=BATCH, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.integers(0, 2, (n, 1, DIM)).astype(np.float32))  # flattens to 7


def test_negative_elbo_matches_an_independent_monte_carlo_estimate():
    model = tiny_m1()
    x = binary_images()
    # The training loss (one sample, closed-form KL), averaged over many seeds.
    loss = tf.function(lambda: model.training_terms(x, None)["loss"])  # one trace, 300 draws
    losses = [float(loss()) for _ in range(300)]
    # Independent estimate: -E_q[log p(x|z) + log p(z) - log q(z|x)] by sampling only.
    posterior = model.posterior(x)
    z = posterior.sample(20000, seed=tf.constant([3, 1]))                  # [S, B, Z]
    log_ratio = (distributions.bernoulli(model.decoder(z)).log_prob(tf.reshape(x, [BATCH, DIM]))
                 + distributions.standard_normal(LATENT).log_prob(z)
                 - posterior.log_prob(z)).numpy()
    monte_carlo = -log_ratio.mean(axis=0).mean()
    standard_error = np.std(losses) / math.sqrt(len(losses)) + (
        log_ratio.mean(axis=1).std() / math.sqrt(len(log_ratio)))
    assert abs(np.mean(losses) - monte_carlo) < 5 * standard_error + 1e-3, (
        np.mean(losses), monte_carlo, standard_error)


def test_training_lowers_the_negative_elbo():
    model = tiny_m1()
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    x = binary_images(16, seed=2)
    before = model.evaluate(x, verbose=0, return_dict=True)["loss"]
    model.fit(x, epochs=40, batch_size=16, verbose=0)
    after = model.evaluate(x, verbose=0, return_dict=True)["loss"]
    assert after < before - 0.5, (before, after)


def test_kl_warmup_weights_the_rate_by_the_step_but_reports_the_true_elbo():
    warm = M1(DIM, latent_size=LATENT, hidden_sizes=(6,), kl_warmup_steps=4, seed=1)
    warm.build()
    twin = tiny_m1(seed=1)  # same weights and noise, no warm-up
    twin.set_weights(warm.get_weights())
    warm.compile(optimizer=keras.optimizers.SGD(0.1))
    x = binary_images()
    for step in range(2):  # beta = 1/4, then 2/4
        with tf.GradientTape() as tape:
            terms = twin.evaluation_terms(x, None)
            objective = terms["distortion"] + (step + 1) / 4 * terms["rate"]
        gradients = tape.gradient(objective, twin.trainable_variables)
        for variable, gradient in zip(twin.trainable_variables, gradients):
            variable.assign_sub(0.1 * gradient)
        logs = warm.train_on_batch(x, return_dict=True)
        for mine, expected in zip(warm.get_weights(), twin.get_weights()):
            np.testing.assert_allclose(mine, expected, rtol=1e-5, atol=1e-6)
    # Reported: -ELBO = distortion + rate (means over both steps), not the objective.
    np.testing.assert_allclose(logs["loss"], logs["distortion"] + logs["rate"], rtol=1e-6)


def test_latent_classifier_is_a_softmax_head_on_posterior_means():
    m1 = tiny_m1()
    classifier = LatentClassifier(m1, num_classes=4)
    x = binary_images()
    probabilities = classifier(x).numpy()
    expected = tf.nn.softmax(classifier.head(m1.posterior(x).mean())).numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5)
    assert not m1.trainable_variables  # M1 is frozen under the head


def test_active_dimensions_drop_latents_that_ignore_the_data():
    m1 = tiny_m1()
    kernel = m1.encoder.layers_after[-1].kernel
    frozen = kernel.numpy()
    frozen[:, [1, 3]] = 0.0  # the means of z_1 and z_3 become constant (their bias)
    kernel.assign(frozen)
    images = binary_images(200, seed=4)
    np.testing.assert_array_equal(active_dimensions(m1, images, threshold=1e-6), [0, 2, 4])


def test_cached_codes_are_q_z1_in_the_active_dims_and_sample_like_the_encoder():
    m1 = tiny_m1()
    active = np.array([0, 2, 4])
    stacked = M1M2(m1, active, codes="cached", num_classes=4, latent_size=2,
                   hidden_sizes=(8,), classifier_hidden_sizes=(9,), seed=2)
    stacked.build()
    x = tf.constant(np.random.default_rng(5).uniform(size=(BATCH, 1, DIM)), tf.float32)
    posterior = m1.posterior(x)
    loc = posterior.mean().numpy()[:, active]
    scale = posterior.stddev().numpy()[:, active]
    # Batching does not change the parameters (batch_size 2 splits the 3 images)
    # beyond float32 rounding: another batch shape may sum in another order, so an
    # entry near zero needs an absolute tolerance (CI saw 9e-8 on a mean of -1.4e-3).
    parameters = stacked.posterior_parameters(x.numpy(), batch_size=2)
    np.testing.assert_allclose(parameters, np.concatenate([loc, scale], -1),
                               rtol=1e-5, atol=1e-6)

    # A cached step's z1 and a per-step z1 (the encoder's own sample) have the
    # same distribution: mean loc and standard deviation scale.
    draws = 4000
    cached = stacked.training_features(np.tile(parameters, (draws, 1)), tf.constant([1, 1]))
    per_step = stacked.features(tf.tile(x, (draws, 1, 1)), tf.constant([1, 2]))
    cached, per_step = (tf.reshape(z, (draws, BATCH, -1)).numpy() for z in (cached, per_step))
    for samples in (cached, per_step):
        error_of_mean = scale / math.sqrt(draws)
        assert np.all(np.abs(samples.mean(0) - loc) < 5 * error_of_mean)
        np.testing.assert_allclose(samples.std(0), scale, rtol=0.1)

    # It trains on such rows; M1 stays frozen.
    m1_before = [v.numpy() for v in m1.weights]
    stacked.compile(optimizer=keras.optimizers.Adam(0.1))
    stacked.train_on_batch({"labeled_x": parameters, "labels": tf.constant([0, 1, 3]),
                            "unlabeled_x": parameters})
    for before, after in zip(m1_before, m1.weights):
        np.testing.assert_array_equal(before, after.numpy())
    with pytest.raises(ValueError, match="unknown codes 'sometimes'"):
        M1M2(m1, active, codes="sometimes")


def test_stacked_call_is_m2_classifier_on_m1_latent_means():
    m1 = tiny_m1()
    active = np.array([0, 2, 4])
    stacked = M1M2(m1, active, num_classes=4, latent_size=2, hidden_sizes=(8,),
                   classifier_hidden_sizes=(9,), seed=2)
    stacked.build()
    x = binary_images()
    codes = tf.gather(m1(x), active, axis=-1)
    expected = tf.nn.softmax(stacked.classifier(codes)).numpy()
    np.testing.assert_allclose(stacked(x).numpy(), expected, rtol=1e-5)
    # Training draws codes from q(z1|x): different seeds, different features.
    first = stacked.features(x, tf.constant([1, 2])).numpy()
    second = stacked.features(x, tf.constant([3, 4])).numpy()
    assert first.shape == (BATCH, 3) and not np.allclose(first, second)
    # Only M2's variables train; M1 stays as it was.
    m1_before = [v.numpy() for v in m1.weights]
    stacked.compile(optimizer=keras.optimizers.Adam(0.1))
    batch = {"labeled_x": x, "labels": tf.constant([0, 1, 3]), "unlabeled_x": x}
    stacked.train_on_batch(batch)
    for before, after in zip(m1_before, m1.weights):
        np.testing.assert_array_equal(before, after.numpy())
    assert not any(v is w for v in stacked.trainable_variables for w in m1.weights)
