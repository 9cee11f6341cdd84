//! Test harness: one real environment per test run (etcd, kube-apiserver with RBAC,
//! kube-controller-manager, moto), a namespace per test, and nothing left running.
//!
//! The environment is the one described by the env file named in `OPENEMR_TEST_ENV`
//! (`make test-dev` points it at `make dev-up`'s), else a new one started by
//! `hack/dev-env.sh supervise`, which stops it and removes its directory as soon as this
//! test process exits, however it exits. A shared environment must not have an operator
//! watching the whole cluster (`make demo` runs one): the tests count status writes.
//!
//! The CRDs are installed from the code (server-side apply) once per run.

#![allow(dead_code)]

pub mod clock;
pub mod content;
pub mod faults;
pub mod kubelet;
pub mod mariadb;
pub mod operator;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams, ValidationDirective};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::ApiResource;
use kube::{Api, Client, Config};
use openemr_operator::api::Condition;
use openemr_operator::api::{BackupPolicy, OpenEMRBackup, OpenEMRDeployment, RestoreRequest};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A running environment.
pub struct TestEnv {
    /// The `export` lines of its env file.
    pub vars: BTreeMap<String, String>,
}

static ENV: OnceLock<TestEnv> = OnceLock::new();

/// The operator's default `--audit-region`, where the shared audit trail's stack is.
pub const AUDIT_REGION: &str = "us-east-1";
static PRIVATE_ENV: OnceLock<TestEnv> = OnceLock::new();

/// The environment, started or found on first use, with the CRDs and the operator's RBAC
/// installed.
pub fn env() -> &'static TestEnv {
    ENV.get_or_init(|| {
        let env = TestEnv {
            vars: parse_env_file(&find_or_start()),
        };
        env.install_crds();
        env.ensure_shared_audit_trail();
        env
    })
}

/// An environment of this process's own, never shared, with the operator's RBAC but
/// without the CRDs: for tests of what happens before they are installed.
pub fn private_env_without_crds() -> &'static TestEnv {
    PRIVATE_ENV.get_or_init(|| {
        let env = TestEnv {
            vars: parse_env_file(&start_supervised()),
        };
        env.install_rbac();
        env
    })
}

fn find_or_start() -> PathBuf {
    match std::env::var("OPENEMR_TEST_ENV") {
        Ok(file) => PathBuf::from(file),
        Err(_) => start_supervised(),
    }
}

fn start_supervised() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("openemr-test-env-{}", std::process::id()));
    let failed = dir.with_extension("failed");
    let log =
        std::fs::File::create(dir.with_extension("log")).expect("creating the environment log");
    // Not waited for on purpose: it outlives this process to clean up after it.
    #[allow(clippy::zombie_processes)]
    Command::new("setsid")
        .arg("bash")
        .arg(Path::new(REPO).join("hack/dev-env.sh"))
        .arg("supervise")
        .arg(&dir)
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting hack/dev-env.sh supervise");
    // A cold machine builds the control plane first (minutes); a warm one starts in seconds.
    let deadline = Instant::now() + Duration::from_secs(1800);
    let env_file = dir.join("env");
    while !env_file.exists() {
        if let Ok(why) = std::fs::read_to_string(&failed) {
            panic!("the test environment did not start:\n{why}");
        }
        assert!(
            Instant::now() < deadline,
            "the test environment did not start within 30 minutes; see {}",
            dir.with_extension("log").display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    env_file
}

fn parse_env_file(path: &Path) -> BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut vars = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("export ") else {
            continue;
        };
        let Some((k, v)) = rest.split_once('=') else {
            continue;
        };
        let v = v.replace("$PATH", &std::env::var("PATH").unwrap_or_default());
        vars.insert(k.to_string(), v);
    }
    vars
}

