//! Restores on a real control plane + moto + MariaDB. The operator's AWS calls go through a
//! fault proxy that records what each restore call carried; the restored instance's
//! endpoint (a name moto makes up, which nothing serves) is dialled at a local MariaDB
//! through the operator's `--database-address`, with TLS verified against the RDS name.
//! No kubelet runs: the tests play it for the target's setup Job and workers.

mod support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use openemr_operator::api::backup::BackupPhase;
use openemr_operator::api::restore::{RestorePhase, RestoreStep, StepPhase};
use openemr_operator::api::{
    OpenEMRBackup, OpenEMRDeployment, RestoreRequest, RestoreRequestStatus, VerificationCheck,
};
use openemr_operator::aws::secrets::SecretValue;
use openemr_operator::controller::backup::set;
use openemr_operator::controller::deployment::clinic::RESTORED_BY;
use openemr_operator::controller::restore::steps::{
    documents_job_name, in_place_identifier, stage_job_name,
};
use openemr_operator::mysql::{AddressMap, Endpoint, Login, connect};
use serde_json::json;
use support::kubelet::{
    documents_account, finish_pod, play_job, ready_clinic_with_env, run_workers, setup_jobs,
    setup_pod,
};
use support::mariadb::{MariaDb, sql_string};
use support::operator::Operator;
use support::{TestNamespace, apply, env, eventually};

const REGION: &str = "ca-central-1";
const WAIT: Duration = Duration::from_secs(120);
/// The password OpenEMR's user had in the source clinic's database.
const SOURCE_PASSWORD: &str = "source-openemr-pw";
const SLICE: &str = include_str!("fixtures/openemr-slice.sql");
/// `sqlconf.php` as OpenEMR's installer wrote it in the source clinic.
const SQLCONF: &str = include_str!("fixtures/installed-sqlconf.php");

/// A MariaDB standing in for every RDS endpoint of the region: the restored database, a
/// slice of OpenEMR's schema with its user `openemr` as the source's installer left it.
fn restored_database(name: &str) -> MariaDb {
    let hosts = [REGION, OTHER_REGION].map(|r| format!("*.aaaaaaaaaa.{r}.rds.amazonaws.com"));
    let db = MariaDb::start_for(name, &[&hosts[0], &hosts[1]]);
    db.root(&format!(
        "CREATE DATABASE openemr; \
         CREATE USER 'openemr'@'%' IDENTIFIED BY {} REQUIRE SSL; \
         GRANT ALL PRIVILEGES ON openemr.* TO 'openemr'@'%'",
        sql_string(SOURCE_PASSWORD)
    ));
    db.root(&format!("USE openemr; {SLICE}"));
    db
}

fn addresses(db: &MariaDb) -> String {
    [REGION, OTHER_REGION]
        .map(|r| format!("*.{r}.rds.amazonaws.com=127.0.0.1:{}", db.port))
        .join(",")
}

/// The region a restore is asked into in the cross-region test.
const OTHER_REGION: &str = "eu-west-1";

/// Whether `user` with `password` opens the `openemr` schema at `endpoint`.
async fn opens(db: &MariaDb, endpoint: &str, user: &str, password: &str) -> bool {
    let (host, port) = endpoint.rsplit_once(':').unwrap();
    let session = connect(
        &Endpoint {
            host: host.into(),
            port: port.parse().unwrap(),
        },
        &Login {
            user: user.into(),
            password: SecretValue(password.into()),
            database: Some("openemr".into()),
        },
        &std::fs::read(&db.ca).unwrap(),
        &AddressMap::parse(&addresses(db).split(',').collect::<Vec<_>>()).unwrap(),
        Duration::from_secs(10),
    )
    .await;
    match session {
        Ok(s) => {
            s.close().await;
            true
        }
        Err(_) => false,
    }
}

/// Whether DB instance `identifier` is gone or being deleted.
async fn instance_gone(rds: &aws_sdk_rds::Client, identifier: &str) -> bool {
    let left = rds
        .describe_db_instances()
        .db_instance_identifier(identifier)
        .send()
        .await
        .is_ok_and(|o| {
            o.db_instances()
                .iter()
                .any(|d| d.db_instance_status() != Some("deleting"))
        });
    !left
}

/// Each step of `restore-a` that ended is an Event named after it, and its duration is in
/// `openemr_step_duration_seconds`.
async fn steps_told(source: &Source, operator: &Operator, status: &RestoreRequestStatus) {
    use k8s_openapi::api::events::v1::Event;
    let events: Api<Event> = source.api();
    let told = || async {
        let listed = events.list(&Default::default()).await.ok()?;
        let reasons: std::collections::BTreeSet<String> = listed
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("restore-a"))
            // The operator suffixes the action with a digest of the note.
            .filter(|e| e.action.as_deref().is_some_and(|a| a.starts_with("Step-")))
            .filter_map(|e| e.reason)
            .collect();
        Some(reasons)
    };
    let steps: std::collections::BTreeSet<String> =
        status.steps.iter().map(|s| s.name.clone()).collect();
    eventually(WAIT, "an Event per step", || async {
        told().await.filter(|reasons| *reasons == steps)
    })
    .await;
    for step in &status.steps {
        let sample = format!(
            "openemr_step_duration_seconds_count{{controller=\"restorerequest\",step=\"{}\",outcome=\"{:?}\"}}",
            step.name, step.phase
        );
        assert_eq!(operator.metric(&sample).await, 1, "{sample}");
    }
}

/// Request `name`'s `Accepted` condition, once it is false.
async fn refusal(requests: &Api<RestoreRequest>, name: &str) -> openemr_operator::api::Condition {
    eventually(WAIT, &format!("{name} refused"), || async {
        let status = requests.get(name).await.ok()?.status?;
        let accepted = status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Accepted")?;
        (accepted.status == "False").then_some(accepted)
    })
    .await
}

/// Step `name` of request `request`, as its status shows it.
async fn step(requests: &Api<RestoreRequest>, request: &str, name: &str) -> Option<RestoreStep> {
    let status = requests.get(request).await.ok()?.status?;
    status.steps.into_iter().find(|s| s.name == name)
}

async fn step_phase(
    requests: &Api<RestoreRequest>,
    name: &str,
    step_name: &str,
) -> Option<StepPhase> {
    step(requests, name, step_name).await.map(|s| s.phase)
}

/// A set of a clinic with its documents, restored side by side: everything the
/// database-only restore below does, and the set's documents restored into the new clinic's
/// volume with their owners, its `sqlconf.php` pointing at the restored instance with the
/// new clinic's own password, before the hold goes; `DocumentsPresent` passes.
#[tokio::test]
async fn a_set_with_documents_restored_side_by_side_brings_its_site_pointed_at_the_new_database() {
    side_by_side(true).await;
}

/// A database-only set of a clinic, restored side by side: a new clinic with its own
/// stack and key, whose database is the set's snapshot copied under that key and restored
/// with the clinic's network and settings, whose master secret is its own (turned on after
/// the restore, which RDS would not do), and whose OpenEMR user opens the database with the
/// new clinic's own Secret and no longer with the source's password. The target stays held
/// until then, its setup Job attaches (never installs), and the request is `Succeeded` only
/// once every check passed. The source clinic and its set are untouched; deleting the
/// request leaves the clinic it made.
#[tokio::test]
async fn a_set_restored_side_by_side_is_a_new_clinic_with_its_own_key_and_credentials() {
    side_by_side(false).await;
}

/// The source clinic's `sites/` as its installer and users left it.
fn source_site(tree: &std::path::Path) {
    let site = tree.join("default");
    std::fs::create_dir_all(site.join("documents/1")).unwrap();
    std::fs::create_dir_all(site.join("documents/logs_and_misc/methods")).unwrap();
    std::fs::write(site.join("sqlconf.php"), SQLCONF).unwrap();
    std::fs::write(site.join("documents/1/scan.pdf"), b"%PDF-1.7 scan").unwrap();
    std::fs::write(
        site.join("documents/logs_and_misc/methods/sixa"),
        b"drive key a",
    )
    .unwrap();
}

/// A `Ready` clinic `clinic-a` (with an Ingress) and a completed set `set-1` of it, under an
/// operator whose AWS calls go through a recording fault proxy and whose database sessions
/// reach the MariaDB standing in for the region's endpoints.
struct Source {
    db: MariaDb,
    client: kube::Client,
    ns: TestNamespace,
    proxy: support::faults::FaultProxy,
    args: Vec<String>,
    vars: Vec<(String, String)>,
    scratch: std::path::PathBuf,
    set_snapshot: String,
}

