//! The documents Jobs of a set: the operator's own image running the documents engine.
//!
//! - **Backup**: `documents backup` over the clinic's EFS volume, mounted read-only at
//!   `/sites`, into the clinic's bucket. It runs as root with one capability,
//!   `DAC_READ_SEARCH` (read any file, whatever its mode): OpenEMR's image keeps `sites/`
//!   owned by its web server's user, some of it mode 0600 (`sqlconf.php`), and a backup
//!   that cannot read a file would leave it out. It can write nothing there (the mount is
//!   read-only).
//! - **Prune**: `documents prune --keep-others` of a set that goes: the versions only it
//!   references, then its documents manifest. No volume, no capability, not root.
//!
//! - **Copy**: `documents copy` of a completed set into the disaster-recovery region's
//!   bucket, with that region's key. No volume, no capability, not root.
//!
//! - **Restore** (a restore's, not a set's): `documents restore --owners` of a set into a
//!   restore's target clinic's EFS volume, mounted read-write at `/sites`, then its
//!   `sqlconf.php` pointed at the target's database (`--site-host`, the password from the
//!   target's Secret through `secretKeyRef`). Root with `CHOWN`, `FOWNER` and
//!   `DAC_OVERRIDE`: OpenEMR's files belong to its web server's user and keep their owners
//!   and modes. It belongs to its RestoreRequest.
//!
//! The others write nothing but `/tmp`, an `emptyDir` for the manifests (a million files make a
//! manifest of about 100 MB). Their credentials are the service account's (IRSA or EKS Pod
//! Identity); their summary is their termination message. A NetworkPolicy lets their pods
//! reach DNS and HTTPS only, and nothing reach them. All belong to the set: deleting the
//! record deletes them, not the data.

use serde_json::{Value, json};

use crate::controller::deployment::web::{CLINIC_LABEL, COMPONENT_LABEL};

/// The label naming the set a Job works for: a change of the Job wakes that set.
pub const SET_LABEL: &str = "openemr.io/backup";
/// The label naming the RestoreRequest a restore Job works for.
pub const RESTORE_LABEL: &str = "openemr.io/restore";
/// Where the volume is mounted.
pub const SITES: &str = "/sites";

/// What a documents Job does.
#[derive(Debug, Clone, Copy)]
pub enum Task<'a> {
    /// Copies the clinic's volume (its claim) into the set's documents manifest, sending only
    /// what changed since `previous`.
    Backup {
        claim: &'a str,
        manifest: &'a str,
        previous: Option<&'a str>,
    },
    /// Drops the set's documents manifest and the versions no other set references.
    Prune { manifest: &'a str },
    /// Copies the set's documents into another region's bucket, server-side; what the
    /// previous copy there holds is not copied again.
    Copy {
        manifest: &'a str,
        to_region: &'a str,
        to_bucket: &'a str,
        to_kms_key: &'a str,
        previous: Option<&'a str>,
    },
    /// Restores a set's documents into a restore target's volume (its claim), then points
    /// its site at the target's database. The Job's `set` and `set_uid` name the
    /// RestoreRequest.
    Restore {
        claim: &'a str,
        manifest: &'a str,
        site: SiteDatabase<'a>,
        /// In place: restored beside the live site, then exchanged for it, the live entries
        /// kept under this token ([`crate::documents::swap`]).
        swap_token: Option<&'a str>,
        /// With a token: only restore beside the live site (while the clinic still serves);
        /// a later Job without it finds the restored tree complete and only exchanges.
        stage_only: bool,
    },
    /// An in-place restore's kept entries on the clinic's volume (its claim): put back
    /// (`undo`, a rollback), or deleted once `keepPreviousFor` has passed.
    SiteDirs {
        claim: &'a str,
        swap_token: &'a str,
        undo: bool,
    },
}

/// The database a restored site is pointed at.
#[derive(Debug, Clone, Copy)]
pub struct SiteDatabase<'a> {
    pub host: &'a str,
    pub port: u16,
    pub login: &'a str,
    pub database: &'a str,
    /// The Secret holding the password (key `password`).
    pub password_secret: &'a str,
}

/// What the Job is made from.
#[derive(Debug, Clone)]
pub struct DocumentsJob<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub set: &'a str,
    pub set_uid: &'a str,
    pub clinic: &'a str,
    pub task: Task<'a>,
    pub image: &'a str,
    pub service_account: &'a str,
    pub region: &'a str,
    pub bucket: &'a str,
    pub kms_key: Option<&'a str>,
    /// Pods tried before the Job fails.
    pub backoff_limit: i32,
    /// The Job's whole time, retries included.
    pub deadline_seconds: i64,
}

