//! What the web tier's containers run around the official image's entrypoint: the setup
//! Job's script, guarding OpenEMR's installer as its [`SetupMode`] allows and proving the
//! site is configured, and the workers' start. The scripts are kept as files beside this
//! one (`scripts/`), so they can be read, linted and run by tests as they are.

use crate::controller::deployment::secrets::SecretKey;

/// The setup Job's container script (see its header): `install`, `migrate` or `attach`.
pub const SETUP_SCRIPT: &str = include_str!("scripts/setup.sh");
/// The workers' start before the image's entrypoint: certificate, setup scripts removed,
/// code read-only.
pub const WORKER_SCRIPT: &str = include_str!("scripts/worker.sh");
/// What [`WORKER_SCRIPT`] deletes from the code tree, as upstream's followers do.
pub const SETUP_SCRIPTS: &[&str] = &[
    "admin.php",
    "acl_upgrade.php",
    "setup.php",
    "sql_patch.php",
    "sql_upgrade.php",
    "ippf_upgrade.php",
    "auto_configure.php",
];
/// [`SETUP_SCRIPT`]'s exit code when it refused to run (nothing was changed).
pub const EXIT_REFUSED: i32 = 3;
/// [`SETUP_SCRIPT`]'s exit code when the site is not usable after its step.
pub const EXIT_UNUSABLE: i32 = 4;

/// What a setup Job may do to the database and the site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupMode {
    /// The first setup of a database this clinic created empty: the database and
    /// OpenEMR's user are made with the master password, then OpenEMR's installer runs.
    Install(SetupCredentials),
    /// An upgrade: the image's entrypoint migrates the configured site.
    Migrate,
    /// A database this clinic did not create empty (adopted, another incarnation's): no
    /// installer and no migration; the site on the volume must already be configured.
    Attach,
}

impl SetupMode {
    pub fn word(&self) -> &'static str {
        match self {
            SetupMode::Install(_) => "install",
            SetupMode::Migrate => "migrate",
            SetupMode::Attach => "attach",
        }
    }
}

/// The first setup's credentials: the master user, for creating the database and OpenEMR's
/// user, and the first administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupCredentials {
    pub master_username: String,
    pub master_password: SecretKey,
    pub admin_username: SecretKey,
    pub admin_password: SecretKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setup_script_guards_the_installer_and_proves_the_site() {
        // The installer runs only after the database was found without tables, and as a
        // user that holds no privileges; every mode ends with the verification.
        let install = SETUP_SCRIPT
            .split("\ninstall)\n")
            .nth(1)
            .and_then(|rest| rest.split("\n    ;;\n").next())
            .unwrap();
        let guard = install.find("information_schema.tables").unwrap();
        let refuse = install.find("stop 3 \"refused: database").unwrap();
        let prepare = install
            .find("CREATE USER IF NOT EXISTS '$setup_user'")
            .unwrap();
        let entrypoint = install.find("./openemr.sh").unwrap();
        assert!(guard < refuse && refuse < prepare && prepare < entrypoint);
        assert!(install.contains("unset OPENEMR_MASTER_PASS"));
        assert!(!install.contains("GRANT ALL PRIVILEGES ON *.*"));
        assert!(
            !install.contains("TO '$setup_user'"),
            "the setup user gets no grant"
        );
        assert!(install.trim_end().ends_with("verify"));
        for mode in ["migrate)", "attach)"] {
            let body = SETUP_SCRIPT.split(mode).nth(1).unwrap();
            let body = body.split(";;").next().unwrap();
            assert!(body.trim_end().ends_with("verify"), "{mode}");
            assert!(
                body.contains("unset MYSQL_ROOT_PASS OPENEMR_MASTER_PASS"),
                "{mode}"
            );
        }
        let attach = SETUP_SCRIPT.split("attach)").nth(1).unwrap();
        assert!(!attach.split(";;").next().unwrap().contains("openemr.sh"));
        assert!(SETUP_SCRIPT.contains(&format!("stop {EXIT_REFUSED} ")));
        assert!(SETUP_SCRIPT.contains(&format!("stop {EXIT_UNUSABLE} ")));
    }
}
