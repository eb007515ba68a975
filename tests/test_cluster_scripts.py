"""The cluster scripts' security defaults, without starting Ray.

* nothing in the repository runs ``ray stop`` (it kills every Ray process on a machine);
* ``start-head.sh`` / ``start-worker.sh`` (dry runs) keep token authentication on, the
  dashboard off unless asked for, take the node's IP and refuse one that is not local;
* ``stop-node.sh`` signals only the PID a start script recorded, and only while it still is a
  ``ray start --block`` process.
"""

from __future__ import annotations

import ast
import ipaddress
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: the scripts start processes (sleepers standing in for Ray nodes, bash, git)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"

#: ``ray stop`` as a shell command: ``ray stop``, ``/path/to/ray stop``, ``"$RAY" stop``, ``${RAY} stop``.
RAY_STOP = re.compile(r"""(^|[\s;&|(`'"/])(ray|\$\{?RAY\}?)["']?\s+stop\b""")
SHELL_LIKE = {".sh", ".bash", ".yaml", ".yml", ".cfg", ".toml", ".ini", ".txt"}


def _tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if line and (ROOT / line).is_file()]


def _where(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _shell_stops(path: Path) -> list[str]:
    """Lines of a script or config that would run ``ray stop`` (comments and echoed text aside)."""
    hits = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        code = re.sub(r"\s#.*$", "", line)  # a trailing comment
        code = re.sub(r"""(echo|printf)\s+(["']).*?\2""", "", code)  # a message that mentions it
        if RAY_STOP.search(code):
            hits.append(f"{_where(path)}:{n}: {line.strip()}")
    return hits


#: Functions that run a command line given as a string.
RUNNERS = {"run", "Popen", "call", "check_call", "check_output", "system", "popen", "getoutput", "getstatusoutput"}


def _func_name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _python_stops(path: Path) -> list[str]:
    """Calls in Python code that would run ``ray stop`` (a command string or an argv list)."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, (ast.List, ast.Tuple)):
            words = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            for a, b in zip(words, words[1:]):
                if a.endswith("ray") and b == "stop":
                    hits.append(f"{_where(path)}:{node.lineno}: argv {words}")
        elif isinstance(node, ast.Call) and _func_name(node.func) in RUNNERS:
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and RAY_STOP.search(arg.value):
                    hits.append(f"{_where(path)}:{node.lineno}: {arg.value!r}")
    return hits


def test_the_ray_stop_detector_works(tmp_path):
    script = tmp_path / "x.sh"
    script.write_text('#!/bin/sh\n# ray stop in a comment is fine\necho "never ray stop"\n"$RAY" stop --force\n')
    assert len(_shell_stops(script)) == 1
    yaml = tmp_path / "c.yaml"
    yaml.write_text("head_start_ray_commands:\n  - ray stop\n  - ray start --head\n")
    assert len(_shell_stops(yaml)) == 1
    py = tmp_path / "x.py"
    py.write_text('import subprocess\n"""never ray stop"""\nprint("ray stop")\nsubprocess.run(["ray", "stop"])\n'
                  'os.system("ray stop")\nsubprocess.run("/opt/bin/ray stop --force", shell=True)\n')
    assert len(_python_stops(py)) == 3


def test_nothing_in_the_repository_runs_ray_stop():
    hits = []
    for path in _tracked_files():
        if path.suffix == ".py":
            hits += _python_stops(path)
        elif path.suffix in SHELL_LIKE or path.name in ("Makefile", "Dockerfile") or path.parent.name == ".ci":
            hits += _shell_stops(path)
    assert hits == []


# --------------------------------------------------------------------------- start scripts (dry runs)


def _run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SFP_", "RAY_AUTH"))}
    full.update(SFP_PYTHON=sys.executable, SFP_DRY_RUN="1", **env)
    return subprocess.run(["bash", str(CLUSTER / script), *args], capture_output=True, text=True, env=full,
                          timeout=120)


def test_head_defaults_token_auth_on_and_no_dashboard():
    r = _run("start-head.sh")
    assert r.returncode == 0, r.stderr
    assert "RAY_AUTH_MODE=token" in r.stdout
    assert "RAY_worker_niceness=0" in r.stdout  # actors at the driver's priority, not Ray's nice 15
    assert _run("start-head.sh", RAY_worker_niceness="5").stdout.count("RAY_worker_niceness=5") == 1
    assert "--include-dashboard=false" in r.stdout and "--dashboard-host" not in r.stdout
    assert "--block" in r.stdout  # one process to stop by PID


def test_head_dashboard_only_when_asked_and_on_localhost():
    r = _run("start-head.sh", SFP_DASHBOARD="true")
    assert r.returncode == 0, r.stderr
    assert "--include-dashboard=true" in r.stdout and "--dashboard-host=127.0.0.1" in r.stdout


def _local_ip() -> str | None:
    """A non-loopback IPv4 address of this machine (one a socket can bind), or None."""
    for family, _, _, _, addr in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
        ip = addr[0]
        if not ipaddress.ip_address(ip).is_loopback:
            try:
                with socket.socket(family) as s:
                    s.bind((ip, 0))
                return ip
            except OSError:
                continue
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    return next((ip for ip in out if ipaddress.ip_address(ip).version == 4), None)


@pytest.mark.parametrize("script, args", [("start-head.sh", ()), ("start-worker.sh", ("10.1.2.3:6379", "rpi4", "2"))])
def test_scripts_take_the_node_ip(script, args):
    ip = _local_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    r = _run(script, "--node-ip", ip, *args)
    assert r.returncode == 0, r.stderr
    assert f"--node-ip-address={ip}" in r.stdout
    assert f"--node-ip-address={ip}" in _run(script, *args, SFP_NODE_IP=ip).stdout
    bad = _run(script, "--node-ip", "198.51.100.254", *args)  # TEST-NET-2: not an address of this machine
    assert bad.returncode == 2 and "198.51.100.254" in bad.stderr and "not an address of this machine" in bad.stderr
    loop = _run(script, "--node-ip=127.0.0.1", *args)  # Ray would replace it with an address of its choosing
    assert loop.returncode == 2 and "loopback" in loop.stderr
    assert _run(script, "--node-ip=not-an-ip", *args).returncode == 2


@pytest.mark.parametrize("script, args", [("start-head.sh", ()), ("start-worker.sh", ("10.1.2.3:6379", "rpi4"))])
def test_scripts_refuse_to_turn_token_auth_off(script, args):
    r = _run(script, *args, RAY_AUTH_MODE="disabled")
    assert r.returncode == 2 and "SFP_ALLOW_NO_AUTH" in r.stderr
    r = _run(script, *args, RAY_AUTH_MODE="disabled", SFP_ALLOW_NO_AUTH="1")
    assert r.returncode == 0 and "WARNING" in r.stderr


# --------------------------------------------------------------------------- stop-node.sh


def _sleeper(*argv: str) -> subprocess.Popen:
    """A process whose command line reads ``... ray start --block`` (or other words) but only sleeps."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", *argv])


