#!/usr/bin/env bash
# A Ray cluster of several nodes on this machine, on loopback, for trying the cluster path.
#
#   cluster/local.sh up [--workers N] [--cpus-per-node C] [--gpus-per-worker G] [--port-base P]
#                       [--gcs-port PORT] [--dashboard-port PORT]
#   cluster/local.sh status
#   cluster/local.sh down
#
# Defaults: 1 worker, 1 CPU per node, no GPUs, node ports from 20000 (node i: P + 100 i + 1..99),
# GCS 6380, dashboard and Jobs API 8265. The nodes run the Python environment that is active
# (a venv or conda environment with fundus-search installed), else the checkout's .venv.
#
# Each node is one `ray start --block` in its own process group, every server of it listening
# on 127.0.0.1 only (cluster/ray_on_loopback.py says how), with explicit ports and resources.
# Token authentication is on (RAY_AUTH_MODE=token; the token is RAY_AUTH_TOKEN,
# RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, generated with mode 0600 if none exists).
# The state file records every node's process id and ports; `down` stops exactly those
# process groups and nothing else.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
state_dir=${FUNDUS_CLUSTER_STATE:-$HOME/.cache/fundus-search/local-cluster}
state=$state_dir/state
export RAY_AUTH_MODE=token
# Every node, agent, worker and job driver of this cluster stays on 127.0.0.1 (see ray_on_loopback.py).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0

die() { echo "cluster/local.sh: $*" >&2; exit 2; }

# The environment the nodes and their jobs run in: the active one ($VIRTUAL_ENV, or the python
# on PATH, e.g. conda's) if it has Ray and fundus-search, else the checkout's .venv.
python_bin() {
  local py
  for py in "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}" "$(command -v python || true)" "$here/.venv/bin/python"; do
    if [ -n "$py" ] && [ -x "$py" ] && "$py" -c 'import ray, fundus_search' 2>/dev/null; then
      dirname "$py"
      return 0
    fi
  done
  die "no Python with ray and fundus-search installed: activate its environment, or run make in $here"
}

node_ports() {  # the explicit ports of node $1 (0 = head) from port base $2
  local base=$(( $2 + $1 * 100 ))
  echo "--node-manager-port $((base + 1)) --object-manager-port $((base + 2)) --metrics-export-port $((base + 3))" \
       "--dashboard-agent-listen-port $((base + 4)) --dashboard-agent-grpc-port $((base + 5))" \
       "--runtime-env-agent-port $((base + 6)) --min-worker-port $((base + 10)) --max-worker-port $((base + 99))"
}

