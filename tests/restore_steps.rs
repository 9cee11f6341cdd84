//! A restore's steps that touch the database and the site, against real parts: the
//! operator's own MySQL sessions (`src/mysql/`) and the database checks, against a real
//! MariaDB that requires TLS, seeded with a slice of OpenEMR's schema
//! (`tests/fixtures/openemr-slice.sql`), whose certificate names the host names moto gives
//! RDS endpoints (the operator dials them at the server through its address map,
//! `--database-address`, and still verifies the certificate against the RDS name); and the
//! restored site's `sqlconf.php`, rewritten by `openemr-operator site-config` and read back
//! by PHP.

mod support;

use std::time::Duration;

use openemr_operator::api::VerificationCheck;
use openemr_operator::aws::secrets::SecretValue;
use openemr_operator::mysql::checks::{self, DatabaseVerdict};
use openemr_operator::mysql::{AddressMap, Endpoint, Login, SqlError, connect};
use support::mariadb::{MariaDb, unrelated_ca};

/// The names moto gives instances in us-east-1, as the test server's certificate names them.
const RDS_NAMES: &str = "*.aaaaaaaaaa.us-east-1.rds.amazonaws.com";
const MASTER: &str = "admin";
/// A password with every character SQL and URLs treat specially.
const MASTER_PASSWORD: &str = "p@ss:w/o?r#d'\"\\ %x";
const SLICE: &str = include_str!("fixtures/openemr-slice.sql");

fn endpoint(instance: &str) -> Endpoint {
    Endpoint {
        host: format!("{instance}.aaaaaaaaaa.us-east-1.rds.amazonaws.com"),
        port: 3306,
    }
}

/// Every us-east-1 endpoint dialled at the test server.
fn addresses(db: &MariaDb) -> AddressMap {
    AddressMap::parse(&[format!(
        "*.us-east-1.rds.amazonaws.com=127.0.0.1:{}",
        db.port
    )])
    .unwrap()
}

fn login(database: &str, password: &str) -> Login {
    Login {
        user: MASTER.into(),
        password: SecretValue(password.into()),
        database: Some(database.into()),
    }
}

/// A server with the master user and three schemas: `openemr` (the slice, seeded),
/// `hollow` (the slice's tables, no rows) and `blank` (no tables).
fn server(name: &str) -> MariaDb {
    let db = MariaDb::start_for(name, &[RDS_NAMES]);
    let quoted = support::mariadb::sql_string(MASTER_PASSWORD);
    db.root(&format!(
        "CREATE USER '{MASTER}'@'%' IDENTIFIED BY {quoted} REQUIRE SSL; \
         GRANT ALL PRIVILEGES ON *.* TO '{MASTER}'@'%' WITH GRANT OPTION; \
         CREATE DATABASE openemr; CREATE DATABASE hollow; CREATE DATABASE blank"
    ));
    db.root(&format!("USE openemr; {SLICE}"));
    let tables_only: String = SLICE
        .split_inclusive(";\n")
        .filter(|s| !s.contains("INSERT INTO"))
        .collect();
    db.root(&format!("USE hollow; {tables_only}"));
    db
}

async fn verify(db: &MariaDb, instance: &str, database: &str, ca: &[u8]) -> DatabaseVerdict {
    let mut session = connect(
        &endpoint(instance),
        &login(database, MASTER_PASSWORD),
        ca,
        &addresses(db),
        Duration::from_secs(20),
    )
    .await;
    let verdict = checks::run(&VerificationCheck::all(), session.as_mut().map_err(|e| &*e)).await;
    if let Ok(s) = session {
        s.close().await;
    }
    verdict
}

fn found(v: &DatabaseVerdict) -> Vec<(VerificationCheck, bool, String)> {
    v.findings
        .iter()
        .map(|f| (f.check, f.passed, f.message.clone()))
        .collect()
}

