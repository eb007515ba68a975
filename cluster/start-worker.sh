#!/usr/bin/env bash
# Join THIS machine to an sfp-ray cluster as a node standing for one device class.
#
# Usage:
#   cluster/start-worker.sh [--node-ip ADDR] HEAD_ADDR DEVICE_CLASS [COUNT] [extra `ray start` flags...]
#
#   --node-ip ADDR  the address of this machine's interface the cluster uses (Ray's
#                 --node-ip-address); default $SFP_NODE_IP, else Ray's own choice. It must be a
#                 non-loopback address of a local interface: use the private network's.
#   HEAD_ADDR     host:port of the head's GCS (port 6379 is assumed when left out)
#   DEVICE_CLASS  a class of sfp_ray/devices.yaml (mcu, rpi4, phone, jetson, laptop, edge_server)
#                 or of the user catalogue named by SFP_DEVICE_CATALOG
#   COUNT         how many simulated clients of that class this node may host (default 1)
#
# The node advertises the custom resource {"device:<class>": COUNT}; the simulator places a
# client actor of class X on a node offering device:X (one unit per client) when the cluster
# has such resources, and anywhere otherwise. By default the node also offers exactly the
# Ray scheduling tickets those COUNT clients ask for (see sfp_ray/devices.yaml):
#   --num-cpus = ceil(COUNT * num_cpus)   (at least 1)
#   --num-gpus = ceil(COUNT * num_gpus)   (0 for CPU-only classes, so no GPU is offered)
# These are tickets, not the device's real cores: physical speed is modelled by
# peak_flops x efficiency in simulated time. Memory is the host's: Ray detects it, and every
# actor asks for what it will hold (counted from the model and the method by sfp-ray), so
# Ray never places more actors on the node than its RAM holds.
#
# Environment (all optional):
#   SFP_NODE_IP                   same as --node-ip
#   SFP_NODE_NAME                 name of the node's pid file (default worker-<class>); stop-node.sh takes it
#   SFP_STATE_DIR                 pid file and log of the node (default ~/.sfp-ray)
#   SFP_START_TIMEOUT             seconds to wait for the node to come up (default 120)
#   SFP_NUM_CPUS / SFP_NUM_GPUS   override the CPU/GPU count ("auto" = let Ray detect)
#   SFP_NODE_MEMORY_MB            memory the node offers actors, in MiB (default "auto": Ray detects it)
#   SFP_DEVICE_CATALOG            extra device catalogue YAML (same as config key devices.catalog)
#   SFP_PYTHON                    Python with sfp_ray + ray installed (default: <repo>/.venv/bin/python)
#   SFP_DRY_RUN=1                 print the `ray start` command instead of running it
#   RAY_AUTH_MODE                 token (default here); anything else needs SFP_ALLOW_NO_AUTH=1
#   RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token   the head's token (see README.md)
#
# The node runs as one detached `ray start --block` process whose PID goes to
# $SFP_STATE_DIR/ray-<node name>.pid; cluster/stop-node.sh stops exactly that process.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

