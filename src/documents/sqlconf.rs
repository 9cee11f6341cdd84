//! `sites/<site>/sqlconf.php` pointed at a restored clinic's database: a restore step.
//!
//! OpenEMR's installer writes the file once (host, port, login, password and schema as
//! single-quoted PHP strings, then `$config = 1`), and the image never rewrites it for a
//! configured site. Restored documents therefore name the source clinic's database and
//! password; left alone, a side-by-side copy's workers would write into production. The
//! rewrite replaces exactly those five assignments and keeps every other line (the
//! `$sqlconf` array reads the variables, and older sites carry settings of their own), and
//! refuses, naming the file, rather than guess: a site that is not configured, or a file
//! without one of the five assignments, is left untouched.
//!
//! Values are written as PHP single-quoted strings, escaped (`\` and `'`), unlike the
//! installer's unescaped ones, so any password survives. The file is replaced by rename,
//! keeping its mode and owner (it is 0600, the web server's).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The settings written, in the installer's order.
pub const SETTINGS: [&str; 5] = ["host", "port", "login", "pass", "dbase"];

/// What the restored site's database settings become.
pub struct DatabaseSettings {
    pub host: String,
    pub port: u16,
    pub login: String,
    pub password: crate::aws::secrets::SecretValue,
    pub database: String,
}

impl DatabaseSettings {
    fn value(&self, setting: &str) -> String {
        match setting {
            "host" => self.host.clone(),
            "port" => self.port.to_string(),
            "login" => self.login.clone(),
            "pass" => self.password.0.clone(),
            _ => self.database.clone(),
        }
    }
}

/// Why the file was not rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlconfError {
    #[error("{file}: cannot read or write it: {detail}")]
    Io { file: String, detail: String },
    #[error(
        "{file} is not a configured site (no `$config = 1`): a restore of an unconfigured site would make OpenEMR's installer run over the restored database; nothing was changed"
    )]
    NotConfigured { file: String },
    #[error(
        "{file} does not assign {missing} as OpenEMR's installer writes it (`$name = '…';` on one line): nothing was changed"
    )]
    Unrecognised { file: String, missing: String },
    #[error("{file} assigns ${setting} {count} times: nothing was changed")]
    Ambiguous {
        file: String,
        setting: String,
        count: usize,
    },
    #[error("the value of {setting} holds a NUL byte, which PHP's file cannot carry")]
    Unwritable { setting: String },
}

impl SqlconfError {
    /// A stable CamelCase word for the Job's summary and the restore's status.
    pub fn reason(&self) -> &'static str {
        match self {
            SqlconfError::Io { .. } => "SqlconfUnreadable",
            SqlconfError::NotConfigured { .. } => "SiteNotConfigured",
            SqlconfError::Unrecognised { .. } => "SqlconfUnrecognised",
            SqlconfError::Ambiguous { .. } => "SqlconfAmbiguous",
            SqlconfError::Unwritable { .. } => "SqlconfValueUnwritable",
        }
    }
}

/// `value` as a PHP single-quoted string literal.
pub fn php_single_quoted(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Which of [`SETTINGS`] a line assigns, with the text before the value and after the `;`.
fn assignment(line: &str) -> Option<(&'static str, &str, &str)> {
    let trimmed = line.trim_start();
    let rest = trimmed.strip_prefix('$')?;
    let setting = SETTINGS.into_iter().find(|s| {
        rest.strip_prefix(s)
            .is_some_and(|after| after.trim_start().starts_with('='))
    })?;
    let eq = line.find('=')?;
    let value_start = eq + 1 + line[eq + 1..].len() - line[eq + 1..].trim_start().len();
    let end = quoted_end(&line[value_start..])?;
    let after_value = line[value_start + end..].trim_start();
    let tail = after_value.strip_prefix(';')?;
    Some((setting, &line[..value_start], tail))
}

/// The length of the single-quoted PHP literal `text` starts with.
fn quoted_end(text: &str) -> Option<usize> {
    let mut chars = text.char_indices();
    if chars.next()?.1 != '\'' {
        return None;
    }
    let mut escaped = false;
    for (i, c) in chars {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '\'') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// Whether the file says the site is configured (`$config = 1;`, as the installer writes).
fn configured(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start();
        l.strip_prefix("$config")
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix('='))
            .map(str::trim_start)
            .is_some_and(|r| r.starts_with('1') && r[1..].trim_start().starts_with(';'))
    })
}

