#!/bin/sh
# The setup Job's container, run with `sh -c` in the OpenEMR image (busybox ash).
# OPENEMR_SETUP_MODE says what it may do:
#   install  first setup of a database this clinic created empty: guard, prepare the
#            database and OpenEMR's user as the master user, run the image's entrypoint
#            (K8S=admin), whose installer then logs in as a setup user with no privileges
#   migrate  an upgrade: the entrypoint migrates the configured site to this image
#   attach   a database this clinic did not create empty (adopted, another incarnation's):
#            nothing runs that could change it; the site on the volume must already be
#            configured for it, at this image's version
# Every mode ends by proving the site is configured: sqlconf.php says so, and its own
# credentials reach the database over TLS and read the `version` table.
# Exit 3: refused, nothing was changed. Exit 4: the site is not usable. The last line
# goes to the termination message, which the operator shows in WorkloadReady. No
# password is ever printed or put on a command line.
set -eu

root=${OPENEMR_ROOT:-/var/www/localhost/htdocs/openemr}
ca=${OPENEMR_MYSQL_CA:-/root/certs/mysql/server/mysql-ca}
image_version_file=${OPENEMR_IMAGE_VERSION_FILE:-/root/docker-version}
termination=${OPENEMR_TERMINATION_LOG:-/dev/termination-log}
mode=${OPENEMR_SETUP_MODE:?}
setup_user=openemr_setup

stop() {
    code=$1
    shift
    printf '%s\n' "$*"
    printf '%s' "$*" >"$termination" 2>/dev/null || true
    exit "$code"
}

site_config() {
    php -r 'include $argv[1]; echo isset($config) ? $config : 0;' -- \
        "$root/sites/default/sqlconf.php" 2>/dev/null || echo 0
}

# What OpenEMR's installer receives as unquoted key=value words (split on blanks, globbed,
# cut at the first `=`, `BLANK` read as empty) and writes between single quotes into
# sqlconf.php. The operator refuses such Secrets before a Job starts; this is the last check.
tab=$(printf '\t')
newline='
'
carried() {
    case $1 in
    '' | BLANK) return 1 ;;
    *=* | *\'* | *\"* | *\\* | *\ * | *"$tab"* | *"$newline"* | *\** | *\?* | *\[*) return 1 ;;
    esac
    return 0
}

as_master() {
    MYSQL_PWD=$master_pass mariadb --host="$MYSQL_HOST" --port="${MYSQL_PORT:-3306}" \
        --user="$master_user" --ssl-ca="$ca" --ssl-verify-server-cert \
        --batch --skip-column-names "$@"
}

drop_setup_user() {
    as_master -e "DROP USER IF EXISTS '$setup_user'@'%'" ||
        echo "could not drop the setup user $setup_user (it has no privileges; drop it by hand)"
}

verify() {
    # A file of this run's own: runs side by side (the tests) must not read each other's.
    verify_out=$(mktemp)
    php -r '
        $root = $argv[1];
        include "$root/sites/default/sqlconf.php";
        if (!isset($config) || $config != 1) {
            echo "sites/default/sqlconf.php says the site is not configured\n";
            exit(4);
        }
        mysqli_report(MYSQLI_REPORT_ERROR | MYSQLI_REPORT_STRICT);
        try {
            $db = mysqli_init();
            $db->ssl_set(null, null, "$root/sites/default/documents/certificates/mysql-ca", null, null);
            $db->real_connect($host, $login, $pass, $dbase, (int) $port, null, MYSQLI_CLIENT_SSL);
            $v = $db->query("SELECT v_major, v_minor, v_patch, v_database FROM version")->fetch_assoc();
        } catch (Throwable $e) {
            echo "the site configured in sqlconf.php cannot read its database: ", $e->getMessage(), "\n";
            exit(4);
        }
        if (!$v) {
            echo "the version table of database $dbase is empty: the site was never fully installed\n";
            exit(4);
        }
        printf("site configured: OpenEMR %s.%s.%s, database version %s\n",
            $v["v_major"], $v["v_minor"], $v["v_patch"], $v["v_database"]);
    ' -- "$root" >"$verify_out" 2>&1 ||
        stop 4 "$(tail -n 1 "$verify_out")"
    cat "$verify_out"
    cp "$verify_out" "$termination" 2>/dev/null || true
}

