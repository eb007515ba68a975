"""Tests for sfp_ray.config: defaults, YAML + ``--set`` overrides, validation messages, dumping."""

from __future__ import annotations

import pytest
import yaml

from sfp_ray.config import Config, build_config, dump_config, load_config, to_dict, validate
from sfp_ray.errors import ConfigError


def test_defaults_validate() -> None:
    cfg = Config()
    validate(cfg)  # does not raise
    assert build_config() == cfg
    assert load_config() == cfg
    assert cfg.split.head_blocks >= 0 and 0 < cfg.pruning.keep_ratio <= 1


def test_yaml_file_and_set_overrides(tmp_path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "seed": 4,
                "model": {"depth": 3, "img_size": 32, "patch_size": 8},
                "federation": {"rounds": 7, "num_clients": 6, "clients_per_round": 2},
                "devices": {"mix": {"rpi4": 0.5, "phone": 0.5}},
                "prompt": {"deep": False},
            }
        )
    )
    cfg = load_config(
        path,
        [
            "federation.rounds=3",
            "data.classes=[1,2]",
            "devices.mix={rpi4: 1.0}",
            "prompt.deep=true",
            "pruning.every_round=yes",
            "train.local_update=false",
            "model.checkpoint=none",
            "train.lr=0.05",
        ],
    )
    # from the file, untouched by overrides
    assert cfg.seed == 4
    assert (cfg.model.depth, cfg.model.img_size, cfg.model.patch_size) == (3, 32, 8)
    assert (cfg.federation.num_clients, cfg.federation.clients_per_round) == (6, 2)
    # overrides win, with the annotated types
    assert cfg.federation.rounds == 3 and isinstance(cfg.federation.rounds, int)
    assert cfg.data.classes == (1, 2)
    assert dict(cfg.devices.mix) == {"rpi4": 1.0}  # the mapping is replaced, not merged
    assert cfg.prompt.deep is True
    assert cfg.pruning.every_round is True
    assert cfg.train.local_update is False
    assert cfg.model.checkpoint is None
    assert cfg.train.lr == pytest.approx(0.05) and isinstance(cfg.train.lr, float)
    # defaults elsewhere
    assert cfg.split == Config().split


def test_set_null_and_scalar_forms() -> None:
    cfg = build_config(overrides=["data.classes=null", "model.depth=null", "data.samples_per_client=~"])
    assert cfg.data.classes is None and cfg.model.depth is None and cfg.data.samples_per_client is None
    assert build_config(overrides=["data.classes=3,4,5"]).data.classes == (3, 4, 5)
    assert build_config(overrides=["prompt.deep=0"]).prompt.deep is False


@pytest.mark.parametrize(
    "where, data, overrides",
    [
        ("federation.roundz", None, ["federation.roundz=3"]),
        ("model.nme", {"model": {"nme": "vit"}}, []),
        ("bogus", {"bogus": 1}, []),
        ("split.head_blocks.x", None, ["split.head_blocks.x=1"]),
    ],
)
def test_unknown_key_names_the_dotted_key(where: str, data, overrides) -> None:
    with pytest.raises(ConfigError) as ei:
        build_config(data, overrides)
    assert where.split(".x")[0] in str(ei.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("federation.num_clients=0", "federation.num_clients"),
        ("pruning.keep_ratio=0", "pruning.keep_ratio"),
        ("pruning.keep_ratio=1.5", "pruning.keep_ratio"),
        ("federation.clients_per_round=11", "federation.clients_per_round"),  # default 10 clients
        ("model.patch_size=5", "model.patch_size"),  # 28 % 5 != 0
        ("split.head_blocks=-1", "split.head_blocks"),
        ("split.tail_blocks=-2", "split.tail_blocks"),
        ("federation.rounds=abc", "federation.rounds"),
        ("prompt.deep=maybe", "prompt.deep"),
        ("train.lr=0", "train.lr"),
        ("devices.mix={rpi4: -1}", "devices.mix.rpi4"),
        ("data.classes=[3]", "data.classes"),
        ("data.partition=random", "data.partition"),
    ],
)
def test_bad_value_names_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        build_config(overrides=[override])
    assert str(ei.value).startswith(key)
    assert isinstance(ei.value, ValueError)


def test_bad_optimizer_lists_allowed_values() -> None:
    with pytest.raises(ConfigError) as ei:
        build_config(overrides=["train.optimizer=rmsprop"])
    msg = str(ei.value)
    assert "train.optimizer" in msg and "rmsprop" in msg
    for allowed in ("sgd", "adam", "adamw"):
        assert allowed in msg


def test_malformed_override_and_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        build_config(overrides=["federation.rounds"])
    with pytest.raises(ConfigError, match="--config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="--config"):
        load_config(bad)


def test_dump_config_round_trips() -> None:
    cfg = build_config(
        {"model": {"depth": 4, "checkpoint": None}},
        [
            "seed=11",
            "data.classes=[0,3,7]",
            "devices.mix={rpi4: 0.25, laptop: 0.75}",
            "prompt.deep=true",
            "pruning.keep_ratio=0.3",
            "train.optimizer=sgd",
            "ray.max_actors=2",
        ],
    )
    text = dump_config(cfg)
    again = build_config(yaml.safe_load(text))
    assert again == cfg
    assert again.data.classes == (0, 3, 7)
    assert to_dict(again) == to_dict(cfg)
    # the defaults round-trip too
    assert build_config(yaml.safe_load(dump_config(Config()))) == Config()


def test_replace_applies_and_validates() -> None:
    cfg = Config().replace(**{"federation.rounds": 3, "data.classes": None, "prompt.deep": True})
    assert cfg.federation.rounds == 3 and cfg.data.classes is None and cfg.prompt.deep is True
    assert Config().federation.rounds != 3 and Config().data.classes is not None  # really changed
    with pytest.raises(ConfigError, match="pruning.keep_ratio"):
        Config().replace(**{"pruning.keep_ratio": 2.0})