/// `text` (a `sqlconf.php` named `file` in messages) with the five settings replaced.
pub fn rewrite(text: &str, file: &str, to: &DatabaseSettings) -> Result<String, SqlconfError> {
    if !configured(text) {
        return Err(SqlconfError::NotConfigured { file: file.into() });
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        let (body, newline) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let (body, cr) = match body.strip_suffix('\r') {
            Some(b) => (b, "\r"),
            None => (body, ""),
        };
        match assignment(body) {
            Some((setting, head, tail)) => {
                *seen.entry(setting).or_default() += 1;
                let value = to.value(setting);
                if value.contains('\0') {
                    return Err(SqlconfError::Unwritable {
                        setting: setting.into(),
                    });
                }
                out.push_str(head.trim_end());
                out.push(' ');
                out.push_str(&php_single_quoted(&value));
                out.push(';');
                out.push_str(tail);
            }
            None => out.push_str(body),
        }
        out.push_str(cr);
        out.push_str(newline);
    }
    let missing: Vec<String> = SETTINGS
        .iter()
        .filter(|s| !seen.contains_key(*s))
        .map(|s| format!("${s}"))
        .collect();
    if !missing.is_empty() {
        return Err(SqlconfError::Unrecognised {
            file: file.into(),
            missing: missing.join(", "),
        });
    }
    if let Some((setting, count)) = seen.into_iter().find(|(_, n)| *n > 1) {
        return Err(SqlconfError::Ambiguous {
            file: file.into(),
            setting: setting.into(),
            count,
        });
    }
    Ok(out)
}

