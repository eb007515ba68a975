"""The shipped configurations: every ``examples/**/*.yaml`` run configuration validates, and the paper's
set-ups project on the meta device with ``sfp-ray project --config FILE`` (no weights, no data needed).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sfp_ray.cli import main
from sfp_ray.config import load_config
from sfp_ray.methods import get_method
from sfp_ray.sizing import client_estimate, expected_classes

ROOT = Path(__file__).resolve().parent.parent
PAPER = sorted((ROOT / "examples" / "paper").glob("*.yaml"))


def test_the_paper_set_ups_are_all_there():
    names = {p.stem for p in PAPER}
    assert names == {f"vit_{m}16_{d}_{k}of50" for m in ("b", "l") for d in ("cifar10", "cifar100") for k in (5, 10)}


@pytest.mark.slow  # paper-scale models (ViT-B/L at 224 px), built on the meta device
@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_configuration_validates_and_says_what_it_runs(path: Path):
    cfg = load_config(path)
    m, d, f, t = cfg.model, cfg.data, cfg.federation, cfg.train
    assert (m.img_size, m.patch_size, m.in_chans, m.pretrained) == (224, 16, 3, True)
    assert m.name == ("vit_base_patch16_224" if "_b16_" in path.stem else "vit_large_patch16_224")
    assert d.name == path.stem.split("_")[2] and d.download and d.classes is None
    assert (f.num_clients, f.clients_per_round, f.rounds) == (50, int(path.stem.split("_")[-1].split("of")[0]), 200)
    assert (t.local_epochs, t.batch_size, t.lr, t.optimizer, cfg.pruning.keep_ratio) == (10, 32, 1e-3, "adam", 0.5)
    # the model and the cut build, and every method's client takes the configuration (shapes only)
    for method in ("sfprompt", "fl_full"):
        meth = get_method(method)
        est = client_estimate(meth.resolve(cfg), meth, expected_classes(cfg))
        assert est.params > 300e6  # the whole ViT-B or ViT-L, held for evaluation


@pytest.mark.slow  # paper-scale models (ViT-B/L at 224 px), built on the meta device
@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_project_works_on_each_paper_configuration(path: Path, tmp_path):
    out = tmp_path / "proj"
    assert main(["--quiet", "project", "--config", str(path), "--methods", "sfprompt", "--out", str(out)]) == 0
    df = pd.read_csv(out / "projection.csv").set_index("method")
    assert set(df.index) == {"sfprompt", "fl_full"} and (df["img_size"] == 224).all()
    assert df.loc["sfprompt", "client_flops_ratio"] < 0.05  # the thin cut: a few percent of fl_full's client FLOPs
    classes = 100 if "cifar100" in path.stem else 10
    assert (df["num_classes"] == classes).all() and (df["samples_per_client"] == 1000).all()


def test_the_device_catalogue_example_loads_and_runs_on_the_meta_device():
    from sfp_ray.devices import load_catalog

    catalog = ROOT / "examples" / "unreliable_devices.yaml"
    loaded = load_catalog(catalog)
    assert loaded["rpi4"].availability == 0.5 and loaded["rpi4"].dropout == 0.3
    cfg = load_config(overrides=[f"devices.catalog={catalog}", "devices.mix={rpi4: 1.0}"])
    assert cfg.devices.catalog == str(catalog)
