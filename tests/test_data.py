"""Tests for the sfp_ray.data package: partitions, loaders, adaptation, damaged files, layering."""

from __future__ import annotations

import ast
import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sfp_ray.data import (
    ArrayDataset,
    catalog,
    core,
    dataset_search_path,
    label_skew,
    list_datasets,
    load_dataset,
    partition,
    paths,
    register_dataset,
    registry,
    sources,
)
from sfp_ray.errors import ConfigError, DataError

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")
SCHEMES = ("iid", "dirichlet", "shards")


# ----------------------------------------------------------------------------- helpers


def _labels(n: int = 5000, num_classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, size=n)


def _assert_disjoint_complete(parts: list[np.ndarray], n: int) -> None:
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0), "each part must be sorted and duplicate-free"
    allidx = np.concatenate(parts)
    assert allidx.shape[0] == n
    assert np.array_equal(np.sort(allidx), np.arange(n))


def _write_idx(path: Path, arr: np.ndarray, magic: int, compress: bool = True) -> None:
    header = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def _write_fmnist(directory: Path, n_train: int = 30, n_test: int = 20, compress: bool = True) -> dict:
    """Writes tiny Fashion-MNIST idx files; pixel value of each image encodes its label."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = np.repeat((labels * 20)[:, None, None], 28 * 28, axis=1).reshape(n, 28, 28)
        _write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, 0x803, compress)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, 0x801, compress)
        out[prefix] = (images, labels)
    return out


@pytest.fixture
def no_default_dirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Points the default Fashion-MNIST dirs at empty places and clears $SFP_DATA_ROOT."""
    empty = tmp_path / "nowhere"
    monkeypatch.setattr(paths, "DEFAULT_SEARCH_DIRS", (empty / "a", empty / "b"))
    monkeypatch.delenv("SFP_DATA_ROOT", raising=False)
    return empty


# ----------------------------------------------------------------------------- partition


@pytest.mark.parametrize("scheme", SCHEMES)
def test_partition_disjoint_complete_deterministic(scheme: str) -> None:
    y = _labels(2000)
    a = partition(y, 13, scheme, seed=1)
    b = partition(y, 13, scheme, seed=1)
    c = partition(y, 13, scheme, seed=2)
    assert len(a) == 13
    _assert_disjoint_complete(a, len(y))
    _assert_disjoint_complete(c, len(y))
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_partition_accepts_tensor_labels(scheme: str) -> None:
    y = _labels(500)
    from_np = partition(y, 4, scheme, seed=3)
    from_t = partition(torch.from_numpy(y), 4, scheme, seed=3)
    assert all(np.array_equal(p, q) for p, q in zip(from_np, from_t))


def test_iid_near_equal_sizes() -> None:
    parts = partition(_labels(1003), 10, "iid")
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_shards_give_few_labels_per_client() -> None:
    y = np.repeat(np.arange(10), 100)
    parts = partition(y, 10, "shards", shards_per_client=2, seed=0)
    _assert_disjoint_complete(parts, len(y))
    for p in parts:
        assert len(p) == 100
        assert len(np.unique(y[p])) <= 2


def test_dirichlet_skew_grows_as_alpha_falls() -> None:
    y = _labels(5000)
    skew = {
        a: label_skew(partition(y, 20, "dirichlet", alpha=a, seed=0, min_samples=0), y, 10)
        for a in (0.1, 1.0, 100.0)
    }
    assert skew[0.1] > skew[1.0] > skew[100.0]
    assert skew[100.0] < 0.1
    assert label_skew(partition(y, 20, "iid"), y, 10) < 0.15


def test_label_skew_extremes() -> None:
    y = np.array([0, 0, 1, 1])
    assert label_skew([np.array([0, 2]), np.array([1, 3])], y, 2) == pytest.approx(0.0)
    assert label_skew([np.array([0, 1]), np.array([2, 3])], y, 2) == pytest.approx(0.5)
    assert label_skew([np.array([], dtype=np.int64), np.array([0, 2])], y, 2) == pytest.approx(0.0)


def test_min_samples_repair() -> None:
    y = _labels(5000)
    raw = partition(y, 50, "dirichlet", alpha=0.05, seed=4, min_samples=0)
    assert min(len(p) for p in raw) < 20, "test needs a partition that requires repair"
    fixed = partition(y, 50, "dirichlet", alpha=0.05, seed=4, min_samples=20)
    _assert_disjoint_complete(fixed, len(y))
    assert min(len(p) for p in fixed) >= 20
    again = partition(y, 50, "dirichlet", alpha=0.05, seed=4, min_samples=20)
    assert all(np.array_equal(p, q) for p, q in zip(fixed, again))


