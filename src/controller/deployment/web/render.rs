//! The clinic's web tier as Kubernetes objects: a pure renderer from the spec and what the
//! infrastructure provides to the JSON the operator applies with server-side apply.
//!
//! What the official image needs, and where it gets it here:
//! - database and Redis settings from the Secret `<clinic>-openemr` (`envFrom`); every
//!   password from its own Secret by `secretKeyRef`, never as a literal;
//! - `sites/` on the clinic's EFS file system (a PersistentVolume of the EFS CSI driver,
//!   mounted with TLS, reclaim `Retain`, pre-bound to the claim `<clinic>-sites`);
//! - the CA bundles (RDS, ElastiCache) from the ConfigMap `<clinic>-ca`, at the paths the
//!   entrypoint looks at; an init container replaces the copy the entrypoint made under
//!   `sites/` when the bundle changes, since the entrypoint only copies a missing one;
//! - `K8S=admin` in the setup Job (configures the site and exits), `K8S=worker` in the
//!   Deployment (never configures), so no replica waits on a leader lock.
//!
//! `OPENEMR_SETTING_*` is never set: the image applies it over a connection without TLS,
//! which a database with `require_secure_transport=1` refuses (silently, to the image).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::scripts::{EXIT_REFUSED, EXIT_UNUSABLE, SETUP_SCRIPT, SetupMode, WORKER_SCRIPT};
use super::{
    ATTEMPT_ANNOTATION, CA_DIGEST_ANNOTATION, CLINIC_LABEL, COMPONENT_LABEL, Child, ChildKind,
    IMAGE_ANNOTATION, REDIS_AUTH_DIGEST_ANNOTATION, SETUP_MODE_ANNOTATION, WebNames,
};
use crate::api::deployment::{ResourceAmounts, ServiceType, WebSpec};
use crate::controller::deployment::clinic::short_hash;
use crate::controller::deployment::secrets::SecretKey;

/// Where OpenEMR lives in the image.
pub const OPENEMR_ROOT: &str = "/var/www/localhost/htdocs/openemr";
/// Where the entrypoint looks for the MySQL CA.
pub const MYSQL_CA_DIR: &str = "/root/certs/mysql/server";
/// Where the entrypoint looks for the Redis CA.
pub const REDIS_CA_DIR: &str = "/root/certs/redis";
/// The page a ready replica serves.
pub const LOGIN_PATH: &str = "/interface/login/login.php";
/// The IngressClass of the AWS Load Balancer Controller, and its annotations' prefix.
const ALB_CLASS: &str = "alb";
const ALB_PREFIX: &str = "alb.ingress.kubernetes.io/";
/// Capacity written on the volume and claim; EFS is elastic, Kubernetes needs a number.
const SITES_CAPACITY: &str = "5Gi";

/// Everything the renderer needs: the spec, where the infrastructure is, the CA bundles.
#[derive(Debug, Clone, PartialEq)]
pub struct WebInputs<'a> {
    pub namespace: &'a str,
    pub uid: &'a str,
    pub names: &'a WebNames,
    pub web: &'a WebSpec,
    pub database_host: &'a str,
    pub database_port: i32,
    pub database_name: &'a str,
    pub database_user: &'a str,
    /// OpenEMR's own database password.
    pub database_password: SecretKey,
    pub redis_host: &'a str,
    /// The Redis AUTH token's copy, and a digest of where it came from (a new one rolls
    /// the workers). `None` for a cache without AUTH (a stack made before it).
    pub redis_password: Option<(SecretKey, String)>,
    pub file_system_id: &'a str,
    pub mysql_ca: &'a str,
    pub redis_ca: &'a str,
    /// How many Job pods may fail before the Job counts as failed.
    pub setup_backoff_limit: i32,
    /// How long one setup Job may run (the entrypoint retries forever when the database
    /// is unreachable).
    pub setup_deadline_seconds: i64,
}