impl Source {
    async fn new(suffix: &str, with_documents: bool) -> (Source, Operator) {
        let db = restored_database(&format!("restore-{suffix}"));
        let client = env().admin().await;
        let ns = TestNamespace::new(env(), &format!("restore-{suffix}")).await;
        let proxy = support::faults::FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
        for op in [
            "CopyDBSnapshot",
            "RestoreDBInstanceFromDBSnapshot",
            "ModifyDBInstance",
        ] {
            proxy.record(op);
        }
        let mut clinic = support::clinic_manifest("clinic-a", REGION, "");
        clinic["spec"]["web"] = json!({"replicas": 1, "ingress": {"host": "emr.clinic-a.example"}});
        apply(&client, &ns.name, &clinic).await.unwrap();
        let vars = vec![
            ("AWS_ENDPOINT_URL".to_string(), proxy.url()),
            ("MYSQL_CA_FILE".to_string(), db.ca.display().to_string()),
        ];
        let args: Vec<String> = [
            "--documents-image",
            "registry.example.org/openemr-operator:test",
            "--retry-initial",
            "1s",
            "--retry-max",
            "5s",
            "--progress-interval",
            "2s",
            "--inventory-interval",
            "3s",
            "--database-address",
            &addresses(&db),
        ]
        .map(str::to_string)
        .to_vec();
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let var_refs: Vec<(&str, &str)> =
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let operator =
            ready_clinic_with_env(&client, &ns.name, "clinic-a", &arg_refs, &var_refs).await;
        let scratch =
            std::env::temp_dir().join(format!("oe-restores-{suffix}-{}", std::process::id()));
        std::fs::create_dir_all(scratch.join("target")).unwrap();
        source_site(&scratch.join("source"));
        documents_account(&client, &ns.name).await;
        support::apply(
            &client,
            &ns.name,
            &json!({
                "apiVersion": "openemr.io/v1alpha1", "kind": "OpenEMRBackup",
                "metadata": {"name": "set-1"},
                "spec": {"deploymentRef": {"name": "clinic-a"}, "includeDocuments": with_documents},
            }),
        )
        .await
        .unwrap();
        if with_documents {
            let tree = scratch.join("source");
            play_job(&client, &ns.name, &set::documents_job_name("set-1"), &tree).await;
        }
        let sets: Api<OpenEMRBackup> = Api::namespaced(client.clone(), &ns.name);
        let set = eventually(WAIT, "set-1 Completed", || async {
            let s = sets.get("set-1").await.ok()?;
            (s.status.as_ref()?.phase == Some(BackupPhase::Completed)).then_some(s)
        })
        .await;
        let set_snapshot = set.status.unwrap().database.unwrap().arn.unwrap();
        let source = Source {
            db,
            client,
            ns,
            proxy,
            args,
            vars,
            scratch,
            set_snapshot,
        };
        (source, operator)
    }

