"""Run preparation: a configuration and a method checked once and turned into a :class:`RunSpec`.

:func:`prepare_run` is the boundary between what the user asked for and a run: it resolves
the method's settings, loads the data (the test set the same for every seed, the training
samples the clients hold adapted to the model's input), partitions it among the clients,
gives each client its device profile, plans per-device cuts, and checks the model, the cut
and the checkpoint on the ``meta`` device before any weights are touched. Seeds are derived
from the configuration seed (:func:`derive_seed`), so the same configuration prepares the
same run everywhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from sfp_ray.availability import load_trace
from sfp_ray.capacity import client_devices
from sfp_ray.config import Config
from sfp_ray.data import ArrayDataset, adapt, load_dataset, partition
from sfp_ray.devices import run_devices
from sfp_ray.executors.base import RunSpec
from sfp_ray.methods import Method, get_method
from sfp_ray.models import check_checkpoint, input_shape, read_checkpoint
from sfp_ray.placement import CutPlan, plan_cuts, typical_samples

#: Seed of the test set's sub-sampling (``data.test_samples``), the same for every run seed.
TEST_SEED = 0


def derive_seed(*parts: int) -> int:
    """A 31-bit seed derived from integers, e.g. ``(seed, round, client_id)``.

    Example:
        >>> derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
        True
    """
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def prepare_run(cfg: Config, method: Method | str | None = None, *,
                resolve_checkpoint: Callable[[Config], str | None] | None = None) -> RunSpec:
    """Validate ``cfg`` for ``method`` and load what the run needs: data, partition, devices, checkpoint.

    This is the boundary: the configuration and the model are checked here once (the model
    and cut on the ``meta`` device, the checkpoint against it), before any training.
    Settings that cap user input say so in the spec's ``notices`` (one line each) instead
    of applying silently.
    """
    method = get_method(method or cfg.method) if not isinstance(method, Method) else method
    cfg = method.resolve(cfg)
    notes: list[str] = []
    d, f = cfg.data, cfg.federation
    img_size, in_chans = input_shape(cfg.model)
    # the training split at its own size: only the samples the clients hold are adapted to the model's input below
    train = load_dataset(d.name, train=True, root=d.root, classes=d.classes, seed=cfg.seed, download=d.download)
    # the test set does not depend on the run's seed: runs over seeds are measured on the same samples
    test = load_dataset(d.name, train=False, root=d.root, classes=d.classes, img_size=img_size, in_chans=in_chans,
                        seed=TEST_SEED, max_samples=d.test_samples, download=d.download)
    if d.test_samples is not None and len(test) < d.test_samples:
        notes.append(f"data.test_samples={d.test_samples}: the test set has only {len(test)} samples; using all")
    parts = partition(train.labels.numpy(), f.num_clients, d.partition, alpha=d.alpha,
                      shards_per_client=d.shards_per_client, seed=cfg.seed, min_samples=d.min_samples)
    if d.samples_per_client is not None:
        rng = np.random.default_rng(derive_seed(cfg.seed, 7919))
        largest = max(len(p) for p in parts)
        if d.samples_per_client > largest:
            notes.append(f"data.samples_per_client={d.samples_per_client}: no client has that many samples "
                         f"(largest: {largest}); every client keeps all it was given")
        parts = [np.sort(rng.choice(p, size=d.samples_per_client, replace=False)) if len(p) > d.samples_per_client
                 else p for p in parts]
    train, parts = _held(train, parts)
    adapt(train, img_size=img_size, in_chans=in_chans)
    class_devices, server_device = run_devices(cfg)
    devices, capacity_notes = client_devices(class_devices, cfg.devices, cfg.seed)
    notes.extend(capacity_notes)
    if cfg.devices.server_link != "parallel" and cfg.devices.free_links:
        notes.append(f"devices.server_link={cfg.devices.server_link}: not used, devices.free_links makes every "
                     "transfer free")
    checkpoint_of = resolve_checkpoint if resolve_checkpoint is not None else _default_checkpoint
    spec = RunSpec(cfg, method, train.num_classes, None, train, test, parts, devices, server_device, notes)
    validate_model(spec)  # before any weights are touched (a pre-training run may follow)
    # a class's cut is planned from the class itself (its median client), not from one client's own draw
    spec.cut_plan = _cut_plan(dataclasses.replace(spec, devices=class_devices))
    if spec.cut_plan is not None:
        notes.extend(spec.cut_plan.lines())
    if f.availability_trace is not None:
        spec.trace = load_trace(f.availability_trace)
        notes.append(f"federation.availability_trace: {len(spec.trace.entries)} client traces; client c follows "
                     f"entry c mod {len(spec.trace.entries)} (the device classes' availability is not used)")
    spec.checkpoint = checkpoint_of(cfg)
    if spec.checkpoint is not None:
        ws = spec.workspace(("head", "body", "tail"), meta=True)
        check_checkpoint(ws.vit, read_checkpoint(spec.checkpoint), spec.checkpoint)
    return spec


def _held(train: ArrayDataset, parts: Sequence[np.ndarray]) -> tuple[ArrayDataset, list[np.ndarray]]:
    """The samples the clients hold, and each client's indices into them (in the same order).

    Resized to 224 px a dataset takes 588 KiB per image, so the driver and Ray's object store
    keep only what some client trains on, not the whole split.
    """
    held = np.unique(np.concatenate(parts))
    if len(held) == len(train):
        return train, list(parts)
    return train.subset(held), [np.searchsorted(held, p) for p in parts]


def validate_model(spec: RunSpec) -> None:
    """Build the configured model on the meta device, cut it, and build the method's client on it.

    Catches an unknown model, a cut deeper than the model, or a method that cannot run on
    this configuration, before any data or weights are touched.
    """
    ws = spec.workspace(("head", "body", "tail"), meta=True)
    spec.method.client_role(ws, spec.cfg)


def _cut_plan(spec: RunSpec) -> CutPlan | None:
    """Every client's cut under ``split.policy=per_device`` (:mod:`sfp_ray.placement`); None for a fixed cut."""
    cfg, method = spec.cfg, spec.method
    if cfg.split.policy != "per_device":
        return None
    if not method.cuts_per_device(cfg):
        spec.notices.append(f"split.policy=per_device: {method.name} trains on the client without a server; "
                            "the cut does not apply")
        return None
    depth = spec.workspace(("head",), meta=True).split.depth
    return plan_cuts(cfg, method, spec.num_classes, spec.devices, spec.server_device,
                     typical_samples([len(p) for p in spec.client_indices]), depth)


def _default_checkpoint(cfg: Config) -> str | None:
    from sfp_ray.pretrain import resolve_checkpoint

    return resolve_checkpoint(cfg)


__all__ = ["TEST_SEED", "derive_seed", "prepare_run", "validate_model"]
