//! Where the web tier finds the infrastructure: what the infrastructure's side builds
//! (from AWS, or from the status while AWS cannot be read) and the web tier's side runs
//! on. It lives apart from both so that neither imports the other.

use super::secrets::SecretKey;

/// Where the infrastructure is, once it is ready.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub database_host: String,
    pub database_port: i32,
    pub database_identifier: String,
    pub redis_host: String,
    pub file_system_id: String,
    /// The Secret and key with OpenEMR's own database password.
    pub database_password: SecretKey,
    /// The user's Secret with `root-password`, if given; else RDS manages the master
    /// password in Secrets Manager ([`Site::master_secret_arn`]).
    pub user_master_password: Option<SecretKey>,
    pub master_secret_arn: Option<String>,
    /// The Secrets Manager secret with the Redis AUTH token (stacks made before the token
    /// have none until their update).
    pub redis_auth_secret_arn: Option<String>,
    /// The master user's name, as the instance reports it.
    pub master_username: String,
    /// What the first setup may do to the database.
    pub database_origin: DatabaseOrigin,
}

/// Where the clinic's database came from. OpenEMR's installer, given an empty `sites/`
/// and a database that already holds OpenEMR, drops and recreates its tables: it runs only
/// on a database this clinic created empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseOrigin {
    /// Created by this clinic (its uid is on the instance's tags).
    CreatedEmpty,
    /// Named by `spec.adopt.dbInstanceIdentifier`.
    Adopted,
    /// Found under the clinic's name but made by another incarnation of it (the uid on
    /// its tags) or by someone else (no uid).
    Foreign { uid: Option<String> },
    /// Made by a restore ([`RESTORED_BY`](super::clinic::RESTORED_BY) on the instance or
    /// the clinic): the restored site comes with it.
    Restored { by: String },
}

impl DatabaseOrigin {
    pub fn describe(&self) -> String {
        match self {
            DatabaseOrigin::CreatedEmpty => "created empty by this clinic".into(),
            DatabaseOrigin::Adopted => "adopted (spec.adopt.dbInstanceIdentifier)".into(),
            DatabaseOrigin::Foreign { uid: Some(uid) } => {
                format!("made by an earlier clinic of this name (uid {uid})")
            }
            DatabaseOrigin::Foreign { uid: None } => "not made by this operator".into(),
            DatabaseOrigin::Restored { by } => format!("restored ({by})"),
        }
    }
}
