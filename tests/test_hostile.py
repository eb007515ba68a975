"""Hostile input: every bad flag, file and value is refused before training, in one line.

Each case runs through the CLI entry point (:func:`sfp_ray.cli.main`) and must give exit
code 2 and exactly one line on stderr, ``sfp-ray: error: ...``, naming the offending key,
flag or file, and no traceback. The configurations are tiny and run on the serial
executor, so a case that were wrongly accepted would cost one small round, never a Ray
start; no case leaves its ``--out`` folder behind. Settings that cap user input must say so
in a one-line notice instead. ``tests/test_first_hour.py`` times the commonest mistakes from
a fresh interpreter.
"""

from __future__ import annotations

import gzip
import pickle
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import as_sets, tiny

from sfp_ray.cli import main

TINY = tiny("train.batch_size=8")



def run_args(tmp: Path, *extra: str, base: list[str] = TINY) -> list[str]:
    """``sfp-ray run`` of the tiny serial configuration plus ``extra`` arguments."""
    return ["--quiet", "run", "--executor", "serial", *as_sets(base), *extra, "--out", str(tmp / "out")]


def ray_args(tmp: Path, *extra: str) -> list[str]:
    """``sfp-ray run`` of the tiny configuration on the Ray executor (refused before Ray starts)."""
    return ["--quiet", "run", "--executor", "ray", *as_sets(TINY), *extra, "--out", str(tmp / "out")]


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_set(tmp: Path, *items: str) -> list[str]:
    return run_args(tmp, *as_sets(list(items)))


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- files


def idx_images(n: int, size: int = 28, magic: int = 0x00000803) -> bytes:
    return struct.pack(">IIII", magic, n, size, size) + bytes(n * size * size)


def idx_labels(labels: list[int], magic: int = 0x00000801) -> bytes:
    return struct.pack(">II", magic, len(labels)) + bytes(labels)


class Raw(bytes):
    """Bytes written to a ``.gz`` file as they are (:func:`fmnist_root` compresses everything else)."""


def fmnist_root(tmp: Path, *, train_images: bytes | None = None, train_labels: bytes | None = None) -> Path:
    """A Fashion-MNIST data.root of 20 samples per split; the train files may be replaced by damaged ones."""
    root = tmp / "fmnist"
    good_img, good_lbl = idx_images(20), idx_labels([i % 10 for i in range(20)])
    files = {
        "train-images-idx3-ubyte": good_img if train_images is None else train_images,
        "train-labels-idx1-ubyte": good_lbl if train_labels is None else train_labels,
        "t10k-images-idx3-ubyte": good_img,
        "t10k-labels-idx1-ubyte": good_lbl,
    }
    for stem, data in files.items():
        write(root / f"{stem}.gz", bytes(data) if isinstance(data, Raw) else gzip.compress(data))
    return root


def fmnist(tmp: Path, **files: bytes) -> list[str]:
    root = fmnist_root(tmp, **files)
    base = [t for t in TINY if not t.startswith("data.name")]
    return run_args(tmp, *as_sets(["data.name=fashion-mnist", f"data.root={root}"]), base=base)


def catalog(tmp: Path, text: bytes | str) -> list[str]:
    return with_set(tmp, f"devices.catalog={write(tmp / 'devices.yaml', text)}")


GOOD_DEVICE = """\
devices:
  tiny:
    description: a test device
    num_cpus: 0.1
    num_gpus: 0
    memory_mb: 64
    peak_flops: 1.0e9
    efficiency: 0.5
    uplink_mbps: 10
    downlink_mbps: 10
    latency_ms: 5
"""


def checkpoint(tmp: Path, make: Callable[[Path], object]) -> list[str]:
    path = tmp / "ck.pt"
    make(path)
    return with_set(tmp, f"model.checkpoint={path}")


def other_model_state(path: Path) -> None:
    from sfp_ray.models import create_model

    m = create_model("vit_tiny_patch16_224", num_classes=3, img_size=16, patch_size=4, in_chans=1, depth=2,
                     embed_dim=64, num_heads=2)  # the configured model is 192 wide
    torch.save({"model": m.state_dict()}, path)


