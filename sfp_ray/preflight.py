"""Checks before anything starts: every mistake of a run found before Ray starts or ``--out`` is made.

:func:`check_run` is called by :func:`sfp_ray.run`, :func:`sfp_ray.compare`,
:func:`sfp_ray.sweep` and the commands built on them, before Ray starts and before the
output folder exists, in two steps:

1. without torch (a fraction of a second): the methods, every run's configuration
   (:func:`check_config`: the seed, the dataset name and classes, the cut against the
   configured depth, the device mix, the device catalogue and the server's class, a
   checkpoint file), the Ray address (a ``HOST:PORT`` or the cluster ``auto`` finds must
   answer; :func:`~sfp_ray.executors.ray.runtime.resolve_address`) and that the output
   folder can be written;
2. on the ``meta`` device (:func:`check_on_meta`; imports torch and timm, no weights):
   the timm model, the cut against its real depth and every method's client on it.

What needs data or weights (dataset files, a checkpoint's shapes, the per-device cut plan)
is checked by :func:`~sfp_ray.preparation.prepare_run` while the actors start.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sfp_ray.config import Config, checkpoint_file
from sfp_ray.data.catalog import dataset_info
from sfp_ray.devices import run_devices
from sfp_ray.errors import ConfigError
from sfp_ray.methods.catalog import method_info, resolve


def check_cut(cfg: Config) -> None:
    """The cut against ``model.depth`` when it is set (with ``null`` the model is needed: :func:`check_on_meta`).

    Example:
        >>> check_cut(Config().replace(**{"model.depth": 3, "split.head_blocks": 5}))
        Traceback (most recent call last):
        ...
        sfp_ray.errors.ConfigError: split.head_blocks: 5 is beyond the model's depth (3 blocks)
    """
    depth, s = cfg.model.depth, cfg.split
    if depth is None:
        return
    for key, blocks in (("split.head_blocks", s.head_blocks), ("split.tail_blocks", s.tail_blocks)):
        if blocks > depth:
            raise ConfigError(f"{key}: {blocks} is beyond the model's depth ({depth} blocks)")
    if s.head_blocks + s.tail_blocks > depth:
        raise ConfigError(f"split.head_blocks + split.tail_blocks: {s.head_blocks} + {s.tail_blocks} overlap in a "
                          f"{depth}-block model (must be <= {depth})")


def check_config(cfg: Config, *, cut: bool = True) -> None:
    """What one run's resolved configuration can be checked for without torch, data or weights.

    The dataset is registered and has the classes asked for, the cut fits ``model.depth``,
    the device catalogue reads, the mix and the server name known classes, and a checkpoint
    given as a file exists (``cut=False`` leaves the cut out). Raises :class:`ConfigError` naming the key.
    """
    d = cfg.data
    info = dataset_info(d.name)
    n = info.num_classes
    if d.classes is not None and n is not None:
        bad = [c for c in d.classes if c >= n]
        if bad:
            raise ConfigError(f"data.classes: class id(s) {bad} not present in dataset {info.name!r} "
                              f"(valid ids: 0..{n - 1})")
    if cut:
        check_cut(cfg)
    run_devices(cfg)
    checkpoint_file(cfg.model)


def check_out_dir(path: Path, *, create: bool = True) -> Path:
    """Check that the output folder can be written, creating it only when ``create``; one-line errors.

    With ``create=False`` nothing is made: an existing folder must accept a file, a new one
    must lie under a writable folder (so a run refused later leaves no empty folder behind).
    """
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out: {path} exists and is not a folder")
    if not create and not path.exists():
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(f"--out: cannot write to {path} ({parent} is not a folder)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"--out: cannot write to {path} (no permission to create it in {parent})")
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".sfp-ray-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out: cannot write to {path} ({e.strerror or e})") from None
    return path


def check_on_meta(configs: Sequence[tuple[str, Config]]) -> None:
    """Build each (method, resolved configuration)'s model on the ``meta`` device and its client on it.

    Finds an unknown or non-ViT timm model, a cut deeper than the model's real depth, or a
    method that cannot run on the configuration (e.g. prompts for split learning), without
    data or weights. Equal configurations are built once.
    """
    from sfp_ray.methods import get_method
    from sfp_ray.roles.workspace import PARTS, Workspace

    seen: set[tuple[str, str]] = set()
    for name, cfg in configs:
        key = (name, repr(cfg))
        if key in seen:
            continue
        seen.add(key)
        d = cfg.data
        classes = len(d.classes) if d.classes else (dataset_info(d.name).num_classes or 2)
        ws = Workspace(cfg.model, cfg.split, cfg.prompt, num_classes=classes, checkpoint=None, seed=cfg.seed,
                       parts=PARTS, meta=True)
        get_method(name).client_role(ws, cfg)


def check_run(methods: Sequence[str], cfg: Config, seeds: Sequence[int], *, executor: str = "ray",
              address: str | None = None, out: Path | None = None, meta: bool = True) -> list[tuple[str, Config]]:
    """Check a call of ``methods`` x ``seeds`` on ``cfg`` before anything starts; return the resolved runs.

    Returns ``(method, resolved configuration)`` per (seed, method), in that order. Light
    checks come first, so a mistake they catch is reported without importing torch; the
    meta-device checks (``meta``) follow. ``address`` is checked with the Ray executor, ``out``
    (not created) when given.

    Raises:
        ConfigError: a method, seed, setting or the output folder is invalid.
        ClusterError: the Ray address does not answer, or ``auto`` finds no cluster.
    """
    infos = [method_info(m) for m in methods]
    runs: list[tuple[str, Config]] = []
    for seed in seeds:
        for info in infos:
            rcfg = resolve(info, cfg.replace(seed=int(seed)))
            check_config(rcfg)
            runs.append((info.name, rcfg))
    if executor == "ray":
        from sfp_ray.executors.ray.runtime import resolve_address

        resolve_address(address if address is not None else cfg.ray.address)
    if out is not None:
        check_out_dir(out, create=False)
    if meta:
        check_on_meta(runs)
    return runs


__all__ = ["check_config", "check_cut", "check_on_meta", "check_out_dir", "check_run"]
