"""FedAvg full fine-tuning of a small ViT in Flower's Ray simulation: the peer of ``sfp-ray --method fl_full``.

Runs in the separate Flower virtual environment (``.venv-flower``: torch, timm and
``flwr[simulation]==1.41.0``, which pins its own Ray); it imports nothing from ``sfp_ray``.

The work comes from a *work file* (``--work``, an ``.npz``) that ``compare_flower.py`` writes
with sfp-ray's own code from the very configuration it passes to ``sfp-ray run``:

* ``spec``: the settings (model, optimiser, batch size, epochs, rounds, clients, seed, ...);
* ``indices``/``offsets``: each client's training samples, as positions in the Fashion-MNIST
  training set restricted to ``spec.classes`` (original file order, labels remapped to
  ``0..k-1`` in the order of ``spec.classes``) - exactly ``RunSpec.client_indices`` of
  ``sfp_ray.preparation.prepare_run``, i.e. the ``iid`` partition plus the
  ``data.samples_per_client`` cap, so no partition code is re-implemented here;
* ``seeds``: the shuffling seed of client ``c`` in round ``r`` (sfp-ray's
  ``derive_seed(seed, r, c)``), used the same way (``torch.randperm`` with a seeded generator);
* checks: each client's labels, the float64 sums of each client's normalised images and of
  the test images, and the float64 sum / sum of squares of sfp-ray's initial weights. This
  script reads the idx files itself (its own reader below), builds the model itself with
  ``timm.create_model`` and loads sfp-ray's initial weights from the work file (``init/*``).
  ``--check`` compares every client's data and the initial weights with those checks and exits
  (``compare_flower.py`` runs it once, untimed, before the timed runs); a timed run checks the
  test split and the initial weights, which it loads and builds anyway. So the two frameworks
  train the same model from the same weights on the same samples in the same order.

Flower side: a ``ServerApp`` running the Message-API ``FedAvg`` strategy (every client in every
round, weighted by ``num-examples``, no client-side evaluation) and a ``ClientApp`` whose
``train`` function runs ``spec.local_epochs`` epochs of SGD over its partition with one torch
thread; ``flwr.simulation.run_simulation`` drives them with the Ray backend, one CPU per
ClientApp (``--cpus`` CPUs in a private local Ray instance, so ``--cpus`` ClientApps at a time).
The global model is evaluated once, centrally, after the last round (``evaluate_fn`` of
``FedAvg.start``) on the test images of ``spec.classes`` with ``--eval-threads`` torch threads.

Timing (wall-clock epoch seconds, written as one JSON line to ``--out``):

* ``script_start``: first statement of this file; ``startup_done``: round 1's messages are
  built and the nodes are registered (end of ``configure_train`` of round 1);
* ``round_start[r]`` / ``round_end[r]``: end of ``configure_train`` of round ``r`` / start of
  the centralized evaluation hook after round ``r`` (training and aggregation in between);
* ``eval_start`` / ``eval_end``: the final centralized evaluation; ``end``: ``run_simulation``
  has returned (Ray shut down). Derived durations: ``startup_s``, ``rounds_s`` (list),
  ``eval_s``, ``total_s`` (script start to end of evaluation), ``process_s`` (to ``end``).

Run: ``.venv-flower/bin/python benchmarks/peers/flower_fedavg.py --work WORK.npz --data-dir DIR
--out timings.json`` (``compare_flower.py`` does this; ``compare_flower.py --dump-work WORK.npz``
writes a work file).
"""

from __future__ import annotations

import time

SCRIPT_START = time.time()  # as early as possible: everything below counts as start-up

import argparse
import gzip
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no network calls from a benchmark
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as sfp-ray's CLI does; before torch is imported

import numpy as np
import timm
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

# --------------------------------------------------------------------------- data

_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An idx file (MNIST format, plain or ``.gz``) as a uint8 array shaped as its header says."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    got, = struct.unpack(">I", raw[:4])
    if got != magic:
        raise ValueError(f"{path}: magic {got}, expected {magic}")
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {body.size} bytes of data, header says {dims}")
    return body.reshape(dims)


