//! The clinic's stack template, checked by real tools (and the operator's image definition,
//! by hadolint and checkov: the last test).
//!
//! Every example clinic and the variants that change the template's shape are rendered and
//! linted with cfn-lint (AWS's resource specifications: types, properties, values, tag
//! shapes) and checkov (security policies: encryption, public access, TLS, logging). Both
//! come from `hack/install-linters.sh`; a missing tool fails the test, it never skips.
//! Checkov checks that do not apply are listed, each with its reason, in
//! `hack/checkov-skips.yaml`.
//!
//! Then the rendered stack is created, unchanged, in moto, with the clinic's tags as the
//! stack's tags as the operator creates it: two clinics with new VPCs side by side in one
//! region, and one on an existing network. Moto models the key, bucket, network, security
//! group, RDS groups and EFS, and with `hack/moto_extras.py` (which `hack/dev-env.sh` loads)
//! the ElastiCache subnet group and replication group, the names of the RDS groups, the
//! bucket's versioning and public access block, and the zones of the stack's region; it
//! skips the bucket policy. The shared audit trail's stack is linted with them. Every output the operator reads must be there,
//! the Redis endpoint included.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use openemr_operator::api::OpenEMRDeploymentSpec;
use openemr_operator::controller::audit::template as audit;
use openemr_operator::controller::deployment::clinic::{self, ClinicNames, ClusterId};
use openemr_operator::controller::deployment::infra::template::{self, RenderedStack, StackInputs};
use serde_json::Value;
use support::{REPO, documents, env, files};

/// A clinic to render: a label (the file name), where its names come from, and its spec.
struct Clinic {
    label: String,
    names: ClinicNames,
    tags: BTreeMap<String, String>,
    spec: OpenEMRDeploymentSpec,
    /// Render the clinic's own trail, which a clinic made before the shared audit trail
    /// keeps until that is ready.
    clinic_trail: bool,
}

impl Clinic {
    fn new(cluster: &str, label: &str, spec: OpenEMRDeploymentSpec) -> Clinic {
        let cluster = ClusterId::parse(cluster).unwrap();
        Clinic {
            label: label.to_string(),
            names: ClinicNames::new(&cluster, "clinics", label),
            tags: clinic::tags(&cluster, "clinics", label, "uid-1", &spec.tags),
            spec,
            clinic_trail: false,
        }
    }

    fn render(&self) -> RenderedStack {
        template::render(&StackInputs {
            names: &self.names,
            tags: &self.tags,
            spec: &self.spec,
            clinic_trail: self.clinic_trail,
        })
    }
}