die() { echo "start-worker.sh: error: $*" >&2; exit 2; }
usage() {
    sed -n '3,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
# shellcheck source=cluster/node-lib.sh
source "$SCRIPT_DIR/node-lib.sh"

NODE_IP="${SFP_NODE_IP:-}"
if [[ $# -ge 1 ]]; then
    case "$1" in
        --node-ip) [[ $# -ge 2 ]] || die "--node-ip needs an address"; NODE_IP="$2"; shift 2 ;;
        --node-ip=*) NODE_IP="${1#--node-ip=}"; shift ;;
    esac
fi

[[ $# -ge 2 ]] || usage
HEAD_ADDR="$1"
DEVICE_CLASS="$2"
COUNT="${3:-1}"
shift $(( $# >= 3 ? 3 : 2 ))

[[ "$HEAD_ADDR" == *:* ]] || HEAD_ADDR="$HEAD_ADDR:6379"
[[ "$COUNT" =~ ^[1-9][0-9]*$ ]] || die "COUNT must be a positive whole number of clients, got '$COUNT'"

# --- tools -------------------------------------------------------------------------------
PYTHON="${SFP_PYTHON:-$REPO_ROOT/.venv/bin/python}"
if [[ ! -x "$PYTHON" ]]; then
    PYTHON="$(command -v python3 || true)"
fi
[[ -n "$PYTHON" && -x "$PYTHON" ]] || die "no Python found; set SFP_PYTHON to the interpreter that has sfp_ray and ray installed"
RAY="$(dirname "$PYTHON")/ray"
if [[ ! -x "$RAY" ]]; then
    RAY="$(command -v ray || true)"
fi
[[ -n "$RAY" ]] || die "the 'ray' command was not found next to $PYTHON nor on PATH"
if [[ -n "$NODE_IP" ]]; then
    check_node_ip "$PYTHON" "$NODE_IP"
fi

# --- device class -> tickets ---------------------------------------------------------------
# Prints: num_cpus num_gpus memory_mib resources_json ; exits non-zero for an unknown class.
CLASS_INFO="$(
    cd "$REPO_ROOT" && SFP_CLASS="$DEVICE_CLASS" SFP_COUNT="$COUNT" \
    PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" - <<'PY'
import json, math, os, sys
from sfp_ray.devices import device_resource, load_catalog
from sfp_ray.errors import ConfigError
try:
    catalog = load_catalog(os.environ.get("SFP_DEVICE_CATALOG") or None)
except ConfigError as exc:
    sys.exit(f"start-worker.sh: error: {exc}")
cls, n = os.environ["SFP_CLASS"], int(os.environ["SFP_COUNT"])
if cls not in catalog:
    sys.exit(f"start-worker.sh: error: unknown device class {cls!r}; known classes: {', '.join(catalog)}")
p = catalog[cls]
eps = 1e-9  # 4 x 0.25 must give 1, not 2
cpus = max(1, math.ceil(n * p.num_cpus - eps))
gpus = math.ceil(n * p.num_gpus - eps) if p.num_gpus > 0 else 0
res = dict(p.resources)
for k, v in res.items():
    res[k] = v * n
res[device_resource(cls)] = n
print(cpus, gpus, n * p.memory_mb, json.dumps(res, separators=(",", ":")))
PY
)" || exit 2
read -r DEF_CPUS DEF_GPUS DEF_MEM_MB NODE_RESOURCES <<<"$CLASS_INFO"
[[ -n "${NODE_RESOURCES:-}" ]] || die "could not read device class '$DEVICE_CLASS' from the catalogue"

NUM_CPUS="${SFP_NUM_CPUS:-$DEF_CPUS}"
NUM_GPUS="${SFP_NUM_GPUS:-$DEF_GPUS}"
MEM_MB="${SFP_NODE_MEMORY_MB:-auto}"  # the host's; not COUNT x the device's memory_mb (DEF_MEM_MB)

CMD=("$RAY" start --address="$HEAD_ADDR" --resources="$NODE_RESOURCES" --disable-usage-stats)
[[ -n "$NODE_IP" ]] && CMD+=(--node-ip-address="$NODE_IP")
if [[ "$NUM_CPUS" != "auto" ]]; then
    [[ "$NUM_CPUS" =~ ^[0-9]+$ ]] || die "SFP_NUM_CPUS must be a whole number or 'auto', got '$NUM_CPUS'"
    CMD+=(--num-cpus="$NUM_CPUS")
fi
if [[ "$NUM_GPUS" != "auto" ]]; then
    [[ "$NUM_GPUS" =~ ^[0-9]+$ ]] || die "SFP_NUM_GPUS must be a whole number or 'auto', got '$NUM_GPUS'"
    CMD+=(--num-gpus="$NUM_GPUS")
fi
if [[ "$NUM_GPUS" =~ ^[0-9]+$ && "$NUM_GPUS" -gt 0 ]]; then
    HAVE_GPUS=0
    if command -v nvidia-smi >/dev/null 2>&1; then
        HAVE_GPUS="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)"
    fi
    if [[ "$HAVE_GPUS" -lt "$NUM_GPUS" ]]; then
        echo "start-worker.sh: WARNING: offering $NUM_GPUS GPU(s) for $COUNT '$DEVICE_CLASS' client(s)," \
             "but nvidia-smi sees $HAVE_GPUS here; lower COUNT or set SFP_NUM_GPUS." >&2
    fi
fi
if [[ "$MEM_MB" != "auto" ]]; then
    [[ "$MEM_MB" =~ ^[0-9]+$ ]] || die "SFP_NODE_MEMORY_MB must be a whole number of MiB or 'auto', got '$MEM_MB'"
    CMD+=(--memory="$(( MEM_MB * 1024 * 1024 ))")
fi
CMD+=("$@")

# --- worker priority ------------------------------------------------------------------------
# Ray starts worker processes at nice 15; actors emulating devices should not lose the CPU to any
# other process on the node (an actor at nice 15 next to a busy nice-0 process gets ~1/28 of its
# share). RAY_worker_niceness set in the environment is kept.
export RAY_worker_niceness="${RAY_worker_niceness:-0}"

# --- token authentication ----------------------------------------------------------------
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
if [[ "$RAY_AUTH_MODE" != "token" ]]; then
    [[ "${SFP_ALLOW_NO_AUTH:-}" == "1" ]] || die "RAY_AUTH_MODE=$RAY_AUTH_MODE turns token authentication off.
  Unset it (token is the default here), or, on an isolated network only, also set SFP_ALLOW_NO_AUTH=1
  (the head must have been started the same way)."
    echo "start-worker.sh: WARNING: RAY_AUTH_MODE=$RAY_AUTH_MODE -- token authentication is OFF." >&2
elif [[ -z "${SFP_DRY_RUN:-}" ]]; then
    if ! "$RAY" get-auth-token >/dev/null 2>&1; then
        die "token authentication is on (RAY_AUTH_MODE=token) but no token was found on this machine.
  Copy the head's token file to ~/.ray/auth_token here (chmod 600), or
  export RAY_AUTH_TOKEN=<output of 'ray get-auth-token' on the head>, or
  export RAY_AUTH_TOKEN_PATH=/path/to/token."
    fi
    for f in "${RAY_AUTH_TOKEN_PATH:-}" "$HOME/.ray/auth_token"; do
        if [[ -n "$f" && -f "$f" && -n "$(find "$f" -perm /077 2>/dev/null)" ]]; then
            echo "start-worker.sh: WARNING: $f is accessible to other users (a token is a secret); run: chmod 600 $f" >&2
        fi
    done
fi

NODE_NAME="${SFP_NODE_NAME:-worker-$DEVICE_CLASS}"
if [[ -n "${SFP_DRY_RUN:-}" ]]; then
    echo "RAY_AUTH_MODE=$RAY_AUTH_MODE"
    echo "RAY_worker_niceness=$RAY_worker_niceness"
    printf '%q ' "${CMD[@]}" --block
    echo
    echo "pid file: $(node_pidfile "$NODE_NAME")"
    exit 0
fi

launch_node "$NODE_NAME" "${CMD[@]}"
echo
echo "Node joined $HEAD_ADDR as device class '$DEVICE_CLASS' hosting up to $COUNT client(s): resources $NODE_RESOURCES"
echo "Check with: ray status --address $HEAD_ADDR"
echo "Stop with:  cluster/stop-node.sh $NODE_NAME      (stops only this node's processes, by PID)"
