"""Conversions between torch tensors and numpy arrays, in one place.

Trainable state travels between processes as name -> numpy array mappings (Ray moves
numpy arrays zero-copy through its object store, and hands them out read-only); inside a
process it is name -> torch tensor. :func:`as_tensor` (an owned copy) and :func:`as_view`
(shared memory, read only) are the only converters.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch


def as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """An owned, detached tensor of ``x`` (a read-only numpy view is copied).

    Example:
        >>> a = np.arange(3.0); a.setflags(write=False)
        >>> t = as_tensor(a); t += 1; t.tolist(), a.tolist()
        ([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    """
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.from_numpy(np.array(x, copy=True))


def as_view(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A tensor sharing ``x``'s memory, for reading only (e.g. a read-only array in Ray's object store).

    Example:
        >>> a = np.arange(3.0); a.setflags(write=False)
        >>> as_view(a).sum().item()
        3.0
    """
    if isinstance(x, torch.Tensor):
        return x.detach()
    with warnings.catch_warnings():
        # torch warns that writing to a view of a read-only array is undefined: nothing writes to it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(x))


@dataclass(frozen=True)
class Bf16:
    """A bfloat16 array as its raw 16-bit patterns: numpy has no bfloat16, so it crosses processes this way."""

    bits: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.bits.shape)

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)


def to_wire(t: torch.Tensor) -> np.ndarray | Bf16:
    """A tensor as a CPU array for another process (bfloat16 as :class:`Bf16`).

    Example:
        >>> w = to_wire(torch.tensor([1.5, -2.0], dtype=torch.bfloat16))
        >>> type(w).__name__, from_wire(w).tolist(), from_wire(w).dtype
        ('Bf16', [1.5, -2.0], torch.bfloat16)
    """
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return Bf16(t.view(torch.int16).numpy())
    return t.numpy()


def from_wire(x: torch.Tensor | np.ndarray | Bf16, device: torch.device | str | None = None) -> torch.Tensor:
    """An owned tensor on ``device`` (default: the CPU) of what :func:`to_wire` made, or of a tensor or array."""
    if isinstance(x, Bf16):
        t = torch.from_numpy(np.array(x.bits, copy=True)).view(torch.bfloat16)
    else:
        t = as_tensor(x)
    if device is not None and t.device != torch.device(device):
        t = t.to(device)
    return t


def numpy_state(state: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, np.ndarray]:
    """Name -> numpy array (for the object store)."""
    return {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in state.items()}


def torch_state(state: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, torch.Tensor]:
    """Name -> owned torch tensor."""
    return {k: as_tensor(v).clone() if isinstance(v, torch.Tensor) else as_tensor(v) for k, v in state.items()}


__all__ = ["Bf16", "as_tensor", "as_view", "from_wire", "numpy_state", "to_wire", "torch_state"]