fn spec(yaml: &str) -> OpenEMRDeploymentSpec {
    serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

const EXISTING: &str = "
aws: {region: us-west-2}
network:
  existing:
    vpcId: vpc-0a1b2c3d4e5f60718
    subnetIds: [subnet-0a1b2c3d4e5f60718, subnet-1a2b3c4d5e6f70819]
    clusterSecurityGroupId: sg-0a1b2c3d4e5f60718
";

/// Every OpenEMRDeployment in `examples/`, and the variants that change the template.
fn clinics() -> Vec<Clinic> {
    let mut out = Vec::new();
    for file in files("examples", "yaml") {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in documents(&text) {
            if doc["kind"] != "OpenEMRDeployment" {
                continue;
            }
            let name = doc["metadata"]["name"].as_str().unwrap();
            let spec = serde_json::from_value(doc["spec"].clone())
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            out.push(Clinic::new("ci", &format!("example-{name}"), spec));
        }
    }
    assert!(out.len() >= 2, "examples/ holds at least two clinics");
    let variants = [
        (
            "new-vpc-3az",
            "aws: {region: eu-west-1}\nnetwork: {newVpc: {cidr: 10.42.0.0/16, availabilityZones: 3}}".to_string(),
        ),
        ("existing-network", EXISTING.to_string()),
        (
            "adopted-bucket",
            format!("{EXISTING}adopt: {{bucketName: hospital-records-archive}}\n"),
        ),
        ("audit-off", format!("{EXISTING}audit: {{cloudTrail: false}}\n")),
        (
            "adopted-bucket-audit-off",
            format!("{EXISTING}adopt: {{bucketName: hospital-records-archive}}\naudit: {{cloudTrail: false}}\n"),
        ),
        (
            "provisioned-efs",
            format!("{EXISTING}documents: {{throughputMode: Provisioned, provisionedThroughputMiBps: 128}}\n"),
        ),
        ("bursting-efs", format!("{EXISTING}documents: {{throughputMode: Bursting}}\n")),
        (
            "redis-replicas",
            format!("{EXISTING}sessions: {{nodeType: cache.r7g.large, replicas: 2}}\n"),
        ),
        (
            "mysql-8-4",
            format!("{EXISTING}database: {{engineVersion: '8.4'}}\ntags: {{cost-center: clinics, environment: production}}\n"),
        ),
    ];
    for (label, yaml) in variants {
        out.push(Clinic::new("ci", label, spec(&yaml)));
    }
    for (label, yaml) in [
        ("clinic-trail", EXISTING.to_string()),
        (
            "adopted-bucket-clinic-trail",
            format!("{EXISTING}adopt: {{bucketName: hospital-records-archive}}\n"),
        ),
    ] {
        let mut clinic = Clinic::new("ci", label, spec(&yaml));
        clinic.clinic_trail = true;
        out.push(clinic);
    }
    out
}

/// The shared audit trail's stack is checked with the clinics' templates, in its default
/// region.
const AUDIT_LABEL: &str = "shared-audit";
const AUDIT_REGION: &str = "us-east-1";

/// The directory of `hack/install-linters.sh`'s tools, installed on first use.
fn linters() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new("bash")
            .arg(Path::new(REPO).join("hack/install-linters.sh"))
            .output()
            .expect("running hack/install-linters.sh");
        assert!(
            out.status.success(),
            "hack/install-linters.sh failed; the template cannot be checked without cfn-lint and checkov:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        for tool in ["cfn-lint", "checkov", "hadolint"] {
            assert!(bin.join(tool).is_file(), "{tool} missing from {}", bin.display());
        }
        bin
    })
}

