//! The web tier's scripts (`src/controller/deployment/web/scripts/`), run for real by
//! busybox's `sh` (the image's shell is busybox ash) against a real MariaDB that requires
//! TLS, with PHP's mysqli for its verification. No container runs here, so the image's
//! entrypoint is played by a stand-in `openemr.sh` that does what OpenEMR's installer does
//! on the path the script prepares: a first connection as "root", then, its own login
//! working, the schema as OpenEMR's user, then `sqlconf.php` with `$config = 1`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use openemr_operator::controller::deployment::web::scripts::{
    EXIT_REFUSED, EXIT_UNUSABLE, SETUP_SCRIPT,
};
use support::mariadb::MariaDb;

/// The master user, with a password the image's installer could never carry.
const MASTER: &str = "admin_master";
const MASTER_PASSWORD: &str = "ma=st'er \"pw\\ x";
const OPENEMR_PASSWORD: &str = "Op3nEmrUserPassw0rd";

/// Stands in for the image's entrypoint with `K8S=admin`: the installer runs when the site
/// is unconfigured and a root password is set, as in `openemr.sh`.
const ENTRYPOINT: &str = r#"#!/bin/sh
set -eu
env | grep -c '^OPENEMR_MASTER_PASS=' > "$OPENEMR_ROOT/entrypoint-saw-master" || true
config=$(php -r 'include $argv[1]; echo $config;' -- "$OPENEMR_ROOT/sites/default/sqlconf.php")
if [ "$config" = 0 ] && [ "${MYSQL_ROOT_PASS:-}" != "" ]; then
    echo "$MYSQL_ROOT_USER" > "$OPENEMR_ROOT/installer-ran-as"
    php -r '
        $ca = getenv("OPENEMR_ROOT") . "/sites/default/documents/certificates/mysql-ca";
        $connect = function ($user, $pass, $db) use ($ca) {
            $m = mysqli_init();
            $m->ssl_set(null, null, $ca, null, null);
            $m->real_connect(getenv("MYSQL_HOST"), $user, $pass, $db, (int) getenv("MYSQL_PORT"), null, MYSQLI_CLIENT_SSL);
            return $m;
        };
        $root = $connect(getenv("MYSQL_ROOT_USER"), getenv("MYSQL_ROOT_PASS"), null);
        $root->query("SET sql_mode = \"\"");
        $db = getenv("MYSQL_DATABASE");
        $user = $connect(getenv("MYSQL_USER"), getenv("MYSQL_PASS"), $db);
        $user->query("CREATE TABLE version (v_major INT, v_minor INT, v_patch INT, v_database INT)");
        $user->query("INSERT INTO version VALUES (8, 0, 0, 530)");
        $conf = "<?php\n\$host = \x27" . getenv("MYSQL_HOST") . "\x27;\n\$port = \x27" . getenv("MYSQL_PORT")
            . "\x27;\n\$login = \x27" . getenv("MYSQL_USER") . "\x27;\n\$pass = \x27" . getenv("MYSQL_PASS")
            . "\x27;\n\$dbase = \x27$db\x27;\n\$config = 1;\n";
        file_put_contents(getenv("OPENEMR_ROOT") . "/sites/default/sqlconf.php", $conf);
    '
fi
echo "OpenEMR configuration tasks have concluded."
"#;

const UNCONFIGURED: &str = "<?php\n$host = 'localhost';\n$config = 0;\n";

struct Site {
    root: PathBuf,
}

