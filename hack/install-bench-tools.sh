#!/usr/bin/env bash
# Installs the documents benchmark's peers and prints where they are, one `name=path` a
# line: restic and rclone from Debian (the versions the engine was designed against,
# restic 0.14 and rclone 1.60 on bookworm), and the AWS CLI v1 from PyPI at a pinned
# version in a virtualenv under $HOME/.cache. Not part of `make test` or CI.
set -euo pipefail
awscli_version=1.46.3
venv=${OPENEMR_CACHE:-$HOME/.cache/openemr-operator}/awscli-$awscli_version
missing=()
for tool in restic rclone; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
if [ ! -f "$venv/.installed" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "awscli==$awscli_version" >&2
  touch "$venv/.installed"
fi
echo "restic=$(command -v restic)"
echo "rclone=$(command -v rclone)"
echo "aws=$venv/bin/aws"
