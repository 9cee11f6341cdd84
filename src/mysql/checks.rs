//! The database half of a restore's verification: `DatabaseReachable`, `SchemaPresent` and
//! `TablesNonEmpty`, each a finding a person can act on. The other checks
//! (`DocumentsPresent`, `WebReady`) read the volume and the clinic, not the database.
//!
//! What is read, from OpenEMR's `sql/database.sql`: `version` (one row: `v_major`,
//! `v_minor`, `v_patch`, `v_realpatch`, `v_database`, `v_acl`), and the tables a working
//! clinic cannot lack. Counts are exact (`COUNT(*)`): a restored clinic's tables are small
//! enough, and a person reading the finding wants the number.

use super::{Session, SqlError};
use crate::api::VerificationCheck;

/// Tables without which OpenEMR does not run, or which hold what a clinic is for: the
/// schema version, settings, the encryption keys (paired with the drive keys in the
/// documents), accounts and their password hashes, patients, and the documents index.
pub const KEY_TABLES: [&str; 7] = [
    "version",
    "globals",
    "keys",
    "users",
    "users_secure",
    "patient_data",
    "documents",
];

/// Tables a restored clinic must have rows in: accounts, patients, settings.
pub const NON_EMPTY_TABLES: [&str; 3] = ["users", "patient_data", "globals"];

/// The checks this module runs, in their order.
pub const DATABASE_CHECKS: [VerificationCheck; 3] = [
    VerificationCheck::DatabaseReachable,
    VerificationCheck::SchemaPresent,
    VerificationCheck::TablesNonEmpty,
];

/// One check's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub check: VerificationCheck,
    pub passed: bool,
    /// What was found, or why it failed.
    pub message: String,
}

/// OpenEMR's schema version as its `version` table records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaVersion {
    /// e.g. `7.0.3` (`v_major.v_minor.v_patch`, with `-p<realpatch>` when not 0).
    pub release: String,
    /// `v_database`: the database schema's revision, which an image's upgrade compares.
    pub database: i64,
    /// `v_acl`.
    pub acl: i64,
}

/// What the database checks found, with the schema version when it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseVerdict {
    pub findings: Vec<Finding>,
    pub schema: Option<SchemaVersion>,
}

/// Runs the database checks among `wanted`, in order, on `session` (or on the failure to
/// open it, which fails `DatabaseReachable` and every later check with the reason). A later
/// check that cannot run because an earlier one failed says so instead of guessing.
pub async fn run(
    wanted: &[VerificationCheck],
    session: Result<&mut Session, &SqlError>,
) -> DatabaseVerdict {
    let wants = |c: VerificationCheck| wanted.contains(&c);
    let mut findings = Vec::new();
    let mut schema = None;
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            for check in DATABASE_CHECKS.into_iter().filter(|c| wants(*c)) {
                let message = if check == VerificationCheck::DatabaseReachable {
                    format!("{}: {e}", e.reason())
                } else {
                    format!("not run: the database was not reachable ({})", e.reason())
                };
                findings.push(Finding {
                    check,
                    passed: false,
                    message,
                });
            }
            return DatabaseVerdict { findings, schema };
        }
    };

    if wants(VerificationCheck::DatabaseReachable) {
        findings.push(finding(
            VerificationCheck::DatabaseReachable,
            reachable(session).await,
        ));
    }
    let mut present: Vec<String> = Vec::new();
    if wants(VerificationCheck::SchemaPresent) || wants(VerificationCheck::TablesNonEmpty) {
        match tables_present(session).await {
            Ok(t) => present = t,
            Err(e) => {
                for check in [
                    VerificationCheck::SchemaPresent,
                    VerificationCheck::TablesNonEmpty,
                ]
                .into_iter()
                .filter(|c| wants(*c))
                {
                    findings.push(finding(check, Err(e.to_string())));
                }
                return DatabaseVerdict { findings, schema };
            }
        }
    }
    if wants(VerificationCheck::SchemaPresent) {
        let outcome = match schema_present(session, &present).await {
            Ok((version, message)) => {
                schema = Some(version);
                Ok(message)
            }
            Err(e) => Err(e),
        };
        findings.push(finding(VerificationCheck::SchemaPresent, outcome));
    }
    if wants(VerificationCheck::TablesNonEmpty) {
        findings.push(finding(
            VerificationCheck::TablesNonEmpty,
            tables_non_empty(session, &present).await,
        ));
    }
    DatabaseVerdict { findings, schema }
}

