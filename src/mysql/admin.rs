//! OpenEMR's first administrator in a restored database: the account a side-by-side
//! restore gives a password of the target's own, so that the target's admin Secret opens
//! the copy and the source's password does not.
//!
//! Checked in OpenEMR's source (`library/classes/Installer.class.php`,
//! `src/Common/Auth/AuthHash.php`, `src/Common/Auth/AuthUtils.php`):
//! - the installer makes the first administrator with id 1 in `users` and `users_secure`
//!   (`users_secure` holds the password hash, matched to `users` by id and username);
//! - a login's hash must pass PHP's `password_get_info`, which takes bcrypt only with the
//!   `$2y$` prefix (a `$2b$` hash is "invalid" and locks the account), and is checked with
//!   `password_verify` whatever `gbl_auth_hash_algo` says (a login rehashes it to that
//!   algorithm, harmlessly);
//! - a correct password still fails when `login_fail_counter` reached the limit, or when
//!   `last_update_password` is older than the expiry plus grace: OpenEMR's own password
//!   change sets `last_update_password = NOW()` and clears the failure counters, and so does
//!   this. Those columns came with later releases: only those the table has are written.
//! - OpenEMR's image reads `OE_USER`/`OE_PASS` only when it installs a site, never for a
//!   configured one: a restored database keeps the source's hash unless it is written here.

use mysql_async::prelude::Queryable;

use super::{Session, SqlError};
use crate::aws::secrets::SecretValue;

/// The first administrator's id, as OpenEMR's installer writes it.
pub const FIRST_ADMINISTRATOR_ID: i64 = 1;

/// bcrypt's cost: PHP's `password_hash` default before 8.4 (a login rehashes to a higher
/// one where PHP wants it).
const COST: u32 = 10;

/// Columns of `users_secure` a password change clears, when the table has them.
const CLEARED: [(&str, &str); 3] = [
    ("login_fail_counter", "0"),
    ("last_login_fail", "NULL"),
    ("auto_block_emailed", "0"),
];

/// `password` hashed as OpenEMR's `password_hash(…, PASSWORD_DEFAULT)` writes it: bcrypt,
/// `$2y$`, a fresh salt. bcrypt reads only 72 bytes: a longer password is refused rather
/// than silently cut.
pub fn hash(password: &SecretValue) -> Result<String, String> {
    // The crate's own non-truncating mode also refuses 72 bytes (it counts the NUL that
    // PHP's bcrypt drops there too), so the limit is checked here.
    let bytes = password.0.as_bytes();
    if bytes.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "the administrator's password is {} bytes long; OpenEMR's bcrypt hash takes at most {MAX_PASSWORD_BYTES}",
            bytes.len()
        ));
    }
    bcrypt::hash_with_result(bytes, COST)
        .map(|parts| parts.format_for_version(bcrypt::Version::TwoY))
        .map_err(|e| format!("hashing the administrator's password: {e}"))
}

/// What bcrypt reads of a password.
const MAX_PASSWORD_BYTES: usize = 72;

/// Whether `stored` (a `users_secure.password`) is a hash OpenEMR accepts of `password`.
pub fn matches(password: &SecretValue, stored: &str) -> bool {
    stored.starts_with("$2y$") && bcrypt::verify(password.0.as_bytes(), stored).unwrap_or(false)
}

/// The first administrator's user name, if the database has one.
pub async fn first_administrator(session: &mut Session) -> Result<Option<String>, SqlError> {
    let rows: Vec<Option<String>> = session
        .rows_with(
            "reading the first administrator",
            "SELECT username FROM users_secure WHERE id = ?",
            (FIRST_ADMINISTRATOR_ID,),
        )
        .await?;
    Ok(rows.into_iter().next().flatten())
}

