"""Configs, presets and overrides: one source of defaults for every entry point."""

import dataclasses
import json
import os

import pytest
from absl import flags

from ssl_dgm import configs, overrides, presets


def test_config_json_round_trips_every_preset():
    for name in presets.PRESETS:
        config = presets.get(name, labels=600, seed=2)
        stored = json.loads(json.dumps(configs.to_dict(config)))
        assert stored["schema_version"] == configs.SCHEMA_VERSION
        assert configs.from_dict(stored) == config


def test_absent_stages_are_none_and_required_stages_present():
    m2 = presets.get("m2")
    assert (m2.m1, m2.head, m2.m1_dir) == (None, None, None) and m2.m2 is not None
    m1 = presets.get("m1")
    assert m1.m2 is None and m1.head.kind == "spreading"
    with pytest.raises(configs.ConfigError, match="m2 must be given for model m1m2"):
        dataclasses.replace(presets.get("m1m2"), m2=None)
    with pytest.raises(configs.ConfigError, match="head must be None for model m2"):
        dataclasses.replace(m2, head=configs.HeadConfig())


def test_presets_share_one_m1_stage_and_differ_where_documented():
    m1, m1m2, paper = (presets.get(n) for n in ("m1", "m1m2", "m1m2_paper"))
    assert m1.m1 == m1m2.m1 == paper.m1  # the Table 1 harness shares it per seed
    assert m1m2.m1.kl_warmup_epochs == 50 and m1m2.m1.optimization.epochs == 300
    assert (m1m2.m2.hidden_sizes, m1m2.m2.labeled_weight, m1m2.m2.optimization.epochs) == (
        (500,), 0.1, 600)
    assert paper.m2.labeled_weight is None  # N_l / N_u, the paper's sums
    assert dataclasses.replace(paper, m2=dataclasses.replace(paper.m2, labeled_weight=0.1)) \
        == m1m2
    with pytest.raises(ValueError, match="unknown preset 'm3'"):
        presets.get("m3")


def test_presets_take_their_label_count_dependent_values_from_the_row_at_or_below():
    def m2_and_m1m2(labels):
        m2, m1m2 = presets.get("m2", labels), presets.get("m1m2", labels)
        return ((m2.m2.labeled_weight, m2.m2.optimization.epochs),
                (m1m2.m2.optimization.epochs, m1m2.m2.alpha), m1m2.data.labels)

    assert m2_and_m1m2(100) == ((1.0, 200), (600, None), 100)
    assert m2_and_m1m2(600) == ((0.1, 120), (900, None), 600)
    assert m2_and_m1m2(3000) == ((0.1, 120), (600, 5.0), 3000)
    assert m2_and_m1m2(20)[:2] == m2_and_m1m2(100)[:2]  # under the first row
    assert m2_and_m1m2(2000)[:2] == m2_and_m1m2(1000)[:2]
    assert m2_and_m1m2(50000)[:2] == m2_and_m1m2(3000)[:2]
    # Only the documented fields move with N: the M1 stage and the rest of M2 do not.
    low, high = presets.get("m1m2", 100), presets.get("m1m2", 3000)
    assert low.m1 == high.m1 and dataclasses.replace(
        high.m2, alpha=None, optimization=low.m2.optimization) == low.m2
    # train.py reads the row of its --labels.
    assert _train_flags("--model=m1m2", "--labels=1000").m2.optimization.epochs == 900
    with pytest.raises(ValueError, match="--labels: data.labels must be a positive"):
        _train_flags("--model=m2", "--labels=-10")
    with pytest.raises(ValueError, match="--set data.labels: use --labels"):
        _train_flags("--model=m2", "--set", "data.labels=600")


def test_override_parses_by_field_type_and_applies_together():
    config = presets.get("m1m2")
    changed = overrides.override(config, {"m2.optimization.lr_schedule": "cosine_time",
                                        "m2.optimization.time_budget_minutes": "30",
                                        "m2.hidden_sizes": "300,200", "data.binarize": "false",
                                        "m2.alpha": "none", "m1.latent_size": 20})
    assert changed.m2.optimization.time_budget_minutes == 30.0
    assert changed.m2.hidden_sizes == (300, 200) and changed.data.binarize is False
    assert changed.m1.latent_size == 20 and changed.m2.alpha is None
    assert config.m2.hidden_sizes == (500,)  # frozen: the original is untouched


