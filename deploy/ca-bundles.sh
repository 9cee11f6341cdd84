#!/usr/bin/env bash
# Creates (or replaces) the ConfigMap `openemr-operator-ca-bundles` in openemr-system from
# AWS's published CA bundles, which the operator copies into every clinic's `<clinic>-ca`
# ConfigMap and the OpenEMR pods mount at /root/certs/{mysql/server/mysql-ca,redis/redis-ca}:
#   rds-ca.pem    the RDS global bundle (every region's RDS CAs), for TLS to MySQL;
#   redis-ca.pem  Amazon Root CA 1, where ElastiCache's in-transit certificates chain to.
# Run it where those URLs are reachable (not on the CI machines), and again whenever AWS
# rotates its RDS CAs: the operator reads the files on every look at a clinic.
# Usage: deploy/ca-bundles.sh [--region eu-central-1]   (a region's bundle instead of global)
set -euo pipefail
rds_url=https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
if [ "${1:-}" = "--region" ] && [ -n "${2:-}" ]; then
  rds_url="https://truststore.pki.rds.amazonaws.com/$2/$2-bundle.pem"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -fsSL "$rds_url" -o "$tmp/rds-ca.pem"
curl -fsSL https://www.amazontrust.com/repository/AmazonRootCA1.pem -o "$tmp/redis-ca.pem"
for f in rds-ca.pem redis-ca.pem; do
  grep -q -- "-----BEGIN CERTIFICATE-----" "$tmp/$f" || { echo "$f: no certificate in it" >&2; exit 1; }
done
kubectl create configmap openemr-operator-ca-bundles -n openemr-system \
  --from-file=rds-ca.pem="$tmp/rds-ca.pem" --from-file=redis-ca.pem="$tmp/redis-ca.pem" \
  --dry-run=client -o yaml | kubectl apply --server-side -f -
