"""Shared pytest set-up for the sfp-ray test suite.

Module-level settings, applied before any test module imports torch or timm:

* ``HF_HUB_OFFLINE=1``: timm's hub look-ups fail fast instead of stalling ~47 s without
  internet;
* ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep instead of spinning. On a machine
  busy with other processes, spinning threads fight for the cores and the tiny models of
  these tests run 20-50x slower with 2 threads than with 1; passive waiting removes that;
* two torch threads (``SFP_TEST_THREADS`` overrides): the suite is sized for a 2-core CI
  machine.

The tiny configuration and the fixtures and helpers shared by several test files live below (test files import
them from here: no test module imports another).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first torch import

import torch  # noqa: E402  (after the environment is set)

torch.set_num_threads(int(os.environ.get("SFP_TEST_THREADS", "2")))


# --------------------------------------------------------------------------- the tiny configuration

#: The model and data every tiny run shares: synthetic data of all classes, 16 px images cut into 4 px patches,
#: two soft prompts, no checkpoint (random initialisation, no pre-training, no network).
TINY_MODEL = {"data.name": "synthetic", "data.classes": "null", "model.checkpoint": "none", "model.img_size": "16",
              "model.patch_size": "4", "prompt.num_tokens": "2"}
#: A tiny run: :data:`TINY_MODEL` in 2 blocks, two clients of 8 samples each, one round, 16 test samples.
TINY_RUN = {**TINY_MODEL, "model.depth": "2", "federation.num_clients": "2", "federation.clients_per_round": "2",
            "federation.rounds": "1", "data.samples_per_client": "8", "data.test_samples": "16"}


def tiny(*changes: str, base: dict[str, str] = TINY_RUN) -> list[str]:
    """The tiny configuration as ``KEY=VALUE`` overrides: ``base`` with ``changes`` applied on top.

    A key of ``changes`` replaces the base's value (each key appears once), so a test file states
    only what it runs differently.

    Example:
        >>> tiny("federation.rounds=3")[-3:]
        ['data.samples_per_client=8', 'data.test_samples=16', 'federation.rounds=3']
        >>> "model.depth=2" in tiny(base=TINY_MODEL)
        False
    """
    items = dict(base)
    for change in changes:
        key, value = change.split("=", 1)
        items.pop(key, None)
        items[key] = value
    return [f"{k}={v}" for k, v in items.items()]


#: The configuration of the method tests (``test_methods.py``, ``test_pruning.py``): :data:`TINY_RUN` with wider
#: blocks (width 64, 2 heads, 4 blocks), three prompts, three clients of 32 samples (two per round), one rate for
#: every method (the tests build roles directly) and one device class.
TINY_METHODS = {**TINY_RUN, "model.depth": "4", "model.embed_dim": "64", "model.num_heads": "2",
                "prompt.num_tokens": "3", "data.samples_per_client": "32", "data.test_samples": "64",
                "federation.num_clients": "3", "train.batch_size": "16", "train.lr": "0.001", "split.head_blocks": "1",
                "split.tail_blocks": "1", "devices.mix": "{rpi4: 1.0}"}


def as_sets(overrides: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]`` (for command lines)."""
    return [a for s in overrides for a in ("--set", s)]


# --------------------------------------------------------------------------- markers

