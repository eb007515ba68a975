"""Where a process computes, in what precision, how deterministically: one rule for every role.

**The device rule** (:func:`choose_device`):

* a Ray actor whose device class holds a GPU share computes on the GPU Ray assigned it. Ray
  sets ``CUDA_VISIBLE_DEVICES`` to the assigned GPU ids (``ray.get_gpu_ids()``), so inside the
  actor that GPU is ``cuda:0``;
* when Ray assigned a GPU but torch cannot use it, the actor computes on the CPU and says
  why (:func:`cuda_unusable`): ``torch built without CUDA``, ``the NVIDIA driver is too old
  for this torch build``, or ``no CUDA device visible`` (a logical GPU: ``ray.init(num_gpus=N)``
  on a machine without one, as in CI);
* an actor without a GPU share computes on the CPU;
* the serial executor takes ``--device cpu|cuda|auto`` (``auto``: the GPU when torch can use
  one); the server body, evaluation and pre-training follow the same rule.

Everything that crosses processes goes as CPU numpy arrays and is moved to the receiver's
device on arrival (:func:`to_device`); timers around GPU work synchronise first (:func:`sync`).

**Precision** (``train.precision``): ``fp32``, or autocast to ``bf16`` (GPU and CPU) or
``fp16`` (GPU only, with dynamic loss scaling of the client's optimizer) around the forward
passes (:func:`autocast`); the master weights, optimizer state and FedAvg stay float32. What
crosses the cut (activations and their gradients) is sent in the training precision
(:func:`wire_dtype`), so the bytes counted are the bytes of that dtype.

**Determinism** (``train.deterministic``): torch's deterministic algorithms, and on CUDA the
cuBLAS workspace setting they need (:func:`set_determinism`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from sfp_ray.errors import ConfigError

DeviceChoice = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "bf16", "fp16"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ComputeDevice:
    """The device a process computes on, and why (``resources.csv``: ``compute_device``, ``gpu_fallback_reason``)."""

    device: torch.device
    reason: str
    #: a GPU was assigned (or asked for) but compute runs on the CPU
    fallback: bool = False

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def cuda_unusable() -> str | None:
    """Why torch cannot compute on a GPU in this process, or None when it can.

    Example:
        >>> reason = cuda_unusable()
        >>> reason is None or isinstance(reason, str)
        True
    """
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return "torch built without CUDA"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available:
        return None
    text = " ".join(str(w.message) for w in caught).lower()
    if "too old" in text or "driver version" in text:
        return f"the NVIDIA driver is too old for this torch build (CUDA {torch.version.cuda})"
    if "no nvidia driver" in text or "found no nvidia driver" in text:
        return "no NVIDIA driver on this machine"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return ("no CUDA device visible" + (f" (CUDA_VISIBLE_DEVICES={visible!r}: a logical GPU)"
                                         if visible is not None else ""))


def choose_device(want: DeviceChoice = "auto", gpu_ids: Sequence[Any] | None = None) -> ComputeDevice:
    """The device rule (see the module docstring).

    Args:
        want: ``auto`` (the GPU when there is one to use), ``cpu`` or ``cuda`` (an error
            when torch cannot use one).
        gpu_ids: in a Ray actor, ``ray.get_gpu_ids()``: the GPUs Ray assigned it (empty: no
            GPU share, so the CPU); None outside an actor (``auto`` then looks at torch alone).

    Raises:
        ConfigError: ``want="cuda"`` and torch cannot use a GPU, or an unknown ``want``.

    Example:
        >>> choose_device("cpu").device, choose_device("auto", gpu_ids=[]).reason
        (device(type='cpu'), 'no GPU share')
    """
    if want not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device: got {want!r}, allowed: auto, cpu, cuda")
    if want == "cpu":
        return ComputeDevice(torch.device("cpu"), "asked for the CPU")
    if gpu_ids is not None and not list(gpu_ids) and want == "auto":
        return ComputeDevice(torch.device("cpu"), "no GPU share")
    why = cuda_unusable()
    if why is None:
        where = f"Ray assigned GPU {','.join(str(g) for g in gpu_ids)}" if gpu_ids else "a CUDA device is available"
        return ComputeDevice(torch.device("cuda", 0), where)
    if want == "cuda":
        raise ConfigError(f"--device cuda: torch cannot use a GPU here: {why}")
    if gpu_ids:
        return ComputeDevice(torch.device("cpu"), why, fallback=True)
    return ComputeDevice(torch.device("cpu"), why)


def sync(device: torch.device | str | None) -> None:
    """Wait for the device's queued work (a no-op on the CPU): call before reading a wall-clock timer."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def to_device(t: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """``t`` on ``device`` (the same tensor when it is there already)."""
    if device is None or t.device == torch.device(device):
        return t
    return t.to(device, non_blocking=False)


def precision_dtype(precision: str) -> torch.dtype:
    """The torch dtype of ``train.precision``."""
    try:
        return _DTYPES[precision]
    except KeyError:
        raise ConfigError(f"train.precision: got {precision!r}, allowed: {', '.join(_DTYPES)}") from None


def check_precision(precision: str, device: torch.device) -> None:
    """Raise ConfigError when ``precision`` cannot run on ``device`` (fp16 needs a GPU)."""
    precision_dtype(precision)
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a GPU (CPU autocast runs bf16); use bf16 or fp32 here")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """Autocast forward passes to ``precision`` on ``device`` (fp32: nothing changes)."""
    if precision == "fp32":
        yield
        return
    check_precision(precision, device)
    # no cast cache: autocast keeps its low-precision copies of the weights until its outermost region ends, and
    # one region spans a whole round's training here, so with the cache every step after the first would see
    # the weights as they were before the first optimizer step
    with torch.autocast(device_type=device.type, dtype=precision_dtype(precision), cache_enabled=False):
        yield


def wire_dtype(precision: str) -> torch.dtype:
    """The dtype activations and their gradients cross the cut in: the training precision."""
    return precision_dtype(precision)


def set_determinism(enabled: bool, device: torch.device) -> str:
    """Switch torch's deterministic algorithms on (warn-only: an operation without one warns instead of failing)
    and, on CUDA, the cuBLAS workspace setting they need; return what was set, for ``resources.csv``.
    """
    if not enabled:
        torch.use_deterministic_algorithms(False)
        return "off"
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    return "torch.use_deterministic_algorithms" + (
        f" + CUBLAS_WORKSPACE_CONFIG={os.environ['CUBLAS_WORKSPACE_CONFIG']}" if device.type == "cuda" else "")


__all__ = ["ComputeDevice", "DeviceChoice", "Precision", "autocast", "check_precision", "choose_device",
           "cuda_unusable", "precision_dtype", "set_determinism", "sync", "to_device", "wire_dtype"]
