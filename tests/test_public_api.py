"""The public surface of ``sfp_ray`` is small and pinned."""

import subprocess
import sys

import pytest

import sfp_ray

EXPECTED = {
    "Config", "load_config", "create_model", "split_vit", "load_checkpoint", "load_dataset", "partition",
    "list_datasets", "el2n_scores", "fedavg", "list_methods", "get_method", "list_devices", "get_device",
    "prepare_run", "Orchestrator", "SerialExecutor", "RayExecutor", "start_ray", "ReportSink", "project",
    "pretrain", "run", "compare", "sweep", "Results", "__version__",
}


def test_public_names_are_pinned_and_resolve():
    assert set(sfp_ray.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(sfp_ray, name) is not None, name


@pytest.mark.slow  # a Python interpreter in a subprocess
def test_import_is_light():
    """``import sfp_ray`` (and the CLI module) must not import torch: the CLI sets thread
    policies before torch starts.
    """
    code = "import sys, sfp_ray, sfp_ray.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