impl TestEnv {
    /// Makes the shared audit trail of moto's default account (as the operator makes it,
    /// through its own code), so that every operator of the tests finds it ready: an
    /// account's steady state, and the same calls for every test whichever runs first.
    /// Its first creation is tested in an account of its own (a clinic with a role).
    pub fn ensure_shared_audit_trail(&self) {
        use openemr_operator::controller::audit::template::{DEFAULT_RETENTION_DAYS, TrailView};
        use openemr_operator::controller::audit::{AuditMode, AuditTrails};
        // Off the caller's runtime (this runs inside tests' own): a thread with its own.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    runtime.block_on(async {
                        let config = self.aws(None).await;
                        let clients = openemr_operator::aws::AwsClients::for_region(
                            &config,
                            AUDIT_REGION,
                            std::sync::Arc::new(openemr_operator::metrics::Metrics::new()),
                        );
                        let trails = AuditTrails::new(
                            AuditMode::Shared {
                                region: AUDIT_REGION.into(),
                                retention_days: DEFAULT_RETENTION_DAYS,
                            },
                            Duration::ZERO,
                            Duration::ZERO,
                        );
                        let deadline = Instant::now() + Duration::from_secs(60);
                        loop {
                            let seen = trails.view(&clients).await;
                            match seen.view {
                                TrailView::Ready { .. } => break,
                                TrailView::Failed(why) => panic!("the shared audit trail: {why}"),
                                TrailView::Pending(_) => {}
                            }
                            assert!(
                                Instant::now() < deadline,
                                "the shared audit trail never got ready"
                            );
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    });
                })
                .join()
                .expect("making the shared audit trail");
        });
    }

    /// `spec.network` (a YAML flow mapping) of a clinic on "the cluster's" network in
    /// `region`: a VPC with two private subnets and a security group in this environment's
    /// moto, made once per process and region (by a CloudFormation stack, as a cluster's own
    /// tooling would). New clinics cannot have a new VPC of their own.
    pub fn cluster_network(&self, region: &str) -> String {
        self.cluster_network_in(None, region)
    }

    /// Like [`TestEnv::cluster_network`], in `account` of moto (through a role there) when
    /// given: a clinic with a role has its network in the role's account.
    pub fn cluster_network_in(&self, account: Option<&str>, region: &str) -> String {
        use std::collections::HashMap;
        use std::sync::Mutex;
        type Made = HashMap<(String, Option<String>, String), String>;
        static MADE: Mutex<Option<Made>> = Mutex::new(None);
        let key = (
            self.var("AWS_ENDPOINT_URL").to_string(),
            account.map(str::to_string),
            region.to_string(),
        );
        // Held while making it: tests of one process asking at once share one network.
        let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(network) = made.get_or_insert_with(HashMap::new).get(&key) {
            return network.clone();
        }
        let network = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on(self.make_cluster_network(account, region))
                })
                .join()
                .expect("making the cluster's network")
        });
        made.get_or_insert_with(HashMap::new)
            .insert(key, network.clone());
        network
    }

    async fn make_cluster_network(&self, account: Option<&str>, region: &str) -> String {
        let template = serde_json::json!({
            "Resources": {
                "Vpc": {"Type": "AWS::EC2::VPC", "Properties": {"CidrBlock": "10.200.0.0/16"}},
                "SubnetA": {"Type": "AWS::EC2::Subnet", "Properties": {
                    "VpcId": {"Ref": "Vpc"}, "CidrBlock": "10.200.0.0/20",
                    "AvailabilityZone": format!("{region}a")}},
                "SubnetB": {"Type": "AWS::EC2::Subnet", "Properties": {
                    "VpcId": {"Ref": "Vpc"}, "CidrBlock": "10.200.16.0/20",
                    "AvailabilityZone": format!("{region}b")}},
                "ClusterSecurityGroup": {"Type": "AWS::EC2::SecurityGroup", "Properties": {
                    "GroupDescription": "cluster nodes", "VpcId": {"Ref": "Vpc"}}},
            },
            "Outputs": {
                "Vpc": {"Value": {"Ref": "Vpc"}},
                "SubnetA": {"Value": {"Ref": "SubnetA"}},
                "SubnetB": {"Value": {"Ref": "SubnetB"}},
                "ClusterSecurityGroup": {"Value": {"Fn::GetAtt": ["ClusterSecurityGroup", "GroupId"]}},
            },
        });
        let config = match account {
            Some(account) => self.aws_in_account(account, region).await,
            None => self.aws(Some(region)).await,
        };
        let cfn = aws_sdk_cloudformation::Client::new(&config);
        let name = format!("test-cluster-network-{}", std::process::id());
        let out = create_stack(&cfn, &name, &template.to_string(), &BTreeMap::new()).await;
        format!(
            "{{existing: {{vpcId: {}, subnetIds: [{}, {}], clusterSecurityGroupId: {}}}}}",
            out["Vpc"], out["SubnetA"], out["SubnetB"], out["ClusterSecurityGroup"]
        )
    }

    /// An AWS SDK configuration in `account` of this environment's moto: the credentials
    /// of a role there, assumed as the operator does.
    pub async fn aws_in_account(&self, account: &str, region: &str) -> aws_config::SdkConfig {
        let base = self.aws(Some(region)).await;
        let assumed = aws_sdk_sts::Client::new(&base)
            .assume_role()
            .role_arn(format!("arn:aws:iam::{account}:role/test-reader"))
            .role_session_name("test")
            .send()
            .await
            .unwrap();
        let c = assumed.credentials().unwrap();
        base.to_builder()
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(
                    aws_credential_types::Credentials::new(
                        c.access_key_id(),
                        c.secret_access_key(),
                        Some(c.session_token().to_string()),
                        None,
                        "test",
                    ),
                ),
            )
            .build()
    }

    /// An AWS SDK configuration against this environment's moto, in `region` (or none:
    /// region-independent, as the operator's base configuration).
    pub async fn aws(&self, region: Option<&str>) -> aws_config::SdkConfig {
        let mut loader = self.aws_loader(self.var("AWS_ENDPOINT_URL"));
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region.to_string()));
        }
        loader.load().await
    }

    /// The operator's configuration loader with this environment's credentials, against
    /// `endpoint` (moto, or a fault proxy in front of it).
    pub fn aws_loader(&self, endpoint: &str) -> aws_config::ConfigLoader {
        openemr_operator::aws::base_config_loader()
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                self.var("AWS_ACCESS_KEY_ID"),
                self.var("AWS_SECRET_ACCESS_KEY"),
                None,
                None,
                "test",
            ))
    }

    /// A path-style S3 client (moto serves no virtual-hosted bucket addresses).
    pub fn s3(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(config)
                .force_path_style(true)
                .build(),
        )
    }

    pub fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from the environment file"))
    }

    /// A command with the environment's variables (KUBECONFIG, AWS_*, PATH with kubectl).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(&self.vars);
        cmd
    }

    /// `kubectl` as the admin, failing the test when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self
            .command("kubectl")
            .args(args)
            .output()
            .expect("running kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A client with cluster-admin rights.
    pub async fn admin(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(self.var("KUBECONFIG")).expect("reading kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        Client::try_from(config).expect("client")
    }

    /// Installs the CRDs as the code renders them (server-side apply) and the operator's
    /// RBAC from deploy/, then waits for the CRDs to be Established.
    pub fn install_crds(&self) {
        self.kubectl_stdin(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            &openemr_operator::api::all_crds_yaml().expect("rendering CRDs"),
        );
        self.install_rbac();
        let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        let crds = Self::crd_args();
        args.extend(crds.iter().map(String::as_str));
        self.kubectl(&args);
    }

    /// Installs deploy/namespace.yaml and deploy/rbac.yaml.
    fn install_rbac(&self) {
        let deploy = Path::new(REPO).join("deploy");
        self.kubectl(&[
            "apply",
            "--server-side",
            "-f",
            deploy.join("namespace.yaml").to_str().unwrap(),
            "-f",
            deploy.join("rbac.yaml").to_str().unwrap(),
        ]);
    }

    /// `kubectl` with `input` on its standard input, failing the test when it fails.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> String {
        use std::io::Write;
        let mut child = self
            .command("kubectl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The CRDs' names, as `crd/<name>` arguments for kubectl.
    pub fn crd_args() -> Vec<String> {
        openemr_operator::api::crds()
            .into_iter()
            .map(|c| format!("crd/{}", c.metadata.name.unwrap_or_default()))
            .collect()
    }
}

/// A namespace for one test, deleted when dropped (also when the test panics).
pub struct TestNamespace {
    pub name: String,
    env: &'static TestEnv,
}

static NAMESPACE_SEQ: AtomicU32 = AtomicU32::new(0);

impl TestNamespace {
    pub async fn new(env: &'static TestEnv, prefix: &str) -> TestNamespace {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NAMESPACE_SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))
        .unwrap();
        Api::<Namespace>::all(env.admin().await)
            .create(&PostParams::default(), &ns)
            .await
            .expect("creating the test namespace");
        TestNamespace { name, env }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = self
            .env
            .command("kubectl")
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The API resource of one of this operator's kinds.
pub fn api_resource(kind: &str) -> ApiResource {
    match kind {
        "OpenEMRDeployment" => ApiResource::erase::<OpenEMRDeployment>(&()),
        "BackupPolicy" => ApiResource::erase::<BackupPolicy>(&()),
        "OpenEMRBackup" => ApiResource::erase::<OpenEMRBackup>(&()),
        "RestoreRequest" => ApiResource::erase::<RestoreRequest>(&()),
        other => panic!("not a kind of this operator: {other}"),
    }
}

/// The YAML documents of a manifest file (comments and empty documents skipped).
pub fn documents(yaml: &str) -> Vec<serde_json::Value> {
    yaml.split("\n---")
        .filter_map(|doc| {
            let v: serde_json::Value = serde_yaml_ng::from_str(doc).expect("manifest YAML");
            (!v.is_null()).then_some(v)
        })
        .collect()
}

/// Server-side applies one object, as `kubectl apply --server-side` does, with strict field
/// validation (unknown fields are errors).
pub async fn apply(
    client: &Client,
    namespace: &str,
    doc: &serde_json::Value,
) -> Result<DynamicObject, kube::Error> {
    let kind = doc["kind"].as_str().expect("kind");
    let name = doc["metadata"]["name"].as_str().expect("metadata.name");
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &api_resource(kind));
    let mut params = PatchParams::apply("openemr-tests");
    params.field_validation = Some(ValidationDirective::Strict);
    api.patch(name, &params, &Patch::Apply(doc)).await
}

/// Polls `check` every 100 ms until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A bucket's versioning status and its four public-access-block switches.
pub async fn bucket_protection(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
) -> (Option<String>, [Option<bool>; 4]) {
    let versioning = s3
        .get_bucket_versioning()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    // No block configured at all reads as four unset switches.
    let block = s3
        .get_public_access_block()
        .bucket(bucket)
        .send()
        .await
        .ok();
    let block = block
        .as_ref()
        .and_then(|b| b.public_access_block_configuration());
    (
        versioning.status().map(|s| s.as_str().to_string()),
        [
            block.and_then(|b| b.block_public_acls()),
            block.and_then(|b| b.ignore_public_acls()),
            block.and_then(|b| b.block_public_policy()),
            block.and_then(|b| b.restrict_public_buckets()),
        ],
    )
}

/// A bucket's default encryption: algorithm and KMS key.
pub async fn bucket_encryption(s3: &aws_sdk_s3::Client, bucket: &str) -> (String, Option<String>) {
    let encryption = s3
        .get_bucket_encryption()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    let rule = &encryption
        .server_side_encryption_configuration()
        .unwrap()
        .rules()[0];
    let default = rule.apply_server_side_encryption_by_default().unwrap();
    (
        default.sse_algorithm().as_str().to_string(),
        default.kms_master_key_id().map(str::to_string),
    )
}

/// Every `openemr_aws_api_calls_total` sample, as (operation, count), summed over outcomes.
pub async fn aws_calls(operator: &operator::Operator) -> std::collections::BTreeMap<String, u64> {
    let (_, body) = operator.get("/metrics").await.expect("metrics");
    let mut calls = std::collections::BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| l.starts_with("openemr_aws_api_calls_total{"))
    {
        let operation = line
            .split("operation=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_string();
        let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        *calls.entry(operation).or_default() += count;
    }
    calls
}

/// Whether an AWS operation changes something.
pub fn is_mutating(operation: &str) -> bool {
    [
        "Create",
        "Modify",
        "Delete",
        "Update",
        "Put",
        "AddTags",
        "RemoveTags",
    ]
    .iter()
    .any(|verb| operation.starts_with(verb))
}

/// Creates a stack with these tags and returns its outputs once it is CREATE_COMPLETE.
pub async fn create_stack(
    cfn: &aws_sdk_cloudformation::Client,
    name: &str,
    body: &str,
    tags: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let tags = tags
        .iter()
        .map(|(k, v)| {
            aws_sdk_cloudformation::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
        })
        .collect();
    cfn.create_stack()
        .stack_name(name)
        .template_body(body)
        .set_tags(Some(tags))
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateStack {name}: {e:?}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let described = cfn
            .describe_stacks()
            .stack_name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeStacks {name}: {e:?}"));
        let stack = &described.stacks()[0];
        match stack.stack_status() {
            Some(aws_sdk_cloudformation::types::StackStatus::CreateComplete) => {
                return stack
                    .outputs()
                    .iter()
                    .map(|o| {
                        (
                            o.output_key().unwrap_or_default().to_string(),
                            o.output_value().unwrap_or_default().to_string(),
                        )
                    })
                    .collect();
            }
            Some(aws_sdk_cloudformation::types::StackStatus::CreateInProgress) => {}
            other => panic!(
                "stack {name} is {other:?}: {:?}",
                stack.stack_status_reason()
            ),
        }
        assert!(Instant::now() < deadline, "stack {name} never completed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A clinic on the cluster's network in `region` ([`TestEnv::cluster_network`] of
/// [`env`]); `extra` is more of its spec, as YAML lines indented by two spaces.
pub fn clinic_manifest(name: &str, region: &str, extra: &str) -> serde_json::Value {
    let network = env().cluster_network(region);
    documents(&format!(
        "
apiVersion: openemr.io/v1alpha1
kind: OpenEMRDeployment
metadata: {{name: {name}}}
spec:
  aws: {{region: {region}}}
  network: {network}
  web: {{replicas: 0}}
{extra}
"
    ))
    .remove(0)
}

/// Operator flags that take the AWS budgets out of the way, for tests about something else.
pub const WIDE_BUDGETS: [&str; 8] = [
    "--cloudformation-requests-per-second",
    "1000",
    "--cloudformation-burst",
    "1000",
    "--rds-requests-per-second",
    "1000",
    "--rds-burst",
    "1000",
];

/// The cluster id the operators of this test process run with: each test process names its
/// AWS resources apart (moto may be shared).
pub fn cluster_id() -> String {
    format!("t{}", std::process::id())
}

/// The names the operators of this test process give a clinic's AWS resources.
pub fn clinic_names(
    ns: &str,
    name: &str,
) -> openemr_operator::controller::deployment::clinic::ClinicNames {
    use openemr_operator::controller::deployment::clinic::{ClinicNames, ClusterId};
    ClinicNames::new(&ClusterId::parse(&cluster_id()).unwrap(), ns, name)
}

/// Makes bucket `name` in `region`, versioned.
pub async fn versioned_bucket(s3: &aws_sdk_s3::Client, name: &str, region: &str) {
    // us-east-1 takes no location constraint.
    let place = (region != "us-east-1").then(|| {
        aws_sdk_s3::types::CreateBucketConfiguration::builder()
            .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(region))
            .build()
    });
    s3.create_bucket()
        .bucket(name)
        .set_create_bucket_configuration(place)
        .send()
        .await
        .unwrap();
    s3.put_bucket_versioning()
        .bucket(name)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
}

/// Every file under `dir` with extension `ext`, sorted.
pub fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(Path::new(REPO).join(dir))
        .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

/// The condition `type_` of object `name`, if it has one yet.
pub async fn condition<K>(api: &Api<K>, name: &str, type_: &str) -> Option<Condition>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let obj = serde_json::to_value(api.get(name).await.ok()?).ok()?;
    let conditions: Vec<Condition> =
        serde_json::from_value(obj["status"]["conditions"].clone()).ok()?;
    conditions.into_iter().find(|c| c.type_ == type_)
}

/// Every condition object `name` shows from now on, in order: a watch sees each write, so a
/// condition that lasts a second is not missed as a poll might miss it. Start it before the
/// operator.
pub struct ConditionTrail {
    seen: std::sync::Arc<std::sync::Mutex<Vec<Condition>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConditionTrail {
    pub fn watch<K>(api: &Api<K>, name: &str) -> Self
    where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + serde::Serialize
            + Send
            + 'static,
    {
        use futures::StreamExt;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let config =
            kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}"));
        let stream = kube::runtime::watcher(api.clone(), config);
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let objects = match event {
                    Ok(kube::runtime::watcher::Event::Apply(o))
                    | Ok(kube::runtime::watcher::Event::InitApply(o)) => vec![o],
                    _ => continue,
                };
                for object in objects {
                    let Ok(value) = serde_json::to_value(&object) else {
                        continue;
                    };
                    let conditions: Vec<Condition> =
                        serde_json::from_value(value["status"]["conditions"].clone())
                            .unwrap_or_default();
                    let mut seen = sink.lock().unwrap();
                    for c in conditions {
                        if !seen.contains(&c) {
                            seen.push(c);
                        }
                    }
                }
            }
        });
        ConditionTrail { seen, task }
    }

    /// Waits (up to 60 s) until condition `type_` has shown `reason`, and returns it as shown.
    pub async fn wait_for(&self, type_: &str, reason: &str) -> Condition {
        eventually(
            Duration::from_secs(60),
            &format!("{type_} reason {reason}"),
            || async {
                self.seen
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|c| c.type_ == type_ && c.reason == reason)
                    .cloned()
            },
        )
        .await
    }
}

impl Drop for ConditionTrail {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits (up to 60 s) until condition `type_` of `name` has `reason`.
pub async fn wait_for_reason<K>(api: &Api<K>, name: &str, type_: &str, reason: &str) -> Condition
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    eventually(
        Duration::from_secs(60),
        &format!("{name}: {type_} reason {reason}"),
        || async {
            condition(api, name, type_)
                .await
                .filter(|c| c.reason == reason)
        },
    )
    .await
}

/// Waits (up to 30 s) for a Warning Event with `reason` about object `name`.
pub async fn warning_event(client: &Client, namespace: &str, name: &str, reason: &str) -> Event {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    eventually(
        Duration::from_secs(30),
        &format!("a Warning Event {reason} for {name}"),
        || async {
            let list = events.list(&Default::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
        },
    )
    .await
}
