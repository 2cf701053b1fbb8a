"""Named presets: the one source of defaults for train.py, the Table 1 harness and tests.

    config = presets.get("m1m2", labels=100, seed=0)

========== ==============================================================
m1         M1 600-600, z1 50, KL warm-up over 50 epochs, Adam 1e-3 on a cosine
           over 300 epochs; label-spreading head (10 neighbours, alpha 0.99).
m2         M2 500-500, q(y|x) 500-500, z 50, the paper's alpha; Adam 1e-3 on a
           cosine; by label count (below) the labeled weight and the epochs.
m1m2       the m1 preset's M1, then M2 1x500 (q(y|x) 1x500) on its active codes,
           labeled weight 0.1, Adam 1e-3 on a cosine; by label count (below) the
           epochs and alpha.
m1m2_paper m1m2 with the paper's weighting of labeled and unlabeled terms
           (labeled weight N_l / N_u), under which alpha means what the paper's
           alpha means.
========== ==============================================================

Values that depend on the label count N (``BY_LABELS``; a count between two rows
takes the row at or below it, a count under the first takes the first):

===== ============================= ===========================================
N     m2                            m1m2
===== ============================= ===========================================
100   labeled weight 1, 200 epochs  600 epochs, the paper's alpha (0.1 N / N_l)
600   labeled weight 0.1, 120       900 epochs, the paper's alpha
1000  labeled weight 0.1, 120       900 epochs, the paper's alpha
3000  labeled weight 0.1, 120       600 epochs, alpha 5
===== ============================= ===========================================

Every value here was chosen on the validation split ``train[50000:]``
(docs/experiments.md, "Table 1's presets"), before the Table 1 grid ran; the
seed is an argument because every preset runs at any seed.
"""

import dataclasses

from ssl_dgm.configs import (DataConfig, ExperimentConfig, HeadConfig, M1Config, M2Config,
                             OptimizationConfig)

M1_STAGE = M1Config(hidden_sizes=(600, 600), latent_size=50, kl_warmup_epochs=50,
                    optimization=OptimizationConfig(epochs=300, learning_rate=1e-3,
                                                    lr_schedule="cosine"))
STACKED_M2 = M2Config(hidden_sizes=(500,), classifier_hidden_sizes=(500,), latent_size=50,
                      labeled_weight=0.1,
                      optimization=OptimizationConfig(epochs=600, learning_rate=1e-3,
                                                      lr_schedule="cosine"))


# N: (m2 preset's labeled weight, its epochs), (m1m2 preset's epochs, its alpha).
BY_LABELS = {100: ((1.0, 200), (600, None)),
             600: ((0.1, 120), (900, None)),
             1000: ((0.1, 120), (900, None)),
             3000: ((0.1, 120), (600, 5.0))}


def by_labels(labels):
    """The `BY_LABELS` row for `labels` labeled images: the row at or below it."""
    return BY_LABELS[max([n for n in BY_LABELS if n <= labels] or [min(BY_LABELS)])]


def _m1(data, seed):
    return ExperimentConfig(model="m1", seed=seed, data=data, m1=M1_STAGE, head=HeadConfig())


def _m2(data, seed):
    labeled_weight, epochs = by_labels(data.labels)[0]
    return ExperimentConfig(model="m2", seed=seed, data=data, m2=M2Config(
        hidden_sizes=(500, 500), classifier_hidden_sizes=(500, 500),
        labeled_weight=labeled_weight,
        optimization=OptimizationConfig(epochs=epochs, learning_rate=1e-3,
                                        lr_schedule="cosine")))


def _m1m2(data, seed):
    epochs, alpha = by_labels(data.labels)[1]
    stage = dataclasses.replace(STACKED_M2, alpha=alpha, optimization=dataclasses.replace(
        STACKED_M2.optimization, epochs=epochs))
    return ExperimentConfig(model="m1m2", seed=seed, data=data, m1=M1_STAGE, m2=stage)


def _m1m2_paper(data, seed):
    config = _m1m2(data, seed)
    return dataclasses.replace(config, m2=dataclasses.replace(config.m2, labeled_weight=None))


PRESETS = {"m1": _m1, "m2": _m2, "m1m2": _m1m2, "m1m2_paper": _m1m2_paper}


def get(name: str, labels: int = 100, seed: int = 0) -> ExperimentConfig:
    """The preset `name` at `labels` labeled images and `seed`.

    Raises:
      ValueError: `name` is not a preset.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name](DataConfig(labels=labels), seed)
