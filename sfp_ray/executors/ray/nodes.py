"""Where a pool's actors run: the cluster's alive nodes, and where a slot can start again when its node is lost.

When an actor's node is gone, its slot is placed again (:func:`placement`): on a node that
still offers ``device:<class>``; otherwise, under ``ray.on_node_loss: replace``, on any node
with room (the slot is then *placed away* from its class, ``resources.csv``:
``placed_away``); under ``fail``, or when no node has room, the slot is left without an
actor (the reason says why). A slot shared by several classes (``rpi4+phone``) asks for no
``device:<class>``, so it goes to any node with room. Room is what the nodes' total
resources leave once the pool's own actors took their share (:func:`room_left`; other jobs
are not counted). :class:`~sfp_ray.executors.ray.pool.ActorPool` decides when to look, and
says what moved in the lines written here (:func:`slots_text`, :func:`hosted_text`,
:func:`left_out_lines`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ray

from sfp_ray.devices import device_resource
from sfp_ray.executors.ray.planning import PoolPlan

__all__ = ["NodeInfo", "alive_nodes", "hosted_text", "left_out_lines", "placement", "room_left", "slots_text"]


@dataclass(frozen=True)
class NodeInfo:
    """An alive node of the cluster: its id, address and total resources."""

    node_id: str
    address: str
    resources: Mapping[str, float]

    def describe(self) -> str:
        """``3ecb2eef (10.0.0.7, device:laptop)``: short id, address and the device classes it offers."""
        offers = sorted(k for k, v in self.resources.items() if k.startswith("device:") and v)
        return f"{self.node_id[:8]} ({', '.join([self.address, *offers])})"


def alive_nodes() -> dict[str, NodeInfo]:
    """The alive nodes of the connected cluster, by node id."""
    return {n["NodeID"]: NodeInfo(n["NodeID"], str(n.get("NodeManagerAddress", "")), dict(n.get("Resources") or {}))
            for n in ray.nodes() if n.get("Alive", n.get("alive", False))}


def placement(device: str, options: Mapping[str, Any], nodes: Sequence[Mapping[str, float]], policy: str,
              free: list[dict[str, float]] | None = None) -> tuple[dict[str, Any], bool] | str:
    """Where a client slot of class ``device`` can start now: ``(options, placed away)``, or why it cannot.

    ``options`` are the slot's planned Ray options, ``nodes`` the alive nodes' total
    resources, ``free`` what is left of them now (default: all of it); what the slot will
    take is reserved in ``free``. The slot keeps its options when a node offers
    ``device:<class>`` with room for it (or when the plan did not ask for the class).
    Otherwise, under ``policy="replace"``, it takes the same options without
    ``device:<class>`` (any node with room for its CPUs, GPUs, memory and other resources);
    under ``"fail"``, or when no node has room, the answer is the reason.

    Example:
        >>> opts = {"num_cpus": 0.5, "resources": {"device:laptop": 1.0}}
        >>> placement("laptop", opts, [{"CPU": 2.0, "device:laptop": 2.0}], "replace")
        ({'num_cpus': 0.5, 'resources': {'device:laptop': 1.0}}, False)
        >>> placement("laptop", opts, [{"CPU": 2.0}], "replace")
        ({'num_cpus': 0.5}, True)
        >>> placement("laptop", opts, [{"CPU": 2.0}], "fail")
        'no node offers device:laptop'
        >>> placement("laptop", opts, [{"CPU": 2.0}], "replace", free=[{"CPU": 0.25}])
        'no node offers device:laptop, and no node has room for a laptop actor'
    """
    key = device_resource(device)
    room = free if free is not None else [dict(n) for n in nodes]
    wanted = dict(options.get("resources") or {})
    if key not in wanted:
        return (dict(options), False) if _reserve(room, options) else f"no node has room for a {device} actor"
    offered = any(float(n.get(key, 0.0)) > 0 for n in nodes)
    if offered and _reserve(room, options):
        return dict(options), False
    full = f"the nodes that offer {key} are full" if offered else f"no node offers {key}"
    if policy == "fail":
        return full
    away = {k: v for k, v in options.items() if k != "resources"}
    if len(wanted) > 1:
        away["resources"] = {k: v for k, v in wanted.items() if k != key}
    if _reserve(room, away):
        return away, True
    return f"{full}, and no node has room for a {device} actor"


def _amounts(options: Mapping[str, Any]) -> dict[str, float]:
    """The resources Ray options ask for: ``{"CPU": .., "GPU": .., "memory": .., <custom>: ..}`` (none zero)."""
    need = {"CPU": float(options.get("num_cpus", 1) or 0), "GPU": float(options.get("num_gpus") or 0),
            "memory": float(options.get("memory") or 0)}
    need.update({str(k): float(v) for k, v in (options.get("resources") or {}).items()})
    return {k: v for k, v in need.items() if v > 0}


def _reserve(free: list[dict[str, float]], options: Mapping[str, Any]) -> bool:
    """Take what ``options`` ask for from the first node of ``free`` that has it all; whether one had."""
    need = _amounts(options)
    for node in free:
        if all(node.get(k, 0.0) >= v - 1e-9 for k, v in need.items()):
            for k, v in need.items():
                node[k] = node.get(k, 0.0) - v
            return True
    return False


def room_left(nodes: Mapping[str, NodeInfo], held: Iterable[tuple[str, Mapping[str, Any]]]) -> list[dict[str, float]]:
    """What the alive ``nodes`` have left once the actors ``held`` as ``(node id, Ray options)`` took their share.

    An actor on a node that is not alive any more takes nothing.

    Example:
        >>> nodes = {"a": NodeInfo("a", "10.0.0.1", {"CPU": 4.0}), "b": NodeInfo("b", "10.0.0.2", {"CPU": 2.0})}
        >>> room_left(nodes, [("a", {"num_cpus": 1}), ("gone", {"num_cpus": 1}), ("a", {"num_cpus": 0.5})])
        [{'CPU': 2.5}, {'CPU': 2.0}]
    """
    free = {nid: dict(info.resources) for nid, info in nodes.items()}
    for nid, options in held:
        if nid in free:
            for k, v in _amounts(options).items():
                free[nid][k] = free[nid].get(k, 0.0) - v
    return list(free.values())


# --------------------------------------------------------------------------- what re-placement says


def slots_text(classes: Sequence[str], slots: Sequence[int]) -> str:
    """``client:laptop slots 3, 4`` (classes in order of first slot; ``; `` between classes); empty for none.

    ``classes`` is each slot's kind (``PoolPlan.slot_classes``).

    Example:
        >>> slots_text(["rpi4", "laptop", "laptop"], [2, 1])
        'client:laptop slots 1, 2'
    """
    by_class: dict[str, list[int]] = {}
    for i in sorted(slots):
        by_class.setdefault(classes[i], []).append(i)
    return "; ".join(f"client:{c} slot{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}"
                     for c, ids in by_class.items())


def hosted_text(classes: Sequence[str], keys: Sequence[int | str]) -> str:
    """What of a pool ran on a node, from the keys of its actors there (slot indices, ``server``, ``aggregator``).

    Example:
        >>> hosted_text(["rpi4", "laptop", "laptop"], [2, "server", 1])
        'client:laptop slots 1, 2 and the server actor'
    """
    parts = [slots_text(classes, [k for k in keys if isinstance(k, int)])]
    parts = [p for p in parts if p] + [f"the {k} actor" for k in ("server", "aggregator") if k in keys]
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def left_out_lines(plan: PoolPlan, lost: Mapping[int, str], live: Iterable[str | None],
                   slots: Sequence[int]) -> list[str]:
    """One line per reason for ``slots`` left without an actor (``lost``: why), saying what their clients do.

    ``live`` is each slot's kind, None for a slot without an actor
    (:meth:`~sfp_ray.executors.ray.pool.ActorPool.live_classes`).
    """
    by_reason: dict[str, list[int]] = {}
    for i in slots:
        by_reason.setdefault(lost[i], []).append(i)
    alive = set(live)
    lines = []
    for reason, group in by_reason.items():
        kinds = {plan.slot_classes[i] for i in group}  # a shared slot's kind stands for several classes
        served = sorted(c for k in kinds if k in alive for c in plan.classes_of(k))
        then = (f"the {', '.join(served)} clients use the class's other slots" if served else
                f"the {', '.join(sorted(c for k in kinds for c in plan.classes_of(k)))} clients fail")
        them = "it" if len(group) == 1 else "them"
        lines.append(f"{slots_text(plan.slot_classes, group)} left out ({reason}); {then} until a node can "
                     f"take {them} (checked before every round)")
    return lines
