#!/usr/bin/env bash
# Start the Ray head node of an sfp-ray cluster on THIS machine.
#
# Usage:
#   cluster/start-head.sh [--node-ip ADDR] [extra `ray start` flags...]
#
#   --node-ip ADDR         the address of this machine's interface the cluster uses (Ray's
#                          --node-ip-address: the address recorded for this node, which workers
#                          and drivers connect to); default $SFP_NODE_IP, else Ray's own choice.
#                          It must be a non-loopback address of a local interface: use the private network's.
#
# Environment (all optional):
#   SFP_NODE_IP            same as --node-ip
#   SFP_NUM_CPUS           CPUs the head offers to Ray          (default: nproc)
#   SFP_NUM_GPUS           GPUs the head offers to Ray          (default: count from nvidia-smi, else 0)
#   SFP_DEVICE_RESOURCES   JSON custom resources of the head    (default: {"device:edge_server": 1})
#                          Keys "device:<class>" must name a class of sfp_ray/devices.yaml (or of
#                          SFP_DEVICE_CATALOG); the value is how many clients of that class the
#                          head may host. Use '{}' for a head that hosts only server/aggregator.
#   SFP_DEVICE_CATALOG     extra device catalogue YAML (same as config key devices.catalog)
#   SFP_RAY_PORT           GCS port                              (default: 6379)
#   SFP_DASHBOARD          "true" to start the Ray dashboard     (default: false: no dashboard)
#   SFP_DASHBOARD_HOST     where the dashboard listens when on   (default: 127.0.0.1, this machine only)
#   SFP_STATE_DIR          pid file and log of the node          (default: ~/.sfp-ray)
#   SFP_START_TIMEOUT      seconds to wait for the node to come up (default: 120)
#   SFP_PYTHON             Python with sfp_ray + ray installed   (default: <repo>/.venv/bin/python)
#   SFP_DRY_RUN=1          print the `ray start` command instead of running it
#   RAY_AUTH_MODE          token (the default here; anything else needs SFP_ALLOW_NO_AUTH=1)
#
# Token authentication: Ray 2.60 turns token auth on by default only for clusters started by
# ray.init(); a `ray start` cluster gets it only when RAY_AUTH_MODE=token is set (or a token
# already exists). This script keeps it ON: it sets RAY_AUTH_MODE=token and makes sure a token
# exists (`ray get-auth-token --generate` writes ~/.ray/auth_token; the script makes the file
# readable by its owner only). Ray looks for the token in RAY_AUTH_TOKEN, then the file named by
# RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token. Every worker node and every driver connecting
# with an explicit address needs RAY_AUTH_MODE=token and the same token (cluster/README.md).
#
# The node runs as one detached `ray start --block` process whose PID goes to
# $SFP_STATE_DIR/ray-head-<port>.pid; cluster/stop-node.sh stops exactly that process.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

die() { echo "start-head.sh: error: $*" >&2; exit 2; }
# shellcheck source=cluster/node-lib.sh
source "$SCRIPT_DIR/node-lib.sh"

NODE_IP="${SFP_NODE_IP:-}"
if [[ $# -ge 1 ]]; then
    case "$1" in
        --node-ip) [[ $# -ge 2 ]] || die "--node-ip needs an address"; NODE_IP="$2"; shift 2 ;;
        --node-ip=*) NODE_IP="${1#--node-ip=}"; shift ;;
    esac
fi

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

# --- resources ---------------------------------------------------------------------------
detect_gpus() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
    else
        echo 0
    fi
}

NUM_CPUS="${SFP_NUM_CPUS:-$(nproc)}"
NUM_GPUS="${SFP_NUM_GPUS:-$(detect_gpus)}"
PORT="${SFP_RAY_PORT:-6379}"
DASHBOARD="${SFP_DASHBOARD:-false}"
DASHBOARD_HOST="${SFP_DASHBOARD_HOST:-127.0.0.1}"
DEFAULT_DEVICE_RESOURCES='{"device:edge_server": 1}'
DEVICE_RESOURCES="${SFP_DEVICE_RESOURCES:-$DEFAULT_DEVICE_RESOURCES}"

[[ "$NUM_CPUS" =~ ^[0-9]+$ ]] || die "SFP_NUM_CPUS must be a whole number (ray start --num-cpus takes an integer), got '$NUM_CPUS'"
[[ "$NUM_GPUS" =~ ^[0-9]+$ ]] || die "SFP_NUM_GPUS must be a whole number, got '$NUM_GPUS'"
[[ "$PORT" =~ ^[0-9]+$ ]] || die "SFP_RAY_PORT must be a port number, got '$PORT'"
case "$DASHBOARD" in true|false) ;; *) die "SFP_DASHBOARD must be true or false, got '$DASHBOARD'" ;; esac
if [[ -n "$NODE_IP" ]]; then
    check_node_ip "$PYTHON" "$NODE_IP"
fi

# Validate the JSON and the device classes it names; print it back in canonical form.
DEVICE_RESOURCES="$(
    cd "$REPO_ROOT" && SFP_RES="$DEVICE_RESOURCES" PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" - <<'PY'
import json, math, os, sys
from sfp_ray.devices import DEVICE_RESOURCE_PREFIX, load_catalog
raw = os.environ["SFP_RES"]
try:
    res = json.loads(raw)
except ValueError as exc:
    sys.exit(f"start-head.sh: error: SFP_DEVICE_RESOURCES is not valid JSON ({exc}): {raw}")
if not isinstance(res, dict):
    sys.exit("start-head.sh: error: SFP_DEVICE_RESOURCES must be a JSON object, e.g. {\"device:edge_server\": 1}")
