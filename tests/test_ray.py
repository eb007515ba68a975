"""The Ray runtime: executor agreement with the serial reference, pool sizing, pooled mode, fit checks.

All tests share one private Ray instance (``ray_session`` in conftest.py: 4 logical CPUs,
1 logical GPU) and keep torch actors few: every actor imports torch and timm (~5 s of CPU
each on a 2-core machine). Runs compare with the serial executor at one torch thread
(what the actors enforce for sub-core tickets), where the two executors agree bit for bit.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from conftest import TINY_MODEL, assert_same_run, run_ray, run_serial, tiny

from sfp_ray.config import RayConfig, load_config
from sfp_ray.devices import get_device
from sfp_ray.errors import ClusterError, ConfigError
from sfp_ray.executors.ray import RayExecutor, check_fit, parse_address, plan_pool, plan_slots, route, start_ray
from sfp_ray.orchestrator import sample_cohort
from sfp_ray.preparation import prepare_run

TINY = tiny("model.depth=4", "data.test_samples=64", base=TINY_MODEL)

JETSON = {"num_cpus": 0.25, "num_gpus": 0.25}


# --------------------------------------------------------------------------- helpers


class Capture:
    """A sink keeping the resource rows and round records."""

    def __init__(self) -> None:
        self.resources: list[dict[str, Any]] = []
        self.rounds: list[Any] = []

    def start_run(self, meta: Any) -> None: ...

    def add_costs(self, meta: Any, records: Sequence[Any]) -> None: ...

    def add_messages(self, meta: Any, records: Sequence[Any]) -> None: ...

    def add_round(self, meta: Any, record: Any) -> None:
        self.rounds.append(record)

    def add_clients(self, meta: Any, records: Sequence[Any]) -> None: ...

    def add_resources(self, meta: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        self.resources.extend(dict(r) for r in rows)

    def end_run(self, meta: Any, final_state: Any) -> None: ...


class RecordingRayExecutor(RayExecutor):
    """A RayExecutor that remembers, per round, the routing and the client states in and out."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[dict[int, dict]] = []
        self.returned: list[dict[int, dict]] = []
        self.routing: list[dict[int, int]] = []

    def run_clients(self, tasks, state, on_done=None):  # type: ignore[override]
        outs = super().run_clients(tasks, state, on_done)
        self.sent.append({t.client_id: dict(t.client_state) for t in tasks})
        self.returned.append({o.client_id: dict(o.client_state) for o in outs})
        self.routing.append(dict(self.last_routing))
        return outs


# --------------------------------------------------------------------------- pure functions


def test_the_serial_executor_takes_the_thread_count_of_the_actors(tmp_path):
    from sfp_ray.executors.serial import mirrored_threads

    spec = prepare_run(load_config(overrides=[*TINY, "federation.num_clients=2", "federation.clients_per_round=2"]),
                       "sfprompt")
    assert mirrored_threads(spec) == (1, None)  # rpi4/phone/laptop clients, edge_server server: one thread each
    catalog = tmp_path / "devices.yaml"
    catalog.write_text("devices:\n  workstation:\n    description: test\n    num_cpus: 4\n    num_gpus: 0\n"
                       "    memory_mb: 16384\n    peak_flops: 1.0e+12\n"
                       "    efficiency: 0.3\n    uplink_mbps: 100\n    downlink_mbps: 100\n    latency_ms: 5\n")
    spec = prepare_run(load_config(overrides=[*TINY, "federation.num_clients=2", "federation.clients_per_round=2",
                                              f"devices.catalog={catalog}", "devices.mix={workstation: 1.0}",
                                              "devices.server=workstation"]), "sfprompt")
    assert mirrored_threads(spec) == (4, None)
    spec = prepare_run(load_config(overrides=[*TINY, "federation.num_clients=2", "federation.clients_per_round=2",
                                              f"devices.catalog={catalog}", "devices.mix={workstation: 1.0}"]),
                       "sfprompt")
    threads, note = mirrored_threads(spec)
    assert threads == 1 and "[1, 4] torch threads" in note and "not bit for bit" in note
    # fl_* methods have no server: only the clients' classes count
    spec = prepare_run(load_config(overrides=[*TINY, "federation.num_clients=2", "federation.clients_per_round=2",
                                              f"devices.catalog={catalog}", "devices.mix={workstation: 1.0}"]),
                       "fl_full")
    assert mirrored_threads(spec) == (4, None)


