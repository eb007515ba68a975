"""Plots of a run folder: accuracy against bytes and simulated time, client compute by phase, a round's timeline.

:func:`write_plots` draws ``accuracy_vs_bytes.png``, ``accuracy_vs_sim_time.png`` and
``client_flops_by_method.png`` from the cost and round tables (a band: the 95 % t-interval
over seeds); :func:`plot_timeline` draws ``timeline.png``, one round's simulated schedule
from ``timeline.csv`` (and ``clients.csv``, ``config.yaml``). Matplotlib is imported when a
plot is drawn, with the ``Agg`` backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from sfp_ray.errors import DataError
from sfp_ray.methods.catalog import PHASE_COLOURS
from sfp_ray.reports.summaries import _seeds
from sfp_ray.stats import spread


def log_axis(values: Sequence[float]) -> bool:
    """Whether values compared on one axis (each method's final position) span more than 10x: then a log axis.

    Example:
        >>> log_axis([0.3, 160, 390]), log_axis([160, 390]), log_axis([0.0, 5.0])
        (True, False, False)
    """
    pos = [v for v in values if v > 0]
    return len(pos) > 1 and max(pos) > 10 * min(pos)


def write_plots(out: Path, costs: pd.DataFrame, rounds: pd.DataFrame, summary: pd.DataFrame) -> list[Path]:
    """Accuracy vs cumulative bytes, accuracy vs simulated time, client FLOPs by method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    evald = rounds.assign(seed=_seeds(rounds)).dropna(subset=["test_accuracy"])
    for x, label, fname, scale in (
        ("bytes_total", "cumulative bytes transferred (MB)", "accuracy_vs_bytes.png", 1e-6),
        ("cum_sim_s", "cumulative simulated time (s)", "accuracy_vs_sim_time.png", 1.0),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        ends = []
        for method, g in evald.groupby("method", sort=False):
            if x not in g:
                continue
            seeds = g["seed"].nunique()
            curve = [(float(rg[x].mean()) * scale, spread(rg["test_accuracy"])) for _, rg in g.groupby("round")]
            xs = [c[0] for c in curve]
            ends.append(max(xs))
            line = ax.plot(xs, [c[1].mean for c in curve], marker="o",
                           label=f"{method} (mean of {seeds} seeds)" if seeds > 1 else method)[0]
            if seeds > 1:  # an accuracy lies in [0, 1]; so does its band
                ax.fill_between(xs, [max(0.0, c[1].mean - c[1].ci95) for c in curve],
                                [min(1.0, c[1].mean + c[1].ci95) for c in curve],
                                color=line.get_color(), alpha=0.2, linewidth=0)
        if log_axis(ends):
            ax.set_xscale("log")
            label += ", log scale: the methods span more than 10x"
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, -0.02), min(high, 1.02))
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy" + (" (band: 95% t-interval over seeds)" if evald["seed"].nunique() > 1 else ""))
        ax.grid(alpha=0.3)
        ax.grid(alpha=0.1, which="minor")
        ax.legend()
        fig.tight_layout()
        p = out / fname
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    on_client = costs[(costs["side"] == "client") & (costs["phase"] != "eval")]
    if not on_client.empty:
        part = on_client.groupby(["method", "phase"], sort=False)["flops"].sum().unstack(fill_value=0.0)
        participations = rounds.groupby("method")["participants"].sum().reindex(part.index)
        per = part.div(participations, axis=0) / 1e9
        per = per.loc[:, per.sum(axis=0) > 0]  # phases without compute (download/upload) add nothing
        fig, ax = plt.subplots(figsize=(7, 4))
        per.plot(kind="bar", stacked=True, ax=ax, logy=False, rot=0)
        ax.legend(title="phase", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_ylabel("client GFLOPs per client per round")
        ax.set_xlabel("")
        ax.set_title("client compute by phase")
        fig.tight_layout()
        p = out / "client_flops_by_method.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


#: Server compute in the timeline plot (the phases' colours are the methods': ``methods.catalog.PHASE_COLOURS``).
SERVER_COLOUR = "#222222"
#: How each status other than ``ok`` is marked at the end of a client's bar: (marker, colour).
STATUS_MARKS = {"dropped": ("X", "#d62728"), "late": (">", "#ff7f0e"), "failed": ("X", "#7f7f7f"),
                "offline": ("o", "#7f7f7f"), "retried": ("*", "#1f77b4")}


def _round_clients(d: Path, df: pd.DataFrame, method: str, seed: int, rnd: int) -> pd.DataFrame:
    """The round's selected clients (``clients.csv``: also those without segments), with status and cut."""
    p = d / "clients.csv"
    if p.is_file():
        c = pd.read_csv(p, dtype={"run_id": str})
        c = c[(c["method"] == method) & (c["seed"] == seed) & (c["round"] == rnd)]
        if not c.empty and {"client_id", "device", "status"} <= set(c.columns):
            return c.sort_values("client_id").reset_index(drop=True)
    return df.groupby("client_id", as_index=False)[["device", "status"]].first()


def _seconds(x: float) -> str:
    """Simulated seconds for a plot label: ``1.2 s``, ``0.49 ms``."""
    return f"{x:.2g} s" if x >= 0.1 else f"{x * 1e3:.2g} ms"


def _deadline(d: Path) -> float | None:
    """``federation.deadline_s`` of the folder's runs (``config.yaml``), when set."""
    import yaml

    try:
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        value = cfg["federation"]["deadline_s"]
        return float(value) if value is not None else None
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def plot_timeline(run_dir: str | os.PathLike, *, round: int | None = None, method: str | None = None,
                  seed: int | None = None, out: str | os.PathLike | None = None) -> Path:
    """Plot one round's simulated schedule from ``timeline.csv``: a bar per selected client, a segment per phase.

    Every client selected in the round has a row (from ``clients.csv``): its label names it,
    its device class (the label's colour) and its cut (head/tail blocks); a client that was
    offline, dropped out, finished late, failed or was retried is marked at the end of its
    bar and named there. Segments are coloured by phase; the server's compute for a client is
    dark and hatched, its waits for the server grey, and both are drawn at least a visible
    width and summed at the end of the bar; the top row shows when the server is busy. A
    dashed line marks ``federation.deadline_s`` when set. Defaults: the first method and seed
    of the folder, its last round; written to ``timeline.png`` in the folder.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    d = Path(run_dir)
    path = d / "timeline.csv"
    if not path.is_file():
        raise FileNotFoundError(f"RUN_DIR: {d} has no timeline.csv (folders from before timelines were recorded "
                                "have none)")
    df = pd.read_csv(path)
    if df.empty:
        raise DataError(f"{path} has no rows")
    method = method if method is not None else str(df["method"].iloc[0])
    df = df[df["method"] == method]
    if df.empty:
        raise DataError(f"{path}: no rows of method {method!r}")
    seed = seed if seed is not None else int(df["seed"].iloc[0])
    df = df[df["seed"] == seed]
    round = round if round is not None else int(df["round"].max()) if not df.empty else 0
    df = df[df["round"] == round]
    if df.empty:
        raise DataError(f"{path}: no rows of {method} seed {seed} round {round}")
    clients = _round_clients(d, df, method, seed, round)
    deadline = _deadline(d)
    span = max(float(df["end_s"].max()), deadline or 0.0)
    least = span * 0.004  # the narrowest segment drawn: server and wait slivers stay visible
    cmap = plt.get_cmap("tab10")
    dev_colour = {dv: cmap(i % 10) for i, dv in enumerate(sorted(clients["device"].unique()))}
    fig, ax = plt.subplots(figsize=(10, 0.38 * (len(clients) + 1) + 1.8))
    server = df[df["side"] == "server"]
    for row in server.itertuples(index=False):  # row 0: the server's busy time, all clients together
        ax.barh(0, max(row.end_s - row.start_s, least), left=row.start_s, color=SERVER_COLOUR, height=0.5)
    labels = [f"server (busy {_seconds(float(server['end_s'].sub(server['start_s']).sum()))})"]
    label_colours: list[Any] = ["black"]
    for y, c in enumerate(clients.itertuples(index=False), start=1):
        segs = df[df["client_id"] == c.client_id].sort_values("start_s")
        for row in segs.itertuples(index=False):
            width = row.end_s - row.start_s
            if row.side == "server":  # drawn on top of the client's segments, at least `least` wide
                ax.barh(y, max(width, least), left=row.start_s, color=SERVER_COLOUR, edgecolor="white",
                        linewidth=0.3, hatch="///", zorder=3)
            elif row.side == "wait":
                ax.barh(y, max(width, least), left=row.start_s, color=PHASE_COLOURS["wait"], edgecolor="#888888",
                        linewidth=0.3, zorder=3)
            else:
                ax.barh(y, width, left=row.start_s, color=PHASE_COLOURS.get(row.phase, "#999999"),
                        edgecolor="white", linewidth=0.3)
        end = float(segs["end_s"].max()) if not segs.empty else 0.0
        notes = []
        srv = float(segs.loc[segs["side"] == "server", "end_s"].sub(segs.loc[segs["side"] == "server",
                                                                              "start_s"]).sum())
        wait = float(segs.loc[segs["side"] == "wait", "end_s"].sub(segs.loc[segs["side"] == "wait", "start_s"]).sum())
        if srv > 0:
            notes.append(f"server {_seconds(srv)}")
        if wait > 0:
            notes.append(f"wait {_seconds(wait)}")
        status = str(c.status) if isinstance(c.status, str) else ""
        if status in STATUS_MARKS:
            marker, colour = STATUS_MARKS[status]
            ax.plot([end], [y], marker=marker, color=colour, markersize=9, markeredgecolor="black",
                    markeredgewidth=0.5, linestyle="none", zorder=5)
            notes.insert(0, status.upper() if status != "offline" else "OFFLINE: selected, not online, no work")
        if notes:
            gap = span * (0.03 if status in STATUS_MARKS else 0.012)
            ax.text(end + gap, y, ", ".join(notes), va="center", fontsize=7,
                    color=STATUS_MARKS.get(status, (None, "#444444"))[1])
        cut = ""
        if "head_blocks" in clients.columns and pd.notna(c.head_blocks):
            cut = f"  cut {int(c.head_blocks)}/{int(c.tail_blocks)}"
        labels.append(f"{c.client_id} {c.device}{cut}" + (f" ({status})" if status not in ("ok", "") else ""))
        label_colours.append(dev_colour[c.device])
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    for tick, colour in zip(ax.get_yticklabels(), label_colours, strict=True):
        tick.set_color(colour)
    if deadline is not None:
        ax.axvline(deadline, color="#ff7f0e", linestyle="--", linewidth=1)
        ax.text(deadline, 0.01, f" deadline {deadline:g} s", color="#ff7f0e", fontsize=7, va="bottom",
                transform=ax.get_xaxis_transform())
    ax.set_xlim(0, span * 1.5)  # room for the notes after the bars
    ax.invert_yaxis()
    ax.set_xlabel("simulated seconds in the round")
    ax.set_title(f"{method} seed {seed}, round {round}: simulated timeline per selected client\n"
                 "(label: client, device (colour), cut head/tail blocks; server and wait segments drawn at least "
                 f"{_seconds(least)} wide)", fontsize=9)
    phases = [p for p in PHASE_COLOURS if p != "wait" and p in set(df.loc[df["side"] != "server", "phase"])]
    handles: list[Any] = [Patch(color=PHASE_COLOURS[p], label=p) for p in dict.fromkeys(phases)]
    handles.append(Patch(facecolor=SERVER_COLOUR, edgecolor="white", hatch="///", label="server computes"))
    handles.append(Patch(facecolor=PHASE_COLOURS["wait"], edgecolor="#888888", label="waits for the server"))
    for status in [st for st in STATUS_MARKS if st in set(clients["status"])]:
        marker, colour = STATUS_MARKS[status]
        handles.append(Line2D([], [], marker=marker, color=colour, markeredgecolor="black", linestyle="none",
                              label=status))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    target = Path(out) if out is not None else d / "timeline.png"
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