catalog = load_catalog(os.environ.get("SFP_DEVICE_CATALOG") or None)
for key, val in res.items():
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val) or val < 0:
        sys.exit(f"start-head.sh: error: SFP_DEVICE_RESOURCES[{key!r}] must be a number >= 0, got {val!r}")
    if key.startswith(DEVICE_RESOURCE_PREFIX):
        cls = key[len(DEVICE_RESOURCE_PREFIX):]
        if cls not in catalog:
            sys.exit(f"start-head.sh: error: SFP_DEVICE_RESOURCES: unknown device class {cls!r}; "
                     f"known classes: {', '.join(catalog)}")
print(json.dumps(res))
PY
)" || exit 2

# --- worker priority ------------------------------------------------------------------------
# Ray starts worker processes at nice 15; actors emulating devices should not lose the CPU to any
# other process on the node (an actor at nice 15 next to a busy nice-0 process gets ~1/28 of its
# share). RAY_worker_niceness set in the environment is kept.
export RAY_worker_niceness="${RAY_worker_niceness:-0}"

# --- token authentication ----------------------------------------------------------------
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
TOKEN_WHERE=""
if [[ "$RAY_AUTH_MODE" == "token" ]]; then
    if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
        TOKEN_WHERE="the RAY_AUTH_TOKEN environment variable of this shell"
    elif [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
        [[ -s "$RAY_AUTH_TOKEN_PATH" ]] || die "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH does not exist or is empty"
        TOKEN_WHERE="$RAY_AUTH_TOKEN_PATH (RAY_AUTH_TOKEN_PATH)"
    else
        TOKEN_WHERE="$HOME/.ray/auth_token"
        if [[ -z "${SFP_DRY_RUN:-}" ]]; then
            # Creates ~/.ray/auth_token only when no token exists; prints the token, which we discard.
            ( umask 077; "$RAY" get-auth-token --generate >/dev/null )
            chmod 600 "$HOME/.ray/auth_token"  # a token readable by other users of the machine is no secret
        fi
    fi
elif [[ "${SFP_ALLOW_NO_AUTH:-}" == "1" ]]; then
    echo "start-head.sh: WARNING: RAY_AUTH_MODE=$RAY_AUTH_MODE -- token authentication is OFF;" \
         "anyone who can reach port $PORT can run code on this cluster." >&2
else
    die "RAY_AUTH_MODE=$RAY_AUTH_MODE turns token authentication off, and then anyone who can reach port $PORT
  can run code on this cluster. Unset RAY_AUTH_MODE (token is the default here), or, on an isolated
  network only, also set SFP_ALLOW_NO_AUTH=1."
fi

# --- start -------------------------------------------------------------------------------
CMD=(
    "$RAY" start --head
    --port="$PORT"
    --num-cpus="$NUM_CPUS"
    --num-gpus="$NUM_GPUS"
    --resources="$DEVICE_RESOURCES"
    --include-dashboard="$DASHBOARD"
    --disable-usage-stats
)
[[ -n "$NODE_IP" ]] && CMD+=(--node-ip-address="$NODE_IP")
[[ "$DASHBOARD" == "true" ]] && CMD+=(--dashboard-host="$DASHBOARD_HOST")
CMD+=("$@")
NODE_NAME="head-$PORT"

if [[ -n "${SFP_DRY_RUN:-}" ]]; then
    echo "RAY_AUTH_MODE=$RAY_AUTH_MODE"
    echo "RAY_worker_niceness=$RAY_worker_niceness"
    printf '%q ' "${CMD[@]}" --block
    echo
    echo "pid file: $(node_pidfile "$NODE_NAME")"
    exit 0
fi

launch_node "$NODE_NAME" "${CMD[@]}"

HEAD_IP="${NODE_IP:-$(hostname -I 2>/dev/null | awk '{print $1}')}"
HEAD_IP="${HEAD_IP:-$(hostname)}"
cat <<EOF

sfp-ray head is up at ${HEAD_IP}:${PORT}
  CPUs=${NUM_CPUS} GPUs=${NUM_GPUS} custom resources=${DEVICE_RESOURCES}

Add a worker node per device class (run on that machine):
  cluster/start-worker.sh ${HEAD_IP}:${PORT} <class> [count]      classes: $(PYTHONPATH="$REPO_ROOT" "$PYTHON" -c 'from sfp_ray.devices import list_devices; print(*list_devices())' 2>/dev/null)
Check:  ray status --address ${HEAD_IP}:${PORT}
Stop:   cluster/stop-node.sh ${NODE_NAME}      (stops only this node's processes, by PID)
Run:    sfp-ray run --executor ray --address auto        (on this node)
        sfp-ray run --executor ray --address ${HEAD_IP}:${PORT}   (elsewhere)
EOF
if [[ "$RAY_AUTH_MODE" == "token" ]]; then
    cat <<EOF

Token authentication is ON (RAY_AUTH_MODE=token). The token is in: ${TOKEN_WHERE}
Every worker node and every remote driver needs, before 'ray start' / 'sfp-ray run':
  export RAY_AUTH_MODE=token
  and the same token, either copied to ~/.ray/auth_token on that machine (chmod 600),
  or exported as RAY_AUTH_TOKEN=\$(ray get-auth-token)   (print it here with: ray get-auth-token)
  or referenced by RAY_AUTH_TOKEN_PATH=/path/to/token.
Keep the token secret; token auth does not encrypt traffic, so use a private network or TLS.
EOF
fi
