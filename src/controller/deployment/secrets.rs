//! The clinic's Secrets: the ones its spec names (what they must hold, and whether OpenEMR's
//! installer can carry their values), the passwords the operator generates and the Secrets
//! it creates once to hold them (never overwritten: the database may already use them), and
//! the master password, read only at the moment it is sent so that no plan ever carries it.
//! Infrastructure and web tier both use these; this module uses neither.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Resource, ResourceExt};

use super::clinic::{self, aws_error};
use crate::api::{LocalRef, OpenEMRDeployment};
use crate::aws::secrets::ManagedSecrets;
use crate::conditions::Verdict;
use crate::controller::{ClinicAws, Context, Error};

/// A Secret the spec may name, and what it must hold.
#[derive(Debug, PartialEq, Eq)]
pub struct SecretUse {
    /// The spec field that names it.
    pub field: &'static str,
    /// Keys it must have.
    pub keys: &'static [&'static str],
    /// Condition reason when it does not exist.
    pub not_found: &'static str,
    /// Condition reason when it lacks a key or holds a value that cannot be used.
    pub invalid: &'static str,
    /// Keys whose values reach OpenEMR's installer (checked until the site is set up).
    pub installer_keys: &'static [&'static str],
}

/// `spec.database.credentialsSecretRef`.
pub const DATABASE_CREDENTIALS: SecretUse = SecretUse {
    field: "spec.database.credentialsSecretRef",
    keys: &["password"],
    not_found: "CredentialsSecretNotFound",
    invalid: "CredentialsSecretInvalid",
    // Written into sqlconf.php by the installer; `root-password` never reaches it.
    installer_keys: &["password"],
};

/// `spec.web.adminCredentialsSecretRef`.
pub const ADMIN_CREDENTIALS: SecretUse = SecretUse {
    field: "spec.web.adminCredentialsSecretRef",
    keys: &["username", "password"],
    not_found: "AdminCredentialsSecretNotFound",
    invalid: "AdminCredentialsSecretInvalid",
    installer_keys: &["username", "password"],
};

/// What a referenced Secret looks like (its key names, never its values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretCheck {
    Missing,
    MissingKeys(Vec<&'static str>),
    /// A key whose value OpenEMR's installer cannot carry, and why (never the value).
    Unusable(&'static str, &'static str),
    Present,
}

impl OpenEMRDeployment {
    /// OpenEMR's installer may still read the Secrets: the site is not set up, and the
    /// database is not adopted (the installer never runs on an adopted one).
    pub(super) fn installer_may_run(&self) -> bool {
        let set_up = self
            .status
            .as_ref()
            .and_then(|s| s.web.as_ref())
            .is_some_and(|w| w.setup_complete);
        let adopted = self
            .spec
            .adopt
            .as_ref()
            .is_some_and(|a| a.db_instance_identifier.is_some());
        !set_up && !adopted
    }

    /// The Secrets this clinic's spec names.
    pub(super) fn referenced_secrets(&self) -> Vec<(&'static SecretUse, &LocalRef)> {
        let database = self.spec.database.credentials_secret_ref.as_ref();
        let admin = self.spec.web.admin_credentials_secret_ref.as_ref();
        [
            (&DATABASE_CREDENTIALS, database),
            (&ADMIN_CREDENTIALS, admin),
        ]
        .into_iter()
        .filter_map(|(usage, r)| r.map(|r| (usage, r)))
        .collect()
    }
}