/// Rewrites `<site_dir>/sqlconf.php` in place (a new file renamed over it, with the old
/// one's mode and owner). Returns the file's path.
pub fn rewrite_file(site_dir: &Path, to: &DatabaseSettings) -> Result<PathBuf, SqlconfError> {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    let path = site_dir.join("sqlconf.php");
    let file = path.display().to_string();
    let io = |e: std::io::Error| SqlconfError::Io {
        file: file.clone(),
        detail: e.to_string(),
    };
    let meta = std::fs::metadata(&path).map_err(io)?;
    let text = std::fs::read_to_string(&path).map_err(io)?;
    let new = rewrite(&text, &file, to)?;
    let temporary = site_dir.join(".sqlconf.php.restoring");
    let written = (|| {
        let mut f = std::fs::File::create(&temporary)?;
        std::fs::set_permissions(&temporary, meta.permissions())?;
        if std::fs::metadata(&temporary)?.uid() != meta.uid()
            || std::fs::metadata(&temporary)?.gid() != meta.gid()
        {
            std::os::unix::fs::chown(&temporary, Some(meta.uid()), Some(meta.gid()))?;
        }
        f.write_all(new.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        std::fs::File::open(site_dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(io(e));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::secrets::SecretValue;

    /// As OpenEMR's installer writes it (a tab before each `=`).
    const INSTALLED: &str = "<?php\n//  OpenEMR\n//  MySQL Config\n\n$host\t= 'source-db.abc.us-east-1.rds.amazonaws.com';\n$port\t= '3306';\n$login\t= 'openemr';\n$pass\t= 'source-secret';\n$dbase\t= 'openemr';\n\n$sqlconf = array();\nglobal $sqlconf;\n$sqlconf[\"host\"]= $host;\n$sqlconf[\"port\"] = $port;\n$sqlconf[\"login\"] = $login;\n$sqlconf[\"pass\"] = $pass;\n$sqlconf[\"dbase\"] = $dbase;\n\n//////DO NOT TOUCH THIS///\n$config = 1; /////////////\n?>\n";

    fn target(password: &str) -> DatabaseSettings {
        DatabaseSettings {
            host: "copy-db.abc.us-east-1.rds.amazonaws.com".into(),
            port: 3306,
            login: "openemr".into(),
            password: SecretValue(password.into()),
            database: "openemr".into(),
        }
    }

    #[test]
    fn the_five_settings_change_and_every_other_line_stays() {
        let out = rewrite(INSTALLED, "f", &target("n3w")).unwrap();
        let changed: Vec<(&str, &str)> = INSTALLED
            .lines()
            .zip(out.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(
            changed,
            [
                (
                    "$host\t= 'source-db.abc.us-east-1.rds.amazonaws.com';",
                    "$host\t= 'copy-db.abc.us-east-1.rds.amazonaws.com';"
                ),
                ("$pass\t= 'source-secret';", "$pass\t= 'n3w';"),
            ]
        );
        assert_eq!(out.lines().count(), INSTALLED.lines().count());
        // Rewriting what was rewritten changes nothing.
        assert_eq!(rewrite(&out, "f", &target("n3w")).unwrap(), out);
    }

    #[test]
    fn quotes_and_backslashes_are_escaped_for_php() {
        assert_eq!(php_single_quoted(r"a'b\c\'d"), r"'a\'b\\c\\\'d'");
        let out = rewrite(INSTALLED, "f", &target(r"x'; system('id'); $y='\")).unwrap();
        assert!(
            out.contains(&format!("$pass\t= {};", r"'x\'; system(\'id\'); $y=\'\\'")),
            "{out}"
        );
        // An escaped value already there is read past, not cut at its inner quote.
        let again = rewrite(&out, "f", &target("plain")).unwrap();
        assert!(again.contains("$pass\t= 'plain';\n"), "{again}");
        assert_eq!(
            rewrite(INSTALLED, "f", &target("a\0b"))
                .unwrap_err()
                .reason(),
            "SqlconfValueUnwritable"
        );
    }

    #[test]
    fn an_unconfigured_or_unfamiliar_file_is_refused() {
        let template = INSTALLED.replace("$config = 1;", "$config = 0;");
        let e = rewrite(&template, "sites/default/sqlconf.php", &target("p")).unwrap_err();
        assert_eq!(e.reason(), "SiteNotConfigured");
        assert!(
            e.to_string()
                .starts_with("sites/default/sqlconf.php is not a configured site")
        );

        let no_pass = INSTALLED.replace("$pass\t= 'source-secret';\n", "");
        let e = rewrite(&no_pass, "f", &target("p")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "f does not assign $pass as OpenEMR's installer writes it (`$name = '…';` on one line): nothing was changed"
        );

        let from_env = INSTALLED.replace(
            "$host\t= 'source-db.abc.us-east-1.rds.amazonaws.com';",
            "$host\t= getenv('DB');",
        );
        assert_eq!(
            rewrite(&from_env, "f", &target("p")).unwrap_err().reason(),
            "SqlconfUnrecognised"
        );

        let twice = INSTALLED.replace(
            "$dbase\t= 'openemr';\n",
            "$dbase\t= 'openemr';\n$dbase = 'other';\n",
        );
        assert_eq!(
            rewrite(&twice, "f", &target("p")).unwrap_err().reason(),
            "SqlconfAmbiguous"
        );
    }

    #[test]
    fn the_shipped_templates_spacing_and_windows_line_ends_are_kept() {
        let spaced = "<?php\r\n$host = 'localhost';\r\n$port = '3306';\r\n$login = 'openemr';\r\n$pass = 'openemr';\r\n$dbase = 'openemr';\r\n$config = 1;\r\n";
        let out = rewrite(spaced, "f", &target("q")).unwrap();
        assert_eq!(
            out,
            "<?php\r\n$host = 'copy-db.abc.us-east-1.rds.amazonaws.com';\r\n$port = '3306';\r\n$login = 'openemr';\r\n$pass = 'q';\r\n$dbase = 'openemr';\r\n$config = 1;\r\n"
        );
        // `$hostname = …` is another variable, not `$host`.
        let other = INSTALLED.replace("<?php\n", "<?php\n$hostname = 'x';\n");
        assert!(
            rewrite(&other, "f", &target("q"))
                .unwrap()
                .contains("$hostname = 'x';\n")
        );
    }
}
