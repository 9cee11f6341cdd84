#!/usr/bin/env bash
# `make demo`: installs the CRDs and the operator's RBAC into the local environment, runs
# the operator (as its own service account) in the background, applies the example clinic
# and backup policy into namespace `demo`, shows what the operator reports, then takes the
# example on-demand backup set and shows it completed.
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
# The RDS and ElastiCache CA bundles cannot be downloaded here: test stand-ins take their
# place (docs/web-tier.md says how a real cluster gets AWS's own: deploy/ca-bundles.sh).
KUBECONFIG=$OPERATOR_KUBECONFIG setsid "$bin" run --probe-addr "127.0.0.1:$port" --cluster-id demo --progress-interval 2s \
  --mysql-ca-file tests/fixtures/stand-in-mysql-ca.pem --redis-ca-file tests/fixtures/stand-in-redis-ca.pem \
  --documents-image registry.example.org/openemr-operator:demo \
  >.dev/operator.log 2>&1 &
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
kubectl wait -n demo --for=condition=DatabaseReady --timeout=180s openemrdeployment/clinic-a >/dev/null
kubectl wait -n demo --for=condition=StackReady --timeout=60s openemrdeployment/clinic-a >/dev/null

# This control plane has no nodes and no kubelet: this script plays the kubelet, as the
# tests do, by writing the Pod status a kubelet would write.
pod_status() { # pod phase ready
  local now; now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  kubectl patch pod -n demo "$1" --subresource=status --type=merge -p "{\"status\":{\"phase\":\"$2\",
    \"conditions\":[{\"type\":\"Ready\",\"status\":\"$3\",\"lastTransitionTime\":\"$now\"}]}}" >/dev/null
}
echo "kubelet (played by this script): waiting for the setup Job's pod..."
for _ in $(seq 1 120); do
  job=$(kubectl get jobs -n demo -l openemr.io/clinic=clinic-a,app.kubernetes.io/component=setup -o name | head -1)
  pod=${job:+$(kubectl get pods -n demo -l "job-name=${job#job.batch/}" -o name | head -1)}
  [ -n "${pod:-}" ] && break; sleep 0.5
done
[ -n "${pod:-}" ] || { echo "no setup pod; see .dev/operator.log" >&2; exit 1; }
echo "kubelet (played): ${pod#pod/} of ${job#job.batch/} (K8S=admin) ran and exited 0"
pod_status "${pod#pod/}" Succeeded False
echo "kubelet (played): waiting for the workers' pods..."
for _ in $(seq 1 120); do
  pods=$(kubectl get pods -n demo -l app.kubernetes.io/instance=clinic-a,app.kubernetes.io/component=web -o name)
  [ "$(echo "$pods" | grep -c pod/)" -ge 2 ] && break; sleep 0.5
done
for p in $pods; do
  echo "kubelet (played): ${p#pod/} (K8S=worker) running; /interface/login/login.php answers"
  pod_status "${p#pod/}" Running True
done
kubectl wait -n demo --for=condition=Ready --timeout=120s openemrdeployment/clinic-a >/dev/null
echo
kubectl get openemr -n demo -o wide
echo
kubectl get openemrdeployment clinic-a -n demo \
  -o jsonpath='stack {.status.stack.name} ({.status.stack.status}), bucket {.status.bucketName}, key {.status.kmsKeyArn}{"\n"}'
kubectl get openemrdeployment clinic-a -n demo \
  -o jsonpath='web tier: {.status.web.readyReplicas} replicas ready of {.status.web.image}, setup complete: {.status.web.setupComplete}, URL {.status.web.url}{"\n"}'
echo
kubectl get jobs,deployments,services,ingresses,pdb,networkpolicies,pvc -n demo -l openemr.io/clinic=clinic-a
echo
kubectl get openemrdeployment clinic-a -n demo \
  -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'

# A backup set of the clinic, taken now (examples/backup-on-demand.yaml): the snapshot in
# moto, then the documents Job, whose pod this script plays as the kubelet would (the
# Job's own command, over a local directory standing in for the clinic's EFS volume).
echo
echo "taking the example on-demand backup set (examples/backup-on-demand.yaml)..."
set=clinic-a-before-upgrade
kubectl create serviceaccount openemr-documents -n demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -n demo --server-side -f examples/backup-on-demand.yaml >/dev/null
for _ in $(seq 1 120); do
  kubectl get job -n demo "$set-documents" >/dev/null 2>&1 && break; sleep 0.5
done
sites=.dev/sites
mkdir -p "$sites/default/documents/1"
echo "a scanned letter" >"$sites/default/documents/1/letter.txt"
echo '<?php $host = "database";' >"$sites/default/sqlconf.php"
python3 hack/demo-documents-job.py "$bin" demo "$set-documents" "$sites" .dev/documents-job
kubectl wait -n demo --for=jsonpath='{.status.phase}'=Completed --timeout=120s "openemrbackup/$set" >/dev/null
kubectl get openemrbackup -n demo
kubectl get openemrbackup "$set" -n demo \
  -o jsonpath='set {.metadata.name}: snapshot {.status.database.identifier} ({.status.database.status}), {.status.documents.fileCount} files in {.status.documents.manifest}, manifest {.status.manifest}{"\n"}'
echo
echo "Next: source .dev/env; kubectl get openemr -n demo; make dev-down to stop everything."
