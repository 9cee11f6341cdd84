//! Keeps secrets out of text the operator repeats from elsewhere (a failed pod's last
//! words, quoted in a condition and an Event): the values of the Secrets the pod could
//! read are replaced, and so is whatever follows a `password=`-like key, for secrets the
//! operator does not know.

use std::sync::LazyLock;

use regex::Regex;

/// What a hidden value is replaced with.
pub const HIDDEN: &str = "<redacted>";

/// Values shorter than this are not searched for: they would hide ordinary words.
const SHORTEST_SECRET: usize = 6;

/// A key that announces a secret (`MYSQL_ROOT_PASS=`, `password:`, `--pwd `, `token=`),
/// then its value: quoted, or up to the next space, comma, semicolon or closing bracket.
/// A space separates key and value only after an option (`--password x`), so prose
/// ("the checks passed") stays as it was.
static KEYED: LazyLock<Regex> = LazyLock::new(|| {
    let key = r"[\w.-]*(?:pass(?:wd|word)?|pwd|secret|token|credential)[\w.-]*";
    Regex::new(&format!(
        r#"(?i)((?:^|[^\w.-])(?:--?{key}\s+|{key}["']?\s*[=:]\s*))("[^"]*"|'[^']*'|[^\s,;'")\]}}]+)"#
    ))
    .expect("a valid pattern")
});

/// `text` with every value of `known` and every keyed secret replaced by [`HIDDEN`].
pub fn redact(text: &str, known: &[String]) -> String {
    let mut known: Vec<&str> = known
        .iter()
        .map(String::as_str)
        .filter(|k| k.len() >= SHORTEST_SECRET)
        .collect();
    // Longest first, so a value containing another is hidden whole.
    known.sort_by_key(|k| std::cmp::Reverse(k.len()));
    let mut out = text.to_string();
    for value in known {
        out = out.replace(value, HIDDEN);
    }
    KEYED
        .replace_all(&out, |c: &regex::Captures| {
            // MySQL's own "(using password: YES)" says whether one was sent, not which.
            if matches!(&c[2], HIDDEN | "YES" | "NO") {
                c[0].to_string()
            } else {
                format!("{}{HIDDEN}", &c[1])
            }
        })
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_are_hidden_wherever_they_appear() {
        let known = vec!["s3cr3t-Pa55".to_string(), "abc".to_string()];
        let said = redact("login as admin/s3cr3t-Pa55 failed (abc)", &known);
        assert_eq!(said, "login as admin/<redacted> failed (abc)");
    }

    #[test]
    fn values_after_secret_keys_are_hidden() {
        for (text, want) in [
            (
                "CONFIGURATION=server=db rootpass=hunter22 loginhost=%",
                "CONFIGURATION=server=db rootpass=<redacted> loginhost=%",
            ),
            (
                "MYSQL_ROOT_PASS: 'a b c' next",
                "MYSQL_ROOT_PASS: <redacted> next",
            ),
            ("--password \"x y\", done", "--password <redacted>, done"),
            ("OE_PASS=pass;user=admin", "OE_PASS=<redacted>;user=admin"),
            ("(token=abc123def)", "(token=<redacted>)"),
            (
                "ERROR 1045: Access denied for user 'openemr'@'10.0.0.1' (using password: YES)",
                "ERROR 1045: Access denied for user 'openemr'@'10.0.0.1' (using password: YES)",
            ),
        ] {
            assert_eq!(redact(text, &[]), want, "{text}");
        }
    }

    #[test]
    fn text_without_secrets_is_unchanged() {
        let text = "Couldn't connect to db.example:3306 after 30 tries; the checks passed \
                    in bypass mode; giving up";
        assert_eq!(redact(text, &["unrelated-value".into()]), text);
    }

    #[test]
    fn a_known_value_after_a_key_is_hidden_once() {
        let said = redact("rootpass=hunter22", &["hunter22".into()]);
        assert_eq!(said, "rootpass=<redacted>");
    }
}