cd "$root"
case $mode in
install)
    master_user=${OPENEMR_MASTER_USER:?}
    master_pass=${OPENEMR_MASTER_PASS:?}
    # Only this script holds the master password; the entrypoint never sees it.
    unset OPENEMR_MASTER_PASS
    db=${MYSQL_DATABASE:?}
    login=${MYSQL_USER:?}
    for name in MYSQL_PASS OE_USER OE_PASS; do
        eval "value=\${$name:-}"
        carried "$value" ||
            stop 3 "refused: $name holds a character OpenEMR's installer cannot carry (blank, = ' \" \\ * ? [ or the word BLANK); nothing was changed"
    done
    if [ "$(site_config)" != 1 ]; then
        tables=$(as_master -e "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '$db'") ||
            stop 4 "the master user could not reach $MYSQL_HOST over TLS"
        [ "$tables" = 0 ] ||
            stop 3 "refused: database $db already holds $tables tables but sites/ holds no configured site; OpenEMR's installer would drop them, so it did not run and nothing was changed"
        setup_pass=$(head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \n' | head -c 40)
        # The database and OpenEMR's user made here, so the installer finds its login
        # working and does all the rest as that user; it still opens a first connection
        # as "root", which the setup user (no privileges at all) serves.
        as_master <<SQL || stop 4 "the master user could not prepare database $db"
CREATE DATABASE IF NOT EXISTS \`$db\` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci;
CREATE USER IF NOT EXISTS '$login'@'%' IDENTIFIED BY '$MYSQL_PASS' REQUIRE SSL;
ALTER USER '$login'@'%' IDENTIFIED BY '$MYSQL_PASS' REQUIRE SSL;
GRANT ALL PRIVILEGES ON \`$db\`.* TO '$login'@'%';
CREATE USER IF NOT EXISTS '$setup_user'@'%' IDENTIFIED BY '$setup_pass' REQUIRE SSL;
ALTER USER '$setup_user'@'%' IDENTIFIED BY '$setup_pass' REQUIRE SSL;
SQL
        trap drop_setup_user EXIT
        export MYSQL_ROOT_USER="$setup_user" MYSQL_ROOT_PASS="$setup_pass"
        echo "database $db and user $login prepared; running OpenEMR's installer"
    fi
    ./openemr.sh
    unset MYSQL_ROOT_PASS
    verify
    ;;
migrate)
    unset MYSQL_ROOT_PASS OPENEMR_MASTER_PASS
    [ "$(site_config)" = 1 ] ||
        stop 4 "sites/ holds no configured site to migrate"
    ./openemr.sh
    verify
    ;;
attach)
    unset MYSQL_ROOT_PASS OPENEMR_MASTER_PASS
    [ "$(site_config)" = 1 ] ||
        stop 4 "sites/ holds no configured site, and this database was not created empty by this clinic, so OpenEMR's installer never runs on it: copy that installation's sites/ directory onto the clinic's volume; the next attempt checks again"
    site_version=$(cat "$root/sites/default/docker-version" 2>/dev/null || echo 0)
    image_version=$(cat "$image_version_file" 2>/dev/null || echo 0)
    [ "$site_version" = "$image_version" ] ||
        stop 3 "refused: the site is at docker-version $site_version and this image at $image_version; name the image the site was made with, then upgrade through spec.web.image (with its snapshot)"
    verify
    ;;
*)
    stop 3 "unknown OPENEMR_SETUP_MODE $mode"
    ;;
esac
