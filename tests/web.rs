//! The web tier on a real kube-apiserver + kube-controller-manager (its Job, Deployment and
//! ReplicaSet controllers, garbage collection) with the infrastructure in moto. There is no
//! kubelet: the tests play it by patching Pod status (`Succeeded` / `Failed` for the setup
//! Job's pod, `Running` + `Ready` for the workers).
//!
//! Every operator here watches its own namespace only: the tests of this binary run at once.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use openemr_operator::api::OpenEMRDeployment;
use openemr_operator::api::deployment::DeploymentPhase;
use serde_json::json;
use support::faults::{AwsFault, FaultProxy, Rule};
use support::kubelet::{
    finish_pod, pods, ready_clinic, ready_clinic_with_env, run_workers, setup_jobs, setup_pod,
};
use support::operator::Operator;
use support::{TestNamespace, apply, condition, env, eventually, wait_for_reason};

const WAIT: Duration = Duration::from_secs(90);

fn clinic(name: &str, web: serde_json::Value) -> serde_json::Value {
    let mut c = support::clinic_manifest(name, "us-west-2", "");
    c["spec"]["web"] = web;
    c
}

fn env_of(spec: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    spec["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

async fn secret_value(client: &Client, ns: &str, name: &str, key: &str) -> String {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = api.get(name).await.unwrap();
    String::from_utf8(s.data.unwrap()[key].0.clone()).unwrap()
}

#[tokio::test]
async fn a_clinic_is_set_up_once_then_served_by_workers_and_ready() {
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "web").await;
    let name = "clinic-w";
    let web = json!({
        "replicas": 2,
        "ingress": {"host": "clinic-w.example.org", "tlsSecretName": "clinic-w-tls"},
    });
    apply(&client, &ns.name, &clinic(name, web)).await.unwrap();
    // At debug level: the leak check below reads everything the operator can log.
    let operator = Operator::start_with_env(
        env(),
        Some(&ns.name),
        &[],
        &[("RUST_LOG", "info,openemr_operator=debug")],
    );
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);

    // Setup first: one Job, no worker.
    let (job, pod) = setup_pod(&client, &ns.name, name, 1).await;
    let setup = wait_for_reason(&clinics, name, "WorkloadReady", "SetupRunning").await;
    assert_eq!(setup.status, "False");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        deployments
            .get_opt(&format!("{name}-openemr"))
            .await
            .unwrap()
            .is_none()
    );
    let job_pod = serde_json::to_value(job.spec.unwrap().template.spec.unwrap()).unwrap();
    let job_env = env_of(&job_pod);
    let names: Vec<&str> = job_env.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
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
    assert_eq!(job_env[0].1["value"], "admin");
    assert_eq!(job_env[1].1["value"], "install");
    // The master user's name as RDS reports it.
    assert_eq!(job_env[3].1["value"], "openemr_admin");
    for (n, e) in &job_env {
        if n.ends_with("PASS") {
            assert!(e.get("value").is_none(), "{n} is a literal: {e}");
            assert!(e["valueFrom"]["secretKeyRef"].is_object(), "{n}: {e}");
        }
    }
    assert_eq!(
        job_env[4].1["valueFrom"]["secretKeyRef"]["name"],
        format!("{name}-db-master")
    );
    // The RDS-managed master password was copied for setup from Secrets Manager.
    let master = secret_value(&client, &ns.name, &format!("{name}-db-master"), "password").await;
    assert!(master.len() >= 8);

    // RDS rotates the managed secret while the Job runs: the copy follows, so the next pod
    // the Job starts reads the current password.
    let config = env().aws(Some("us-west-2")).await;
    let identifier = eventually(WAIT, "the DB instance in status", || async {
        Some(clinics.get(name).await.ok()?.status?.database?.identifier)
    })
    .await;
    let master_secret = aws_sdk_rds::Client::new(&config)
        .describe_db_instances()
        .db_instance_identifier(&identifier)
        .send()
        .await
        .unwrap()
        .db_instances()[0]
        .master_user_secret()
        .unwrap()
        .secret_arn()
        .unwrap()
        .to_string();
    let rotated = aws_sdk_secretsmanager::Client::new(&config)
        .put_secret_value()
        .secret_id(&master_secret)
        .secret_string(
            json!({"username": "openemr_admin", "password": "Rotated-0n-Day-7"}).to_string(),
        )
        .send()
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let copy = eventually(WAIT, "the copy of the rotated password", || async {
        let copy = secrets.get(&format!("{name}-db-master")).await.ok()?;
        let data = copy.data.as_ref()?.get("password")?;
        (data.0 == b"Rotated-0n-Day-7").then_some(copy)
    })
    .await;
    assert_eq!(
        copy.annotations()
            .get("openemr.io/source-version")
            .map(String::as_str),
        rotated.version_id()
    );

    // The kubelet says the setup pod succeeded: the Job controller completes the Job, and
    // the workers appear.
    finish_pod(&client, &ns.name, &pod, "Succeeded", "").await;
    let workers = eventually(WAIT, "the workers' Deployment", || async {
        deployments.get_opt(&format!("{name}-openemr")).await.ok()?
    })
    .await;
    // The status saying so is written at the end of the pass that made the workers.
    let status = eventually(WAIT, "setupComplete in status", || async {
        let status = clinics.get(name).await.ok()?.status?;
        status.web.as_ref()?.setup_complete.then_some(status)
    })
    .await;
    // The master password's copy is gone once setup is done.
    eventually(WAIT, "the master password copy deleted", || async {
        secrets
            .get_opt(&format!("{name}-db-master"))
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;

    // The worker Pod spec carries what the image needs.
    let spec = workers.spec.clone().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod_spec = serde_json::to_value(spec.template.spec.unwrap()).unwrap();
    assert_eq!(pod_spec["automountServiceAccountToken"], false);
    let main = &pod_spec["containers"][0];
    assert_eq!(main["image"], "openemr/openemr:8.0.0");
    assert_eq!(env_of(&pod_spec)[0].1["value"], "worker");
    assert_eq!(
        main["readinessProbe"]["httpGet"]["path"],
        "/interface/login/login.php"
    );
    assert!(main["startupProbe"].is_object());
    // Kept by the API server as sent (a dropped field would be re-applied on every look).
    assert_eq!(main["lifecycle"]["preStop"]["sleep"]["seconds"], 10);
    assert_eq!(
        pod_spec["topologySpreadConstraints"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(
        main["envFrom"][0]["secretRef"]["name"],
        format!("{name}-openemr")
    );
    // Redis AUTH: the token the stack had Secrets Manager generate (the stack's output
    // names it) is copied for the workers, who read it by reference.
    let stack = status.stack.as_ref().unwrap().name.clone();
    let config = env().aws(Some("us-west-2")).await;
    let outputs = aws_sdk_cloudformation::Client::new(&config)
        .describe_stacks()
        .stack_name(&stack)
        .send()
        .await
        .unwrap()
        .stacks()[0]
        .outputs()
        .to_vec();
    let token_arn = outputs
        .iter()
        .find(|o| o.output_key() == Some("RedisAuthSecretArn"))
        .and_then(|o| o.output_value())
        .unwrap()
        .to_string();
    let token = aws_sdk_secretsmanager::Client::new(&config)
        .get_secret_value()
        .secret_id(&token_arn)
        .send()
        .await
        .unwrap()
        .secret_string()
        .unwrap()
        .to_string();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_alphanumeric()));
    let copy = secrets.get(&format!("{name}-redis-auth")).await.unwrap();
    assert_eq!(
        copy.annotations().get("openemr.io/source-secret"),
        Some(&token_arn)
    );
    assert_eq!(
        secret_value(&client, &ns.name, &format!("{name}-redis-auth"), "password").await,
        token
    );
    let redis_password = eventually(WAIT, "the workers read the Redis AUTH token", || async {
        let d = deployments.get(&format!("{name}-openemr")).await.ok()?;
        let spec = serde_json::to_value(d.spec?.template.spec?).ok()?;
        env_of(&spec)
            .into_iter()
            .find(|(k, _)| k == "REDIS_PASSWORD")
            .map(|(_, v)| v)
    })
    .await;
    assert_eq!(
        redis_password["valueFrom"]["secretKeyRef"],
        json!({"name": format!("{name}-redis-auth"), "key": "password"})
    );
    let mounts = main["volumeMounts"].to_string();
    assert!(
        mounts.contains("/var/www/localhost/htdocs/openemr/sites"),
        "{mounts}"
    );
    assert!(mounts.contains("/root/certs/mysql/server"), "{mounts}");
    assert!(mounts.contains("/root/certs/redis"), "{mounts}");
    let settings = secrets.get(&format!("{name}-openemr")).await.unwrap();
    let setting =
        |k: &str| String::from_utf8(settings.data.as_ref().unwrap()[k].0.clone()).unwrap();
    assert_eq!(setting("REDIS_TLS"), "yes");
    assert!(
        !setting("REDIS_SERVER").contains(':'),
        "the image adds the port"
    );
    assert_eq!(setting("FORCE_DATABASE_SSL_CONNECT"), "1");
    assert_eq!(
        setting("MYSQL_HOST"),
        status
            .database
            .as_ref()
            .unwrap()
            .endpoint
            .as_deref()
            .unwrap()
            .split(':')
            .next()
            .unwrap()
    );
    let ca: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let bundle = ca.get(&format!("{name}-ca")).await.unwrap().data.unwrap();
    let stand_in = std::fs::read_to_string(format!(
        "{}/tests/fixtures/stand-in-mysql-ca.pem",
        support::REPO
    ))
    .unwrap();
    assert_eq!(bundle["mysql-ca"], stand_in);

    // The EFS volume.
    let pv: Api<PersistentVolume> = Api::all(client.clone());
    let volume = pv
        .get(&format!("openemr-{}-{name}-sites", ns.name))
        .await
        .unwrap()
        .spec
        .unwrap();
    let csi = volume.csi.unwrap();
    assert_eq!(csi.driver, "efs.csi.aws.com");
    assert_eq!(Some(csi.volume_handle), status.file_system_id);
    assert_eq!(volume.mount_options, Some(vec!["tls".to_string()]));
    assert_eq!(
        volume.persistent_volume_reclaim_policy.as_deref(),
        Some("Retain")
    );
    assert_eq!(volume.access_modes, Some(vec!["ReadWriteMany".to_string()]));
    let pvc: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    assert!(pvc.get(&format!("{name}-sites")).await.is_ok());

    // The kubelet says the workers run and are ready.
    eventually(WAIT, "two worker pods", || async {
        (run_workers(&client, &ns.name, name).await >= 2).then_some(())
    })
    .await;
    let workload = wait_for_reason(&clinics, name, "WorkloadReady", "ReplicasReady").await;
    assert_eq!(workload.message, "2/2 replicas ready");
    let ready = wait_for_reason(&clinics, name, "Ready", "Ready").await;
    assert_eq!(ready.status, "True");
    let status = clinics.get(name).await.unwrap().status.unwrap();
    assert_eq!(status.phase, Some(DeploymentPhase::Ready));
    let web = status.web.unwrap();
    assert_eq!(web.url.as_deref(), Some("https://clinic-w.example.org/"));
    assert_eq!(web.ready_replicas, 2);
    assert_eq!(web.image.as_deref(), Some("openemr/openemr:8.0.0"));

    let ingress: Api<Ingress> = Api::namespaced(client.clone(), &ns.name);
    let ing = ingress
        .get(&format!("{name}-openemr"))
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(
        ing.tls.unwrap()[0].secret_name.as_deref(),
        Some("clinic-w-tls")
    );
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        pdbs.get_opt(&format!("{name}-openemr"))
            .await
            .unwrap()
            .is_some()
    );

    // Setup ran once.
    assert_eq!(setup_jobs(&client, &ns.name, name).await.len(), 1);

    // At rest, a look at the clinic writes no child: what the caches hold carries what
    // the plan renders.
    let child_writes = || async {
        let (_, body) = operator.get("/metrics").await.unwrap();
        body.lines()
            .filter(|l| l.starts_with("openemr_child_writes_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let ok = "openemr_reconciliations_total{controller=\"openemrdeployment\",result=\"ok\"}";
    let writes_before = child_writes().await;
    assert!(writes_before > 0);
    for i in 0..3 {
        let looks = operator.metric(ok).await;
        let touch = json!({"metadata": {"annotations": {"example.org/touched": i.to_string()}}});
        clinics
            .patch(name, &PatchParams::default(), &Patch::Merge(&touch))
            .await
            .unwrap();
        eventually(WAIT, "a look at the clinic", || async {
            (operator.metric(ok).await > looks).then_some(())
        })
        .await;
    }
    let (_, body) = operator.get("/metrics").await.unwrap();
    let per_kind: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("openemr_child_writes_total"))
        .collect();
    assert_eq!(
        child_writes().await,
        writes_before,
        "no child written at rest: {per_kind:?}"
    );

    // No password anywhere people or logs read: operator log (at debug level), Events,
    // status, Pod specs; the master password's copy and the Redis AUTH token among them.
    let passwords = [
        secret_value(
            &client,
            &ns.name,
            &format!("{name}-db-credentials"),
            "password",
        )
        .await,
        secret_value(&client, &ns.name, &format!("{name}-admin"), "password").await,
        master,
        token,
    ];
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let event_text =
        serde_json::to_string(&events.list(&Default::default()).await.unwrap().items).unwrap();
    let status_text = serde_json::to_string(&clinics.get(name).await.unwrap().status).unwrap();
    let pod_text =
        serde_json::to_string(&pods(&client, &ns.name, &format!("openemr.io/clinic={name}")).await)
            .unwrap()
            + &serde_json::to_string(&setup_jobs(&client, &ns.name, name).await).unwrap()
            + &serde_json::to_string(&deployments.get(&format!("{name}-openemr")).await.unwrap())
                .unwrap();
    let log = operator.log();
    for p in &passwords {
        for (what, text) in [
            ("log", &log),
            ("Events", &event_text),
            ("status", &status_text),
            ("Pod specs", &pod_text),
        ] {
            assert!(
                !text.contains(p.as_str()),
                "a password appears in the {what}"
            );
        }
    }

    // Deleted (deletionPolicy Retain): the cluster-scoped volume object goes with the
    // clinic; the file system it pointed at stays in AWS.
    let file_system = status.file_system_id.clone().unwrap();
    clinics
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    let volume_name = format!("openemr-{}-{name}-sites", ns.name);
    eventually(WAIT, "the clinic and its volume object gone", || async {
        (clinics.get_opt(name).await.ok()?.is_none()
            && pv.get_opt(&volume_name).await.ok()?.is_none())
        .then_some(())
    })
    .await;
    let config = env().aws(Some("us-west-2")).await;
    let efs = aws_sdk_efs::Client::new(&config);
    let kept = efs
        .describe_file_systems()
        .file_system_id(file_system)
        .send()
        .await
        .unwrap();
    assert_eq!(kept.file_systems().len(), 1, "the file system is retained");
}

#[tokio::test]
async fn replicas_follow_the_spec_and_hand_edits_deletions_and_holds_are_handled() {
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "web-scale").await;
    let name = "clinic-s";
    apply(&client, &ns.name, &clinic(name, json!({"replicas": 2})))
        .await
        .unwrap();
    let operator = ready_clinic(&client, &ns.name, name, &[]).await;
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns.name);
    let workers = format!("{name}-openemr");
    let replicas = || async { deployments.get(&workers).await.ok()?.spec?.replicas };
    let wait_replicas = |n: i32| {
        let replicas = &replicas;
        async move {
            eventually(WAIT, &format!("{n} replicas"), || async {
                (replicas().await? == n).then_some(())
            })
            .await
        }
    };

    // 2 → 5 → 0 → 2.
    for n in [5, 0, 2] {
        apply(&client, &ns.name, &clinic(name, json!({"replicas": n})))
            .await
            .unwrap();
        wait_replicas(n).await;
        let budget = pdbs.get_opt(&workers).await.unwrap().is_some();
        eventually(WAIT, "the budget to follow", || async {
            (pdbs.get_opt(&workers).await.ok()?.is_some() == (n >= 2)).then_some(())
        })
        .await;
        let _ = budget;
        if n == 0 {
            let stopped = wait_for_reason(&clinics, name, "WorkloadReady", "Stopped").await;
            assert_eq!(stopped.status, "True");
            claim_deleted_by_hand_is_made_anew_and_bound(&client, &ns.name, name).await;
        }
    }
    run_workers(&client, &ns.name, name).await;

    // Resources, the Service's port and an Ingress follow the spec, and so does its removal.
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let changed = json!({
        "replicas": 2,
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        "service": {"port": 8080},
        "ingress": {"host": "clinic-s.example.org", "className": "nginx"},
    });
    apply(&client, &ns.name, &clinic(name, changed))
        .await
        .unwrap();
    eventually(
        WAIT,
        "resources, port and Ingress from the spec",
        || async {
            let d = deployments.get(&workers).await.ok()?.spec?;
            let resources = d.template.spec?.containers[0].resources.clone()?;
            let cpu = resources.requests?.get("cpu")?.0.clone();
            let port = services.get(&workers).await.ok()?.spec?.ports?[0].port;
            let ingress = ingresses.get_opt(&workers).await.ok()??.spec?;
            let url = clinics.get(name).await.ok()?.status?.web?.url?;
            (cpu == "250m"
                && port == 8080
                && ingress.ingress_class_name.as_deref() == Some("nginx")
                && url == "http://clinic-s.example.org/")
                .then_some(())
        },
    )
    .await;
    // What the spec stops setting goes from the children too (the objects still have it,
    // so only the operator's record of what it applied can tell).
    let fewer = json!({
        "replicas": 2,
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}},
        "service": {"port": 8080},
        "ingress": {"host": "clinic-s.example.org"},
    });
    apply(&client, &ns.name, &clinic(name, fewer))
        .await
        .unwrap();
    eventually(WAIT, "the class and the limits gone", || async {
        let d = deployments.get(&workers).await.ok()?.spec?;
        let resources = d.template.spec?.containers[0].resources.clone()?;
        let ingress = ingresses.get_opt(&workers).await.ok()??.spec?;
        (resources.limits.is_none_or(|l| l.is_empty()) && ingress.ingress_class_name.is_none())
            .then_some(())
    })
    .await;
    apply(&client, &ns.name, &clinic(name, json!({"replicas": 2})))
        .await
        .unwrap();
    eventually(WAIT, "the Ingress gone with its spec", || async {
        ingresses
            .get_opt(&workers)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    run_workers(&client, &ns.name, name).await;

    // A person edits the Deployment by hand: put back.
    let edit = json!({"spec": {"replicas": 7, "template": {"spec": {"containers": [
        {"name": "openemr", "image": "openemr/openemr:7.0.3"}
    ]}}}});
    deployments
        .patch(&workers, &PatchParams::default(), &Patch::Strategic(&edit))
        .await
        .unwrap();
    eventually(WAIT, "the hand edit put back", || async {
        let spec = deployments.get(&workers).await.ok()?.spec?;
        let image = spec.template.spec?.containers[0].image.clone()?;
        (spec.replicas == Some(2) && image == "openemr/openemr:8.0.0").then_some(())
    })
    .await;
    // The edited image is not the site's version: no upgrade from it, no snapshot.
    let status = clinics.get(name).await.unwrap().status.unwrap();
    assert_eq!(status.upgrade, None);
    assert_eq!(
        status.web.unwrap().image.as_deref(),
        Some("openemr/openemr:8.0.0")
    );

    // A deleted Service is recreated.
    let uid = services.get(&workers).await.unwrap().uid();
    services
        .delete(&workers, &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "the Service recreated", || async {
        let s = services.get_opt(&workers).await.ok()??;
        (s.uid() != uid).then_some(())
    })
    .await;

    // A hold, placed by hand: the workers go to 0, the clinic says why.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let hold: Lease = serde_json::from_value(json!({
        "metadata": {
            "name": "clinic-s-hold-by-hand",
            "labels": {"openemr.io/hold-on": name},
            "annotations": {"openemr.io/hold-reason": "copying documents by hand"},
        },
        "spec": {"holderIdentity": "ops/alice", "acquireTime": "2026-11-23T10:00:00.000000Z"},
    }))
    .unwrap();
    leases.create(&PostParams::default(), &hold).await.unwrap();
    wait_replicas(0).await;
    let held = wait_for_reason(&clinics, name, "WorkloadReady", "Held").await;
    assert_eq!(held.status, "False");
    assert!(held.message.contains("ops/alice"), "{}", held.message);
    assert!(
        held.message.contains("copying documents by hand"),
        "{}",
        held.message
    );
    let web = web_status(&clinics, name).await;
    assert_eq!(web.holds.len(), 1);
    assert_eq!(web.holds[0].holder, "ops/alice");
    assert_eq!(
        wait_for_reason(&clinics, name, "Ready", "NotReady")
            .await
            .status,
        "False"
    );

    // The hold survives an operator restart: the new one keeps the workers at 0.
    drop(operator);
    let operator = Operator::start(env(), Some(&ns.name));
    operator.wait_for("/readyz", 200).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas().await, Some(0));

    // Released: spec.web.replicas comes back.
    leases
        .delete("clinic-s-hold-by-hand", &DeleteParams::default())
        .await
        .unwrap();
    wait_replicas(2).await;
    eventually(WAIT, "ready again", || async {
        run_workers(&client, &ns.name, name).await;
        let c = condition(&clinics, name, "Ready").await?;
        (c.status == "True").then_some(())
    })
    .await;

    // A hold whose holder stops renewing it (a backup that died) lapses on its own: the
    // workers come back without anyone deleting the Lease, which stays for its holder.
    let renewed = k8s_openapi::jiff::Timestamp::now();
    let lapsing: Lease = serde_json::from_value(json!({
        "metadata": {"name": "clinic-s-hold-lapsing", "labels": {"openemr.io/hold-on": name}},
        "spec": {
            "holderIdentity": "backup/crashed",
            "acquireTime": renewed,
            "renewTime": renewed,
            "leaseDurationSeconds": 15,
        },
    }))
    .unwrap();
    leases
        .create(&PostParams::default(), &lapsing)
        .await
        .unwrap();
    wait_replicas(0).await;
    wait_replicas(2).await;
    let lapsed = eventually(WAIT, "the lapsed hold named", || async {
        run_workers(&client, &ns.name, name).await;
        let c = condition(&clinics, name, "WorkloadReady").await?;
        (c.status == "True" && c.message.contains("backup/crashed")).then_some(c)
    })
    .await;
    assert!(
        lapsed.message.contains("renewed too late"),
        "{}",
        lapsed.message
    );
    assert!(web_status(&clinics, name).await.holds.is_empty());
    assert!(
        leases
            .get_opt("clinic-s-hold-lapsing")
            .await
            .unwrap()
            .is_some()
    );
    drop(operator);
}