/// Writes every clinic's template to a fresh directory.
/// Writes every clinic's template and the audit stack's; returns them as (file, label,
/// region).
fn write_templates(purpose: &str) -> (PathBuf, Vec<(PathBuf, String, String)>) {
    let dir = std::env::temp_dir().join(format!(
        "openemr-stack-templates-{purpose}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut written = Vec::new();
    for clinic in clinics() {
        let path = dir.join(format!("{}.json", clinic.label));
        std::fs::write(&path, clinic.render().body).unwrap();
        written.push((path, clinic.label, clinic.spec.aws.region));
    }
    let path = dir.join(format!("{AUDIT_LABEL}.json"));
    std::fs::write(&path, audit::render(audit::DEFAULT_RETENTION_DAYS).body).unwrap();
    written.push((path, AUDIT_LABEL.to_string(), AUDIT_REGION.to_string()));
    (dir, written)
}

/// Errors, warnings and informational findings alike (`--include-checks I`: e.g. a stateful
/// resource without an explicit deletion policy).
#[test]
fn every_template_passes_cfn_lint_without_findings() {
    let bin = linters();
    let (dir, templates) = write_templates("cfn-lint");
    let mut findings = Vec::new();
    for (path, label, region) in &templates {
        // In the clinic's own region: what exists (node types, engine families) varies.
        let out = Command::new(bin.join("cfn-lint"))
            .args(["--format", "json", "--include-checks", "I"])
            .args(["--regions", region, "--"])
            .arg(path)
            .output()
            .expect("running cfn-lint");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let matches: Vec<Value> = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "cfn-lint gave no JSON for {} ({e}):\n{stdout}\n{}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        for m in matches {
            findings.push(format!(
                "{}: {} {} at {}: {}",
                label,
                m["Level"].as_str().unwrap_or("?"),
                m["Rule"]["Id"].as_str().unwrap_or("?"),
                m["Location"]["Path"],
                m["Message"].as_str().unwrap_or("?"),
            ));
        }
        assert!(
            out.status.success() || !findings.is_empty(),
            "cfn-lint failed on {} without findings: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        findings.is_empty(),
        "cfn-lint findings:\n{}",
        findings.join("\n")
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// One skipped checkov check and why.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Skip {
    id: String,
    reason: String,
}

/// Runs checkov's `framework` checks over `dir`, skipping what `skips_file` lists (each
/// skip with a real reason), and fails on any finding. Returns the number of resources seen.
fn checkov_finds_nothing(framework: &str, dir: &Path, skips_file: &str) -> u64 {
    let bin = linters();
    let skips: Vec<Skip> = serde_yaml_ng::from_str(
        &std::fs::read_to_string(Path::new(REPO).join(skips_file)).unwrap(),
    )
    .unwrap_or_else(|e| panic!("{skips_file}: a list of {{id, reason}}: {e}"));
    for skip in &skips {
        assert!(
            skip.id.starts_with("CKV") && skip.reason.trim().len() > 40,
            "{}: every skip needs a check id and a real reason",
            skip.id
        );
    }
    let skip_ids: Vec<&str> = skips.iter().map(|s| s.id.as_str()).collect();
    let mut cmd = Command::new(bin.join("checkov"));
    cmd.args(["--framework", framework, "--compact", "--quiet"])
        .args(["-o", "json", "--skip-download"])
        .arg("-d")
        .arg(dir);
    if !skip_ids.is_empty() {
        cmd.args(["--skip-check", &skip_ids.join(",")]);
    }
    // Offline and quiet: no version check, no telemetry.
    let out = cmd
        .env("BC_SKIP_MAPPING", "TRUE")
        .env("CHECKOV_RUN_SCA_PACKAGE_SCAN_V2", "false")
        .output()
        .expect("running checkov");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "checkov gave no JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let summary = &report["summary"];
    assert_eq!(
        summary["parsing_errors"], 0,
        "checkov could not parse: {summary}"
    );
    assert!(summary["passed"].as_u64().unwrap_or(0) > 0, "{summary}");
    let failed: Vec<String> = report["results"]["failed_checks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    format!(
                        "{} {} on {} in {}",
                        c["check_id"].as_str().unwrap_or("?"),
                        c["check_name"].as_str().unwrap_or("?"),
                        c["resource"].as_str().unwrap_or("?"),
                        c["file_path"].as_str().unwrap_or("?"),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        failed.is_empty() && summary["failed"] == 0,
        "checkov failed checks (fix what is rendered, or skip with a reason in {skips_file}):\n{}",
        failed.join("\n")
    );
    summary["resource_count"].as_u64().unwrap_or(0)
}

#[test]
fn every_template_passes_checkov() {
    let (dir, templates) = write_templates("checkov");
    let resources = checkov_finds_nothing("cloudformation", &dir, "hack/checkov-skips.yaml");
    // Each clinic's stack has more than ten resources; the audit stack five.
    assert!(
        resources >= 10 * (templates.len() as u64 - 1) + 5,
        "checkov did not see the templates' resources: {resources}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The example clinic's web tier as the operator renders it (every child, the first setup
/// Job included) passes checkov's Kubernetes checks.
#[test]
fn the_example_clinics_web_tier_passes_checkov() {
    use openemr_operator::controller::deployment::secrets::SecretKey;
    use openemr_operator::controller::deployment::web::WebNames;
    use openemr_operator::controller::deployment::web::render::WebInputs;
    use openemr_operator::controller::deployment::web::scripts::{SetupCredentials, SetupMode};
    let example = support::documents(
        &std::fs::read_to_string(Path::new(REPO).join("examples/clinic.yaml")).unwrap(),
    )
    .remove(0);
    let spec: OpenEMRDeploymentSpec = serde_json::from_value(example["spec"].clone()).unwrap();
    let names = WebNames::new("clinics", "clinic-a");
    let ca = std::fs::read_to_string(Path::new(REPO).join("tests/fixtures/stand-in-mysql-ca.pem"))
        .unwrap();
    let inputs = WebInputs {
        namespace: "clinics",
        uid: "00000000-0000-0000-0000-000000000001",
        names: &names,
        web: &spec.web,
        database_host: "clinic-a.abc.us-east-1.rds.amazonaws.com",
        database_port: 3306,
        database_name: &spec.database.database_name,
        database_user: &spec.database.username,
        database_password: SecretKey::new("clinic-a-db-credentials", "password"),
        redis_host: "master.clinic-a.abc.use1.cache.amazonaws.com",
        redis_password: Some((
            SecretKey::new("clinic-a-redis-auth", "password"),
            "0d1f".into(),
        )),
        file_system_id: "fs-0123456789abcdef0",
        mysql_ca: &ca,
        redis_ca: &ca,
        setup_backoff_limit: 4,
        setup_deadline_seconds: 1800,
    };
    let setup = SetupCredentials {
        master_username: "openemr_admin".into(),
        master_password: SecretKey::new("clinic-a-db-master", "password"),
        admin_username: SecretKey::new("clinic-a-admin", "username"),
        admin_password: SecretKey::new("clinic-a-admin", "password"),
    };
    let mut children = inputs.standing_children();
    children.push(inputs.setup_job(
        &names.setup_job(&spec.web.image, 1),
        1,
        &SetupMode::Install(setup),
    ));
    children.push(inputs.workers(spec.web.replicas));
    let dir = std::env::temp_dir().join(format!("openemr-web-tier-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for c in &children {
        let yaml = serde_yaml_ng::to_string(&c.body).unwrap();
        std::fs::write(dir.join(format!("{}-{}.yaml", c.kind, c.name)), yaml).unwrap();
    }
    let resources = checkov_finds_nothing("kubernetes", &dir, "hack/checkov-kubernetes-skips.yaml");
    assert!(
        resources >= children.len() as u64,
        "checkov did not see every child: {resources} of {}",
        children.len()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A backup set's documents Jobs as the operator renders them pass checkov's Kubernetes
/// checks: the backup Job but for what `hack/checkov-documents-job-skips.yaml` says (root
/// with one capability, to read every file of `sites/`), the prune and copy Jobs with no
/// skip at all.
#[test]
fn the_documents_job_passes_checkov() {
    use openemr_operator::controller::backup::job::{DocumentsJob, Task};
    let backup = DocumentsJob {
        name: "set-1-documents",
        namespace: "clinics",
        set: "set-1",
        set_uid: "00000000-0000-0000-0000-000000000002",
        clinic: "clinic-a",
        task: Task::Backup {
            claim: "clinic-a-sites",
            manifest: "backups/documents/set-1.jsonl.gz",
            previous: Some("backups/documents/set-0.jsonl.gz"),
        },
        image: "registry.example.org/openemr-operator@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        service_account: "openemr-documents",
        region: "us-east-1",
        bucket: "oe-bucket",
        kms_key: Some("arn:aws:kms:us-east-1:123456789012:key/k"),
        backoff_limit: 2,
        deadline_seconds: 21600,
    };
    let mut prune = backup.clone();
    prune.name = "set-1-prune";
    prune.task = Task::Prune {
        manifest: "backups/documents/set-1.jsonl.gz",
    };
    let mut copy = backup.clone();
    copy.name = "set-1-copy";
    copy.kms_key = None;
    copy.task = Task::Copy {
        manifest: "backups/documents/set-1.jsonl.gz",
        to_region: "eu-central-1",
        to_bucket: "oe-bucket-dr",
        to_kms_key: "arn:aws:kms:eu-central-1:123456789012:key/dr",
        previous: Some("backups/documents/set-0.jsonl.gz"),
    };
    // The copy Job is shaped as the prune Job is: the same (empty) skips.
    for (job, skips) in [
        (backup, "hack/checkov-documents-job-skips.yaml"),
        (prune, "hack/checkov-prune-job-skips.yaml"),
        (copy, "hack/checkov-prune-job-skips.yaml"),
    ] {
        let dir = std::env::temp_dir().join(format!("{}-{}", job.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, body) in [
            ("job.yaml", job.render()),
            ("network-policy.yaml", job.network_policy()),
        ] {
            std::fs::write(dir.join(file), serde_yaml_ng::to_string(&body).unwrap()).unwrap();
        }
        let resources = checkov_finds_nothing("kubernetes", &dir, skips);
        assert!(
            resources >= 2,
            "checkov did not see the Job {} and its NetworkPolicy",
            job.name
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// The operator's image definition: hadolint finds nothing (not even style), checkov's
/// Dockerfile checks pass, and it is what `deploy/operator.yaml` expects: a glibc
/// distroless base, the numeric non-root user the Deployment runs as, the binary as the
/// entry point, and a build stage that copies every path the crate's targets need.
#[test]
fn the_operators_image_definition_passes_hadolint_and_checkov_and_fits_its_deployment() {
    let dockerfile_path = Path::new(REPO).join("Dockerfile");
    let out = Command::new(linters().join("hadolint"))
        .args(["--failure-threshold", "style", "--no-color"])
        .arg(&dockerfile_path)
        .output()
        .expect("running hadolint");
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = std::env::temp_dir().join(format!("openemr-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&dockerfile_path, dir.join("Dockerfile")).unwrap();
    checkov_finds_nothing("dockerfile", &dir, "hack/checkov-dockerfile-skips.yaml");
    std::fs::remove_dir_all(dir).unwrap();

    let dockerfile = std::fs::read_to_string(&dockerfile_path).unwrap();
    let instructions: Vec<(&str, &str)> = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let stages: Vec<&str> = instructions
        .iter()
        .filter(|(i, _)| *i == "FROM")
        .map(|(_, rest)| *rest)
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and the image: {stages:?}");
    assert!(
        stages[1].starts_with("gcr.io/distroless/cc-"),
        "glibc distroless: {}",
        stages[1]
    );
    let last = |name: &str| {
        instructions
            .iter()
            .rev()
            .find(|(i, _)| *i == name)
            .map(|(_, rest)| *rest)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(last("USER"), "65532:65532");
    assert_eq!(last("ENTRYPOINT"), r#"["/usr/local/bin/openemr-operator"]"#);
    let deployment = support::documents(
        &std::fs::read_to_string(Path::new(REPO).join("deploy/operator.yaml")).unwrap(),
    )
    .into_iter()
    .find(|d| d["kind"] == "Deployment")
    .unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["args"][0], "run");
    // The build stage copies what the crate's targets are made of, and .dockerignore keeps
    // none of it out.
    let copied: BTreeSet<&str> = instructions
        .iter()
        .filter(|(i, rest)| *i == "COPY" && !rest.starts_with("--from"))
        .flat_map(|(_, rest)| {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            parts[..parts.len() - 1].to_vec()
        })
        .collect();
    for needed in ["Cargo.toml", "Cargo.lock", "src", "benches", "tests"] {
        assert!(copied.contains(needed), "the build stage lacks {needed}");
    }
    let ignored = std::fs::read_to_string(Path::new(REPO).join(".dockerignore")).unwrap();
    for line in ignored.lines().filter(|l| !l.starts_with('#')) {
        let pattern = line.trim().trim_end_matches('/');
        assert!(
            !copied.contains(pattern),
            ".dockerignore keeps out {pattern}, which the build copies"
        );
    }
}

async fn sdk_config(region: &str) -> aws_config::SdkConfig {
    env().aws(Some(region)).await
}

/// Creates the clinic's stack in moto, checks what it reports and what it made, and returns
/// its outputs.
async fn clinic_stack_in_moto(clinic: &Clinic, region: &str) -> BTreeMap<String, String> {
    let config = sdk_config(region).await;
    let cfn = aws_sdk_cloudformation::Client::new(&config);
    let rendered = clinic.render();
    let outputs =
        support::create_stack(&cfn, &clinic.names.stack, &rendered.body, &clinic.tags).await;

    for key in template::OUTPUTS {
        assert!(
            outputs.get(*key).is_some_and(|v| !v.is_empty()),
            "output {key} missing: {outputs:?}"
        );
    }
    assert_eq!(outputs[template::OUT_TEMPLATE_HASH], rendered.hash);
    assert_eq!(outputs[template::OUT_BUCKET], clinic.names.bucket);
    assert!(
        outputs[template::OUT_KMS_KEY_ARN].starts_with(&format!("arn:aws:kms:{region}:")),
        "{outputs:?}"
    );
    assert!(
        outputs[template::OUT_FILE_SYSTEM_ID].starts_with("fs-"),
        "{outputs:?}"
    );
    assert!(
        outputs[template::OUT_SECURITY_GROUP].starts_with("sg-"),
        "{outputs:?}"
    );
    // The replication group's primary endpoint, made by moto's ElastiCache.
    assert!(
        outputs[template::OUT_REDIS_ADDRESS].ends_with(".cache.amazonaws.com"),
        "{outputs:?}"
    );
    assert_eq!(
        outputs[template::OUT_REDIS_PORT],
        template::REDIS_PORT.to_string()
    );

    // The stack carries the clinic's tags, for CloudFormation to put on every resource.
    let described = cfn
        .describe_stacks()
        .stack_name(&clinic.names.stack)
        .send()
        .await
        .unwrap();
    let stack_tags: BTreeMap<String, String> = described.stacks()[0]
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(stack_tags, clinic.tags);

    // The bucket: versioned, private, encrypted by default with the clinic's key.
    let s3 = support::TestEnv::s3(&config);
    let bucket = &clinic.names.bucket;
    assert_eq!(
        support::bucket_protection(&s3, bucket).await,
        (Some("Enabled".to_string()), [Some(true); 4])
    );
    assert_eq!(
        support::bucket_encryption(&s3, bucket).await,
        (
            "aws:kms".to_string(),
            Some(outputs[template::OUT_KMS_KEY_ARN].clone())
        )
    );

    // One mount target per subnet.
    let resources = cfn
        .describe_stack_resources()
        .stack_name(&clinic.names.stack)
        .send()
        .await
        .unwrap();
    let mount_targets = resources
        .stack_resources()
        .iter()
        .filter(|r| r.resource_type() == Some("AWS::EFS::MountTarget"))
        .count();
    let subnets = match &clinic.spec.network.existing {
        Some(existing) => existing.subnet_ids.len(),
        None => {
            clinic
                .spec
                .network
                .new_vpc
                .as_ref()
                .unwrap()
                .availability_zones as usize
        }
    };
    assert_eq!(mount_targets, subnets);

    // The database's subnets, one per zone of the clinic's region.
    let rds = aws_sdk_rds::Client::new(&config);
    let groups = rds
        .describe_db_subnet_groups()
        .db_subnet_group_name(&outputs[template::OUT_DB_SUBNET_GROUP])
        .send()
        .await
        .unwrap();
    let zones: BTreeSet<&str> = groups.db_subnet_groups()[0]
        .subnets()
        .iter()
        .map(|s| {
            s.subnet_availability_zone()
                .and_then(|z| z.name())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(zones.len(), subnets, "{zones:?}");
    for zone in zones {
        assert!(zone.starts_with(region), "{zone} is not in {region}");
    }
    let parameters = rds
        .describe_db_parameter_groups()
        .db_parameter_group_name(&outputs[template::OUT_DB_PARAMETER_GROUP])
        .send()
        .await
        .unwrap();
    assert_eq!(
        parameters.db_parameter_groups()[0].db_parameter_group_family(),
        Some(template::parameter_group_family(&clinic.spec.database.engine_version).as_str())
    );
    outputs
}

/// A cluster id of this test run, so that names never meet those of an earlier run.
fn run_cluster() -> String {
    format!("t{}", std::process::id())
}

/// Many clinics share an account and a region: their stacks have the same logical ids
/// (and here even the same VPC block) and must not meet.
#[tokio::test]
async fn new_vpc_clinic_stacks_create_side_by_side_in_moto() {
    let region = "eu-west-1";
    let clinic = |label: &str, team: &str| {
        Clinic::new(
            &run_cluster(),
            label,
            spec(&format!(
                "aws: {{region: {region}}}\nnetwork: {{newVpc: {{cidr: 10.60.0.0/16, availabilityZones: 3}}}}\ntags: {{team: {team}}}"
            )),
        )
    };
    let (a, b) = (clinic("new-vpc-a", "north"), clinic("new-vpc-b", "south"));
    let (a, b) = tokio::join!(
        clinic_stack_in_moto(&a, region),
        clinic_stack_in_moto(&b, region)
    );
    for key in template::OUTPUTS {
        if *key != template::OUT_REDIS_PORT {
            assert_ne!(a[*key], b[*key], "{key}");
        }
    }
}

#[tokio::test]
async fn an_existing_network_clinic_stack_creates_in_moto() {
    let region = "us-west-2";
    // The cluster's network, made the way a cluster's own tooling would.
    let network = env().cluster_network(region);
    let clinic = Clinic::new(
        &run_cluster(),
        "existing",
        spec(&format!("aws: {{region: {region}}}\nnetwork: {network}\n")),
    );
    clinic_stack_in_moto(&clinic, region).await;
}
