#!/usr/bin/env bash
# `make demo`: installs the CRDs and the operator's RBAC into the local environment, runs
# the operator (as its own service account) in the background, applies the example clinic
# and backup policy into namespace `demo`, and shows what the operator reports.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
# shellcheck disable=SC1091
source .dev/env
bin=${CARGO_TARGET_DIR:-target}/debug/openemr-operator

"$bin" crd | kubectl apply --server-side --force-conflicts -f - >/dev/null
kubectl apply --server-side -f deploy/namespace.yaml -f deploy/rbac.yaml >/dev/null
kubectl wait --for=condition=Established --timeout=60s \
  crd/openemrdeployments.openemr.io crd/backuppolicies.openemr.io \
  crd/openemrbackups.openemr.io crd/restorerequests.openemr.io >/dev/null

if [ -f .dev/operator.pid ] && kill -0 "$(cat .dev/operator.pid)" 2>/dev/null; then
  kill "$(cat .dev/operator.pid)"; sleep 1
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
KUBECONFIG=$OPERATOR_KUBECONFIG setsid "$bin" run --probe-addr "127.0.0.1:$port" --cluster-id demo --progress-interval 2s >.dev/operator.log 2>&1 &
echo $! >.dev/operator.pid
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "operator not ready; see .dev/operator.log" >&2; exit 1; }
echo "operator running (pid $(cat .dev/operator.pid), log .dev/operator.log, metrics http://127.0.0.1:$port/metrics)"

kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# The example clinic lives in an existing VPC: make its stand-in in moto and point the
# manifest at it.
read -r vpc subnet_a subnet_b group < <(
  "$("$repo/hack/install-moto.sh")" "$repo/hack/demo-network.py")
sed -e "s/vpc-0a1b2c3d4e5f60718/$vpc/" -e "s/subnet-0a1b2c3d4e5f60718/$subnet_a/" \
    -e "s/subnet-1a2b3c4d5e6f70819/$subnet_b/" -e "s/sg-0a1b2c3d4e5f60718/$group/" \
    examples/clinic.yaml >.dev/clinic.yaml
kubectl apply -n demo --server-side -f .dev/clinic.yaml -f examples/backup-policy.yaml
kubectl wait -n demo --for=condition=Accepted --timeout=60s openemrdeployment/clinic-a backuppolicy/clinic-a-nightly >/dev/null
echo "waiting for the clinic's stack and database in moto..."
kubectl wait -n demo --for=condition=Ready --timeout=180s openemrdeployment/clinic-a >/dev/null
echo
kubectl get openemr -n demo -o wide
echo
kubectl get openemrdeployment clinic-a -n demo \
  -o jsonpath='stack {.status.stack.name} ({.status.stack.status}), bucket {.status.bucketName}, key {.status.kmsKeyArn}{"\n"}'
echo
kubectl get openemrdeployment clinic-a -n demo \
  -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'
echo
echo "Next: source .dev/env; kubectl get openemr -n demo; make dev-down to stop everything."
