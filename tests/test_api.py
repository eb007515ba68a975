"""The Python API: one call, DataFrames back, the same tables as the run folder."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from conftest import tiny

import sfp_ray
from sfp_ray.api import Results, to_config
from sfp_ray.config import Config
from sfp_ray.errors import ConfigError

TINY = tiny("federation.rounds=2")


@pytest.mark.slow  # several rounds or runs end to end
def test_compare_returns_the_report_as_dataframes(tmp_path):
    r = sfp_ray.compare(["sfprompt", "fl_full"], overrides=TINY, seeds=[0, 1], executor="serial", out=tmp_path,
                        plots=False)
    assert isinstance(r, Results) and r.out == tmp_path
    assert list(r.summary["method"]) == ["sfprompt", "fl_full"] and set(r.summary["seeds"]) == {2}
    assert len(r.summary_by_seed) == 4 and set(r.summary_by_seed["seed"]) == {0, 1}
    assert len(r.rounds) == 2 * 2 * 2 and set(r.rounds["seed"]) == {0, 1}
    assert {"side", "flops", "bytes_up"} <= set(r.costs.columns)
    assert len(r.clients) == 2 * 2 * 2 * 2 and set(r.clients["status"]) == {"ok"}
    assert not r.messages.empty
    # the same tables as the files
    pd.testing.assert_frame_equal(r.rounds, pd.read_csv(tmp_path / "rounds.csv", dtype={"run_id": str}))
    pd.testing.assert_frame_equal(r.summary.reset_index(drop=True), pd.read_csv(tmp_path / "summary.csv"),
                                  check_dtype=False)
    again = Results.load(tmp_path)
    pd.testing.assert_frame_equal(again.summary, r.summary)


def test_run_takes_a_config_a_mapping_or_overrides(tmp_path):
    r = sfp_ray.run(TINY, method="fl_linear", executor="serial", out=tmp_path / "a", plots=False)
    assert list(r.summary["method"]) == ["fl_linear"]
    cfg = to_config({"data": {"name": "synthetic"}}, ["federation.rounds=3"])
    assert isinstance(cfg, Config) and cfg.data.name == "synthetic" and cfg.federation.rounds == 3
    assert to_config(cfg, ["seed=4"]).seed == 4
    with pytest.raises(ConfigError, match="executor"):
        sfp_ray.run(TINY, executor="dask", out=tmp_path / "b")
    with pytest.raises(ConfigError, match="seeds"):
        sfp_ray.run(TINY, seeds=[1, 1], executor="serial", out=tmp_path / "c")


def test_a_run_id_of_digits_stays_a_string(tmp_path, monkeypatch):
    """A random run id can be all digits ("58177546"); read back, it must not turn into a number."""
    import uuid

    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID("58177546" + "0" * 24))
    r = sfp_ray.run(TINY, method="fl_linear", executor="serial", out=tmp_path, plots=False)
    assert set(r.rounds["run_id"]) == {"58177546"} and set(r.costs["run_id"]) == {"58177546"}
    assert set(pd.read_parquet(tmp_path / "costs.parquet")["run_id"]) == {"58177546"}


def test_the_report_appends_each_rounds_rows_and_rewrites_for_a_new_column(tmp_path):
    """flush() writes only what is new (a long run's rounds cost the same), and reads back like one write."""
    from sfp_ray.reports import ReportSink

    sink = ReportSink(tmp_path, plots=False)
    sink.flush()
    assert (tmp_path / "costs.csv").is_file() and (tmp_path / "rounds.csv").is_file()  # headers from the start
    assert not (tmp_path / "clients.csv").exists()
    sink.clients += [{"round": 1, "client_id": c, "status": "ok", "wall_s": 0.1 * c} for c in range(3)]
    sink.flush()
    before = (tmp_path / "clients.csv").stat().st_mtime_ns
    sink.clients += [{"round": 2, "client_id": 0, "status": "failed", "wall_s": float("nan")}]
    sink.flush()  # appended: the first rows are untouched
    text = (tmp_path / "clients.csv").read_text()
    assert text.count("client_id") == 1 and len(text.splitlines()) == 5
    assert (tmp_path / "clients.csv").stat().st_mtime_ns >= before
    sink.clients += [{"round": 2, "client_id": 1, "status": "ok", "wall_s": 0.5, "error": "first attempt failed"}]
    sink.flush()  # a new column: the file is rewritten with it
    df = pd.read_csv(tmp_path / "clients.csv")
    assert list(df.columns) == ["round", "client_id", "status", "wall_s", "error"]
    pd.testing.assert_frame_equal(df, pd.read_csv(io.StringIO(pd.DataFrame(sink.clients).to_csv(index=False))))
    sink.clients += [{"round": 3, "client_id": 2, "status": "ok", "wall_s": 0.25}]  # a missing key: left empty
    sink.flush()
    df = pd.read_csv(tmp_path / "clients.csv")
    assert len(df) == 6 and pd.isna(df["error"].iloc[-1]) and df["wall_s"].iloc[-1] == 0.25
    sink.flush()  # nothing new: nothing written
    assert len(pd.read_csv(tmp_path / "clients.csv")) == 6