def _stop(state: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFP_")}
    env["SFP_STATE_DIR"] = str(state)
    return subprocess.Popen(["bash", str(CLUSTER / "stop-node.sh"), "--timeout", "20", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_reaping(proc: subprocess.Popen, children: list[subprocess.Popen]) -> tuple[int, str, str]:
    """Wait for ``proc`` while reaping ``children`` (a killed child stays a zombie, alive to ``kill -0``)."""
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        for c in children:
            c.poll()
        time.sleep(0.05)
    out, err = proc.communicate(timeout=5)
    return proc.returncode, out, err


def test_stop_node_stops_only_the_recorded_ray_process(tmp_path):
    node = _sleeper("ray", "start", "--head", "--block")
    bystander = _sleeper("ray", "start", "--head", "--block")  # another Ray on the machine: no pid file
    not_ray = _sleeper("something", "else")  # the recorded PID now belongs to another program
    try:
        (tmp_path / "ray-head-6379.pid").write_text(f"{node.pid}\n")
        (tmp_path / "ray-worker-rpi4.pid").write_text(f"{not_ray.pid}\n")
        time.sleep(0.3)
        rc, out, err = _wait_reaping(_stop(tmp_path), [node, bystander, not_ray])
        assert node.poll() is not None, (out, err)  # stopped
        assert bystander.poll() is None and not_ray.poll() is None  # untouched
        assert rc == 1 and "reused" in err
        assert not list(tmp_path.glob("*.pid"))
        rc, out, _ = _wait_reaping(_stop(tmp_path), [])
        assert rc == 0 and "no node" in out
    finally:
        for p in (node, bystander, not_ray):
            if p.poll() is None:
                p.kill()
            p.wait()


def test_stop_node_by_name_and_stale_pid_file(tmp_path):
    node = _sleeper("ray", "start", "--address=x:6379", "--block")
    try:
        (tmp_path / "ray-worker-rpi4.pid").write_text(f"{node.pid}\n")
        (tmp_path / "ray-worker-phone.pid").write_text("999999999\n")  # no such process
        rc, out, err = _wait_reaping(_stop(tmp_path, "worker-phone"), [node])
        assert rc == 0 and "not running" in out and node.poll() is None
        rc, out, err = _wait_reaping(_stop(tmp_path, "worker-rpi4"), [node])
        assert rc == 0 and node.poll() is not None, (out, err)
    finally:
        if node.poll() is None:
            node.kill()
        node.wait()