def test_the_aggregator_actor_folds_numpy_states_as_they_come_without_torch(ray_session):
    import ray

    from sfp_ray.executors.ray.aggregator import AggregatorActor
    from sfp_ray.packing import unpack

    agg, other = (AggregatorActor.options(num_cpus=0).remote({"estimated_memory_mb": 1.5}) for _ in range(2))
    try:
        a = {"tail.w": np.float32([1.0, 2.0]), "prompt": np.float32([0.0])}
        b = {"tail.w": np.float32([4.0, 8.0]), "prompt": np.float32([3.0])}
        c = {"tail.w": np.float32([10.0, -1.0]), "prompt": np.float32([6.0])}
        # a and b fold here, c on "another node"; each state is an object ref at the top level of its call
        assert ray.get([agg.fold.remote("r1", 1, ray.put(a)), agg.fold.remote("r1", 2, ray.put(b))]) == [1, 2]
        assert ray.get(other.fold.remote("r1", 3, ray.put(c))) == 1
        packed, server, info = ray.get(list(agg.finish.remote("r1", None, other.partial.remote("r1"))))
        client = unpack(packed)
        # tail.w = (1*[1,2] + 2*[4,8] + 3*[10,-1]) / 6 = [39, 15] / 6; prompt = (0 + 6 + 18) / 6 = 4
        assert client["tail.w"].tolist() == [6.5, 2.5] and client["prompt"].tolist() == [4.0]
        assert client["tail.w"].dtype == np.float32 and server is None
        assert info["flops"] == {"all": 2 * 3 * 3.0}  # one multiply and one add per element and client
        # both actors forgot the round: a new round starts from nothing
        assert ray.get(agg.fold.remote("r2", 1, ray.put(a))) == 1
        assert ray.get(other.partial.remote("r1"))[0].client.clients == 0
        ray.get(agg.discard.remote("r2"))
        assert ray.get(agg.fold.remote("r2", 1, ray.put(b))) == 1
        row = ray.get(agg.ready.remote())
        assert row["estimated_memory_mb"] == 1.5 and row["observed_peak_rss_mb"] > 0
        loaded = ray.get(agg.modules.remote())
        assert "torch" not in loaded and "timm" not in loaded and "sfp_ray.aggregation" in loaded
    finally:
        ray.kill(agg)
        ray.kill(other)


def test_plan_slots_proportional_with_one_per_class():
    assert plan_slots(["a"] * 30 + ["b"] * 10, 4) == ["a", "a", "a", "b"]
    assert plan_slots(["a"] * 20 + ["b"] * 20, 4) == ["a", "a", "b", "b"]
    # a rare class still gets its slot; never more slots than clients of a class
    assert plan_slots(["a"] * 38 + ["b"], 4) == ["a", "a", "a", "b"]
    assert plan_slots(["a", "a", "b"], 10) == ["a", "a", "b"]
    with pytest.raises(ConfigError, match="ray.max_actors"):
        plan_slots(["a", "b", "c"], 2)


def test_route_deals_clients_round_robin_within_their_class():
    slots = ["a", "a", "b"]
    r = route([(5, "a"), (1, "a"), (9, "a"), (2, "b"), (4, "b")], slots)
    assert r == {1: 0, 5: 1, 9: 0, 2: 2, 4: 2}
    assert all(slots[s] == c for (cid, c) in [(5, "a"), (1, "a"), (9, "a"), (2, "b"), (4, "b")] for s in [r[cid]])
    with pytest.raises(ValueError, match="no slot of device class 'c'"):
        route([(0, "c")], slots)


def test_check_fit_names_the_class_when_the_cluster_has_no_gpu():
    with pytest.raises(ClusterError) as e:
        check_fit([("client:rpi4", {"num_cpus": 0.25}), ("client:jetson", JETSON)], {"CPU": 8.0})
    msg = str(e.value)
    assert "device class 'jetson' needs num_gpus=0.25 but the cluster has 0 GPUs" in msg
    assert "ray.num_gpus=1" in msg
    with pytest.raises(ClusterError, match="device class 'edge_server' needs num_gpus=0.5.*change devices.server"):
        check_fit([("server:edge_server", {"num_cpus": 1, "num_gpus": 0.5})], {"CPU": 2})


