"""States packed into one buffer per dtype for the object store (sfp_ray.packing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sfp_ray.faults import NonFiniteError, check_finite
from sfp_ray.packing import Packed, pack, unpack


def test_pack_round_trips_names_shapes_dtypes_and_order():
    state = {
        "blocks.0.w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "scale": np.float32(2.5),  # 0-d
        "steps": np.array([3, 4], dtype=np.int64),
        "norm.b": np.array([-1.0, 1.0], dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    p = pack(state)
    assert sorted(p.buffers) == [np.dtype(np.float32).str, np.dtype(np.int64).str]
    assert p.buffers[np.dtype(np.float32).str].shape == (12 + 1 + 2,)
    assert p.nbytes == 15 * 4 + 2 * 8
    back = unpack(p)
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == np.asarray(v).dtype and back[k].shape == np.shape(v)
        np.testing.assert_array_equal(back[k], v)


def test_pack_copies_and_unpack_gives_views():
    a = np.ones(4, dtype=np.float32)
    p = pack({"a": a})
    a[:] = 7  # the packed copy does not change
    view = unpack(p)["a"]
    assert view.tolist() == [1.0] * 4
    p.buffers[np.dtype(np.float32).str][0] = 5  # a view into the buffer
    assert view[0] == 5


def test_large_arrays_travel_as_they_are_without_a_copy():
    from sfp_ray.packing import LARGE_BYTES

    big = np.zeros(LARGE_BYTES // 4, dtype=np.float32)  # exactly LARGE_BYTES
    small = np.ones(3, dtype=np.float32)
    p = pack({"small": small, "big": big, "tail": small})
    assert list(p.large) == ["big"] and p.large["big"] is big
    assert p.buffers[np.dtype(np.float32).str].shape == (6,)
    assert p.nbytes == LARGE_BYTES + 6 * 4
    back = unpack(p)
    assert list(back) == ["small", "big", "tail"] and back["big"] is big
    big[0] = 3.0  # not copied: the caller must not change it before the object is serialised
    assert unpack(p)["big"][0] == 3.0
    import pickle

    again = unpack(pickle.loads(pickle.dumps(p, protocol=5)))
    assert again["big"][0] == 3.0 and again["tail"].tolist() == [1.0] * 3


def test_unpack_passes_plain_mappings_through_and_packs_nothing():
    plain = {"w": np.float32([1.0])}
    assert unpack(plain) == plain and unpack(plain) is not plain
    empty = pack({})
    assert isinstance(empty, Packed) and unpack(empty) == {} and empty.nbytes == 0


def test_check_finite_takes_the_numpy_path_and_the_torch_path_alike():
    good = {"w": torch.ones(3), "h": torch.ones(2, dtype=torch.float16), "n": torch.tensor([1])}
    check_finite(good, 0.5)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):  # bfloat16: numpy has none
        bad = {"w": torch.ones(3), "x": torch.tensor([1.0, float("nan")], dtype=dtype)}
        with pytest.raises(NonFiniteError, match="x holds NaN or inf"):
            check_finite(bad)
    with pytest.raises(NonFiniteError, match="loss"):
        check_finite(good, float("inf"))
    param = torch.nn.Parameter(torch.tensor([float("inf")]))  # requires grad: detached for numpy
    with pytest.raises(NonFiniteError, match="p holds"):
        check_finite({"p": param})
