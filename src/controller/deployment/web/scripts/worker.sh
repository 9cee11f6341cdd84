#!/bin/sh
# A worker's start, run with `sh -c` in the OpenEMR image before its entrypoint
# (K8S=worker), doing what that entrypoint skips for Kubernetes workers:
# - Apache's port-443 site needs /etc/ssl/certs/webserver.cert.pem, which only ssl.sh
#   makes and only the setup role runs; without it httpd refuses to start;
# - upstream's followers delete the setup and upgrade scripts and make the code tree
#   read-only: a reachable setup.php on a clinic holding patient data is an attack surface.
# `sites/` (the shared volume) is left as it is.
set -eu
root=${OPENEMR_ROOT:-/var/www/localhost/htdocs/openemr}
cd "$root"
sh ./ssl.sh
rm -f admin.php acl_upgrade.php setup.php sql_patch.php sql_upgrade.php ippf_upgrade.php \
    auto_configure.php
find . -path ./sites -prune -o -type d -not -perm 500 -exec chmod 500 {} +
find . -path ./sites -prune -o -type f -not -name openemr.sh -not -perm 400 -exec chmod 400 {} +
echo "worker prepared: certificate in place, setup scripts removed, code read-only"
exec ./openemr.sh
