"""Cost projection on the ``meta`` device (``sfp-ray project``): what a round would cost, without training.

A projection takes exactly a run's configuration (any timm ViT, image size, patch,
channels, cut, prompts, pruning, epochs, samples) and asks each method's cost model
(:meth:`~sfp_ray.methods.base.Method.project`) for its per-client per-round figures. A
cost model runs one sample through the same pass functions as the method's client, on a
``meta``-device copy of the split model (no memory, no arithmetic), under
``FlopCounterMode``; a ViT's FLOPs and message sizes are linear in the batch, so
per-sample figures times the number of samples are what a round executes. A test checks
every method's projection against the FLOPs and bytes one round of a run executes.

``project.*`` settings override the run's values only when set: ``samples_per_client``
(default ``data.samples_per_client``), ``img_size`` (default ``model.img_size``) and
``num_classes`` (default: the number of ``data.classes``, else the dataset's).

Pruning (EL2N scoring of all local samples) runs once per client unless
``pruning.every_round`` or ``pruning.refresh_every``; ``client_flops`` spreads the scoring
cost over the client's expected participations ``rounds * clients_per_round / num_clients``
(at least 1), and ``client_flops_first_round`` shows the round in which it is paid.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from sfp_ray.config import Config
from sfp_ray.data.catalog import dataset_info
from sfp_ray.errors import ConfigError
from sfp_ray.methods import REFERENCE_METHOD, CostContext, get_method, list_methods
from sfp_ray.roles.workspace import PARTS, Workspace
from sfp_ray.stats import ratio_text

#: The columns of ``projection.csv`` that scripts rely on (more follow them).
PROJECTION_COLUMNS = ["method", "model", "samples_per_client", "client_flops", "server_flops", "bytes_up",
                      "bytes_down", "client_flops_ratio", "bytes_ratio"]


def projection_config(cfg: Config) -> tuple[Config, int, int]:
    """The run configuration with ``project.*`` applied: ``(config, samples per client, classes)``."""
    pj, d = cfg.project, cfg.data
    if pj.img_size is not None:
        cfg = cfg.replace(**{"model.img_size": pj.img_size})
    samples = pj.samples_per_client or d.samples_per_client
    if samples is None:
        raise ConfigError("project.samples_per_client: set it (or data.samples_per_client): a projection assumes a "
                          "local data size")
    classes = pj.num_classes or (len(d.classes) if d.classes else dataset_info(d.name).num_classes)
    if classes is None:
        raise ConfigError(f"project.num_classes: dataset {d.name!r} does not say how many classes it has; set it")
    return cfg, int(samples), int(classes)


def project_method(cfg: Config, method: str) -> dict:
    """Per-client per-round costs of ``method`` under the run configuration ``cfg``."""
    m = get_method(method)
    base, samples, classes = projection_config(cfg)
    rcfg = m.resolve(base)
    ws = Workspace(rcfg.model, rcfg.split, rcfg.prompt, num_classes=classes, checkpoint=None, seed=rcfg.seed,
                   parts=PARTS, meta=True)
    m.client_role(ws, rcfg)  # the method accepts this configuration (e.g. no prompts for split learning)
    pe = ws.vit.patch_embed
    img = pe.img_size
    row = {"method": method, "model": rcfg.model.name, "samples_per_client": samples, "img_size": img[0],
           "patch_size": pe.patch_size[0], "in_chans": pe.proj.in_channels, "num_classes": classes,
           "depth": ws.split.depth, "head_blocks": ws.split.head_blocks, "tail_blocks": ws.split.tail_blocks,
           "num_prompts": ws.split.num_prompts, "keep_ratio": rcfg.pruning.keep_ratio,
           "local_epochs": rcfg.train.local_epochs}
    row.update(m.project(CostContext(ws, rcfg, *ws.meta_batch(1), samples)).row())
    return row


def project(cfg: Config, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per method with ratios to ``fl_full`` (``projection.csv``)."""
    methods = list(methods) if methods else list_methods()
    for name in methods:
        get_method(name)
    if REFERENCE_METHOD not in methods:
        methods = methods + [REFERENCE_METHOD]
    df = pd.DataFrame([project_method(cfg, m) for m in methods])
    ref = df[df["method"] == REFERENCE_METHOD].iloc[0]
    df["client_flops_ratio"] = df["client_flops"] / ref["client_flops"]
    df["bytes_ratio"] = (df["bytes_up"] + df["bytes_down"]) / (ref["bytes_up"] + ref["bytes_down"])
    return df[PROJECTION_COLUMNS + [c for c in df.columns if c not in PROJECTION_COLUMNS]]


def format_projection(df: pd.DataFrame) -> str:
    """Terminal table of a projection (ratios as in every table: :func:`~sfp_ray.stats.ratio_text`)."""
    lines = [f"{'method':>20} {'client GFLOP':>13} {'server GFLOP':>13} {'MB up':>9} {'MB down':>9} "
             f"{'FLOPs vs fl_full':>17} {'bytes vs fl_full':>17}"]
    for _, r in df.iterrows():
        lines.append(f"{r['method']:>20} {r['client_flops'] / 1e9:13.1f} {r['server_flops'] / 1e9:13.1f} "
                     f"{r['bytes_up'] / 1e6:9.1f} {r['bytes_down'] / 1e6:9.1f} "
                     f"{ratio_text(r['client_flops_ratio']):>17} {ratio_text(r['bytes_ratio']):>17}")
    return "\n".join(lines)


def assumptions(cfg: Config, df: pd.DataFrame) -> str:
    """One line: what the projection assumed that a run would have measured, and which key set each.

    Example (the default configuration)::

        assumed: 64 samples per client (data.samples_per_client), 5 classes (data.classes), 28x28 px
        images, 1 channel (model.img_size, model.in_chans), 6 blocks cut 1/1, ...
    """
    pj, d = cfg.project, cfg.data
    r = df.iloc[0]
    samples = "project.samples_per_client" if pj.samples_per_client else "data.samples_per_client"
    classes = ("project.num_classes" if pj.num_classes else "data.classes" if d.classes
               else f"all of {d.name}")
    size = "project.img_size" if pj.img_size else "model.img_size" if cfg.model.img_size else cfg.model.name
    chans = int(r["in_chans"])
    f = cfg.federation
    return (f"assumed: {int(r['samples_per_client'])} samples per client ({samples}), {int(r['num_classes'])} "
            f"classes ({classes}), {int(r['img_size'])}x{int(r['img_size'])} px images ({size}) with {chans} "
            f"channel{'s' if chans != 1 else ''}, {int(r['depth'])} blocks, EL2N scoring spread over "
            f"{max(1.0, f.rounds * f.clients_per_round / f.num_clients):g} participations per client "
            "(federation.*); set project.* to change them")


__all__ = ["PROJECTION_COLUMNS", "assumptions", "format_projection", "project", "project_method",
           "projection_config"]
