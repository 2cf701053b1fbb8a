"""The bounds checked against brute force, closed forms and Monte Carlo."""

import functools
import math

import numpy as np
import pytest
import keras
import tensorflow as tf

from ssl_dgm import distributions, objectives
from ssl_dgm.networks import MLP

# All-different sizes, so a swapped axis fails.
BATCH, DIM, CLASSES, LATENT, HIDDEN = 3, 7, 4, 5, 6


def tiny_networks(seed=0, sharp_posterior=False):
    # Keras draws unseeded initializers from Python's `random`, which
    # tf.random.set_seed leaves alone: seed everything, so the networks do not
    # depend on which tests ran before.
    keras.utils.set_random_seed(seed)
    encoder_net = MLP([HIDDEN], 2 * LATENT, num_inputs=2, name="enc")
    decoder = MLP([HIDDEN], DIM, num_inputs=2, name="dec")
    if sharp_posterior:
        # q(z|x,y) with scale ~ MIN_SCALE: the sample is its mean to ~1e-4, so
        # bounds computed with different noise agree.
        def encoder(inputs):
            loc, _ = tf.split(encoder_net(inputs), 2, axis=-1)
            return tf.concat([loc, tf.fill(tf.shape(loc), -30.0)], axis=-1)
    else:
        encoder = encoder_net
    return encoder, decoder


def binary_batch(seed=1):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.integers(0, 2, size=(BATCH, DIM)), tf.float32)


def test_bernoulli_log_prob_equals_tfps_on_binary_and_grey_pixels():
    # The one-softplus log-density must be TFP's Bernoulli log_prob, also where
    # |logits| is large (no cancellation) and where x broadcasts against them.
    tfd = distributions.tfd
    rng = np.random.default_rng(3)
    logits = tf.constant(rng.normal(scale=10.0, size=(BATCH, 1, DIM)), tf.float32)
    logits = tf.concat([logits, tf.fill([BATCH, 1, DIM], 40.0),
                        tf.fill([BATCH, 1, DIM], -40.0)], axis=1)          # [3, 3, 7]
    reference = tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), 1)
    for x in (tf.constant(rng.integers(0, 2, size=(BATCH, 1, DIM)), tf.float32),
              tf.constant(rng.uniform(size=(BATCH, 1, DIM)), tf.float32)):
        ours = distributions.bernoulli(logits).log_prob(x)
        assert ours.shape == (BATCH, 3)
        np.testing.assert_allclose(ours.numpy(), reference.log_prob(x).numpy(),
                                   rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(distributions.bernoulli(logits).mean().numpy(),
                               tf.sigmoid(logits).numpy(), rtol=1e-6)


def test_softplus_and_its_gradient_equal_tfs_from_tiny_to_huge_inputs():
    # The gradient reuses the forward pass's exp(-|x|): it must still be sigmoid(x)
    # on both sides of 0 and where exp underflows or softplus(x) = x.
    x = tf.constant([-200.0, -90.0, -30.0, -3.0, -1e-3, 0.0, 1e-3, 0.7, 5.0, 30.0, 200.0])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, reference = distributions.softplus(x), tf.nn.softplus(x)
        weighted = tf.reduce_sum(ours * tf.range(1.0, 12.0))
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(tape.gradient(ours, x).numpy(), tf.sigmoid(x).numpy(),
                               rtol=1e-6, atol=0)
    # The upstream gradient is applied element by element.
    np.testing.assert_allclose(tape.gradient(weighted, x).numpy(),
                               (tf.sigmoid(x) * tf.range(1.0, 12.0)).numpy(), rtol=1e-6)
    # The hidden layers run it in bfloat16 under mixed precision.
    half = distributions.softplus(tf.cast(x, tf.bfloat16))
    assert half.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(half, tf.float32).numpy(), reference.numpy(), rtol=1e-2)


