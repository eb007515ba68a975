# Shared by start-head.sh, start-worker.sh and stop-node.sh (sourced, not run).
#
# A node is started as ONE foreground `ray start ... --block` process, detached from the
# terminal, whose PID is written to a pid file under $SFP_STATE_DIR (default ~/.sfp-ray).
# That process owns every Ray process of the node: on SIGTERM it drains the node and stops
# the processes it started, and on Linux the processes it started are killed by the kernel
# when it dies (Ray's fate sharing), so stop-node.sh stops a node by signalling that one PID.
# Nothing here runs `ray stop`, which would kill every Ray process on the machine.

SFP_STATE_DIR="${SFP_STATE_DIR:-$HOME/.sfp-ray}"
SFP_WHO="$(basename "$0")"

# node_pidfile NAME -> path of the pid file of node NAME (e.g. head-6379, worker-rpi4)
node_pidfile() { echo "$SFP_STATE_DIR/ray-$1.pid"; }

# is_our_ray PID -> success when PID is alive and is a `ray start ... --block` process
is_our_ray() {
    local pid="$1" args
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r "/proc/$pid/cmdline" ]]; then
        args="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
    else
        args="$(ps -o args= -p "$pid" 2>/dev/null || true)"
    fi
    [[ " $args " == *"ray start "*" --block "* ]]
}

# check_node_ip PYTHON IP -> dies unless IP is an address of one of this machine's interfaces
check_node_ip() {
    SFP_WHO="$SFP_WHO" SFP_IP="$2" "$1" - <<'PY' || exit 2
import ipaddress, os, socket, sys
ip, who = os.environ["SFP_IP"], os.environ["SFP_WHO"]
try:
    addr = ipaddress.ip_address(ip)
except ValueError:
    sys.exit(f"{who}: error: node IP {ip!r} is not an IP address (give the address of the interface to use)")
if addr.is_loopback:
    sys.exit(f"{who}: error: node IP {ip} is a loopback address, which Ray replaces with an address of its own "
             "choosing; give the address of the interface the cluster's machines reach this one on")
try:
    with socket.socket(socket.AF_INET6 if addr.version == 6 else socket.AF_INET) as s:
        s.bind((ip, 0))  # only an address of a local interface can be bound
except OSError as exc:
    sys.exit(f"{who}: error: node IP {ip} is not an address of this machine ({exc.strerror})")
PY
}

# launch_node NAME CMD... -> runs `CMD --block` detached, records its PID, waits until
# Ray reports it started (or dies with the log's last lines)
launch_node() {
    local name="$1" pidfile log pid waited=0 timeout="${SFP_START_TIMEOUT:-120}"
    shift
    pidfile="$(node_pidfile "$name")"
    log="$SFP_STATE_DIR/ray-$name.log"
    mkdir -p "$SFP_STATE_DIR"
    chmod 700 "$SFP_STATE_DIR"
    if [[ -s "$pidfile" ]] && is_our_ray "$(cat "$pidfile")"; then
        echo "$SFP_WHO: error: node '$name' is already running (pid $(cat "$pidfile")); stop it with cluster/stop-node.sh $name" >&2
        exit 2
    fi
    local detach=()
    command -v setsid >/dev/null 2>&1 && detach=(setsid)
    ${detach[@]+"${detach[@]}"} nohup "$@" --block >"$log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pidfile"
    until grep -q "Ray runtime started" "$log" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$pidfile"
            echo "$SFP_WHO: error: 'ray start' exited before the node came up; last lines of $log:" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        if (( waited >= timeout )); then
            echo "$SFP_WHO: error: the node did not come up within ${timeout}s (SFP_START_TIMEOUT); it is still" \
                 "running as pid $pid -- see $log, stop it with cluster/stop-node.sh $name" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "node '$name' started: pid $pid (pid file $pidfile, log $log)"
}
