"""Evaluation of the global model: accuracy and loss on the test set, batch by batch.

Evaluation is a measurement, not part of the protocol: its FLOPs are reported (phase
``eval``) but count towards neither the clients nor the server. Executors may split the
test set into contiguous runs of batches (:func:`eval_batches` with ``start``/``stop``)
and evaluate them in parallel; :func:`combine` sums the per-batch results in batch order,
so the figures equal a single pass bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sfp_ray.compute import autocast, to_device
from sfp_ray.data import ArrayDataset


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    loss: float
    flops: float
    wall_s: float


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def eval_batches(model: Any, data: ArrayDataset, batch_size: int, meter: Any = None, *, start: int = 0,
                 stop: int | None = None, precision: str = "fp32") -> list[tuple[int, float, float]]:
    """``(correct, loss_sum, flops)`` of batches ``start..stop-1`` of ``data`` through ``model``.

    Batches go to the model's device; the forward passes autocast to ``precision``
    (``train.precision``) and the loss is summed in float32.
    """
    stop = num_batches(len(data), batch_size) if stop is None else stop
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    out = []
    with torch.no_grad(), autocast(precision, device):
        for b in range(start, stop):
            x = to_device(data.images[b * batch_size:(b + 1) * batch_size], device)
            y = to_device(data.labels[b * batch_size:(b + 1) * batch_size], device)
            if meter is not None:
                logits, flops = meter.run(("eval", "all", "fwd", tuple(x.shape)), lambda: model(x))
            else:
                logits, flops = model(x), 0
            out.append((int((logits.argmax(1) == y).sum()),
                        F.cross_entropy(logits.float(), y, reduction="sum").item(), float(flops)))
    return out


def combine(results: Iterable[tuple[int, float, float]], n: int, wall_s: float) -> EvalResult:
    """Sum per-batch results in order into accuracy, mean loss and FLOPs."""
    correct, loss_sum, flops = 0, 0.0, 0.0
    for c, loss, f in results:
        correct += c
        loss_sum += loss
        flops += f
    n = max(n, 1)
    return EvalResult(correct / n, loss_sum / n, flops, wall_s)


def evaluate(model: Any, data: ArrayDataset, batch_size: int, meter: Any = None, *,
             precision: str = "fp32") -> EvalResult:
    """Accuracy, mean loss, FLOPs and wall seconds of ``model`` on ``data`` in one process."""
    t0 = time.perf_counter()
    res = eval_batches(model, data, batch_size, meter, precision=precision)
    return combine(res, len(data), time.perf_counter() - t0)


__all__ = ["EvalResult", "combine", "eval_batches", "evaluate", "num_batches"]
