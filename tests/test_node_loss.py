"""A node of the cluster dies mid-run; a node of its class comes back; a run resumes on the cluster it used.

Like ``tests/test_ray_cluster.py``, the scenario runs as a script in a subprocess that builds
its own multi-node cluster on this machine (``ray.cluster_utils.Cluster``, a private
``RAY_TMPDIR``, GCS health checks every 0.5 s so that a dead node is declared dead after about
1.5 s instead of 15) and stops only the nodes it started. The subprocess's stdout and stderr
are what a user of ``sfp-ray`` would see in the terminal. The runs go through the command line
(:func:`sfp_ray.cli.main`, in the subprocess), with the CLI's progress display wrapped by a
hook that acts on the cluster after a given round. The head offers ``device:edge_server`` (the
server) and ``device:rpi4``; a worker node offers ``device:laptop``. 4 clients, 2 ``rpi4`` and 2
``laptop``, on 2 slots (``ray.max_actors=2``: one per class).

1. ``sfprompt``, ``ray.on_node_loss=replace`` (the default), ``--address`` of the cluster, 3
   rounds: after round 1 the laptop node's raylet is killed with SIGKILL and round 2 starts at
   once, while the cluster has not noticed yet (the laptop clients' tasks are sent to the dying
   actor); after round 2 a new node offering ``device:laptop`` joins.
2. ``fl_linear``, ``ray.on_node_loss=fail``, 3 rounds, from a run folder whose ``run.yaml``
   holds the cluster's address as the first run saved it, continued with ``--resume RUN_DIR``
   and no ``--address``: after round 1 the laptop node is killed (and declared dead before round
   2); after round 2 another laptop node joins.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_MODEL, as_sets, tiny

from sfp_ray.executors.ray.pool import placement, route
from sfp_ray.executors.ray.terminal import HeadWatch, RayLog

MARK = "SFP_NODE_LOSS_RESULT "
TINY = tiny("model.depth=2", "data.samples_per_client=8", "data.test_samples=16", "train.batch_size=4",
            "federation.num_clients=4", "federation.clients_per_round=4", "devices.mix={rpi4: 0.5, laptop: 0.5}",
            "ray.max_actors=2", base=TINY_MODEL)
#: GCS health checks of the test cluster: a node that stops answering is declared dead after ~1.5 s.
FAST_HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
               "health_check_initial_delay_ms": 0}



def main(work: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from sfp_ray.checkpoints import read_plan, write_plan
    from sfp_ray.cli import commands as cli  # where main() looks _progress up
    from sfp_ray.config import load_config

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 3, "num_gpus": 1, "resources": {"device:edge_server": 1, "device:rpi4": 2},
        "include_dashboard": False, "_system_config": FAST_HEALTH})
    nodes = {"head": cluster.head_node.node_id}
    laptops: list = []

    def add_laptop() -> None:
        laptops.append(cluster.add_node(num_cpus=1, resources={"device:laptop": 2}))
        cluster.wait_for_nodes()
        nodes[f"laptop{len(laptops)}"] = laptops[-1].node_id

    def kill_laptop(wait: bool) -> None:
        """SIGKILL the laptop node's raylet (its processes go with it); ``wait``: until the GCS calls it dead."""
        node = laptops[-1]
        os.kill(node.all_processes["raylet"][0].process.pid, signal.SIGKILL)
        cluster.remove_node(node, allow_graceful=False)  # what is left of it, and the cluster's books
        while wait and any(n["Alive"] for n in ray.nodes() if n["NodeID"] == node.node_id):
            time.sleep(0.1)

    after: dict[int, object] = {}  # round -> what to do to the cluster once the round is over
    real_progress = cli._progress

    def progress(total, quiet, with_seed):
        show = real_progress(total, quiet, with_seed)

        def hook(rec):
            show(rec)
            if rec.round in after:
                after.pop(rec.round)()

        return hook

    cli._progress = progress
    out: dict[str, object] = {"nodes": nodes, "address": cluster.address}
    try:
        add_laptop()
        after.update({1: lambda: kill_laptop(wait=False), 2: add_laptop})
        out["rc_replace"] = cli.main([
            "--quiet", "run", "--method", "sfprompt", "--no-plots", "--address", cluster.address,
            *as_sets([*TINY, "federation.rounds=3", "data.samples_per_client=32"]), "--out", str(work / "replace")])
        out["saved_address"] = read_plan(work / "replace").address
        out["connected_after_run"] = ray.is_initialized()

        cfg = load_config(overrides=[*TINY, "federation.rounds=3", "ray.on_node_loss=fail"])
        write_plan(work / "fail", ["fl_linear"], [0], "ray", cfg, address=out["saved_address"])
        after.update({1: lambda: kill_laptop(wait=True), 2: add_laptop})
        out["rc_resume"] = cli.main(["--quiet", "run", "--resume", str(work / "fail"), "--no-plots"])
        print(MARK + json.dumps(out), flush=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, cluster_script):
    """Run the script once: its result, its run folders and what it printed."""
    work = tmp_path_factory.mktemp("node-loss")
    out, proc = cluster_script(__file__, str(work), mark=MARK, timeout=420, env={"TIMM_FUSED_ATTN": "0"})
    terminal = [ln for ln in proc.stdout.splitlines() + proc.stderr.splitlines() if not ln.startswith(MARK)]
    return out, work, terminal


