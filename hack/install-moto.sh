#!/usr/bin/env bash
# Installs moto (the AWS emulator, server mode) at a pinned version into a virtualenv under
# $HOME/.cache and prints the path of that virtualenv's python, which runs
# hack/moto_server.py (moto's server with hack/moto_extras.py, written for this version).
# Does nothing when already there.
set -euo pipefail
moto_version=5.2.5
venv=${OPENEMR_CACHE:-$HOME/.cache/openemr-operator}/moto-$moto_version
if [ ! -f "$venv/.installed" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$moto_version" >&2
  touch "$venv/.installed"
fi
echo "$venv/bin/python"