/// Deletes the clinic's `sites/` claim by hand (no pod uses it): the operator makes it
/// anew and frees the volume, `Released` under `Retain`, to bind to it.
async fn claim_deleted_by_hand_is_made_anew_and_bound(client: &Client, ns: &str, clinic: &str) {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let claim = format!("{clinic}-sites");
    let phase = |c: &PersistentVolumeClaim| c.status.as_ref().and_then(|s| s.phase.clone());
    let first = eventually(WAIT, "the claim bound", || async {
        let c = claims.get(&claim).await.ok()?;
        (phase(&c).as_deref() == Some("Bound")).then_some(c)
    })
    .await;
    let volume = first.spec.unwrap().volume_name.unwrap();
    claims
        .delete(&claim, &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "the claim made anew and bound", || async {
        let c = claims.get_opt(&claim).await.ok()??;
        (c.uid() != first.metadata.uid && phase(&c).as_deref() == Some("Bound")).then_some(())
    })
    .await;
    let pv = volumes.get(&volume).await.unwrap();
    assert_eq!(
        pv.spec.unwrap().persistent_volume_reclaim_policy.as_deref(),
        Some("Retain")
    );
    support::warning_event(client, ns, clinic, "VolumeRebound").await;
}

#[tokio::test]
async fn a_failed_setup_is_reported_and_retried_and_nothing_is_removed() {
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "web-fail").await;
    let name = "clinic-f";
    apply(&client, &ns.name, &clinic(name, json!({"replicas": 1})))
        .await
        .unwrap();
    let _operator = Operator::start_with(
        env(),
        Some(&ns.name),
        &["--setup-backoff-limit", "0", "--setup-retry-after", "4s"],
    );
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let (_, pod) = setup_pod(&client, &ns.name, name, 1).await;
    // The pod's last words carry the generated administrator's password (a Secret it
    // reads) and another after a `rootpass=` key: neither may be repeated.
    let admin = secret_value(&client, &ns.name, &format!("{name}-admin"), "password").await;
    finish_pod(
        &client,
        &ns.name,
        &pod,
        "Failed",
        &format!(
            "Couldn't set up: MySQL refused the connection; tried admin/{admin} \
             with server=db rootpass=not-a-secret-we-know"
        ),
    )
    .await;
    let failed = wait_for_reason(&clinics, name, "WorkloadReady", "SetupFailed").await;
    assert_eq!(failed.status, "False");
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let said = serde_json::to_string(&clinics.get(name).await.unwrap().status).unwrap()
        + &serde_json::to_string(&events.list(&Default::default()).await.unwrap().items).unwrap();
    for secret in [admin.as_str(), "not-a-secret-we-know"] {
        assert!(!said.contains(secret), "{secret} repeated: {said}");
    }
    assert!(
        failed.message.contains("tried admin/<redacted>"),
        "{}",
        failed.message
    );
    assert!(
        failed.message.contains("BackoffLimitExceeded"),
        "{}",
        failed.message
    );
    assert!(
        failed.message.contains("MySQL refused the connection"),
        "{}",
        failed.message
    );
    // No worker; the volume and its claim are there, untouched.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        deployments
            .get_opt(&format!("{name}-openemr"))
            .await
            .unwrap()
            .is_none()
    );
    let pvc: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let claim_uid = pvc.get(&format!("{name}-sites")).await.unwrap().uid();

    // Retried with a new Job (the failed one stays as the record); it succeeds.
    let (second, pod) = setup_pod(&client, &ns.name, name, 2).await;
    assert_eq!(second.annotations()["openemr.io/attempt"], "2");
    assert_eq!(setup_jobs(&client, &ns.name, name).await.len(), 2);
    finish_pod(&client, &ns.name, &pod, "Succeeded", "").await;
    eventually(WAIT, "the workers after the retry", || async {
        deployments.get_opt(&format!("{name}-openemr")).await.ok()?
    })
    .await;
    assert_eq!(
        pvc.get(&format!("{name}-sites")).await.unwrap().uid(),
        claim_uid
    );
}

