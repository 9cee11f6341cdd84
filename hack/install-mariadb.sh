#!/usr/bin/env bash
# Installs what the web tier's script tests run (tests/site_scripts.rs), from Debian's
# packages: MariaDB (server and client), PHP's CLI with mysqli, and busybox, whose `sh` is
# the OpenEMR image's shell. Does nothing when all are there. Restore checks will use the
# same MariaDB.
set -euo pipefail
missing=()
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
command -v mariadb >/dev/null || missing+=(mariadb-client)
command -v php >/dev/null || missing+=(php-cli)
php -r 'exit(function_exists("mysqli_init") ? 0 : 1);' 2>/dev/null || missing+=(php-mysql)
command -v busybox >/dev/null || missing+=(busybox)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
# mariadbd lives in /usr/sbin, which a non-login shell may not have on its PATH.
command -v mariadbd >/dev/null || echo "note: add /usr/sbin to PATH for mariadbd" >&2