def test_check_fit_packs_fractional_gpus_per_gpu_and_cpus_per_node():
    # 0.5 + 0.25 + 0.25 fill one GPU; 0.75 + 0.5 do not fit one, but fit two
    check_fit([("server:edge_server", {"num_cpus": 1, "num_gpus": 0.5})] + [("client:jetson", JETSON)] * 2,
              {"CPU": 2, "GPU": 1})
    with pytest.raises(ClusterError, match="cannot place 2 client actors of class 'jetson'"):
        check_fit([("client:jetson", {"num_cpus": 0, "num_gpus": 0.75})] * 2, {"CPU": 1, "GPU": 1.5})
    check_fit([("client:jetson", {"num_cpus": 0, "num_gpus": 0.75})] * 2, {"CPU": 1, "GPU": 2})
    # the sum of fractional CPUs per node counts, and a shape must fit a single node
    nodes = [{"CPU": 1.0}, {"CPU": 1.0}]
    check_fit([("client:laptop", {"num_cpus": 0.5})] * 4, nodes=nodes)
    with pytest.raises(ClusterError, match=r"cannot place 5 client actors of class 'laptop' \(0.5 CPU each\)"):
        check_fit([("client:laptop", {"num_cpus": 0.5})] * 5, nodes=nodes)
    with pytest.raises(ClusterError, match="device class 'big' needs num_cpus=1.5 but the largest node offers 1"):
        check_fit([("client:big", {"num_cpus": 1.5})], nodes=nodes)
    # custom device resources are per node
    nodes = [{"CPU": 4, "device:rpi4": 2}, {"CPU": 4}]
    check_fit([("client:rpi4", {"num_cpus": 0.25, "resources": {"device:rpi4": 1}})] * 2, nodes=nodes)
    with pytest.raises(ClusterError, match="cannot place 3 client actors of class 'rpi4'.*2 fit"):
        check_fit([("client:rpi4", {"num_cpus": 0.25, "resources": {"device:rpi4": 1}})] * 3, nodes=nodes)
    with pytest.raises(ClusterError, match="device:phone"):
        check_fit([("client:phone", {"num_cpus": 0.25, "resources": {"device:phone": 1}})], nodes=nodes)


def _profiles(**counts: int) -> list[Any]:
    return [get_device(name) for name, n in counts.items() for _ in range(n)]


def test_pool_is_one_actor_per_client_when_they_fit():
    plan = plan_pool(_profiles(rpi4=5, phone=3, laptop=2), get_device("edge_server"), [{"CPU": 8.0, "GPU": 1.0}])
    assert plan.per_client and sorted(plan.slot_classes) == sorted(["rpi4"] * 5 + ["phone"] * 3 + ["laptop"] * 2)
    assert plan.options["rpi4"] == {"num_cpus": 0.25} and plan.server_options == {"num_cpus": 1.0, "num_gpus": 0.5}
    assert not plan.gpu_fallback and not plan.notices


def test_pool_on_a_gpu_less_two_core_laptop_needs_no_knobs():
    """The default devices on 2 CPUs and no GPU: the server's GPU share runs on CPU, the clients are pooled.

    The server holds 1 CPU, leaving 1 CPU of tickets: one slot per class (rpi4 0.25 +
    phone 0.25 + laptop 0.5) fills it, and the next slot D'Hondt would add (a 4th rpi4)
    does not fit. Without a server, 2 CPUs hold 7 slots (4 rpi4, 2 phone, 1 laptop: 2.0).
    """
    plan = plan_pool(_profiles(rpi4=5, phone=3, laptop=2), get_device("edge_server"), [{"CPU": 2.0}])
    assert plan.gpu_fallback == {"edge_server"} and "num_gpus" not in plan.server_options
    assert any("no GPU" in n and "edge_server" in n for n in plan.notices)
    assert not plan.per_client and sorted(plan.slot_classes) == ["laptop", "phone", "rpi4"]
    assert any("pooled mode" in n for n in plan.notices)
    plan = plan_pool(_profiles(rpi4=5, phone=3, laptop=2), None, [{"CPU": 2.0}])
    assert sorted(plan.slot_classes) == ["laptop"] + ["phone"] * 2 + ["rpi4"] * 4
    # a cap from the configuration still applies
    assert len(plan_pool(_profiles(rpi4=5, phone=3, laptop=2), None, [{"CPU": 64.0}], max_actors=4).slot_classes) == 4