/// `username`'s stored password hash, if the account exists.
pub async fn stored_hash(
    session: &mut Session,
    username: &str,
) -> Result<Option<String>, SqlError> {
    let rows: Vec<Option<String>> = session
        .rows_with(
            &format!("reading {username}'s password hash"),
            "SELECT password FROM users_secure WHERE BINARY username = ?",
            (username,),
        )
        .await?;
    Ok(rows.into_iter().next().map(Option::unwrap_or_default))
}

/// Gives `username` the password `password`, as OpenEMR's own change does: the hash, the
/// time of the change, the failure counters cleared. `Ok(false)` when there is no such
/// account. The statement's text holds no input: the hash and the name are bound.
pub async fn set_password(
    session: &mut Session,
    username: &str,
    password: &SecretValue,
) -> Result<bool, SqlError> {
    let what = format!("setting {username}'s OpenEMR password");
    let hashed = hash(password).map_err(|detail| SqlError::Statement {
        what: what.clone(),
        detail,
    })?;
    let present: Vec<String> = session
        .rows(
            "reading users_secure's columns",
            "SELECT column_name FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = 'users_secure'",
        )
        .await?;
    let sql = update_statement(&present);
    session
        .conn
        .exec_drop(sql, (hashed, username))
        .await
        .map_err(|e| SqlError::Statement {
            what,
            detail: e.to_string(),
        })?;
    Ok(session.conn.affected_rows() > 0)
}

/// The `UPDATE` for a `users_secure` with `columns`: fixed names only.
fn update_statement(columns: &[String]) -> String {
    let has = |name: &str| columns.iter().any(|c| c.eq_ignore_ascii_case(name));
    let mut set = vec!["password = ?".to_string()];
    if has("last_update_password") {
        set.push("last_update_password = NOW()".into());
    }
    for (column, value) in CLEARED {
        if has(column) {
            set.push(format!("{column} = {value}"));
        }
    }
    format!(
        "UPDATE users_secure SET {} WHERE BINARY username = ?",
        set.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretValue {
        SecretValue(s.to_string())
    }

    #[test]
    fn a_hash_is_bcrypt_as_php_writes_it_and_verifies() {
        let hashed = hash(&secret("correct horse")).unwrap();
        assert!(hashed.starts_with("$2y$10$"), "{hashed}");
        assert_eq!(hashed.len(), 60);
        assert!(matches(&secret("correct horse"), &hashed));
        assert!(!matches(&secret("wrong"), &hashed));
        assert_ne!(hash(&secret("correct horse")).unwrap(), hashed, "salted");
    }

    #[test]
    fn hashes_openemr_would_refuse_or_that_are_not_bcrypt_never_match() {
        let b = bcrypt::hash("pw", 4).unwrap();
        assert!(b.starts_with("$2b$"));
        assert!(!matches(&secret("pw"), &b), "PHP refuses $2b$");
        assert!(!matches(&secret("pw"), "NoLongerUsed"));
        assert!(!matches(&secret("pw"), ""));
    }

    #[test]
    fn a_password_bcrypt_would_cut_is_refused_not_cut() {
        let long = "x".repeat(73);
        let err = hash(&secret(&long)).unwrap_err();
        assert!(err.contains("73 bytes") && err.contains("72"), "{err}");
        assert!(hash(&secret(&"x".repeat(72))).is_ok());
    }

    #[test]
    fn the_update_writes_only_the_columns_the_table_has() {
        let old: Vec<String> = ["id", "username", "password"].map(String::from).to_vec();
        assert_eq!(
            update_statement(&old),
            "UPDATE users_secure SET password = ? WHERE BINARY username = ?"
        );
        let new: Vec<String> = [
            "id",
            "username",
            "password",
            "LAST_UPDATE_PASSWORD",
            "login_fail_counter",
            "last_login_fail",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            update_statement(&new),
            "UPDATE users_secure SET password = ?, last_update_password = NOW(), login_fail_counter = 0, last_login_fail = NULL WHERE BINARY username = ?"
        );
    }
}