/// A Secret the spec names: what it is used for, its name, and what it holds.
pub type SecretSeen = (&'static SecretUse, String, SecretCheck);

/// Reads each Secret `d`'s spec names and checks what it holds (its key names, never its
/// values); says too whether the database's Secret has `root-password` for the master user.
pub async fn observe(
    d: &OpenEMRDeployment,
    ctx: &Context,
) -> Result<(Vec<SecretSeen>, bool), Error> {
    let ns = d.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut secrets = Vec::new();
    let mut user_master_password = false;
    for (usage, r) in d.referenced_secrets() {
        let found = api
            .get_opt(&r.name)
            .await
            .map_err(Error::observe(format!("Secret {ns}/{}", r.name)))?;
        let check = match found {
            None => SecretCheck::Missing,
            Some(secret) => {
                if *usage == DATABASE_CREDENTIALS {
                    user_master_password = has_key(&secret, ROOT_PASSWORD_KEY);
                }
                check_secret(usage, &secret, d.installer_may_run())
            }
        };
        secrets.push((usage, r.name.clone(), check));
    }
    Ok((secrets, user_master_password))
}

/// The `Accepted` condition refusing the spec for the first Secret it names that is
/// missing or cannot be used, if any.
pub fn refusal(secrets: &[SecretSeen]) -> Option<Verdict> {
    secrets
    .iter()
        .find_map(|(usage, name, check)| match check {
            SecretCheck::Present => None,
            SecretCheck::Missing => Some(Verdict::falsy(
                "Accepted",
                usage.not_found,
                format!(
                    "{} names Secret {name:?}, which does not exist in this namespace",
                    usage.field
                ),
            )),
            SecretCheck::Unusable(key, why) => Some(Verdict::falsy(
                "Accepted",
                usage.invalid,
                format!(
                    "{}: the value of key {key} in Secret {name:?} {why}, which OpenEMR's installer cannot carry (the image passes it unquoted, split on blanks and cut at the first =, into sqlconf.php between single quotes); put another value in the Secret",
                    usage.field
                ),
            )),
            SecretCheck::MissingKeys(keys) => Some(Verdict::falsy(
                "Accepted",
                usage.invalid,
                format!(
                    "{}: Secret {name:?} lacks the key(s) {} (it must have {})",
                    usage.field,
                    keys.join(", "),
                    usage.keys.join(", ")
                ),
            )),
        })
}

/// What a referenced Secret holds for `usage`: its keys, and, while OpenEMR's installer
/// may still read it, whether the installer can carry its values.
pub fn check_secret(usage: &SecretUse, secret: &Secret, installer_may_run: bool) -> SecretCheck {
    let missing: Vec<_> = usage
        .keys
        .iter()
        .copied()
        .filter(|k| !has_key(secret, k))
        .collect();
    let unusable = usage
        .installer_keys
        .iter()
        .filter(|_| installer_may_run)
        .find_map(|k| key_refused(secret, k).map(|why| (*k, why)));
    match (missing.is_empty(), unusable) {
        (false, _) => SecretCheck::MissingKeys(missing),
        (true, Some((key, why))) => SecretCheck::Unusable(key, why),
        (true, None) => SecretCheck::Present,
    }
}

/// Why the value of `key` cannot go to OpenEMR's installer, if it cannot.
fn key_refused(secret: &Secret, key: &str) -> Option<&'static str> {
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8(v.0.clone()).ok())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| Some(v.clone()))
        })?;
    match value {
        Some(v) => installer_refuses(&v),
        None => Some("is not UTF-8 text"),
    }
}

/// Whether `secret` has `key`, in `data` or `stringData`.
pub fn has_key(secret: &Secret, key: &str) -> bool {
    secret.data.as_ref().is_some_and(|d| d.contains_key(key))
        || secret
            .string_data
            .as_ref()
            .is_some_and(|d| d.contains_key(key))
}

/// Why a value cannot go to OpenEMR's installer, if it cannot. The image hands settings to
/// it as unquoted `key=value` words: split on blanks, globbed, cut at the first `=`, the
/// word `BLANK` read as empty; passwords are then written between single quotes into
/// `sqlconf.php`. [`SETUP_SCRIPT`](super::web::scripts::SETUP_SCRIPT) applies the same rule.
pub fn installer_refuses(value: &str) -> Option<&'static str> {
    if value.is_empty() || value == "BLANK" {
        return Some("is empty or the word BLANK");
    }
    let bad = |c: char| c.is_whitespace() || matches!(c, '=' | '\'' | '"' | '\\' | '*' | '?' | '[');
    value
        .chars()
        .any(bad)
        .then_some("holds a blank or one of = ' \" \\ * ? [")
}

/// Key of the user's Secret that may hold the master password.
pub const ROOT_PASSWORD_KEY: &str = "root-password";