# a process of group $1 that is not a zombie (where nothing reaps orphans, the dead linger as zombies)
alive() { ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {found = 1} END {exit !found}'; }

start_node() {  # name, log, then `ray start` arguments; records "node NAME PID"
  local name=$1 log=$2; shift 2
  setsid "$venv_bin/python" "$here/cluster/ray_on_loopback.py" start --block --node-ip-address 127.0.0.1 \
    --disable-usage-stats "$@" >"$log" 2>&1 &
  echo "node $name $!" >>"$state"
}

wait_for_nodes() {  # until the cluster at $1 has $2 alive nodes, or 90 s
  for _ in $(seq 1 90); do
    n=$("$venv_bin/python" - "$1" <<'PY' 2>/dev/null || echo 0
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(sum(1 for n in ray.nodes() if n["Alive"]))
PY
)
    [ "${n:-0}" -ge "$2" ] && return 0
    sleep 1
  done
  die "cluster did not reach $2 nodes in 90 s; see $state_dir/*.log"
}

up() {
  venv_bin=$(python_bin)
  export PATH="$venv_bin:$PATH"  # jobs run `python -m fundus_search` in this environment
  local workers=1 cpus=1 gpus=0 base=20000 gcs_port=6380 dashboard_port=8265
  while [ $# -gt 0 ]; do
    case $1 in
      --workers) workers=$2; shift 2 ;;
      --cpus-per-node) cpus=$2; shift 2 ;;
      --gpus-per-worker) gpus=$2; shift 2 ;;
      --port-base) base=$2; shift 2 ;;
      --gcs-port) gcs_port=$2; shift 2 ;;
      --dashboard-port) dashboard_port=$2; shift 2 ;;
      *) die "unknown option $1; usage: $0 up [--workers N] [--cpus-per-node C] [--gpus-per-worker G] [--port-base P] [--gcs-port PORT] [--dashboard-port PORT]" ;;
    esac
  done
  if [ -f "$state" ]; then
    while read -r kind _ pid; do
      [ "$kind" = node ] && alive "$pid" && die "a cluster is already up ($state); run: $0 down"
    done <"$state"
  fi
  mkdir -p "$state_dir"
  # The token is the key to the cluster: made as Ray makes it (256 random bits, hex) where Ray
  # looks for it, readable by its owner only.
  local token=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
  if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ ! -s "$token" ]; then
    mkdir -p "$(dirname "$token")"
    (umask 077 && "$venv_bin/python" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$token")
  fi
  if [ -f "$token" ] && [ -O "$token" ]; then chmod 600 "$token"; fi
  {
    echo "address 127.0.0.1:$gcs_port"
    echo "dashboard http://127.0.0.1:$dashboard_port"
  } >"$state"
  # shellcheck disable=SC2046
  start_node head "$state_dir/head.log" --head --port "$gcs_port" --num-cpus "$cpus" --num-gpus 0 \
    --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$dashboard_port" \
    --ray-client-server-port $((base + 7)) $(node_ports 0 "$base")
  wait_for_nodes "127.0.0.1:$gcs_port" 1
  for i in $(seq 1 "$workers"); do
    # shellcheck disable=SC2046
    start_node "worker$i" "$state_dir/worker$i.log" --address "127.0.0.1:$gcs_port" --num-cpus "$cpus" \
      --num-gpus "$gpus" $(node_ports "$i" "$base")
  done
  wait_for_nodes "127.0.0.1:$gcs_port" $((workers + 1))
  echo "cluster up: $((workers + 1)) nodes, GCS 127.0.0.1:$gcs_port, dashboard and Jobs API http://127.0.0.1:$dashboard_port"
  echo "submit:     fundus-search submit CONFIG --same-host --follow   (jobs: fundus-search jobs list)"
}

status() {
  [ -f "$state" ] || { echo "no local cluster (no $state)"; return 0; }
  while read -r kind a b; do
    case $kind in
      address|dashboard) echo "$kind: $a" ;;
      node) if alive "$b"; then echo "$a: pid $b running"; else echo "$a: pid $b stopped"; fi ;;
    esac
  done <"$state"
}

down() {
  [ -f "$state" ] || { echo "no local cluster (no $state)"; return 0; }
  local pids gcs_port
  pids=$(awk '$1 == "node" {print $3}' "$state")
  gcs_port=$(awk '$1 == "address" {print $2}' "$state" | cut -d: -f2)
  for pid in $pids; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 1 10); do  # 10 s to stop cleanly, then SIGKILL
    local left=0
    for pid in $pids; do alive "$pid" && left=1; done
    [ $left = 0 ] && break
    sleep 1
  done
  for pid in $pids; do alive "$pid" && kill -KILL -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 1 20); do  # SIGKILL is asynchronous: wait until the groups are gone
    local left=0
    for pid in $pids; do alive "$pid" && left=1; done
    [ $left = 0 ] && break
    sleep 0.5
  done
  # `ray start --head` points later plain `ray.init()` calls at this cluster; `ray stop` would
  # remove the pointer, so do the same, but only if it still names this cluster.
  local pointer=${RAY_TMPDIR:-/tmp}/ray/ray_current_cluster
  if [ -f "$pointer" ] && grep -q ":$gcs_port\$" "$pointer"; then rm -f "$pointer"; fi
  rm -f "$state"
  echo "cluster down: stopped process groups $(echo $pids)"
}

case ${1:-} in
  up) shift; up "$@" ;;
  down) down ;;
  status) status ;;
  *) die "usage: $0 up [--workers N] [--cpus-per-node C] [--gpus-per-worker G] | status | down" ;;
esac
