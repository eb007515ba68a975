"""Device catalogue: loading, validation, cost model and client-to-class assignment (no Ray)."""

from __future__ import annotations

import dataclasses
import pickle
from collections import Counter
from pathlib import Path

import pytest
import yaml

from sfp_ray.devices import (
    DeviceProfile,
    assign_devices,
    builtin_catalog_path,
    device_resource,
    get_device,
    list_devices,
    load_catalog,
)
from sfp_ray.errors import ConfigError

REQUIRED_CLASSES = {"mcu", "rpi4", "phone", "jetson", "laptop", "edge_server"}


def _entry(**overrides):
    base = {
        "description": "test device",
        "num_cpus": 0.5,
        "num_gpus": 0.0,
        "memory_mb": 1024,
        "peak_flops": 1.0e9,
        "efficiency": 0.5,
        "uplink_mbps": 10.0,
        "downlink_mbps": 20.0,
        "latency_ms": 5.0,
    }
    base.update(overrides)
    return base


def _write_catalog(path: Path, devices: dict) -> Path:
    path.write_text(yaml.safe_dump({"devices": devices}, sort_keys=False), encoding="utf-8")
    return path


def _profile(**overrides) -> DeviceProfile:
    fields = _entry(**overrides)
    return DeviceProfile(name=overrides.pop("name", "t"), **fields)


# ------------------------------------------------------------------ built-in catalogue


def test_builtin_has_required_classes():
    names = list_devices()
    assert REQUIRED_CLASSES <= set(names)
    assert len(names) == len(set(names))
    assert list(load_catalog()) == names


@pytest.mark.parametrize("name", list_devices())
def test_builtin_device_is_valid(name):
    p = get_device(name)
    assert isinstance(p, DeviceProfile)
    assert p.name == name
    assert p.description
    assert p.num_cpus >= 0 and p.num_gpus >= 0
    assert p.num_gpus <= 1 or float(p.num_gpus).is_integer()
    assert isinstance(p.memory_mb, int) and p.memory_mb > 0
    assert p.peak_flops > 0 and 0 < p.efficiency <= 1
    assert p.uplink_mbps > 0 and p.downlink_mbps > 0 and p.latency_ms >= 0
    assert p.effective_flops == pytest.approx(p.peak_flops * p.efficiency)
    # Small scheduling tickets, so a 2-core test machine can host a few clients.
    assert 0 < p.num_cpus <= 1.0
    assert p.num_gpus <= 0.5
    assert dict(p.resources) == {}


def test_builtin_yaml_documents_every_number():
    """Each numeric field line of the shipped YAML carries a source comment."""
    numeric = (
        "num_cpus",
        "num_gpus",
        "memory_mb",
        "peak_flops",
        "efficiency",
        "uplink_mbps",
        "downlink_mbps",
        "latency_ms",
    )
    lines = builtin_catalog_path().read_text(encoding="utf-8").splitlines()
    checked = 0
    for line in lines:
        key = line.strip().split(":", 1)[0]
        if key in numeric:
            assert "#" in line and len(line.split("#", 1)[1].strip()) > 10, line
            checked += 1
    assert checked == len(numeric) * len(list_devices())


def test_relative_speeds_are_plausible():
    c = load_catalog()
    eff = {n: c[n].effective_flops for n in c}
    assert eff["mcu"] < eff["rpi4"] < eff["phone"] < eff["jetson"] < eff["edge_server"]
    assert eff["rpi4"] < eff["laptop"] < eff["edge_server"]
    assert c["jetson"].num_gpus > 0 and c["edge_server"].num_gpus > 0
    assert c["mcu"].memory_mb < c["rpi4"].memory_mb


# ------------------------------------------------------------------ cost model


