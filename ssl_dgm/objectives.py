r"""The bounds of Kingma et al. (2014) as pure functions of tensors and networks.

Notation follows the paper (its eqs. 6-9).  Every function returns a
per-example tensor; callers reduce.

M1 (a VAE on x alone), with q(z|x) diagonal Gaussian and p(z) = N(0, I):

    -J(x) = E_{q(z|x)}[log p(x|z)] - KL(q(z|x) || p(z))  <=  log p(x)

M2 (labels y as a latent variable), generative model p(y) = Cat(1/K),
p(z) = N(0, I), p(x|y, z) from a decoder; inference q(z|x, y) diagonal Gaussian
and q(y|x) categorical.  For a labeled pair (eq. 6),

    -L(x, y) = E_{q(z|x,y)}[log p(x|y, z)] + log p(y) - KL(q(z|x,y) || p(z))
             <= log p(x, y),

and for an unlabeled x, summing over the unknown label (eq. 7),

    -U(x) = sum_y q(y|x) (-L(x, y)) + H(q(y|x))  <=  log p(x),
     U(x) = sum_y q(y|x) L(x, y) - H(q(y|x)).

L and U are *losses* (negative bounds), as in the paper.  Following TFP's
naming, L = distortion + rate - log p(y) with distortion = -log p(x|y, z) at a
reparameterised sample z and rate = KL(q || p) in closed form.  U evaluates L for
all K labels in one batched pass: x enters as ``[batch, 1, d]`` and the labels as
the ``[K, K]`` identity, so the networks broadcast to ``[batch, K, ...]``.

Since q(y|x) appears only in U, the paper adds a classification loss (eq. 9):

    J^alpha = sum_{(x,y) labeled} L(x, y) + sum_{x unlabeled} U(x)
              + alpha * E_{labeled}[-log q(y|x)],     alpha = 0.1 * N.

Normalisation used here.  Each step sees a batch of labeled pairs and a batch of
unlabeled images and minimises per-example means,

    loss = mean_u U(x) + w_l * (mean_l L(x, y) + alpha * mean_l[-log q(y|x)]).

The paper's alpha = 0.1 * N multiplies a labeled *mean* against a *sum* of N_l
labeled bounds; written per labeled example that weight is 0.1 * N / N_l, which is
the default `default_alpha` returns (50 for N = 50000 images and 100 labels).

w_l, the labeled weight, says how much a labeled example counts against an
unlabeled one.  The paper's J^alpha sums over the data, so every example counts
once per pass: as per-step means that is w_l = N_l / N_u (`paper_labeled_weight`,
what the original code's minibatches do).  w_l = 1 instead gives the labeled batch
the unlabeled batch's weight in every step, i.e. it up-weights the N_l labeled
examples by N_u / N_l (about 500 for 100 labels).
"""

import math

import tensorflow as tf

from ssl_dgm import distributions


def default_alpha(num_images, num_labels, scale=0.1):
    """The paper's alpha = 0.1 * N, expressed per labeled example: 0.1 * N / N_l."""
    return scale * num_images / num_labels


def paper_labeled_weight(num_images, num_labels):
    """The labeled weight w_l = N_l / N_u at which per-step means weigh every
    example as the paper's sums do (once per pass over the data)."""
    return num_labels / (num_images - num_labels)


def elbo_terms(x, conditioning, encoder, decoder, make_likelihood, seed, noise_shape=None):
    """Distortion and rate of a VAE bound, conditioned on optional extra inputs.

    Args:
      x: data, ``[..., d]``.
      conditioning: list of extra tensors fed to both networks next to x (M2: the
        one-hot label); ``[]`` for M1.  Shapes broadcast against x's batch shape.
      encoder: callable ``[x, *conditioning] -> [..., 2 * latent]`` (loc, raw scale).
      decoder: callable ``[z, *conditioning] -> likelihood parameters``.
      make_likelihood: parameters -> distribution over x (event shape ``[d]``).
      seed: stateless seed, shape ``[2]`` int, for the reparameterised sample.
      noise_shape: optional batch shape of the standard-normal noise eps in
        z = loc + scale * eps, broadcast against the posterior's batch shape
        (e.g. ``[batch, 1]``: one eps per image, shared by all its labels); None
        draws eps independently for every posterior.

    Returns:
      ``(distortion, rate)``: -log p(x|z, .) at z ~ q(z|x, .) and
      KL(q(z|x, .) || N(0, I)), each of the broadcast batch shape.
    """
    posterior = distributions.diagonal_gaussian(encoder([x, *conditioning]))
    if noise_shape is None:
        z = posterior.sample(seed=seed)
    else:
        loc = posterior.mean()
        if len(noise_shape) != loc.shape.rank - 1:
            raise ValueError(f"noise_shape {noise_shape} must have one entry per batch axis "
                             f"of the posterior, {loc.shape[:-1]}")
        noise = tf.random.stateless_normal([*noise_shape, loc.shape[-1]], seed, dtype=loc.dtype)
        z = loc + posterior.stddev() * noise
    distortion = -make_likelihood(decoder([z, *conditioning])).log_prob(x)
    prior = distributions.standard_normal(posterior.event_shape[-1], x.dtype)
    rate = posterior.kl_divergence(prior)
    return distortion, rate