def _find(data_dir: Path, stem: str) -> Path:
    for p in (data_dir / f"{stem}.gz", data_dir / stem):
        if p.is_file():
            return p
    raise FileNotFoundError(f"{stem}[.gz] not found in {data_dir}")


def load_split(data_dir: str, train: bool, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, 28, 28)`` scaled to ``[-1, 1]`` and labels ``0..k-1`` of ``classes`` (file order)."""
    img_stem, lbl_stem = _FILES[train]
    images = read_idx(_find(Path(data_dir), img_stem), _IMAGES_MAGIC)
    labels = read_idx(_find(Path(data_dir), lbl_stem), _LABELS_MAGIC).astype(np.int64)
    remap = np.full(10, -1, dtype=np.int64)
    remap[classes] = np.arange(len(classes))
    keep = np.flatnonzero(remap[labels] >= 0)
    x = torch.from_numpy(images[keep][:, None].astype(np.float32))
    x = (x / 255.0 - 0.5) / 0.5
    return x, torch.from_numpy(remap[labels[keep]])


def load_work(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The work file: its ``spec`` (a dict) and its arrays."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(str(arrays.pop("spec"))), arrays


def _close(a: float, b: float, what: str) -> None:
    if not np.isclose(a, b, rtol=1e-9, atol=1e-6):
        raise RuntimeError(f"work file check failed: {what}: {a!r} here, {b!r} in sfp-ray")


# --------------------------------------------------------------------------- model


def build_model(spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> torch.nn.Module:
    """The timm ViT of ``spec`` with sfp-ray's initial weights (``init/<name>`` arrays of the work file)."""
    kwargs = {k: spec[k] for k in ("img_size", "patch_size", "in_chans", "depth", "embed_dim", "num_heads",
                                   "global_pool") if spec.get(k) is not None}
    torch.manual_seed(spec["seed"])
    model = timm.create_model(spec["model"], pretrained=False, num_classes=spec["num_classes"], **kwargs)
    for m in model.modules():  # the same attention kernel as sfp-ray's model.fused_attn setting
        if isinstance(getattr(m, "fused_attn", None), bool):
            m.fused_attn = spec["fused_attn"]
    init = {k[len("init/"):]: torch.from_numpy(np.asarray(v)) for k, v in arrays.items() if k.startswith("init/")}
    if set(init) != set(model.state_dict()):
        raise RuntimeError("work file check failed: its initial weights do not name this model's tensors")
    model.load_state_dict(init)
    return model


def weight_checks(model: torch.nn.Module) -> tuple[int, float, float]:
    ps = [p.detach().double() for p in model.parameters()]
    return sum(p.numel() for p in ps), float(sum(p.sum() for p in ps)), float(sum((p * p).sum() for p in ps))


# --------------------------------------------------------------------------- ClientApp

client_app = ClientApp()
_ACTOR: dict[str, Any] = {}  # per Ray actor process: data and model, built on first use


def _client_setup(cfg: ConfigRecord) -> tuple[dict[str, Any], dict[str, np.ndarray], torch.nn.Module, torch.Tensor,
                                              torch.Tensor]:
    if _ACTOR.get("work") != cfg["work"]:
        spec, arrays = load_work(str(cfg["work"]))
        x, y = load_split(str(cfg["data_dir"]), True, spec["classes"])
        _ACTOR.update(work=cfg["work"], spec=spec, arrays=arrays, x=x, y=y, model=build_model(spec, arrays))
    return _ACTOR["spec"], _ACTOR["arrays"], _ACTOR["model"], _ACTOR["x"], _ACTOR["y"]


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """One client's round: load the global model, ``local_epochs`` of SGD on its samples, send it back."""
    torch.set_num_threads(1)
    cfg = msg.content["config"]
    spec, arrays, model, x_all, y_all = _client_setup(cfg)
    cid = int(context.node_config["partition-id"])
    rnd = int(cfg["server-round"])
    idx = torch.from_numpy(arrays["indices"][arrays["offsets"][cid]:arrays["offsets"][cid + 1]])
    x, y = x_all[idx], y_all[idx]
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=spec["lr"], momentum=spec["momentum"],
                          weight_decay=spec["weight_decay"])
    gen = torch.Generator().manual_seed(int(arrays["seeds"][rnd - 1, cid]))
    losses = []
    for _ in range(spec["local_epochs"]):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), spec["batch_size"]):
            b = order[start:start + spec["batch_size"]]
            loss = F.cross_entropy(model(x[b]), y[b])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
    reply = RecordDict({
        "arrays": ArrayRecord(model.state_dict()),
        "metrics": MetricRecord({"train_loss": float(np.mean(losses)) if losses else 0.0, "num-examples": len(y)}),
    })
    return Message(content=reply, reply_to=msg)