/// The manual DB snapshots of `instance` in moto: (identifier, status, created).
async fn snapshots(region: &str, instance: &str) -> Vec<(String, String, i64)> {
    let config = env().aws(Some(region)).await;
    let rds = aws_sdk_rds::Client::new(&config);
    let out = rds
        .describe_db_snapshots()
        .db_instance_identifier(instance)
        .snapshot_type("manual")
        .send()
        .await
        .unwrap();
    out.db_snapshots()
        .iter()
        .map(|s| {
            (
                s.db_snapshot_identifier().unwrap_or_default().to_string(),
                s.status().unwrap_or_default().to_string(),
                s.snapshot_create_time().map_or(0, |t| t.secs()),
            )
        })
        .collect()
}

/// Waits for the setup Job of `clinic` that runs `image`, and its pod's name.
async fn migration_job(client: &Client, ns: &str, clinic: &str, image: &str) -> (Job, String) {
    eventually(WAIT, &format!("the Job migrating to {image}"), || async {
        let job = setup_jobs(client, ns, clinic)
            .await
            .into_iter()
            .find(|j| j.annotations().get("openemr.io/image").map(String::as_str) == Some(image))?;
        let job_name = job.name_any();
        let pod = pods(client, ns, &format!("job-name={job_name}"))
            .await
            .into_iter()
            .next()?;
        Some((job, pod.name_any()))
    })
    .await
}