fn finding(check: VerificationCheck, outcome: Result<String, String>) -> Finding {
    let (passed, message) = match outcome {
        Ok(m) => (true, m),
        Err(m) => (false, m),
    };
    Finding {
        check,
        passed,
        message,
    }
}

/// The session is open, so TLS and the login held; say which TLS and which server, and
/// prove the session is encrypted from the server's side too. `SHOW SESSION STATUS` reads
/// the same on MySQL 8 (whose `information_schema` no longer has it) and MariaDB.
async fn reachable(session: &mut Session) -> Result<String, String> {
    let version: Vec<String> = session
        .rows("reading the server version", "SELECT VERSION()")
        .await
        .map_err(|e| e.to_string())?;
    let status: Vec<(String, String)> = session
        .rows(
            "reading the session's TLS status",
            "SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')",
        )
        .await
        .map_err(|e| e.to_string())?;
    let get = |name: &str| {
        status
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let endpoint = &session.endpoint;
    match get("Ssl_cipher") {
        Some(cipher) => Ok(format!(
            "{} logged in to {endpoint} over {} ({cipher}), certificate verified; server {}",
            session.user,
            get("Ssl_version").unwrap_or_else(|| "TLS".into()),
            version.first().cloned().unwrap_or_default()
        )),
        None => Err(format!(
            "{endpoint} reports the session is not encrypted (Ssl_cipher empty)"
        )),
    }
}

/// Which of [`KEY_TABLES`] the session's schema has.
async fn tables_present(session: &mut Session) -> Result<Vec<String>, SqlError> {
    let schema: Vec<Option<String>> = session
        .rows("reading the session's schema", "SELECT DATABASE()")
        .await?;
    if schema.into_iter().flatten().next().is_none() {
        return Err(SqlError::Statement {
            what: "reading OpenEMR's tables".into(),
            detail: "the session has no schema (the clinic's database name is missing)".into(),
        });
    }
    let marks = vec!["?"; KEY_TABLES.len()].join(", ");
    session
        .rows_with(
            "listing OpenEMR's tables",
            &format!(
                "SELECT TABLE_NAME FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ({marks})"
            ),
            KEY_TABLES.to_vec(),
        )
        .await
}

async fn schema_present(
    session: &mut Session,
    present: &[String],
) -> Result<(SchemaVersion, String), String> {
    let missing: Vec<&str> = KEY_TABLES
        .iter()
        .copied()
        .filter(|t| !present.iter().any(|p| p.eq_ignore_ascii_case(t)))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "OpenEMR's schema is not there: missing table{} {}",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", ")
        ));
    }
    type Row = (i64, i64, i64, i64, i64, i64);
    let rows: Vec<Row> = session
        .rows(
            "reading OpenEMR's version table",
            "SELECT v_major, v_minor, v_patch, v_realpatch, v_database, v_acl FROM `version`",
        )
        .await
        .map_err(|e| e.to_string())?;
    let [(major, minor, patch, realpatch, database, acl)] = rows[..] else {
        return Err(format!(
            "OpenEMR's version table has {} rows, not 1: the schema is damaged or half-installed",
            rows.len()
        ));
    };
    let release = if realpatch == 0 {
        format!("{major}.{minor}.{patch}")
    } else {
        format!("{major}.{minor}.{patch}-p{realpatch}")
    };
    let message = format!(
        "OpenEMR {release} schema (v_database {database}, v_acl {acl}); tables {} present",
        KEY_TABLES.join(", ")
    );
    Ok((
        SchemaVersion {
            release,
            database,
            acl,
        },
        message,
    ))
}

async fn tables_non_empty(session: &mut Session, present: &[String]) -> Result<String, String> {
    let mut counts = Vec::new();
    let mut failures = Vec::new();
    for table in NON_EMPTY_TABLES {
        if !present.iter().any(|p| p.eq_ignore_ascii_case(table)) {
            failures.push(format!("{table} missing"));
            continue;
        }
        // The name is one of ours, not input; backquoted all the same.
        let rows: Vec<i64> = session
            .rows(
                &format!("counting {table}"),
                &format!("SELECT COUNT(*) FROM `{table}`"),
            )
            .await
            .map_err(|e| e.to_string())?;
        let n = rows.first().copied().unwrap_or(0);
        if n == 0 {
            failures.push(format!("{table} empty"));
        }
        counts.push(format!("{table} {n}"));
    }
    if failures.is_empty() {
        Ok(format!("rows: {}", counts.join(", ")))
    } else {
        Err(format!(
            "{} (rows: {})",
            failures.join(", "),
            if counts.is_empty() {
                "none counted".into()
            } else {
                counts.join(", ")
            }
        ))
    }
}