def test_min_samples_repair_shards_with_empty_shards() -> None:
    y = _labels(15)
    parts = partition(y, 10, "shards", shards_per_client=3, seed=0, min_samples=1)
    _assert_disjoint_complete(parts, 15)
    assert min(len(p) for p in parts) >= 1


def test_min_samples_impossible() -> None:
    with pytest.raises(ConfigError, match="federation.num_clients") as exc:
        partition(_labels(30), 10, "iid", min_samples=4)
    assert "40" in str(exc.value) and "30" in str(exc.value)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_clients": 0}, "federation.num_clients"),
        ({"num_clients": 3, "alpha": 0.0, "scheme": "dirichlet"}, "data.alpha"),
        ({"num_clients": 3, "alpha": -1.0}, "data.alpha"),
        ({"num_clients": 3, "scheme": "pathological"}, "data.partition"),
    ],
)
def test_partition_validation(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key) as exc:
        partition(_labels(100), **kwargs)
    if key == "data.partition":
        assert "dirichlet" in str(exc.value) and "shards" in str(exc.value)


# ----------------------------------------------------------------------------- fashion-mnist


def test_fashion_mnist_via_root(tmp_path: Path, no_default_dirs: Path) -> None:
    written = _write_fmnist(tmp_path / "fm")
    ds = load_dataset("fashion-mnist", root=str(tmp_path / "fm"))
    assert isinstance(ds, ArrayDataset)
    assert len(ds) == 30 and ds.images.shape == (30, 1, 28, 28)
    assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
    assert ds.num_classes == 10 and ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    images, labels = written["train"]
    assert np.array_equal(ds.labels.numpy(), labels.astype(np.int64))
    expected = (torch.from_numpy(images.astype(np.float32)) / 255 - 0.5) / 0.5
    assert torch.allclose(ds.images[:, 0], expected)
    test = load_dataset("fashion-mnist", root=str(tmp_path / "fm"), train=False)
    assert len(test) == 20