async fn web_status(
    clinics: &Api<OpenEMRDeployment>,
    name: &str,
) -> openemr_operator::api::deployment::WebStatus {
    clinics
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap()
        .web
        .unwrap()
}

fn images_of(value: &serde_json::Value) -> String {
    value.to_string()
}

#[tokio::test]
async fn an_image_upgrade_is_guarded_by_one_snapshot_resumes_after_a_kill_and_rolls_back() {
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "web-up").await;
    let name = "clinic-u";
    let web =
        |image: &str| json!({"replicas": 1, "image": image, "upgrade": {"timeoutSeconds": 60}});
    apply(
        &client,
        &ns.name,
        &clinic(name, web("openemr/openemr:8.0.0")),
    )
    .await
    .unwrap();
    let operator = ready_clinic(&client, &ns.name, name, &[]).await;
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let workers = format!("{name}-openemr");
    let instance = clinics
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap()
        .database
        .unwrap()
        .identifier;

    // The image changes; the operator is killed as soon as the upgrade is recorded, and a
    // new one resumes it.
    apply(
        &client,
        &ns.name,
        &clinic(name, web("openemr/openemr:8.0.1")),
    )
    .await
    .unwrap();
    let meta = clinics.get(name).await.unwrap().metadata;
    let generation = meta.generation.unwrap();
    let uid = meta.uid.unwrap();
    eventually(WAIT, "the upgrade recorded", || async {
        clinics.get(name).await.ok()?.status?.upgrade
    })
    .await;
    operator.kill();
    // Keeping one upgrade snapshot: the second upgrade's success prunes the first's.
    let operator = Operator::start_with(env(), Some(&ns.name), &["--upgrade-snapshots-kept", "1"]);

    // The migration Job appears with the new image only once the snapshot is there.
    let (job, pod) = migration_job(&client, &ns.name, name, "openemr/openemr:8.0.1").await;
    let job_name = job.name_any();
    let recorded = clinics
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap()
        .upgrade
        .unwrap();
    assert_eq!(recorded.migration_job.as_deref(), Some(job_name.as_str()));
    let taken = snapshots("us-west-2", &instance).await;
    assert_eq!(taken.len(), 1, "exactly one snapshot: {taken:?}");
    let (snapshot, state, created) = &taken[0];
    assert_eq!(
        snapshot,
        &format!("{instance}-upgrade-{}-g{generation}", &uid[..8])
    );
    assert_eq!(state, "available");
    let job_created = job.metadata.creation_timestamp.unwrap().0.as_second();
    assert!(
        *created <= job_created,
        "snapshot at {created}, Job at {job_created}"
    );
    // The workers still run the old image while the site migrates.
    let before = deployments.get(&workers).await.unwrap();
    assert!(!images_of(&serde_json::to_value(&before.spec).unwrap()).contains("8.0.1"));
    let job_env = env_of(&serde_json::to_value(job.spec.unwrap().template.spec.unwrap()).unwrap());
    assert!(
        !job_env
            .iter()
            .any(|(n, _)| n == "MYSQL_ROOT_PASS" || n == "OPENEMR_MASTER_PASS"),
        "an upgrade needs no master password"
    );
    assert!(
        job_env
            .iter()
            .any(|(n, e)| n == "OPENEMR_SETUP_MODE" && e["value"] == "migrate")
    );

    // Migrated: the workers roll to the new image, whose pods never become ready.
    finish_pod(&client, &ns.name, &pod, "Succeeded", "").await;
    eventually(WAIT, "the workers on the new image", || async {
        let d = deployments.get(&workers).await.ok()?;
        images_of(&serde_json::to_value(&d.spec).ok()?)
            .contains("8.0.1")
            .then_some(())
    })
    .await;
    let rolled = eventually(
        Duration::from_secs(120),
        "the rollback after the timeout",
        || async {
            let u = clinics.get(name).await.ok()?.status?.upgrade?;
            (u.phase == Some(openemr_operator::api::deployment::UpgradePhase::RolledBack))
                .then_some(u)
        },
    )
    .await;
    assert_eq!(rolled.from_image, "openemr/openemr:8.0.0");
    assert_eq!(rolled.to_image, "openemr/openemr:8.0.1");
    assert_eq!(rolled.snapshot.as_deref(), Some(snapshot.as_str()));
    assert!(rolled.completion_time.is_some());
    eventually(WAIT, "the workers back on the old image", || async {
        let d = deployments.get(&workers).await.ok()?;
        let text = images_of(&serde_json::to_value(&d.spec).ok()?);
        (!text.contains("8.0.1") && text.contains("openemr/openemr:8.0.0")).then_some(())
    })
    .await;
    let event = support::warning_event(&client, &ns.name, name, "UpgradeRolledBack").await;
    assert!(event.note.unwrap_or_default().contains(snapshot.as_str()));
    // Still exactly one snapshot, after the kill, the resume and the rollback.
    assert_eq!(snapshots("us-west-2", &instance).await.len(), 1);

    let serving =
        support::wait_for_reason(&clinics, name, "WorkloadReady", "UpgradeNotApplied").await;
    assert_eq!(serving.status, "True", "{}", serving.message);
    assert!(serving.message.contains(snapshot.as_str()));

    // GitOps reverts the image, then names it again: a new upgrade, its own snapshot
    // and migration Job; this time the replicas become ready.
    apply(
        &client,
        &ns.name,
        &clinic(name, web("openemr/openemr:8.0.0")),
    )
    .await
    .unwrap();
    eventually(WAIT, "the failed upgrade superseded", || async {
        let u = clinics.get(name).await.ok()?.status?.upgrade?;
        u.superseded.then_some(())
    })
    .await;
    apply(
        &client,
        &ns.name,
        &clinic(name, web("openemr/openemr:8.0.1")),
    )
    .await
    .unwrap();
    let retry = eventually(WAIT, "the second upgrade's migration Job", || async {
        let u = clinics.get(name).await.ok()?.status?.upgrade?;
        let job = u.migration_job?;
        (u.phase == Some(openemr_operator::api::deployment::UpgradePhase::Rolling)
            && job != job_name)
            .then_some(job)
    })
    .await;
    let pod = eventually(WAIT, "the pod of the second migration", || async {
        pods(&client, &ns.name, &format!("job-name={retry}"))
            .await
            .into_iter()
            .next()
            .map(|p| p.name_any())
    })
    .await;
    finish_pod(&client, &ns.name, &pod, "Succeeded", "").await;
    let done = eventually(WAIT, "the upgrade to succeed", || async {
        run_workers(&client, &ns.name, name).await;
        let u = clinics.get(name).await.ok()?.status?.upgrade?;
        (u.phase == Some(openemr_operator::api::deployment::UpgradePhase::Succeeded)).then_some(u)
    })
    .await;
    assert_eq!(done.from_image, "openemr/openemr:8.0.0");
    // Its own snapshot, not the first upgrade's; and that one is gone (one kept).
    let second = done.snapshot.clone().unwrap();
    assert_ne!(&second, snapshot);
    let left = eventually(WAIT, "the first upgrade's snapshot pruned", || async {
        let left = snapshots("us-west-2", &instance).await;
        (left.len() == 1).then_some(left)
    })
    .await;
    assert_eq!(left[0].0, second);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let pruned = eventually(WAIT, "the UpgradeSnapshotsPruned Event", || async {
        events
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("UpgradeSnapshotsPruned"))?
            .message
    })
    .await;
    assert!(pruned.contains(snapshot.as_str()), "{pruned}");
    let web = web_status(&clinics, name).await;
    assert_eq!(web.image.as_deref(), Some("openemr/openemr:8.0.1"));
    drop(operator);
}