    /// Another operator like the first (after one was killed).
    fn operator(&self) -> Operator {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let vars: Vec<(&str, &str)> = self
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Operator::start_with_env(env(), Some(&self.ns.name), &args, &vars)
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// Files RestoreRequest `restore-a` of `set-1` into clinic `copy-a`; its uid.
    async fn request(&self) -> String {
        self.request_from(json!({"backupRef": {"name": "set-1"}}), json!({}))
            .await
    }

    /// Files RestoreRequest `restore-a` of `source` into clinic `copy-a`, with `more` in its
    /// spec; its uid.
    async fn request_from(&self, source: serde_json::Value, more: serde_json::Value) -> String {
        let mut spec = json!({
            "source": source,
            "target": {"sideBySide": {"deploymentName": "copy-a"}},
        });
        for (k, v) in more.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        support::apply(
            &self.client,
            &self.ns.name,
            &json!({
                "apiVersion": "openemr.io/v1alpha1", "kind": "RestoreRequest",
                "metadata": {"name": "restore-a"},
                "spec": spec,
            }),
        )
        .await
        .unwrap();
        let requests: Api<RestoreRequest> = self.api();
        eventually(WAIT, "the request's uid", || async {
            requests.get("restore-a").await.ok()?.uid()
        })
        .await
    }

    /// Files RestoreRequest `restore-a` of `set-1` in place into `clinic-a`, and plays it up
    /// to its documents staged beside the live site: its uid and restored instance.
    async fn in_place_staged(&self) -> (String, String) {
        let uid = self
            .request_from(
                json!({"backupRef": {"name": "set-1"}}),
                json!({"target": {"inPlace": {"deploymentName": "clinic-a", "confirm": "clinic-a"}}}),
            )
            .await;
        let restored_id = in_place_identifier(&uid);
        self.play_master_password_of("clinic-a", &restored_id).await;
        self.user_reset().await;
        let live = self.scratch.join("source");
        play_job(&self.client, &self.ns.name, &stage_job_name(&uid), &live).await;
        (uid, restored_id)
    }

    /// Asks for an on-demand set `name` of `clinic-a`, with its documents.
    async fn ask_for_set(&self, name: &str) {
        support::apply(
            &self.client,
            &self.ns.name,
            &json!({
                "apiVersion": "openemr.io/v1alpha1", "kind": "OpenEMRBackup",
                "metadata": {"name": name},
                "spec": {"deploymentRef": {"name": "clinic-a"}, "includeDocuments": true},
            }),
        )
        .await
        .unwrap();
    }

    /// Deletes `restore-a` and waits until it is gone.
    async fn delete_request(&self) {
        let requests: Api<RestoreRequest> = self.api();
        requests
            .delete("restore-a", &Default::default())
            .await
            .unwrap();
        eventually(WAIT, "restore-a gone", || async {
            requests
                .get_opt("restore-a")
                .await
                .ok()?
                .is_none()
                .then_some(())
        })
        .await;
    }

    /// Waits until `restore-a` set OpenEMR's user to the target's own password.
    async fn user_reset(&self) {
        let requests: Api<RestoreRequest> = self.api();
        eventually(WAIT, "ResetDatabaseUser succeeded", || async {
            (step_phase(&requests, "restore-a", "ResetDatabaseUser").await
                == Some(StepPhase::Succeeded))
            .then_some(())
        })
        .await;
    }

    /// `clinic-a`'s database, as its status shows it.
    async fn source_database(&self) -> openemr_operator::api::deployment::DatabaseStatus {
        let clinics: Api<OpenEMRDeployment> = self.api();
        let clinic = clinics.get("clinic-a").await.unwrap();
        clinic.status.unwrap().database.unwrap()
    }

    /// `copy-a`'s key, once its stack made it.
    async fn target_key(&self) -> String {
        self.key_of("copy-a").await
    }

    /// `clinic`'s key, once its stack made it.
    async fn key_of(&self, clinic: &str) -> String {
        let clinics: Api<OpenEMRDeployment> = self.api();
        eventually(WAIT, &format!("{clinic}'s key"), || async {
            clinics.get(clinic).await.ok()?.status?.kms_key_arn
        })
        .await
    }

    /// The password in `copy-a`'s own credentials Secret.
    async fn target_password(&self) -> String {
        self.password_of("copy-a").await
    }

    /// The password in `clinic`'s credentials Secret.
    async fn password_of(&self, clinic: &str) -> String {
        let names = support::clinic_names(&self.ns.name, clinic);
        let secrets: Api<Secret> = self.api();
        let secret = secrets.get(&names.credentials_secret).await.unwrap();
        String::from_utf8(secret.data.unwrap()["password"].0.clone()).unwrap()
    }

    /// RDS's part of the managed master password, played on the server standing in for the
    /// restored instance: once the instance has a secret under the target's key, its master
    /// user gets that secret's password. The instance and the password.
    async fn play_master_password(&self) -> (aws_sdk_rds::types::DbInstance, String) {
        let names = support::clinic_names(&self.ns.name, "copy-a");
        self.play_master_password_of("copy-a", &names.db_instance)
            .await
    }

    /// [`Source::play_master_password`] for instance `identifier` of clinic `clinic`.
    async fn play_master_password_of(
        &self,
        clinic: &str,
        identifier: &str,
    ) -> (aws_sdk_rds::types::DbInstance, String) {
        self.play_master_password_in(REGION, clinic, identifier)
            .await
    }

    /// [`Source::play_master_password_of`] for an instance in `region`.
    async fn play_master_password_in(
        &self,
        region: &str,
        clinic: &str,
        identifier: &str,
    ) -> (aws_sdk_rds::types::DbInstance, String) {
        let rds = aws_sdk_rds::Client::new(&env().aws(Some(region)).await);
        let secrets = aws_sdk_secretsmanager::Client::new(&env().aws(Some(region)).await);
        let target_key = self.key_of(clinic).await;
        let restored = eventually(
            Duration::from_secs(180),
            "the restored instance with its own secret",
            || async {
                let found = rds
                    .describe_db_instances()
                    .db_instance_identifier(identifier)
                    .send()
                    .await
                    .ok()?;
                let instance = found.db_instances().first()?.clone();
                let secret = instance.master_user_secret()?;
                (secret.kms_key_id() == Some(target_key.as_str())).then_some(instance)
            },
        )
        .await;
        let secret_arn = restored.master_user_secret().unwrap().secret_arn().unwrap();
        let secret: serde_json::Value = serde_json::from_str(
            secrets
                .get_secret_value()
                .secret_id(secret_arn)
                .send()
                .await
                .unwrap()
                .secret_string()
                .unwrap(),
        )
        .unwrap();
        let master_password = secret["password"].as_str().unwrap().to_string();
        let master_user = restored.master_username().unwrap().to_string();
        self.db.root(&format!(
            "CREATE USER IF NOT EXISTS '{master_user}'@'%' IDENTIFIED BY {} REQUIRE SSL; \
             GRANT ALL PRIVILEGES ON *.* TO '{master_user}'@'%' WITH GRANT OPTION",
            sql_string(&master_password)
        ));
        (restored, master_password)
    }

    /// Plays the kubelet for `copy-a`'s first setup Job and its workers until the request
    /// is `Succeeded`; its status.
    async fn finish(&self) -> RestoreRequestStatus {
        let (_, pod) = setup_pod(&self.client, &self.ns.name, "copy-a", 1).await;
        finish_pod(&self.client, &self.ns.name, &pod, "Succeeded", "").await;
        let requests: Api<RestoreRequest> = self.api();
        eventually(WAIT, "restore-a Succeeded", || async {
            run_workers(&self.client, &self.ns.name, "copy-a").await;
            let status = requests.get("restore-a").await.ok()?.status?;
            assert_ne!(status.phase, Some(RestorePhase::Failed), "{status:#?}");
            (status.phase == Some(RestorePhase::Succeeded)).then_some(status)
        })
        .await
    }

    /// The `ModifyDBInstance` calls that turned the managed master password on.
    fn managed_password_calls(&self) -> Vec<support::faults::Exchange> {
        self.proxy
            .exchanges("ModifyDBInstance")
            .into_iter()
            .filter(|m| m.param("ManageMasterUserPassword").as_deref() == Some("true"))
            .collect()
    }
}

/// The set records what it was made with (the clinic's MySQL and OpenEMR image); a restore
/// of it into a clinic whose image is an older OpenEMR release is refused before anything
/// is made, naming both.
async fn refused_into_an_older_image(source: &Source) {
    let sets: Api<OpenEMRBackup> = source.api();
    let set = sets.get("set-1").await.unwrap().status.unwrap();
    let image = set.image.clone().unwrap();
    assert_eq!(image, openemr_operator::api::deployment::DEFAULT_IMAGE);
    assert_eq!(set.database.unwrap().engine_version.as_deref(), Some("8.0"));
    let clinics: Api<OpenEMRDeployment> = source.api();
    let mut spec = serde_json::to_value(clinics.get("clinic-a").await.unwrap().spec).unwrap();
    spec["web"]["image"] = json!("openemr/openemr:7.0.4");
    spec.as_object_mut().unwrap().remove("adopt");
    support::apply(
        &source.client,
        &source.ns.name,
        &json!({
            "apiVersion": "openemr.io/v1alpha1", "kind": "RestoreRequest",
            "metadata": {"name": "into-older"},
            "spec": {
                "source": {"backupRef": {"name": "set-1"}},
                "target": {"sideBySide": {"deploymentName": "older", "deploymentSpec": spec}},
            },
        }),
    )
    .await
    .unwrap();
    let requests: Api<RestoreRequest> = source.api();
    let refused = refusal(&requests, "into-older").await;
    assert_eq!(
        refused.reason, "SchemaNewerThanImage",
        "{}",
        refused.message
    );
    assert!(
        refused.message.contains(&image) && refused.message.contains("openemr/openemr:7.0.4"),
        "{}",
        refused.message
    );
    assert!(clinics.get_opt("older").await.unwrap().is_none());
    requests
        .delete("into-older", &Default::default())
        .await
        .unwrap();
}

/// A restore side by side of a set of clinic `clinic-a`, with its documents or without.
async fn side_by_side(with_documents: bool) {
    let suffix = if with_documents { "docs" } else { "db" };
    let (source, operator) = Source::new(suffix, with_documents).await;
    let (client, ns, db) = (&source.client, &source.ns, &source.db);
    let target_tree = source.scratch.join("target");
    let set_snapshot = source.set_snapshot.clone();
    let clinics: Api<OpenEMRDeployment> = source.api();
    let sets: Api<OpenEMRBackup> = source.api();
    let source_db = source.source_database().await;
    if !with_documents {
        refused_into_an_older_image(&source).await;
    }
    let request_uid = source.request().await;

    // The target: a copy of the source's spec, tied to nothing of the original's, marked
    // for the restore, not owned by the request, and held.
    let copy = eventually(WAIT, "clinic copy-a", || async {
        clinics.get("copy-a").await.ok()
    })
    .await;
    assert_eq!(copy.annotations()[RESTORED_BY], "restore-a");
    assert_eq!(copy.labels()["openemr.io/restored-from"], "clinic-a");
    assert!(copy.owner_references().is_empty());
    assert_eq!(
        copy.spec.web.ingress, None,
        "no production traffic to a copy"
    );
    assert_eq!(copy.spec.web.replicas, 1);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let hold = "copy-a-hold-restore-restore-a";
    eventually(WAIT, "the hold on copy-a", || async {
        leases.get_opt(hold).await.ok()?
    })
    .await;

    // The restored instance gets its own master secret; the test plays RDS's part of that
    // (a new master password) on the server standing in for it.
    let names = support::clinic_names(&ns.name, "copy-a");
    let (restored, master_password) = source.play_master_password().await;
    let target_key = source.target_key().await;
    let rds = aws_sdk_rds::Client::new(&env().aws(Some(REGION)).await);

    // The OpenEMR user's password is the target's own; then the hold goes and the setup
    // Job attaches to the restored database.
    source.user_reset().await;
    let target_password = source.target_password().await;
    // So did the first administrator, in a Secret of the target's own made for the user
    // the restored database names (not the installer's default): the copy opens with it,
    // not with the source's.
    let secrets: Api<Secret> = source.api();
    let admin_secret = secrets.get("copy-a-admin").await.unwrap();
    let field =
        |k: &str| String::from_utf8(admin_secret.data.as_ref().unwrap()[k].0.clone()).unwrap();
    assert_eq!(field("username"), "administrator");
    let stored = db.root("SELECT password FROM openemr.users_secure WHERE id = 1");
    assert!(
        openemr_operator::mysql::admin::matches(&SecretValue(field("password")), &stored),
        "{stored}"
    );
    if with_documents {
        // Still held while the documents are restored.
        let job = documents_job_name(&request_uid);
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
        let restore_job = eventually(WAIT, "the documents Job", || async {
            jobs.get_opt(&job).await.ok()?
        })
        .await;
        let spec = restore_job.spec.clone().unwrap().template.spec.unwrap();
        let rendered = serde_json::to_string(&spec).unwrap();
        assert!(
            !rendered.contains(&target_password),
            "no password in the Pod spec"
        );
        assert!(leases.get_opt(hold).await.unwrap().is_some());
        assert!(setup_jobs(client, &ns.name, "copy-a").await.is_empty());
        play_job(client, &ns.name, &job, &target_tree).await;
        assert_eq!(
            std::fs::read(target_tree.join("default/documents/1/scan.pdf")).unwrap(),
            b"%PDF-1.7 scan"
        );
        let sqlconf = std::fs::read_to_string(target_tree.join("default/sqlconf.php")).unwrap();
        let restored_host = format!(
            "'{}.aaaaaaaaaa.{REGION}.rds.amazonaws.com'",
            names.db_instance
        );
        assert!(sqlconf.contains(&restored_host), "{sqlconf}");
        assert!(
            sqlconf.contains(&format!("'{target_password}'")),
            "{sqlconf}"
        );
        assert!(!sqlconf.contains("source-secret"), "{sqlconf}");
    }
    let (job, _) = setup_pod(client, &ns.name, "copy-a", 1).await;
    let setup_env =
        serde_json::to_value(&job.spec.unwrap().template.spec.unwrap().containers[0].env).unwrap();
    assert_eq!(setup_env[1]["value"], "attach", "{setup_env}");
    assert!(leases.get_opt(hold).await.unwrap().is_none(), "released");
    let status = source.finish().await;

    assert_eq!(status.progress.as_deref(), Some("8/8"), "{status:#?}");
    steps_told(&source, &operator, &status).await;
    assert_eq!(status.source_backup.as_deref(), Some("set-1"));
    assert_eq!(
        status.source_snapshot_arn.as_deref(),
        Some(set_snapshot.as_str())
    );
    assert_eq!(
        status.restored_db_instance.as_deref(),
        Some(names.db_instance.as_str())
    );
    let checks: Vec<(VerificationCheck, bool)> = status
        .verification
        .iter()
        .map(|c| (c.check, c.passed))
        .collect();
    let mut want = vec![
        (VerificationCheck::DatabaseReachable, true),
        (VerificationCheck::SchemaPresent, true),
        (VerificationCheck::TablesNonEmpty, true),
    ];
    if with_documents {
        want.push((VerificationCheck::DocumentsPresent, true));
    }
    want.push((VerificationCheck::WebReady, true));
    assert_eq!(checks, want, "{status:#?}");
    assert!(status.rto_seconds.is_some() && status.rpo_seconds.is_some());
    let documents = status
        .steps
        .iter()
        .find(|s| s.name == "RestoreDocuments")
        .unwrap();
    let want = if with_documents {
        StepPhase::Succeeded
    } else {
        StepPhase::Skipped
    };
    assert_eq!(documents.phase, want, "{documents:?}");

    // What AWS was asked: one copy under the target's key; one restore into the target's
    // network and settings that sends no ManageMasterUserPassword (RDS ignores it on a
    // MySQL restore); then the managed master password turned on under the target's key.
    let copies = source.proxy.exchanges("CopyDBSnapshot");
    assert_eq!(copies.len(), 1);
    assert_eq!(
        copies[0].param("SourceDBSnapshotIdentifier").as_deref(),
        Some(set_snapshot.as_str())
    );
    assert_eq!(
        copies[0].param("KmsKeyId").as_deref(),
        Some(target_key.as_str())
    );
    let restores = source.proxy.exchanges("RestoreDBInstanceFromDBSnapshot");
    assert_eq!(restores.len(), 1);
    let r = &restores[0];
    assert_eq!(r.param("ManageMasterUserPassword"), None, "{}", r.request);
    assert_eq!(
        r.param("DBInstanceIdentifier").as_deref(),
        Some(names.db_instance.as_str())
    );
    let stack = clinics
        .get("copy-a")
        .await
        .unwrap()
        .status
        .unwrap()
        .stack
        .unwrap()
        .name;
    let cfn = aws_sdk_cloudformation::Client::new(&env().aws(Some(REGION)).await);
    let described = cfn
        .describe_stacks()
        .stack_name(&stack)
        .send()
        .await
        .unwrap();
    let output = |key: &str| {
        described.stacks()[0]
            .outputs()
            .iter()
            .find(|o| o.output_key() == Some(key))
            .and_then(|o| o.output_value())
            .unwrap()
            .to_string()
    };
    assert_eq!(
        r.param("DBSubnetGroupName"),
        Some(output("DbSubnetGroupName"))
    );
    assert_eq!(
        r.param("VpcSecurityGroupIds.VpcSecurityGroupId.1"),
        Some(output("SecurityGroupId"))
    );
    assert_eq!(
        r.param("DBParameterGroupName"),
        Some(output("DbParameterGroupName"))
    );
    assert_eq!(r.param("DeletionProtection").as_deref(), Some("true"));
    let managed = source.managed_password_calls();
    assert_eq!(managed.len(), 1);
    assert_eq!(
        managed[0].param("MasterUserSecretKmsKeyId").as_deref(),
        Some(target_key.as_str())
    );
    let calls = support::aws_calls(&operator).await;
    assert_eq!(
        calls.get("CreateDBInstance"),
        Some(&1),
        "the source's only: {calls:?}"
    );
    let tags: std::collections::BTreeMap<_, _> = restored
        .tag_list()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect();
    assert_eq!(tags[RESTORED_BY], request_uid);
    assert_eq!(tags["openemr.io/name"], "copy-a");

    // The target's Secret opens the restored database as OpenEMR's user; the source's
    // password no longer does. No password reached the request's status.
    let endpoint = status.restored_endpoint.clone().unwrap();
    assert!(opens(db, &endpoint, "openemr", &target_password).await);
    assert!(!opens(db, &endpoint, "openemr", SOURCE_PASSWORD).await);
    let written = serde_json::to_string(&status).unwrap();
    for password in [&target_password, &master_password] {
        assert!(!written.contains(password.as_str()));
    }

    // The source is untouched.
    let source_now = rds
        .describe_db_instances()
        .db_instance_identifier(&source_db.identifier)
        .send()
        .await
        .unwrap();
    assert_eq!(
        source_now.db_instances()[0].db_instance_status(),
        Some("available")
    );
    assert_eq!(
        sets.get("set-1").await.unwrap().status.unwrap().phase,
        Some(BackupPhase::Completed)
    );

    // The request goes; the clinic it made stays.
    source.delete_request().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(clinics.get_opt("copy-a").await.unwrap().is_some());
    drop(operator);
    std::fs::remove_dir_all(&source.scratch).ok();
}

/// A set restored in place into the clinic it was taken of. While the clinic still serves,
/// the set's snapshot is copied and restored into a new instance named after the request,
/// with the clinic's network, settings and key, and OpenEMR's user there gets the
/// clinic's own password. Only then is the clinic quiesced (its workers at 0), its
/// database snapshotted as it stands, and the set's documents restored beside the live
/// site and exchanged for it (the live ones kept aside, never deleted); then the clinic is
/// switched to the new instance through its status (its spec, what GitOps applied, is not
/// touched) and its workers come back on it. Every check passes; the replaced instance is
/// kept, and the source set untouched. A second in-place request into the clinic waits
/// behind the first, saying so, and makes nothing.
#[tokio::test]
async fn a_set_restored_in_place_replaces_the_clinics_data_beside_it_and_switches_it() {
    use k8s_openapi::api::apps::v1::Deployment;
    use openemr_operator::controller::restore::kept::{
        discard_job_name, final_identifier, rollback_job_name,
    };
    use openemr_operator::controller::restore::steps::{safety_identifier, swap_token};
    let (source, operator) = Source::new("inplace", true).await;
    let (client, ns, db) = (&source.client, &source.ns, &source.db);
    let live = source.scratch.join("source");
    let clinics: Api<OpenEMRDeployment> = source.api();
    let requests: Api<RestoreRequest> = source.api();
    let workers: Api<Deployment> = source.api();
    let rds = aws_sdk_rds::Client::new(&env().aws(Some(REGION)).await);
    let before = clinics.get("clinic-a").await.unwrap();
    let previous = source.source_database().await.identifier;
    // What the clinic's users did after the set: replaced by the restore, kept aside.
    std::fs::write(
        live.join("default/documents/1/after.pdf"),
        b"made after the set",
    )
    .unwrap();
    std::fs::write(
        live.join("default/documents/1/scan.pdf"),
        b"edited after the set",
    )
    .unwrap();

    let uid = source
        .request_from(
            json!({"backupRef": {"name": "set-1"}}),
            json!({"target": {"inPlace": {
                "deploymentName": "clinic-a", "confirm": "clinic-a", "keepPreviousFor": "1h",
            }}}),
        )
        .await;
    let restored_id = in_place_identifier(&uid);
    support::apply(
        client,
        &ns.name,
        &json!({
            "apiVersion": "openemr.io/v1alpha1", "kind": "RestoreRequest",
            "metadata": {"name": "restore-b"},
            "spec": {"source": {"backupRef": {"name": "set-1"}},
                "target": {"inPlace": {"deploymentName": "clinic-a", "confirm": "clinic-a"}}},
        }),
    )
    .await
    .unwrap();
    let waiting = eventually(WAIT, "restore-b waiting", || async {
        let status = requests.get("restore-b").await.ok()?.status?;
        (status.phase == Some(RestorePhase::Waiting)).then_some(status)
    })
    .await;
    assert_eq!(waiting.waiting_for.as_deref(), Some("restore-a"));
    assert!(waiting.steps.is_empty(), "{waiting:#?}");

    // Restored beside the clinic, which serves meanwhile.
    let (restored, _) = source
        .play_master_password_of("clinic-a", &restored_id)
        .await;
    source.user_reset().await;
    let replicas = || async { workers.get("clinic-a-openemr").await.ok()?.spec?.replicas };

    // The documents downloaded beside the live site while the clinic serves.
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let stage = stage_job_name(&uid);
    eventually(WAIT, "the staging Job", || async {
        jobs.get_opt(&stage).await.ok()?
    })
    .await;
    assert_eq!(replicas().await, Some(1), "the clinic serves while staged");
    play_job(client, &ns.name, &stage, &live).await;
    let staged = live.join(format!("_restoring-{}", swap_token(&uid)));
    assert_eq!(
        std::fs::read(staged.join("default/documents/1/scan.pdf")).unwrap(),
        b"%PDF-1.7 scan"
    );
    assert_eq!(
        std::fs::read(live.join("default/documents/1/scan.pdf")).unwrap(),
        b"edited after the set",
        "the live site is untouched while staged"
    );

    // Quiesced, snapshotted, documents exchanged.
    let job = documents_job_name(&uid);
    let restore_job = eventually(WAIT, "the documents Job", || async {
        jobs.get_opt(&job).await.ok()?
    })
    .await;
    assert_eq!(
        replicas().await,
        Some(0),
        "no worker while the data is replaced"
    );
    let args = restore_job.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(args.iter().any(|a| a == "--swap-token"), "{args:?}");
    let safety = rds
        .describe_db_snapshots()
        .db_snapshot_identifier(safety_identifier(&uid))
        .send()
        .await
        .unwrap();
    let safety = &safety.db_snapshots()[0];
    assert_eq!(safety.db_instance_identifier(), Some(previous.as_str()));
    assert_eq!(safety.status(), Some("available"));
    assert!(
        clinics
            .get("clinic-a")
            .await
            .unwrap()
            .status
            .unwrap()
            .database_switch
            .is_none(),
        "not switched before its documents are in place"
    );
    play_job(client, &ns.name, &job, &live).await;
    let kept = live.join(format!("_previous-{}", swap_token(&uid)));
    assert_eq!(
        std::fs::read(live.join("default/documents/1/scan.pdf")).unwrap(),
        b"%PDF-1.7 scan"
    );
    assert!(!live.join("default/documents/1/after.pdf").exists());
    assert_eq!(
        std::fs::read(kept.join("default/documents/1/after.pdf")).unwrap(),
        b"made after the set"
    );
    assert_eq!(
        std::fs::read(kept.join("default/documents/1/scan.pdf")).unwrap(),
        b"edited after the set"
    );
    let password = source.password_of("clinic-a").await;
    let sqlconf = std::fs::read_to_string(live.join("default/sqlconf.php")).unwrap();
    assert!(
        sqlconf.contains(&format!(
            "'{restored_id}.aaaaaaaaaa.{REGION}.rds.amazonaws.com'"
        )),
        "{sqlconf}"
    );
    assert!(sqlconf.contains(&format!("'{password}'")), "{sqlconf}");

    // Switched through the status; the workers come back on the restored instance.
    let status = eventually(WAIT, "restore-a Succeeded", || async {
        run_workers(client, &ns.name, "clinic-a").await;
        let status = requests.get("restore-a").await.ok()?.status?;
        assert_ne!(status.phase, Some(RestorePhase::Failed), "{status:#?}");
        (status.phase == Some(RestorePhase::Succeeded)).then_some(status)
    })
    .await;
    assert_eq!(status.progress.as_deref(), Some("11/11"), "{status:#?}");
    let time = |name: &str, end: bool| {
        let step = status.steps.iter().find(|s| s.name == name).unwrap();
        let at = if end {
            &step.completion_time
        } else {
            &step.start_time
        };
        at.clone().unwrap().0
    };
    assert!(
        time("Quiesce", false) >= time("StageDocuments", true)
            && time("StageDocuments", false) >= time("ResetDatabaseUser", true),
        "quiesced only once the new instance and the documents were ready: {status:#?}"
    );
    assert_eq!(
        status.previous_db_instance.as_deref(),
        Some(previous.as_str())
    );
    assert_eq!(status.safety_snapshot, Some(safety_identifier(&uid)));
    assert_eq!(
        status.previous_documents,
        Some(format!("_previous-{}", swap_token(&uid)))
    );
    assert_eq!(
        status.restored_db_instance.as_deref(),
        Some(restored_id.as_str())
    );
    assert!(
        status.verification.iter().all(|c| c.passed) && status.verification.len() == 5,
        "{status:#?}"
    );
    let after = clinics.get("clinic-a").await.unwrap();
    assert_eq!(after.metadata.generation, before.metadata.generation);
    assert_eq!(
        after.spec, before.spec,
        "the spec GitOps applied is untouched"
    );
    let clinic_status = after.status.unwrap();
    let switch = clinic_status.database_switch.unwrap();
    assert_eq!(
        (
            switch.identifier.as_str(),
            switch.previous.as_str(),
            switch.restore_request.as_str()
        ),
        (restored_id.as_str(), previous.as_str(), "restore-a")
    );
    assert_eq!(clinic_status.database.unwrap().identifier, restored_id);
    assert_eq!(replicas().await, Some(1));
    let endpoint = status.restored_endpoint.clone().unwrap();
    assert!(opens(db, &endpoint, "openemr", &password).await);

    // What AWS was asked: one copy under the clinic's own key, one restore into a new
    // instance with its network; the replaced instance kept as it was.
    let key = source.key_of("clinic-a").await;
    let copies = source.proxy.exchanges("CopyDBSnapshot");
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].param("KmsKeyId").as_deref(), Some(key.as_str()));
    let restores = source.proxy.exchanges("RestoreDBInstanceFromDBSnapshot");
    assert_eq!(restores.len(), 1);
    assert_eq!(
        restores[0].param("DBInstanceIdentifier").as_deref(),
        Some(restored_id.as_str())
    );
    assert_eq!(restores[0].param("ManageMasterUserPassword"), None);
    let tags: std::collections::BTreeMap<_, _> = restored
        .tag_list()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect();
    assert_eq!(tags["openemr.io/name"], "clinic-a");
    assert_eq!(tags[RESTORED_BY], uid);
    let kept_db = rds
        .describe_db_instances()
        .db_instance_identifier(&previous)
        .send()
        .await
        .unwrap();
    assert_eq!(
        kept_db.db_instances()[0].db_instance_status(),
        Some("available")
    );
    let calls = support::aws_calls(&operator).await;
    assert_eq!(calls.get("CreateDBInstance"), Some(&1), "{calls:?}");

    // The second request waited throughout and made nothing.
    requests
        .delete("restore-b", &Default::default())
        .await
        .unwrap();
    let condition = |kind: &'static str| {
        let requests = requests.clone();
        async move {
            let status = requests.get("restore-a").await.ok()?.status?;
            status.conditions.into_iter().find(|c| c.type_ == kind)
        }
    };
    let kept = eventually(WAIT, "PreviousRemoved", || condition("PreviousRemoved")).await;
    assert_eq!(kept.reason, "Kept", "{}", kept.message);

    // Rolled back by the annotation, within the window: quiesced again, the kept entries
    // put back, switched back to the instance it ran on, the workers back.
    requests
        .patch(
            "restore-a",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {"openemr.io/rollback": "true"}}}),
            ),
        )
        .await
        .unwrap();
    let rollback_job = rollback_job_name(&uid);
    eventually(WAIT, "the rollback Job", || async {
        jobs.get_opt(&rollback_job).await.ok()?
    })
    .await;
    assert_eq!(replicas().await, Some(0), "quiesced for the rollback");
    play_job(client, &ns.name, &rollback_job, &live).await;
    assert_eq!(
        std::fs::read(live.join("default/documents/1/scan.pdf")).unwrap(),
        b"edited after the set"
    );
    assert!(live.join("default/documents/1/after.pdf").exists());
    assert!(
        !live
            .join(format!("_previous-{}", swap_token(&uid)))
            .exists()
    );
    let aside = live.join(format!("_rolled-back-{}", swap_token(&uid)));
    assert_eq!(
        std::fs::read(aside.join("default/documents/1/scan.pdf")).unwrap(),
        b"%PDF-1.7 scan"
    );
    let deadline = std::time::Instant::now() + WAIT;
    let rolled = loop {
        run_workers(client, &ns.name, "clinic-a").await;
        if let Some(c) = condition("RolledBack").await.filter(|c| c.status == "True") {
            break c;
        }
        if std::time::Instant::now() > deadline {
            let request = requests.get("restore-a").await.unwrap().status;
            let clinic = clinics.get("clinic-a").await.unwrap().status;
            panic!("not rolled back: {request:#?}\n{clinic:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rolled.reason, "RolledBack", "{}", rolled.message);
    let back = clinics.get("clinic-a").await.unwrap().status.unwrap();
    assert_eq!(back.database.unwrap().identifier, previous);
    assert_eq!(back.database_switch.unwrap().identifier, previous);
    assert_eq!(replicas().await, Some(1));

    // The window ends (a clock running two minutes a second): the restored instance, now
    // the one kept, goes after its final snapshot, and the restored entries with it; the
    // instance the clinic runs on stays.
    drop(operator.kill());
    let clock = support::clock::TestClock::starting(
        &k8s_openapi::jiff::Timestamp::now().to_string(),
        120.0,
    );
    let args: Vec<&str> = source.args.iter().map(String::as_str).collect();
    let mut vars: Vec<(&str, &str)> = source
        .vars
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    vars.extend(clock.vars());
    let _fast = Operator::start_with_env(env(), Some(&ns.name), &args, &vars);
    let discard = discard_job_name(&uid);
    eventually(Duration::from_secs(240), "the discard Job", || async {
        jobs.get_opt(&discard).await.ok()?
    })
    .await;
    play_job(client, &ns.name, &discard, &live).await;
    let removed = eventually(WAIT, "PreviousRemoved", || async {
        condition("PreviousRemoved")
            .await
            .filter(|c| c.status == "True")
    })
    .await;
    assert!(
        removed.message.contains(&restored_id),
        "{}",
        removed.message
    );
    assert!(!aside.exists());
    assert!(live.join("default/documents/1/after.pdf").exists());
    let final_snapshot = rds
        .describe_db_snapshots()
        .db_snapshot_identifier(final_identifier(&uid))
        .send()
        .await
        .unwrap();
    assert_eq!(
        final_snapshot.db_snapshots()[0].db_instance_identifier(),
        Some(restored_id.as_str())
    );
    assert!(
        instance_gone(&rds, &restored_id).await,
        "the restored instance is deleted"
    );
    let serving = rds
        .describe_db_instances()
        .db_instance_identifier(&previous)
        .send()
        .await
        .unwrap();
    assert_eq!(
        serving.db_instances()[0].db_instance_status(),
        Some("available")
    );
    std::fs::remove_dir_all(&source.scratch).ok();
}

/// An in-place restore whose check fails after the clinic was switched rolls back by
/// itself: the request is `Failed` naming the check, the clinic runs on its own instance
/// again with its site as it was, and the restored instance is kept. The operator is
/// SIGKILLed after it asked for the safety snapshot and again right after the switch:
/// each new one finds what the last did (one safety snapshot, one restore, one switch).
#[tokio::test]
async fn an_in_place_restore_whose_check_fails_after_the_switch_rolls_back_by_itself() {
    use k8s_openapi::api::apps::v1::Deployment;
    use openemr_operator::controller::restore::kept::rollback_job_name;
    use openemr_operator::controller::restore::steps::{safety_identifier, swap_token};
    let (source, operator) = Source::new("inplace-fail", true).await;
    let (client, ns, db) = (&source.client, &source.ns, &source.db);
    source.proxy.record("CreateDBSnapshot");
    let live = source.scratch.join("source");
    let clinics: Api<OpenEMRDeployment> = source.api();
    let requests: Api<RestoreRequest> = source.api();
    let workers: Api<Deployment> = source.api();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let previous = source.source_database().await.identifier;
    std::fs::write(
        live.join("default/documents/1/after.pdf"),
        b"made after the set",
    )
    .unwrap();

    let (uid, restored_id) = source.in_place_staged().await;
    let safety_calls = || {
        source
            .proxy
            .exchanges("CreateDBSnapshot")
            .into_iter()
            .filter(|e| e.param("DBSnapshotIdentifier") == Some(safety_identifier(&uid)))
            .count()
    };
    eventually(WAIT, "the safety snapshot asked for", || async {
        (safety_calls() >= 1).then_some(())
    })
    .await;
    drop(operator.kill());
    let operator = source.operator();
    let job = documents_job_name(&uid);
    eventually(WAIT, "the documents Job", || async {
        jobs.get_opt(&job).await.ok()?
    })
    .await;
    play_job(client, &ns.name, &job, &live).await;
    // The restored data lost its patients: TablesNonEmpty fails once the clinic runs on it.
    db.root("USE openemr; CREATE TABLE patient_data_kept AS SELECT * FROM patient_data; DELETE FROM patient_data");
    eventually(WAIT, "the switch", || async {
        let switch = clinics
            .get("clinic-a")
            .await
            .ok()?
            .status?
            .database_switch?;
        (switch.identifier == restored_id).then_some(())
    })
    .await;
    drop(operator.kill());
    let _operator = source.operator();

    // Failed naming the check, then put back by itself.
    let rollback = rollback_job_name(&uid);
    let failed = eventually(WAIT, "the rollback Job", || async {
        run_workers(client, &ns.name, "clinic-a").await;
        if jobs.get_opt(&rollback).await.ok()?.is_none() {
            // Shown if this times out: where the request and the clinic stand.
            let request = requests.get("restore-a").await.ok()?.status?;
            let clinic = clinics.get("clinic-a").await.ok()?.status?;
            let steps: Vec<_> = request
                .steps
                .iter()
                .map(|s| (&s.name, s.phase, &s.message))
                .collect();
            eprintln!(
                "restore-a {:?} {steps:?}; clinic-a runs on {:?}, switched to {:?}",
                request.phase,
                clinic.database.map(|d| d.identifier),
                clinic.database_switch.map(|d| d.identifier)
            );
            tokio::time::sleep(Duration::from_secs(5)).await;
            return None;
        }
        requests.get("restore-a").await.ok()?.status
    })
    .await;
    assert_eq!(failed.phase, Some(RestorePhase::Failed), "{failed:#?}");
    let succeeded = failed
        .conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
        .unwrap();
    assert_eq!(
        succeeded.reason, "VerificationFailed",
        "{}",
        succeeded.message
    );
    assert!(
        succeeded.message.contains("patient_data"),
        "{}",
        succeeded.message
    );
    assert!(
        succeeded.message.contains("rolled back"),
        "{}\n{failed:#?}",
        succeeded.message
    );
    let replicas = workers
        .get("clinic-a-openemr")
        .await
        .unwrap()
        .spec
        .unwrap()
        .replicas;
    assert_eq!(replicas, Some(0), "quiesced for the rollback");
    play_job(client, &ns.name, &rollback, &live).await;
    db.root("USE openemr; INSERT INTO patient_data SELECT * FROM patient_data_kept");
    let rolled = eventually(WAIT, "RolledBack", || async {
        run_workers(client, &ns.name, "clinic-a").await;
        let status = requests.get("restore-a").await.ok()?.status?;
        let rolled = status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "RolledBack")?;
        (rolled.status == "True").then_some(rolled)
    })
    .await;
    assert_eq!(rolled.reason, "RolledBack", "{}", rolled.message);
    let clinic = clinics.get("clinic-a").await.unwrap().status.unwrap();
    assert_eq!(clinic.database.unwrap().identifier, previous);
    assert_eq!(clinic.database_switch.unwrap().identifier, previous);
    assert_eq!(
        std::fs::read(live.join("default/documents/1/after.pdf")).unwrap(),
        b"made after the set"
    );
    assert!(
        live.join(format!("_rolled-back-{}", swap_token(&uid)))
            .join("default/documents/1/scan.pdf")
            .exists()
    );
    let status = requests.get("restore-a").await.unwrap().status.unwrap();
    assert_eq!(
        status.phase,
        Some(RestorePhase::Failed),
        "stays the record of what happened"
    );
    let kept = status
        .conditions
        .iter()
        .find(|c| c.type_ == "PreviousRemoved")
        .unwrap();
    assert_eq!(kept.reason, "Kept");
    assert!(kept.message.contains(&restored_id), "{}", kept.message);

    // Exactly one of each, across two operators killed mid-way.
    assert_eq!(safety_calls(), 1);
    assert_eq!(
        source
            .proxy
            .counts("RestoreDBInstanceFromDBSnapshot")
            .answered,
        1
    );
    assert_eq!(source.proxy.counts("CopyDBSnapshot").answered, 1);
    let rds = aws_sdk_rds::Client::new(&env().aws(Some(REGION)).await);
    let restored = rds
        .describe_db_instances()
        .db_instance_identifier(&restored_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        restored.db_instances()[0].db_instance_status(),
        Some("available"),
        "kept for inspection"
    );
    std::fs::remove_dir_all(&source.scratch).ok();
}

/// An in-place request deleted once it has stopped the clinic: its finalizer keeps it
/// until the clinic is as it was. The documents Job exchanging the site is let finish,
/// then the request fails (`Deleted`), the rollback puts the kept entries back, the
/// clinic is let go on the instance it ran on, and only then is the request gone. A
/// backup set reading the clinic's data when the restore came to stop it was waited for,
/// and a set asked for meanwhile waited for the restore.
#[tokio::test]
async fn an_in_place_restore_deleted_after_it_stopped_the_clinic_puts_it_back_then_goes() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::coordination::v1::Lease;
    use openemr_operator::controller::restore::kept::{lease, rollback_job_name};
    use openemr_operator::controller::restore::steps::swap_token;
    let (source, _operator) = Source::new("inplace-delete", true).await;
    let (client, ns) = (&source.client, &source.ns);
    let live = source.scratch.join("source");
    let clinics: Api<OpenEMRDeployment> = source.api();
    let requests: Api<RestoreRequest> = source.api();
    let workers: Api<Deployment> = source.api();
    let leases: Api<Lease> = source.api();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let previous = source.source_database().await.identifier;
    std::fs::write(
        live.join("default/documents/1/after.pdf"),
        b"made after the set",
    )
    .unwrap();
    // Another set of the clinic under way: its documents Job is held back.
    source.ask_for_set("set-2").await;
    let set_job = set::documents_job_name("set-2");
    eventually(WAIT, "set-2's documents Job", || async {
        jobs.get_opt(&set_job).await.ok()?
    })
    .await;

    let (uid, _) = source.in_place_staged().await;
    eventually(WAIT, "the Quiesce step waiting for the set", || async {
        let step = step(&requests, "restore-a", "Quiesce").await?;
        step.message?.contains("set-2").then_some(())
    })
    .await;
    let hold = lease("clinic-a", "restore-a");
    assert!(
        leases.get_opt(&hold).await.unwrap().is_none(),
        "the clinic serves while the set reads it"
    );
    // A set asked for meanwhile does not begin: sets back to back would keep the clinic
    // from ever being free to stop.
    source.ask_for_set("set-3").await;
    let sets: Api<OpenEMRBackup> = source.api();
    let started = eventually(WAIT, "set-3 waiting for the restore", || async {
        let c = support::condition(&sets, "set-3", "Started").await?;
        (c.reason == "RestoreInPlace").then_some(c)
    })
    .await;
    assert!(
        started.message.contains("\"restore-a\""),
        "{}",
        started.message
    );
    sets.delete("set-3", &Default::default()).await.unwrap();
    play_job(client, &ns.name, &set_job, &live).await;

    let job = documents_job_name(&uid);
    eventually(WAIT, "the exchange Job", || async {
        jobs.get_opt(&job).await.ok()?
    })
    .await;
    requests
        .delete("restore-a", &Default::default())
        .await
        .unwrap();
    // Terminating, it lets the exchange finish before it puts anything back.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        jobs.get_opt(&rollback_job_name(&uid))
            .await
            .unwrap()
            .is_none(),
        "no rollback while the exchange runs"
    );
    play_job(client, &ns.name, &job, &live).await;
    let rollback = rollback_job_name(&uid);
    eventually(WAIT, "the rollback Job", || async {
        jobs.get_opt(&rollback).await.ok()?
    })
    .await;
    let failed = requests.get("restore-a").await.unwrap();
    assert!(failed.metadata.deletion_timestamp.is_some());
    let status = failed.status.unwrap();
    let succeeded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
        .unwrap();
    assert_eq!(succeeded.reason, "Deleted", "{}", succeeded.message);
    assert_eq!(
        workers
            .get("clinic-a-openemr")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(0),
        "still held"
    );
    play_job(client, &ns.name, &rollback, &live).await;
    eventually(WAIT, "the request gone", || async {
        requests
            .get_opt("restore-a")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(leases.get_opt(&hold).await.unwrap().is_none());
    assert_eq!(
        std::fs::read(live.join("default/documents/1/after.pdf")).unwrap(),
        b"made after the set"
    );
    assert!(
        live.join(format!("_rolled-back-{}", swap_token(&uid)))
            .join("default/documents/1/scan.pdf")
            .exists()
    );
    let clinic = clinics.get("clinic-a").await.unwrap().status.unwrap();
    assert_eq!(clinic.database.unwrap().identifier, previous);
    assert!(
        clinic.database_switch.is_none(),
        "never switched: {:?}",
        clinic.database_switch
    );
    eventually(WAIT, "the workers back", || async {
        run_workers(client, &ns.name, "clinic-a").await;
        let replicas = workers.get("clinic-a-openemr").await.ok()?.spec?.replicas;
        (replicas == Some(1)).then_some(())
    })
    .await;
    std::fs::remove_dir_all(&source.scratch).ok();
}

/// Into another region (`sideBySide.region`, with a `deploymentSpec` naming a network
/// there): the target clinic is made there, with a key of that region; the set has no copy
/// there, so its snapshot is copied across under that
/// key and restored there into the target's network. moto would take a copy without a key,
/// so the proxy's record of the request is what shows the key was sent.
#[tokio::test]
async fn a_set_restored_into_another_region_is_copied_there_under_the_targets_key() {
    let (source, _operator) = Source::new("region", false).await;
    let proxy = &source.proxy;
    let clinics: Api<OpenEMRDeployment> = source.api();
    // The source's network is of its region: the target's is given (`NetworkNotInRegion`
    // otherwise, as `source::tests` show).
    let mut spec = support::clinic_manifest("copy-a", OTHER_REGION, "")["spec"].clone();
    spec["web"]["replicas"] = json!(1);
    source
        .request_from(
            json!({"backupRef": {"name": "set-1"}}),
            json!({"target": {"sideBySide": {
                "deploymentName": "copy-a", "region": OTHER_REGION, "deploymentSpec": spec,
            }}}),
        )
        .await;
    let names = support::clinic_names(&source.ns.name, "copy-a");
    let (restored, _) = source
        .play_master_password_in(OTHER_REGION, "copy-a", &names.db_instance)
        .await;
    source.user_reset().await;
    let status = source.finish().await;
    assert_eq!(status.progress.as_deref(), Some("8/8"), "{status:#?}");

    let copy = clinics.get("copy-a").await.unwrap();
    assert_eq!(copy.spec.aws.region, OTHER_REGION);
    let key = source.target_key().await;
    assert!(key.contains(&format!(":{OTHER_REGION}:")), "{key}");
    let copies = proxy.exchanges("CopyDBSnapshot");
    assert_eq!(copies.len(), 1);
    let request = &copies[0];
    assert_eq!(request.region, OTHER_REGION);
    assert_eq!(request.param("KmsKeyId").as_deref(), Some(key.as_str()));
    assert_eq!(
        request.param("SourceDBSnapshotIdentifier").as_deref(),
        Some(source.set_snapshot.as_str())
    );
    assert!(source.set_snapshot.contains(&format!(":{REGION}:")));
    let restores = proxy.exchanges("RestoreDBInstanceFromDBSnapshot");
    assert_eq!(restores.len(), 1);
    assert_eq!(restores[0].region, OTHER_REGION);
    let placement = copy.status.unwrap();
    assert!(
        restored
            .db_instance_arn()
            .unwrap()
            .contains(&format!(":{OTHER_REGION}:")),
        "{restored:?}"
    );
    assert_eq!(
        restores[0].param("DBSubnetGroupName"),
        restored
            .db_subnet_group()
            .and_then(|g| g.db_subnet_group_name())
            .map(str::to_string)
    );
    assert_eq!(
        restored.kms_key_id(),
        placement.kms_key_arn.as_deref(),
        "the restored instance is under the target's key"
    );
    // The source's region holds nothing of the target.
    let source_rds = aws_sdk_rds::Client::new(&env().aws(Some(REGION)).await);
    assert!(instance_gone(&source_rds, &names.db_instance).await);
    std::fs::remove_dir_all(&source.scratch).ok();
}

/// SIGKILL at each step of a restore: with the snapshot copy still `creating` (moto's
/// answers rewritten), with the restored instance still `creating`, after the managed
/// master password was asked for, and after OpenEMR's password was set. Each new operator
/// finds what the last one did: one copy, one restore, one managed-password call, one
/// target clinic, and the restore succeeds.
#[tokio::test]
async fn a_restore_survives_an_operator_killed_at_each_step() {
    use support::faults::Rule;
    let (source, operator) = Source::new("kill", false).await;
    let proxy = &source.proxy;
    let requests: Api<RestoreRequest> = source.api();
    let answered = |op: &str| proxy.counts(op).answered;
    proxy.set(
        "DescribeDBSnapshots",
        Rule::default().rewrite("<Status>available</Status>", "<Status>creating</Status>"),
    );
    source.request().await;
    eventually(WAIT, "the copy asked for", || async {
        (answered("CopyDBSnapshot") >= 1).then_some(())
    })
    .await;
    drop(operator.kill());
    proxy.set(
        "DescribeDBInstances",
        Rule::default().rewrite(
            "<DBInstanceStatus>available</DBInstanceStatus>",
            "<DBInstanceStatus>creating</DBInstanceStatus>",
        ),
    );
    let operator = source.operator();
    eventually(WAIT, "the copy seen creating", || async {
        let step = step(&requests, "restore-a", "CopySnapshot").await?;
        step.message?.contains("is creating").then_some(())
    })
    .await;
    // RDS finishes the copy while the operator is away.
    drop(operator.kill());
    proxy.clear("DescribeDBSnapshots");
    let operator = source.operator();
    eventually(WAIT, "the restore asked for", || async {
        (answered("RestoreDBInstanceFromDBSnapshot") >= 1).then_some(())
    })
    .await;
    drop(operator.kill());
    let operator = source.operator();
    eventually(WAIT, "the restored instance seen creating", || async {
        let step = step(&requests, "restore-a", "RestoreDatabase").await?;
        step.message?.contains("is creating").then_some(())
    })
    .await;
    assert!(source.managed_password_calls().is_empty());
    drop(operator.kill());
    proxy.clear("DescribeDBInstances");
    let operator = source.operator();
    eventually(WAIT, "the managed master password asked for", || async {
        (!source.managed_password_calls().is_empty()).then_some(())
    })
    .await;
    drop(operator.kill());
    let operator = source.operator();
    source.play_master_password().await;
    source.user_reset().await;
    drop(operator.kill());
    let _operator = source.operator();
    let status = source.finish().await;
    assert_eq!(status.progress.as_deref(), Some("8/8"), "{status:#?}");
    assert_eq!(answered("CopyDBSnapshot"), 1);
    assert_eq!(answered("RestoreDBInstanceFromDBSnapshot"), 1);
    assert_eq!(source.managed_password_calls().len(), 1);
    let clinics: Api<OpenEMRDeployment> = source.api();
    let copies = clinics
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|c| c.annotations().contains_key(RESTORED_BY))
        .count();
    assert_eq!(copies, 1);
    std::fs::remove_dir_all(&source.scratch).ok();
}

