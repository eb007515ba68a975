"""Seed statistics on hand numbers, and the by-seed and summary files of a multi-seed run agreeing."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from conftest import tiny

from sfp_ray.stats import spread, t_quantile


def test_t_quantiles_match_the_table() -> None:
    # two-sided 95 % critical values of Student's t (any statistics table)
    for df, t in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)):
        assert t_quantile(df) == pytest.approx(t, abs=1e-4)


def test_spread_of_hand_numbers() -> None:
    # 0.62, 0.70, 0.66: mean 0.66; deviations -0.04, 0.04, 0 -> s^2 = 0.0032 / 2 = 0.0016, s = 0.04
    s = spread([0.62, 0.70, 0.66])
    assert (s.n, s.mean, s.std) == (3, pytest.approx(0.66), pytest.approx(0.04))
    assert s.ci95 == pytest.approx(4.302653 * 0.04 / math.sqrt(3), rel=1e-6)  # 0.09936
    # four values 1, 2, 3, 4: mean 2.5, s = sqrt(5/3), t(0.975, 3) = 3.182446
    s4 = spread([1, 2, 3, 4])
    assert s4.std == pytest.approx(math.sqrt(5 / 3)) and s4.ci95 == pytest.approx(3.182446 * math.sqrt(5 / 3) / 2)
    assert str(s) == "0.660 ± 0.099"


def test_spread_edge_cases() -> None:
    one = spread([0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.std) and math.isnan(one.ci95) and str(one) == "0.500"
    assert spread([]).n == 0 and math.isnan(spread([]).mean)
    assert spread([0.4, float("nan"), 0.6]).n == 2  # NaN (a run without accuracy) is dropped
    same = spread([0.3, 0.3, 0.3])
    assert same.std == 0 and same.ci95 == 0


@pytest.mark.slow  # several rounds or runs end to end
def test_by_seed_and_summary_files_agree(tmp_path) -> None:
    import sfp_ray

    r = sfp_ray.compare(["sfprompt", "fl_full"], overrides=tiny("federation.rounds=2"), seeds=[0, 1, 2],
                        executor="serial", out=tmp_path, plots=False)
    by_seed = pd.read_csv(tmp_path / "summary_by_seed.csv")
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("method")
    assert len(by_seed) == 6 and set(by_seed["seed"]) == {0, 1, 2}
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    for (method, seed), g in rounds.groupby(["method", "seed"]):
        last = g.sort_values("round")["test_accuracy"].iloc[-1]
        row = by_seed[(by_seed["method"] == method) & (by_seed["seed"] == seed)].iloc[0]
        assert row["final_accuracy"] == pytest.approx(last)  # by-seed rows come from rounds.csv
    for method, g in by_seed.groupby("method"):
        s = spread(g["final_accuracy"].tolist())
        row = summary.loc[method]
        assert row["seeds"] == 3
        assert row["final_accuracy_mean"] == pytest.approx(s.mean)
        assert row["final_accuracy_std"] == pytest.approx(s.std, nan_ok=True)
        assert row["final_accuracy_ci95"] == pytest.approx(s.ci95, nan_ok=True)
        for col in ("client_flops_per_client_round", "bytes_per_client_round", "sim_s"):
            assert row[col] == pytest.approx(g[col].mean())  # cost columns: the mean over seeds
    ratio = summary.loc["sfprompt", "client_flops_ratio"]
    assert ratio == pytest.approx(summary.loc["sfprompt", "client_flops_per_client_round"]
                                  / summary.loc["fl_full", "client_flops_per_client_round"])
    paired = (by_seed[by_seed["method"] == "sfprompt"].set_index("seed")["final_accuracy"]
              - by_seed[by_seed["method"] == "fl_full"].set_index("seed")["final_accuracy"])
    assert summary.loc["sfprompt", "accuracy_delta"] == pytest.approx(paired.mean())
    assert summary.loc["sfprompt", "accuracy_delta_ci95"] == pytest.approx(spread(paired.tolist()).ci95, nan_ok=True)
    assert r.summary_by_seed.shape == by_seed.shape
