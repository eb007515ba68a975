"""Validation of a configuration: value ranges and cross-field constraints, one line naming the dotted key.

Types are already right (:mod:`sfp_ray.config.conversion` coerces every value to its
field's type); :func:`validate` checks what a type cannot say (``pruning.keep_ratio`` in
(0, 1], ``model.patch_size`` dividing ``model.img_size``, ...) and raises
:class:`~sfp_ray.errors.ConfigError` on the first violation. It imports nothing of the
schema (:mod:`sfp_ray.config.schema`), whose :meth:`~sfp_ray.config.schema.Config.replace`
calls it.

Example:
    >>> from sfp_ray.config.schema import Config
    >>> validate(Config())
    >>> import dataclasses
    >>> validate(dataclasses.replace(Config(), seed=-1))
    Traceback (most recent call last):
    ...
    sfp_ray.errors.ConfigError: seed: must be an integer in [0, 2**32), got -1
"""

from __future__ import annotations

import math
from typing import Any

from sfp_ray.errors import ConfigError

#: Pooling the split's tail implements (``map``: timm's attention pool); ``model.global_pool`` must be one.
GLOBAL_POOLS = ("", "token", "avg", "max", "avgmax", "map")


def _require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def validate(cfg: Any) -> None:
    """Check value ranges and cross-field constraints that do not need the model built.

    ``cfg`` is a :class:`~sfp_ray.config.schema.Config` (typed ``Any``: the schema imports
    this module, so this module cannot import the schema).

    Constraints that depend on the model (a cut deeper than its blocks) are checked in
    :func:`sfp_ray.models.split_vit` and by the orchestrator before round 1.
    """
    m, s, p, pr, t, d, f, r = (
        cfg.model, cfg.split, cfg.prompt, cfg.pruning, cfg.train, cfg.data, cfg.federation, cfg.ray
    )
    _require(0 <= cfg.seed < 2**32, "seed", f"must be an integer in [0, 2**32), got {cfg.seed}")
    _require(m.img_size is None or m.img_size > 0, "model.img_size",
             f"must be a positive integer or null (the model's own), got {m.img_size}")
    _require(m.patch_size is None or m.patch_size > 0, "model.patch_size",
             f"must be a positive integer or null (the model's own), got {m.patch_size}")
    _require(
        m.img_size is None or m.patch_size is None or m.img_size % m.patch_size == 0,
        "model.patch_size",
        f"must divide model.img_size ({m.img_size}), got {m.patch_size}",
    )
    _require(m.in_chans is None or m.in_chans in (1, 3), "model.in_chans", f"allowed: 1, 3 or null, got {m.in_chans}")
    _require(m.depth is None or m.depth > 0, "model.depth", f"must be positive or null, got {m.depth}")
    _require(m.embed_dim is None or m.embed_dim > 0, "model.embed_dim",
             f"must be a positive integer or null (the model's own), got {m.embed_dim}")
    _require(m.num_heads is None or m.num_heads > 0, "model.num_heads",
             f"must be a positive integer or null (the model's own), got {m.num_heads}")
    _require(m.embed_dim is None or m.num_heads is None or m.embed_dim % m.num_heads == 0, "model.num_heads",
             f"must divide model.embed_dim ({m.embed_dim}), got {m.num_heads}")
    _require(m.global_pool is None or m.global_pool in GLOBAL_POOLS, "model.global_pool",
             f"got {m.global_pool!r}, allowed: {', '.join(repr(g) for g in GLOBAL_POOLS)} or null (the model's own)")
    _require(s.head_blocks >= 0, "split.head_blocks", f"must be >= 0, got {s.head_blocks}")
    _require(s.tail_blocks >= 0, "split.tail_blocks", f"must be >= 0, got {s.tail_blocks}")
    _require(s.min_blocks >= 0, "split.min_blocks", f"must be >= 0, got {s.min_blocks}")
    _require(s.max_blocks is None or s.max_blocks >= s.min_blocks, "split.max_blocks",
             f"must be >= split.min_blocks ({s.min_blocks}) or null, got {s.max_blocks}")
    _require(p.num_tokens >= 0, "prompt.num_tokens", f"must be >= 0 (0 disables prompts), got {p.num_tokens}")
    _require(
        0.0 < pr.keep_ratio <= 1.0,
        "pruning.keep_ratio",
        f"must be in (0, 1] (1.0 disables pruning), got {pr.keep_ratio}",
    )
    _require(0.0 <= pr.skip_top < 1.0, "pruning.skip_top", f"must be in [0, 1), got {pr.skip_top}")
    _require(pr.refresh_every >= 0, "pruning.refresh_every", f"must be >= 0 (0: score once), got {pr.refresh_every}")
    _require(t.local_epochs >= 0, "train.local_epochs", f"must be >= 0, got {t.local_epochs}")
    _require(t.split_epochs >= 0, "train.split_epochs", f"must be >= 0, got {t.split_epochs}")
    _require(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    _require(t.eval_batch_size >= 1, "train.eval_batch_size", f"must be >= 1, got {t.eval_batch_size}")
    _require(t.lr is None or t.lr > 0, "train.lr", f"must be > 0 (or null: the method's own), got {t.lr}")
    _require(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    _require(0 <= t.momentum < 1, "train.momentum", f"must be in [0, 1), got {t.momentum}")
    _require(d.alpha > 0, "data.alpha", f"must be > 0, got {d.alpha}")
    _require(d.shards_per_client >= 1, "data.shards_per_client", f"must be >= 1, got {d.shards_per_client}")
    _require(
        d.samples_per_client is None or d.samples_per_client >= 1,
        "data.samples_per_client",
        f"must be >= 1 or null (all), got {d.samples_per_client}",
    )
    _require(
        d.test_samples is None or d.test_samples >= 1,
        "data.test_samples",
        f"must be >= 1 or null (all), got {d.test_samples}",
    )
    _require(d.min_samples >= 1, "data.min_samples", f"must be >= 1, got {d.min_samples}")
    if d.classes is not None:
        _require(len(d.classes) >= 2, "data.classes", f"needs at least 2 classes, got {list(d.classes)}")
        _require(len(set(d.classes)) == len(d.classes), "data.classes", f"has duplicates: {list(d.classes)}")
        _require(all(c >= 0 for c in d.classes), "data.classes", f"must be >= 0: {list(d.classes)}")
    _require(f.num_clients >= 1, "federation.num_clients", f"must be >= 1, got {f.num_clients}")
    _require(
        1 <= f.clients_per_round <= f.num_clients,
        "federation.clients_per_round",
        f"must be in [1, federation.num_clients={f.num_clients}], got {f.clients_per_round}",
    )
    _require(f.rounds >= 1, "federation.rounds", f"must be >= 1, got {f.rounds}")
    _require(f.eval_every >= 1, "federation.eval_every", f"must be >= 1, got {f.eval_every}")
    _require(0.0 <= f.min_success_fraction <= 1.0, "federation.min_success_fraction",
             f"must be in [0, 1] (the fraction of a round's clients that must succeed), got {f.min_success_fraction}")
    _require(f.deadline_s is None or f.deadline_s > 0, "federation.deadline_s",
             f"must be > 0 simulated seconds or null (no deadline), got {f.deadline_s}")
    _require(0.0 <= f.over_select <= 10.0, "federation.over_select",
             f"must be in [0, 10] (0.3: select 30 % more clients), got {f.over_select}")
    if cfg.devices.mix:
        for name, frac in cfg.devices.mix.items():
            _require(frac >= 0, f"devices.mix.{name}", f"fraction must be >= 0, got {frac}")
        _require(sum(cfg.devices.mix.values()) > 0, "devices.mix", "fractions must sum to > 0")
    else:
        raise ConfigError("devices.mix: must name at least one device class, e.g. {rpi4: 1.0}")
    dv = cfg.devices
    _require(dv.capacity_sample_flops is None or dv.capacity_sample_flops > 0, "devices.capacity_sample_flops",
             f"must be > 0 FLOPs per sample or null (relative speeds), got {dv.capacity_sample_flops}")
    _require(
        r.max_actors is None or r.max_actors >= 1,
        "ray.max_actors",
        f"must be >= 1 or null (one actor per client), got {r.max_actors}",
    )
    _require(r.num_cpus is None or r.num_cpus > 0, "ray.num_cpus", f"must be > 0, got {r.num_cpus}")
    _require(r.num_gpus is None or r.num_gpus >= 0, "ray.num_gpus", f"must be >= 0, got {r.num_gpus}")
    _require(0.0 < r.memory_fraction <= 1.0, "ray.memory_fraction",
             f"must be in (0, 1] (the share of a node's memory the pool plans for), got {r.memory_fraction}")
    _require(
        r.server_max_concurrency >= 1,
        "ray.server_max_concurrency",
        f"must be >= 1, got {r.server_max_concurrency}",
    )
    _require(math.isfinite(r.placement_timeout_s) and r.placement_timeout_s > 0, "ray.placement_timeout_s",
             f"must be > 0 seconds, got {r.placement_timeout_s}")
    pc = cfg.pretrain
    _require(0 <= pc.seed < 2**32, "pretrain.seed", f"must be an integer in [0, 2**32), got {pc.seed}")
    _require(pc.epochs >= 1, "pretrain.epochs", f"must be >= 1, got {pc.epochs}")
    _require(pc.batch_size >= 1, "pretrain.batch_size", f"must be >= 1, got {pc.batch_size}")
    _require(pc.max_samples is None or pc.max_samples >= 1, "pretrain.max_samples",
             f"must be >= 1 or null (all), got {pc.max_samples}")
    _require(pc.lr > 0, "pretrain.lr", f"must be > 0, got {pc.lr}")
    pj = cfg.project
    for key in ("samples_per_client", "img_size", "num_classes"):
        value = getattr(pj, key)
        _require(value is None or value >= 1, f"project.{key}", f"must be >= 1 or null (the run's value), got {value}")
