#!/usr/bin/env bash
# Stop the Ray node(s) that start-head.sh / start-worker.sh started on THIS machine.
#
# Usage:
#   cluster/stop-node.sh [--force] [--timeout SECONDS] [NODE ...]
#
#   NODE       a node name as the start scripts print it (head-6379, worker-rpi4, ...), or the
#              path of its pid file; default: every node with a pid file in $SFP_STATE_DIR
#   --timeout  seconds to wait for a node to stop after SIGTERM (default 60; Ray drains a node
#              for up to RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S = 30 s before stopping it)
#   --force    send SIGKILL to a node still running after the timeout
#
# Each node is one `ray start --block` process whose PID the start script wrote to
# $SFP_STATE_DIR/ray-<node>.pid (default ~/.sfp-ray). This script signals that PID only,
# after checking that it still is a `ray start ... --block` process (a reused PID is left
# alone). On SIGTERM, Ray drains the node and stops the processes it started; after SIGKILL,
# Linux kills them (Ray starts them fate-shared with that process). It never runs `ray stop`,
# which would kill every Ray process on the machine, other people's included.
#
# Stopping the head ends the whole cluster; stop the workers first for a clean shutdown.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cluster/node-lib.sh
source "$SCRIPT_DIR/node-lib.sh"

die() { echo "stop-node.sh: error: $*" >&2; exit 2; }

FORCE=0
TIMEOUT=60
NODES=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --force|-f) FORCE=1 ;;
        --timeout) [[ $# -ge 2 ]] || die "--timeout needs a number of seconds"; TIMEOUT="$2"; shift ;;
        --timeout=*) TIMEOUT="${1#--timeout=}" ;;
        -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *) NODES+=("$1") ;;
    esac
    shift
done
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout must be a whole number of seconds, got '$TIMEOUT'"

PIDFILES=()
if [[ ${#NODES[@]} -eq 0 ]]; then
    shopt -s nullglob
    PIDFILES=("$SFP_STATE_DIR"/ray-*.pid)
    shopt -u nullglob
    [[ ${#PIDFILES[@]} -gt 0 ]] || { echo "stop-node.sh: no node started by the cluster scripts here (no pid file in $SFP_STATE_DIR)"; exit 0; }
else
    for n in "${NODES[@]}"; do
        if [[ "$n" == */* || "$n" == *.pid ]]; then PIDFILES+=("$n"); else PIDFILES+=("$(node_pidfile "$n")"); fi
    done
fi

status=0
for pidfile in "${PIDFILES[@]}"; do
    if [[ ! -f "$pidfile" ]]; then
        echo "stop-node.sh: $pidfile: no such pid file" >&2
        status=1
        continue
    fi
    pid="$(tr -d '[:space:]' <"$pidfile")"
    if [[ ! "$pid" =~ ^[0-9]+$ ]]; then
        echo "stop-node.sh: $pidfile does not hold a PID; removed" >&2
        rm -f "$pidfile"
        status=1
        continue
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "$pidfile: pid $pid is not running (already stopped); pid file removed"
        rm -f "$pidfile"
        continue
    fi
    if ! is_our_ray "$pid"; then
        echo "stop-node.sh: pid $pid of $pidfile is not a 'ray start --block' process any more" \
             "(the PID was reused); left alone, pid file removed" >&2
        rm -f "$pidfile"
        status=1
        continue
    fi
    echo "stopping pid $pid ($pidfile) with SIGTERM ..."
    kill -TERM "$pid"
    waited=0
    while kill -0 "$pid" 2>/dev/null && (( waited < TIMEOUT )); do
        sleep 1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        if [[ "$FORCE" -eq 1 ]]; then
            echo "pid $pid still running after ${TIMEOUT}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        else
            echo "stop-node.sh: pid $pid still running after ${TIMEOUT}s; rerun with --force to SIGKILL it" >&2
            status=1
            continue
        fi
    fi
    rm -f "$pidfile"
    echo "stopped pid $pid"
done
exit "$status"