#[tokio::test]
async fn a_seeded_openemr_database_passes_every_database_check_through_the_address_map() {
    let db = server("checks-seeded");
    let ca = std::fs::read(&db.ca).unwrap();
    let verdict = verify(&db, "clinic-restored", "openemr", &ca).await;
    let found = found(&verdict);
    // Only the database's checks: documents and web readiness are not this module's.
    assert_eq!(
        found.iter().map(|f| f.0).collect::<Vec<_>>(),
        checks::DATABASE_CHECKS.to_vec(),
        "{found:#?}"
    );
    assert!(found.iter().all(|f| f.1), "{found:#?}");
    let reachable = &found[0].2;
    assert!(
        reachable.contains("admin logged in to clinic-restored.aaaaaaaaaa.us-east-1.rds.amazonaws.com:3306 over TLSv1."),
        "{reachable}"
    );
    assert!(reachable.contains("MariaDB"), "{reachable}");
    // The slice's version row (tests/fixtures/openemr-slice.sql).
    let schema = verdict.schema.clone().expect("the schema version");
    assert_eq!(
        (schema.release.as_str(), schema.database, schema.acl),
        ("8.0.0", 530, 12)
    );
    assert!(
        found[1]
            .2
            .starts_with("OpenEMR 8.0.0 schema (v_database 530, v_acl 12)"),
        "{}",
        found[1].2
    );
    assert_eq!(found[2].2, "rows: users 2, patient_data 3, globals 4");
    // Nothing the checks say carries the password.
    assert!(found.iter().all(|f| !f.2.contains(MASTER_PASSWORD)));

    // The same checks by hand: `openemr-operator check-database`.
    let by_hand = |database: &str, password: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_openemr-operator"));
        cmd.args([
            "check-database",
            "--endpoint",
            "clinic-restored.aaaaaaaaaa.us-east-1.rds.amazonaws.com:3306",
            "--user",
            MASTER,
            "--database",
            database,
            "--mysql-ca-file",
        ])
        .arg(&db.ca)
        .arg("--database-address")
        .arg(format!(
            "*.us-east-1.rds.amazonaws.com=127.0.0.1:{}",
            db.port
        ))
        .env_remove("MYSQL_PASSWORD");
        if let Some(p) = password {
            cmd.env("MYSQL_PASSWORD", p);
        }
        let out = cmd.output().unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (
            out.status.code(),
            lines,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, lines, err) = by_hand("openemr", Some(MASTER_PASSWORD));
    assert_eq!(code, Some(0), "{lines:?} {err}");
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["passed"] == true), "{lines:?}");
    assert_eq!(
        lines[2]["message"],
        "rows: users 2, patient_data 3, globals 4"
    );
    let (code, lines, _) = by_hand("hollow", Some(MASTER_PASSWORD));
    assert_eq!(code, Some(1), "{lines:?}");
    assert_eq!(
        (lines[0]["passed"].as_bool(), lines[2]["passed"].as_bool()),
        (Some(true), Some(false))
    );
    let (code, lines, err) = by_hand("openemr", None);
    assert_eq!((code, lines.len()), (Some(2), 0));
    assert!(err.contains("MYSQL_PASSWORD"), "{err}");
}

#[tokio::test]
async fn a_blank_or_hollow_database_fails_naming_what_is_missing_or_empty() {
    let db = server("checks-empty");
    let ca = std::fs::read(&db.ca).unwrap();

    let blank = found(&verify(&db, "blank", "blank", &ca).await);
    assert!(blank[0].1, "reachable: {blank:#?}");
    assert_eq!(
        blank[1],
        (
            VerificationCheck::SchemaPresent,
            false,
            "OpenEMR's schema is not there: missing tables version, globals, keys, users, users_secure, patient_data, documents".into()
        )
    );
    assert_eq!(
        blank[2],
        (
            VerificationCheck::TablesNonEmpty,
            false,
            "users missing, patient_data missing, globals missing (rows: none counted)".into()
        )
    );

    let hollow = found(&verify(&db, "hollow", "hollow", &ca).await);
    assert_eq!(
        hollow[1],
        (
            VerificationCheck::SchemaPresent,
            false,
            "OpenEMR's version table has 0 rows, not 1: the schema is damaged or half-installed"
                .into()
        )
    );
    assert_eq!(
        hollow[2],
        (
            VerificationCheck::TablesNonEmpty,
            false,
            "users empty, patient_data empty, globals empty (rows: users 0, patient_data 0, globals 0)".into()
        )
    );

    // A schema name that does not exist: refused at login, and said so.
    let missing = found(&verify(&db, "gone", "no_such_schema", &ca).await);
    assert!(
        !missing[0].1 && missing[0].2.starts_with("DatabaseLoginRefused: "),
        "{missing:#?}"
    );
    assert!(missing[0].2.contains("no_such_schema"), "{missing:#?}");
}