def _memory(client_gib: float, aggregator_gib: float, server_gib: float | None = None,
            per_request_gib: float = 0.0) -> Any:
    from sfp_ray.sizing import MemoryEstimate, PoolMemory

    gib = 2**30
    server = (MemoryEstimate("server", floor=int(server_gib * gib), activations=int(per_request_gib * gib))
              if server_gib is not None else None)
    return PoolMemory(MemoryEstimate("client", floor=int(client_gib * gib)),
                      MemoryEstimate("aggregator", floor=int(aggregator_gib * gib)), server)


def test_pool_asks_ray_for_each_actors_memory_and_sizes_itself_by_it():
    # 100 rpi4 clients fit 64 CPUs of tickets, but 16 GiB hold the 1 GiB aggregator and only 7 clients of 2 GiB
    plan = plan_pool(_profiles(rpi4=100), None, [{"CPU": 64.0, "memory": 16 * 2**30}], memory=_memory(2, 1))
    assert len(plan.slot_classes) == 7 and not plan.per_client
    assert plan.options["rpi4"] == {"num_cpus": 0.25, "memory": 2 * 2**30}
    assert plan.aggregator_options == {"num_cpus": 0, "memory": 2**30}
    # the server's memory grows with the requests it serves at once: min(server_max_concurrency, slots)
    plan = plan_pool(_profiles(rpi4=100), get_device("rpi4"), [{"CPU": 64.0, "memory": 16 * 2**30}],
                     memory=_memory(1, 1, server_gib=1, per_request_gib=0.5), server_max_concurrency=4)
    # 1 (aggregator) + 1 + 4 x 0.5 (server) + 12 x 1 (slots) = 16 GiB; with 4 slots or more the server holds 3 GiB
    assert len(plan.slot_classes) == 12 and plan.server_concurrency == 4
    assert plan.server_options["memory"] == 3 * 2**30 and plan.server_estimate.total == 3 * 2**30
    # without a memory resource (a test cluster) nothing limits it
    assert len(plan_pool(_profiles(rpi4=10), None, [{"CPU": 64.0}], memory=_memory(2, 1)).slot_classes) == 10