# --------------------------------------------------------------------------- ServerApp

server_app = ServerApp()
JOB: dict[str, Any] = {}  # set by main() before the simulation starts (the ServerApp runs in this process)
TIMES: dict[str, Any] = {"round_start": [], "round_end": []}


class TimedFedAvg(FedAvg):
    """Flower's FedAvg, noting when each round's messages are ready to go."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        messages = super().configure_train(server_round, arrays, config, grid)
        TIMES["round_start"].append(time.time())
        return messages


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    correct, loss_sum = 0, 0.0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            logits = model(x[start:start + batch_size])
            loss_sum += F.cross_entropy(logits, y[start:start + batch_size], reduction="sum").item()
            correct += int((logits.argmax(1) == y[start:start + batch_size]).sum())
    return correct / max(len(y), 1), loss_sum / max(len(y), 1)


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    spec, arrays = JOB["spec"], JOB["arrays"]
    torch.set_num_threads(JOB["eval_threads"])
    test_x, test_y = JOB["test"]
    model = build_model(spec, arrays)
    check_weights(arrays, *weight_checks(model))
    rounds, clients = spec["rounds"], spec["num_clients"]

    def central_eval(server_round: int, global_arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        TIMES["round_end"].append(time.time())
        if server_round < rounds:
            return None
        TIMES["eval_start"] = time.time()
        model.load_state_dict(global_arrays.to_torch_state_dict())
        acc, loss = evaluate(model, test_x, test_y, spec["eval_batch_size"])
        TIMES["eval_end"] = time.time()
        TIMES["accuracy"], TIMES["loss"] = acc, loss
        return MetricRecord({"accuracy": acc, "loss": loss})

    strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients,
                           min_evaluate_nodes=0, min_available_nodes=clients)
    config = ConfigRecord({"work": JOB["work"], "data_dir": JOB["data_dir"]})
    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=rounds,
                   train_config=config, evaluate_fn=central_eval)


# --------------------------------------------------------------------------- main


def check_train_data(spec: dict[str, Any], arrays: dict[str, np.ndarray], data_dir: str) -> None:
    """Compare each client's samples as read here with the work file's labels and image sums."""
    x, y = load_split(data_dir, True, spec["classes"])
    off = arrays["offsets"]
    for c in range(spec["num_clients"]):
        idx = torch.from_numpy(arrays["indices"][off[c]:off[c + 1]])
        if not np.array_equal(y[idx].numpy(), arrays["labels"][off[c]:off[c + 1]]):
            raise RuntimeError(f"work file check failed: labels of client {c} differ from sfp-ray's")
        _close(float(x[idx].double().sum()), float(arrays["image_sums"][c]), f"image sum of client {c}")
    load_test(spec, arrays, data_dir)


def load_test(spec: dict[str, Any], arrays: dict[str, np.ndarray], data_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split, checked against the work file (labels and image sum)."""
    tx, ty = load_split(data_dir, False, spec["classes"])
    if not np.array_equal(ty.numpy(), arrays["test_labels"]):
        raise RuntimeError(f"work file check failed: {len(ty)} test labels here, {len(arrays['test_labels'])} in "
                           "sfp-ray (data.test_samples must keep every test image of the classes)")
    _close(float(tx.double().sum()), float(arrays["test_image_sum"]), "test image sum")
    return tx, ty