def truncated_checkpoint(path: Path) -> None:
    torch.save({"w": torch.zeros(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def config_file(tmp: Path, text: bytes | str) -> list[str]:
    return run_args(tmp, "--config", str(write(tmp / "cfg.yaml", text)))


def run_folder(tmp: Path, rounds_csv: str | None) -> list[str]:
    d = tmp / "run"
    d.mkdir()
    if rounds_csv is not None:
        write(d / "rounds.csv", rounds_csv)
        write(d / "costs.csv", "")
    return ["report", str(d), "--no-plots"]


# --------------------------------------------------------------------------- the corpus

#: ``id -> (args built in a temporary folder, text the one error line must contain)``.
CORPUS: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    # command-line flags
    "unknown-flag": (lambda t: run_args(t, "--bogus-flag"), "--bogus-flag"),
    "bad-executor": (lambda t: ["run", "--executor", "dask"], "--executor"),
    "seeds-not-integers": (lambda t: run_args(t, "--seeds", "a,b"), "--seeds"),
    "seeds-repeated": (lambda t: run_args(t, "--seeds", "1,1"), "--seeds"),
    "seeds-negative": (lambda t: run_args(t, "--seeds", "-1"), "seed"),
    "threads-zero": (lambda t: run_args(t, "--threads", "0"), "--threads"),
    "threads-not-integer": (lambda t: run_args(t, "--threads", "two"), "--threads"),
    "threads-with-ray": (lambda t: ["--quiet", "run", "--executor", "ray", "--threads", "2", *as_sets(TINY),
                                    "--out", str(t / "out")], "--threads"),
    "unknown-method": (lambda t: run_args(t, "--method", "fedprox"), "fedprox"),
    "empty-methods": (lambda t: ["compare", "--executor", "serial", "--methods", ","], "--methods"),
    "set-without-value": (lambda t: run_args(t, "--set", "federation.rounds"), "federation.rounds"),
    "set-empty-key": (lambda t: run_args(t, "--set", "=3"), "--set"),
    "set-a-section": (lambda t: with_set(t, "model=3"), "model"),
    "set-below-a-key": (lambda t: with_set(t, "federation.rounds.x=1"), "federation.rounds"),
    "report-not-a-folder": (lambda t: ["report", str(write(t / "f.txt", "x"))], "f.txt"),
    "report-empty-folder": (lambda t: run_folder(t, None), "rounds.csv"),
    "report-empty-rounds-csv": (lambda t: run_folder(t, ""), "rounds.csv"),
    "report-foreign-rounds-csv": (lambda t: run_folder(t, "a,b\n1,2\n"), "rounds.csv"),
    # YAML files
    "yaml-syntax-error": (lambda t: config_file(t, "federation: {rounds: 3\nmodel: [\n"), "cfg.yaml"),
    "yaml-not-a-mapping": (lambda t: config_file(t, "- federation\n- model\n"), "cfg.yaml"),
    "yaml-scalar": (lambda t: config_file(t, "42\n"), "cfg.yaml"),
    "yaml-unknown-section": (lambda t: config_file(t, "federaton:\n  rounds: 3\n"), "federaton.rounds"),
    "yaml-unknown-key": (lambda t: config_file(t, "federation:\n  roundz: 3\n"), "federation.roundz"),
    "yaml-section-not-a-mapping": (lambda t: config_file(t, "federation: 3\n"), "federation"),
    "yaml-wrong-type": (lambda t: config_file(t, "federation:\n  eval_every: three\n"), "federation.eval_every"),
    "yaml-list-for-a-number": (lambda t: config_file(t, "train:\n  lr: [1, 2]\n"), "train.lr"),
    "yaml-mapping-for-classes": (lambda t: config_file(t, "pretrain:\n  classes: {a: 1}\n"), "pretrain.classes"),
    "yaml-python-tag": (lambda t: config_file(t, "seed: !!python/object/apply:os.system ['true']\n"), "cfg.yaml"),
    "yaml-not-utf8": (lambda t: config_file(t, b"seed: \xff\xfe\x00\x81\n"), "cfg.yaml"),
    "yaml-is-a-folder": (lambda t: run_args(t, "--config", str(t)), "--config"),
    "yaml-missing": (lambda t: run_args(t, "--config", str(t / "nope.yaml")), "nope.yaml"),
    # configuration values
    "rounds-zero": (lambda t: with_set(t, "federation.rounds=0"), "federation.rounds"),
    "rounds-negative": (lambda t: with_set(t, "federation.rounds=-3"), "federation.rounds"),
    "rounds-fraction": (lambda t: with_set(t, "federation.rounds=1.5"), "federation.rounds"),
    "rounds-bool": (lambda t: with_set(t, "federation.rounds=true"), "federation.rounds"),
    "eval-every-zero": (lambda t: with_set(t, "federation.eval_every=0"), "federation.eval_every"),
    "clients-zero": (lambda t: with_set(t, "federation.num_clients=0"), "federation.num_clients"),
    "cohort-too-large": (lambda t: with_set(t, "federation.clients_per_round=5"), "federation.clients_per_round"),
    "more-clients-than-samples": (lambda t: with_set(t, "federation.num_clients=100000",
                                                      "federation.clients_per_round=1"), "federation.num_clients"),
    "lr-nan": (lambda t: with_set(t, "train.lr=nan"), "train.lr"),
    "lr-negative": (lambda t: with_set(t, "train.lr=-0.1"), "train.lr"),
    "lr-infinite": (lambda t: with_set(t, "train.lr=.inf"), "train.lr"),
    "weight-decay-nan": (lambda t: with_set(t, "train.weight_decay=nan"), "train.weight_decay"),
    "momentum-nan": (lambda t: with_set(t, "train.momentum=nan"), "train.momentum"),
    "momentum-negative": (lambda t: with_set(t, "train.optimizer=sgd", "train.momentum=-1"), "train.momentum"),
    "batch-size-zero": (lambda t: with_set(t, "train.batch_size=0"), "train.batch_size"),
    "eval-batch-negative": (lambda t: with_set(t, "train.eval_batch_size=-4"), "train.eval_batch_size"),
    "epochs-negative": (lambda t: with_set(t, "train.local_epochs=-1"), "train.local_epochs"),
    "optimizer-unknown": (lambda t: with_set(t, "train.optimizer=lbfgs"), "train.optimizer"),
    "keep-ratio-zero": (lambda t: with_set(t, "pruning.keep_ratio=0"), "pruning.keep_ratio"),
    "keep-ratio-nan": (lambda t: with_set(t, "pruning.keep_ratio=nan"), "pruning.keep_ratio"),
    "keep-ratio-above-one": (lambda t: with_set(t, "pruning.keep_ratio=1.5"), "pruning.keep_ratio"),
    "skip-top-one": (lambda t: with_set(t, "pruning.skip_top=1"), "pruning.skip_top"),
    "refresh-negative": (lambda t: with_set(t, "pruning.refresh_every=-1"), "pruning.refresh_every"),
    "cut-policy-unknown": (lambda t: with_set(t, "split.policy=dynamic"), "split.policy"),
    "min-blocks-negative": (lambda t: with_set(t, "split.min_blocks=-1"), "split.min_blocks"),
    "max-below-min-blocks": (lambda t: with_set(t, "split.min_blocks=2", "split.max_blocks=1"), "split.max_blocks"),
    "per-device-min-too-deep": (lambda t: with_set(t, "split.policy=per_device", "split.min_blocks=4"),
                                "split.min_blocks"),
    "deadline-zero": (lambda t: with_set(t, "federation.deadline_s=0"), "federation.deadline_s"),
    "deadline-nan": (lambda t: with_set(t, "federation.deadline_s=nan"), "federation.deadline_s"),
    "over-select-negative": (lambda t: with_set(t, "federation.over_select=-0.3"), "federation.over_select"),
    "over-select-inf": (lambda t: with_set(t, "federation.over_select=.inf"), "federation.over_select"),
    "alpha-zero": (lambda t: with_set(t, "data.alpha=0"), "data.alpha"),
    "alpha-nan": (lambda t: with_set(t, "data.alpha=nan"), "data.alpha"),
    "alpha-infinite": (lambda t: with_set(t, "data.alpha=inf"), "data.alpha"),
    "samples-zero": (lambda t: with_set(t, "data.samples_per_client=0"), "data.samples_per_client"),
    "test-samples-negative": (lambda t: with_set(t, "data.test_samples=-1"), "data.test_samples"),
    "classes-repeated": (lambda t: with_set(t, "data.classes=[0,0]"), "data.classes"),
    "classes-out-of-range": (lambda t: with_set(t, "data.classes=[0,99]"), "data.classes"),
    "classes-one": (lambda t: with_set(t, "data.classes=[3]"), "data.classes"),
    "dataset-unknown": (lambda t: with_set(t, "data.name=imagenet"), "data.name"),
    "partition-unknown": (lambda t: with_set(t, "data.partition=zipf"), "data.partition"),
    "head-blocks-negative": (lambda t: with_set(t, "split.head_blocks=-1"), "split.head_blocks"),
    "tail-beyond-depth": (lambda t: with_set(t, "split.tail_blocks=5"), "split.tail_blocks"),
    "cut-overlaps": (lambda t: with_set(t, "split.head_blocks=2", "split.tail_blocks=1"), "split.head_blocks"),
    "prompts-negative": (lambda t: with_set(t, "prompt.num_tokens=-1"), "prompt.num_tokens"),
    "img-size-zero": (lambda t: with_set(t, "model.img_size=0"), "model.img_size"),
    "patch-not-dividing": (lambda t: with_set(t, "model.patch_size=5"), "model.patch_size"),
    "in-chans-two": (lambda t: with_set(t, "model.in_chans=2"), "model.in_chans"),
    "depth-zero": (lambda t: with_set(t, "model.depth=0"), "model.depth"),
    "embed-dim-negative": (lambda t: with_set(t, "model.embed_dim=-8"), "model.embed_dim"),
    "heads-zero": (lambda t: with_set(t, "model.num_heads=0"), "model.num_heads"),
    "heads-not-dividing": (lambda t: with_set(t, "model.embed_dim=10", "model.num_heads=3"), "model.num_heads"),
    "pool-unknown": (lambda t: with_set(t, "model.global_pool=median"), "model.global_pool"),
    "model-resnet": (lambda t: with_set(t, "model.name=resnet50"), "model.name"),
    "model-not-in-timm": (lambda t: with_set(t, "model.name=vit_imaginary_patch3_17"), "model.name"),
    "model-empty-name": (lambda t: with_set(t, "model.name="), "model.name"),
    "seed-negative": (lambda t: with_set(t, "seed=-1"), "seed"),
    "pretrain-seed-negative": (lambda t: with_set(t, "pretrain.seed=-5"), "pretrain.seed"),
    "max-actors-zero": (lambda t: with_set(t, "ray.max_actors=0"), "ray.max_actors"),
    "ray-cpus-nan": (lambda t: with_set(t, "ray.num_cpus=nan"), "ray.num_cpus"),
    "node-loss-unknown": (lambda t: with_set(t, "ray.on_node_loss=ignore"), "ray.on_node_loss"),
    "placement-timeout-zero": (lambda t: with_set(t, "ray.placement_timeout_s=0"), "ray.placement_timeout_s"),
    "mix-unknown-device": (lambda t: with_set(t, "devices.mix={toaster: 1}"), "devices.mix"),
    "mix-negative": (lambda t: with_set(t, "devices.mix={rpi4: -1}"), "devices.mix"),
    "mix-empty": (lambda t: with_set(t, "devices.mix={}"), "devices.mix"),
    "mix-not-a-mapping": (lambda t: with_set(t, "devices.mix=5"), "devices.mix"),
    "server-unknown-device": (lambda t: with_set(t, "devices.server=mainframe"), "devices.server"),
    # device catalogues
    "catalog-bad-yaml": (lambda t: catalog(t, "devices: {tiny: [\n"), "devices.yaml"),
    "catalog-not-a-mapping": (lambda t: catalog(t, "- tiny\n"), "devices.yaml"),
    "catalog-devices-a-list": (lambda t: catalog(t, "devices: [tiny]\n"), "devices.yaml"),
    "catalog-missing-field": (lambda t: catalog(t, GOOD_DEVICE.replace("    peak_flops: 1.0e9\n", "")),
                              "peak_flops"),
    "catalog-negative-cpus": (lambda t: catalog(t, GOOD_DEVICE.replace("num_cpus: 0.1", "num_cpus: -2")),
                              "num_cpus"),
    "catalog-nan-flops": (lambda t: catalog(t, GOOD_DEVICE.replace("peak_flops: 1.0e9", "peak_flops: .nan")),
                          "peak_flops"),
    "catalog-zero-efficiency": (lambda t: catalog(t, GOOD_DEVICE.replace("efficiency: 0.5", "efficiency: 0")),
                                "efficiency"),
    "catalog-unknown-field": (lambda t: catalog(t, GOOD_DEVICE + "    colour: red\n"), "colour"),
    "catalog-availability-above-one": (lambda t: catalog(t, GOOD_DEVICE + "    availability: 1.5\n"), "availability"),
    "catalog-dropout-nan": (lambda t: catalog(t, GOOD_DEVICE + "    dropout: .nan\n"), "dropout"),
    "catalog-availability-text": (lambda t: catalog(t, GOOD_DEVICE + "    availability: often\n"), "availability"),
    "catalog-not-utf8": (lambda t: catalog(t, b"devices:\n  \xff\xfe: 1\n"), "devices.yaml"),
    "catalog-missing": (lambda t: with_set(t, f"devices.catalog={t / 'none.yaml'}"), "none.yaml"),
    "catalog-throughput-zero": (lambda t: catalog(t, GOOD_DEVICE + "    throughput: {flops_per_s: 0}\n"),
                                "flops_per_s"),
    "catalog-throughput-a-number": (lambda t: catalog(t, GOOD_DEVICE + "    throughput: 5\n"), "throughput"),
    "catalog-spread-huge": (lambda t: catalog(t, GOOD_DEVICE + "    speed_spread: 50\n"), "speed_spread"),
    # capacity traces, server link
    "capacity-trace-missing": (lambda t: with_set(t, f"devices.capacity_trace={t / 'cap.pkl'}"), "cap.pkl"),
    "capacity-trace-code": (lambda t: with_set(t, "devices.capacity_trace="
                                               + str(write(t / "cap.pkl", pickle.dumps({1: Path("x")})))), "cap.pkl"),
    "capacity-trace-no-bandwidth": (lambda t: with_set(t, "devices.capacity_trace="
                                                       + str(write(t / "cap.yaml", "{1: {computation: 5}}"))),
                                    "cap.yaml"),
    "capacity-sample-flops-negative": (lambda t: with_set(t, "devices.capacity_sample_flops=-1"),
                                       "devices.capacity_sample_flops"),
    "capacity-map-unknown": (lambda t: with_set(t, "devices.capacity_map=round_robin"), "devices.capacity_map"),
    "server-link-unknown": (lambda t: with_set(t, "devices.server_link=tdma"), "devices.server_link"),
    "calibrate-cpu-timer-threads": (lambda t: ["devices", "calibrate", "--timer", "cpu", "--threads", "4"],
                                    "--timer"),
    "calibrate-out-folder": (lambda t: ["devices", "calibrate", "--out", str(t)], "--out"),
    # checkpoints
    "checkpoint-truncated": (lambda t: checkpoint(t, truncated_checkpoint), "ck.pt"),
    "checkpoint-wrong-shapes": (lambda t: checkpoint(t, other_model_state), "ck.pt"),
    "checkpoint-not-a-state-dict": (lambda t: checkpoint(t, lambda p: torch.save([1, 2, 3], p)), "ck.pt"),
    "checkpoint-empty-dict": (lambda t: checkpoint(t, lambda p: torch.save({}, p)), "ck.pt"),
    "checkpoint-empty-file": (lambda t: checkpoint(t, lambda p: p.write_bytes(b"")), "ck.pt"),
    "checkpoint-text": (lambda t: checkpoint(t, lambda p: p.write_text("not a checkpoint\n")), "ck.pt"),
    "checkpoint-folder": (lambda t: with_set(t, f"model.checkpoint={t}"), "model.checkpoint"),
    "checkpoint-missing": (lambda t: with_set(t, f"model.checkpoint={t / 'gone.pt'}"), "gone.pt"),
    # data files (Fashion-MNIST idx files in data.root)
    "idx-truncated-gzip": (lambda t: fmnist(t, train_images=Raw(gzip.compress(idx_images(20))[:-30])),
                           "train-images"),
    "idx-wrong-magic": (lambda t: fmnist(t, train_images=idx_images(20, magic=0x00000802)), "train-images"),
    "idx-files-swapped": (lambda t: fmnist(t, train_images=idx_labels([0] * 20)), "train-images"),
    "idx-counts-disagree": (lambda t: fmnist(t, train_labels=idx_labels([1] * 19)), "train-labels"),
    "idx-empty": (lambda t: fmnist(t, train_labels=Raw(b"")), "train-labels"),
    "idx-not-gzip": (lambda t: fmnist(t, train_labels=Raw(b"plain text, not gzip")), "train-labels"),
    "idx-not-28x28": (lambda t: fmnist(t, train_images=idx_images(20, size=27)), "train-images"),
    "idx-labels-out-of-range": (lambda t: fmnist(t, train_labels=idx_labels([12] * 20)), "train-labels"),
    "idx-trailing-bytes": (lambda t: fmnist(t, train_labels=idx_labels([1] * 20) + b"xx"), "train-labels"),
    # caught before anything starts (issue 25): the catalogues, the cut against model.depth, the Ray address
    "dataset-mnist": (lambda t: with_set(t, "data.name=mnist"), "data.name: unknown dataset 'mnist'"),
    "cut-beyond-a-3-block-model": (lambda t: with_set(t, "model.depth=3", "split.head_blocks=5"),
                                   "split.head_blocks: 5 is beyond the model's depth (3 blocks)"),
    "mix-class-without-catalog": (lambda t: with_set(t, "devices.mix={tablet: 1.0}"), "'tablet'"),
    "address-not-answering": (lambda t: ray_args(t, "--address", f"127.0.0.1:{closed_port()}"), "127.0.0.1:"),
    "address-malformed": (lambda t: ray_args(t, "--address", "headnode"), "--address 'headnode'"),
    "sweep-address-not-answering": (lambda t: ["sweep", "--grid", "train.batch_size=4,8", *as_sets(TINY), "--address",
                                               f"127.0.0.1:{closed_port()}", "--out", str(t / "out")], "127.0.0.1:"),
    "yaml-tab": (lambda t: config_file(t, "federation:\n\trounds: 3\n"), "line 2, column 1: a tab character"),
    "catalog-tab": (lambda t: catalog(t, GOOD_DEVICE.replace("    latency_ms: 5\n", "\tlatency_ms: 5\n")),
                    "a tab character"),
    "catalog-every-problem-at-once": (lambda t: catalog(t, GOOD_DEVICE.replace("    description: a test device\n", "")
                                                        .replace("    num_gpus: 0\n", "")),
                                      "missing fields 'description', 'num_gpus'"),
    "run-with-methods": (lambda t: run_args(t, "--methods", "sfprompt,fl_full"), "--method NAME"),
    "project-unknown-dataset": (lambda t: ["project", *as_sets(TINY), "--set", "data.name=mnist", "--out",
                                           str(t / "out")], "data.name"),
    # output folders
    "out-is-a-file": (lambda t: [*run_args(t)[:-1], str(write(t / "taken", "x"))], "--out"),
    "out-under-a-file": (lambda t: [*run_args(t)[:-1], str(write(t / "taken", "x") / "sub")], "--out"),
    "project-out-is-a-file": (lambda t: ["project", *as_sets(TINY), "--out", str(write(t / "taken", "x"))], "--out"),
    "pretrain-out-under-a-file": (lambda t: ["--quiet", "pretrain", *as_sets(TINY),
                                             "--out", str(write(t / "taken", "x") / "ck.pt")], "--out"),
}


@pytest.mark.parametrize("case", list(CORPUS))
def test_hostile_input_is_refused_in_one_line(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SFP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # nothing may land in the working tree (runs/, .cache/)
    build, key = CORPUS[case]
    args = build(tmp_path)
    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("sfp-ray: error: "), lines[0]
    assert key in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # refused before training, and before the folder was made


def test_the_corpus_is_large():
    assert len(CORPUS) >= 30


@pytest.mark.slow  # a run on every sample of the dataset
def test_a_cap_on_user_input_is_a_one_line_notice(tmp_path, capsys):
    rc = main(with_set(tmp_path, "data.samples_per_client=100000"))
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err
    notices = [line for line in err.splitlines() if "data.samples_per_client" in line]
    assert len(notices) == 1 and notices[0].startswith("sfp-ray: notice: "), err
    assert "100000" in notices[0] and "largest" in notices[0]


def test_pretraining_on_fewer_samples_than_asked_is_a_notice(tmp_path, capsys):
    small = [t for t in TINY if not t.startswith("model.checkpoint")] + [
        "pretrain.dataset=synthetic", "pretrain.classes=[0,1]", "pretrain.max_samples=100000", "pretrain.epochs=1"]
    rc = main(["--quiet", "pretrain", *as_sets(small), "--out", str(tmp_path / "ck.pt")])
    err = capsys.readouterr().err
    assert rc == 0 and (tmp_path / "ck.pt").is_file()
    notices = [line for line in err.splitlines() if "pretrain.max_samples" in line]
    assert len(notices) == 1 and notices[0].startswith("sfp-ray: notice: ") and "100000" in notices[0], err


@pytest.mark.slow  # the CLI in a subprocess
def test_debug_shows_the_traceback():
    out = subprocess.run([sys.executable, "-m", "sfp_ray", "--debug", "run", "--executor", "serial", "--set",
                          "federation.rounds=0"], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "Traceback" in out.stderr and "federation.rounds" in out.stderr