/// Key of the OpenEMR user's password in the credentials Secret.
pub const PASSWORD_KEY: &str = "password";
/// The key of a Secret's user name.
pub const USERNAME_KEY: &str = "username";
/// The first administrator's name in a clinic the operator installs (a restored clinic's
/// is the one its database holds).
pub const FIRST_ADMINISTRATOR: &str = "admin";

/// A Secret key, for `secretKeyRef`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKey {
    pub secret: String,
    pub key: String,
}

impl SecretKey {
    pub fn new(secret: &str, key: &str) -> SecretKey {
        SecretKey {
            secret: secret.into(),
            key: key.into(),
        }
    }
}

/// Secret `secret` in `ns`, or `None` when it does not exist.
pub async fn get_secret(ctx: &Context, ns: &str, secret: &str) -> Result<Option<Secret>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    api.get_opt(secret)
        .await
        .map_err(Error::observe(format!("Secret {ns}/{secret}")))
}

/// The value of `key` in `secret`, when it is there, UTF-8 and not empty.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let value = secret.data.as_ref()?.get(key)?;
    String::from_utf8(value.0.clone())
        .ok()
        .filter(|v| !v.is_empty())
}

/// The `root-password` of the user's Secret, read at the moment it is sent and never kept.
pub async fn read_root_password(ctx: &Context, ns: &str, secret: &str) -> Result<String, Error> {
    get_secret(ctx, ns, secret)
        .await?
        .and_then(|s| secret_value(&s, ROOT_PASSWORD_KEY))
        .ok_or_else(|| Error::Act {
            action: "creating the DB instance".into(),
            reason: "CredentialsSecretInvalid",
            message: format!(
                "Secret {secret:?} has no usable {ROOT_PASSWORD_KEY:?} (UTF-8, not empty)"
            ),
        })
}

/// Characters of generated passwords: letters and digits, which RDS, MySQL, shells and
/// URLs all take as they are.
const PASSWORD_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const PASSWORD_LENGTH: usize = 32;

/// A password from the operating system's CSPRNG, without modulo bias.
pub fn generate_password() -> Result<String, getrandom::Error> {
    let n = PASSWORD_ALPHABET.len();
    // The largest multiple of the alphabet below 256: bytes above it are drawn again.
    let limit = (256 / n * n) as u8;
    let mut out = String::with_capacity(PASSWORD_LENGTH);
    let mut buf = [0u8; 64];
    while out.len() < PASSWORD_LENGTH {
        getrandom::fill(&mut buf)?;
        for b in buf {
            if b < limit && out.len() < PASSWORD_LENGTH {
                out.push(PASSWORD_ALPHABET[b as usize % n] as char);
            }
        }
    }
    Ok(out)
}

/// A generated password, or why there is none.
fn new_password(what: &str) -> Result<String, Error> {
    generate_password().map_err(|e| Error::Act {
        action: format!("generating {what}"),
        reason: "RandomUnavailable",
        message: e.to_string(),
    })
}

/// Creates the credentials Secret once. It has no owner: credentials of retained data stay
/// with the data when the clinic goes (only `deletionPolicy: Delete` removes it).
pub async fn create_credentials_secret(
    d: &OpenEMRDeployment,
    ctx: &Context,
    ns: &str,
    name: &str,
    username: &str,
    database: &str,
) -> Result<(), Error> {
    let password = new_password("the database password")?;
    let secret = secret(
        ns,
        name,
        BTreeMap::from([
            (
                "app.kubernetes.io/managed-by".to_string(),
                "openemr-operator".to_string(),
            ),
            (clinic::TAG_NAME.to_string(), d.name_any()),
        ]),
        Some(BTreeMap::from([(
            "openemr.io/retained-with-data".to_string(),
            "kept when the clinic is deleted, unless its deletionPolicy is Delete".to_string(),
        )])),
        None,
        BTreeMap::from([
            (USERNAME_KEY.to_string(), username.to_string()),
            (PASSWORD_KEY.to_string(), password),
            ("database".to_string(), database.to_string()),
        ]),
    );
    // Created by an earlier attempt: never overwritten, the database may use it.
    create_secret_once(ctx, ns, secret).await
}

