#!/usr/bin/env bash
# The local environment every test and `make demo` runs against: a real control plane
# (etcd, kube-apiserver with RBAC, kube-controller-manager; built by build-controlplane.sh)
# and moto, the AWS emulator (with hack/moto_extras.py), all on 127.0.0.1 on free ports.
#
#   dev-env.sh up [DIR]             start in the background (idempotent); writes DIR/env
#   dev-env.sh down [DIR]           stop everything started in DIR
#   dev-env.sh status [DIR]         exit 0 when everything in DIR is running and ready
#   dev-env.sh supervise DIR PID    start in DIR, stop and remove DIR when PID exits
#                                   (the test harness uses this so nothing outlives a run)
#   dev-env.sh wait-stopped         wait (up to 30 s) until no supervised environment runs
#
# DIR defaults to .dev in the repository. DIR/env holds `export` lines: KUBECONFIG (an
# admin), OPERATOR_KUBECONFIG (the operator's service account identity, bound only by the
# RBAC in deploy/), AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
# and PATH with the control plane's kubectl first.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}
dir=$(realpath -m "${2:-$repo/.dev}")
log() { echo "dev-env: $*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then log "timed out waiting for $what"; return 1; fi
    sleep 0.2
  done
}

alive() { [ -f "$dir/pids/$1" ] && kill -0 "$(cat "$dir/pids/$1")" 2>/dev/null; }

start_bg() { # start_bg NAME COMMAND...
  local name=$1; shift
  mkdir -p "$dir/pids" "$dir/logs"
  setsid "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/pids/$name"
}

stop_one() {
  local f=$dir/pids/$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

stop_all() {
  # Reverse order of start: with etcd gone first, the apiserver takes ~40 s to exit.
  for n in kube-controller-manager kube-apiserver etcd moto; do stop_one "$n"; done
}

ready() {
  [ -f "$dir/env" ] || return 1
  for n in etcd kube-apiserver kube-controller-manager moto; do alive "$n" || return 1; done
  # shellcheck disable=SC1091
  (source "$dir/env" && kubectl get --raw /readyz >/dev/null 2>&1 &&
    curl -sf "$AWS_ENDPOINT_URL/moto-api/" >/dev/null)
}

start_all() {
  mkdir -p "$dir"
  if ready; then log "already running ($dir/env)"; return 0; fi
  stop_all
  local bin moto_python
  bin=$("$repo/hack/build-controlplane.sh")
  moto_python=$("$repo/hack/install-moto.sh")
  rm -rf "$dir/etcd" "$dir/pki" "$dir/logs" "$dir/env"
  mkdir -p "$dir/pki" "$dir/logs"

  local etcd_port peer_port api_port moto_port
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port); moto_port=$(free_port)

  openssl genrsa -out "$dir/pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/pki/sa.key" -pubout -out "$dir/pki/sa.pub" 2>/dev/null
  local admin_token operator_token
  admin_token=$(openssl rand -hex 24)
  operator_token=$(openssl rand -hex 24)
  # The operator authenticates as its service account's user name, so RoleBindings to the
  # ServiceAccount in deploy/ apply to it exactly as they would in a cluster.
  cat >"$dir/pki/tokens.csv" <<EOF
$admin_token,admin,admin-uid,system:masters
$operator_token,system:serviceaccount:openemr-system:openemr-operator,openemr-operator-uid,"system:serviceaccounts,system:serviceaccounts:openemr-system,system:authenticated"
EOF
  chmod 600 "$dir/pki/tokens.csv" "$dir/pki/sa.key"

  start_bg etcd "$bin/etcd" --name default --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "default=http://127.0.0.1:$peer_port" --unsafe-no-fsync --log-level warn
  wait_for 30 etcd curl -sf "http://127.0.0.1:$etcd_port/health"

  start_bg kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --cert-dir "$dir/pki" --token-auth-file "$dir/pki/tokens.csv" \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$dir/pki/sa.pub" --service-account-signing-key-file "$dir/pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --api-audiences https://kubernetes.default.svc.cluster.local
  wait_for 60 "kube-apiserver serving certificate" test -s "$dir/pki/apiserver.crt"

  kubeconfig "$dir/kubeconfig" admin "$admin_token" "$api_port"
  kubeconfig "$dir/operator.kubeconfig" openemr-operator "$operator_token" "$api_port"
  wait_for 60 kube-apiserver env KUBECONFIG="$dir/kubeconfig" "$bin/kubectl" get --raw /readyz

  start_bg kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$dir/kubeconfig" \
    --controllers '*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-route,-service' \
    --leader-elect=false --secure-port 0 \
    --service-account-private-key-file "$dir/pki/sa.key" --root-ca-file "$dir/pki/apiserver.crt" \
    --use-service-account-credentials=false

  # -B: no __pycache__ in hack/.
  start_bg moto "$moto_python" -B "$repo/hack/moto_server.py" -H 127.0.0.1 -p "$moto_port"
  wait_for 60 moto curl -sf "http://127.0.0.1:$moto_port/moto-api/"
  # The default ServiceAccount appears once the controller-manager runs; namespaces are
  # usable for Pods from then on.
  wait_for 60 "kube-controller-manager" env KUBECONFIG="$dir/kubeconfig" "$bin/kubectl" get serviceaccount default -n default

  cat >"$dir/env.tmp" <<EOF
export KUBECONFIG=$dir/kubeconfig
export OPERATOR_KUBECONFIG=$dir/operator.kubeconfig
export AWS_ENDPOINT_URL=http://127.0.0.1:$moto_port
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1
export KUBECACHEDIR=$dir/kube-cache
export PATH=$bin:\$PATH
EOF
  mv "$dir/env.tmp" "$dir/env"
  log "ready: source $dir/env"
}

kubeconfig() { # kubeconfig FILE USER TOKEN PORT
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$4
    certificate-authority: $dir/pki/apiserver.crt
users:
- name: $2
  user:
    token: $3
contexts:
- name: $2@local
  context:
    cluster: local
    user: $2
    namespace: default
current-context: $2@local
EOF
  chmod 600 "$1"
}

case "$cmd" in
  up) start_all ;;
  down) stop_all; rm -f "$dir/env"; log "stopped" ;;
  status) ready ;;
  supervise)
    parent=${3:?usage: dev-env.sh supervise DIR PID}
    trap 'stop_all; rm -rf "$dir" "$dir.log"' EXIT
    trap 'exit 1' TERM INT
    if ! start_all; then
      # Leave the reason beside DIR (which is removed) for the harness to show.
      { echo "dev-env: start failed"
        for f in "$dir"/logs/*.log; do [ -f "$f" ] && { echo "== $f"; tail -n 20 "$f"; }; done
      } >"$dir.failed"
      exit 1
    fi
    while kill -0 "$parent" 2>/dev/null; do sleep 1; done
    ;;
  wait-stopped)
    for _ in $(seq 1 60); do
      # Anchored: a shell or tool whose command line merely mentions it is not one.
      pgrep -f "^bash .*hack/dev-env.sh supervise" >/dev/null || exit 0
      sleep 0.5
    done
    log "supervised environments still running after 30 s"; exit 1 ;;
  *) echo "usage: $0 up|down|status [DIR] | supervise DIR PID | wait-stopped" >&2; exit 2 ;;
esac