def _tables(work: Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """clients.csv, rounds.csv, and the per-task rows of resources.csv of a run folder."""
    res = pd.read_csv(work / name / "resources.csv")
    return (pd.read_csv(work / name / "clients.csv"), pd.read_csv(work / name / "rounds.csv"),
            res[res["stage"] == "task"].astype({"round": int, "client_id": int}))


def _on(tasks: pd.DataFrame, round: int, device: str) -> set[tuple[str, bool]]:
    rows = tasks[(tasks["round"] == round) & (tasks["device"] == device)]
    return set(zip(rows["node_id"], rows["placed_away"].astype(bool), strict=True))


def test_a_lost_node_is_survived_on_the_remaining_node(scenario):
    out, work, terminal = scenario
    nodes = out["nodes"]
    assert out["rc_replace"] == 0
    clients, rounds, tasks = _tables(work, "replace")
    assert list(rounds["round"]) == [1, 2, 3] and list(rounds["finished"]) == [4, 4, 4]
    # the laptop clients of round 2 were sent to the actor of the dead node, then retried on a new one
    lost = clients[(clients["round"] == 2) & (clients["device"] == "laptop")]
    assert list(lost["status"]) == ["retried", "retried"] and list(lost["attempts"]) == [2, 2]
    assert (lost["error"] == "node lost: the laptop client actor died with its node").all()
    assert set(clients[clients["device"] == "rpi4"]["status"]) == {"ok"}
    assert set(clients[clients["round"] != 2]["status"]) == {"ok"}
    # ... on the node that remained (the head), placed away from their class
    assert _on(tasks, 1, "laptop") == {(nodes["laptop1"], False)}
    assert _on(tasks, 2, "laptop") == {(nodes["head"], True)}
    assert _on(tasks, 2, "rpi4") == {(nodes["head"], False)}
    # one line per event
    lost_line = [ln for ln in terminal if f"Ray node {nodes['laptop1'][:8]}" in ln]
    assert len(lost_line) == 1 and lost_line[0].endswith("was lost, with client:laptop slot 0"), lost_line
    moved = [ln for ln in terminal if "re-placed on node " + nodes["head"][:8] in ln]
    assert len(moved) == 1 and "away from its class: no node offers device:laptop" in moved[0], moved
    retried = [ln for ln in terminal if "sfprompt seed 0 round 2: clients 0 (laptop), 3 (laptop) succeeded on " in ln]
    assert len(retried) == 1, terminal


def test_a_node_that_comes_back_serves_its_class_again(scenario):
    out, work, terminal = scenario
    nodes = out["nodes"]
    _, _, tasks = _tables(work, "replace")
    assert _on(tasks, 3, "laptop") == {(nodes["laptop2"], False)}  # back from the head to the new laptop node
    assert sum(f"slot 0 back on node {nodes['laptop2'][:8]}" in ln for ln in terminal) == 1
    clients, rounds, tasks = _tables(work, "fail")
    assert _on(tasks, 3, "laptop") == {(nodes["laptop3"], False)}
    assert set(clients[clients["round"] == 3]["status"]) == {"ok"}


def test_under_fail_the_lost_class_fails_with_the_reason(scenario):
    out, work, terminal = scenario
    nodes = out["nodes"]
    assert out["rc_resume"] == 0
    clients, rounds, tasks = _tables(work, "fail")
    assert list(rounds["round"]) == [1, 2, 3]
    assert list(rounds["failed"]) == [0, 2, 0] and list(rounds["finished"]) == [4, 2, 4]
    lost = clients[(clients["round"] == 2) & (clients["device"] == "laptop")]
    assert list(lost["status"]) == ["failed", "failed"] and list(lost["attempts"]) == [0, 0]
    assert (lost["error"] == "node lost: no node offers device:laptop").all()
    assert set(clients[clients["device"] == "rpi4"]["status"]) == {"ok"}
    assert _on(tasks, 2, "laptop") == set()  # never placed away under fail
    assert _on(tasks, 1, "laptop") == {(nodes["laptop2"], False)}
    assert sum("fl_linear seed 0 round 2: clients 0 (laptop), 3 (laptop) could not run and are left out of the "
               "round: node lost: no node offers device:laptop" in ln for ln in terminal) == 1


def test_a_resumed_run_joins_the_cluster_it_used(scenario):
    out, work, terminal = scenario
    assert out["saved_address"] == out["address"]  # the first run wrote its cluster into run.yaml
    assert out["connected_after_run"] is False  # and left the cluster it had joined when it ended
    assert sum(f"on the Ray cluster at {out['address']}" in ln for ln in terminal) == 1
    _, _, tasks = _tables(work, "fail")
    assert set(tasks["node_id"]) <= set(out["nodes"].values())  # every client ran on a node of that cluster
    assert not any("has no GPU" in ln for ln in terminal)  # the cluster's head offers one


def test_the_terminal_shows_sfp_ray_lines_only(scenario):
    out, work, terminal = scenario
    ray_words = ("[state-dump]", "(raylet)", "Traceback", "core_worker", "(ClientActor", "(ServerActor", "INFO worker")
    assert not [ln for ln in terminal if any(w in ln for w in ray_words)], terminal
    for name in ("replace", "fail"):
        text = (work / name / "ray.log").read_text()
        assert "sfp-ray: Ray's output of this run follows" in text
    assert "marked dead" in (work / "replace" / "ray.log").read_text()  # the GCS's word on the lost node


# --------------------------------------------------------------------------- the parts, without a cluster


def test_placement_keeps_the_class_moves_away_or_says_why():
    opts = {"num_cpus": 0.5, "memory": 600 * 2**20, "resources": {"device:laptop": 1.0, "fpga": 1.0}}
    head = {"CPU": 2.0, "memory": 2.0**33, "fpga": 1.0}
    laptop = {"CPU": 1.0, "memory": 2.0**33, "fpga": 1.0, "device:laptop": 2.0}
    assert placement("laptop", opts, [head, laptop], "fail") == (opts, False)
    # away: the planned options minus device:laptop, whatever else they ask for (memory, other resources)
    assert placement("laptop", opts, [head], "replace") == (
        {"num_cpus": 0.5, "memory": 600 * 2**20, "resources": {"fpga": 1.0}}, True)
    assert placement("laptop", opts, [head], "fail") == "no node offers device:laptop"
    small = {"CPU": 0.25, "memory": 2.0**33, "fpga": 1.0}
    assert placement("laptop", opts, [small], "replace") == (
        "no node offers device:laptop, and no node has room for a laptop actor")
    assert placement("laptop", opts, [dict(head, fpga=0.0)], "replace") == (
        "no node offers device:laptop, and no node has room for a laptop actor")
    assert opts["resources"] == {"device:laptop": 1.0, "fpga": 1.0}  # the plan's options are not touched
    plain = {"num_cpus": 0.5}  # the plan never pinned the class (no node offered it at the start)
    assert placement("laptop", plain, [head], "fail") == (plain, False)
    # what is left now decides, and what a slot takes is reserved for the next one
    free = [dict(head, CPU=0.6), dict(laptop, CPU=0.0)]  # the laptop node is full
    assert placement("laptop", opts, [head, laptop], "fail", free=free) == (
        "the nodes that offer device:laptop are full")
    assert placement("laptop", opts, [head, laptop], "replace", free=free)[1] is True
    assert free[0]["CPU"] == pytest.approx(0.1) and free[0]["fpga"] == 0.0
    assert placement("laptop", opts, [head, laptop], "replace", free=free) == (
        "the nodes that offer device:laptop are full, and no node has room for a laptop actor")


def test_route_skips_slots_without_an_actor():
    assert route([(1, "laptop"), (2, "laptop"), (3, "rpi4")], ["laptop", None, "laptop", "rpi4"]) == {1: 0, 2: 2, 3: 3}
    with pytest.raises(ValueError, match="no slot of device class 'laptop'"):
        route([(1, "laptop")], [None, "rpi4"])


def test_head_watch_reports_a_head_that_stops_answering():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    port = srv.getsockname()[1]
    lost = threading.Event()
    watch = HeadWatch(f"127.0.0.1:{port}", lost.set, grace_s=0.5, period_s=0.1)
    watch.start()
    try:
        assert not lost.wait(1.0)  # it answers: nothing to report
        srv.close()
        t0 = time.monotonic()
        assert lost.wait(5.0)
        assert time.monotonic() - t0 >= 0.4  # not before the grace period
    finally:
        watch.stop()
        srv.close()
    quiet = threading.Event()
    stopped = HeadWatch(f"127.0.0.1:{port}", quiet.set, grace_s=0.2, period_s=0.05)
    stopped.start()
    stopped.stop()  # a stopped watch reports nothing, even for an address nobody answers on
    assert not quiet.wait(0.6)


def test_ray_log_takes_what_ray_prints_and_leaves_the_terminal_to_sfp_ray(tmp_path, capfd):
    logger = logging.getLogger("ray")
    handlers = list(logger.handlers)
    log = RayLog(tmp_path / "run" / "ray.log")
    log.start()
    try:
        print("sfp-ray: warning: a line for the user", file=sys.stderr)

        def ray_thread():  # as Ray's printing threads do
            print("(raylet) [state-dump] NodeManager", file=sys.stdout)
            print("(ClientActor pid=7) Traceback (most recent call last):", file=sys.stderr)

        thread = threading.Thread(target=ray_thread, name="ray_print_logs")
        thread.start()
        thread.join()
        logger.warning("Unhandled error (suppress with 'RAY_IGNORE_UNHANDLED_ERRORS=1')")
        os.write(2, b"[C++] core_worker.cc:609: Attempting to recover 2 lost objects\n")  # what Ray's C++ writes
        with log.all_to_file():
            print("(pid=8) repeated 3x across cluster", file=sys.stderr)  # ray.shutdown's leftovers
    finally:
        log.stop()
    print("sfp-ray: after the run", file=sys.stderr)
    out, err = capfd.readouterr()
    assert "sfp-ray: warning: a line for the user" in err and "sfp-ray: after the run" in err
    texts = ("[state-dump]", "Traceback", "Unhandled error", "core_worker.cc", "repeated 3x")
    assert not [t for t in texts if t in out + err], out + err
    logged = (tmp_path / "run" / "ray.log").read_text()
    assert all(t in logged for t in texts), logged
    assert "a line for the user" not in logged
    assert logger.handlers == handlers  # the ray logger is as it was


def test_a_resume_joins_the_saved_cluster_or_says_it_cannot(tmp_path, capsys):
    from sfp_ray.checkpoints import read_plan, write_plan
    from sfp_ray.cli import main
    from sfp_ray.config import load_config

    closed = []
    for _ in range(2):  # two ports nobody listens on
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed.append(s.getsockname()[1])
    run = tmp_path / "run"
    write_plan(run, ["fl_linear"], [0], "ray", load_config(overrides=TINY), address=f"127.0.0.1:{closed[0]}")
    assert read_plan(run).address == f"127.0.0.1:{closed[0]}"
    assert main(["--quiet", "run", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"sfp-ray: error: --resume: the run's Ray cluster at 127.0.0.1:{closed[0]} "
                             "(checkpoint/run.yaml) cannot be reached: ") and "pass --address" in err[0]
    assert not (run / "rounds.csv").exists()  # no round ran anywhere else
    # --address wins over the saved one
    assert main(["--quiet", "run", "--resume", str(run), "--address", f"127.0.0.1:{closed[1]}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot reach Ray at 127.0.0.1:{closed[1]}" in err[0], err
    write_plan(tmp_path / "older", ["fl_linear"], [0], "ray", load_config(overrides=TINY))
    assert read_plan(tmp_path / "older").address is None  # folders of older versions: ray.address as configured


def test_an_actor_not_placed_in_time_is_left_out_in_one_line(ray_session):
    """Other jobs hold every CPU: a slot started again waits ray.placement_timeout_s, then is left out."""
    import ray

    from sfp_ray.devices import get_device
    from sfp_ray.executors.ray.pool import ActorPool

    @ray.remote
    class Hog:
        def ping(self) -> bool:
            return True

    lines: list[str] = []
    pool = ActorPool.for_devices([get_device("rpi4")], None, placement_timeout_s=2.0, notify=lines.append)
    hogs = []
    try:
        pool.wait_ready()
        free = ray.available_resources().get("CPU", 0.0)
        whole, part = divmod(free, 1.0)  # Ray takes fractions below 1 only
        hogs = [Hog.options(num_cpus=1).remote() for _ in range(int(whole))]
        hogs += [Hog.options(num_cpus=round(part, 4)).remote()] if part > 1e-4 else []
        ray.get([h.ping.remote() for h in hogs])
        t0 = time.monotonic()
        pool.restart_slots([0])
        took = time.monotonic() - t0
        assert pool.slots == [None] and pool.live_classes() == [None]
        assert pool.unavailable("rpi4") == "not placed within 2 s (ray.placement_timeout_s)"
    finally:
        for h in hogs:
            ray.kill(h)
        pool.close()
    assert 2.0 <= took < 30
    assert lines == ["client:rpi4 slot 0 left out (not placed within 2 s (ray.placement_timeout_s)); the rpi4 clients "
                     "fail until a node can take it (checked before every round)"]



def _until(condition, timeout_s: float = 60.0) -> None:
    """Poll ``condition`` until it holds (Ray notices a killed actor or a dead owner a moment later)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"still not so after {timeout_s:g} s"
        time.sleep(0.1)


def test_restarted_actors_ask_for_the_memory_they_started_with(ray_session):
    """A slot and the root aggregator started again keep their memory; a lost node's aggregator is dropped."""
    import ray

    from sfp_ray.devices import get_device
    from sfp_ray.executors.ray.pool import ActorPool
    from sfp_ray.sizing import MemoryEstimate, PoolMemory

    mib = 2**20
    memory = PoolMemory(MemoryEstimate("client", floor=200 * mib), MemoryEstimate("aggregator", floor=30 * mib))
    lines: list[str] = []
    pool = ActorPool.for_devices([get_device("rpi4")], None, memory=memory, notify=lines.append)
    try:
        rows = pool.wait_ready()
        assert [(r["label"], r["estimated_memory_mb"], r["stage"]) for r in rows] == [
            ("client:rpi4", 200.0, "start"), ("aggregator", 30.0, "start")]
        planned = pool.plan.options["rpi4"]
        assert planned["memory"] == 200 * mib and pool.plan.aggregator_options["memory"] == 30 * mib
        first = pool.slots[0]
        ray.kill(first)
        pool.restart_slots([0])
        assert pool.slots[0] is not None and pool.slots[0] is not first and pool.lost == {}
        assert pool.options_of[0] == planned  # the plan's options, memory included
        assert ray.get(pool.slots[0].ready.remote())["estimated_memory_mb"] == 200.0
        ray.kill(pool.aggregator)
        _until(lambda: not pool.alive(pool.aggregator, timeout_s=5.0))  # ray.kill returns before the actor is gone
        assert pool.heal_aggregators() == ["aggregator"]
        assert ray.get(pool.aggregator.ready.remote())["estimated_memory_mb"] == 30.0
        # one node: the root aggregator folds every slot's states
        assert pool.aggregator_for(0) == (pool.node_of["aggregator"], pool.aggregator)
        # an aggregator made for a node that is not (any more) in the cluster is dropped before the next round
        gone = "ab" * 28  # a node id no node of this cluster has
        stale = pool._node_aggregators[gone] = pool._new_aggregator(gone)
        pool.check_nodes()
        assert pool._node_aggregators == {} and not pool.alive(stale, timeout_s=5.0)
        assert lines == []  # nothing the user needs to hear: no node of the pool was lost
    finally:
        pool.close()


def test_states_are_folded_on_the_node_that_made_them():
    """A slot on the root aggregator's node folds into the root; a slot on any other node into
    that node's aggregator, made once, also when no slot shares the root's node.
    """
    from types import SimpleNamespace

    from sfp_ray.executors.ray.pool import ActorPool

    made: list[str] = []

    def pool(slot_nodes, root):
        return SimpleNamespace(slot_nodes=slot_nodes, node_of={"aggregator": root}, aggregator="root",
                               _node_aggregators={}, _new_aggregator=lambda n: made.append(n) or f"agg@{n}")

    away = pool(["B", "B", "C"], "A")  # every slot away from the root's node
    assert [ActorPool.aggregator_for(away, s) for s in range(3)] == [("B", "agg@B"), ("B", "agg@B"), ("C", "agg@C")]
    assert made == ["B", "C"]  # one aggregator per node, made on first use
    mixed = pool(["A", "B", None], "A")
    assert ActorPool.aggregator_for(mixed, 0) == ("A", "root")
    assert ActorPool.aggregator_for(mixed, 2) == ("A", "root")  # node unknown: the root
    assert ActorPool.aggregator_for(mixed, 7) == ("A", "root")  # no such slot: the root
    assert ActorPool.aggregator_for(pool(["B"], ""), 0) == ("", "root")  # root's node unknown


def test_a_client_state_lost_before_it_was_folded_starts_the_round_over(ray_session):
    """The process that held a client's state is gone before the fold ran: RoundLost, and no partial sum stays."""
    from types import SimpleNamespace

    import numpy as np
    import ray

    from sfp_ray.errors import RoundLost
    from sfp_ray.executors.ray.actors import RayState
    from sfp_ray.executors.ray.aggregator import AggregatorActor
    from sfp_ray.executors.ray.executor import _Fold

    @ray.remote(num_cpus=0)
    class Holder:  # stands for a client actor whose node dies: it owns the state it put into the store
        def put(self, state: dict) -> list:
            return [ray.put(state)]

    agg = AggregatorActor.options(num_cpus=0).remote(None)
    holder = Holder.remote()
    try:
        kept = ray.put({"prompt": np.float32([1.0, 2.0])})
        [lost] = ray.get(holder.put.remote({"prompt": np.float32([3.0, 4.0])}))
        ray.kill(holder)

        def unreadable() -> bool:
            try:
                ray.get(lost, timeout=5)
                return False
            except ray.exceptions.ObjectLostError:  # OwnerDiedError, once Ray noticed
                return True

        _until(unreadable)
        pool = SimpleNamespace(aggregator_for=lambda slot: ("", agg), heal_aggregators=list)
        fold = _Fold(SimpleNamespace(pool=pool, spec=SimpleNamespace(cut_plan=None)), RayState(kept, None))
        for cid, ref in ((0, kept), (1, lost)):
            fold.add(SimpleNamespace(client_id=cid, num_samples=1, state=RayState(ref, None)), 0)
        with pytest.raises(RoundLost, match="client results held on a lost node could not be averaged"):
            fold.finish()
        # the aggregator forgot the round's sums: the same round folds from nothing when it starts over
        assert ray.get(agg.partial.remote(fold.key))[0].client.clients == 0
    finally:
        ray.kill(agg)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
