"""Offline pre-training: the stand-in for ImageNet weights when nothing can be downloaded.

SFPrompt fine-tunes a *pre-trained* ViT. Without internet there are no timm weights, so
``sfp-ray pretrain`` trains the configured small ViT on a *source* task (default:
Fashion-MNIST classes 0-4, ``pretrain.*``) and caches the backbone (classifier dropped);
federated fine-tuning then runs on the *target* task (``data.classes``, default 5-9).
With internet, set ``model.pretrained=true`` (timm weights) or ``model.checkpoint=PATH``.

The cache key covers every setting that changes the backbone, so a changed model or source
task pre-trains anew and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from sfp_ray.compute import choose_device
from sfp_ray.config import Config, checkpoint_file, to_dict
from sfp_ray.data import load_dataset
from sfp_ray.models import build_from_config, input_shape, save_checkpoint

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$SFP_CACHE_DIR`` or ``./.cache/sfp-ray``."""
    return Path(os.environ.get("SFP_CACHE_DIR", ".cache/sfp-ray"))


def pretrain_device() -> torch.device:
    """Where pre-training computes: the GPU when torch can use one (the device rule, :mod:`sfp_ray.compute`)."""
    return choose_device("auto").device


def pretrain_key(cfg: Config) -> str:
    """Hash of the settings that determine the pre-trained backbone (and of the GPU, when it trains on one:
    a GPU's arithmetic gives other weights than the CPU's).
    """
    m = to_dict(cfg.model)
    m.pop("checkpoint", None)
    m.pop("pretrained", None)
    payload = {"model": m, "pretrain": to_dict(cfg.pretrain), "root": cfg.data.root, "v": 2}
    device = pretrain_device()
    if device.type != "cpu":
        payload["device"] = device.type
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def pretrain_path(cfg: Config) -> Path:
    return cache_dir() / f"pretrain-{cfg.model.name}-{pretrain_key(cfg)}.pt"


def timm_weights_path(cfg: Config) -> Path:
    """Where timm's pre-trained weights for the configured model, adapted to its input, are kept as a checkpoint."""
    m = to_dict(cfg.model)
    for key in ("checkpoint", "pretrained", "fused_attn"):
        m.pop(key, None)
    digest = hashlib.sha256(json.dumps({"model": m, "v": 1}, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"timm-{cfg.model.name}-{digest}.safetensors"


def timm_weights(cfg: Config, *, log_fn: Callable[[str], None] | None = None) -> str:
    """Timm's pre-trained weights of the configured model as a local ``.safetensors`` checkpoint (made once).

    timm reads them from the Hugging Face hub or its local cache (``HF_HOME``/
    ``HF_HUB_CACHE``; with ``HF_HUB_OFFLINE=1`` only the cache) and adapts them to the
    configured input: the position embedding resampled to ``model.img_size``, the patch
    embedding summed or repeated to ``model.in_chans`` channels. The classifier is left
    out (the target task has its own). Every actor then reads the tensors of the parts it
    holds from this file, instead of each loading the whole model from the hub.
    """
    path = timm_weights_path(cfg)
    if path.is_file():
        return str(path)
    (log_fn or log.warning)(f"model.pretrained: reading timm's weights of {cfg.model.name} (Hugging Face hub or "
                            f"its cache) into {path} (done once)")
    from safetensors.torch import save_file

    from sfp_ray.models import CLASSIFIER_KEYS

    model = build_from_config(cfg.model, 2)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in CLASSIFIER_KEYS}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"source": f"timm:{cfg.model.name}", "sfp_ray": "model.pretrained"})
    os.replace(tmp, path)
    return str(path)


def resolve_checkpoint(cfg: Config, *, log_fn: Callable[[str], None] | None = None) -> str | None:
    """The checkpoint file ``cfg.model.checkpoint`` stands for, pre-training if needed.

    ``"pretrain"`` -> the cached backbone for this model (pre-trained now when missing);
    ``None``/``"none"`` -> no checkpoint; anything else must be an existing file. With
    ``model.pretrained``, ``"pretrain"`` and ``none`` stand for timm's pre-trained weights
    (:func:`timm_weights`); a file given still wins.
    """
    ck = cfg.model.checkpoint
    if cfg.model.pretrained and (ck is None or str(ck).lower() in ("none", "null", "", "pretrain")):
        return timm_weights(cfg, log_fn=log_fn)
    if ck == "pretrain":
        path = pretrain_path(cfg)
        if not path.is_file():
            (log_fn or log.warning)(f"no cached pre-trained backbone at {path}: pre-training it now "
                                    "(sfp-ray pretrain; done once)")
            pretrain(cfg, out=path)
        return str(path)
    p = checkpoint_file(cfg.model)
    return str(p) if p is not None else None


def pretrain(cfg: Config, out: str | os.PathLike | None = None, *, progress: bool = True) -> dict:
    """Train the configured ViT on the source task and save the backbone; return a summary."""
    pc = cfg.pretrain
    out = Path(out) if out is not None else pretrain_path(cfg)
    t0 = time.perf_counter()
    img_size, in_chans = input_shape(cfg.model)
    train = load_dataset(pc.dataset, train=True, root=cfg.data.root, classes=pc.classes, img_size=img_size,
                         in_chans=in_chans, seed=pc.seed, max_samples=pc.max_samples)
    test = load_dataset(pc.dataset, train=False, root=cfg.data.root, classes=pc.classes, img_size=img_size,
                        in_chans=in_chans, seed=pc.seed, max_samples=2000)
    device = pretrain_device()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(pc.seed)
        model = build_from_config(cfg.model, train.num_classes).to(device)  # initialised on the CPU, then moved
        gen = torch.Generator().manual_seed(pc.seed)
        train, test = train.to(device), test.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=pc.lr, weight_decay=0.05)
        steps_per_epoch = (len(train) + pc.batch_size - 1) // pc.batch_size
        total = steps_per_epoch * pc.epochs
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=pc.lr, total_steps=total, pct_start=0.1)
        model.train()
        step = 0
        tty = sys.stderr.isatty()  # a live line on a terminal, one line per 100 steps in logs
        lead = "\r" if tty else ""
        for epoch in range(pc.epochs):
            order = torch.randperm(len(train), generator=gen)
            running = 0.0
            for i in range(0, len(train), pc.batch_size):
                idx = order[i:i + pc.batch_size]
                loss = F.cross_entropy(model(train.images[idx]), train.labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                running = 0.9 * running + 0.1 * loss.item() if step > 1 else loss.item()
                if progress and (step % (20 if tty else 100) == 0 or step == total):
                    print(f"{lead}pretrain epoch {epoch + 1}/{pc.epochs} step {step}/{total} "
                          f"loss {running:.3f} ({time.perf_counter() - t0:.0f}s)", end="" if tty else "\n",
                          file=sys.stderr, flush=True)
        if progress and tty:
            print(file=sys.stderr)
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(test), 512):
                correct += int((model(test.images[i:i + 512]).argmax(1) == test.labels[i:i + 512]).sum())
    acc = correct / max(len(test), 1)
    meta = {
        "source_dataset": pc.dataset,
        "source_classes": list(pc.classes) if pc.classes else None,
        "source_test_accuracy": acc,
        "train_samples": len(train),
        "epochs": pc.epochs,
        "seconds": time.perf_counter() - t0,
        "device": str(device),
        "model": to_dict(cfg.model),
        "key": pretrain_key(cfg),
    }
    save_checkpoint(model, out, meta=meta, include_classifier=False)
    meta["path"] = str(out)
    log.info("pre-trained backbone: %s (source test accuracy %.3f)", out, acc)
    return meta