def test_bernoulli_log_prob_gradient_is_x_minus_sigmoid():
    rng = np.random.default_rng(4)
    logits = tf.constant(rng.normal(scale=10.0, size=(BATCH, DIM)), tf.float32)
    x = tf.constant(rng.uniform(size=(BATCH, DIM)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        log_p = tf.reduce_sum(distributions.bernoulli(logits).log_prob(x))
    np.testing.assert_allclose(tape.gradient(log_p, logits).numpy(),
                               (x - tf.sigmoid(logits)).numpy(), rtol=1e-5, atol=1e-6)


def test_labeled_bound_matches_hand_computation():
    encoder, decoder = tiny_networks(sharp_posterior=True)
    x = binary_batch()
    labels = np.array([0, 3, 1])
    y = tf.one_hot(labels, CLASSES)
    bound = objectives.labeled_bound(x, y, encoder, decoder, distributions.bernoulli,
                                     seed=tf.constant([1, 2]))
    loc = encoder([x, y])[:, :LATENT].numpy()
    logits = decoder([tf.constant(loc), y]).numpy()
    log_px = np.sum(x * -np.log1p(np.exp(-logits)) + (1 - x) * -np.log1p(np.exp(logits)), -1)
    scale = distributions.MIN_SCALE + np.log1p(np.exp(-30.0))
    kl = 0.5 * np.sum(loc ** 2 + scale ** 2 - 1 - 2 * np.log(scale), -1)
    expected = -log_px + kl + math.log(CLASSES)
    assert bound.shape == (BATCH,)
    np.testing.assert_allclose(bound.numpy(), expected, rtol=1e-4)


def test_unlabeled_bound_equals_brute_force_sum_over_labels():
    encoder, decoder = tiny_networks(sharp_posterior=True)
    x = binary_batch()
    logits = tf.constant(np.random.default_rng(2).normal(size=(BATCH, CLASSES)), tf.float32)
    batched = objectives.unlabeled_bound(x, logits, encoder, decoder,
                                         distributions.bernoulli, seed=tf.constant([3, 4]))
    probs = tf.nn.softmax(logits).numpy()
    brute = np.zeros(BATCH)
    for k in range(CLASSES):
        y = tf.one_hot(np.full(BATCH, k), CLASSES)
        bound_k = objectives.labeled_bound(x, y, encoder, decoder, distributions.bernoulli,
                                           seed=tf.constant([10 + k, 0])).numpy()
        brute += probs[:, k] * bound_k
    entropy = -np.sum(probs * np.log(probs), axis=-1)
    brute -= entropy  # U = sum_y q(y|x) L(x,y) - H(q(y|x)), the paper's sign
    assert batched.shape == (BATCH,)
    np.testing.assert_allclose(batched.numpy(), brute, rtol=1e-4)


def test_shared_label_noise_draws_one_eps_per_image_and_keeps_u_unbiased():
    encoder, decoder = tiny_networks()
    x = binary_batch()
    labels = tf.eye(CLASSES)

    @tf.function  # traced once: the 100 draws differ only in their seed
    def decoder_input(seed):
        seen = []

        def recording_decoder(inputs):
            seen.append(inputs[0])
            return decoder(inputs)

        objectives.elbo_terms(x[:, None, :], [labels], encoder, recording_decoder,
                              distributions.bernoulli, seed, noise_shape=[BATCH, 1])
        assert len(seen) == 1  # one decoder call for all the labels
        return seen[0]

    posterior = distributions.diagonal_gaussian(encoder([x[:, None, :], labels]))
    seen = [decoder_input(tf.constant([s, 2])) for s in range(100)]
    eps = ((tf.stack(seen) - posterior.mean()) / posterior.stddev()).numpy()
    assert eps.shape == (100, BATCH, CLASSES, LATENT)
    np.testing.assert_allclose(eps, np.broadcast_to(eps[:, :, :1], eps.shape), atol=1e-3)
    # The shared eps is standard normal: 1500 draws, mean 0 and variance 1 within ~4 sigma.
    assert abs(eps[:, :, 0].mean()) < 0.1 and abs(eps[:, :, 0].var() - 1) < 0.15
    with pytest.raises(ValueError, match="one entry per batch axis"):
        objectives.elbo_terms(x, [tf.one_hot([0, 1, 2], CLASSES)], encoder, decoder,
                              distributions.bernoulli, tf.constant([1, 2]), noise_shape=[BATCH, 1])

    # Each label's sample is still z ~ q(z|x, y): U's Monte Carlo mean is the same.
    logits = tf.constant(np.random.default_rng(2).normal(size=(BATCH, CLASSES)), tf.float32)
    bounds = {shared: tf.function(functools.partial(
        objectives.unlabeled_bound, x, logits, encoder, decoder, distributions.bernoulli,
        shared_noise=shared)) for shared in (False, True)}
    draws = {shared: np.mean([bound(seed=tf.constant([s, 9])).numpy() for s in range(400)],
                             axis=0) for shared, bound in bounds.items()}
    np.testing.assert_allclose(draws[True], draws[False], rtol=0.01)


def test_unlabeled_bound_is_below_best_label_when_classifier_is_sure():
    # With a one-hot q(y|x), U(x) is L(x, y) of that label (entropy 0).
    encoder, decoder = tiny_networks(sharp_posterior=True)
    x = binary_batch()
    labels = np.array([2, 0, 3])
    logits = tf.one_hot(labels, CLASSES) * 50.0
    u = objectives.unlabeled_bound(x, logits, encoder, decoder, distributions.bernoulli,
                                   seed=tf.constant([5, 6]))
    l = objectives.labeled_bound(x, tf.one_hot(labels, CLASSES), encoder, decoder,
                                 distributions.bernoulli, seed=tf.constant([7, 8]))
    np.testing.assert_allclose(u.numpy(), l.numpy(), rtol=1e-4)


def test_analytic_kl_matches_monte_carlo():
    encoder, decoder = tiny_networks()
    x = binary_batch()
    y = tf.one_hot([1, 2, 0], CLASSES)
    _, rate = objectives.elbo_terms(x, [y], encoder, decoder, distributions.bernoulli,
                                    seed=tf.constant([0, 1]))
    posterior = distributions.diagonal_gaussian(encoder([x, y]))
    prior = distributions.standard_normal(LATENT)
    samples = posterior.sample(200_000, seed=tf.constant([9, 9]))
    log_ratio = (posterior.log_prob(samples) - prior.log_prob(samples)).numpy()
    monte_carlo = log_ratio.mean(axis=0)
    standard_error = log_ratio.std(axis=0) / np.sqrt(len(log_ratio))
    assert np.all(np.abs(rate.numpy() - monte_carlo) < 5 * standard_error + 1e-4)
    # KL(q || q) = 0
    np.testing.assert_allclose(posterior.kl_divergence(posterior).numpy(), 0.0, atol=1e-5)


def log_mean_exp(values):
    return np.logaddexp.reduce(values, axis=0) - math.log(len(values))


def test_bound_is_the_expected_log_weight_and_below_log_likelihood():
    encoder, decoder = tiny_networks()
    x = binary_batch()
    y = tf.one_hot([3, 1, 2], CLASSES)
    log_prior_y = -math.log(CLASSES)
    bound = tf.function(functools.partial(objectives.labeled_bound, x, y, encoder, decoder,
                                          distributions.bernoulli))
    bounds = np.stack([bound(seed=tf.constant([s, 0])).numpy() for s in range(400)])
    elbo = -bounds.mean(axis=0)
    elbo_error = bounds.std(axis=0) / np.sqrt(len(bounds))

    # -L(x,y) = E_q[log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)], computed
    # here from the distributions' log-densities instead of the analytic KL.
    posterior = distributions.diagonal_gaussian(encoder([x, y]))
    prior = distributions.standard_normal(LATENT)
    z = posterior.sample(5000, seed=tf.constant([4, 2]))                 # [S, B, Z]
    log_w = (distributions.bernoulli(decoder([z, y])).log_prob(x)
             + prior.log_prob(z) - posterior.log_prob(z)).numpy() + log_prior_y
    log_w_error = log_w.std(axis=0) / np.sqrt(len(log_w))
    z_scores = np.abs(elbo - log_w.mean(axis=0)) / np.hypot(elbo_error, log_w_error)
    assert np.all(z_scores < 4.0), z_scores

    # log p(x,y) by sampling the prior: with 7 pixels nearly every prior sample
    # counts (effective sample size > 30k of 100k for any initialisation tried),
    # so this estimate is accurate to ~0.01 nats, unlike one using the untrained q.
    z_prior = prior.sample([100_000, BATCH], seed=tf.constant([5, 3]))
    log_pxy = log_mean_exp(
        distributions.bernoulli(decoder([z_prior, y])).log_prob(x).numpy()) + log_prior_y
    # The gap is KL(q(z|x,y) || p(z|x,y)) >= 0; 0.35-12 nats over 30 random
    # initialisations of these networks, so 0.05 is well above the estimate's noise.
    assert np.all(elbo <= log_pxy + 0.05), (elbo, log_pxy)


def test_classification_term_is_negative_log_softmax():
    logits = tf.constant([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    labels = tf.constant([1, 0])
    expected = -np.log(tf.nn.softmax(logits).numpy()[[0, 1], [1, 0]])
    np.testing.assert_allclose(objectives.classification_term(logits, labels).numpy(),
                               expected, rtol=1e-6)


def test_default_alpha_is_papers_per_labeled_example():
    assert objectives.default_alpha(50000, 100) == pytest.approx(50.0)
    assert objectives.default_alpha(50000, 1000) == pytest.approx(5.0)


def test_paper_labeled_weight_counts_each_example_once():
    # 100 labeled and 49900 unlabeled images: sums over both equal per-step means
    # with the labeled mean weighted 100 / 49900.
    assert objectives.paper_labeled_weight(50000, 100) == pytest.approx(100 / 49900)


class _Model:
    num_classes = CLASSES
    make_likelihood = staticmethod(distributions.bernoulli)

    def __init__(self):
        self.encoder, self.decoder = tiny_networks(sharp_posterior=True)
        self.classifier = MLP([HIDDEN], CLASSES, name="clf")


def test_m2_objective_combines_the_terms_with_alpha():
    model = _Model()
    x_l, x_u = binary_batch(1), binary_batch(2)
    labels = tf.constant([0, 1, 3])
    seeds = tf.constant([[1, 2], [3, 4]])
    terms = objectives.m2_objective(x_l, labels, x_u, model, 7.0, seeds)
    l = objectives.labeled_bound(x_l, tf.one_hot(labels, CLASSES), model.encoder,
                                 model.decoder, distributions.bernoulli, seeds[0])
    u = objectives.unlabeled_bound(x_u, model.classifier(x_u), model.encoder, model.decoder,
                                   distributions.bernoulli, seeds[1])
    c = objectives.classification_term(model.classifier(x_l), labels)
    expected = np.mean(l) + np.mean(u) + 7.0 * np.mean(c)
    np.testing.assert_allclose(terms["loss"].numpy(), expected, rtol=1e-4)
    weighted = objectives.m2_objective(x_l, labels, x_u, model, 7.0, seeds,
                                       labeled_weight=0.25)
    np.testing.assert_allclose(weighted["loss"].numpy(),
                               np.mean(u) + 0.25 * (np.mean(l) + 7.0 * np.mean(c)), rtol=1e-4)
    predicted = np.argmax(model.classifier(x_l).numpy(), -1)
    assert terms["error"].numpy() == pytest.approx(np.mean(predicted != labels.numpy()))