#: Fixtures that start Ray (a private instance, or clusters in subprocesses): every test using one is ``slow``.
RAY_FIXTURES = ("ray_session", "cluster_script")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that starts Ray ``slow`` (``make test-fast`` leaves them out, ``make test`` runs them).

    Tests that run the CLI in a subprocess or many rounds carry ``@pytest.mark.slow`` themselves.
    """
    for item in items:
        if any(f in getattr(item, "fixturenames", ()) for f in RAY_FIXTURES):
            item.add_marker(pytest.mark.slow)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def ray_session():
    """One private Ray instance for the whole session: 4 logical CPUs, 1 logical GPU.

    Logical CPUs may exceed the physical cores (they are scheduling tickets); the logical GPU
    lets fractional-GPU actors (``jetson`` clients, the ``edge_server`` server) schedule on a
    GPU-less machine. Ray workers build timm models with ``TIMM_FUSED_ATTN=0``: FLOP counting
    runs counted calls under the MATH attention backend, so with timm's fused kernel the
    numerics depend on which calls each process's FLOP meter counts, and an executor with one
    meter per actor could not match the serial one bit for bit. Tests comparing executors turn
    fused attention off in this process too (``fused_attn_off`` in tests/test_ray.py).

    The GPU is logical on every host: on a machine with a real GPU, Ray would hand GPU 0 to the
    fractional-GPU actors, which would then compute on it while the serial reference computes
    on the CPU. The workers' ``CUDA_VISIBLE_DEVICES`` is therefore ``-1`` (no device) and Ray is
    told not to set it (``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES``): these actors hold Ray's
    GPU share (which Ray reports as id ``-1``) and see no CUDA device, as on CI. Real CUDA is
    exercised by the tests marked ``gpu`` and by ``benchmarks/gpu_check.py``.

    Reuses a Ray instance already initialised in this process (and then leaves it running);
    never calls ``ray stop``.
    """
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(
        address="local",
        num_cpus=4,
        num_gpus=1,
        include_dashboard=False,
        object_store_memory=512 * 2**20,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"TIMM_FUSED_ATTN": "0", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "-1",
                                  "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}},
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def cluster_script():
    """Run a test file as a script in a subprocess that builds its own Ray cluster; its JSON result.

    The subprocess gets a private ``RAY_TMPDIR`` (its session files and ``ray_current_cluster``
    address file never touch other Ray users of the machine), no ``RAY_ADDRESS*`` variables, and
    ``HF_HUB_OFFLINE=1``. It reports by printing ``mark`` followed by JSON on stdout; the call
    returns that object and the finished process (a failure shows the end of its output).
    """
    def run(path: str, *args: str, mark: str, timeout: float, env: dict[str, str] | None = None):
        full = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        full.update({"HF_HUB_OFFLINE": "1", **(env or {})})
        with tempfile.TemporaryDirectory(prefix="sfpc", dir="/tmp") as tmp:
            full["RAY_TMPDIR"] = tmp
            t0 = time.monotonic()
            proc = subprocess.run([sys.executable, os.path.abspath(path), *args], env=full, capture_output=True,
                                  text=True, timeout=timeout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(mark)]
        assert proc.returncode == 0 and lines, (
            f"subprocess failed (rc={proc.returncode}, {time.monotonic() - t0:.0f} s)\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}")
        return json.loads(lines[-1][len(mark):]), proc

    return run


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def fused_attn_off() -> Iterator[None]:
    """Build timm models in this process without the fused attention kernel (like the Ray workers)."""
    from timm.layers import set_fused_attn, use_fused_attn

    on, experimental = use_fused_attn(), use_fused_attn(experimental=True)
    set_fused_attn(False)
    try:
        yield
    finally:
        set_fused_attn(on or experimental, experimental=experimental)



def run_serial(spec: Any) -> Any:
    """The serial reference of a run as the Ray actors compute it: one torch thread, the CPU, no fused attention."""
    from sfp_ray.executors.serial import SerialExecutor
    from sfp_ray.orchestrator import Orchestrator

    old = torch.get_num_threads()
    try:
        with fused_attn_off():
            # the actors' thread count (one, for these classes) and device (the CPU: the session's GPU is logical)
            return Orchestrator(spec, SerialExecutor(device="cpu")).run()
    finally:
        torch.set_num_threads(old)


def run_ray(spec: Any, executor: Any = None, sink: Any = None) -> tuple[Any, Any]:
    """A run on the Ray executor (``executor``, default a new one; ``sink`` receives the records), then closed;
    the executor keeps its resource rows (``report_rows``), slot count (``actor_count``) and pool plan (``plan``).
    """
    from sfp_ray.executors.ray import RayExecutor
    from sfp_ray.orchestrator import Orchestrator

    ex = executor or RayExecutor()
    try:
        with fused_attn_off():
            res = Orchestrator(spec, ex, sinks=[sink] if sink else []).run()
        ex.report_rows = ex.resources()  # type: ignore[attr-defined]
        ex.actor_count = len(ex.pool.slots)  # type: ignore[attr-defined]
        ex.plan = ex.pool.plan  # type: ignore[attr-defined]
    finally:
        ex.close()
    return res, ex


def max_state_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """The largest absolute difference between two states with the same names."""
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def assert_same_run(serial: Any, ray_res: Any, tol: float = 1e-5) -> None:
    """A Ray run ended where its serial reference did: states, accuracy, FLOPs, bytes and simulated time."""
    diff = max_state_diff(serial.final_state, ray_res.final_state)
    assert diff <= tol, (f"final states differ by {diff:.3g}; train losses serial "
                         f"{[r.train_loss for r in serial.rounds]} vs ray {[r.train_loss for r in ray_res.rounds]}")
    for rs, rr in zip(serial.rounds, ray_res.rounds, strict=True):
        assert rr.test_accuracy == pytest.approx(rs.test_accuracy, abs=1e-9)
        assert rr.test_loss == pytest.approx(rs.test_loss, rel=1e-5)
        assert rr.bytes_round == rs.bytes_round
        assert rr.client_flops_round == rs.client_flops_round
        assert rr.server_flops_round == rs.server_flops_round
        assert rr.sim_s == pytest.approx(rs.sim_s, rel=1e-9)
    assert ray_res.meta.executor == "ray"


def client_task(cid: int, rnd: int, seed: int, indices: Any, client_state: Any = None) -> Any:
    """A :class:`~sfp_ray.roles.client.ClientTask` of an ``rpi4`` client served by an ``edge_server``."""
    import numpy as np

    from sfp_ray.devices import get_device
    from sfp_ray.roles import ClientTask

    return ClientTask(round=rnd, client_id=cid, seed=seed, device=get_device("rpi4"),
                      server_device=get_device("edge_server"), indices=np.asarray(indices),
                      client_state=client_state or {})