@pytest.mark.parametrize("updates, message", [
    ({"m2.optimization.learning_rate": "-1"}, "m2.optimization.learning_rate must be a "
                                              "positive number, got -1.0"),
    ({"m2.alpha": "-5"}, "m2.alpha must be a positive number, got -5.0"),
    ({"m2.labeled_weight": "0"}, "m2.labeled_weight must be a positive number, got 0.0"),
    ({"m2.optimization.time_budget_minutes": "-1"}, "time_budget_minutes must be a positive"),
    ({"data.train_examples": "-5"}, "data.train_examples must be a positive number, got -5"),
    ({"data.labels": "0"}, "data.labels must be a positive number, got 0"),
    ({"m2.hidden_sizes": "abc"}, "m2.hidden_sizes expects a list of integers, got 'abc'"),
    ({"m2.hidden_sizes": "0"}, "m2.hidden_sizes must be positive integers, got [0]"),
    ({"m2.optimization.lr_schedule": "cosine_time"}, "give time_budget_minutes too"),
    ({"m2.codes": "sometimes"}, "m2.codes must be one of per_step, cached"),
    ({"m2.label_noise": "some"}, "m2.label_noise must be one of independent, shared"),
    ({"runtime.validation_every": "0"}, "runtime.validation_every must be a positive number"),
    ({"head.kind": "svm"}, "head is absent in a m1m2 config"),
    ({"m2.nope": "1"}, "m2.nope is not a field"),
    ({"runtime.strategy": "tpu"}, "runtime.strategy must be one of default, mirrored"),
    ({"seed": "-1"}, "seed must be a non-negative integer"),
])
def test_override_refuses_values_that_make_no_sense(updates, message):
    with pytest.raises(configs.ConfigError) as error:
        overrides.override(presets.get("m1m2"), updates)
    assert message in str(error.value)


def test_records_of_other_schema_versions_are_refused():
    stored = configs.to_dict(presets.get("m2"))
    stored["schema_version"] = 0
    with pytest.raises(configs.ConfigError, match="this ssl_dgm reads version 1"):
        configs.from_dict(stored)
    del stored["schema_version"]
    with pytest.raises(configs.ConfigError, match="is None"):
        configs.from_dict(stored)


def test_leaf_paths_of_a_config_file():
    assert overrides.leaf_paths({"m2": {"alpha": 5, "optimization": {"epochs": 9}},
                               "seed": 3}) == {"m2.alpha": 5, "m2.optimization.epochs": 9,
                                               "seed": 3}


def _train_flags(*argv):
    """The config train.py composes from `argv`."""
    import train

    values = flags.FlagValues()
    train.define_flags(values)
    values(["train.py", *argv])
    return train.compose(values)


def test_train_command_and_table1_harness_compose_the_same_config(tmp_path):
    from benchmarks import table1

    command = _train_flags("--model=m1m2", "--labels=100", "--eval_split=validation")
    harness = table1.grid_config(str(tmp_path), "m1m2", 100, 0,
                                 data_dir=os.environ.get("TFDS_DATA_DIR"))
    # The harness differs only in where M1 comes from: the seed's M1, trained by the
    # m1 preset, whose M1 stage is the command's.
    assert harness.m1_dir == str(tmp_path / "m1_seed0" / "m1")
    assert dataclasses.replace(harness, m1_dir=None) == command
    assert table1.m1_config(str(tmp_path), 0, 100).m1 == command.m1
    assert table1.m1_config(str(tmp_path), 0, 100).seed == command.seed
    # Both read --set alike: the label count is the grid's (or the command's) own.
    with pytest.raises(ValueError, match="--set data.labels: use --labels"):
        table1.grid_config(str(tmp_path), "m2", 100, 0, sets=["data.labels=600"])
    with pytest.raises(ValueError, match="needs the form section.field=value"):
        table1.grid_config(str(tmp_path), "m2", 100, 0, sets=["m2.alpha"])


def test_flags_override_the_preset_and_name_themselves_in_errors():
    config = _train_flags("--model=m1m2", "--labels=600", "--seed=2", "--epochs=7",
                          "--learning_rate=3e-4", "--labeled_weight=paper",
                          "--set", "m2.latent_size=20", "--m1_epochs=5")
    assert (config.data.labels, config.seed, config.m2.optimization.epochs) == (600, 2, 7)
    assert config.m1.optimization.learning_rate == config.m2.optimization.learning_rate == 3e-4
    assert config.m2.labeled_weight is None and config.m2.latent_size == 20
    assert config.m1.optimization.epochs == 5
    m1 = _train_flags("--model=m1", "--epochs=4", "--hidden_sizes=30")
    assert m1.m1.optimization.epochs == 4 and m1.m1.hidden_sizes == (30,)
    for argv, message in [
        (["--learning_rate=-1"], "--learning_rate: m2.optimization.learning_rate must be a "
                                 "positive number, got -1.0"),
        (["--hidden_sizes=abc"], "--hidden_sizes: m2.hidden_sizes expects a list of integers"),
        (["--model=m1", "--alpha=3"], "--alpha: m2 is absent in a m1 config"),
        (["--set", "m2.alpha"], "--set 'm2.alpha' needs the form section.field=value"),
        (["--set", "m2.x=1"], "--set m2.x: m2.x is not a field"),
    ]:
        with pytest.raises(ValueError) as error:
            _train_flags(*argv)
        assert message in str(error.value)