def negative_elbo(x, encoder, decoder, make_likelihood, seed):
    """M1's J(x) = -ELBO(x), per example ``[batch]``."""
    distortion, rate = elbo_terms(x, [], encoder, decoder, make_likelihood, seed)
    return distortion + rate


def labeled_bound(x, y, encoder, decoder, make_likelihood, seed, noise_shape=None):
    """L(x, y) (a loss: -L is a lower bound on log p(x, y)).

    Args:
      x: ``[batch, d]``, or ``[batch, 1, d]`` to broadcast against several labels.
      y: one-hot labels ``[batch, K]`` (or ``[K, K]``, the identity, for all labels).
      Other args (`noise_shape` included) as in `elbo_terms`.

    Returns:
      ``[batch]`` (or ``[batch, K]``).
    """
    num_classes = y.shape[-1]
    distortion, rate = elbo_terms(x, [y], encoder, decoder, make_likelihood, seed,
                                  noise_shape)
    return distortion + rate + math.log(num_classes)  # -log p(y), p(y) uniform


def unlabeled_bound(x, classifier_logits, encoder, decoder, make_likelihood, seed,
                    shared_noise=False):
    """U(x) = sum_y q(y|x) L(x, y) - H(q(y|x)), all labels in one pass.

    Args:
      x: ``[batch, d]``.
      classifier_logits: logits of q(y|x), ``[batch, K]``.
      shared_noise: draw one eps per image for all K labels' samples
        z_y = loc_y + scale_y * eps (common random numbers: each L(x, y) estimate,
        and so U(x), stays unbiased; the K estimates become correlated), instead
        of K independent draws.  Draws K times fewer random numbers.

    Returns:
      ``[batch]``.
    """
    num_classes = classifier_logits.shape[-1]
    all_labels = tf.eye(num_classes, dtype=x.dtype)                        # [K, K]
    noise_shape = [tf.shape(x)[0], 1] if shared_noise else None
    bounds = labeled_bound(x[:, None, :], all_labels, encoder, decoder,
                           make_likelihood, seed, noise_shape)             # [batch, K]
    q_y = distributions.categorical(classifier_logits)
    return tf.reduce_sum(tf.nn.softmax(classifier_logits) * bounds, axis=-1) - q_y.entropy()


def classification_term(classifier_logits, labels):
    """-log q(y|x) for integer labels, ``[batch]``."""
    return -distributions.categorical(classifier_logits).log_prob(labels)


def m2_objective(labeled_x, labels, unlabeled_x, model, alpha, seeds, labeled_weight=1.0,
                 shared_noise=False):
    """Per-step J^alpha (see the module docstring) and its parts, all scalars.

    Args:
      labeled_x: ``[n_l, d]``; labels: int ``[n_l]``; unlabeled_x: ``[n_u, d]``.
      model: has ``encoder``, ``decoder``, ``classifier`` and ``make_likelihood``.
      alpha: weight of the classification term per labeled example.
      seeds: two stateless seeds ``[2, 2]`` (labeled sample, unlabeled sample).
      labeled_weight: w_l, the weight of the labeled terms against U (see above).
      shared_noise: one noise draw per unlabeled image for all labels
        (`unlabeled_bound`).

    Returns:
      dict with ``loss``, ``labeled_bound``, ``unlabeled_bound``,
      ``classification`` (mean -log q(y|x) on the labeled batch) and ``error``
      (the fraction of the labeled batch q(y|x) gets wrong).
    """
    num_classes = model.num_classes
    one_hot = tf.one_hot(labels, num_classes, dtype=labeled_x.dtype)
    # q(y|x) of both batches in one call: one matmul on twice the rows runs nearer
    # this CPU's peak than two.
    labeled_logits, unlabeled_logits = tf.split(
        model.classifier(tf.concat([labeled_x, unlabeled_x], axis=0)),
        [tf.shape(labeled_x)[0], -1])
    labeled = labeled_bound(labeled_x, one_hot, model.encoder, model.decoder,
                            model.make_likelihood, seeds[0])
    unlabeled = unlabeled_bound(unlabeled_x, unlabeled_logits, model.encoder,
                                model.decoder, model.make_likelihood, seeds[1], shared_noise)
    classification = classification_term(labeled_logits, labels)
    wrong = tf.not_equal(tf.argmax(labeled_logits, -1, output_type=labels.dtype), labels)
    labeled, unlabeled, classification, error = (
        tf.reduce_mean(t) for t in (labeled, unlabeled, classification,
                                    tf.cast(wrong, labeled_x.dtype)))
    return {
        "loss": unlabeled + labeled_weight * (labeled + alpha * classification),
        "labeled_bound": labeled,
        "unlabeled_bound": unlabeled,
        "classification": classification,
        "error": error,
    }