def test_fashion_mnist_layouts_and_env(tmp_path: Path, no_default_dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # torchvision layout under root, uncompressed files
    _write_fmnist(tmp_path / "tv" / "FashionMNIST" / "raw", n_train=12, compress=False)
    assert len(load_dataset("fashion-mnist", root=str(tmp_path / "tv"))) == 12
    # root/fashion-mnist via $SFP_DATA_ROOT
    _write_fmnist(tmp_path / "env" / "fashion-mnist", n_train=14)
    monkeypatch.setenv("SFP_DATA_ROOT", str(tmp_path / "env"))
    assert len(load_dataset("fashion-mnist")) == 14
    # an explicit root comes before $SFP_DATA_ROOT
    assert len(load_dataset("fashion-mnist", root=str(tmp_path / "tv"))) == 12


def test_fashion_mnist_search_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFP_DATA_ROOT", str(tmp_path / "env"))
    paths = dataset_search_path("fashion-mnist", str(tmp_path / "r"))
    assert paths[:6] == [
        tmp_path / "r",
        tmp_path / "r" / "fashion-mnist",
        tmp_path / "r" / "FashionMNIST" / "raw",
        tmp_path / "env",
        tmp_path / "env" / "fashion-mnist",
        tmp_path / "env" / "FashionMNIST" / "raw",
    ]
    assert paths[6:] == [Path("data/fashion-mnist"), Path("/usr/share/datasets/fashion-mnist")]


def test_fashion_mnist_classes_subset(tmp_path: Path, no_default_dirs: Path) -> None:
    _write_fmnist(tmp_path, n_train=40)
    ds = load_dataset("fashion-mnist", root=str(tmp_path), classes=[7, 5])
    assert ds.num_classes == 2 and len(ds) == 8
    assert set(ds.labels.tolist()) == {0, 1}
    assert ds.class_names == ("Sneaker", "Sandal")
    # pixel value encodes the original label: 7 -> 140, 5 -> 100
    raw = torch.round((ds.images[:, 0, 0, 0] * 0.5 + 0.5) * 255).long()
    assert torch.equal(raw[ds.labels == 0], torch.full(((ds.labels == 0).sum(),), 140))
    assert torch.equal(raw[ds.labels == 1], torch.full(((ds.labels == 1).sum(),), 100))
    with pytest.raises(ConfigError, match="data.classes"):
        load_dataset("fashion-mnist", root=str(tmp_path), classes=[3, 12])


def test_fashion_mnist_bad_magic(tmp_path: Path, no_default_dirs: Path) -> None:
    _write_fmnist(tmp_path)
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    _write_idx(bad, np.zeros(30, dtype=np.uint8), 0x803)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        load_dataset("fashion-mnist", root=str(tmp_path))


def test_fashion_mnist_truncated(tmp_path: Path, no_default_dirs: Path) -> None:
    _write_fmnist(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        load_dataset("fashion-mnist", root=str(tmp_path))


IMAGES_GZ = "train-images-idx3-ubyte.gz"
LABELS_GZ = "train-labels-idx1-ubyte.gz"


def _cut_gzip(path: Path) -> None:
    """Cuts a gzip file in half: the stream ends before its end marker."""
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _regzip(path: Path, change) -> None:
    """Rewrites a .gz file as valid gzip of ``change(decompressed bytes)``."""
    path.write_bytes(gzip.compress(change(gzip.decompress(path.read_bytes()))))


def _flip_crc(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF  # first byte of the CRC32 in the gzip trailer
    path.write_bytes(bytes(raw))


def _header(magic: int, *dims: int) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims)


# (id, file damaged, damage, what the message must say after the file's path)
HOSTILE_FILES = [
    ("truncated-gzip", IMAGES_GZ, _cut_gzip, r" is truncated: the gzip stream ends early"),
    ("truncated-payload", IMAGES_GZ, lambda p: _regzip(p, lambda b: b[:-100]),
     r" is truncated: dims \(30, 28, 28\) need 23536 bytes, got 23436 after decompression"),
    ("header-only", LABELS_GZ, lambda p: _regzip(p, lambda b: b[:6]),
     r" is truncated: header needs 8 bytes, got 6 after decompression"),
    ("wrong-magic-swapped", LABELS_GZ, lambda p: _regzip(p, lambda b: _header(0x803) + b[4:]),
     r" has bad magic number 0x00000803 \(expected 0x00000801\); it is an images file"),
    ("wrong-magic-garbage", IMAGES_GZ, lambda p: _regzip(p, lambda b: b"\x12\x34\x56\x78" + b[4:]),
     r" has bad magic number 0x12345678 \(expected 0x00000803\); the file is corrupt or not an idx file"),
    ("not-gzip", LABELS_GZ, lambda p: p.write_bytes(gzip.decompress(p.read_bytes())),
     r" has a \.gz name but is not gzip-compressed"),
    ("empty-file", IMAGES_GZ, lambda p: p.write_bytes(b""), r" is empty \(0 bytes\)"),
    ("empty-gzip-stream", LABELS_GZ, lambda p: p.write_bytes(gzip.compress(b"")),
     r" is truncated: 0 byte\(s\) after decompression"),
    ("bad-crc", LABELS_GZ, _flip_crc, r" is corrupt: its gzip data cannot be decompressed \(CRC check failed"),
    ("trailing-bytes", LABELS_GZ, lambda p: _regzip(p, lambda b: b + b"xx"),
     r" has 2 unexpected trailing bytes: dims \(30,\) need 38 bytes, got 40 after decompression"),
    ("absurd-dims", IMAGES_GZ, lambda p: _regzip(p, lambda b: _header(0x803, 2**31, 2**31, 4) + b[16:]),
     r" is truncated: dims \(2147483648, 2147483648, 4\) need 18446744073709551632 bytes"),
    ("impossible-dims", IMAGES_GZ, lambda p: p.write_bytes(gzip.compress(_header(0x803, 0, 2**32 - 1, 2**32 - 1))),
     r" declares dims \(0, 4294967295, 4294967295\), which cannot form an array"),
    ("wrong-image-size", IMAGES_GZ, lambda p: _write_idx(p, np.zeros((30, 10, 10), dtype=np.uint8), 0x803),
     r" are 10x10; expected 28x28"),
    ("count-mismatch", IMAGES_GZ, lambda p: _write_idx(p, np.zeros((29, 28, 28), dtype=np.uint8), 0x803),
     r" has 29 images but .*train-labels-idx1-ubyte\.gz has 30 labels"),
    ("label-out-of-range", LABELS_GZ, lambda p: _write_idx(p, np.full(30, 12, dtype=np.uint8), 0x801),
     r" go up to 12; expected 0\.\.9"),
]


@pytest.mark.parametrize(("fname", "damage", "fault"), [c[1:] for c in HOSTILE_FILES],
                         ids=[c[0] for c in HOSTILE_FILES])
def test_fashion_mnist_hostile_files(tmp_path: Path, no_default_dirs: Path, fname: str, damage, fault: str) -> None:
    """A damaged file gives a one-line DataError naming the file and the fault."""
    _write_fmnist(tmp_path)
    damage(tmp_path / fname)
    with pytest.raises(DataError, match=re.escape(str(tmp_path / fname)) + fault) as exc:
        load_dataset("fashion-mnist", root=str(tmp_path))
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(("fname", "fault"), [
    ("train-labels-idx1-ubyte", r" is empty \(0 bytes\)"),
    ("train-images-idx3-ubyte", r" has bad magic number 0x1f8b0800 .*looks gzip-compressed; give it a \.gz suffix"),
])
def test_fashion_mnist_hostile_plain_files(tmp_path: Path, no_default_dirs: Path, fname: str, fault: str) -> None:
    _write_fmnist(tmp_path, compress=False)
    path = tmp_path / fname
    path.write_bytes(gzip.compress(path.read_bytes()) if "magic" in fault else b"")
    with pytest.raises(DataError, match=re.escape(str(path)) + fault):
        load_dataset("fashion-mnist", root=str(tmp_path))


def test_fashion_mnist_missing(tmp_path: Path, no_default_dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="dataset-fashion-mnist") as exc:
        load_dataset("fashion-mnist", root=str(empty))
    assert str(empty) in str(exc.value) and "download=True" in str(exc.value)
    monkeypatch.setenv("SFP_DATA_ROOT", str(empty))
    with pytest.raises(DataError, match="dataset-fashion-mnist") as exc:
        load_dataset("fashion-mnist")
    assert str(empty) in str(exc.value)


@pytest.mark.skipif(not (REAL_FMNIST / "t10k-labels-idx1-ubyte.gz").exists()
                    and not (REAL_FMNIST / "t10k-labels-idx1-ubyte").exists(),
                    reason=f"real Fashion-MNIST files not installed at {REAL_FMNIST}")
def test_fashion_mnist_real_test_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SFP_DATA_ROOT", raising=False)
    ds = load_dataset("fashion-mnist", train=False, root=str(REAL_FMNIST))
    assert len(ds) == 10000 and ds.images.shape == (10000, 1, 28, 28)
    assert ds.num_classes == 10
    assert torch.equal(torch.unique(ds.labels), torch.arange(10))
    assert float(ds.images.min()) >= -1.0 and float(ds.images.max()) <= 1.0


# ----------------------------------------------------------------------------- other datasets


def test_digits_split_and_adaptation() -> None:
    tr = load_dataset("digits", train=True)
    te = load_dataset("digits", train=False)
    assert len(tr) + len(te) == 1797
    assert len(te) == 359
    assert tr.images.shape[1:] == (1, 8, 8) and tr.num_classes == 10
    assert float(tr.images.min()) >= -1.0 and float(tr.images.max()) <= 1.0
    assert float(tr.images.max()) == pytest.approx(1.0)
    # split does not depend on the seed
    assert torch.equal(load_dataset("digits", train=False, seed=5).labels, te.labels)
    big = load_dataset("digits", train=False, img_size=28, in_chans=3)
    assert big.images.shape == (359, 3, 28, 28)
    assert torch.equal(big.images[:, 0], big.images[:, 2])


def test_channel_reduce_and_max_samples() -> None:
    rgb = load_dataset("digits", in_chans=3)
    grey = ArrayDataset(rgb.images, rgb.labels, 10, "x")
    back = core.convert_channels(grey.images, 1, "x")
    assert back.shape[1] == 1
    ds = load_dataset("synthetic", max_samples=300, seed=2)
    assert len(ds) == 300
    counts = torch.bincount(ds.labels, minlength=10)
    assert int(counts.min()) >= 25 and int(counts.max()) <= 35
    assert torch.equal(ds.labels, load_dataset("synthetic", max_samples=300, seed=2).labels)


def test_invalid_in_chans() -> None:
    with pytest.raises(ConfigError, match="model.in_chans"):
        load_dataset("digits", in_chans=2)


def test_synthetic_deterministic() -> None:
    a = load_dataset("synthetic", seed=3)
    b = load_dataset("synthetic", seed=3)
    c = load_dataset("synthetic", seed=4)
    assert a.images.shape == (2000, 1, 28, 28) and a.num_classes == 10
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    test = load_dataset("synthetic", seed=3, train=False)
    assert len(test) == 500
    # learnable: nearest class mean from train classifies test well
    means = torch.stack([a.images[a.labels == k].mean(0).flatten() for k in range(10)])
    pred = torch.cdist(test.images.flatten(1), means).argmin(1)
    assert float((pred == test.labels).float().mean()) > 0.9


def test_subset() -> None:
    ds = load_dataset("synthetic")
    sub = ds.subset(np.array([5, 1, 9]))
    assert len(sub) == 3 and torch.equal(sub.labels, ds.labels[[5, 1, 9]])
    assert torch.equal(ds.subset(torch.tensor([2, 3])).images, ds.images[2:4])
    assert len(ds.subset([])) == 0
    assert sub.num_classes == ds.num_classes and sub.class_names == ds.class_names


def test_cifar10_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", root=str(tmp_path))
    assert str(tmp_path / "cifar-10-batches-py") in str(exc.value)
    assert "download" in str(exc.value)


def test_unknown_dataset() -> None:
    with pytest.raises(ConfigError, match="data.name") as exc:
        load_dataset("imagenet-22k")
    msg = str(exc.value)
    assert "imagenet-22k" in msg
    for name in ("fashion-mnist", "digits", "synthetic", "cifar10"):
        assert name in msg


def test_register_dataset() -> None:
    @register_dataset("tiny-test-ds", num_classes=3, description="four blank images")
    def _tiny(root: str | None, train: bool, seed: int) -> ArrayDataset:
        return ArrayDataset(torch.zeros(4, 1, 4, 4), torch.tensor([0, 1, 2, 1]), 3, "tiny-test-ds")

    try:
        assert "tiny-test-ds" in list_datasets()
        assert catalog.dataset_info("Tiny_Test_DS") == catalog.DatasetInfo("tiny-test-ds", 3, "four blank images")
        ds = load_dataset("tiny-test-ds", classes=[1], img_size=6)
        assert ds.images.shape == (2, 1, 6, 6) and ds.labels.tolist() == [0, 0]
    finally:
        registry._REGISTRY.pop("tiny-test-ds", None)
        catalog._INFO.pop("tiny-test-ds", None)


# ----------------------------------------------------------------------------- layering


def test_data_package_is_a_lower_layer() -> None:
    """Every import in sfp_ray/data (module level or inside functions) stays below the
    simulator: no Ray, and of sfp_ray only the errors and config modules.
    """
    allowed = {"sfp_ray.errors", "sfp_ray.config", "sfp_ray.lazy"}
    package_dir = Path(sources.__file__).parent
    files = sorted(package_dir.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "core.py", "sources.py", "partitioning.py"}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else ["sfp_ray.data"]
            else:
                continue
            for name in names:
                where = f"{f.name}:{node.lineno} imports {name}"
                assert name.split(".")[0] != "ray", where
                if name == "sfp_ray" or name.startswith("sfp_ray."):
                    assert name in allowed or name == "sfp_ray.data" or name.startswith("sfp_ray.data."), where


def test_package_reexports_resolve() -> None:
    import sfp_ray
    import sfp_ray.data as pkg

    for name in pkg.__all__:
        assert getattr(pkg, name) is not None, name
    assert sfp_ray.load_dataset is load_dataset and sfp_ray.partition is partition
    assert sfp_ray.list_datasets is list_datasets
    assert pkg.ArrayDataset is core.ArrayDataset and pkg.load_dataset is sources.load_dataset


def test_a_run_adapts_only_the_samples_its_clients_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare_run resizes the images some client holds, not the whole split, and each client
    gets the same images, bit for bit and in the same order, as from the whole split adapted.
    """
    from sfp_ray import preparation
    from sfp_ray.config import load_config

    overrides = ["data.name=synthetic", "data.classes=null", "model.checkpoint=none", "model.img_size=24",
                 "model.patch_size=8", "model.in_chans=3", "model.depth=2", "federation.num_clients=3",
                 "federation.clients_per_round=3", "data.samples_per_client=5", "data.test_samples=16"]
    spec = preparation.prepare_run(load_config(overrides=overrides), "sfprompt")
    assert len(spec.train) == 15 and tuple(spec.train.images.shape[1:]) == (3, 24, 24)
    assert sorted(np.concatenate(spec.client_indices).tolist()) == list(range(15))
    monkeypatch.setattr(preparation, "_held", lambda train, parts: (train, list(parts)))  # the whole split
    whole = preparation.prepare_run(load_config(overrides=overrides), "sfprompt")
    assert len(whole.train) == 2000 and tuple(whole.train.images.shape[1:]) == (3, 24, 24)
    for mine, theirs in zip(spec.client_indices, whole.client_indices, strict=True):
        assert torch.equal(spec.train.images[torch.as_tensor(mine)], whole.train.images[torch.as_tensor(theirs)])
        assert torch.equal(spec.train.labels[torch.as_tensor(mine)], whole.train.labels[torch.as_tensor(theirs)])