impl DocumentsJob<'_> {
    /// The command, as the container runs it.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<&str> = match self.task {
            Task::Backup {
                manifest, previous, ..
            } => {
                let mut args = vec![
                    "documents",
                    "backup",
                    "--dir",
                    SITES,
                    "--manifest",
                    manifest,
                ];
                if let Some(previous) = previous {
                    args.extend(["--previous", previous]);
                }
                args
            }
            Task::Restore {
                manifest,
                swap_token,
                stage_only,
                ..
            } => {
                let mut args = vec![
                    "documents",
                    "restore",
                    "--manifest",
                    manifest,
                    "--into",
                    SITES,
                    "--owners",
                ];
                match swap_token {
                    // Beside the live site, which is replaced only once the set is complete.
                    Some(token) => {
                        args.extend(["--swap-token", token]);
                        if stage_only {
                            args.push("--stage-only");
                        }
                    }
                    // A retried pod finds the first one's files: they are replaced.
                    None => args.push("--overwrite"),
                }
                args
            }
            Task::Prune { manifest } => {
                vec!["documents", "prune", "--drop", manifest, "--keep-others"]
            }
            Task::SiteDirs {
                swap_token, undo, ..
            } => vec![
                "documents",
                "site-dirs",
                "--into",
                SITES,
                "--swap-token",
                swap_token,
                if undo { "--undo" } else { "--discard" },
            ],
            Task::Copy {
                manifest,
                to_region,
                to_bucket,
                to_kms_key,
                previous,
            } => {
                let mut args = vec![
                    "documents",
                    "copy",
                    "--manifest",
                    manifest,
                    "--to-region",
                    to_region,
                    "--to-bucket",
                    to_bucket,
                    "--to-kms-key",
                    to_kms_key,
                ];
                if let Some(previous) = previous {
                    args.extend(["--previous", previous]);
                }
                args
            }
        };
        let port;
        if let Task::Restore { site, .. } = self.task {
            port = site.port.to_string();
            args.extend([
                "--site-host",
                site.host,
                "--site-port",
                &port,
                "--site-login",
                site.login,
                "--site-database",
                site.database,
            ]);
        }
        args.extend([
            "--work-dir",
            "/tmp",
            "--summary-file",
            "/dev/termination-log",
        ]);
        args.into_iter().map(str::to_string).collect()
    }

    /// What the container may do, and what it mounts.
    fn access(&self) -> (Value, Vec<Value>, Vec<Value>) {
        let tmp_mount = json!({"name": "tmp", "mountPath": "/tmp"});
        let tmp = json!({"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}});
        match self.task {
            Task::Backup { claim, .. } => (
                json!({
                    "runAsUser": 0,
                    "runAsNonRoot": false,
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"], "add": ["DAC_READ_SEARCH"]},
                }),
                vec![
                    json!({"name": "sites", "mountPath": SITES, "readOnly": true}),
                    tmp_mount,
                ],
                vec![
                    json!({"name": "sites", "persistentVolumeClaim": {"claimName": claim, "readOnly": true}}),
                    tmp,
                ],
            ),
            Task::Restore { claim, .. } | Task::SiteDirs { claim, .. } => (
                json!({
                    "runAsUser": 0,
                    "runAsNonRoot": false,
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "FOWNER", "DAC_OVERRIDE"]},
                }),
                vec![json!({"name": "sites", "mountPath": SITES}), tmp_mount],
                vec![
                    json!({"name": "sites", "persistentVolumeClaim": {"claimName": claim}}),
                    tmp,
                ],
            ),
            // They read nothing of the clinic's files: the image's own non-root user.
            Task::Prune { .. } | Task::Copy { .. } => (
                json!({
                    "runAsUser": 65532,
                    "runAsGroup": 65532,
                    "runAsNonRoot": true,
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                }),
                vec![tmp_mount],
                vec![tmp],
            ),
        }
    }

    /// The pods' network: no way in; out only to DNS and HTTPS (S3, KMS, STS).
    pub fn network_policy(&self) -> Value {
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": self.labels(),
                "ownerReferences": self.owner(),
            },
            "spec": {
                "podSelector": {"matchLabels": {
                    COMPONENT_LABEL: self.kind_labels().0,
                    self.kind_labels().1: self.set,
                }},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [],
                "egress": [
                    {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
                    {"ports": [{"protocol": "TCP", "port": 443}]},
                ],
            },
        })
    }

    /// The component label and the label naming the owner: a set's, or a restore's.
    fn kind_labels(&self) -> (&'static str, &'static str) {
        match self.task {
            Task::Restore { .. } | Task::SiteDirs { .. } => ("restore", RESTORE_LABEL),
            _ => ("backup", SET_LABEL),
        }
    }

    fn labels(&self) -> Value {
        let (component, owner_label) = self.kind_labels();
        json!({
            "app.kubernetes.io/name": "openemr",
            "app.kubernetes.io/instance": self.clinic,
            COMPONENT_LABEL: component,
            "app.kubernetes.io/managed-by": "openemr-operator",
            CLINIC_LABEL: self.clinic,
            owner_label: self.set,
        })
    }

    /// The set (or restore) owns what is made for it: deleting the record deletes these,
    /// not the data.
    fn owner(&self) -> Value {
        let kind = match self.task {
            Task::Restore { .. } | Task::SiteDirs { .. } => "RestoreRequest",
            _ => "OpenEMRBackup",
        };
        json!([{
            "apiVersion": "openemr.io/v1alpha1",
            "kind": kind,
            "name": self.set,
            "uid": self.set_uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }])
    }

    pub fn render(&self) -> Value {
        let labels = self.labels();
        let mut env = vec![
            json!({"name": "AWS_REGION", "value": self.region}),
            json!({"name": "DOCUMENTS_BUCKET", "value": self.bucket}),
            json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        ];
        if let Some(key) = self.kms_key {
            env.push(json!({"name": "DOCUMENTS_KMS_KEY", "value": key}));
        }
        if let Task::Restore { site, .. } = self.task {
            env.push(
                json!({"name": "OPENEMR_DATABASE_PASSWORD", "valueFrom": {"secretKeyRef": {
                    "name": site.password_secret, "key": "password",
                }}}),
            );
        }
        let (security, mounts, volumes) = self.access();
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": labels,
                "ownerReferences": self.owner(),
            },
            "spec": {
                "backoffLimit": self.backoff_limit,
                "activeDeadlineSeconds": self.deadline_seconds,
                // Exit 2: done, with unreadable files named and the manifest written; a
                // retry could only fail on that manifest. The set fails naming the files.
                "podFailurePolicy": {"rules": [{
                    "action": "FailJob",
                    "onExitCodes": {"containerName": "documents", "operator": "In", "values": [2]},
                }]},
                // A pod's replacement starts only once it has stopped: never two at once.
                "podReplacementPolicy": "Failed",
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": self.service_account,
                        "automountServiceAccountToken": false,
                        "enableServiceLinks": false,
                        "restartPolicy": "Never",
                        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [{
                            "name": "documents",
                            "image": self.image,
                            "imagePullPolicy": "IfNotPresent",
                            "args": self.args(),
                            "env": env,
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "256Mi"},
                                "limits": {"cpu": "2", "memory": "1Gi"},
                            },
                            "securityContext": security,
                            "volumeMounts": mounts,
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                        }],
                        "volumes": volumes,
                    },
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(previous: Option<&str>) -> DocumentsJob<'_> {
        DocumentsJob {
            name: "set-1-documents",
            namespace: "clinics",
            set: "set-1",
            set_uid: "uid-1",
            clinic: "clinic-a",
            task: Task::Backup {
                claim: "clinic-a-sites",
                manifest: "backups/documents/set-1.jsonl.gz",
                previous,
            },
            image: "registry.example.org/openemr-operator:0.1.0",
            service_account: "openemr-documents",
            region: "us-east-1",
            bucket: "oe-bucket",
            kms_key: Some("arn:aws:kms:us-east-1:123456789012:key/k"),
            backoff_limit: 2,
            deadline_seconds: 21600,
        }
    }

    #[test]
    fn the_job_reads_the_volume_read_only_and_writes_only_tmp() {
        let body = job(None).render();
        let pod = &body["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(container["volumeMounts"][0]["readOnly"], true);
        assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["readOnly"], true);
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            container["securityContext"]["capabilities"]["add"],
            json!(["DAC_READ_SEARCH"])
        );
        assert_eq!(
            body["metadata"]["ownerReferences"][0]["kind"],
            "OpenEMRBackup"
        );
        assert_eq!(body["metadata"]["labels"][SET_LABEL], "set-1");
        assert_eq!(pod["restartPolicy"], "Never");
    }

    #[test]
    fn the_jobs_pods_reach_dns_and_https_only() {
        let policy = job(None).network_policy();
        let selector = &policy["spec"]["podSelector"]["matchLabels"];
        let pod_labels = &job(None).render()["spec"]["template"]["metadata"]["labels"];
        for (k, v) in selector.as_object().unwrap() {
            assert_eq!(&pod_labels[k], v, "{k}");
        }
        assert_eq!(policy["spec"]["ingress"], json!([]));
        let ports: Vec<i64> = policy["spec"]["egress"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|rule| rule["ports"].as_array().unwrap().iter())
            .map(|p| p["port"].as_i64().unwrap())
            .collect();
        assert_eq!(ports, [53, 53, 443]);
    }

    #[test]
    fn the_prune_job_mounts_nothing_of_the_clinic_and_runs_as_no_one() {
        let mut prune = job(None);
        prune.name = "set-1-prune";
        prune.task = Task::Prune {
            manifest: "backups/documents/set-1.jsonl.gz",
        };
        assert_eq!(
            prune.args()[..5],
            [
                "documents",
                "prune",
                "--drop",
                "backups/documents/set-1.jsonl.gz",
                "--keep-others"
            ]
        );
        let body = prune.render();
        let pod = &body["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(
            pod["volumes"],
            json!([{"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}}])
        );
        assert_eq!(container["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            container["securityContext"]["capabilities"],
            json!({"drop": ["ALL"]})
        );
    }

    #[test]
    fn the_previous_set_is_named_only_when_there_is_one() {
        assert!(!job(None).args().contains(&"--previous".to_string()));
        let args = job(Some("backups/documents/set-0.jsonl.gz")).args();
        let at = args.iter().position(|a| a == "--previous").unwrap();
        assert_eq!(args[at + 1], "backups/documents/set-0.jsonl.gz");
        assert_eq!(&args[..2], ["documents", "backup"]);
    }
}