impl Site {
    fn new(db: &MariaDb, name: &str) -> Site {
        let root = db.dir.join(name);
        let certificates = root.join("sites/default/documents/certificates");
        std::fs::create_dir_all(&certificates).unwrap();
        std::fs::copy(&db.ca, certificates.join("mysql-ca")).unwrap();
        std::fs::write(root.join("openemr.sh"), ENTRYPOINT).unwrap();
        std::fs::set_permissions(
            root.join("openemr.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(root.join("docker-version"), "9").unwrap();
        std::fs::write(root.join("sites/default/docker-version"), "9").unwrap();
        let site = Site { root };
        site.unconfigure();
        site
    }

    fn unconfigure(&self) {
        std::fs::write(self.sqlconf(), UNCONFIGURED).unwrap();
    }

    fn sqlconf(&self) -> PathBuf {
        self.root.join("sites/default/sqlconf.php")
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.root.join(file)).unwrap_or_default()
    }

    /// Runs the script in `mode` with the image's settings; its exit code, output, and
    /// termination message.
    fn run(&self, db: &MariaDb, mode: &str, env: &[(&str, &str)]) -> (i32, String, String) {
        let termination = self.root.join("termination-log");
        let _ = std::fs::remove_file(&termination);
        let _ = std::fs::remove_file(self.root.join("installer-ran-as"));
        let port = db.port.to_string();
        let mut cmd = Command::new("busybox");
        cmd.args(["sh", "-c", SETUP_SCRIPT])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("OPENEMR_ROOT", &self.root)
            .env("OPENEMR_MYSQL_CA", &db.ca)
            .env(
                "OPENEMR_IMAGE_VERSION_FILE",
                self.root.join("docker-version"),
            )
            .env("OPENEMR_TERMINATION_LOG", &termination)
            .env("K8S", "admin")
            .env("OPENEMR_SETUP_MODE", mode)
            .env("MYSQL_HOST", "127.0.0.1")
            .env("MYSQL_PORT", &port)
            .env("MYSQL_DATABASE", "openemr")
            .env("MYSQL_USER", "openemr")
            .env("MYSQL_PASS", OPENEMR_PASSWORD)
            .env("OE_USER", "admin")
            .env("OE_PASS", "Adm1nPassw0rd")
            .env("OPENEMR_MASTER_USER", MASTER)
            .env("OPENEMR_MASTER_PASS", MASTER_PASSWORD);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("busybox (run hack/install-mariadb.sh)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains(MASTER_PASSWORD) && !text.contains(OPENEMR_PASSWORD),
            "a password was printed: {text}"
        );
        let message = std::fs::read_to_string(&termination).unwrap_or_default();
        (out.status.code().unwrap_or(-1), text, message)
    }
}

fn users(db: &MariaDb) -> String {
    db.root("SELECT CONCAT(user, ':', ssl_type) FROM mysql.user ORDER BY user")
}

fn tables(db: &MariaDb) -> String {
    db.root("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'openemr'")
}

fn master(db: &MariaDb) {
    let quoted = support::mariadb::sql_string(MASTER_PASSWORD);
    db.root(&format!(
        "CREATE USER '{MASTER}'@'%' IDENTIFIED BY {quoted}; \
         GRANT ALL PRIVILEGES ON *.* TO '{MASTER}'@'%' WITH GRANT OPTION"
    ));
}

fn assert_exit(what: &str, got: &(i32, String, String), code: i32) {
    assert_eq!(got.0, code, "{what}: {}", got.1);
}

#[test]
fn install_prepares_the_database_runs_the_installer_without_privileges_and_proves_the_site() {
    let db = MariaDb::start("setup-install");
    master(&db);
    let site = Site::new(&db, "site");

    // A value the installer cannot carry: refused before anything is touched.
    let refused = site.run(&db, "install", &[("OE_PASS", "a=b")]);
    assert_exit("OE_PASS with =", &refused, EXIT_REFUSED);
    assert!(refused.2.contains("OE_PASS"), "{}", refused.2);
    assert_eq!(tables(&db), "0");
    assert!(!users(&db).contains("openemr"));

    // The first setup of an empty database.
    let done = site.run(&db, "install", &[]);
    assert_exit("install", &done, 0);
    assert!(
        done.2
            .contains("site configured: OpenEMR 8.0.0, database version 530"),
        "{}",
        done.2
    );
    // The installer logged in as the setup user, never saw the master password, and the
    // setup user is gone; OpenEMR's user must use TLS.
    assert_eq!(site.read("installer-ran-as").trim(), "openemr_setup");
    assert_eq!(site.read("entrypoint-saw-master").trim(), "0");
    let after = users(&db);
    assert!(!after.contains("openemr_setup"), "{after}");
    assert!(after.contains("openemr:ANY"), "{after}");
    assert_eq!(
        db.root("SELECT COUNT(*) FROM mysql.tables_priv WHERE user = 'openemr_setup'")
            + &db.root("SELECT COUNT(*) FROM mysql.db WHERE user = 'openemr_setup'"),
        "00"
    );

    // Run again on the set-up site: nothing is installed again, the site is proven.
    let again = site.run(&db, "install", &[]);
    assert_exit("install again", &again, 0);
    assert_eq!(site.read("installer-ran-as"), "");

    // An empty sites/ against the database that now holds OpenEMR: the installer would
    // drop its tables, so nothing runs and nothing changes.
    site.unconfigure();
    let refused = site.run(&db, "install", &[]);
    assert_exit(
        "install over a database with tables",
        &refused,
        EXIT_REFUSED,
    );
    assert!(
        refused
            .2
            .contains("refused: database openemr already holds 1 tables"),
        "{}",
        refused.2
    );
    assert_eq!(site.read("installer-ran-as"), "");
    assert_eq!(db.root("SELECT v_database FROM openemr.version"), "530");
    assert!(!users(&db).contains("openemr_setup"));
}

#[test]
fn attach_and_migrate_change_nothing_and_need_a_configured_site_of_the_right_version() {
    let db = MariaDb::start("setup-attach");
    master(&db);
    let site = Site::new(&db, "site");
    // The database of another installation.
    assert_exit("install", &site.run(&db, "install", &[]), 0);
    let configured = std::fs::read_to_string(site.sqlconf()).unwrap();

    // Its sites/ was not copied: said, and the installer never runs.
    site.unconfigure();
    let missing = site.run(&db, "attach", &[]);
    assert_exit("attach without a site", &missing, EXIT_UNUSABLE);
    assert!(
        missing.2.contains("sites/ holds no configured site"),
        "{}",
        missing.2
    );
    assert_eq!(site.read("installer-ran-as"), "");

    // Copied, but made with an older image: refused, no migration without a snapshot.
    std::fs::write(site.sqlconf(), &configured).unwrap();
    std::fs::write(site.root.join("sites/default/docker-version"), "8").unwrap();
    let older = site.run(&db, "attach", &[]);
    assert_exit("attach an older site", &older, EXIT_REFUSED);
    assert!(older.2.contains("docker-version 8"), "{}", older.2);

    std::fs::write(site.root.join("sites/default/docker-version"), "9").unwrap();
    let attached = site.run(&db, "attach", &[]);
    assert_exit("attach", &attached, 0);
    assert!(attached.2.contains("site configured"), "{}", attached.2);

    // A site whose credentials do not reach the database is not usable.
    std::fs::write(
        site.sqlconf(),
        configured.replace(OPENEMR_PASSWORD, "WrongPassw0rd"),
    )
    .unwrap();
    let broken = site.run(&db, "migrate", &[]);
    assert_exit("migrate with a broken site", &broken, EXIT_UNUSABLE);
    assert!(
        broken.2.contains("cannot read its database"),
        "{}",
        broken.2
    );
    assert!(!broken.2.contains("WrongPassw0rd"), "{}", broken.2);
    std::fs::write(site.sqlconf(), &configured).unwrap();
    assert_exit("migrate", &site.run(&db, "migrate", &[]), 0);
}

#[test]
fn a_worker_makes_the_certificate_removes_the_setup_scripts_and_leaves_sites_writable() {
    use openemr_operator::controller::deployment::web::scripts::{SETUP_SCRIPTS, WORKER_SCRIPT};
    let root = std::env::temp_dir().join(format!("openemr-worker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let documents = root.join("sites/default/documents");
    std::fs::create_dir_all(&documents).unwrap();
    std::fs::create_dir_all(root.join("interface/login")).unwrap();
    std::fs::write(documents.join("scan.pdf"), "patient").unwrap();
    std::fs::write(root.join("interface/login/login.php"), "<?php").unwrap();
    for f in SETUP_SCRIPTS {
        std::fs::write(root.join(f), "<?php").unwrap();
    }
    // The image's ssl.sh makes the certificate; the entrypoint is what `exec` starts.
    std::fs::write(
        root.join("ssl.sh"),
        "touch \"$OPENEMR_ROOT/webserver.cert.pem\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("openemr.sh"),
        "#!/bin/sh\necho \"entrypoint as $K8S\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("openemr.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new("busybox")
        .args(["sh", "-c", WORKER_SCRIPT])
        .env("OPENEMR_ROOT", &root)
        .env("K8S", "worker")
        .output()
        .expect("busybox (run hack/install-mariadb.sh)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.trim_end().ends_with("entrypoint as worker"), "{text}");
    assert!(root.join("webserver.cert.pem").exists());
    for f in [
        "setup.php",
        "admin.php",
        "sql_upgrade.php",
        "auto_configure.php",
    ] {
        assert!(!root.join(f).exists(), "{f} is still there");
    }
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(root.join("interface/login/login.php")), 0o400);
    assert_eq!(mode(root.join("interface/login")), 0o500);
    // The shared volume is not the worker's to change.
    assert_eq!(mode(documents.join("scan.pdf")) & 0o200, 0o200);
    assert_eq!(mode(documents.clone()) & 0o200, 0o200);
    let _ = std::fs::remove_dir_all(&root);
}