#[tokio::test]
async fn a_server_the_bundle_or_the_name_does_not_vouch_for_is_refused_and_said_why() {
    let db = server("checks-refused");
    let ca = std::fs::read(&db.ca).unwrap();
    let dir = db.dir.join("other-ca");
    let wrong_ca = std::fs::read(unrelated_ca(&dir)).unwrap();
    let map = addresses(&db);
    let open = |instance: &str, host: Option<&str>, password: &str, bundle: &[u8]| {
        let mut at = endpoint(instance);
        if let Some(h) = host {
            at.host = h.into();
        }
        let (login, bundle, map) = (login("openemr", password), bundle.to_vec(), map.clone());
        async move { connect(&at, &login, &bundle, &map, Duration::from_secs(20)).await }
    };

    // A CA bundle that did not sign the server's certificate.
    let e = open("a", None, MASTER_PASSWORD, &wrong_ca)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "DatabaseCertificateRejected", "{e}");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    let v = checks::run(&VerificationCheck::all(), Err(&e)).await;
    assert_eq!(v.findings.len(), 3);
    assert!(
        v.findings[0]
            .message
            .starts_with("DatabaseCertificateRejected: "),
        "{:?}",
        v.findings
    );
    assert_eq!(
        v.findings[1].message,
        "not run: the database was not reachable (DatabaseCertificateRejected)"
    );
    assert!(v.findings.iter().all(|f| !f.passed));

    // The right CA, but a name the certificate does not carry (another region's endpoint,
    // dialled at the same server by a rule of its own): hostname verification refuses it.
    let both = AddressMap::parse(&[
        format!("*.us-east-1.rds.amazonaws.com=127.0.0.1:{}", db.port),
        format!("*.eu-west-1.rds.amazonaws.com=127.0.0.1:{}", db.port),
    ])
    .unwrap();
    let elsewhere = Endpoint {
        host: "a.aaaaaaaaaa.eu-west-1.rds.amazonaws.com".into(),
        port: 3306,
    };
    let e = connect(
        &elsewhere,
        &login("openemr", MASTER_PASSWORD),
        &ca,
        &both,
        Duration::from_secs(20),
    )
    .await
    .unwrap_err();
    assert_eq!(e.reason(), "DatabaseCertificateRejected", "{e}");
    assert!(e.to_string().contains("not valid for name"), "{e}");

    // A wrong password: refused by the server, the message naming the user, not the password.
    let e = open("a", None, "not-the-password", &ca).await.unwrap_err();
    assert_eq!(e.reason(), "DatabaseLoginRefused", "{e}");
    assert!(
        e.to_string().contains("Access denied for user 'admin'"),
        "{e}"
    );
    assert!(!e.to_string().contains("not-the-password"), "{e}");

    // A bundle with no certificate in it.
    let e = open("a", None, MASTER_PASSWORD, b"").await.unwrap_err();
    assert!(matches!(e, SqlError::NoCaCertificate), "{e}");

    // Nothing listening where the map sends it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let nowhere = AddressMap::parse(&[format!("*.rds.amazonaws.com=127.0.0.1:{port}")]).unwrap();
    let e = connect(
        &endpoint("a"),
        &login("openemr", MASTER_PASSWORD),
        &ca,
        &nowhere,
        Duration::from_secs(20),
    )
    .await
    .unwrap_err();
    assert_eq!(e.reason(), "DatabaseUnreachable", "{e}");
    assert!(
        e.to_string()
            .contains(&format!("dialled at 127.0.0.1:{port}")),
        "{e}"
    );

    // The right CA and name: the same server is accepted.
    open("a", None, MASTER_PASSWORD, &ca)
        .await
        .unwrap()
        .close()
        .await;
}

#[tokio::test]
async fn openemrs_user_gets_a_new_password_and_keeps_its_tls_requirement() {
    let db = server("password-reset");
    db.root("CREATE USER 'openemr'@'%' IDENTIFIED BY 'SourcePassw0rd' REQUIRE SSL; GRANT ALL ON openemr.* TO 'openemr'@'%'");
    let ca = std::fs::read(&db.ca).unwrap();
    let map = addresses(&db);
    let as_openemr = |password: &str| Login {
        user: "openemr".into(),
        password: SecretValue(password.into()),
        database: Some("openemr".into()),
    };
    let at = endpoint("restored");
    let timeout = Duration::from_secs(20);

    let mut master = connect(&at, &login("openemr", MASTER_PASSWORD), &ca, &map, timeout)
        .await
        .unwrap();
    master
        .set_password("openemr", &SecretValue("TargetPassw0rd9".into()))
        .await
        .unwrap();
    // The new password logs in, over TLS, and the old one no longer does.
    let mut user = connect(&at, &as_openemr("TargetPassw0rd9"), &ca, &map, timeout)
        .await
        .unwrap();
    let v = checks::run(&[VerificationCheck::DatabaseReachable], Ok(&mut user)).await;
    assert!(v.findings[0].passed, "{:?}", v.findings);
    user.close().await;
    let e = connect(&at, &as_openemr("SourcePassw0rd"), &ca, &map, timeout)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "DatabaseLoginRefused", "{e}");
    assert_eq!(
        db.root("SELECT ssl_type FROM mysql.user WHERE user = 'openemr'"),
        "ANY"
    );

    // Values whose quoting would depend on the server's sql_mode are refused, unsent.
    for bad in ["it's", r"back\slash", ""] {
        let e = master
            .set_password("openemr", &SecretValue(bad.into()))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "DatabaseStatementFailed");
        assert!(
            e.to_string()
                .contains("the password is empty or holds a quote"),
            "{e}"
        );
    }
    // A user that does not exist: the server's words, no password in them.
    let e = master
        .set_password("nobody", &SecretValue("Whatever123".into()))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("setting the password of nobody: "),
        "{e}"
    );
    assert!(!e.to_string().contains("Whatever123"), "{e}");
    master.close().await;
}

