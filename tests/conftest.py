"""Shared pytest set-up for the sfp-ray test suite.

Module-level settings, applied before any test module imports torch or timm:

* ``HF_HUB_OFFLINE=1``: timm's hub look-ups fail fast instead of stalling ~47 s without
  internet;
* ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep instead of spinning. On a machine
  busy with other processes, spinning threads fight for the cores and the tiny models of
  these tests run 20-50x slower with 2 threads than with 1; passive waiting removes that;
* two torch threads (``SFP_TEST_THREADS`` overrides): the suite is sized for a 2-core CI
  machine.

Fixtures shared by several test files live below.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first torch import

import torch  # noqa: E402  (after the environment is set)

torch.set_num_threads(int(os.environ.get("SFP_TEST_THREADS", "2")))


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
