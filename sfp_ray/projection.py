"""Paper-scale cost projection on the ``meta`` device (``sfp-ray project``).

Every pass a method's client and server execute is run once on a meta-device model (no
memory, no arithmetic) under ``FlopCounterMode``; a ViT's FLOPs are linear in the batch,
so per-sample counts times the number of samples give per-client per-round FLOPs. Bytes
are taken from the shapes of the tensors that actually cross the cut (the same
:class:`~sfp_ray.models.TokenSelector` and prompt-gradient slice the simulator sends) and
from the trainable state's parameter bytes. Nothing here is a closed-form guess: the
same head/body/tail modules as in training are executed, only on ``meta``.

The split-learning baselines (``sfl``, ``sl``: ``Method.trains_body``) have their own rule:
the client runs head forward, tail forward + backward and head backward with every head
and tail parameter trainable, the server runs body forward + backward *with* weight
gradients, on every local sample for ``split_epochs``; per sample, the head output and
the gradient w.r.t. the body output go up, the body output and the full gradient w.r.t.
the head output come down; head + tail parameters travel both ways once per round. For
``sl`` these are the costs of one client's turn in a round.

Pruning (EL2N scoring of all ``n`` local samples) runs once per client unless
``pruning.every_round``; ``client_flops`` spreads that one-off cost over the client's
expected participations ``rounds * clients_per_round / num_clients`` (at least 1), and
``client_flops_first_round`` shows the round in which it happens.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import timm
import torch
import torch.nn.functional as F

from sfp_ray.config import Config
from sfp_ray.costs import count_flops, payload_bytes
from sfp_ray.errors import ConfigError
from sfp_ray.methods import get_method, list_methods
from sfp_ray.models import split_vit
from sfp_ray.pruning import keep_count

BYTES_PER_ELEMENT = 4  # float32 activations, gradients and parameters


def _flops(fn) -> int:
    return count_flops(fn)[1]


def _set_trainable(split, names: set[str]) -> None:
    for n, p in split.named_parameters():
        p.requires_grad_(n in names)


def project_method(cfg: Config, model_name: str, method: str) -> dict:
    """Per-client per-round costs of ``method`` for ``model_name`` (see module docstring)."""
    m = get_method(method)
    cfg = m.resolve(cfg)
    pj = cfg.project
    try:
        vit = timm.create_model(model_name, num_classes=pj.num_classes, img_size=pj.img_size, device="meta")
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"--model: cannot build {model_name!r} on the meta device: {e}".splitlines()[0]) from e
    depth = len(vit.blocks)
    split = split_vit(vit, cfg.split.head_blocks, cfg.split.tail_blocks, cfg.prompt.num_tokens,
                      deep=cfg.prompt.deep, bypass_pool=cfg.split.bypass_pool, seed=cfg.seed).to("meta")
    in_chans = vit.patch_embed.proj.in_channels
    x = torch.empty(1, in_chans, pj.img_size, pj.img_size, device="meta")
    y = torch.zeros(1, dtype=torch.long, device="meta")
    n = pj.samples_per_client
    t = cfg.train
    row = {"method": method, "model": model_name, "samples_per_client": n, "img_size": pj.img_size, "depth": depth,
           "head_blocks": cfg.split.head_blocks, "tail_blocks": cfg.split.tail_blocks,
           "num_prompts": cfg.prompt.num_tokens, "keep_ratio": cfg.pruning.keep_ratio,
           "local_epochs": t.local_epochs, "split_epochs": t.split_epochs if m.uses_server else 0}
    if m.trains_body:
        row.update(_project_split_learning(split, x, y, n, t.split_epochs))
    elif m.uses_server:
        names = {k for k, _ in split.named_parameters() if k.startswith("head.prompt") or k.startswith("tail.")}
        _set_trainable(split, names)
        has_p = split.num_prompts > 0
        kept = keep_count(n, cfg.pruning.keep_ratio)
        # 1a: EL2N scoring, head + tail without grad, body bypassed
        prune = 0
        if cfg.pruning.keep_ratio < 1.0:
            with torch.no_grad():
                h0 = split.head(x)
                prune = n * (_flops(lambda: split.head(x)) + _flops(lambda: split.bypass_tail(h0)))
        # 1b: local-loss update, body bypassed
        local = 0
        if t.local_update and t.local_epochs > 0:
            h = split.head(x)
            hd = h.detach().requires_grad_(has_p)
            f_head = _flops(lambda: split.head(x))
            f_tail = _flops(lambda: F.cross_entropy(split.bypass_tail(hd), y).backward())
            f_hb = _flops(lambda: h.backward(hd.grad)) if has_p else 0
            local = kept * t.local_epochs * (f_head + f_tail + f_hb)
        # 2: split training
        h = split.head(x) if has_p else _nograd(split.head, x)
        f_head = _flops(lambda: split.head(x) if has_p else _nograd(split.head, x))
        act = h.detach().requires_grad_(has_p)
        body_out = split.body(act) if has_p else _nograd(split.body, act)
        f_body_fwd = _flops(lambda: split.body(act) if has_p else _nograd(split.body, act))
        out = body_out.detach().requires_grad_(True)
        f_tail = _flops(lambda: F.cross_entropy(split.tail(out), y).backward())
        up = payload_bytes(act) + (payload_bytes(out.grad) if has_p else 0)
        down = payload_bytes(out)
        f_body_bwd = f_hb = 0
        if has_p:
            (gx,) = torch.autograd.grad(body_out, act, out.grad, retain_graph=True)
            f_body_bwd = _flops(lambda: torch.autograd.grad(body_out, act, out.grad, retain_graph=True))
            sl = split.prompt_grad_slice()
            g_down = gx if sl is None else gx[:, sl]
            down += payload_bytes(g_down)
            f_hb = _flops(lambda: h.backward(gx, retain_graph=True))
        e = t.split_epochs
        split_client = kept * e * (f_head + f_tail + f_hb)
        server = kept * e * (f_body_fwd + f_body_bwd)
        state_bytes = sum(p.numel() * BYTES_PER_ELEMENT for k, p in split.named_parameters() if k in names)
        participations = max(1.0, cfg.federation.rounds * cfg.federation.clients_per_round
                             / cfg.federation.num_clients)
        prune_per_round = prune if cfg.pruning.every_round else prune / participations
        row.update({
            "client_flops": local + split_client + prune_per_round,
            "client_flops_first_round": local + split_client + prune,
            "prune_flops": prune,
            "local_update_flops": local,
            "split_client_flops": split_client,
            "server_flops": server,
            "bytes_up": kept * e * up + state_bytes,
            "bytes_down": kept * e * down + state_bytes,
            "split_bytes_per_sample": up + down,
            "state_bytes": state_bytes,
        })
    else:
        names = _federated_names(split, method)
        _set_trainable(split, names)
        f_step = _flops(lambda: F.cross_entropy(split(x), y).backward())
        state_bytes = sum(p.numel() * BYTES_PER_ELEMENT for k, p in split.named_parameters() if k in names)
        flops = n * t.local_epochs * f_step
        row.update({
            "client_flops": flops, "client_flops_first_round": flops, "prune_flops": 0, "local_update_flops": flops,
            "split_client_flops": 0, "server_flops": 0, "bytes_up": state_bytes, "bytes_down": state_bytes,
            "split_bytes_per_sample": 0, "state_bytes": state_bytes,
        })
    return row


def _project_split_learning(split, x: torch.Tensor, y: torch.Tensor, n: int, epochs: int) -> dict:
    """Costs of ``sfl``/``sl``: all of head + tail train on the client, the body on the server."""
    names = {k for k, _ in split.named_parameters() if k.startswith("head.") or k.startswith("tail.")}
    body_params = list(split.body.parameters())
    _set_trainable(split, names | {k for k, _ in split.named_parameters() if k.startswith("body.")})
    h = split.head(x)
    f_head = _flops(lambda: split.head(x))
    act = h.detach().requires_grad_(True)
    body_out = split.body(act)
    f_body_fwd = _flops(lambda: split.body(act))
    out = body_out.detach().requires_grad_(True)
    f_tail = _flops(lambda: F.cross_entropy(split.tail(out), y).backward())
    (gx, *_) = torch.autograd.grad(body_out, [act, *body_params], out.grad, retain_graph=True)
    f_body_bwd = _flops(lambda: torch.autograd.grad(body_out, [act, *body_params], out.grad, retain_graph=True))
    f_head_bwd = _flops(lambda: h.backward(gx, retain_graph=True))
    up = payload_bytes(act) + payload_bytes(out.grad)
    down = payload_bytes(out) + payload_bytes(gx)
    state_bytes = sum(p.numel() * BYTES_PER_ELEMENT for k, p in split.named_parameters() if k in names)
    client = n * epochs * (f_head + f_tail + f_head_bwd)
    return {
        "local_epochs": 0,  # no local-loss update
        "client_flops": client, "client_flops_first_round": client, "prune_flops": 0, "local_update_flops": 0,
        "split_client_flops": client, "server_flops": n * epochs * (f_body_fwd + f_body_bwd),
        "bytes_up": n * epochs * up + state_bytes, "bytes_down": n * epochs * down + state_bytes,
        "split_bytes_per_sample": up + down, "state_bytes": state_bytes,
    }


def _nograd(fn, x):
    with torch.no_grad():
        return fn(x)


def _federated_names(split, method: str) -> set[str]:
    """The trainable set of a federated baseline, by the same rule its client uses."""
    from sfp_ray.methods import _is_classifier, _is_prompt

    all_names = [k for k, _ in split.named_parameters()]
    if method == "fl_full":
        return set(all_names)
    if method == "fl_prompt":
        return {k for k in all_names if _is_prompt(k) or _is_classifier(k)}
    if method == "fl_linear":
        return {k for k in all_names if _is_classifier(k)}
    raise ConfigError(f"--methods: no projection rule for federated method {method!r}")


def project(cfg: Config, model_name: str, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per method with ratios to ``fl_full`` (``projection.csv``)."""
    methods = list(methods) if methods else list_methods()
    if "fl_full" not in methods:
        methods = methods + ["fl_full"]
    rows = [project_method(cfg, model_name, m) for m in methods]
    df = pd.DataFrame(rows)
    ref = df[df["method"] == "fl_full"].iloc[0]
    df["client_flops_ratio"] = df["client_flops"] / ref["client_flops"]
    df["bytes_ratio"] = (df["bytes_up"] + df["bytes_down"]) / (ref["bytes_up"] + ref["bytes_down"])
    first = ["method", "model", "samples_per_client", "client_flops", "server_flops", "bytes_up", "bytes_down",
             "client_flops_ratio", "bytes_ratio"]
    return df[first + [c for c in df.columns if c not in first]]


def format_projection(df: pd.DataFrame) -> str:
    """Terminal table of a projection."""
    lines = [f"{'method':>20} {'client GFLOP':>13} {'server GFLOP':>13} {'MB up':>9} {'MB down':>9} "
             f"{'FLOPs/fl_full':>14} {'bytes/fl_full':>14}"]
    for _, r in df.iterrows():
        lines.append(f"{r['method']:>20} {r['client_flops'] / 1e9:13.1f} {r['server_flops'] / 1e9:13.1f} "
                     f"{r['bytes_up'] / 1e6:9.1f} {r['bytes_down'] / 1e6:9.1f} {r['client_flops_ratio']:14.4%} "
                     f"{r['bytes_ratio']:14.3f}")
    return "\n".join(lines)


__all__ = ["project", "project_method", "format_projection"]
