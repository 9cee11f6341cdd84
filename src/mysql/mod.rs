//! The operator's own MySQL sessions with a clinic's database: what a restore uses to
//! give OpenEMR's user in the restored data a password of the target's and to verify it.
//!
//! Always TLS, never a plain fallback: the server's certificate is checked against the CA
//! bundle the web tier trusts (`--mysql-ca-file`) with the built-in roots off, and against
//! the endpoint's host name as RDS reports it. Where that name cannot be dialled directly
//! (a tunnel, a proxy, or tests whose MariaDB stands in for endpoints nothing listens on),
//! [`AddressMap`] (`--database-address`) dials another address; the certificate is still
//! checked against the RDS name, so a mapped connection is verified exactly as a direct one.

pub mod admin;
pub mod checks;

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::aws::secrets::SecretValue;

/// A database endpoint as RDS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Who connects, and to which schema.
#[derive(Debug)]
pub struct Login {
    pub user: String,
    pub password: SecretValue,
    /// The schema the session uses (OpenEMR's), if any.
    pub database: Option<String>,
}

/// Endpoint host names dialled at another address: `--database-address` rules, first match
/// wins; a name no rule matches is dialled as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressMap {
    rules: Vec<AddressRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct AddressRule {
    /// A whole host name, or `*.` and a suffix matching any name below it.
    pattern: String,
    host: String,
    port: u16,
}

impl AddressRule {
    fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match self.pattern.strip_prefix('*') {
            Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
            None => host == self.pattern,
        }
    }
}

impl AddressMap {
    /// Rules written `NAME=HOST:PORT`, where NAME is a host name or `*.domain` (any name
    /// below the domain), e.g. `*.us-east-1.rds.amazonaws.com=10.0.0.5:3306`.
    pub fn parse<S: AsRef<str>>(rules: &[S]) -> Result<AddressMap, String> {
        let rules = rules
            .iter()
            .map(|r| parse_rule(r.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(AddressMap { rules })
    }

    /// Where to dial `endpoint`.
    pub fn dial(&self, endpoint: &Endpoint) -> (String, u16) {
        self.rules
            .iter()
            .find(|r| r.matches(&endpoint.host))
            .map(|r| (r.host.clone(), r.port))
            .unwrap_or_else(|| (endpoint.host.clone(), endpoint.port))
    }
}

fn parse_rule(rule: &str) -> Result<AddressRule, String> {
    let bad = |why: &str| format!("--database-address {rule:?}: {why} (write NAME=HOST:PORT)");
    let (pattern, address) = rule.split_once('=').ok_or_else(|| bad("no '='"))?;
    let pattern = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
    let name = pattern.strip_prefix("*.").unwrap_or(&pattern);
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if pattern.contains('*') && !pattern.starts_with("*.") || !name.split('.').all(label_ok) {
        return Err(bad(
            "NAME must be a host name, or '*.' and a domain (a wildcard only as the first label)",
        ));
    }
    let (host, port) = address
        .trim()
        .rsplit_once(':')
        .ok_or_else(|| bad("no ':PORT'"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad("HOST is empty"));
    }
    // Two rules run together ("A=H:P,B=H:P" as one value) would otherwise pass as one.
    if host.contains(['=', ',', '/']) {
        return Err(bad(
            "HOST is not a host name or address; give one rule per value",
        ));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("PORT must be 1 to 65535"))?;
    Ok(AddressRule {
        pattern: pattern
            .strip_prefix('*')
            .map_or(pattern.clone(), |s| format!("*{s}")),
        host: host.to_string(),
        port,
    })
}

/// Why a session could not be had or a statement failed; never carries a password.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{endpoint} (dialled at {address}) did not complete a TLS login within {after:?}")]
    Timeout {
        endpoint: String,
        address: String,
        after: Duration,
    },
    #[error("cannot reach {endpoint} (dialled at {address}): {detail}")]
    Unreachable {
        endpoint: String,
        address: String,
        detail: String,
    },
    #[error(
        "{endpoint}'s TLS certificate was not accepted: {detail} (it must chain to the CA bundle given by --mysql-ca-file and name {host})"
    )]
    Untrusted {
        endpoint: String,
        host: String,
        detail: String,
    },
    #[error("the CA bundle holds no PEM certificate: every connection would fail verification")]
    NoCaCertificate,
    #[error("{endpoint} refused the login of {user}: {detail}")]
    Refused {
        endpoint: String,
        user: String,
        detail: String,
    },
    #[error("{what}: {detail}")]
    Statement { what: String, detail: String },
}

impl SqlError {
    /// A stable CamelCase word for conditions, Events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SqlError::Timeout { .. } => "DatabaseTimeout",
            SqlError::Unreachable { .. } => "DatabaseUnreachable",
            SqlError::Untrusted { .. } => "DatabaseCertificateRejected",
            SqlError::NoCaCertificate => "DatabaseCaBundleEmpty",
            SqlError::Refused { .. } => "DatabaseLoginRefused",
            SqlError::Statement { .. } => "DatabaseStatementFailed",
        }
    }
}

