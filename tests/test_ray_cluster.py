"""Placement on a two-node Ray cluster: client actors land on the node of their device class.

A multi-node cluster (``ray.cluster_utils.Cluster``: several raylets on this machine) needs
its own Ray instance, which cannot coexist with the session's ``ray_session`` in one
process. The test therefore runs this file as a script in a subprocess, which builds

* a head node offering ``device:edge_server`` (and a logical GPU for the server's share),
* a worker node offering ``device:rpi4`` for 4 clients,

joins it with :func:`sfp_ray.executors.ray.start_ray` (the ``HOST:PORT`` path), runs one round
of SFPrompt with 2 rpi4 clients on :class:`~sfp_ray.executors.ray.RayExecutor`, and
prints the node ids as JSON. The subprocess uses its own ``RAY_TMPDIR`` so its session
files and the ``ray_current_cluster`` address file never touch other Ray users on the
machine, and it stops only the nodes it started (``Cluster.shutdown``).
"""

from __future__ import annotations

import json

MARK = "SFP_CLUSTER_RESULT "


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster

    from sfp_ray.config import load_config
    from sfp_ray.executors.ray import RayExecutor, start_ray
    from sfp_ray.orchestrator import Orchestrator
    from sfp_ray.preparation import prepare_run

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 1, "resources": {"device:edge_server": 1}, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=2, resources={"device:rpi4": 4})
        cluster.wait_for_nodes()
        started = start_ray(load_config().ray, cluster.address)
        cfg = load_config(overrides=[
            "data.name=synthetic", "data.classes=null", "model.checkpoint=none", "model.img_size=16",
            "model.patch_size=4", "model.depth=2", "prompt.num_tokens=2", "data.samples_per_client=8",
            "data.test_samples=16", "federation.num_clients=2", "federation.clients_per_round=2",
            "federation.rounds=1", "devices.mix={rpi4: 1.0}"])
        spec = prepare_run(cfg)
        ex = RayExecutor()
        rows: list[dict] = []

        class Sink:
            def __getattr__(self, name):
                return lambda *a, **k: None

            def add_resources(self, meta, r):
                rows.extend(x for x in r if x.get("stage") == "task")  # per client and round

        try:
            res = Orchestrator(spec, ex, sinks=[Sink()]).run()
            report = ex.resources()
        finally:
            ex.close()
        out = {
            "started": started,
            "head": cluster.head_node.node_id,
            "worker": worker.node_id,
            "alive_nodes": sum(1 for n in ray.nodes() if n["Alive"]),
            "client_nodes": [r["node_id"] for r in rows],
            "client_devices": [r["device"] for r in rows],
            "server_node": next(r["node_id"] for r in report if r["role"] == "server"),
            "rounds": len(res.rounds),
            "accuracy": res.rounds[-1].test_accuracy,
        }
        print(MARK + json.dumps(out), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_client_actors_land_on_the_node_of_their_device_class(cluster_script):
    out, _ = cluster_script(__file__, mark=MARK, timeout=240)
    assert out["started"] is False  # joined an existing cluster, did not start one
    assert out["alive_nodes"] == 2 and out["head"] != out["worker"]
    assert out["client_devices"] == ["rpi4", "rpi4"]
    assert out["client_nodes"] == [out["worker"], out["worker"]]  # device:rpi4 lives on the worker
    assert out["server_node"] == out["head"]  # device:edge_server lives on the head
    assert out["rounds"] == 1 and 0.0 <= out["accuracy"] <= 1.0


if __name__ == "__main__":
    main()
