"""The simulated clock: work counting, measured device classes, calibration, capacity traces, the shared server link."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import as_sets, tiny

import sfp_ray
from sfp_ray.availability import phase_fractions
from sfp_ray.calibration import Probe, calibrate, fit_throughput, write_catalog
from sfp_ray.capacity import client_devices, load_capacity_trace, spread_factors
from sfp_ray.cli import main
from sfp_ray.config import DevicesConfig, load_config
from sfp_ray.costs import FlopMeter, Ledger, ServerLink, Work, count_work, simulate_round
from sfp_ray.devices import Throughput, get_device, load_catalog
from sfp_ray.errors import ClusterError, ConfigError
from sfp_ray.records import Segment

TINY = tiny("model.depth=3", "federation.num_clients=3", "federation.clients_per_round=3", "federation.rounds=2",
            "train.batch_size=4")
MEASURED = Throughput(flops_per_s=1e10, bytes_per_s=1e9, op_s=1e-5, call_s=1e-4, kernel_s=1e-3)


def _measured(name: str = "m", **kw) -> object:
    return replace(get_device("laptop"), name=name, throughput=MEASURED, **kw)


# --------------------------------------------------------------------------- work and measured classes


def test_work_counts_flops_operations_and_the_bytes_of_uncounted_operations():
    lin, x = torch.nn.Linear(4, 3, bias=False), torch.ones(2, 4)
    with torch.no_grad():
        _, w = count_work(lambda: torch.relu(lin(x)) + 1.0)
    # t: a view (not counted); mm: a FLOP kernel; relu (reads + writes 24 bytes), add (reads 24, writes 24)
    assert (w.flops, w.kernels, w.ops, w.moved_bytes) == (48, 1, 2, 96)
    meter = FlopMeter()
    meter.measure("k", lambda: lin(x))
    _, again = meter.measure("k", lambda: lin(x))
    assert meter.counted_runs == 1 and again.flops == 48


def test_a_measured_class_charges_calls_operations_flops_and_bytes_divided_by_its_speed():
    d = _measured()
    # 1e-4 (the call) + 2 x 1e-3 (kernels) + 100 x 1e-5 (operations) + 2 s of FLOPs + 1 s of bytes
    assert d.compute_seconds(2e10, moved_bytes=1e9, ops=100, kernels=2, calls=1) == pytest.approx(3.0031)
    assert replace(d, speed=2.0).compute_seconds(2e10, moved_bytes=1e9, ops=100, kernels=2,
                                                 calls=1) == pytest.approx(1.50155)
    assert d.effective_flops == 1e10
    rpi = get_device("rpi4")  # peak x efficiency: operations and bytes are not seen
    assert rpi.compute_seconds(7.2e9, moved_bytes=1e12, ops=1e6, kernels=50, calls=9) == pytest.approx(1.0)


def test_the_ledger_times_a_measured_class_on_work_and_every_class_on_the_wall(tmp_path):
    lin = torch.nn.Linear(8, 8, bias=False)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    from sfp_ray.roles.client import optimizer_step

    for dev in (get_device("rpi4"), _measured()):
        led = Ledger(1, 0, dev, get_device("edge_server"))
        with led.phase("local_train"):
            led.compute("all", ("fwdbwd",), lambda: lin(torch.ones(4, 8)).sum().backward())
            optimizer_step(opt, led, "all")
        (row,) = led.records()
        assert row.compute_wall_s > 0 and row.flops == 2 * 512  # forward, and the weight's gradient
        if dev.throughput is None:  # FLOPs only: the step (no FLOPs) costs nothing simulated
            assert row.sim_s == pytest.approx(row.flops / dev.effective_flops)
        else:  # two calls with their operations and bytes; the first has two kernels (forward, weight gradient)
            assert row.sim_s > row.flops / dev.effective_flops + 2 * MEASURED.call_s + 2 * MEASURED.kernel_s


def test_catalogue_reads_throughput_and_spreads_and_names_bad_fields(tmp_path):
    base = ("devices:\n  x:\n    description: d\n    num_cpus: 1\n    num_gpus: 0\n    memory_mb: 64\n"
            "    peak_flops: 1e9\n    efficiency: 1.0\n    uplink_mbps: 10\n    downlink_mbps: 10\n    latency_ms: 1\n")
    good = tmp_path / "good.yaml"
    good.write_text(base + "    speed_spread: 0.5\n    throughput: {flops_per_s: 2e9, bytes_per_s: null, op_s: 1e-5, "
                    "call_s: 0, threads: 2}\n")
    x = load_catalog(good)["x"]
    assert x.throughput == Throughput(2e9, None, 1e-5, 0.0, 2, 0.0) and x.speed_spread == 0.5
    assert x.to_dict()["throughput"]["flops_per_s"] == 2e9
    for extra, msg in (("    throughput: {flops_per_s: 0}\n", "flops_per_s must be > 0"),
                       ("    throughput: {flops_per_s: 1e9, speed: 2}\n", "unknown field 'speed'"),
                       ("    throughput: {op_s: 1e-5}\n", "missing field 'flops_per_s'"),
                       ("    link_spread: -1\n", "link_spread must be a lognormal sigma")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(base + extra)
        with pytest.raises(ConfigError, match=msg):
            load_catalog(bad)


# --------------------------------------------------------------------------- calibration


def test_fit_recovers_the_coefficients_of_exact_timings():
    works = [Work(1e9 * i, 1e7 * (i % 3), 50 * (i % 4) + 5, (7 * i) % 5) for i in range(1, 12)]
    probes = []
    for w in works:
        p = Probe("p", lambda: None, work=w)
        p.times = [MEASURED.seconds(flops=w.flops, moved_bytes=w.moved_bytes, ops=w.ops, kernels=w.kernels, calls=1)]
        probes.append(p)
    t = fit_throughput(probes, threads=3)
    assert t.flops_per_s == pytest.approx(1e10, rel=1e-6) and t.bytes_per_s == pytest.approx(1e9, rel=1e-6)
    assert t.op_s == pytest.approx(1e-5, rel=1e-6) and t.call_s == pytest.approx(1e-4, rel=1e-6) and t.threads == 3
    assert t.kernel_s == pytest.approx(1e-3, rel=1e-6)


@pytest.fixture(scope="module")
def host_catalog(tmp_path_factory):
    """A class calibrated on this machine for the tiny model (one timed run per probe: seconds, not quality)."""
    cfg = load_config(overrides=TINY)
    cal = calibrate(cfg, name="host", threads=1, repeats=1, warmup=0, num_classes=10)
    assert {"body bwd (weights, sfl) b4", "EL2N scoring (head+tail) b2", "adam step, whole model"} <= {
        p.label for p in cal.probes}
    return write_catalog(cal, tmp_path_factory.mktemp("cal") / "host.yaml"), cal


@pytest.mark.slow  # several rounds or runs end to end
def test_a_calibrated_class_is_written_and_a_run_uses_it(host_catalog, tmp_path):
    path, cal = host_catalog
    text = path.read_text()
    assert text.startswith("# Device class 'host'") and "Not measured" in text
    host = load_catalog(path)["host"]
    assert host.throughput is not None and host.num_cpus == 1 and host.memory_mb > 0
    r = sfp_ray.run(overrides=[*TINY, f"devices.catalog={path}", "devices.mix={host: 1.0}", "devices.server=host",
                               "devices.free_links=true"], method="sfprompt", executor="serial", threads=1,
                    out=tmp_path / "run", plots=False)
    c = r.clients
    assert (c["flops_per_s"] == host.effective_flops).all() and (c["uplink_mbps"] == float("inf")).all()
    assert (c["compute_wall_s"] > 0).all() and (c["compute_sim_s"] > 0).all() and (c["compute_cpu_s"] > 0).all()
    assert (c["compute_wall_s"] <= c["wall_s"]).all()
    links = r.costs[r.costs["side"] == "link"]
    assert (links["sim_s"] == 0).all() and links["bytes_up"].sum() > 0  # free, but counted
    server = r.costs[(r.costs["side"] == "server") & (r.costs["part"] == "body")]
    assert (server["compute_wall_s"] > 0).all() and (server["sim_s"] > 0).all()


def test_calibrate_command_adds_to_a_catalogue_and_refuses_bad_input(host_catalog, tmp_path, capsys, monkeypatch):
    path, cal = host_catalog
    import sfp_ray.calibration as calmod

    monkeypatch.setattr(calmod, "calibrate", lambda cfg, **kw: replace(cal, name=kw["name"]))
    out = tmp_path / "cat.yaml"
    out.write_text(path.read_text())
    sets = as_sets(TINY)
    assert main(["devices", "calibrate", "--name", "pi", "--out", str(out), *sets]) == 0
    assert set(load_catalog(out)) >= {"host", "pi"}  # added beside the class already there
    assert "device class 'pi'" in capsys.readouterr().out
    assert main(["devices", "--catalog", str(out)]) == 0 and "measured" in capsys.readouterr().out
    # a file in a folder that does not exist yet: the folder is made when the class is written
    assert main(["devices", "calibrate", "--name", "pi", "--out", str(tmp_path / "new" / "pi.yaml"), *sets]) == 0
    assert "pi" in load_catalog(tmp_path / "new" / "pi.yaml")
    capsys.readouterr()
    (tmp_path / "notes.yaml").write_text("just: text\n")
    for argv, msg in ((["--threads", "0"], "--threads"), (["--batch-sizes", "8,x"], "--batch-sizes"),
                      (["--name", "9bad"], "--name"), (["--out", str(tmp_path)], "is a folder"),
                      (["--timer", "cpu", "--threads", "2"], "--timer cpu"),
                      (["--out", str(tmp_path / "notes.yaml")], "not a device catalogue"),
                      (["--out", str(tmp_path / "notes.yaml" / "pi.yaml")], "is not a folder")):
        assert main(["devices", "calibrate", *argv]) == 2
        assert msg in capsys.readouterr().err


def test_calibrating_on_a_cluster_needs_a_node_of_the_class(ray_session):
    from sfp_ray.executors.ray.calibrate import calibrate_on_cluster

    with pytest.raises(ClusterError, match="device:nowhere"):
        calibrate_on_cluster(load_config(overrides=TINY), address="auto", name="nowhere")


# --------------------------------------------------------------------------- capacity traces and spreads


def _fedscale_trace(path: Path) -> Path:
    """A FedScale ``client_device_capacity`` in its own format: keys from 1, ms per sample, kbit/s."""
    with path.open("wb") as fh:
        pickle.dump({1: {"computation": 20.0, "communication": 8000.0}, 2: {"computation": 40.0,
                     "communication": 2000.0}, 3: {"computation": 80.0, "communication": 500.0}}, fh)
    return path


def test_fedscale_capacity_trace_gives_each_client_its_speed_and_links(tmp_path):
    trace = load_capacity_trace(_fedscale_trace(tmp_path / "client_device_capacity"))
    assert [e.ms_per_sample for e in trace.entries] == [20.0, 40.0, 80.0] and trace.median_ms == 40.0
    laptop = get_device("laptop")
    cfg = DevicesConfig(capacity_trace=str(tmp_path / "client_device_capacity"))
    devs, notes = client_devices([laptop] * 4, cfg, seed=0)
    # client c takes entry c mod 3: relative to the median device (40 ms), which computes as fast as a laptop
    assert [d.speed for d in devs] == [2.0, 1.0, 0.5, 2.0]
    assert [d.uplink_mbps for d in devs] == [8.0, 2.0, 0.5, 8.0] and devs[1].downlink_mbps == 2.0
    assert devs[0].effective_flops == 2 * laptop.effective_flops and "3 devices" in notes[0]
    absolute, _ = client_devices([laptop], replace(cfg, capacity_sample_flops=1e9), seed=0)
    assert absolute[0].effective_flops == pytest.approx(1e9 / 0.020)
    a, _ = client_devices([laptop] * 3, replace(cfg, capacity_map="sample"), seed=0)
    b, _ = client_devices([laptop] * 3, replace(cfg, capacity_map="sample"), seed=0)
    assert a == b and sorted(d.speed for d in a) == [0.5, 1.0, 2.0]  # a draw of distinct entries, repeatable


def test_capacity_trace_csv_yaml_and_refusals(tmp_path):
    csv_path = tmp_path / "cap.csv"
    csv_path.write_text("client_id,computation,communication\n7,10,1000\n3,30,3000\n")
    t = load_capacity_trace(csv_path)
    assert [(e.ms_per_sample, e.uplink_mbps) for e in t.entries] == [(30.0, 3.0), (10.0, 1.0)]  # key order
    y = tmp_path / "cap.yaml"
    y.write_text("- {flops_per_s: 2.0e+9, uplink_mbps: 5, downlink_mbps: 20}\n")
    (e,) = load_capacity_trace(y).entries
    assert (e.flops_per_s, e.uplink_mbps, e.downlink_mbps) == (2e9, 5.0, 20.0)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({1: Path("/")}))
    for path, body, msg in ((evil, None, "plain data only"), (tmp_path / "no", None, "no such file"),
                            (tmp_path / "neg.yaml", "{1: {computation: -1, communication: 5}}", "'computation'"),
                            (tmp_path / "bw.yaml", "{1: {computation: 1}}", "no bandwidth"),
                            (tmp_path / "col.csv", "client_id,speed\n1,2\n", "unknown column 'speed'")):
        if body is not None:
            path.write_text(body)
        with pytest.raises(ConfigError, match=msg) as ei:
            load_capacity_trace(path)
        assert "devices.capacity_trace" in str(ei.value)


def test_speed_spread_draws_per_client_and_nothing_changes_without_it():
    rpi = get_device("rpi4")
    same, notes = client_devices([rpi, rpi], DevicesConfig(), seed=0)
    assert same[0] is rpi and notes == []
    spread = replace(rpi, speed_spread=0.5, link_spread=0.2)
    devs, _ = client_devices([spread] * 200, DevicesConfig(), seed=1)
    speeds = [d.speed for d in devs]
    assert len(set(speeds)) == 200 and 0.85 < float(pd.Series(speeds).median()) < 1.15
    assert devs[5].speed == spread_factors(1, 5, 0.5, 0.2)[0]
    assert devs[5].downlink_mbps / rpi.downlink_mbps == pytest.approx(spread_factors(1, 5, 0.5, 0.2)[1])


# --------------------------------------------------------------------------- the shared server link


def _uploads(n: int, mbytes: float = 10.0, client_mbps: float = 1000.0, latency: float = 0.0) -> dict:
    b = mbytes * 1e6
    return {c: [Segment("upload", "link", b * 8 / (client_mbps * 1e6) + latency, b, "up", latency)] for c in range(n)}


def test_ten_uploads_of_10_mb_share_a_100_mbit_server_link():
    """800 Mbit over 100 Mbit/s: all finish at 8 s when shared, one after another under FIFO.

    In parallel (no shared link) each takes 0.08 s on its own 1 Gbit/s link.
    """
    shared = simulate_round(_uploads(10), link=ServerLink("shared", 100.0, 100.0))
    assert shared.seconds == pytest.approx(8.0) and all(f == pytest.approx(8.0) for f in shared.finish.values())
    fifo = simulate_round(_uploads(10), link=ServerLink("fifo", 100.0, 100.0))
    assert [fifo.finish[k] for k in range(10)] == pytest.approx([0.8 * (k + 1) for k in range(10)])
    assert fifo.wait[9] == pytest.approx(7.2)
    assert simulate_round(_uploads(10)).seconds == pytest.approx(0.08)  # parallel: the clients' own links only
    down = simulate_round(_uploads(10), link=ServerLink("shared", 100.0, 1.0))  # uploads use the up direction
    assert down.seconds == pytest.approx(8.0)


def test_shared_link_is_max_min_fair_and_latency_follows_the_last_byte():
    tl = _uploads(1, client_mbps=10.0)
    tl[1] = _uploads(1, client_mbps=100.0, latency=0.5)[0]
    clock = simulate_round(tl, link=ServerLink("shared", 50.0, 50.0))
    # the slow client is held to 10 Mbit/s, the fast one takes the other 40: 80 Mbit in 2 s, +0.5 s latency
    assert clock.finish == {0: pytest.approx(8.0), 1: pytest.approx(2.5)}
    seq = simulate_round(tl, sequential=True, link=ServerLink("shared", 50.0, 50.0))
    assert seq.finish == {0: pytest.approx(8.0), 1: pytest.approx(8.0 + 1.6 + 0.5)}  # alone: min(100, 50) Mbit/s


def test_a_link_wide_enough_plays_the_round_as_before():
    tl = {c: [Segment("download", "link", 1.0 + c, 1e6, "down", 0.1), Segment("t", "client", 0.5 * c),
              Segment("t", "server", 1.0), Segment("upload", "link", 2.0, 1e6, "up", 0.2)] for c in range(4)}
    tl = {c: [s for s in segs if s.seconds > 0] for c, segs in tl.items()}
    wide = simulate_round(tl, link=ServerLink("shared", 1e9, 1e9))
    off = simulate_round(tl)
    assert wide.finish == pytest.approx(off.finish) and wide.wait == pytest.approx(off.wait)
    assert [s[:2] for s in wide.schedule[3]] == [s[:2] for s in off.schedule[3]]


def test_a_dropout_cut_keeps_the_link_bytes_it_sent():
    tl = [Segment("a", "client", 2.0), Segment("b", "link", 2.0, 1000.0, "up", 0.2)]
    cut, _ = phase_fractions(tl, 3.0)
    assert cut[1].seconds == 1.0 and cut[1].nbytes == 500.0 and cut[1].latency_s == pytest.approx(0.1)


@pytest.mark.slow  # several rounds or runs end to end
def test_a_run_with_a_slow_shared_server_link_takes_longer(tmp_path):
    slow = tmp_path / "slow.yaml"
    edge = get_device("edge_server")
    fields = {k: getattr(edge, k) for k in ("description", "num_cpus", "num_gpus", "memory_mb", "peak_flops",
                                            "efficiency")}
    slow.write_text(yaml.safe_dump({"devices": {"slow_server": {**fields, "uplink_mbps": 1.0, "downlink_mbps": 1.0,
                                                                "latency_ms": 1.0}}}))
    common = [*TINY, "federation.rounds=1", f"devices.catalog={slow}", "devices.server=slow_server",
              "devices.mix={laptop: 1.0}"]
    runs = {p: sfp_ray.run(overrides=[*common, f"devices.server_link={p}"], method="fl_linear", executor="serial",
                           out=tmp_path / p, plots=False) for p in ("parallel", "shared")}
    off, shared = (runs[p].rounds["sim_s"].iloc[0] for p in ("parallel", "shared"))
    # three clients download and upload the same state at once: the 1 Mbit/s link serves them one third each
    state_bits = runs["parallel"].costs.query("side == 'link' and client_id == 0")["bytes_down"].sum() * 8
    assert shared > off and shared >= 3 * 2 * state_bits / 1e6 * 0.99
    assert (runs["shared"].costs["sim_s"].values == runs["parallel"].costs["sim_s"].values).all()  # rows: alone
