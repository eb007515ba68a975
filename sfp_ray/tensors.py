"""Conversions between torch tensors and numpy arrays, in one place.

Trainable state travels between processes as name -> numpy array mappings (Ray moves
numpy arrays zero-copy through its object store, and hands them out read-only); inside a
process it is name -> torch tensor. :func:`as_tensor` (an owned copy) and :func:`as_view`
(shared memory, read only) are the only converters.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

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


def numpy_state(state: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, np.ndarray]:
    """Name -> numpy array (for the object store)."""
    return {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in state.items()}


def torch_state(state: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, torch.Tensor]:
    """Name -> owned torch tensor."""
    return {k: as_tensor(v).clone() if isinstance(v, torch.Tensor) else as_tensor(v) for k, v in state.items()}


__all__ = ["as_tensor", "as_view", "numpy_state", "torch_state"]