def check_weights(arrays: dict[str, np.ndarray], n: int, s: float, s2: float) -> None:
    """Compare the initial weights' count, sum and sum of squares with sfp-ray's."""
    ref = arrays["init_checks"]
    _close(n, float(ref[0]), "number of initial weights")
    _close(s, float(ref[1]), "sum of initial weights")
    _close(s2, float(ref[2]), "sum of squared initial weights")


def versions() -> dict[str, str]:
    import platform

    import flwr
    import ray

    return {"python": platform.python_version(), "flwr": flwr.__version__, "ray": ray.__version__,
            "torch": str(torch.__version__), "timm": timm.__version__, "numpy": np.__version__}


def main(argv: list[str] | None = None, script_start: float = SCRIPT_START) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="work file written by compare_flower.py --dump-work")
    ap.add_argument("--data-dir", required=True, help="folder with the Fashion-MNIST idx files (.gz or plain)")
    ap.add_argument("--out", required=True, help="file to write the JSON line of timings to")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the private Ray instance (default: %(default)s)")
    ap.add_argument("--client-cpus", type=float, default=1.0, help="Ray CPUs per ClientApp (default: %(default)s)")
    ap.add_argument("--eval-threads", type=int, default=1,
                    help="torch threads of the central evaluation (sfp-ray's server actor: 1)")
    ap.add_argument("--check", action="store_true",
                    help="only check every client's data and the initial weights against the work file, then exit")
    args = ap.parse_args(argv)

    from flwr.simulation import run_simulation

    spec, arrays = load_work(args.work)
    if args.check:
        check_train_data(spec, arrays, args.data_dir)
        n, s, s2 = weight_checks(build_model(spec, arrays))
        check_weights(arrays, n, s, s2)
        print(f"flower_fedavg: {args.work}: the data of {spec['num_clients']} clients, the test split and the "
              "initial weights match sfp-ray's")
        return 0
    test = load_test(spec, arrays, args.data_dir)
    JOB.update(spec=spec, arrays=arrays, test=test, work=str(Path(args.work).resolve()),
               data_dir=str(Path(args.data_dir).resolve()), eval_threads=args.eval_threads)
    backend = {
        "init_args": {"address": "local", "num_cpus": args.cpus, "num_gpus": 0},  # a private Ray, never a shared one
        "client_resources": {"num_cpus": args.client_cpus, "num_gpus": 0.0},
    }
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=spec["num_clients"],
                   backend_config=backend)
    end = time.time()

    t = TIMES
    if len(t["round_end"]) != spec["rounds"] or "eval_end" not in t:
        print(f"flower_fedavg: the simulation stopped early ({len(t['round_end'])} of {spec['rounds']} rounds)",
              file=sys.stderr)
        return 1
    row = {
        "framework": "flower", "script_start": script_start, "startup_done": t["round_start"][0],
        "round_start": t["round_start"], "round_end": t["round_end"], "eval_start": t["eval_start"],
        "eval_end": t["eval_end"], "end": end,
        "startup_s": t["round_start"][0] - script_start,
        "rounds_s": [e - s for s, e in zip(t["round_start"], t["round_end"])],
        "eval_s": t["eval_end"] - t["eval_start"], "total_s": t["eval_end"] - script_start,
        "process_s": end - script_start, "final_accuracy": t["accuracy"], "final_loss": t["loss"],
        "clients": spec["num_clients"], "rounds": spec["rounds"], "cpus": args.cpus, "client_cpus": args.client_cpus,
        "versions": versions(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(f"flower: {spec['rounds']} rounds, accuracy {t['accuracy']:.4f}, startup {row['startup_s']:.1f} s, "
          f"rounds {sum(row['rounds_s']):.1f} s, eval {row['eval_s']:.1f} s, total {row['total_s']:.1f} s")
    return 0


if __name__ == "__main__":
    # Import this file as the module ``flower_fedavg`` and run that: the apps' functions are then
    # pickled by reference, so the Ray actors import the module once and keep its per-process state
    # (``_ACTOR``) between messages, instead of receiving fresh copies of ``__main__`` globals each time.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import flower_fedavg

    sys.exit(flower_fedavg.main(script_start=SCRIPT_START))