#[tokio::test]
async fn the_hold_helpers_place_renew_and_release_a_lease_in_the_api_server() {
    use openemr_operator::controller::deployment::web::holds;
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "web-holds").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let (clinic, holder) = ("clinic-h", "backup-nightly");
    let lease_name = holds::lease_name(clinic, holder);
    let hold = || async {
        let lease = leases.get(&lease_name).await.unwrap();
        holds::hold_of(&lease, clinic).expect("a hold on the clinic")
    };

    let lasts = Some(Duration::from_secs(60));
    let place = |reason: &'static str, lasts: Option<Duration>| {
        let (client, ns) = (client.clone(), ns.name.clone());
        async move {
            holds::place(&client, &ns, clinic, holder, reason, lasts, None)
                .await
                .unwrap()
        }
    };
    place("quiesced backup", lasts).await;
    let placed = hold().await;
    assert_eq!(placed.holder, holder);
    assert_eq!(placed.reason.as_deref(), Some("quiesced backup"));
    let since = placed.since.clone().unwrap().0;
    let expires = placed.expires.clone().unwrap().0;
    assert_eq!(expires.duration_since(since).as_secs(), 60);

    // Placed again: in force again with the new lifetime and reason, since unchanged.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    place("another reason", None).await;
    let again = hold().await;
    assert_eq!(again.reason.as_deref(), Some("another reason"));
    assert_eq!(again.since, placed.since);
    assert_eq!(
        again.expires, None,
        "placed without a lifetime: it does not lapse"
    );
    place("quiesced backup", lasts).await;
    let expires = hold().await.expires.unwrap().0;
    assert!(
        expires.duration_since(since).as_secs() > 60,
        "renewed by the placing"
    );

    // Renewed: it lapses later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    holds::renew(&client, &ns.name, clinic, holder)
        .await
        .unwrap();
    assert!(hold().await.expires.unwrap().0 > expires);

    // Released, twice; renewing a released hold tells its holder it is gone.
    holds::release(&client, &ns.name, clinic, holder)
        .await
        .unwrap();
    assert!(leases.get_opt(&lease_name).await.unwrap().is_none());
    holds::release(&client, &ns.name, clinic, holder)
        .await
        .unwrap();
    let gone = holds::renew(&client, &ns.name, clinic, holder).await;
    assert!(
        matches!(&gone, Err(kube::Error::Api(s)) if s.code == 404),
        "{gone:?}"
    );
}