/// What PHP makes of `hash`, as OpenEMR's `AuthHash` checks a login: the algorithm
/// `password_get_info` names (`unknown` fails `hashValid`), and whether `password_verify`
/// accepts `password`.
fn php_judges(hash: &str, password: &str) -> (String, bool) {
    serde_json::from_value(php(
        "echo json_encode([password_get_info($argv[1])['algoName'], password_verify($argv[2], $argv[1])]);",
        &[hash, password],
    ))
    .unwrap()
}

/// What PHP's `script` prints (JSON), given `args` as `$argv[1..]`.
fn php(script: &str, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new("php")
        .args(["-r", script, "--"])
        .args(args)
        .output()
        .expect("php (run hack/install-mariadb.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// OpenEMR's first administrator in a restored database (id 1, as the installer makes it)
/// gets the password of the target's Secret: hashed so that PHP, as OpenEMR checks a
/// login, knows the algorithm and accepts the password (and refuses another); matched by
/// exact name; with the time of the change and the failure counters cleared, so neither an
/// expired password nor earlier failures lock the account. An older table without the
/// counters still gets its hash. No such user: said, nothing written.
#[tokio::test]
async fn the_first_administrator_gets_a_password_openemr_accepts() {
    use openemr_operator::mysql::admin;
    let db = server("admin-reset");
    let ca = std::fs::read(&db.ca).unwrap();
    let (map, at, timeout) = (
        addresses(&db),
        endpoint("restored"),
        Duration::from_secs(20),
    );
    let mut master = connect(&at, &login("openemr", MASTER_PASSWORD), &ca, &map, timeout)
        .await
        .unwrap();
    let first = admin::first_administrator(&mut master).await.unwrap();
    assert_eq!(first.as_deref(), Some("administrator"));
    let source_hash = admin::stored_hash(&mut master, "administrator")
        .await
        .unwrap()
        .unwrap();
    let password = SecretValue("N3w admin-pass".into());
    assert!(!admin::matches(&password, &source_hash));

    // The password set, and the hash stored for it.
    async fn set(master: &mut openemr_operator::mysql::Session, password: &SecretValue) -> String {
        assert!(
            admin::set_password(master, "administrator", password)
                .await
                .unwrap()
        );
        admin::stored_hash(master, "administrator")
            .await
            .unwrap()
            .unwrap()
    }
    let hash = set(&mut master, &password).await;
    assert!(admin::matches(&password, &hash));
    assert_eq!(php_judges(&hash, "N3w admin-pass"), ("bcrypt".into(), true));
    assert_eq!(php_judges(&hash, "N3w admin-pas"), ("bcrypt".into(), false));
    assert_eq!(
        db.root(
            "SELECT login_fail_counter, last_login_fail IS NULL, \
             TIMESTAMPDIFF(MINUTE, last_update_password, NOW()) < 10 \
             FROM openemr.users_secure WHERE id = 1"
        ),
        "0\t1\t1"
    );
    // bcrypt's longest password, whole: PHP reads the same 72 bytes.
    let longest = "x".repeat(71) + "y";
    let hashed = admin::hash(&SecretValue(longest.clone())).unwrap();
    assert_eq!(php_judges(&hashed, &longest), ("bcrypt".into(), true));
    assert!(!php_judges(&hashed, &("x".repeat(71) + "z")).1);
    // Why `$2y$`: PHP does not know bcrypt's `$2b$` spelling, and OpenEMR refuses the hash.
    let spelled_b = bcrypt::hash("N3w admin-pass", 4).unwrap();
    assert_eq!(php_judges(&spelled_b, "N3w admin-pass").0, "unknown");
    assert!(!admin::matches(&password, &spelled_b));

    // Names are matched exactly, as OpenEMR's login matches them.
    for other in ["nobody", "ADMINISTRATOR"] {
        assert!(
            !admin::set_password(&mut master, other, &password)
                .await
                .unwrap()
        );
    }
    assert_eq!(
        admin::stored_hash(&mut master, "administrator")
            .await
            .unwrap(),
        Some(hash)
    );

    // An older table, without the counters: the hash and the time only.
    db.root("ALTER TABLE openemr.users_secure DROP COLUMN login_fail_counter, DROP COLUMN last_login_fail");
    let hash = set(&mut master, &SecretValue("An0ther-one".into())).await;
    assert_eq!(php_judges(&hash, "An0ther-one"), ("bcrypt".into(), true));
    master.close().await;
}

/// As OpenEMR's installer writes it: a tab before each `=`, values unescaped.
const INSTALLED_SQLCONF: &str = include_str!("fixtures/installed-sqlconf.php");

/// What PHP reads from `file`: the five variables, the `$sqlconf` array and `$config`.
fn php_reads(file: &std::path::Path) -> serde_json::Value {
    php(
        "include $argv[1]; echo json_encode(['host' => $host, 'port' => $port, 'login' => $login, 'pass' => $pass, 'dbase' => $dbase, 'sqlconf' => $sqlconf, 'config' => $config]);",
        &[file.to_str().unwrap()],
    )
}

fn site_config(site: &std::path::Path, password: Option<&str>) -> (Option<i32>, serde_json::Value) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_openemr-operator"));
    cmd.arg("site-config")
        .arg("--site-dir")
        .arg(site)
        .args([
            "--host",
            "copy-db.aaaaaaaaaa.us-east-1.rds.amazonaws.com",
            "--port",
            "3307",
            "--login",
            "openemr_copy",
            "--database",
            "openemr",
        ])
        .env_remove("OPENEMR_DATABASE_PASSWORD");
    if let Some(p) = password {
        cmd.env("OPENEMR_DATABASE_PASSWORD", p);
    }
    let out = cmd.output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(line.trim()).unwrap_or(serde_json::Value::Null);
    (out.status.code(), json)
}

#[test]
fn a_restored_sites_sqlconf_names_the_restored_database_as_php_reads_it() {
    use std::os::unix::fs::PermissionsExt;
    let root = std::env::temp_dir().join(format!("openemr-sqlconf-{}", std::process::id()));
    let site = root.join("default");
    std::fs::create_dir_all(&site).unwrap();
    let file = site.join("sqlconf.php");
    std::fs::write(&file, INSTALLED_SQLCONF).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        php_reads(&file)["host"],
        "source-db.aaaaaaaaaa.us-east-1.rds.amazonaws.com"
    );

    // A password OpenEMR's own installer could not have written: quotes, backslashes, PHP.
    let password = r#"n3w'pa$s\w"rd'; echo 'x"#;
    let (code, summary) = site_config(&site, Some(password));
    assert_eq!(code, Some(0), "{summary}");
    assert!(!summary.to_string().contains(password), "{summary}");
    assert_eq!(summary["file"], file.display().to_string());
    let read = php_reads(&file);
    let expected = serde_json::json!({
        "host": "copy-db.aaaaaaaaaa.us-east-1.rds.amazonaws.com",
        "port": "3307",
        "login": "openemr_copy",
        "pass": password,
        "dbase": "openemr",
        "config": 1,
    });
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(&read[k], v, "{k}: {read}");
    }
    assert_eq!(read["sqlconf"]["host"], expected["host"]);
    assert_eq!(read["sqlconf"]["pass"], expected["pass"]);
    // Its mode stays the web server's 0600, and no temporary file is left beside it.
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let names: Vec<_> = std::fs::read_dir(&site)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["sqlconf.php"]);

    // A site that is not configured is refused and left as it was; so is a missing password.
    let template = INSTALLED_SQLCONF.replace("$config = 1;", "$config = 0;");
    std::fs::write(&file, &template).unwrap();
    let (code, summary) = site_config(&site, Some("p"));
    assert_eq!(
        (code, summary["reason"].as_str()),
        (Some(1), Some("SiteNotConfigured")),
        "{summary}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), template);
    let (code, _) = site_config(&site, None);
    assert_eq!(code, Some(2));
    std::fs::remove_dir_all(&root).unwrap();
}