/// A login that reached the server and was turned away: access denied (to the server or
/// the schema), an unknown schema.
const LOGIN_REFUSED: [u16; 4] = [1044, 1045, 1049, 1698];

/// One open session, TLS verified.
pub struct Session {
    conn: mysql_async::Conn,
    /// The endpoint as RDS reports it (what messages name).
    pub endpoint: Endpoint,
    /// The user logged in.
    pub user: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({}@{})", self.user, self.endpoint)
    }
}

/// Opens a session to `endpoint` as `login` over TLS verified against `ca_pem`, dialled
/// where `addresses` says; gives up after `timeout`.
pub async fn connect(
    endpoint: &Endpoint,
    login: &Login,
    ca_pem: &[u8],
    addresses: &AddressMap,
    timeout: Duration,
) -> Result<Session, SqlError> {
    // An empty or non-PEM bundle would make rustls trust nothing and fail with a vaguer
    // handshake error; say what is wrong instead.
    if !String::from_utf8_lossy(ca_pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(SqlError::NoCaCertificate);
    }
    let (dial_host, dial_port) = addresses.dial(endpoint);
    let address = format!("{dial_host}:{dial_port}");
    let ssl = mysql_async::SslOpts::default()
        .with_root_certs(vec![ca_pem.to_vec().into()])
        .with_disable_built_in_roots(true)
        // Verify the name RDS reports even when another address is dialled.
        .with_danger_tls_hostname_override(Some(endpoint.host.clone()));
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(dial_host)
        .tcp_port(dial_port)
        .user(Some(login.user.clone()))
        .pass(Some(login.password.0.clone()))
        .db_name(login.database.clone())
        .ssl_opts(ssl)
        // Never switch to a local socket (mysql_async would for a 127.0.0.1 address): a
        // socket has no TLS to verify.
        .prefer_socket(false)
        .stmt_cache_size(0);
    let attempt = mysql_async::Conn::new(opts);
    let conn = match tokio::time::timeout(timeout, attempt).await {
        Err(_) => {
            return Err(SqlError::Timeout {
                endpoint: endpoint.to_string(),
                address,
                after: timeout,
            });
        }
        Ok(Err(e)) => return Err(connect_error(e, endpoint, &address, &login.user)),
        Ok(Ok(conn)) => conn,
    };
    Ok(Session {
        conn,
        endpoint: endpoint.clone(),
        user: login.user.clone(),
    })
}

fn connect_error(
    e: mysql_async::Error,
    endpoint: &Endpoint,
    address: &str,
    user: &str,
) -> SqlError {
    use mysql_async::{Error, IoError};
    let detail = e.to_string();
    // tokio-rustls hands a refused certificate back as an io::Error around rustls's own.
    let refused_tls = match &e {
        Error::Io(IoError::Tls(tls)) => Some(tls.to_string()),
        Error::Io(IoError::Io(io)) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(ToString::to_string),
        _ => None,
    };
    if let Some(detail) = refused_tls {
        return SqlError::Untrusted {
            endpoint: endpoint.to_string(),
            host: endpoint.host.clone(),
            detail,
        };
    }
    match e {
        Error::Server(s) if LOGIN_REFUSED.contains(&s.code) => SqlError::Refused {
            endpoint: endpoint.to_string(),
            user: user.to_string(),
            detail: s.message,
        },
        Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) => SqlError::Untrusted {
            endpoint: endpoint.to_string(),
            host: endpoint.host.clone(),
            detail: "the server does not offer TLS".into(),
        },
        _ => SqlError::Unreachable {
            endpoint: endpoint.to_string(),
            address: address.to_string(),
            detail,
        },
    }
}