/// Quiesced backups and in-place restores depend on a hold taking the workers to 0 at once,
/// whatever AWS is doing: here while the stack reads `UPDATE_IN_PROGRESS` (moto never
/// says so; the proxy rewrites its answers) and while RDS answers every read with a 503.
#[tokio::test]
async fn a_hold_holds_while_the_stack_updates_and_while_rds_fails_and_placed_again_holds_again() {
    use openemr_operator::controller::deployment::web::holds;
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "web-hold-aws").await;
    let name = "held";
    apply(&client, &ns.name, &clinic(name, json!({"replicas": 2})))
        .await
        .unwrap();
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let url = proxy.url();
    let operator = ready_clinic_with_env(
        &client,
        &ns.name,
        name,
        &[
            "--inventory-interval",
            "2s",
            "--retry-initial",
            "1s",
            "--retry-max",
            "2s",
        ],
        &[("AWS_ENDPOINT_URL", &url)],
    )
    .await;
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let workers = format!("{name}-openemr");
    let replicas = || async {
        deployments
            .get(&workers)
            .await
            .ok()
            .and_then(|d| d.spec?.replicas)
    };
    let effective = || async {
        let status = clinics.get(name).await.ok()?.status?;
        let holds = status.web?.holds;
        Some(!holds.is_empty() && holds.iter().all(|h| h.effective))
    };

    // The stack reads as updating: the clinic waits for it, and a hold still holds.
    proxy.set(
        "DescribeStacks",
        Rule::default()
            .rewrite(
                "<StackStatus>CREATE_COMPLETE<",
                "<StackStatus>UPDATE_IN_PROGRESS<",
            )
            .rewrite(
                "<StackStatus>UPDATE_COMPLETE<",
                "<StackStatus>UPDATE_IN_PROGRESS<",
            ),
    );
    let busy = wait_for_reason(&clinics, name, "StackReady", "StackUpdating").await;
    assert_eq!(busy.status, "False", "{busy:?}");
    holds::place(
        &client,
        &ns.name,
        name,
        "backup-nightly",
        "quiesced backup",
        None,
        None,
    )
    .await
    .unwrap();
    eventually(WAIT, "the workers at 0 while the stack updates", || async {
        (replicas().await == Some(0)).then_some(())
    })
    .await;
    let stack = condition(&clinics, name, "StackReady").await.unwrap();
    assert_eq!(
        (stack.status.as_str(), stack.reason.as_str()),
        ("False", "StackUpdating"),
        "the stack still reads as updating: {stack:?}"
    );
    eventually(WAIT, "the hold in effect", || async {
        effective().await.filter(|e| *e)
    })
    .await;
    let held = condition(&clinics, name, "WorkloadReady").await.unwrap();
    assert_eq!(held.reason, "Held");

    // Released while the stack still updates: the web tier follows its spec again.
    holds::release(&client, &ns.name, name, "backup-nightly")
        .await
        .unwrap();
    eventually(WAIT, "the workers back at 2", || async {
        (replicas().await == Some(2)).then_some(())
    })
    .await;

    // RDS answers nothing but 503: reading the clinic fails, and a hold still holds.
    proxy.set(
        "DescribeDBInstances",
        Rule::default().error(AwsFault::new(503, "ServiceUnavailable", "RDS is down")),
    );
    eventually(WAIT, "the RDS failure reported", || async {
        let synced = condition(&clinics, name, "Synced").await?;
        (synced.status == "False" && synced.message.contains("ServiceUnavailable")).then_some(())
    })
    .await;
    holds::place(
        &client,
        &ns.name,
        name,
        "restore-in-place",
        "in-place restore",
        None,
        None,
    )
    .await
    .unwrap();
    eventually(WAIT, "the workers at 0 while RDS fails", || async {
        (replicas().await == Some(0)).then_some(())
    })
    .await;
    eventually(WAIT, "the hold in effect while RDS fails", || async {
        effective().await.filter(|e| *e)
    })
    .await;
    holds::release(&client, &ns.name, name, "restore-in-place")
        .await
        .unwrap();
    proxy.clear_all();

    // A hold whose holder stopped renewing lapses; placed again, it holds again.
    eventually(WAIT, "the workers back at 2", || async {
        (replicas().await == Some(2)).then_some(())
    })
    .await;
    let short = Some(Duration::from_secs(3));
    let drill = || {
        holds::place(
            &client,
            &ns.name,
            name,
            "drill",
            "monthly drill",
            short,
            None,
        )
    };
    drill().await.unwrap();
    eventually(WAIT, "held by the short hold", || async {
        (replicas().await == Some(0)).then_some(())
    })
    .await;
    eventually(WAIT, "the short hold lapsed", || async {
        (replicas().await == Some(2)).then_some(())
    })
    .await;
    drill().await.unwrap();
    eventually(WAIT, "held again once placed again", || async {
        (replicas().await == Some(0)).then_some(())
    })
    .await;
    drop(operator);
}