/// A snapshot ARN with a documents location (another cluster's set, the recovery stack's
/// inputs) pairs only one clinic's halves: OpenEMR's keys are half in the database, half
/// in the documents. A snapshot tagged as another clinic's, with `set-1`'s documents, is
/// refused naming both clinics, and nothing is made; `set-1`'s own snapshot with them is
/// accepted, the request saying what it found.
#[tokio::test]
async fn a_snapshot_source_pairs_one_clinics_database_and_documents_or_is_refused() {
    let (source, _operator) = Source::new("snapshot", true).await;
    let requests: Api<RestoreRequest> = source.api();
    let clinics: Api<OpenEMRDeployment> = source.api();
    let sets: Api<OpenEMRBackup> = source.api();
    let documents = sets
        .get("set-1")
        .await
        .unwrap()
        .status
        .unwrap()
        .documents
        .unwrap();
    let rds = aws_sdk_rds::Client::new(&env().aws(Some(REGION)).await);
    let other = rds
        .create_db_snapshot()
        .db_instance_identifier(source.source_database().await.identifier)
        .db_snapshot_identifier("another-clinics")
        .tags(
            aws_sdk_rds::types::Tag::builder()
                .key("openemr.io/uid")
                .value("uid-of-clinic-z")
                .build(),
        )
        .tags(
            aws_sdk_rds::types::Tag::builder()
                .key("openemr.io/name")
                .value("clinic-z")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .db_snapshot
        .unwrap()
        .db_snapshot_arn
        .unwrap();
    let mut spec = support::clinic_manifest("copy-a", REGION, "")["spec"].clone();
    spec["web"]["replicas"] = json!(1);
    let snapshot_source = |arn: &str| {
        json!({"snapshot": {"snapshotArn": arn, "documents": {
            "bucket": documents.bucket, "manifest": documents.manifest}}})
    };
    let side_by_side = json!({"target": {"sideBySide": {
        "deploymentName": "copy-a", "deploymentSpec": spec}}});

    source
        .request_from(snapshot_source(&other), side_by_side.clone())
        .await;
    let refused = refusal(&requests, "restore-a").await;
    assert_eq!(refused.reason, "SourceMismatch", "{}", refused.message);
    let uid = clinics.get("clinic-a").await.unwrap().uid().unwrap();
    for said in [
        "clinic clinic-z's (uid uid-of-clinic-z)",
        &format!("clinic-a's (uid {uid})"),
    ] {
        assert!(refused.message.contains(said), "{}", refused.message);
    }
    assert!(
        clinics.get_opt("copy-a").await.unwrap().is_none(),
        "nothing made"
    );
    source.delete_request().await;

    source
        .request_from(snapshot_source(&source.set_snapshot), side_by_side)
        .await;
    let check = eventually(WAIT, "the source checked", || async {
        requests.get("restore-a").await.ok()?.status?.source_check
    })
    .await;
    assert!(
        check.contains(&format!(
            "both clinic {}/clinic-a's (uid {uid})",
            source.ns.name
        )),
        "{check}"
    );
    std::fs::remove_dir_all(&source.scratch).ok();
}

/// A point in time of clinic `clinic-a`, restored side by side. The window is the
/// operator's own judgement (moto would restore any instant): with the clinic's latest
/// restorable time moved back by the proxy, an instant after it is refused naming the
/// window. Inside it, the database at that instant is restored into a staging instance
/// beside the source (`RestoreDBInstanceToPointInTime` takes no key), whose snapshot is
/// copied under the target's key and restored as for a set; the staging instance and its
/// snapshot are deleted once the target's instance is there, and the source is untouched.
#[tokio::test]
async fn a_point_in_time_restored_side_by_side_goes_through_a_staging_snapshot_under_the_targets_key()
 {
    use k8s_openapi::jiff::Timestamp;
    use openemr_operator::controller::restore::steps::staging_identifier;
    use support::faults::Rule;
    let (source, operator) = Source::new("pitr", false).await;
    let (proxy, db) = (&source.proxy, &source.db);
    for op in [
        "RestoreDBInstanceToPointInTime",
        "CreateDBSnapshot",
        "DeleteDBInstance",
        "DeleteDBSnapshot",
    ] {
        proxy.record(op);
    }
    let requests: Api<RestoreRequest> = source.api();
    // The shared inventory's listings (every 3 s), after `listings` more.
    let listed = |listings: u64| {
        let past = proxy.counts("DescribeDBInstances").answered + listings;
        async move {
            eventually(WAIT, "the inventory's listings", || async {
                (proxy.counts("DescribeDBInstances").answered >= past).then_some(())
            })
            .await
        }
    };

    // The window, as RDS reports it, ends two hours ago.
    let ended = Timestamp::from_second(Timestamp::now().as_second() / 60 * 60 - 7200).unwrap();
    proxy.set(
        "DescribeDBInstances",
        Rule::default().rewrite_pattern(
            "<LatestRestorableTime>[^<]*</LatestRestorableTime>",
            &format!("<LatestRestorableTime>{ended}</LatestRestorableTime>"),
        ),
    );
    listed(2).await;
    // A point in time asked for at `time`: refused, and the refusal, the request gone.
    let refused_at = |name: &'static str, time: Timestamp| {
        let requests = requests.clone();
        let source = &source;
        async move {
            support::apply(
                &source.client,
                &source.ns.name,
                &json!({
                    "apiVersion": "openemr.io/v1alpha1", "kind": "RestoreRequest",
                    "metadata": {"name": name},
                    "spec": {"source": {"pointInTime": {
                        "deploymentRef": {"name": "clinic-a"}, "time": time.to_string()}}},
                }),
            )
            .await
            .unwrap();
            let refused = refusal(&requests, name).await;
            requests.delete(name, &Default::default()).await.unwrap();
            assert_eq!(refused.reason, "PointInTimeOutsideWindow");
            refused.message
        }
    };
    let after = Timestamp::from_second(ended.as_second() + 3600).unwrap();
    let refused = refused_at("too-late", after).await;
    assert!(refused.contains(&ended.to_string()), "{refused}");
    // The window's start, as the automated backups report it (moto says none: the proxy
    // adds it): an instant before it is refused naming it, where the estimate (the end less
    // the retention period) would have taken it.
    let began = Timestamp::from_second(ended.as_second() - 3600).unwrap();
    proxy.set(
        "DescribeDBInstanceAutomatedBackups",
        Rule::default().rewrite(
            "<Status>active</Status>",
            &format!(
                "<Status>active</Status><RestoreWindow><EarliestTime>{began}</EarliestTime><LatestTime>{ended}</LatestTime></RestoreWindow>"
            ),
        ),
    );
    let before = Timestamp::from_second(began.as_second() - 600).unwrap();
    let refused = refused_at("too-early", before).await;
    assert!(
        refused.contains(&format!("window, {began} to {ended}")) && !refused.contains("estimated"),
        "{refused}"
    );
    proxy.clear("DescribeDBInstanceAutomatedBackups");
    proxy.clear("DescribeDBInstances");
    listed(2).await;
    assert_eq!(proxy.exchanges("RestoreDBInstanceToPointInTime").len(), 0);

    let request_uid = source
        .request_from(
            json!({"pointInTime": {
                "deploymentRef": {"name": "clinic-a"}, "latestRestorable": true}}),
            json!({"keepTargetFor": "10m"}),
        )
        .await;
    let staging = staging_identifier(&request_uid);
    let (_, master_password) = source.play_master_password().await;
    source.user_reset().await;
    let status = source.finish().await;
    assert_eq!(status.progress.as_deref(), Some("11/11"), "{status:#?}");
    let data_time = status.data_time.clone().unwrap().0;
    assert!(data_time > ended, "{data_time}");
    let removed = status
        .steps
        .iter()
        .find(|s| s.name == "RemoveStaging")
        .unwrap();
    assert_eq!(removed.phase, StepPhase::Succeeded, "{removed:?}");

    // The point in time, into a staging instance beside the source, at the instant the
    // status says.
    let rds = aws_sdk_rds::Client::new(&env().aws(Some(REGION)).await);
    let source_db = source.source_database().await.identifier;
    let source_now = rds
        .describe_db_instances()
        .db_instance_identifier(&source_db)
        .send()
        .await
        .unwrap();
    let source_now = &source_now.db_instances()[0];
    assert_eq!(source_now.db_instance_status(), Some("available"));
    let pitr = proxy.exchanges("RestoreDBInstanceToPointInTime");
    assert_eq!(pitr.len(), 1);
    let p = &pitr[0];
    assert_eq!(
        p.param("SourceDBInstanceIdentifier").as_deref(),
        Some(source_db.as_str())
    );
    assert_eq!(
        p.param("TargetDBInstanceIdentifier").as_deref(),
        Some(staging.as_str())
    );
    let restored_at: Timestamp = p.param("RestoreTime").unwrap().parse().unwrap();
    assert_eq!(restored_at, data_time);
    assert_eq!(p.param("UseLatestRestorableTime"), None);
    assert_eq!(
        p.param("DBSubnetGroupName").as_deref(),
        source_now
            .db_subnet_group()
            .and_then(|g| g.db_subnet_group_name())
    );
    assert_eq!(p.param("DeletionProtection").as_deref(), Some("false"));
    // Its snapshot, copied under the target's key, is what the target is restored from.
    let snapshots = proxy.exchanges("CreateDBSnapshot");
    assert_eq!(snapshots.len(), 1);
    assert_eq!(
        snapshots[0].param("DBInstanceIdentifier").as_deref(),
        Some(staging.as_str())
    );
    let target_key = source.target_key().await;
    let copies = proxy.exchanges("CopyDBSnapshot");
    assert_eq!(copies.len(), 1);
    let copied = copies[0].param("SourceDBSnapshotIdentifier").unwrap();
    assert!(
        copied.ends_with(&format!(":snapshot:{staging}")),
        "{copied}"
    );
    assert_eq!(
        copies[0].param("KmsKeyId").as_deref(),
        Some(target_key.as_str())
    );
    assert_eq!(proxy.exchanges("RestoreDBInstanceFromDBSnapshot").len(), 1);
    // The staging pieces are gone; nothing else was deleted.
    let deleted: Vec<_> = proxy
        .exchanges("DeleteDBInstance")
        .iter()
        .map(|e| e.param("DBInstanceIdentifier"))
        .collect();
    assert_eq!(deleted, [Some(staging.clone())]);
    let deleted: Vec<_> = proxy
        .exchanges("DeleteDBSnapshot")
        .iter()
        .map(|e| e.param("DBSnapshotIdentifier"))
        .collect();
    assert_eq!(deleted, [Some(staging.clone())]);
    assert!(
        rds.describe_db_instances()
            .db_instance_identifier(&staging)
            .send()
            .await
            .is_err()
    );

    // OpenEMR's user opens the restored database with the target's own Secret.
    let target_password = source.target_password().await;
    let endpoint = status.restored_endpoint.clone().unwrap();
    assert!(opens(db, &endpoint, "openemr", &target_password).await);
    let written = serde_json::to_string(&status).unwrap();
    assert!(!written.contains(&master_password) && !written.contains(&target_password));

    // Kept for spec.keepTargetFor, then removed with everything it made and the restore's
    // snapshot copy, the source untouched: on a clock that runs two minutes a second.
    let target_removed = || async {
        let status = requests.get("restore-a").await.ok()?.status?;
        status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "TargetRemoved")
    };
    let kept = eventually(WAIT, "TargetRemoved", || async { target_removed().await }).await;
    assert_eq!(kept.reason, "Kept", "{}", kept.message);
    drop(operator.kill());
    let clock = support::clock::TestClock::starting(&Timestamp::now().to_string(), 120.0);
    let args: Vec<&str> = source.args.iter().map(String::as_str).collect();
    let mut vars: Vec<(&str, &str)> = source
        .vars
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    vars.extend(clock.vars());
    let _fast = Operator::start_with_env(env(), Some(&source.ns.name), &args, &vars);
    let clinics: Api<OpenEMRDeployment> = source.api();
    eventually(Duration::from_secs(240), "copy-a removed", || async {
        clinics
            .get_opt("copy-a")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let removed = eventually(WAIT, "TargetRemoved", || async {
        target_removed().await.filter(|c| c.status == "True")
    })
    .await;
    assert_eq!(removed.reason, "Removed");
    let copy = openemr_operator::controller::restore::steps::copy_identifier(
        &status.restored_db_instance.clone().unwrap(),
        &request_uid,
    );
    let snapshot_left = rds
        .describe_db_snapshots()
        .db_snapshot_identifier(&copy)
        .send()
        .await
        .is_ok_and(|o| !o.db_snapshots().is_empty());
    assert!(!snapshot_left, "the restore's copy {copy} is gone");
    assert!(
        instance_gone(&rds, status.restored_db_instance.as_deref().unwrap()).await,
        "the restored instance went with its clinic"
    );
    let source_after = rds
        .describe_db_instances()
        .db_instance_identifier(&source_db)
        .send()
        .await
        .unwrap();
    assert_eq!(
        source_after.db_instances()[0].db_instance_status(),
        Some("available")
    );
    assert!(clinics.get_opt("clinic-a").await.unwrap().is_some());
    std::fs::remove_dir_all(&source.scratch).ok();
}