/// Generates the first administrator's credentials once (for `username`), into a Secret
/// kept with the data (like the database credentials); `labels` make it a child the web
/// tier's cache holds.
pub async fn create_admin_secret(
    ctx: &Context,
    ns: &str,
    name: &str,
    username: &str,
    labels: BTreeMap<String, String>,
) -> Result<(), Error> {
    let password = new_password("the administrator's password")?;
    let secret = secret(
        ns,
        name,
        labels,
        Some(BTreeMap::from([(
            "openemr.io/retained-with-data".to_string(),
            "OpenEMR's first administrator; kept when the clinic is deleted, unless its deletionPolicy is Delete".to_string(),
        )])),
        None,
        BTreeMap::from([
            (USERNAME_KEY.to_string(), username.to_string()),
            (PASSWORD_KEY.to_string(), password),
        ]),
    );
    create_secret_once(ctx, ns, secret).await
}

/// The annotation of the master password's copy naming the Secrets Manager version it
/// holds.
pub const SOURCE_VERSION_ANNOTATION: &str = "openemr.io/source-version";

/// Copies the RDS-managed master password from Secrets Manager into a Secret owned by the
/// clinic, for setup only (deleted once no setup Job runs or starts). Asked on every look
/// while a setup Job runs or starts: a copy of an older version (RDS rotated the secret,
/// every 7 days by default) is replaced, so a pod the Job starts next reads the current
/// password.
pub async fn copy_master_password(
    d: &OpenEMRDeployment,
    aws: &ClinicAws,
    ctx: &Context,
    ns: &str,
    name: &str,
    secret_arn: &str,
    labels: BTreeMap<String, String>,
) -> Result<(), Error> {
    let (password, version) = clinic::clients(d, aws)
        .await
        .master_password(secret_arn)
        .await
        .map_err(aws_error("reading the master password for setup"))?;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let write_failed = |e: kube::Error| Error::Act {
        action: format!("writing Secret {ns}/{name}"),
        reason: "SecretWriteFailed",
        message: e.to_string(),
    };
    let existing = api.get_opt(name).await.map_err(write_failed)?;
    let held = existing
        .as_ref()
        .and_then(|s| s.annotations().get(SOURCE_VERSION_ANNOTATION).cloned());
    if existing.is_some() && held.as_deref() == Some(version.as_str()) {
        return Ok(());
    }
    let mut copy = secret(
        ns,
        name,
        labels,
        Some(BTreeMap::from([(
            SOURCE_VERSION_ANNOTATION.to_string(),
            version.clone(),
        )])),
        d.controller_owner_ref(&()),
        BTreeMap::from([("password".to_string(), password.0)]),
    );
    match existing {
        None => create_secret_once(ctx, ns, copy).await,
        Some(old) => {
            // Replaced only if unchanged since read: a conflict is retried on the next look.
            copy.metadata.resource_version = old.metadata.resource_version;
            api.replace(name, &PostParams::default(), &copy)
                .await
                .map_err(write_failed)?;
            tracing::info!(namespace = ns, secret = name, version = %version, "the master password's copy follows the rotated secret");
            Ok(())
        }
    }
}

/// Creates a Secret once; an existing one is never overwritten.
pub async fn create_secret_once(ctx: &Context, ns: &str, secret: Secret) -> Result<(), Error> {
    let name = secret.name_any();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::Act {
            action: format!("creating Secret {ns}/{name}"),
            reason: "SecretWriteFailed",
            message: e.to_string(),
        }),
    }
}

/// A Secret with `data`.
pub fn secret(
    ns: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    annotations: Option<BTreeMap<String, String>>,
    owner: Option<OwnerReference>,
    data: BTreeMap<String, String>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            labels: Some(labels),
            annotations,
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installer_refuses_what_it_cannot_carry() {
        for ok in ["abcDEF123", "p@ss#w0rd!%^&()-_+{}|;:,.<>/~`$x", "é-ü"] {
            assert_eq!(installer_refuses(ok), None, "{ok}");
        }
        for bad in [
            "", "BLANK", "a=b", "a'b", "a\"b", "a\\b", "a b", "a\tb", "a\nb", "a*", "a?", "a[",
        ] {
            assert!(installer_refuses(bad).is_some(), "{bad:?}");
        }
    }
}