def test_compute_seconds_hand_computed():
    p = _profile(peak_flops=2.0e9, efficiency=0.25)  # 0.5 GFLOP/s achieved
    assert p.effective_flops == pytest.approx(5.0e8)
    assert p.compute_seconds(1.0e9) == pytest.approx(2.0)
    assert p.compute_seconds(0) == 0.0
    with pytest.raises(ValueError):
        p.compute_seconds(-1)


def test_transfer_seconds_hand_computed():
    p = _profile(uplink_mbps=10.0, downlink_mbps=40.0, latency_ms=50.0)
    # 1.25e6 B = 1e7 bit; up: 1e7 / 1e7 = 1 s + 0.05 s; down: 1e7 / 4e7 = 0.25 s + 0.05 s
    assert p.transfer_seconds(1.25e6, "up") == pytest.approx(1.05)
    assert p.transfer_seconds(1.25e6, "down") == pytest.approx(0.30)
    # No message, no latency.
    assert p.transfer_seconds(0, "up") == 0.0
    assert p.transfer_seconds(0, "down") == 0.0
    # A single byte still pays the latency.
    assert p.transfer_seconds(1, "up") == pytest.approx(8 / 1e7 + 0.05)
    with pytest.raises(ValueError):
        p.transfer_seconds(10, "sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        p.transfer_seconds(-1, "up")


def test_rpi4_numbers():
    p = get_device("rpi4")
    # 1 MB up at the catalogue's rpi4 uplink, computed by hand from the profile fields.
    expected = 1e6 * 8 / (p.uplink_mbps * 1e6) + p.latency_ms / 1000
    assert p.transfer_seconds(1e6, "up") == pytest.approx(expected)
    assert p.compute_seconds(p.effective_flops * 3) == pytest.approx(3.0)


# ------------------------------------------------------------------ ray options


def test_ray_options_cpu_only():
    p = _profile(num_cpus=0.25, num_gpus=0.0, memory_mb=512)
    assert p.ray_options() == {"num_cpus": 0.25, "memory": 512 * 2**20}


def test_ray_options_gpu_and_resources():
    p = DeviceProfile(name="g", **_entry(num_gpus=0.25, resources={"accel": 2}))
    opts = p.ray_options()
    assert opts == {"num_cpus": 0.5, "num_gpus": 0.25, "memory": 1024 * 2**20, "resources": {"accel": 2.0}}
    # The returned dict is a copy; mutating it leaves the profile alone.
    opts["resources"]["accel"] = 99
    assert p.resources["accel"] == 2.0


def test_ray_options_builtin_shapes():
    for name in list_devices():
        p = get_device(name)
        opts = p.ray_options()
        assert set(opts) <= {"num_cpus", "num_gpus", "memory", "resources"}
        assert opts["num_cpus"] == p.num_cpus
        assert ("num_gpus" in opts) == (p.num_gpus > 0)
        assert "resources" not in opts  # built-ins declare no extra resources
        assert opts["memory"] == p.memory_mb * 2**20 and isinstance(opts["memory"], int)


def test_ray_options_extras():
    p = get_device("rpi4")
    assert "memory" not in p.ray_options(include_memory=False)
    opts = p.ray_options(device_resource_amount=1)
    assert opts["resources"] == {"device:rpi4": 1.0}
    assert device_resource("jetson") == "device:jetson"


def test_profile_is_frozen_hashable_picklable():
    p = DeviceProfile(name="x", **_entry(resources={"a": 1.0}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.num_cpus = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.resources["b"] = 2.0  # type: ignore[index]
    assert hash(p) == hash(DeviceProfile(name="x", **_entry(resources={"a": 1.0})))
    q = pickle.loads(pickle.dumps(p))
    assert q == p and dict(q.resources) == {"a": 1.0}
    assert p.to_dict()["resources"] == {"a": 1.0}


# ------------------------------------------------------------------ assignment


def test_assign_devices_counts_and_determinism():
    mix = {"rpi4": 0.5, "phone": 0.5}
    a = assign_devices(10, mix, seed=0)
    assert len(a) == 10
    assert Counter(a) == {"rpi4": 5, "phone": 5}
    assert assign_devices(10, mix, seed=0) == a
    others = [assign_devices(10, mix, seed=s) for s in range(1, 6)]
    assert all(Counter(o) == Counter(a) for o in others)
    assert any(o != a for o in others)


def test_assign_devices_normalises_and_largest_remainder():
    # Weights 1:1:1 on 10 clients -> quotas 3.33 each; the one spare goes to the first listed.
    a = assign_devices(10, {"mcu": 1, "rpi4": 1, "laptop": 1}, seed=3)
    assert Counter(a) == {"mcu": 4, "rpi4": 3, "laptop": 3}
    # 0.7/0.2/0.1 on 7 clients -> quotas 4.9, 1.4, 0.7 -> floors 4,1,0, spares to 4.9 then 0.7.
    b = assign_devices(7, {"phone": 0.7, "jetson": 0.2, "edge_server": 0.1}, seed=1)
    assert Counter(b) == {"phone": 5, "jetson": 1, "edge_server": 1}
    # Zero-weight classes get nobody.
    c = assign_devices(5, {"rpi4": 1.0, "phone": 0.0}, seed=2)
    assert c == ["rpi4"] * 5
    assert assign_devices(0, {"rpi4": 1.0}, seed=0) == []


@pytest.mark.parametrize(
    "mix",
    [
        {"rpi4": -0.5, "phone": 1.0},
        {"rpi4": 0.0, "phone": 0.0},
        {"rpi4": float("nan")},
        {"rpi4": "half"},
        {},
    ],
)
def test_assign_devices_bad_fractions(mix):
    with pytest.raises(ConfigError, match="devices.mix"):
        assign_devices(4, mix, seed=0)


def test_assign_devices_unknown_class_lists_known():
    with pytest.raises(ConfigError) as ei:
        assign_devices(4, {"toaster": 1.0}, seed=0)
    msg = str(ei.value)
    assert "devices.mix" in msg and "toaster" in msg
    for name in list_devices():
        assert name in msg


def test_assign_devices_bad_num_clients():
    with pytest.raises(ConfigError):
        assign_devices(-1, {"rpi4": 1.0}, seed=0)


def test_get_device_unknown_lists_known():
    with pytest.raises(ConfigError) as ei:
        get_device("toaster")
    msg = str(ei.value)
    assert "devices.mix" in msg and "toaster" in msg
    assert all(name in msg for name in list_devices())


# ------------------------------------------------------------------ user catalogues


def test_user_catalog_adds_and_overrides(tmp_path):
    path = _write_catalog(
        tmp_path / "my.yaml",
        {
            "drone": _entry(description="quadcopter companion computer", resources={"camera": 1}),
            "rpi4": _entry(description="overclocked pi", peak_flops=6.0e10, efficiency=0.2),
        },
    )
    builtin = load_catalog()
    cat = load_catalog(path)
    assert set(cat) == set(builtin) | {"drone"}
    assert cat["drone"].description == "quadcopter companion computer"
    assert dict(cat["drone"].resources) == {"camera": 1.0}
    assert cat["rpi4"].peak_flops == 6.0e10 and cat["rpi4"].description == "overclocked pi"
    assert cat["phone"] == builtin["phone"]
    # The built-in catalogue itself is untouched.
    assert load_catalog()["rpi4"] == builtin["rpi4"]
    assert "drone" not in list_devices()
    # The custom class is usable everywhere a catalogue is accepted.
    assert get_device("drone", catalog=cat).name == "drone"
    assert Counter(assign_devices(4, {"drone": 1, "rpi4": 1}, seed=0, catalog=cat)) == {"drone": 2, "rpi4": 2}


def test_user_catalog_str_path(tmp_path):
    path = _write_catalog(tmp_path / "s.yaml", {"box": _entry()})
    assert "box" in load_catalog(str(path))


def test_missing_catalog_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as ei:
        load_catalog(missing)
    assert "devices.catalog" in str(ei.value) and str(missing) in str(ei.value)


@pytest.mark.parametrize(
    "entry, field",
    [
        ({k: v for k, v in _entry().items() if k != "peak_flops"}, "peak_flops"),
        ({k: v for k, v in _entry().items() if k != "description"}, "description"),
        (_entry(turbo=True), "turbo"),
        (_entry(peak_flops=0), "peak_flops"),
        (_entry(peak_flops=-1e9), "peak_flops"),
        (_entry(uplink_mbps=0), "uplink_mbps"),
        (_entry(downlink_mbps=-3), "downlink_mbps"),
        (_entry(efficiency=1.5), "efficiency"),
        (_entry(efficiency=0), "efficiency"),
        (_entry(num_cpus=-0.1), "num_cpus"),
        (_entry(num_gpus=-1), "num_gpus"),
        (_entry(num_gpus=1.5), "num_gpus"),
        (_entry(latency_ms=-1), "latency_ms"),
        (_entry(memory_mb=-1), "memory_mb"),
        (_entry(memory_mb=10.5), "memory_mb"),
        (_entry(num_cpus="two"), "num_cpus"),
        (_entry(efficiency=True), "efficiency"),
        (_entry(resources={"accel": -1}), "resources"),
        (_entry(resources=["accel"]), "resources"),
        (_entry(name="other"), "name"),
    ],
)
def test_bad_profile_names_file_device_and_field(tmp_path, entry, field):
    path = _write_catalog(tmp_path / "my.yaml", {"foo": entry})
    with pytest.raises(ConfigError) as ei:
        load_catalog(path)
    msg = str(ei.value)
    assert msg.startswith("devices.catalog: ")
    assert str(path) in msg
    assert "device 'foo'" in msg
    assert field in msg


def test_bad_profile_message_format(tmp_path):
    path = _write_catalog(tmp_path / "my.yaml", {"foo": _entry(efficiency=1.5)})
    with pytest.raises(ConfigError, match=r"device 'foo': efficiency must be in \(0, 1\], got 1\.5"):
        load_catalog(path)


def test_whole_gpus_above_one_are_fine(tmp_path):
    path = _write_catalog(tmp_path / "g.yaml", {"big": _entry(num_gpus=2)})
    assert load_catalog(path)["big"].num_gpus == 2.0


@pytest.mark.parametrize(
    "text",
    [
        "devices: [1, 2\n",  # invalid YAML
        "- just a list\n",  # wrong top level
        "machines: {}\n",  # wrong key
        "devices: {x: 3}\n",  # entry not a mapping
        "devices: {'9bad': {}}\n",  # bad class name
    ],
)
def test_malformed_catalog_files(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="devices.catalog"):
        load_catalog(path)


def test_yaml11_exponent_strings_are_numbers(tmp_path):
    """PyYAML reads `1e9` (no dot, no exponent sign) as a string; the loader accepts it."""
    path = tmp_path / "exp.yaml"
    path.write_text(
        "devices:\n"
        "  box:\n"
        "    description: box\n"
        "    num_cpus: 0.5\n"
        "    num_gpus: 0\n"
        "    memory_mb: 2048\n"
        "    peak_flops: 1e9\n"
        "    efficiency: 0.5\n"
        "    uplink_mbps: 1e1\n"
        "    downlink_mbps: 20\n"
        "    latency_ms: 5\n",
        encoding="utf-8",
    )
    p = load_catalog(path)["box"]
    assert p.peak_flops == 1e9 and p.uplink_mbps == 10.0 and p.memory_mb == 2048


# ------------------------------------------------------------------ cluster/ files stay in sync

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"


def _tickets(cls: str, n: int) -> tuple[int, int, int]:
    """CPU, GPU and memory (bytes) tickets a node hosting n clients of cls offers."""
    import math

    p = get_device(cls)
    cpus = max(1, math.ceil(n * p.num_cpus - 1e-9))
    gpus = math.ceil(n * p.num_gpus - 1e-9) if p.num_gpus > 0 else 0
    return cpus, gpus, n * p.memory_mb * 2**20


def test_cluster_launcher_node_types_match_catalog():
    cfg = yaml.safe_load((CLUSTER / "cluster.yaml").read_text(encoding="utf-8"))
    types = cfg["available_node_types"]
    seen = set()
    for tname, t in types.items():
        for key, n in t.get("resources", {}).items():
            if not key.startswith("device:"):
                continue
            cls = key.split(":", 1)[1]
            assert cls in list_devices(), (tname, key)
            seen.add(cls)
            if tname == cfg["head_node_type"]:
                continue
            cpus, gpus, mem = _tickets(cls, n)
            res = t["resources"]
            assert res["CPU"] == cpus and res.get("GPU", 0) == gpus, tname
            assert res.get("memory", mem) == mem, tname
    assert seen == set(list_devices())
    assert any("pip install -e ." in c for c in cfg["setup_commands"])


def test_kuberay_groups_match_catalog():
    import json

    doc = yaml.safe_load((CLUSTER / "kuberay-raycluster.yaml").read_text(encoding="utf-8"))
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    seen = set()
    for g in doc["spec"]["workerGroupSpecs"]:
        params = g["rayStartParams"]
        res = json.loads(json.loads(params["resources"]))
        ((key, n),) = res.items()
        cls = key.split(":", 1)[1]
        assert cls in list_devices()
        seen.add(cls)
        cpus, gpus, mem = _tickets(cls, n)
        assert int(params["num-cpus"]) == cpus, g["groupName"]
        assert int(params.get("num-gpus", 0)) == gpus, g["groupName"]
        assert int(params.get("memory", mem)) == mem, g["groupName"]
        for c in g["template"]["spec"]["containers"]:
            assert c["image"].startswith("rayproject/ray:2.60.0-py311")
            assert "limits" in c["resources"]
    assert seen == set(list_devices())


@pytest.mark.parametrize("script", ["start-head.sh", "start-worker.sh", "stop-node.sh"])
def test_cluster_scripts_parse(script):
    import subprocess

    subprocess.run(["bash", "-n", str(CLUSTER / script)], check=True)


def test_start_worker_dry_run(tmp_path):
    """Dry run only: prints the `ray start` command, starts nothing."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "SFP_DRY_RUN": "1", "SFP_PYTHON": sys.executable, "HOME": str(tmp_path)}
    env.pop("SFP_NUM_CPUS", None)
    env.pop("SFP_NUM_GPUS", None)
    env.pop("SFP_NODE_MEMORY_MB", None)
    out = subprocess.run(
        ["bash", str(CLUSTER / "start-worker.sh"), "10.0.0.1", "rpi4", "3"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    assert "--address=10.0.0.1:6379" in out
    assert '\\"device:rpi4\\":3' in out
    assert "--num-cpus=1 " in out and "--num-gpus=0 " in out
    # memory is the host's (Ray detects it); actors ask for their own estimates
    assert "--memory" not in out
    assert "RAY_AUTH_MODE=token" in out
    pinned = subprocess.run(
        ["bash", str(CLUSTER / "start-worker.sh"), "10.0.0.1", "rpi4", "3"],
        env={**env, "SFP_NODE_MEMORY_MB": "2048"}, capture_output=True, text=True, check=True,
    ).stdout
    assert f"--memory={2048 * 2**20}" in pinned
    bad = subprocess.run(
        ["bash", str(CLUSTER / "start-worker.sh"), "10.0.0.1", "toaster"],
        env=env, capture_output=True, text=True,
    )
    assert bad.returncode != 0 and "known classes" in bad.stderr and "rpi4" in bad.stderr
