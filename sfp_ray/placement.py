"""Per-device cuts (``split.policy=per_device``): where each device class's client is cut.

SFPrompt's paper names *dynamic client-server partitioning* among its contributions but does
not give a rule; this is ours. For every candidate cut ``(head_blocks, tail_blocks)``, both
in ``[split.min_blocks, split.max_blocks]`` with at least one block left to the server, the
method's own cost model (:meth:`~sfp_ray.methods.base.Method.project`, the one ``sfp-ray
project`` uses) gives a client's per-round FLOPs, the server's FLOPs for it and the bytes
up and down, and :func:`~sfp_ray.sizing.device_memory_bytes` what the client must hold. Then, per device
class:

1. **memory**: a cut is feasible when ``memory_mb`` holds the client's parameters (head and
   tail), the gradients and optimiser state of what it trains, and the peak of the tensors
   one training step keeps alive (measured on the ``meta`` device, :mod:`sfp_ray.sizing`);
2. **time**: a cut's simulated round time on that device is
   ``client FLOPs / achieved FLOP/s + bytes up / uplink + bytes down / downlink +
   messages x latency + server FLOPs x clients_per_round / server FLOP/s`` (the server's
   FIFO queue serves the whole cohort, so a client's body work waits behind the others');
3. **the round's time**: a synchronous round lasts as long as its slowest client, so the
   round time to minimise is ``T = max over the run's device classes of their fastest
   feasible cut``; no choice of cuts makes a round shorter;
4. **the cut**: every class takes, among its feasible cuts that finish within ``T``, the
   one with the most client blocks (then the deeper tail, then the faster one). The
   slowest class thus gets its fastest cut, and faster classes spend their slack on
   blocks the server would otherwise run (and, in the tail, train).

A ViT's activations are the same size at every cut, so a cut trades client compute against
server compute and the tail's parameter upload; with a server much faster than the
devices, a class's fastest cut is the thinnest one, and only step 4 gives faster classes
deeper cuts. ``tests/test_placement.py`` checks the rule on hand numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sfp_ray.config import Config
from sfp_ray.errors import ConfigError
from sfp_ray.sizing import device_memory_bytes

_MIB = 2**20
#: relative tolerance of "finishes within the round's time"
_TOL = 1e-9


@dataclass(frozen=True)
class CutCost:
    """What one client of a run costs per round at one cut (from the method's cost model)."""

    head_blocks: int
    tail_blocks: int
    client_flops: float
    server_flops: float
    bytes_up: float
    bytes_down: float
    memory_bytes: int
    #: messages per round (each pays the link's one-way latency)
    messages: float = 0.0

    @property
    def cut(self) -> tuple[int, int]:
        return (self.head_blocks, self.tail_blocks)


@dataclass(frozen=True)
class Choice:
    """The cut chosen for one device class, with the figures behind it."""

    device: str
    cut: tuple[int, int]
    seconds: float
    memory_bytes: int
    fastest_cut: tuple[int, int]
    fastest_seconds: float
    feasible: int


def candidate_cuts(depth: int, min_blocks: int, max_blocks: int | None) -> list[tuple[int, int]]:
    """Cuts ``(head, tail)`` with both in ``[min_blocks, max_blocks]`` and at least one block on the server.

    Example:
        >>> candidate_cuts(4, 1, None)
        [(1, 1), (1, 2), (2, 1)]
    """
    hi = depth - 1 if max_blocks is None else min(max_blocks, depth - 1)
    cuts = [(h, t) for h in range(min_blocks, hi + 1) for t in range(min_blocks, hi + 1) if h + t <= depth - 1]
    if not cuts:
        raise ConfigError(f"split.min_blocks={min_blocks}, split.max_blocks={max_blocks}: no cut of a {depth}-block "
                          "model keeps that many blocks on the client and one on the server")
    return cuts


def round_seconds(c: CutCost, device: object, server: object, cohort: int) -> float:
    """Simulated round time of one client of ``device`` at cut ``c`` (see the module docstring, step 2)."""
    link = (c.bytes_up * 8 / (device.uplink_mbps * 1e6) + c.bytes_down * 8 / (device.downlink_mbps * 1e6)
            + c.messages * device.latency_ms / 1000)
    return device.compute_seconds(c.client_flops) + link + server.compute_seconds(c.server_flops) * cohort


def choose_cuts(costs: Sequence[CutCost], devices: Sequence[object], server: object, cohort: int) -> dict[str, Choice]:
    """The cut of every device class in ``devices`` (the rule of the module docstring).

    Raises ConfigError when a class's memory holds no candidate cut.
    """
    if not costs:
        raise ValueError("choose_cuts: no candidate cuts")
    classes = {d.name: d for d in devices}
    feasible: dict[str, list[tuple[float, CutCost]]] = {}
    for name, d in classes.items():
        fits = [(round_seconds(c, d, server, cohort), c) for c in costs if c.memory_bytes <= d.memory_mb * _MIB]
        if not fits:
            least = min(costs, key=lambda c: c.memory_bytes)
            raise ConfigError(f"split.policy=per_device: device class {name!r} (memory_mb={d.memory_mb}) holds no "
                              f"cut: the smallest, head {least.head_blocks} / tail {least.tail_blocks}, needs "
                              f"{least.memory_bytes / _MIB:.1f} MiB; give the class more memory_mb or leave it out "
                              "of devices.mix")
        feasible[name] = fits
    fastest = {n: min(f, key=lambda sc: (sc[0], sc[1].head_blocks + sc[1].tail_blocks)) for n, f in feasible.items()}
    ceiling = max(s for s, _ in fastest.values())
    out = {}
    for name, fits in feasible.items():
        within = [(s, c) for s, c in fits if s <= ceiling * (1 + _TOL)]
        s, c = max(within, key=lambda sc: (sc[1].head_blocks + sc[1].tail_blocks, sc[1].tail_blocks, -sc[0]))
        fs, fc = fastest[name]
        out[name] = Choice(name, c.cut, s, c.memory_bytes, fc.cut, fs, len(fits))
    return out


# --------------------------------------------------------------------------- cost table


def _exact_terms(cfg: Config, method: object, num_classes: int, samples: int, cut: tuple[int, int]) -> list[float]:
    """The cost terms of one cut, from the method's cost model on ``meta`` (see :func:`cut_costs`)."""
    from sfp_ray.methods.base import CostContext
    from sfp_ray.roles.workspace import PARTS, Workspace

    c = with_cut(cfg, cut)
    ws = Workspace(c.model, c.split, c.prompt, num_classes=num_classes, checkpoint=None, seed=c.seed, parts=PARTS,
                   meta=True)
    p = method.project(CostContext(ws, c, *ws.meta_batch(1), samples))
    mem = device_memory_bytes(ws, method, c, *ws.meta_batch(c.train.batch_size))
    return [float(p.client_flops), float(p.server_flops), float(p.bytes_up), float(p.bytes_down), float(mem),
            float(p.messages_per_round or 0.0)]


def cut_costs(cfg: Config, method: object, num_classes: int, samples: int,
              cuts: Sequence[tuple[int, int]]) -> list[CutCost]:
    """The cost of one client of ``samples`` samples at each of ``cuts``, from the method's cost model on ``meta``.

    A ViT's blocks are all alike, so with at least one block on each side every term (FLOPs,
    bytes, parameter and activation memory) is affine in the head and tail block counts:
    three exact evaluations, at ``(a, a)``, ``(a + 1, a)`` and ``(a, a + 1)``, give every other
    such cut. Cuts with an empty head or tail (another token selection, another gradient
    slice) are evaluated exactly. ``tests/test_placement.py`` checks the shortcut against
    exact evaluation of every cut.
    """
    exact: dict[tuple[int, int], list[float]] = {}

    def terms(cut: tuple[int, int]) -> list[float]:
        if cut not in exact:
            exact[cut] = _exact_terms(cfg, method, num_classes, samples, cut)
        return exact[cut]

    inner = [c for c in cuts if c[0] >= 1 and c[1] >= 1]
    a = min((min(c) for c in inner), default=0)
    anchors = [(a, a), (a + 1, a), (a, a + 1)]
    affine = len(inner) > 3 and all(c in cuts for c in anchors)
    if affine:
        base, dh, dt = (terms(c) for c in anchors)
        slope_h = [u - v for u, v in zip(dh, base, strict=True)]
        slope_t = [u - v for u, v in zip(dt, base, strict=True)]
    out = []
    for h, t in cuts:
        if affine and h >= 1 and t >= 1:
            v = [b + (h - a) * sh + (t - a) * st for b, sh, st in zip(base, slope_h, slope_t, strict=True)]
        else:
            v = terms((h, t))
        out.append(CutCost(h, t, v[0], v[1], v[2], v[3], int(round(v[4])), v[5]))
    return out


def with_cut(cfg: Config, cut: tuple[int, int]) -> Config:
    """``cfg`` cut at ``cut = (head_blocks, tail_blocks)``."""
    h, t = cut
    if (cfg.split.head_blocks, cfg.split.tail_blocks) == (h, t):
        return cfg
    return cfg.replace(**{"split.head_blocks": int(h), "split.tail_blocks": int(t)})


@dataclass(frozen=True)
class CutPlan:
    """The cuts of a run: one per client, and the global / server cuts derived from them."""

    cuts: tuple[tuple[int, int], ...]
    choices: Mapping[str, Choice]

    @property
    def global_cut(self) -> tuple[int, int]:
        """The cut of the global model (evaluation, the global state): the fewest head and the most tail blocks,
        so every trained tail block of any client is in it.
        """
        return (min(h for h, _ in self.cuts), max(t for _, t in self.cuts))

    @property
    def server_cut(self) -> tuple[int, int]:
        """The cut whose body holds every client's body: the fewest head and the fewest tail blocks."""
        return (min(h for h, _ in self.cuts), min(t for _, t in self.cuts))

    def lines(self) -> list[str]:
        """One line per device class (for the run's notices)."""
        return [f"split.policy=per_device: {c.device} -> head {c.cut[0]} / tail {c.cut[1]} blocks "
                f"(~{c.seconds:.3g} s/round, {c.memory_bytes / _MIB:.1f} MiB; its fastest cut "
                f"{c.fastest_cut[0]}/{c.fastest_cut[1]}: ~{c.fastest_seconds:.3g} s)"
                for c in sorted(self.choices.values(), key=lambda c: c.device)]


def plan_cuts(cfg: Config, method: object, num_classes: int, devices: Sequence[object], server: object,
              samples: int, depth: int) -> CutPlan:
    """Every client's cut under ``split.policy=per_device`` (``devices``: one profile per client)."""
    s = cfg.split
    cuts = candidate_cuts(depth, s.min_blocks, s.max_blocks)
    costs = cut_costs(cfg, method, num_classes, max(1, int(samples)), cuts)
    choices = choose_cuts(costs, devices, server, max(1, cfg.federation.clients_per_round))
    return CutPlan(tuple(choices[d.name].cut for d in devices), choices)


def typical_samples(sizes: Sequence[int]) -> int:
    """The median client's sample count (what the cut plan assumes per client)."""
    ordered = sorted(int(n) for n in sizes)
    return ordered[len(ordered) // 2] if ordered else 1


__all__ = ["Choice", "CutCost", "CutPlan", "candidate_cuts", "choose_cuts", "cut_costs", "plan_cuts", "round_seconds",
           "typical_samples", "with_cut"]