/// The operator's clock (`CLOCK_START`, `CLOCK_ANCHOR`, `CLOCK_SPEED`) crosses the process
/// boundary: the operator stamps its conditions with it and times holds by it. At 120
/// times real speed, a hold renewed for an hour lapses within the test's wait (90 s), which
/// no operator on the system clock could do; one that, by the same clock, lapsed an hour
/// ago holds nothing although the system clock says it was renewed a moment ago.
#[tokio::test]
async fn the_operators_clock_decides_when_holds_lapse() {
    use k8s_openapi::jiff::Timestamp;

    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "clock").await;
    let name = "clinic-k";
    apply(&client, &ns.name, &clinic(name, json!({"replicas": 2})))
        .await
        .unwrap();
    let clock = support::clock::TestClock::starting("2031-03-09T06:00:00Z", 120.0);
    let start = clock.now();
    let operator = ready_clinic_with_env(&client, &ns.name, name, &[], &clock.vars()).await;
    let clinics: Api<OpenEMRDeployment> = Api::namespaced(client.clone(), &ns.name);
    let ready = condition(&clinics, name, "Ready").await.unwrap();
    let stamped = ready.last_transition_time.0;
    assert!(
        stamped >= start && stamped <= clock.now(),
        "Ready was stamped {stamped}, not on the operator's clock (it started at {start})"
    );

    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let replicas = || async {
        deployments
            .get_opt(&format!("{name}-openemr"))
            .await
            .unwrap()
            .and_then(|d| d.spec?.replicas)
    };
    let lease = |lease: &str, holder: &str, renewed: Timestamp| -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": lease, "labels": {"openemr.io/hold-on": name}},
            "spec": {
                "holderIdentity": holder,
                "acquireTime": renewed,
                "renewTime": renewed,
                "leaseDurationSeconds": 3600,
            },
        }))
        .unwrap()
    };
    // Renewed two hours ago by the clock (lapsed an hour ago, 30 real seconds), a moment
    // ago by the system's.
    let stale = clock.now() - Duration::from_secs(7200);
    leases
        .create(
            &PostParams::default(),
            &lease("clinic-k-hold-stale", "old", stale),
        )
        .await
        .unwrap();
    eventually(WAIT, "the stale hold reported as lapsed", || async {
        let c = condition(&clinics, name, "WorkloadReady").await?;
        (c.status == "True" && c.message.contains("old (Lease clinic-k-hold-stale")).then_some(())
    })
    .await;
    assert_eq!(replicas().await, Some(2));

    let renewed = clock.now();
    leases
        .create(
            &PostParams::default(),
            &lease("clinic-k-hold-hour", "hourly", renewed),
        )
        .await
        .unwrap();
    eventually(WAIT, "held", || async {
        (replicas().await == Some(0)).then_some(())
    })
    .await;
    // An hour on the operator's clock is 30 real seconds.
    eventually(WAIT, "the hour-long hold lapsed", || async {
        (replicas().await == Some(2)).then_some(())
    })
    .await;
    let lapsed_at = clock.now();
    assert!(
        lapsed_at >= renewed + Duration::from_secs(3600),
        "the hold lapsed at {lapsed_at} on the clock, before its hour from {renewed} was up"
    );
    drop(operator);
}
