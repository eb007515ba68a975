"""``sfp-ray project`` against what a run executes: one cost truth for every method.

A projection takes a run's configuration and asks each method's cost model for one round
of one client. Here a tiny run (8 px images, 2 px patches, 4 blocks) executes one round of
every registered method, and the executed client FLOPs, server FLOPs and bytes of a
client are compared with the projection of the same configuration, within 1 %.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import pytest
from conftest import tiny

from sfp_ray.cli import main
from sfp_ray.config import load_config
from sfp_ray.executors.serial import SerialExecutor
from sfp_ray.methods import list_methods
from sfp_ray.orchestrator import Orchestrator
from sfp_ray.preparation import prepare_run
from sfp_ray.projection import project, project_method
from sfp_ray.records import CostRecord, tally

TINY = tiny("model.img_size=8", "model.patch_size=2", "model.depth=4", "data.samples_per_client=20",
            "federation.num_clients=3", "federation.clients_per_round=3", "train.batch_size=8", "train.local_epochs=2")


class CostSink:
    def __init__(self) -> None:
        self.costs: list[CostRecord] = []

    def add_costs(self, meta: Any, records: Sequence[CostRecord]) -> None:
        self.costs.extend(records)

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


@pytest.mark.parametrize("method,precision", [(m, "fp32") for m in list_methods()] + [("sfprompt", "bf16"),
                                                                                        ("sfl", "bf16")])
def test_projection_matches_one_executed_round(method: str, precision: str) -> None:
    """Also in bf16 on the CPU, where activations and gradients cross the cut at half the bytes."""
    cfg = load_config(overrides=[*TINY, f"train.precision={precision}"])
    sink = CostSink()
    Orchestrator(prepare_run(cfg, method), SerialExecutor(device="cpu"), [sink]).run()
    projected = project_method(cfg, method)
    assert projected["samples_per_client"] == 20
    for cid in range(3):
        executed = tally(c for c in sink.costs if c.client_id == cid)
        assert executed.client_flops > 0
        assert projected["client_flops_first_round"] == pytest.approx(executed.client_flops, rel=0.01)
        assert projected["server_flops"] == pytest.approx(executed.server_flops, rel=0.01, abs=1)
        assert projected["bytes_up"] == pytest.approx(executed.bytes_up, rel=0.01)
        assert projected["bytes_down"] == pytest.approx(executed.bytes_down, rel=0.01)


def test_project_cli_takes_a_run_configuration(tmp_path) -> None:
    """The configuration of a tiny run (patch 2 at 8 px) projects as it is, with no --model."""
    out = tmp_path / "proj"
    sets = [a for kv in TINY for a in ("--set", kv)]
    assert main(["project", *sets, "--methods", "sfprompt", "--out", str(out)]) == 0
    df = pd.read_csv(out / "projection.csv").set_index("method")
    assert set(df.index) == {"sfprompt", "fl_full"}
    assert (df.loc["sfprompt", "img_size"], df.loc["sfprompt", "patch_size"], df.loc["sfprompt", "depth"]) == (8, 2, 4)
    # project.* overrides the run only where it is set
    assert main(["project", *sets, "--set", "project.samples_per_client=40", "--methods", "fl_full",
                 "--out", str(out)]) == 0
    df40 = pd.read_csv(out / "projection.csv").set_index("method")
    assert df40.loc["fl_full", "client_flops"] == pytest.approx(2 * df.loc["fl_full", "client_flops"])


def test_paper_scale_projection_with_model_flag() -> None:
    """``--model`` takes the timm model at its own size: ViT-B/16 at 224 px, 3 channels, 12 blocks."""
    cfg = load_config(overrides=["model.name=vit_base_patch16_224", "model.img_size=null", "model.patch_size=null",
                                 "model.in_chans=null", "model.depth=null", "project.samples_per_client=500",
                                 "project.num_classes=100", "split.head_blocks=0", "split.tail_blocks=0",
                                 "pruning.keep_ratio=1.0"])
    df = project(cfg, ["sfprompt"]).set_index("method")
    assert (df.loc["sfprompt", "img_size"], df.loc["sfprompt", "depth"]) == (224, 12)
    # the paper's thin client: client compute is a fraction of a percent of full fine-tuning (paper: 0.46 %)
    assert 0.002 < df.loc["sfprompt", "client_flops_ratio"] < 0.01
