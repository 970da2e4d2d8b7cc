"""Config validation, overrides and the shipped configs."""

from __future__ import annotations

import pytest

from nasax.core.config import apply_overrides, shipped_configs
from nasax.core.errors import ConfigError
from nasax.search.options import load_config, validate_config


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        ({"search": {"epoch": 3}}, ["search.epoch", "did you mean 'epochs'"]),
        ({"search": {"epochs": 0}}, ["search.epochs", "at least 1", "got 0", "weights_from"]),
        ({"search": {"epochs": -1}}, ["search.epochs", "greater than or equal to 0", "got -1"]),
        ({"search": {"strategy": "dart"}}, ["search.strategy", "'dart'", "darts"]),
        ({"optim": {"weights": {"lr": "fast"}}}, ["optim.weights.lr", "'fast'"]),
        ({"optim": {"weights": {"schedule": "step"}}}, ["optim.weights.schedule", "'cosine'"]),
        ({"optim": {"arch": {"betas": [0.5, 1.5]}}}, ["optim.arch.betas"]),
        ({"model": {"channels": 5}}, ["model.channels", "even"]),
        ({"search": {"darts": {"order": 3}}}, ["search.darts.order", "1 or 2", "got 3"]),
        ({"search": {"gdas": {"tau": 1}}}, ["search.gdas"]),
        ({"search": {"discretiser": {}}}, ["'search.discretiser'", "'discretizer'"]),
        ({"model": {"space": "dart"}}, ["model.space", "'dart'", "darts"]),
        ({"model": {"space": {"base": "darts", "node": 3}}}, ["model.space.node", "'nodes'"]),
        ({"data": {"augment": {"flipp": True}}}, ["data.augment.flipp", "'flip'"]),
        ({"run": {"log_every": -1}}, ["run.log_every"]),
        ({"colour": "red"}, ["'colour'", "allowed here"]),
        ([1, 2], ["mapping"]),
    ],
)
def test_bad_keys_and_values_give_one_clear_line(data, fragments):
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_dotted_overrides_parse_yaml_values():
    data = apply_overrides(
        {"search": {"epochs": 5}},
        [
            "search.epochs=2",
            "data.name=npz:/tmp/x.npz",
            "optim.arch.betas=[0.9, 0.99]",
            "search.discretizer.max_skip_connect=null",
        ],
    )
    config = validate_config(data)
    assert config.search.epochs == 2
    assert config.data.name == "npz:/tmp/x.npz"
    assert config.optim.arch.betas == (0.9, 0.99)
    assert config.search.discretizer.max_skip_connect is None


def test_malformed_override_is_rejected():
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        apply_overrides({}, ["search.epochs"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"search": {"epochs": 2}}, ["search.epochs.x=1"])


def test_shipped_configs_load_by_name_and_resolve_completely():
    assert {"darts_digits", "darts_cifar10", "retrain_digits", "retrain_cifar10"} <= set(
        shipped_configs()
    )
    for name in shipped_configs():
        config = load_config(name)
        again = validate_config(config.to_dict())
        assert again == config


def test_darts_cifar10_is_the_papers_search_protocol():
    c = load_config("darts_cifar10")
    assert c.data.name == "tfds:cifar10"
    assert (c.model.layers, c.model.channels, c.search.batch_size, c.search.epochs) == (
        8,
        16,
        64,
        50,
    )
    w, a = c.optim.weights, c.optim.arch
    assert (w.lr, w.lr_min, w.momentum, w.weight_decay, w.grad_clip) == (
        0.025,
        0.001,
        0.9,
        3e-4,
        5.0,
    )
    assert w.schedule == "cosine"
    assert (a.lr, a.betas, a.weight_decay) == (3e-4, (0.5, 0.999), 1e-3)
    assert c.search.train_portion == 0.5
    assert (c.data.augment.crop_padding, c.data.augment.flip) == (4, True)


def test_retrain_cifar10_is_the_papers_retraining_protocol():
    c = load_config("retrain_cifar10")
    t, w = c.train, c.optim.weights
    assert c.data.name == "tfds:cifar10"
    assert (c.model.layers, c.model.channels) == (20, 36)
    assert (t.epochs, t.batch_size, t.genotype) == (600, 96, "DARTS_V2")
    assert (w.lr, w.lr_min, w.momentum, w.weight_decay, w.grad_clip, w.schedule) == (
        0.025,
        0.0,
        0.9,
        3e-4,
        5.0,
        "cosine",
    )
    assert (t.cutout, t.drop_path, t.auxiliary, t.auxiliary_weight) == (16, 0.2, True, 0.4)
    assert (c.data.augment.crop_padding, c.data.augment.flip) == (4, True)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"train": {"drop_path": 1.0}}, "train.drop_path"),
        ({"train": {"cutout": -1}}, "train.cutout"),
        ({"train": {"epoch": 3}}, "did you mean 'epochs'"),
        ({"train": {"auxiliary": "maybe"}}, "train.auxiliary"),
    ],
)
def test_bad_train_section_gives_one_clear_line(data, fragment):
    with pytest.raises(ConfigError, match=fragment):
        validate_config(data)


def test_unknown_config_name_suggests_a_shipped_one(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'darts_digits'"):
        load_config("darts_digit")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_yaml_tags_that_build_objects_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
