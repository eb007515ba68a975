"""The device rule, precision and determinism (sfp_ray.compute), on any machine.

The rule is tested by faking what Ray assigned (``gpu_ids``) and what torch can use
(``cuda_unusable``); the tests marked ``gpu`` run real CUDA and are skipped without it.
"""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
import torch
from conftest import tiny

from sfp_ray import compute
from sfp_ray.compute import ComputeDevice, choose_device, cuda_unusable, set_determinism, wire_dtype
from sfp_ray.config import load_config
from sfp_ray.devices import get_device
from sfp_ray.errors import ConfigError
from sfp_ray.orchestrator import Orchestrator
from sfp_ray.preparation import prepare_run

TINY = tiny("model.depth=3", "devices.mix={rpi4: 1.0}")
CUDA = torch.cuda.is_available()


@pytest.fixture
def usable(monkeypatch):
    """Pretend torch can use a GPU (nothing is computed on it in these tests)."""
    monkeypatch.setattr(compute, "cuda_unusable", lambda: None)


@pytest.fixture
def unusable(monkeypatch):
    monkeypatch.setattr(compute, "cuda_unusable", lambda: "no CUDA device visible (CUDA_VISIBLE_DEVICES='0': a "
                                                          "logical GPU)")


def test_an_actor_with_a_gpu_share_computes_on_its_gpu(usable):
    d = choose_device("auto", gpu_ids=[3])
    assert d.device == torch.device("cuda", 0) and d.is_cuda and not d.fallback  # Ray's GPU 3 is cuda:0 inside
    assert d.reason == "Ray assigned GPU 3"
    assert choose_device("auto", gpu_ids=[]).device.type == "cpu"  # no share: the CPU, even with a GPU around
    assert choose_device("auto").is_cuda  # the serial executor's auto, outside an actor
    assert choose_device("cpu", gpu_ids=[0]).device.type == "cpu"


def test_a_gpu_that_torch_cannot_use_falls_back_to_the_cpu_and_says_why(unusable):
    d = choose_device("auto", gpu_ids=["0"])
    assert d.device.type == "cpu" and d.fallback and "logical GPU" in d.reason
    assert not choose_device("auto").fallback  # nothing was assigned, so nothing falls back
    with pytest.raises(ConfigError, match="--device cuda: torch cannot use a GPU here: no CUDA device visible"):
        choose_device("cuda")
    with pytest.raises(ConfigError, match="--device: got 'gpu', allowed: auto, cpu, cuda"):
        choose_device("gpu")  # type: ignore[arg-type]


def test_why_cuda_is_unusable_is_named(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    assert cuda_unusable() == "torch built without CUDA"
    monkeypatch.setattr(torch.version, "cuda", "13.0")

    def old_driver() -> bool:
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (found version 11040).",
                      stacklevel=1)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", old_driver)
    assert cuda_unusable() == "the NVIDIA driver is too old for this torch build (CUDA 13.0)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert cuda_unusable() == "no CUDA device visible (CUDA_VISIBLE_DEVICES='0': a logical GPU)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cuda_unusable() is None


def _spec(*extra: str, method: str = "sfprompt"):
    return prepare_run(load_config(overrides=[*TINY, *extra]), method)


def test_the_serial_executor_mirrors_where_the_actors_compute(usable):
    from sfp_ray.executors.serial import mirrored_device

    d, note = mirrored_device(_spec())  # rpi4 clients, the edge_server (a GPU share) serving the body
    assert d.device.type == "cpu" and "edge_server compute on the GPU and rpi4 on the CPU" in note
    d, note = mirrored_device(_spec(), "cuda")
    assert d.is_cuda and note is None
    d, note = mirrored_device(_spec(method="fl_full"))  # no server: only the rpi4 clients count
    assert d.device.type == "cpu" and note is None
    d, note = mirrored_device(_spec("devices.mix={jetson: 1.0}"))
    assert d.is_cuda and note is None


def test_the_serial_executor_mirrors_the_cpu_when_no_gpu_can_be_used(unusable):
    from sfp_ray.executors.serial import mirrored_device

    d, note = mirrored_device(_spec("devices.mix={jetson: 1.0}"))
    assert d.device.type == "cpu" and note is None


def test_limits_record_the_compute_device_and_refuse_a_gpu_share_too_small():
    from sfp_ray.executors.ray.limits import check_gpu_share, enforce_limits

    info, dev = enforce_limits(get_device("jetson"), gpu_fallback=True)  # outside Ray, on a cluster without GPUs
    assert dev == ComputeDevice(torch.device("cpu"), "the Ray cluster has no GPU", fallback=True)
    assert info["compute_device"] == "cpu" and info["gpu_fallback"] is True
    assert info["gpu_fallback_reason"] == "the Ray cluster has no GPU"
    info, dev = enforce_limits(get_device("rpi4"))
    assert info["gpu_fallback"] is False and info["gpu_fallback_reason"] == "" and dev.reason == "no GPU share"
    assert check_gpu_share("jetson", 0.25, 8 * 2**30, 2048.0) is None
    msg = check_gpu_share("jetson", 0.25, 8 * 2**30, 2049.0)
    assert msg.startswith("device class 'jetson' needs 2.0 GiB of GPU memory but its 0.25 share of a 8.0 GiB GPU")