impl WebInputs<'_> {
    fn labels(&self, component: &str) -> Value {
        json!({
            "app.kubernetes.io/name": "openemr",
            "app.kubernetes.io/instance": self.names.clinic,
            COMPONENT_LABEL: component,
            "app.kubernetes.io/managed-by": "openemr-operator",
            CLINIC_LABEL: self.names.clinic,
        })
    }

    fn metadata(&self, name: &str, component: &str) -> Value {
        json!({
            "name": name,
            "namespace": self.namespace,
            "labels": self.labels(component),
            "ownerReferences": [{
                "apiVersion": "openemr.io/v1alpha1",
                "kind": "OpenEMRDeployment",
                "name": self.names.clinic,
                "uid": self.uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        })
    }

    fn worker_selector(&self) -> Value {
        json!({
            "app.kubernetes.io/instance": self.names.clinic,
            COMPONENT_LABEL: "web",
        })
    }

    /// Digest of the CA bundles (their rotation rolls the workers).
    pub fn ca_digest(&self) -> String {
        short_hash(&[self.mysql_ca, self.redis_ca])
    }

    /// The non-secret settings the image reads, as a Secret (host names stay out of Pod
    /// specs and logs). No password is in it.
    pub fn settings_secret(&self) -> Child {
        let settings = BTreeMap::from([
            ("MYSQL_HOST", self.database_host.to_string()),
            ("MYSQL_PORT", self.database_port.to_string()),
            ("MYSQL_DATABASE", self.database_name.to_string()),
            ("MYSQL_USER", self.database_user.to_string()),
            // TLS to the database, verified against the mounted CA.
            ("FORCE_DATABASE_SSL_CONNECT", "1".to_string()),
            // The image appends :6379 itself, so the host goes alone (ElastiCache's port).
            ("REDIS_SERVER", self.redis_host.to_string()),
            ("REDIS_TLS", "yes".to_string()),
        ]);
        Child {
            kind: ChildKind::Secret,
            name: self.names.settings_secret.clone(),
            body: json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": self.metadata(&self.names.settings_secret, "web"),
                "type": "Opaque",
                // `data`, as the API server stores it, so the plan can compare it.
                "data": settings
                    .into_iter()
                    .map(|(k, v)| (k, base64(v.as_bytes())))
                    .collect::<BTreeMap<_, _>>(),
            }),
        }
    }

    pub fn ca_config_map(&self) -> Child {
        Child {
            kind: ChildKind::ConfigMap,
            name: self.names.ca.clone(),
            body: json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": self.metadata(&self.names.ca, "web"),
                "data": {"mysql-ca": self.mysql_ca, "redis-ca": self.redis_ca},
            }),
        }
    }

    /// The EFS volume. Cluster-scoped, so it has no owner: a clinic's cleanup removes it
    /// (the file system itself follows `deletionPolicy`).
    pub fn volume(&self) -> Child {
        let mut metadata = self.metadata(&self.names.volume, "web");
        if let Some(m) = metadata.as_object_mut() {
            m.remove("ownerReferences");
            m.remove("namespace");
        }
        metadata["labels"]["openemr.io/namespace"] = json!(self.namespace);
        Child {
            kind: ChildKind::PersistentVolume,
            name: self.names.volume.clone(),
            body: json!({
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": metadata,
                "spec": {
                    "capacity": {"storage": SITES_CAPACITY},
                    "accessModes": ["ReadWriteMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "volumeMode": "Filesystem",
                    // Encrypted in transit (the EFS mount helper's stunnel).
                    "mountOptions": ["tls"],
                    "csi": {"driver": "efs.csi.aws.com", "volumeHandle": self.file_system_id},
                    "claimRef": {"namespace": self.namespace, "name": self.names.claim},
                },
            }),
        }
    }

    pub fn claim(&self) -> Child {
        Child {
            kind: ChildKind::PersistentVolumeClaim,
            name: self.names.claim.clone(),
            body: json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": self.metadata(&self.names.claim, "web"),
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "volumeName": self.names.volume,
                    "resources": {"requests": {"storage": SITES_CAPACITY}},
                },
            }),
        }
    }

    pub fn service(&self) -> Child {
        let type_ = match self.web.service.type_ {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::NodePort => "NodePort",
        };
        let mut metadata = self.metadata(&self.names.workers, "web");
        if !self.web.service.annotations.is_empty() {
            metadata["annotations"] = json!(self.web.service.annotations);
        }
        Child {
            kind: ChildKind::Service,
            name: self.names.workers.clone(),
            body: json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": metadata,
                "spec": {
                    "type": type_,
                    "selector": self.worker_selector(),
                    "ports": [{
                        "name": "http",
                        "port": self.web.service.port,
                        "targetPort": "http",
                        "protocol": "TCP",
                    }],
                },
            }),
        }
    }

    /// The children every clinic with infrastructure has, setup or not: settings, CA,
    /// volume and claim, Service, NetworkPolicy, the Ingress when declared and the
    /// disruption budget from two replicas.
    pub fn standing_children(&self) -> Vec<Child> {
        let mut children = vec![
            self.settings_secret(),
            self.ca_config_map(),
            self.volume(),
            self.claim(),
            self.service(),
            self.network_policy(),
        ];
        children.extend(self.ingress());
        if self.web.replicas >= 2 {
            children.push(self.disruption_budget());
        }
        children
    }

    /// The Ingress, when the spec declares one.
    pub fn ingress(&self) -> Option<Child> {
        let ingress = self.web.ingress.as_ref()?;
        let mut spec = json!({
            "rules": [{
                "host": ingress.host,
                "http": {"paths": [{
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {
                        "name": self.names.workers,
                        "port": {"name": "http"},
                    }},
                }]},
            }],
        });
        if let Some(class) = &ingress.class_name {
            spec["ingressClassName"] = json!(class);
        }
        if let Some(tls) = &ingress.tls_secret_name {
            spec["tls"] = json!([{"hosts": [ingress.host], "secretName": tls}]);
        }
        let mut annotations = BTreeMap::new();
        if ingress.class_name.as_deref() == Some(ALB_CLASS) {
            // The AWS Load Balancer Controller's defaults do not fit: `instance` targets
            // need a NodePort Service, and its health check on `/` gets OpenEMR's redirect,
            // which it counts as unhealthy.
            annotations.insert(format!("{ALB_PREFIX}target-type"), "ip".to_string());
            annotations.insert(format!("{ALB_PREFIX}healthcheck-path"), LOGIN_PATH.into());
        }
        annotations.extend(ingress.annotations.clone());
        let mut metadata = self.metadata(&self.names.workers, "web");
        if !annotations.is_empty() {
            metadata["annotations"] = json!(annotations);
        }
        Some(Child {
            kind: ChildKind::Ingress,
            name: self.names.workers.clone(),
            body: json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "Ingress",
                "metadata": metadata,
                "spec": spec,
            }),
        })
    }

    /// Only HTTP reaches the clinic's pods (the setup Job's listen on nothing); their own
    /// connections (RDS, ElastiCache, EFS, DNS) are not restricted here, since where those
    /// are depends on the cluster's network.
    pub fn network_policy(&self) -> Child {
        Child {
            kind: ChildKind::NetworkPolicy,
            name: self.names.workers.clone(),
            body: json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": self.metadata(&self.names.workers, "web"),
                "spec": {
                    "podSelector": {"matchLabels": {
                        "app.kubernetes.io/instance": self.names.clinic,
                        "app.kubernetes.io/managed-by": "openemr-operator",
                    }},
                    "policyTypes": ["Ingress"],
                    "ingress": [{"ports": [{"protocol": "TCP", "port": 80}]}],
                },
            }),
        }
    }

    /// At most one replica down by choice (drains, the rolling update never goes below).
    pub fn disruption_budget(&self) -> Child {
        Child {
            kind: ChildKind::PodDisruptionBudget,
            name: self.names.workers.clone(),
            body: json!({
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": self.metadata(&self.names.workers, "web"),
                "spec": {
                    "maxUnavailable": 1,
                    "selector": {"matchLabels": self.worker_selector()},
                },
            }),
        }
    }

    fn resources(&self) -> Value {
        let any = |a: &Option<ResourceAmounts>| {
            a.as_ref().is_some_and(|a| *a != ResourceAmounts::default())
        };
        let given = self
            .web
            .resources
            .as_ref()
            .filter(|r| any(&r.requests) || any(&r.limits));
        match given {
            Some(r) => serde_json::to_value(r).unwrap_or_else(|_| default_resources()),
            None => default_resources(),
        }
    }

    fn volumes(&self) -> Value {
        json!([
            {"name": "sites", "persistentVolumeClaim": {"claimName": self.names.claim}},
            {"name": "mysql-ca", "configMap": {
                "name": self.names.ca,
                "items": [{"key": "mysql-ca", "path": "mysql-ca"}],
            }},
            {"name": "redis-ca", "configMap": {
                "name": self.names.ca,
                "items": [{"key": "redis-ca", "path": "redis-ca"}],
            }},
        ])
    }

    fn mounts(&self) -> Value {
        json!([
            {"name": "sites", "mountPath": format!("{OPENEMR_ROOT}/sites")},
            {"name": "mysql-ca", "mountPath": MYSQL_CA_DIR, "readOnly": true},
            {"name": "redis-ca", "mountPath": REDIS_CA_DIR, "readOnly": true},
        ])
    }

    /// The container shape every OpenEMR container here shares.
    fn container(&self, name: &str, env: Value) -> Value {
        json!({
            "name": name,
            "image": self.web.image,
            "imagePullPolicy": "Always",
            "envFrom": [{"secretRef": {"name": self.names.settings_secret}}],
            "env": env,
            "resources": self.resources(),
            "securityContext": container_security(),
            "volumeMounts": self.mounts(),
            "terminationMessagePolicy": "FallbackToLogsOnError",
        })
    }

    /// Replaces the entrypoint's copy of a CA bundle under `sites/` when the mounted one
    /// differs (the entrypoint copies only a missing one, so rotation needs this).
    fn ca_refresh(&self) -> Value {
        let script = format!(
            "set -eu\n\
             dir={OPENEMR_ROOT}/sites/default/documents/certificates\n\
             [ -d \"$dir\" ] || exit 0\n\
             for src in {MYSQL_CA_DIR}/mysql-ca {REDIS_CA_DIR}/redis-ca; do\n\
             \x20 dst=\"$dir/$(basename \"$src\")\"\n\
             \x20 if ! cmp -s \"$src\" \"$dst\"; then\n\
             \x20   cp \"$src\" \"$dst.new\" && chmod 744 \"$dst.new\" && mv \"$dst.new\" \"$dst\"\n\
             \x20   echo \"refreshed $dst\"\n\
             \x20 fi\n\
             done\n"
        );
        self.init_container("ca-refresh", &script, self.mounts())
    }

    /// A short shell step in the same image, with no settings and little CPU and memory.
    fn init_container(&self, name: &str, script: &str, mounts: Value) -> Value {
        json!({
            "name": name,
            "image": self.web.image,
            "imagePullPolicy": "Always",
            "command": ["sh", "-c", script],
            "resources": small_resources(),
            "securityContext": container_security(),
            "volumeMounts": mounts,
            "terminationMessagePolicy": "FallbackToLogsOnError",
        })
    }

    fn pod_spec(&self, init: Vec<Value>, main: Value, restart: &str) -> Value {
        json!({
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "restartPolicy": restart,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": init,
            "containers": [main],
            "volumes": self.volumes(),
        })
    }

    fn database_password_env(&self) -> Value {
        secret_env("MYSQL_PASS", &self.database_password)
    }

    /// The setup Job: `K8S=admin` runs under [`SETUP_SCRIPT`], which guards the image's
    /// entrypoint as `mode` allows and ends by proving the site is configured.
    pub fn setup_job(&self, name: &str, attempt: u32, mode: &SetupMode) -> Child {
        let mut env = vec![
            json!({"name": "K8S", "value": "admin"}),
            json!({"name": "OPENEMR_SETUP_MODE", "value": mode.word()}),
            self.database_password_env(),
        ];
        if let SetupMode::Install(s) = mode {
            env.push(json!({"name": "OPENEMR_MASTER_USER", "value": s.master_username}));
            env.push(secret_env("OPENEMR_MASTER_PASS", &s.master_password));
            env.push(secret_env("OE_USER", &s.admin_username));
            env.push(secret_env("OE_PASS", &s.admin_password));
        }
        let mut main = self.container("setup", json!(env));
        main["command"] = json!(["sh", "-c", SETUP_SCRIPT]);
        main["ports"] = json!([]);
        // An empty file system gets the image's own `sites/` first; nothing on it is ever
        // overwritten or removed. A database the clinic did not create empty needs the
        // site it was made with, never a fresh one.
        let mut init = Vec::new();
        if !matches!(mode, SetupMode::Attach) {
            let seed = format!(
                "set -eu\n\
                 if [ -d /seed/default ]; then echo 'sites/ already holds a site'; exit 0; fi\n\
                 cp -a {OPENEMR_ROOT}/sites/. /seed/\n\
                 echo 'seeded sites/ from the image'\n"
            );
            init.push(self.init_container(
                "seed-sites",
                &seed,
                json!([{"name": "sites", "mountPath": "/seed"}]),
            ));
        }
        init.push(self.ca_refresh());
        let mut metadata = self.metadata(name, "setup");
        metadata["annotations"] = json!({
            IMAGE_ANNOTATION: self.web.image,
            ATTEMPT_ANNOTATION: attempt.to_string(),
            SETUP_MODE_ANNOTATION: mode.word(),
        });
        let mut template_labels = self.labels("setup");
        template_labels["openemr.io/job"] = json!(name);
        Child {
            kind: ChildKind::Job,
            name: name.to_string(),
            body: json!({
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": metadata,
                "spec": {
                    "backoffLimit": self.setup_backoff_limit,
                    "activeDeadlineSeconds": self.setup_deadline_seconds,
                    // A refusal or a site found unusable ends the Job at once: another pod
                    // would find the same; the operator's next attempt comes after its
                    // delay. A pod evicted or preempted does not count as a failure.
                    "podFailurePolicy": {"rules": [
                        {"action": "FailJob", "onExitCodes": {
                            "containerName": "setup",
                            "operator": "In",
                            "values": [EXIT_REFUSED, EXIT_UNUSABLE],
                        }},
                        {"action": "Ignore", "onPodConditions": [
                            {"type": "DisruptionTarget", "status": "True"},
                        ]},
                    ]},
                    "template": {
                        "metadata": {"labels": template_labels},
                        "spec": self.pod_spec(init, main, "Never"),
                    },
                },
            }),
        }
    }

    /// The workers: `K8S=worker`, `replicas` of them (0 while held or stopped).
    pub fn workers(&self, replicas: i32) -> Child {
        let mut env = vec![
            json!({"name": "K8S", "value": "worker"}),
            self.database_password_env(),
        ];
        let mut template_annotations = json!({CA_DIGEST_ANNOTATION: self.ca_digest()});
        if let Some((token, source)) = &self.redis_password {
            // The image puts it in PHP's session path (`auth[pass]=`); it is letters and
            // digits only, so nothing in it needs quoting there.
            env.push(secret_env("REDIS_PASSWORD", token));
            template_annotations[REDIS_AUTH_DIGEST_ANNOTATION] = json!(source);
        }
        let mut main = self.container("openemr", json!(env));
        main["command"] = json!(["sh", "-c", WORKER_SCRIPT]);
        // The root httpd parent signals its children (uid 1000) to stop gracefully.
        if let Some(caps) = main["securityContext"]["capabilities"]["add"].as_array_mut() {
            caps.push(json!("KILL"));
        }
        main["ports"] = json!([{"name": "http", "containerPort": 80, "protocol": "TCP"}]);
        let login = json!({"path": LOGIN_PATH, "port": "http"});
        // No traffic before the login page answers; the startup probe gives a slow first
        // start (opcache, certificates) ten minutes before liveness may restart it.
        main["readinessProbe"] = json!({
            "httpGet": login, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3,
        });
        main["startupProbe"] = json!({
            "httpGet": login, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 60,
        });
        main["livenessProbe"] = json!({
            "httpGet": login, "periodSeconds": 20, "timeoutSeconds": 10, "failureThreshold": 3,
        });
        // A replica being removed keeps serving while Services and load balancers stop
        // sending to it, so rollouts and scale-downs cut no request. The kubelet's own
        // sleep: the image needs no `sleep` binary for it.
        main["lifecycle"] = json!({"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}});
        let mut pod = self.pod_spec(vec![self.ca_refresh()], main, "Always");
        pod["terminationGracePeriodSeconds"] = json!(PRE_STOP_SECONDS + 30);
        // Replicas spread over zones, then nodes, so one outage takes only some; a
        // preference, so a one-zone or one-node cluster still runs them all.
        pod["topologySpreadConstraints"] = json!(
            ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
                .iter()
                .map(|key| json!({
                    "maxSkew": 1,
                    "topologyKey": key,
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": self.worker_selector()},
                }))
                .collect::<Vec<_>>()
        );
        let mut template_labels = self.labels("web");
        template_labels["app.kubernetes.io/version"] =
            json!(label_safe(image_tag(&self.web.image)));
        Child {
            kind: ChildKind::Deployment,
            name: self.names.workers.clone(),
            body: json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": self.metadata(&self.names.workers, "web"),
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": self.worker_selector()},
                    // A new replica is ready before an old one goes.
                    "strategy": {"type": "RollingUpdate", "rollingUpdate": {
                        "maxUnavailable": 0, "maxSurge": 1,
                    }},
                    "revisionHistoryLimit": 5,
                    "template": {
                        "metadata": {
                            "labels": template_labels,
                            "annotations": template_annotations,
                        },
                        "spec": pod,
                    },
                },
            }),
        }
    }

    /// The URL users reach the clinic at.
    pub fn url(&self) -> String {
        match &self.web.ingress {
            Some(i) if i.tls_secret_name.is_some() => format!("https://{}/", i.host),
            Some(i) => format!("http://{}/", i.host),
            None => format!(
                "http://{}.{}.svc:{}/",
                self.names.workers, self.namespace, self.web.service.port
            ),
        }
    }
}