impl Session {
    /// Rows of `sql` (a fixed statement, no user input in it).
    pub async fn rows<T: mysql_async::prelude::FromRow + Send + 'static>(
        &mut self,
        what: &str,
        sql: &str,
    ) -> Result<Vec<T>, SqlError> {
        self.conn
            .query(sql)
            .await
            .map_err(|e| statement_error(what, e))
    }

    /// Rows of `sql` with `params` bound to its `?`s.
    pub async fn rows_with<T, P>(
        &mut self,
        what: &str,
        sql: &str,
        params: P,
    ) -> Result<Vec<T>, SqlError>
    where
        T: mysql_async::prelude::FromRow + Send + 'static,
        P: Into<mysql_async::Params> + Send,
    {
        self.conn
            .exec(sql, params)
            .await
            .map_err(|e| statement_error(what, e))
    }

    /// Gives the account `user`@`%` (how OpenEMR's user is made) a new password, keeping
    /// the rest of it (`REQUIRE SSL`, grants). `ALTER USER` takes no placeholders, so both
    /// values are written as SQL string literals; a value whose quoting would depend on the
    /// server's `sql_mode` (a quote, a backslash) or that holds a NUL is refused instead,
    /// and the server's words are repeated only with the password taken out.
    pub async fn set_password(
        &mut self,
        user: &str,
        password: &SecretValue,
    ) -> Result<(), SqlError> {
        let what = format!("setting the password of {user}");
        let unquotable = |v: &str| v.is_empty() || v.contains(['\'', '\\', '\0']);
        if unquotable(user) {
            return Err(SqlError::Statement {
                what,
                detail: "the user name is empty or holds a quote, a backslash or a NUL".into(),
            });
        }
        if unquotable(&password.0) {
            return Err(SqlError::Statement {
                what,
                detail: "the password is empty or holds a quote, a backslash or a NUL".into(),
            });
        }
        let sql = format!("ALTER USER '{user}'@'%' IDENTIFIED BY '{}'", password.0);
        self.conn
            .query_drop(sql)
            .await
            .map_err(|e| SqlError::Statement {
                what,
                detail: crate::controller::redact::redact(
                    &e.to_string(),
                    std::slice::from_ref(&password.0),
                ),
            })
    }

    /// Closes the session politely (a dropped one is closed too, less tidily).
    pub async fn close(self) {
        let _ = self.conn.disconnect().await;
    }
}

fn statement_error(what: &str, e: mysql_async::Error) -> SqlError {
    SqlError::Statement {
        what: what.to_string(),
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(host: &str) -> Endpoint {
        Endpoint {
            host: host.into(),
            port: 3306,
        }
    }

    #[test]
    fn a_name_is_dialled_where_the_first_matching_rule_says() {
        let map = AddressMap::parse(&[
            "db1.abc.us-east-1.rds.amazonaws.com=127.0.0.1:4000",
            "*.us-east-1.rds.amazonaws.com=10.0.0.5:3306",
            "*.eu-west-1.rds.amazonaws.com=[::1]:3307",
        ])
        .unwrap();
        let dial = |h: &str| map.dial(&endpoint(h));
        assert_eq!(
            dial("db1.abc.us-east-1.rds.amazonaws.com"),
            ("127.0.0.1".into(), 4000)
        );
        assert_eq!(
            dial("DB2.abc.us-east-1.rds.amazonaws.com."),
            ("10.0.0.5".into(), 3306)
        );
        assert_eq!(
            dial("db.x.eu-west-1.rds.amazonaws.com"),
            ("::1".into(), 3307)
        );
        // The domain itself is not below itself; other names are dialled as they are.
        assert_eq!(
            dial("us-east-1.rds.amazonaws.com"),
            ("us-east-1.rds.amazonaws.com".into(), 3306)
        );
        assert_eq!(dial("db.example.org"), ("db.example.org".into(), 3306));
        assert_eq!(
            AddressMap::default().dial(&endpoint("a.b")),
            ("a.b".into(), 3306)
        );
    }

    #[test]
    fn a_malformed_rule_is_refused_naming_the_flag_and_the_rule() {
        for (rule, why) in [
            ("db.example.org", "no '='"),
            ("db.example.org=127.0.0.1", "no ':PORT'"),
            ("db.example.org=127.0.0.1:0", "PORT must be"),
            ("db.example.org=127.0.0.1:70000", "PORT must be"),
            ("db.example.org=:3306", "HOST is empty"),
            (
                "db.*.org=127.0.0.1:3306",
                "wildcard only as the first label",
            ),
            ("*=127.0.0.1:3306", "wildcard only as the first label"),
            (
                "*.a.example=127.0.0.1:3306,*.b.example=127.0.0.1:3306",
                "one rule per value",
            ),
            ("db..org=127.0.0.1:3306", "wildcard only as the first label"),
            (
                "db_x.org=127.0.0.1:3306",
                "wildcard only as the first label",
            ),
        ] {
            let e = AddressMap::parse(&[rule]).unwrap_err();
            assert!(e.starts_with("--database-address"), "{rule}: {e}");
            assert!(e.contains(rule) && e.contains(why), "{rule}: {e}");
        }
    }

    #[test]
    fn error_reasons_are_distinct() {
        let all = [
            SqlError::Timeout {
                endpoint: String::new(),
                address: String::new(),
                after: Duration::ZERO,
            },
            SqlError::Unreachable {
                endpoint: String::new(),
                address: String::new(),
                detail: String::new(),
            },
            SqlError::Untrusted {
                endpoint: String::new(),
                host: String::new(),
                detail: String::new(),
            },
            SqlError::NoCaCertificate,
            SqlError::Refused {
                endpoint: String::new(),
                user: String::new(),
                detail: String::new(),
            },
            SqlError::Statement {
                what: String::new(),
                detail: String::new(),
            },
        ];
        let reasons: std::collections::BTreeSet<_> = all.iter().map(SqlError::reason).collect();
        assert_eq!(reasons.len(), all.len());
    }
}