def test_determinism_is_switched_on_and_off():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        assert set_determinism(True, torch.device("cpu")) == "torch.use_deterministic_algorithms"
        assert torch.are_deterministic_algorithms_enabled()
        assert set_determinism(False, torch.device("cpu")) == "off"
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


def test_precision_is_checked_where_it_runs():
    assert wire_dtype("bf16") == torch.bfloat16 and wire_dtype("fp32") == torch.float32
    compute.check_precision("bf16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="train.precision=fp16 needs a GPU"):
        compute.check_precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(overrides=["train.precision=fp8"])
    from sfp_ray.executors.serial import SerialExecutor

    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        Orchestrator(_spec("train.precision=fp16"), SerialExecutor(device="cpu")).run()
    with pytest.raises(ConfigError, match="train.precision=fp16: sfl trains the body on the server"):
        from sfp_ray.methods import get_method
        from sfp_ray.roles.workspace import PARTS, Workspace

        cfg = get_method("sfl").resolve(load_config(overrides=[*TINY, "train.precision=fp16"]))
        ws = Workspace(cfg.model, cfg.split, cfg.prompt, num_classes=3, checkpoint=None, seed=0, parts=PARTS, meta=True)
        get_method("sfl").client_role(ws, cfg)


def test_bf16_on_the_cpu_halves_the_bytes_that_cross_the_cut(tmp_path):
    from sfp_ray.api import run

    a = run(TINY, method="sfprompt", executor="serial", out=tmp_path / "fp32", plots=False)
    b = run([*TINY, "train.precision=bf16"], method="sfprompt", executor="serial", out=tmp_path / "bf16", plots=False)
    ma, mb = (pd.read_csv(tmp_path / f / "messages.csv") for f in ("fp32", "bf16"))
    acts = ["activation", "gradient"]
    pa = ma[ma["kind"].isin(acts)]["payload_bytes"].sum()
    pb = mb[mb["kind"].isin(acts)]["payload_bytes"].sum()
    assert pb * 2 == pa > 0  # activations and their gradients cross in bf16
    params = ma[ma["kind"] == "parameters"]["payload_bytes"].sum()
    assert mb[mb["kind"] == "parameters"]["payload_bytes"].sum() == params  # the state stays float32
    assert 0 <= float(b.summary["final_accuracy"].iloc[0]) <= 1
    cfg = (tmp_path / "bf16" / "config.yaml").read_text()
    assert "precision: bf16" in cfg
    assert b.summary["precision"].iloc[0] == "bf16" and a.summary["precision"].iloc[0] == "fp32"


# --------------------------------------------------------------------------- real CUDA (skipped without it)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_a_serial_run_computes_on_the_gpu_and_sends_cpu_arrays(tmp_path):
    from sfp_ray.executors.serial import SerialExecutor

    spec = _spec("devices.mix={jetson: 1.0}")
    ex = SerialExecutor(device="cuda")
    res = Orchestrator(spec, ex).run()
    assert ex.compute.is_cuda and next(iter(ex.ws.split.parameters())).device.type == "cuda"
    assert all(torch.isfinite(v).all() for v in res.final_state.values())


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_serial_runs_on_one_gpu_repeat_bit_for_bit():
    from sfp_ray.executors.serial import SerialExecutor

    a = Orchestrator(_spec("devices.mix={jetson: 1.0}"), SerialExecutor(device="cuda")).run()
    b = Orchestrator(_spec("devices.mix={jetson: 1.0}"), SerialExecutor(device="cuda")).run()
    assert all(torch.equal(a.final_state[k].cpu(), b.final_state[k].cpu()) for k in a.final_state)


def test_bf16_training_follows_fp32_training_step_by_step(monkeypatch):
    """Each step in bf16 sees the weights the previous step left (autocast's cast cache would keep the first ones)."""
    import numpy as np

    import sfp_ray.roles.client as client
    from sfp_ray.executors.serial import SerialExecutor
    from sfp_ray.roles.client import ClientTask

    losses: dict[str, list[float]] = {}
    check = client.check_loss
    for precision in ("fp32", "bf16"):
        seen = losses[precision] = []
        monkeypatch.setattr(client, "check_loss", lambda loss, where, seen=seen, check=check: (
            seen.append(float(loss)), check(loss, where)))
        spec = _spec(f"train.precision={precision}", "train.local_epochs=4", "data.samples_per_client=16",
                     "train.lr=0.01", "train.split_epochs=0")
        ex = SerialExecutor(device="cpu")
        state = ex.start(spec).state
        task = ClientTask(round=1, client_id=0, seed=5, device=spec.devices[0], server_device=spec.server_device,
                          indices=np.asarray(spec.client_indices[0]))
        ex.run_clients([task], state)
    assert len(losses["fp32"]) == len(losses["bf16"]) == 4  # one batch per epoch of the local-loss update
    # the same batches, the same weights step after step: bf16 arithmetic moves a loss by well under 3 %
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.03)