/// How long a replica being removed goes on serving before it is told to stop.
const PRE_STOP_SECONDS: i64 = 10;

/// Base64, as Secrets carry their data (k8s-openapi's `ByteString` encodes it).
fn base64(bytes: &[u8]) -> Value {
    serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec())).unwrap_or(Value::Null)
}

fn secret_env(name: &str, key: &SecretKey) -> Value {
    json!({"name": name, "valueFrom": {"secretKeyRef": {"name": key.secret, "key": key.key}}})
}

/// What the image tolerates: it starts as root to chown `sites/` and bind port 80, then
/// Apache drops to its own user. So: no privilege escalation, every capability dropped but
/// the few that start needs, the runtime's seccomp profile.
fn container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "privileged": false,
        "capabilities": {
            "drop": ["ALL"],
            "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID", "NET_BIND_SERVICE"],
        },
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// What a replica gets when the spec says nothing (OpenEMR's PHP workers under load).
fn default_resources() -> Value {
    json!({
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    })
}

fn small_resources() -> Value {
    json!({
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    })
}

/// The tag of an image reference (after the last `:` of its last path part).
pub fn image_tag(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.rsplit_once(':').map_or("latest", |(_, tag)| tag)
}

/// `text` cut to a valid label value (63 characters of `[A-Za-z0-9._-]`).
fn label_safe(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::deployment::secrets::PASSWORD_KEY;
    use crate::controller::deployment::web::scripts::{SETUP_SCRIPTS, SetupCredentials};

    fn spec() -> WebSpec {
        serde_json::from_value(json!({
            "replicas": 2,
            "ingress": {"host": "clinic-a.example.org", "tlsSecretName": "clinic-a-tls"},
        }))
        .unwrap()
    }

    fn inputs<'a>(names: &'a WebNames, web: &'a WebSpec) -> WebInputs<'a> {
        WebInputs {
            namespace: "clinics",
            uid: "uid-1",
            names,
            web,
            database_host: "db.example",
            database_port: 3306,
            database_name: "openemr",
            database_user: "openemr",
            database_password: SecretKey::new("clinic-a-db-credentials", PASSWORD_KEY),
            redis_host: "redis.example",
            redis_password: Some((
                SecretKey::new("clinic-a-redis-auth", PASSWORD_KEY),
                "digest1".into(),
            )),
            file_system_id: "fs-123",
            mysql_ca: "MYSQL CA",
            redis_ca: "REDIS CA",
            setup_backoff_limit: 4,
            setup_deadline_seconds: 1800,
        }
    }

    fn env_names(container: &Value) -> Vec<&str> {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn an_alb_ingress_targets_pods_and_checks_the_login_page_unless_told_otherwise() {
        let names = WebNames::new("clinics", "clinic-a");
        let web: WebSpec = serde_json::from_value(json!({
            "ingress": {
                "host": "clinic-a.example.org",
                "className": "alb",
                "annotations": {
                    "alb.ingress.kubernetes.io/scheme": "internet-facing",
                    "alb.ingress.kubernetes.io/healthcheck-path": "/health",
                },
            },
            "service": {"annotations": {"example.org/team": "clinics"}},
        }))
        .unwrap();
        let i = inputs(&names, &web).ingress().unwrap().body;
        let a = &i["metadata"]["annotations"];
        assert_eq!(a["alb.ingress.kubernetes.io/target-type"], "ip");
        assert_eq!(a["alb.ingress.kubernetes.io/scheme"], "internet-facing");
        assert_eq!(a["alb.ingress.kubernetes.io/healthcheck-path"], "/health");
        let svc = inputs(&names, &web).service().body;
        assert_eq!(
            svc["metadata"]["annotations"]["example.org/team"],
            "clinics"
        );
        // Another class gets only what the spec says.
        let other: WebSpec = serde_json::from_value(json!({
            "ingress": {"host": "clinic-a.example.org", "className": "nginx"},
        }))
        .unwrap();
        let i = inputs(&names, &other).ingress().unwrap().body;
        assert!(i["metadata"].get("annotations").is_none());
    }

    #[test]
    fn workers_of_a_cache_without_auth_get_no_redis_password() {
        let names = WebNames::new("clinics", "clinic-a");
        let web = spec();
        let mut i = inputs(&names, &web);
        i.redis_password = None;
        let d = i.workers(2).body;
        let main = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(env_names(main), ["K8S", "MYSQL_PASS"]);
        let annotations = &d["spec"]["template"]["metadata"]["annotations"];
        assert!(annotations.get(REDIS_AUTH_DIGEST_ANNOTATION).is_none());
        assert!(annotations.get(CA_DIGEST_ANNOTATION).is_some());
    }

    #[test]
    fn workers_run_as_workers_with_the_login_probe_and_no_token() {
        let names = WebNames::new("clinics", "clinic-a");
        let web = spec();
        let d = inputs(&names, &web).workers(2).body;
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false);
        let main = &pod["containers"][0];
        assert_eq!(main["env"][0], json!({"name": "K8S", "value": "worker"}));
        assert_eq!(main["command"][2], WORKER_SCRIPT);
        assert_eq!(main["readinessProbe"]["httpGet"]["path"], LOGIN_PATH);
        assert!(main["startupProbe"]["failureThreshold"].as_i64().unwrap() >= 30);
        assert_eq!(main["image"], web.image);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
        let mounts: Vec<&str> = main["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        assert!(mounts.contains(&"/var/www/localhost/htdocs/openemr/sites"));
        assert!(mounts.contains(&MYSQL_CA_DIR));
        // No password value anywhere: only references.
        let text = d.to_string();
        assert!(text.contains("secretKeyRef"));
        assert_eq!(env_names(main), ["K8S", "MYSQL_PASS", "REDIS_PASSWORD"]);
        assert_eq!(
            main["env"][2]["valueFrom"]["secretKeyRef"],
            json!({"name": "clinic-a-redis-auth", "key": "password"})
        );
        assert_eq!(
            d["spec"]["template"]["metadata"]["annotations"][REDIS_AUTH_DIGEST_ANNOTATION],
            "digest1"
        );
        // Removed replicas drain; replicas prefer distinct zones and nodes.
        let sleep = main["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_i64()
            .unwrap();
        assert!(pod["terminationGracePeriodSeconds"].as_i64().unwrap() > sleep);
        let spread = pod["topologySpreadConstraints"].as_array().unwrap();
        let keys: Vec<&str> = spread
            .iter()
            .map(|c| c["topologyKey"].as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        );
        for c in spread {
            assert_eq!(c["whenUnsatisfiable"], "ScheduleAnyway");
            assert_eq!(
                c["labelSelector"]["matchLabels"],
                d["spec"]["selector"]["matchLabels"]
            );
        }
    }

    #[test]
    fn only_an_install_carries_credentials_and_only_the_script_sees_the_master_password() {
        let names = WebNames::new("clinics", "clinic-a");
        let web = spec();
        let i = inputs(&names, &web);
        let setup = SetupCredentials {
            master_username: "admin_from_rds".into(),
            master_password: SecretKey::new("clinic-a-db-master", "password"),
            admin_username: SecretKey::new("clinic-a-admin", "username"),
            admin_password: SecretKey::new("clinic-a-admin", "password"),
        };
        let job = i
            .setup_job(
                &names.setup_job(&web.image, 1),
                1,
                &SetupMode::Install(setup),
            )
            .body;
        let pod = &job["spec"]["template"]["spec"];
        let main = &pod["containers"][0];
        // The image's installer never gets the master password: MYSQL_ROOT_PASS is set by
        // the script to a privilege-less setup user's, after the database is prepared.
        assert_eq!(
            env_names(main),
            [
                "K8S",
                "OPENEMR_SETUP_MODE",
                "MYSQL_PASS",
                "OPENEMR_MASTER_USER",
                "OPENEMR_MASTER_PASS",
                "OE_USER",
                "OE_PASS"
            ]
        );
        assert_eq!(main["env"][0]["value"], "admin");
        assert_eq!(main["env"][1]["value"], "install");
        assert_eq!(main["env"][3]["value"], "admin_from_rds");
        assert_eq!(main["command"], json!(["sh", "-c", SETUP_SCRIPT]));
        assert_eq!(pod["restartPolicy"], "Never");
        let init: Vec<&str> = pod["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(init, ["seed-sites", "ca-refresh"]);
        // A refusal or an unusable site fails the Job at once.
        let rules = &job["spec"]["podFailurePolicy"]["rules"];
        assert_eq!(rules[0]["action"], "FailJob");
        assert_eq!(rules[0]["onExitCodes"]["containerName"], "setup");
        assert_eq!(
            rules[0]["onExitCodes"]["values"],
            json!([EXIT_REFUSED, EXIT_UNUSABLE])
        );
        assert_eq!(
            job["metadata"]["annotations"][SETUP_MODE_ANNOTATION],
            "install"
        );

        let upgrade = i.setup_job("x", 1, &SetupMode::Migrate).body;
        let main = &upgrade["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(env_names(main), ["K8S", "OPENEMR_SETUP_MODE", "MYSQL_PASS"]);
        assert_eq!(main["env"][1]["value"], "migrate");

        // An existing database: no credentials, and no fresh site seeded onto the volume.
        let attach = i.setup_job("x", 1, &SetupMode::Attach).body;
        let pod = &attach["spec"]["template"]["spec"];
        assert_eq!(
            env_names(&pod["containers"][0]),
            ["K8S", "OPENEMR_SETUP_MODE", "MYSQL_PASS"]
        );
        assert_eq!(pod["containers"][0]["env"][1]["value"], "attach");
        assert_eq!(pod["initContainers"].as_array().unwrap().len(), 1);
        assert_eq!(pod["initContainers"][0]["name"], "ca-refresh");
        assert!(names.setup_job(&web.image, 12).len() <= 63);
    }

    #[test]
    fn workers_make_the_certificate_remove_setup_scripts_and_may_signal_their_children() {
        let names = WebNames::new("clinics", "clinic-a");
        let web = spec();
        let d = inputs(&names, &web).workers(2).body;
        let main = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(main["command"], json!(["sh", "-c", WORKER_SCRIPT]));
        let ssl = WORKER_SCRIPT.find("sh ./ssl.sh").unwrap();
        let remove = WORKER_SCRIPT.find("rm -f admin.php").unwrap();
        let start = WORKER_SCRIPT.find("exec ./openemr.sh").unwrap();
        assert!(ssl < remove && remove < start);
        for script in SETUP_SCRIPTS {
            assert!(WORKER_SCRIPT.contains(script), "{script}");
        }
        assert!(WORKER_SCRIPT.contains("-path ./sites -prune"));
        let caps = main["securityContext"]["capabilities"]["add"]
            .as_array()
            .unwrap();
        assert!(caps.contains(&json!("KILL")));
        assert_eq!(
            main["securityContext"]["capabilities"]["drop"],
            json!(["ALL"])
        );
    }

    #[test]
    fn settings_name_the_database_and_redis_with_tls() {
        let names = WebNames::new("clinics", "clinic-a");
        let web = spec();
        let s = inputs(&names, &web).settings_secret().body;
        assert_eq!(s["data"]["REDIS_SERVER"], base64(b"redis.example"));
        assert_eq!(s["data"]["REDIS_TLS"], "eWVz");
        assert_eq!(s["data"]["FORCE_DATABASE_SSL_CONNECT"], "MQ==");
        assert_eq!(s["data"]["MYSQL_HOST"], base64(b"db.example"));
        assert_eq!(base64(b"ab"), "YWI=");
    }

    #[test]
    fn the_volume_is_efs_over_tls_retained_and_bound_to_the_claim() {
        let names = WebNames::new("clinics", "clinic-a");
        let web = spec();
        let pv = inputs(&names, &web).volume().body;
        assert_eq!(pv["spec"]["csi"]["driver"], "efs.csi.aws.com");
        assert_eq!(pv["spec"]["csi"]["volumeHandle"], "fs-123");
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(pv["spec"]["mountOptions"], json!(["tls"]));
        assert_eq!(pv["spec"]["claimRef"]["name"], "clinic-a-sites");
        assert!(pv["metadata"].get("ownerReferences").is_none());
    }

    #[test]
    fn ingress_and_url_follow_the_spec() {
        let names = WebNames::new("clinics", "clinic-a");
        let mut web = spec();
        let i = inputs(&names, &web);
        assert_eq!(i.url(), "https://clinic-a.example.org/");
        let ingress = i.ingress().unwrap().body;
        assert_eq!(ingress["spec"]["tls"][0]["secretName"], "clinic-a-tls");
        web.ingress = None;
        let i = inputs(&names, &web);
        assert!(i.ingress().is_none());
        assert_eq!(i.url(), "http://clinic-a-openemr.clinics.svc:80/");
    }

    #[test]
    fn tags_are_read_from_any_reference() {
        assert_eq!(image_tag("openemr/openemr:8.0.0"), "8.0.0");
        assert_eq!(image_tag("registry:5000/openemr/openemr:7.0.3"), "7.0.3");
        assert_eq!(image_tag("registry:5000/openemr/openemr"), "latest");
        assert_eq!(image_tag("openemr/openemr:8.0.0@sha256:abc"), "8.0.0");
    }
}
