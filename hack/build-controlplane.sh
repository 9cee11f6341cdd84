#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager and kubectl from the Go module proxy
# at the versions pinned in hack/controlplane/go.mod, into a cache under $HOME/.cache.
# A second run with the binaries present does nothing. Prints the bin directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s_version=v1.36.3
cache=${OPENEMR_CACHE:-$HOME/.cache/openemr-operator}
bin=$cache/controlplane/$k8s_version/bin
tools=(etcd kube-apiserver kube-controller-manager kubectl)

missing=0
for t in "${tools[@]}"; do [ -x "$bin/$t" ] || missing=1; done
if [ "$missing" = 0 ]; then echo "$bin"; exit 0; fi

export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod
export GOMODCACHE=${GOMODCACHE_OVERRIDE:-$cache/go/mod} GOCACHE=${GOCACHE_OVERRIDE:-$cache/go/build}
mkdir -p "$bin.tmp"
cd "$here/controlplane"
ldflags="-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitTreeState=clean"
start=$(date +%s)
declare -A pkg=(
  [etcd]=go.etcd.io/etcd/server/v3
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
  [kubectl]=k8s.io/kubernetes/cmd/kubectl
)
for t in "${tools[@]}"; do
  [ -x "$bin/$t" ] && continue
  t0=$(date +%s)
  go build -pgo=off -trimpath -ldflags "$ldflags" -o "$bin.tmp/$t" "${pkg[$t]}"
  echo "built $t in $(( $(date +%s) - t0 ))s" >&2
done
mkdir -p "$bin"
for t in "${tools[@]}"; do [ -f "$bin.tmp/$t" ] && mv "$bin.tmp/$t" "$bin/$t"; done
rmdir "$bin.tmp" 2>/dev/null || true
echo "control plane $k8s_version built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
