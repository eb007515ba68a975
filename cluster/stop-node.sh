#!/usr/bin/env bash
# Stop Ray on THIS node (head or worker) of an sfp-ray cluster.
#
# Usage:
#   cluster/stop-node.sh --yes [--force]
#
# WARNING -- read before running:
#   `ray stop` does not know which cluster a process belongs to. It terminates every Ray
#   process it can find on this machine (GCS, raylet, workers, dashboard, drivers' workers),
#   including those of other Ray clusters and of other people's jobs that your user may signal.
#   Run this script only on a machine that is yours and dedicated to this cluster (a node you
#   started with start-head.sh / start-worker.sh). NEVER run it on a shared login node, a shared
#   workstation or CI runner, or any machine where someone else may be running Ray: you will kill
#   their work too. To leave a shared cluster, ask its owner, or drain your own node with
#   `ray drain-node` from the head.
#
# Stopping the head ends the whole cluster: workers lose their GCS and shut down after a
# timeout. Stop workers first if you want a clean shutdown.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

YES=0
FORCE=()
for arg in "$@"; do
    case "$arg" in
        --yes|-y) YES=1 ;;
        --force|-f) FORCE=(--force) ;;   # SIGKILL instead of SIGTERM
        -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "stop-node.sh: error: unknown argument '$arg' (use --yes [--force])" >&2; exit 2 ;;
    esac
done

if [[ "$YES" -ne 1 ]]; then
    if [[ -t 0 ]]; then
        echo "This runs 'ray stop' and kills EVERY Ray process on $(hostname), not only sfp-ray's."
        read -r -p "Is this machine yours and dedicated to this cluster? Type 'yes' to continue: " answer
        [[ "$answer" == "yes" ]] || { echo "Aborted."; exit 1; }
    else
        echo "stop-node.sh: refusing to run 'ray stop' without --yes (it kills every Ray process on this machine)." >&2
        exit 2
    fi
fi

PYTHON="${SFP_PYTHON:-$REPO_ROOT/.venv/bin/python}"
RAY="$(dirname "$PYTHON")/ray"
if [[ ! -x "$RAY" ]]; then
    RAY="$(command -v ray || true)"
fi
[[ -n "$RAY" ]] || { echo "stop-node.sh: error: the 'ray' command was not found" >&2; exit 2; }

# The only place in this project that calls `ray stop`; see the warning above.
"$RAY" stop "${FORCE[@]}"