def test_the_pool_plans_for_states_in_flight_but_asks_ray_for_the_estimates():
    import dataclasses as dc

    gib = 2**30
    memory = dc.replace(_memory(2, 1), state_bytes=gib // 2)
    node = [{"CPU": 64.0, "memory": 20 * gib}]
    # half of 20 GiB: the aggregator's 1 + 4 states in flight of 0.5 = 3 GiB, then 2 + 0.5 per slot: 2 slots
    plan = plan_pool(_profiles(rpi4=40), None, node, memory=memory, memory_fraction=0.5)
    assert len(plan.slot_classes) == 2
    assert plan.options["rpi4"]["memory"] == 2 * gib and plan.aggregator_options["memory"] == gib
    assert plan.memory is memory
    # the whole node: no fraction, no planning for traffic (what Ray is asked for is all that counts)
    assert len(plan_pool(_profiles(rpi4=40), None, node, memory=memory).slot_classes) == 9
    # even one slot does not fit the share: planned against the whole node, with a notice
    big = dc.replace(_memory(12, 1), state_bytes=gib)
    plan = plan_pool(_profiles(rpi4=4), None, node, memory=big, memory_fraction=0.5)
    assert len(plan.slot_classes) == 1 and any("ray.memory_fraction=0.5" in n for n in plan.notices)
    # the share holds no pool (1 + 4 x 1 + 5 + 1 = 11 > 10 GiB): the whole node, still counting the states in
    # flight, holds 2 slots (5 + 2 x 6 = 17 <= 20), not the 3 that the estimates alone would allow (1 + 3 x 5 = 16)
    mid = dc.replace(_memory(5, 1), state_bytes=gib)
    plan = plan_pool(_profiles(rpi4=40), None, node, memory=mid, memory_fraction=0.5)
    assert len(plan.slot_classes) == 2 and any("ray.memory_fraction=0.5" in n for n in plan.notices)
    assert plan.options["rpi4"]["memory"] == 5 * gib and plan.aggregator_options["memory"] == gib


def test_pool_shares_slots_between_classes_when_memory_holds_no_actor_per_class():
    clients = _profiles(rpi4=6, phone=3, laptop=1)
    plan = plan_pool(clients, None, [{"CPU": 2.0, "memory": 11 * 2**30}], memory=_memory(5, 1))
    # one slot per class needs 3 x 5 + 1 = 16 GiB; shared slots: 2 x 5 + 1 = 11
    assert plan.slot_classes == ["rpi4+phone+laptop"] * 2
    assert plan.classes_of("rpi4+phone+laptop") == ("rpi4", "phone", "laptop")
    assert plan.options["rpi4+phone+laptop"] == {"num_cpus": 0.5, "memory": 5 * 2**30}  # the largest tickets
    assert any("share 2 slot actor(s)" in n and "5.0 GiB" in n for n in plan.notices)
    r = route([(c, d.name) for c, d in enumerate(clients)], plan.slot_classes, plan.serves)
    assert sorted(set(r.values())) == [0, 1] and sum(1 for v in r.values() if v == 0) == 5
    # classes that compute differently (a GPU share) do not share a slot
    jetsons = _profiles(rpi4=2, jetson=2)
    plan = plan_pool(jetsons, None, [{"CPU": 2.0, "GPU": 1.0, "memory": 11 * 2**30}], memory=_memory(5, 1))
    assert sorted(plan.slot_classes) == ["jetson", "rpi4"]
    with pytest.raises(ClusterError, match="memory.*client 5.0 GiB"):
        plan_pool(jetsons, None, [{"CPU": 2.0, "GPU": 1.0, "memory": 10 * 2**30}], memory=_memory(5, 1))


def test_pool_fails_naming_a_missing_custom_resource():
    fpga = dataclasses.replace(get_device("rpi4"), name="fpga", resources={"fpga": 1.0})
    with pytest.raises(ClusterError, match="device class 'fpga' needs resources\\['fpga'\\]=1 but the cluster has no"):
        plan_pool([fpga], None, [{"CPU": 4.0}])


def test_parse_address():
    assert parse_address("local") is None and parse_address("auto") is None
    assert parse_address("ray://head:10001") == ("head", 10001)
    with pytest.raises(ClusterError, match="HOST:PORT"):
        parse_address("nohost")
    with pytest.raises(ClusterError, match="port"):
        parse_address("host:http")


# --------------------------------------------------------------------------- Ray: boundaries


def test_check_fit_logical_gpus_on_the_live_cluster(ray_session):
    check_fit([("client:jetson", JETSON)] * 4)  # 4 x 0.25 fill the fixture's one logical GPU
    with pytest.raises(ClusterError) as e:
        check_fit([("client:jetson", JETSON)] * 5)
    msg = str(e.value)
    assert "cannot place 5 client actors of class 'jetson' (0.25 GPU each)" in msg
    assert "the cluster has 1 GPU; 4 fit" in msg and "ray.max_actors" in msg


def test_start_ray_unreachable_address_fails_fast_and_leaves_ray_alone(ray_session):
    node = ray_session.get_runtime_context().get_node_id()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for addr in ("127.0.0.1:1", f"127.0.0.1:{port}"):
        t0 = time.monotonic()
        with pytest.raises(ClusterError, match=f"cannot reach Ray at 127.0.0.1:{addr.split(':')[1]} within 3 s"):
            start_ray(RayConfig(), addr)
        assert time.monotonic() - t0 < 5
    assert ray_session.is_initialized()
    assert ray_session.get_runtime_context().get_node_id() == node
    assert start_ray(RayConfig(), "local") is False  # reuses the running instance


def test_executor_needs_a_running_ray(monkeypatch):
    import ray

    spec = prepare_run(load_config(overrides=TINY + ["federation.num_clients=2", "federation.clients_per_round=2",
                                                     "data.samples_per_client=8"]))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(ClusterError, match="call sfp_ray.executors.ray.start_ray first"):
        RayExecutor().start(spec)


def test_executor_refuses_a_run_that_does_not_fit_before_creating_actors(ray_session, tmp_path):
    catalog = tmp_path / "devices.yaml"
    catalog.write_text("devices:\n  fpga:\n    description: needs an FPGA\n    num_cpus: 0.25\n    num_gpus: 0\n"
                       "    memory_mb: 1024\n    peak_flops: 1.0e+11\n    efficiency: 0.5\n    uplink_mbps: 10\n"
                       "    downlink_mbps: 10\n    latency_ms: 5\n    resources: {fpga: 1}\n")
    spec = prepare_run(load_config(overrides=TINY + [
        "federation.num_clients=2", "federation.clients_per_round=2", "data.samples_per_client=8",
        "devices.mix={fpga: 1.0}", f"devices.catalog={catalog}"]))
    ex = RayExecutor()
    with pytest.raises(ClusterError, match="device class 'fpga' needs resources\\['fpga'\\]=1 but the cluster has no"):
        ex.start(spec)
    assert ex.pool is None


def test_executor_gives_up_when_other_jobs_hold_the_resources(ray_session):
    """check_fit looks at totals; actors still pending after ``ready_timeout_s`` end the start."""
    import ray

    @ray.remote(num_cpus=0, num_gpus=1)
    class GpuHog:
        def ping(self) -> bool:
            return True

    hog = GpuHog.remote()
    ray.get(hog.ping.remote())
    spec = prepare_run(load_config(overrides=TINY + [
        "federation.num_clients=1", "federation.clients_per_round=1", "data.samples_per_client=8"]))
    ex = RayExecutor(ready_timeout_s=3)
    try:
        t0 = time.monotonic()
        with pytest.raises(ClusterError, match=r"not placed/started within 3 s \(1 x server:edge_server"):
            ex.start(spec)
        assert time.monotonic() - t0 < 30
        assert ex.pool is None  # the executor ended the pool it had started
    finally:
        ray.kill(hog)


# --------------------------------------------------------------------------- Ray: runs


def test_sfprompt_ray_matches_serial(ray_session):
    cfg = load_config(overrides=TINY + [
        "data.samples_per_client=32", "federation.num_clients=4", "federation.clients_per_round=4",
        "federation.rounds=2", "devices.mix={rpi4: 1.0}"])
    spec = prepare_run(cfg)
    serial = run_serial(spec)
    sink = Capture()
    res, ex = run_ray(spec, sink=sink)
    assert_same_run(serial, res)
    assert ex.actor_count == 4
    for c, st in serial.client_states.items():
        np.testing.assert_array_equal(res.client_states[c]["kept"], st["kept"])
    # each client ran in its own actor and reported requested / enforced / observed resources
    rows = [r for r in sink.resources if r["stage"] == "task"]  # per client and round (the rest: per actor)
    assert len(rows) == 8 and len({r["actor_id"] for r in rows}) == 4
    start = [r for r in sink.resources if r["stage"] == "start"]
    assert [r["label"] for r in start] == ["server:edge_server"] + ["client:rpi4"] * 4 + ["aggregator"]
    # memory at start: a torch actor maps more than it owns alone; the torch-free aggregator holds far less
    for r in start:
        assert 0 < r["observed_uss_mb"] <= r["observed_rss_mb"] and 0 < r["observed_pss_mb"] <= r["observed_rss_mb"]
    assert start[-1]["observed_rss_mb"] < 0.5 * start[1]["observed_rss_mb"]
    for r in rows:
        assert r["requested_num_cpus"] == 0.25 and r["assigned_num_cpus"] == 0.25
        assert r["enforced_threads"] == 1 == r["observed_threads"]
        # a 0.25-CPU actor pins itself to one core, and the OS reports exactly that core
        assert len(r["enforced_affinity"].split(",")) == 1
        assert r["observed_affinity"] == r["enforced_affinity"]
        assert r["observed_peak_rss_mb"] > 50 and r["memory_cap_exceeded"] is False
        assert r["node_id"] == ray_session.get_runtime_context().get_node_id()
    server_row = ex.report_rows[0]
    assert server_row["role"] == "server" and server_row["assigned_num_gpus"] == 0.5
    # the server's per-request queue time (from the client's send to the server's start, measured) reached the
    # round records: every round's requests crossed processes on Ray; in-process nothing queues
    assert all(r.server_queue_s > 0 for r in res.rounds), [r.server_queue_s for r in res.rounds]
    assert all(r.server_queue_s == 0 for r in serial.rounds), [r.server_queue_s for r in serial.rounds]


def test_fl_full_ray_matches_serial(ray_session):
    cfg = load_config(overrides=TINY + [
        "method=fl_full", "data.samples_per_client=16", "federation.num_clients=2",
        "federation.clients_per_round=2", "federation.rounds=2", "devices.mix={phone: 1.0}"])
    spec = prepare_run(cfg)
    serial = run_serial(spec)
    res, ex = run_ray(spec)
    assert_same_run(serial, res)
    assert ex.actor_count == 2


@pytest.fixture(scope="module")
def pooled(ray_session):
    """40 logical clients (20 rpi4, 20 jetson) on 4 slot actors, 8 clients a round, 2 rounds."""
    cfg = load_config(overrides=TINY + [
        "seed=3", "data.samples_per_client=8", "federation.num_clients=40", "federation.clients_per_round=8",
        "federation.rounds=2", "devices.mix={rpi4: 0.5, jetson: 0.5}", "ray.max_actors=4"])
    spec = prepare_run(cfg)
    sink = Capture()
    res, ex = run_ray(spec, RecordingRayExecutor(), sink)
    return spec, res, ex, sink


def test_pooled_mode_runs_40_clients_on_4_actors(pooled):
    spec, res, ex, sink = pooled
    assert len(res.rounds) == 2 and all(r.participants == 8 for r in res.rounds)
    assert ex.actor_count == 4
    assert sorted(ex.plan.slot_classes) == ["jetson", "jetson", "rpi4", "rpi4"]
    for routing in ex.routing:
        assert set(routing.values()) <= set(range(4))
        for cid, slot in routing.items():
            assert ex.plan.slot_classes[slot] == spec.devices[cid].name
        assert max(np.bincount(list(routing.values()))) >= 2  # some slot served several clients
    clients = [r for r in sink.resources if r["role"] == "client"]
    assert len({r["actor_id"] for r in clients}) <= 4
    assert {r["slot"] for r in clients} <= set(range(4))


def test_pooled_mode_keeps_el2n_indices_between_rounds(pooled):
    spec, res, ex, _ = pooled
    c1, c2 = sample_cohort(3, 1, 40, 8), sample_cohort(3, 2, 40, 8)
    both = set(c1) & set(c2)
    assert both, "seed 3 was chosen so that some clients take part in both rounds"
    for c in both:
        kept1 = ex.returned[0][c]["kept"]
        np.testing.assert_array_equal(ex.sent[1][c]["kept"], kept1)  # the orchestrator sent it back
        np.testing.assert_array_equal(res.client_states[c]["kept"], kept1)  # and it was reused, not re-pruned
        assert res.client_states[c]["pruned_at_round"] == 1
    for c in set(c2) - set(c1):
        assert res.client_states[c]["pruned_at_round"] == 2
    # slots are stateless: the pooled run equals the serial reference
    assert_same_run(run_serial(spec), res)


def test_jetson_slots_schedule_on_a_gpu_and_compute_where_torch_can(pooled):
    """On CI's logical GPU the jetson slots compute on the CPU and say why; on a GPU host, on the GPU."""
    _, _, ex, sink = pooled
    rows = [r for r in sink.resources if r.get("device") == "jetson" and r["stage"] == "task"]
    assert rows
    for r in rows:
        assert r["requested_num_gpus"] == 0.25 and r["assigned_num_gpus"] == 0.25
        assert r["assigned_gpu_ids"] != ""  # Ray assigned a GPU ...
        if r["cuda_available"]:  # ... a real GPU: the actor computes on it, and its share is enforced
            assert r["compute_device"] == r["tensor_device"] == "cuda:0" and r["gpu_fallback"] is False
            assert r["enforced_gpu_fraction"] == 0.25 and r["observed_gpu_mem_mb"] > 0
        else:  # ... a logical one: the CPU, with the reason
            assert r["compute_device"] == r["tensor_device"] == "cpu" and r["gpu_fallback"] is True
            assert "no CUDA device visible (CUDA_VISIBLE_DEVICES='-1': a logical GPU)" == r["gpu_fallback_reason"]
            assert r["enforced_gpu_fraction"] != r["enforced_gpu_fraction"]  # NaN: nothing to enforce
    slots = [r for r in ex.report_rows if r.get("role") == "client"]
    assert len(slots) == 4 and sum(r["assigned_num_gpus"] for r in slots) == 0.5
