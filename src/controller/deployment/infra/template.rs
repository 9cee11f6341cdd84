//! The clinic's supporting CloudFormation stack, rendered as JSON by a pure function.
//!
//! This module owns what the stack holds — the clinic's KMS key and alias, its bucket and
//! bucket policy, the clinic's own CloudTrail trail into that bucket while a clinic made
//! before the shared audit trail waits for it, the network pieces (a new VPC or the
//! existing subnets), the security group, the RDS subnet and parameter groups, the EFS file
//! system and its mount targets, the Redis replication group — and the names of the outputs
//! the controller reads back. The RDS instance is not here: it is driven through the RDS
//! API so that no stack update can ever replace it.
//!
//! The template has no `Parameters`: everything is rendered inline from the spec, so
//! nothing secret can be echoed by `DescribeStacks`, and the output `TemplateHash` lets the
//! controller tell from `DescribeStacks` alone whether the stack already has this template.
//! The body is JSON (not YAML) because the AWS emulator used in tests breaks on YAML short
//! forms, and because JSON with sorted keys is byte-stable for the same input.
//!
//! No resource here carries `Tags`: the clinic's tags are the stack's tags (`Tags` of
//! `CreateStack`/`UpdateStack`), which CloudFormation puts on every resource of the stack
//! that takes tags. Repeating 40 tags of up to 384 bytes on every resource would not fit
//! the 51,200 bytes of an inline `TemplateBody`. So that a change of tags still changes the
//! template (and so its hash, and so triggers the update that retags), the template's
//! `Metadata` holds a digest of the tags under [`METADATA_TAGS_DIGEST`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::OpenEMRDeploymentSpec;
use crate::api::deployment::ThroughputMode;
use crate::controller::deployment::clinic::{self, ClinicNames};

/// Output: ARN of the clinic's KMS key.
pub const OUT_KMS_KEY_ARN: &str = "KmsKeyArn";
/// Output: name of the clinic's bucket (the adopted one when `spec.adopt.bucketName` is set).
pub const OUT_BUCKET: &str = "BucketName";
/// Output: id of the EFS file system (`fs-…`).
pub const OUT_FILE_SYSTEM_ID: &str = "FileSystemId";
/// Output: host name of the Redis primary endpoint.
pub const OUT_REDIS_ADDRESS: &str = "RedisAddress";
/// Output: port of the Redis primary endpoint.
pub const OUT_REDIS_PORT: &str = "RedisPort";
/// Output: ARN of the Secrets Manager secret holding the Redis AUTH token.
pub const OUT_REDIS_AUTH_SECRET: &str = "RedisAuthSecretArn";
/// Output: name of the RDS DB subnet group.
pub const OUT_DB_SUBNET_GROUP: &str = "DbSubnetGroupName";
/// Output: id of the security group of the database, file system and cache.
pub const OUT_SECURITY_GROUP: &str = "SecurityGroupId";
/// Output: name of the RDS DB parameter group.
pub const OUT_DB_PARAMETER_GROUP: &str = "DbParameterGroupName";
/// Output: [`RenderedStack::hash`] of the template that made the stack.
pub const OUT_TEMPLATE_HASH: &str = "TemplateHash";

/// Key, in the template's top-level `Metadata`, of [`tags_digest`] of the stack's tags.
pub const METADATA_TAGS_DIGEST: &str = "openemr.io/tags-digest";

/// Every output a complete stack has.
pub const OUTPUTS: &[&str] = &[
    OUT_KMS_KEY_ARN,
    OUT_BUCKET,
    OUT_FILE_SYSTEM_ID,
    OUT_REDIS_ADDRESS,
    OUT_REDIS_PORT,
    OUT_REDIS_AUTH_SECRET,
    OUT_DB_SUBNET_GROUP,
    OUT_SECURITY_GROUP,
    OUT_DB_PARAMETER_GROUP,
    OUT_TEMPLATE_HASH,
];

/// Ports the data stores listen on; the security group admits these and nothing else.
pub const MYSQL_PORT: u16 = 3306;
pub const NFS_PORT: u16 = 2049;
pub const REDIS_PORT: u16 = 6379;

/// Redis engine version: pinned so that the template, not the AWS default of the day,
/// decides what runs (minor upgrades are still applied by ElastiCache).
const REDIS_ENGINE_VERSION: &str = "7.1";

// Logical ids. Renaming one replaces the resource, so they never change.
const KEY: &str = "Key";
const KEY_ALIAS: &str = "KeyAlias";
const BUCKET: &str = "Bucket";
const BUCKET_POLICY: &str = "BucketPolicy";
const TRAIL: &str = "Trail";
const VPC: &str = "Vpc";
const ROUTE_TABLE: &str = "PrivateRouteTable";
const SECURITY_GROUP: &str = "SecurityGroup";
const DB_SUBNET_GROUP: &str = "DbSubnetGroup";
const DB_PARAMETER_GROUP: &str = "DbParameterGroup";
const FILE_SYSTEM: &str = "FileSystem";
const CACHE_SUBNET_GROUP: &str = "CacheSubnetGroup";
const REDIS: &str = "Redis";
const REDIS_AUTH: &str = "RedisAuthToken";
/// Length of the generated Redis AUTH token (ElastiCache takes 16 to 128 characters).
pub const REDIS_AUTH_TOKEN_LENGTH: u32 = 64;

/// What the template is rendered from.
pub struct StackInputs<'a> {
    pub names: &'a ClinicNames,
    /// Every tag of the clinic, from [`clinic::tags`]. The template holds only their digest:
    /// the stack is created and updated with these as its tags.
    pub tags: &'a BTreeMap<String, String>,
    pub spec: &'a OpenEMRDeploymentSpec,
    /// Keep the clinic's own CloudTrail trail into its bucket, as operators before the
    /// shared audit trail made it: only until the shared trail is ready, so the logs have
    /// no gap (see [`crate::controller::audit`]).
    pub clinic_trail: bool,
}

/// A rendered template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedStack {
    /// The template, compact JSON, to send as `TemplateBody`.
    pub body: String,
    /// Hex SHA-256 of the template rendered without the `TemplateHash` output (which then
    /// carries it): equal hashes mean equal templates.
    pub hash: String,
}

/// A spec the template cannot be rendered faithfully from. Admission rejects all of these;
/// [`check`] names them so that a spec that got around admission gets a clear condition.
/// [`render`] never fails: what it cannot render is left for CloudFormation to reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("spec.network must set exactly one of existing or newVpc")]
    NetworkChoice,
    #[error("spec.network.newVpc.cidr {0:?} is not an IPv4 CIDR block from /16 to /24")]
    VpcCidr(String),
    #[error("spec.network.newVpc.availabilityZones must be 2 or 3, not {0}")]
    AvailabilityZones(i32),
    #[error(
        "spec.documents.provisionedThroughputMiBps is required with throughputMode: Provisioned"
    )]
    ProvisionedThroughput,
}

impl TemplateError {
    /// Stable reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        "InvalidSpec"
    }
}

/// `mysql8.0` for `8.0` and `8.0.40`: RDS parameter group families are per major.minor.
pub fn parameter_group_family(engine_version: &str) -> String {
    let major_minor: Vec<&str> = engine_version.split('.').take(2).collect();
    format!("mysql{}", major_minor.join("."))
}

/// The subnets of a new VPC: the VPC's block split into four blocks two bits longer, the
/// first `zones` of them used (one per zone), the last kept free for later growth. Returns
/// the normalised VPC block and the subnet blocks.
pub fn new_vpc_subnets(cidr: &str, zones: i32) -> Result<(String, Vec<String>), TemplateError> {
    let bad = || TemplateError::VpcCidr(cidr.to_string());
    let (addr, prefix) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u32 = prefix.parse().map_err(|_| bad())?;
    if !(16..=24).contains(&prefix) {
        return Err(bad());
    }
    if !(2..=3).contains(&zones) {
        return Err(TemplateError::AvailabilityZones(zones));
    }
    let mask = u32::MAX << (32 - prefix);
    let base = u32::from(addr) & mask;
    let sub_prefix = prefix + 2;
    let size = 1u32 << (32 - sub_prefix);
    let subnets = (0..zones as u32)
        .map(|i| format!("{}/{sub_prefix}", Ipv4Addr::from(base + i * size)))
        .collect();
    Ok((format!("{}/{prefix}", Ipv4Addr::from(base)), subnets))
}

/// What in `spec` the template cannot be rendered from, if anything.
pub fn check(spec: &OpenEMRDeploymentSpec) -> Result<(), TemplateError> {
    match (&spec.network.existing, &spec.network.new_vpc) {
        (Some(_), None) => {}
        (None, Some(new)) => {
            new_vpc_subnets(&new.cidr, new.availability_zones)?;
        }
        _ => return Err(TemplateError::NetworkChoice),
    }
    if spec.documents.throughput_mode == ThroughputMode::Provisioned
        && spec.documents.provisioned_throughput_mi_bps.is_none()
    {
        return Err(TemplateError::ProvisionedThroughput);
    }
    Ok(())
}

/// Renders the stack of one clinic. Same input, byte-identical output.
pub fn render(inputs: &StackInputs) -> RenderedStack {
    hashed(template(inputs))
}

/// A template with its [`OUT_TEMPLATE_HASH`] output added: the hash of the template
/// without it.
pub fn hashed(mut template: Value) -> RenderedStack {
    let unhashed = template.to_string();
    let hash = clinic::hex(&Sha256::digest(unhashed.as_bytes()));
    template["Outputs"][OUT_TEMPLATE_HASH] = json!({
        "Description": "SHA-256 of this template without this output; the operator compares it to decide whether the stack needs an update",
        "Value": hash,
    });
    RenderedStack {
        body: template.to_string(),
        hash,
    }
}

/// Where the data stores go and who may reach them.
struct Network {
    /// `VpcId` of the security group.
    vpc_id: Value,
    /// One `SubnetId` per zone.
    subnet_ids: Vec<Value>,
    /// How the security group names the clients it admits.
    source: Source,
}

enum Source {
    SecurityGroup(String),
    Cidr(String),
}

fn template(inputs: &StackInputs) -> Value {
    let spec = inputs.spec;
    let names = inputs.names;
    let audit = inputs.clinic_trail;
    let adopted_bucket = spec.adopt.as_ref().and_then(|a| a.bucket_name.clone());

    let mut resources = serde_json::Map::new();
    resources.insert(KEY.into(), kms_key(inputs, audit));
    resources.insert(
        KEY_ALIAS.into(),
        json!({
            "Type": "AWS::KMS::Alias",
            "Properties": {"AliasName": names.kms_alias, "TargetKeyId": {"Ref": KEY}},
        }),
    );

    // An adopted bucket keeps its owner's settings and policy: the stack never creates or
    // overwrites either, it only writes the trail there.
    let bucket_name = match &adopted_bucket {
        Some(name) => json!(name),
        None => {
            resources.insert(BUCKET.into(), bucket(inputs));
            resources.insert(BUCKET_POLICY.into(), bucket_policy(inputs, audit));
            json!({"Ref": BUCKET})
        }
    };
    if audit {
        let mut trail = json!({
            "Type": "AWS::CloudTrail::Trail",
            "Properties": {
                "TrailName": names.trail,
                "S3BucketName": bucket_name,
                "KMSKeyId": {"Fn::GetAtt": [KEY, "Arn"]},
                "EnableLogFileValidation": true,
                "IsLogging": true,
                // Backups are copied to other regions; their API calls are the clinic's too.
                "IsMultiRegionTrail": true,
                "IncludeGlobalServiceEvents": true,
            },
        });
        if adopted_bucket.is_none() {
            // CloudTrail checks at creation that the bucket policy lets it write.
            trail["DependsOn"] = json!([BUCKET_POLICY]);
        }
        resources.insert(TRAIL.into(), trail);
    }

    let network = network(inputs, &mut resources);
    let sg = json!({"Ref": SECURITY_GROUP});
    resources.insert(SECURITY_GROUP.into(), security_group(&network));
    resources.insert(
        DB_SUBNET_GROUP.into(),
        json!({
            "Type": "AWS::RDS::DBSubnetGroup",
            "Properties": {
                "DBSubnetGroupDescription": format!("Subnets of the database of OpenEMR clinic {}", names.stack),
                "SubnetIds": network.subnet_ids,
            },
        }),
    );
    resources.insert(
        DB_PARAMETER_GROUP.into(),
        json!({
            "Type": "AWS::RDS::DBParameterGroup",
            "Properties": {
                "Description": format!("Settings of the database of OpenEMR clinic {}: TLS required", names.stack),
                "Family": parameter_group_family(&spec.database.engine_version),
                "Parameters": {"require_secure_transport": "1"},
            },
        }),
    );
    resources.insert(FILE_SYSTEM.into(), file_system(inputs));
    for (i, subnet) in network.subnet_ids.iter().enumerate() {
        resources.insert(
            format!("MountTarget{i}"),
            json!({
                "Type": "AWS::EFS::MountTarget",
                "Properties": {
                    "FileSystemId": {"Ref": FILE_SYSTEM},
                    "SubnetId": subnet,
                    "SecurityGroups": [sg],
                },
            }),
        );
    }
    resources.insert(
        CACHE_SUBNET_GROUP.into(),
        json!({
            "Type": "AWS::ElastiCache::SubnetGroup",
            "Properties": {
                "Description": format!("Subnets of the session cache of OpenEMR clinic {}", names.stack),
                "SubnetIds": network.subnet_ids,
            },
        }),
    );
    resources.insert(REDIS_AUTH.into(), redis_auth_token(inputs));
    resources.insert(REDIS.into(), redis(inputs));

    let outputs = json!({
        OUT_KMS_KEY_ARN: {"Description": "ARN of the clinic's KMS key", "Value": {"Fn::GetAtt": [KEY, "Arn"]}},
        OUT_BUCKET: {"Description": "The clinic's bucket", "Value": bucket_name},
        OUT_FILE_SYSTEM_ID: {"Description": "EFS file system of OpenEMR's sites/ directory", "Value": {"Ref": FILE_SYSTEM}},
        OUT_REDIS_ADDRESS: {"Description": "Host of the Redis primary endpoint (TLS)", "Value": {"Fn::GetAtt": [REDIS, "PrimaryEndPoint.Address"]}},
        OUT_REDIS_PORT: {"Description": "Port of the Redis primary endpoint", "Value": {"Fn::GetAtt": [REDIS, "PrimaryEndPoint.Port"]}},
        OUT_REDIS_AUTH_SECRET: {"Description": "Secrets Manager secret with the Redis AUTH token", "Value": {"Ref": REDIS_AUTH}},
        OUT_DB_SUBNET_GROUP: {"Description": "RDS DB subnet group of the database", "Value": {"Ref": DB_SUBNET_GROUP}},
        OUT_SECURITY_GROUP: {"Description": "Security group of the database, file system and cache", "Value": {"Fn::GetAtt": [SECURITY_GROUP, "GroupId"]}},
        OUT_DB_PARAMETER_GROUP: {"Description": "RDS DB parameter group of the database", "Value": {"Ref": DB_PARAMETER_GROUP}},
    });

    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!(
            "Supporting resources of OpenEMR clinic {}, managed by openemr-operator: changes made outside the operator are overwritten",
            names.stack
        ),
        "Metadata": {METADATA_TAGS_DIGEST: tags_digest(inputs.tags)},
        "Resources": resources,
        "Outputs": outputs,
    })
}

/// Hex SHA-256 of the tags as a JSON object with sorted keys: the same for the same tags,
/// different for any change of a key or a value.
pub fn tags_digest(tags: &BTreeMap<String, String>) -> String {
    let canonical = serde_json::to_string(tags).expect("a map of strings serializes");
    clinic::hex(&Sha256::digest(canonical.as_bytes()))
}

// Pieces the shared audit stack's template (`controller::audit::template`) uses too.

/// Data-holding resources outlive the stack and any replacement of themselves.
pub(crate) fn retained(mut resource: Value) -> Value {
    resource["DeletionPolicy"] = json!("Retain");
    resource["UpdateReplacePolicy"] = json!("Retain");
    resource
}

pub(crate) fn sub(text: &str) -> Value {
    json!({"Fn::Sub": text})
}

/// The account administers a key (rotation, deletion, policy); using it is granted apart.
pub(crate) fn key_administration() -> Value {
    json!({
        "Sid": "AccountAdministersTheKey",
        "Effect": "Allow",
        "Principal": {"AWS": sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root")},
        "Action": [
            "kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*",
            "kms:Update*", "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*",
            "kms:TagResource", "kms:UntagResource", "kms:ScheduleKeyDeletion",
            "kms:CancelKeyDeletion", "kms:RotateKeyOnDemand",
        ],
        "Resource": "*",
    })
}

/// CloudTrail may encrypt `trail`'s log files with the key (statement `encrypt_sid`), and
/// describe it, for that trail only.
pub(crate) fn cloudtrail_key_statements(trail: &Value, encrypt_sid: &str) -> [Value; 2] {
    [
        json!({
            "Sid": encrypt_sid,
            "Effect": "Allow",
            "Principal": {"Service": "cloudtrail.amazonaws.com"},
            "Action": "kms:GenerateDataKey*",
            "Resource": "*",
            "Condition": {"StringEquals": {
                "aws:SourceArn": trail,
                "kms:EncryptionContext:aws:cloudtrail:arn": trail,
            }},
        }),
        json!({
            "Sid": "CloudTrailDescribesTheKey",
            "Effect": "Allow",
            "Principal": {"Service": "cloudtrail.amazonaws.com"},
            "Action": "kms:DescribeKey",
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:SourceArn": trail}},
        }),
    ]
}

/// A retained bucket named `name`: versioned, SSE-KMS under the key of logical id `key`
/// with bucket keys, public access blocked, ACLs off.
pub(crate) fn private_bucket(name: Value, key: &str) -> Value {
    retained(json!({
        "Type": "AWS::S3::Bucket",
        "Properties": {
            "BucketName": name,
            "VersioningConfiguration": {"Status": "Enabled"},
            "BucketEncryption": {"ServerSideEncryptionConfiguration": [{
                "ServerSideEncryptionByDefault": {
                    "SSEAlgorithm": "aws:kms",
                    "KMSMasterKeyID": {"Fn::GetAtt": [key, "Arn"]},
                },
                "BucketKeyEnabled": true,
            }]},
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": true,
                "BlockPublicPolicy": true,
                "IgnorePublicAcls": true,
                "RestrictPublicBuckets": true,
            },
            "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
        },
    }))
}

/// The bucket of logical id `bucket` and its objects refuse plain HTTP and TLS before 1.2.
pub(crate) fn tls_only(bucket: &str) -> Vec<Value> {
    let bucket_arn = json!({"Fn::GetAtt": [bucket, "Arn"]});
    let objects = sub(&format!("${{{bucket}.Arn}}/*"));
    vec![
        json!({
            "Sid": "DenyPlainHttp",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn, objects],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }),
        json!({
            "Sid": "DenyTlsBefore12",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn, objects],
            "Condition": {"NumericLessThan": {"s3:TlsVersion": "1.2"}},
        }),
    ]
}

/// CloudTrail may check the ACL of the bucket of logical id `bucket` and write `trail`'s
/// log files under `AWSLogs/<account>/` (statement `write_sid`), for that trail only.
pub(crate) fn cloudtrail_bucket_statements(
    bucket: &str,
    trail: &Value,
    write_sid: &str,
) -> [Value; 2] {
    [
        json!({
            "Sid": "CloudTrailChecksTheAcl",
            "Effect": "Allow",
            "Principal": {"Service": "cloudtrail.amazonaws.com"},
            "Action": "s3:GetBucketAcl",
            "Resource": {"Fn::GetAtt": [bucket, "Arn"]},
            "Condition": {"StringEquals": {"aws:SourceArn": trail}},
        }),
        json!({
            "Sid": write_sid,
            "Effect": "Allow",
            "Principal": {"Service": "cloudtrail.amazonaws.com"},
            "Action": "s3:PutObject",
            "Resource": sub(&format!("${{{bucket}.Arn}}/AWSLogs/${{AWS::AccountId}}/*")),
            "Condition": {"StringEquals": {
                "aws:SourceArn": trail,
                "s3:x-amz-acl": "bucket-owner-full-control",
            }},
        }),
    ]
}

fn trail_arn(names: &ClinicNames) -> Value {
    sub(&format!(
        "arn:${{AWS::Partition}}:cloudtrail:${{AWS::Region}}:${{AWS::AccountId}}:trail/{}",
        names.trail
    ))
}

fn kms_key(inputs: &StackInputs, audit: bool) -> Value {
    let root = sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root");
    // The services that keep the clinic's data; the key is usable only through them, so a
    // principal with broad KMS rights still cannot decrypt a backup or a log directly.
    let via: Vec<Value> = [
        "rds",
        "s3",
        "elasticfilesystem",
        "elasticache",
        "secretsmanager",
    ]
    .iter()
    .map(|service| sub(&format!("{service}.${{AWS::Region}}.amazonaws.com")))
    .collect();
    let mut statements = vec![
        key_administration(),
        json!({
            "Sid": "ClinicServicesUseTheKey",
            "Effect": "Allow",
            "Principal": {"AWS": root},
            "Action": [
                "kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                "kms:CreateGrant", "kms:ListGrants", "kms:DescribeKey",
            ],
            "Resource": "*",
            "Condition": {"StringEquals": {
                "kms:CallerAccount": {"Ref": "AWS::AccountId"},
                "kms:ViaService": via,
            }},
        }),
    ];
    if audit {
        statements.extend(cloudtrail_key_statements(
            &trail_arn(inputs.names),
            "CloudTrailEncryptsTheClinicTrail",
        ));
    }
    retained(json!({
        "Type": "AWS::KMS::Key",
        "Properties": {
            "Description": format!("Encrypts the data of OpenEMR clinic {}", inputs.names.stack),
            "EnableKeyRotation": true,
            "KeyPolicy": {"Version": "2012-10-17", "Statement": statements},
        },
    }))
}

/// Days after which an unfinished multipart upload (a documents backup killed mid-file) is
/// aborted and its parts freed.
pub const ABORT_INCOMPLETE_UPLOADS_DAYS: u32 = 7;

/// The clinic's bucket. Its lifecycle only aborts unfinished uploads: nothing may expire a
/// version, since every documents set's manifest references the versions it holds.
fn bucket(inputs: &StackInputs) -> Value {
    let mut bucket = private_bucket(json!(inputs.names.bucket), KEY);
    bucket["Properties"]["LifecycleConfiguration"] = json!({"Rules": [{
        "Id": "AbortIncompleteUploads",
        "Status": "Enabled",
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_INCOMPLETE_UPLOADS_DAYS},
    }]});
    bucket
}

fn bucket_policy(inputs: &StackInputs, audit: bool) -> Value {
    let mut statements = tls_only(BUCKET);
    if audit {
        statements.extend(cloudtrail_bucket_statements(
            BUCKET,
            &trail_arn(inputs.names),
            "CloudTrailWritesTheClinicTrail",
        ));
    }
    json!({
        "Type": "AWS::S3::BucketPolicy",
        "Properties": {
            "Bucket": {"Ref": BUCKET},
            "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
        },
    })
}

/// The existing subnets, or a new VPC with private subnets (no internet gateway: nothing in
/// it needs the internet, and the cluster reaches it by peering or transit).
fn network(inputs: &StackInputs, resources: &mut serde_json::Map<String, Value>) -> Network {
    let net = &inputs.spec.network;
    match (&net.existing, &net.new_vpc) {
        (Some(existing), _) => Network {
            vpc_id: json!(existing.vpc_id),
            subnet_ids: existing.subnet_ids.iter().map(|s| json!(s)).collect(),
            source: Source::SecurityGroup(existing.cluster_security_group_id.clone()),
        },
        (None, Some(new)) => {
            // A block `check` refuses gets no subnets, and CloudFormation refuses the stack.
            let (cidr, subnets) = new_vpc_subnets(&new.cidr, new.availability_zones)
                .unwrap_or_else(|_| (new.cidr.clone(), Vec::new()));
            resources.insert(
                VPC.into(),
                json!({
                    "Type": "AWS::EC2::VPC",
                    "Properties": {
                        "CidrBlock": cidr,
                        "EnableDnsSupport": true,
                        "EnableDnsHostnames": true,
                    },
                }),
            );
            resources.insert(
                ROUTE_TABLE.into(),
                json!({
                    "Type": "AWS::EC2::RouteTable",
                    "Properties": {"VpcId": {"Ref": VPC}},
                }),
            );
            let mut subnet_ids = Vec::new();
            for (i, block) in subnets.iter().enumerate() {
                let id = format!("PrivateSubnet{i}");
                resources.insert(
                    id.clone(),
                    json!({
                        "Type": "AWS::EC2::Subnet",
                        "Properties": {
                            "VpcId": {"Ref": VPC},
                            "CidrBlock": block,
                            "AvailabilityZone": {"Fn::Select": [i, {"Fn::GetAZs": ""}]},
                            "MapPublicIpOnLaunch": false,
                        },
                    }),
                );
                resources.insert(
                    format!("{id}RouteTableAssociation"),
                    json!({
                        "Type": "AWS::EC2::SubnetRouteTableAssociation",
                        "Properties": {"SubnetId": {"Ref": id}, "RouteTableId": {"Ref": ROUTE_TABLE}},
                    }),
                );
                subnet_ids.push(json!({"Ref": id}));
            }
            Network {
                vpc_id: json!({"Ref": VPC}),
                subnet_ids,
                source: Source::Cidr(cidr),
            }
        }
        (None, None) => Network {
            vpc_id: json!(""),
            subnet_ids: Vec::new(),
            source: Source::Cidr(String::new()),
        },
    }
}

fn security_group(network: &Network) -> Value {
    let ingress: Vec<Value> = [
        (MYSQL_PORT, "MySQL (RDS)"),
        (NFS_PORT, "NFS (EFS)"),
        (REDIS_PORT, "Redis (ElastiCache)"),
    ]
    .iter()
    .map(|(port, what)| {
        let mut rule = json!({"IpProtocol": "tcp", "FromPort": port, "ToPort": port});
        match &network.source {
            Source::SecurityGroup(sg) => {
                rule["SourceSecurityGroupId"] = json!(sg);
                rule["Description"] = json!(format!("{what} from the cluster's security group"));
            }
            Source::Cidr(cidr) => {
                rule["CidrIp"] = json!(cidr);
                rule["Description"] = json!(format!("{what} from the clinic's VPC"));
            }
        }
        rule
    })
    .collect();
    json!({
        "Type": "AWS::EC2::SecurityGroup",
        "Properties": {
            "GroupDescription": "OpenEMR clinic data stores: MySQL, NFS and Redis from the cluster only",
            "VpcId": network.vpc_id,
            "SecurityGroupIngress": ingress,
            // The data stores only answer (security groups are stateful); replacing the
            // default allow-all egress with a rule nothing can use leaves no way out.
            "SecurityGroupEgress": [{
                "IpProtocol": "-1",
                "CidrIp": "127.0.0.1/32",
                "Description": "No egress: the data stores never open connections",
            }],
        },
    })
}

fn file_system(inputs: &StackInputs) -> Value {
    let documents = &inputs.spec.documents;
    let mut props = json!({
        "Encrypted": true,
        "KmsKeyId": {"Fn::GetAtt": [KEY, "Arn"]},
        "PerformanceMode": "generalPurpose",
        "BackupPolicy": {"Status": "ENABLED"},
        // Without a policy EFS admits unencrypted NFS; this one admits mounts through the
        // mount targets over TLS only.
        "FileSystemPolicy": {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "MountThroughMountTargets",
                    "Effect": "Allow",
                    "Principal": {"AWS": "*"},
                    "Action": [
                        "elasticfilesystem:ClientMount",
                        "elasticfilesystem:ClientWrite",
                        "elasticfilesystem:ClientRootAccess",
                    ],
                    "Condition": {"Bool": {"elasticfilesystem:AccessedViaMountTarget": "true"}},
                },
                {
                    "Sid": "DenyWithoutTls",
                    "Effect": "Deny",
                    "Principal": {"AWS": "*"},
                    "Action": "*",
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                },
            ],
        },
    });
    match documents.throughput_mode {
        ThroughputMode::Elastic => props["ThroughputMode"] = json!("elastic"),
        ThroughputMode::Bursting => props["ThroughputMode"] = json!("bursting"),
        ThroughputMode::Provisioned => {
            props["ThroughputMode"] = json!("provisioned");
            if let Some(mibps) = documents.provisioned_throughput_mi_bps {
                props["ProvisionedThroughputInMibps"] = json!(mibps);
            }
        }
    }
    retained(json!({"Type": "AWS::EFS::FileSystem", "Properties": props}))
}

/// The Redis AUTH token: generated by Secrets Manager, encrypted with the clinic's key, and
/// handed to the replication group by a dynamic reference, so it is never in the template,
/// its parameters or the operator's memory until the operator copies it for the workers.
/// Letters and digits only: the image puts it in a URL query and a quoted ini value, and
/// ElastiCache allows few other characters. No name: a deleted secret's name stays taken
/// for its recovery window, which would block a clinic re-created under the same name.
fn redis_auth_token(inputs: &StackInputs) -> Value {
    json!({
        "Type": "AWS::SecretsManager::Secret",
        // Sessions only: a new token for a new cache costs users a login.
        "DeletionPolicy": "Delete",
        "UpdateReplacePolicy": "Delete",
        "Properties": {
            "Description": format!("Redis AUTH token of the session cache of OpenEMR clinic {}", inputs.names.stack),
            "KmsKeyId": {"Fn::GetAtt": [KEY, "Arn"]},
            "GenerateSecretString": {
                "PasswordLength": REDIS_AUTH_TOKEN_LENGTH,
                "ExcludePunctuation": true,
            },
        },
    })
}

fn redis(inputs: &StackInputs) -> Value {
    let sessions = &inputs.spec.sessions;
    let failover = sessions.replicas >= 1;
    json!({
        "Type": "AWS::ElastiCache::ReplicationGroup",
        // Sessions are disposable (users log in again); a retained cache would only cost.
        "DeletionPolicy": "Delete",
        "UpdateReplacePolicy": "Delete",
        "Properties": {
            "ReplicationGroupDescription": format!("PHP sessions of OpenEMR clinic {}", inputs.names.stack),
            "Engine": "redis",
            "EngineVersion": REDIS_ENGINE_VERSION,
            "CacheNodeType": sessions.node_type,
            "NumCacheClusters": 1 + sessions.replicas,
            "AutomaticFailoverEnabled": failover,
            "MultiAZEnabled": failover,
            "Port": REDIS_PORT,
            "AtRestEncryptionEnabled": true,
            "KmsKeyId": {"Fn::GetAtt": [KEY, "Arn"]},
            "TransitEncryptionEnabled": true,
            // Resolved by CloudFormation when it calls ElastiCache; the template keeps the
            // reference only.
            "AuthToken": {"Fn::Sub": format!("{{{{resolve:secretsmanager:${{{REDIS_AUTH}}}:SecretString}}}}")},
            "CacheSubnetGroupName": {"Ref": CACHE_SUBNET_GROUP},
            "SecurityGroupIds": [{"Ref": SECURITY_GROUP}],
            "AutoMinorVersionUpgrade": true,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::deployment::{AdoptSpec, NewVpc};
    use crate::controller::deployment::clinic::ClusterId;

    const EXISTING: &str = r#"
aws: {region: us-east-1}
network:
  existing:
    vpcId: vpc-0a1b2c3d4e5f60718
    subnetIds: [subnet-0a1b2c3d4e5f60718, subnet-1a2b3c4d5e6f70819]
    clusterSecurityGroupId: sg-0a1b2c3d4e5f60718
tags: {team: clinics}
"#;
    const NEW_VPC: &str = r#"
aws: {region: eu-central-1}
network:
  newVpc: {cidr: 10.20.0.0/16, availabilityZones: 3}
"#;

    fn spec(yaml: &str) -> OpenEMRDeploymentSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn names() -> ClinicNames {
        ClinicNames::new(&ClusterId::parse("prod").unwrap(), "clinics", "clinic-a")
    }

    fn tags_of(spec: &OpenEMRDeploymentSpec) -> BTreeMap<String, String> {
        clinic::tags(
            &ClusterId::parse("prod").unwrap(),
            "clinics",
            "clinic-a",
            "uid-1",
            &spec.tags,
        )
    }

    /// Rendered with the clinic's own trail when `spec.audit.cloudTrail` is set: the
    /// shape a clinic made before the shared trail keeps until that is ready.
    fn rendered(spec: &OpenEMRDeploymentSpec) -> RenderedStack {
        render(&StackInputs {
            names: &names(),
            tags: &tags_of(spec),
            spec,
            clinic_trail: spec.audit.cloud_trail,
        })
    }

    fn template_of(spec: &OpenEMRDeploymentSpec) -> Value {
        serde_json::from_str(&rendered(spec).body).unwrap()
    }

    fn resources_of_type<'a>(t: &'a Value, kind: &str) -> Vec<(&'a String, &'a Value)> {
        t["Resources"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, r)| r["Type"] == kind)
            .collect()
    }

    fn statements(policy: &Value) -> Vec<&Value> {
        policy["Statement"].as_array().unwrap().iter().collect()
    }

    #[test]
    fn parameter_group_families_follow_major_minor() {
        for (version, family) in [
            ("8.0", "mysql8.0"),
            ("8.0.40", "mysql8.0"),
            ("8.4", "mysql8.4"),
            ("8.4.3", "mysql8.4"),
        ] {
            assert_eq!(parameter_group_family(version), family, "{version}");
        }
    }

    #[test]
    fn new_vpc_subnets_are_quarters_of_the_vpc() {
        let cases: &[(&str, i32, &str, &[&str])] = &[
            (
                "10.0.0.0/16",
                2,
                "10.0.0.0/16",
                &["10.0.0.0/18", "10.0.64.0/18"],
            ),
            (
                "10.20.0.0/16",
                3,
                "10.20.0.0/16",
                &["10.20.0.0/18", "10.20.64.0/18", "10.20.128.0/18"],
            ),
            // Host bits are dropped, as EC2 would refuse them.
            (
                "10.1.2.3/16",
                2,
                "10.1.0.0/16",
                &["10.1.0.0/18", "10.1.64.0/18"],
            ),
            (
                "192.168.5.0/24",
                3,
                "192.168.5.0/24",
                &["192.168.5.0/26", "192.168.5.64/26", "192.168.5.128/26"],
            ),
            (
                "172.16.0.0/20",
                2,
                "172.16.0.0/20",
                &["172.16.0.0/22", "172.16.4.0/22"],
            ),
        ];
        for (cidr, zones, vpc, subnets) in cases {
            let (got_vpc, got) = new_vpc_subnets(cidr, *zones).unwrap();
            assert_eq!(&got_vpc, vpc, "{cidr}");
            assert_eq!(got, *subnets, "{cidr} × {zones}");
        }
        for (cidr, zones) in [
            ("10.0.0.0/8", 2),
            ("10.0.0.0/25", 2),
            ("10.0.0/16", 2),
            ("10.0.0.0", 2),
            ("10.0.0.0/16", 1),
            ("10.0.0.0/16", 4),
        ] {
            assert!(new_vpc_subnets(cidr, zones).is_err(), "{cidr} × {zones}");
        }
    }

    #[test]
    fn check_names_what_admission_would_have_refused() {
        assert_eq!(check(&spec(EXISTING)), Ok(()));
        assert_eq!(check(&spec(NEW_VPC)), Ok(()));
        let mut s = spec(NEW_VPC);
        s.network.new_vpc = Some(NewVpc {
            cidr: "10.0.0.0/8".into(),
            availability_zones: 2,
        });
        assert!(matches!(check(&s), Err(TemplateError::VpcCidr(_))));
        s.network.new_vpc = None;
        assert_eq!(check(&s), Err(TemplateError::NetworkChoice));
        let mut s = spec(EXISTING);
        s.documents.throughput_mode = ThroughputMode::Provisioned;
        assert_eq!(check(&s), Err(TemplateError::ProvisionedThroughput));
        // Still no panic: CloudFormation gets to refuse it.
        let t = template_of(&s);
        assert_eq!(
            t["Resources"][FILE_SYSTEM]["Properties"]["ThroughputMode"],
            "provisioned"
        );
    }

    #[test]
    fn the_template_has_no_parameters_and_every_output() {
        for s in [spec(EXISTING), spec(NEW_VPC)] {
            let t = template_of(&s);
            assert!(t.get("Parameters").is_none());
            let outputs: Vec<&str> = t["Outputs"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let mut expected = OUTPUTS.to_vec();
            expected.sort();
            assert_eq!(outputs, expected);
        }
    }

    #[test]
    fn the_body_is_stable_and_the_hash_covers_it() {
        let s = spec(EXISTING);
        let a = rendered(&s);
        assert_eq!(a, rendered(&s));
        assert_eq!(a.hash.len(), 64);
        // The hash is that of the body without its own output.
        let mut t: Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(t["Outputs"][OUT_TEMPLATE_HASH]["Value"], a.hash.as_str());
        t["Outputs"]
            .as_object_mut()
            .unwrap()
            .remove(OUT_TEMPLATE_HASH);
        assert_eq!(
            clinic::hex(&Sha256::digest(t.to_string().as_bytes())),
            a.hash
        );

        type Change = Box<dyn Fn(&mut OpenEMRDeploymentSpec)>;
        let changes: Vec<(&str, Change)> = vec![
            (
                "node type",
                Box::new(|s| s.sessions.node_type = "cache.r7g.large".into()),
            ),
            ("replicas", Box::new(|s| s.sessions.replicas = 1)),
            (
                "engine",
                Box::new(|s| s.database.engine_version = "8.4".into()),
            ),
            (
                "throughput",
                Box::new(|s| s.documents.throughput_mode = ThroughputMode::Bursting),
            ),
            ("clinic trail", Box::new(|s| s.audit.cloud_trail = false)),
            (
                "tags",
                Box::new(|s| {
                    s.tags.insert("owner".into(), "x".into());
                }),
            ),
        ];
        for (what, change) in changes {
            let mut changed = s.clone();
            change(&mut changed);
            assert_ne!(rendered(&changed).hash, a.hash, "{what}");
        }
        // Settings the stack does not hold leave it alone.
        let mut db_only = s.clone();
        db_only.database.allocated_storage_gi_b = 100;
        db_only.web.replicas = 5;
        assert_eq!(rendered(&db_only), a);
    }

    #[test]
    fn data_holders_are_retained_and_sessions_are_not() {
        for s in [spec(EXISTING), spec(NEW_VPC)] {
            let t = template_of(&s);
            for (id, r) in t["Resources"].as_object().unwrap() {
                let want = match id.as_str() {
                    KEY | BUCKET | FILE_SYSTEM => json!("Retain"),
                    REDIS | REDIS_AUTH => json!("Delete"),
                    _ => Value::Null,
                };
                for policy in ["DeletionPolicy", "UpdateReplacePolicy"] {
                    assert_eq!(r[policy], want, "{id} {policy}");
                }
            }
        }
    }

    #[test]
    fn tags_are_the_stacks_and_the_template_holds_only_their_digest() {
        for s in [spec(EXISTING), spec(NEW_VPC)] {
            let t = template_of(&s);
            // CloudFormation puts the stack's tags on every resource that takes tags.
            for (id, r) in t["Resources"].as_object().unwrap() {
                for key in ["Tags", "FileSystemTags"] {
                    assert!(r["Properties"].get(key).is_none(), "{id} has {key}");
                }
            }
            let tags = tags_of(&s);
            assert_eq!(
                t["Metadata"],
                json!({METADATA_TAGS_DIGEST: tags_digest(&tags)})
            );
            // No tag value is in the body, only their digest.
            for v in tags.values() {
                assert!(!rendered(&s).body.contains(&format!("\"{v}\"")), "{v}");
            }
        }
    }

    #[test]
    fn the_tags_digest_changes_with_any_key_or_value() {
        fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }
        let base = map(&[("team", "clinics"), ("env", "prod")]);
        let d = tags_digest(&base);
        assert_eq!(d.len(), 64);
        assert_eq!(
            d,
            tags_digest(&map(&[("env", "prod"), ("team", "clinics")]))
        );
        for other in [
            map(&[]),
            map(&[("team", "clinics")]),
            map(&[("team", "clinics"), ("env", "dev")]),
            map(&[("team", "clinics"), ("Env", "prod")]),
            // Where a key or a value ends cannot move.
            map(&[("team", "clinicsenv"), ("", "prod")]),
        ] {
            assert_ne!(tags_digest(&other), d, "{other:?}");
        }
    }

    #[test]
    fn the_key_rotates_and_is_usable_only_through_the_clinic_services() {
        let t = template_of(&spec(EXISTING));
        let key = &t["Resources"][KEY]["Properties"];
        assert_eq!(key["EnableKeyRotation"], true);
        let policy = statements(&key["KeyPolicy"]);
        for st in &policy {
            assert_ne!(st["Principal"], "*");
            assert_ne!(st["Principal"]["AWS"], "*");
        }
        let use_ = policy
            .iter()
            .find(|s| s["Sid"] == "ClinicServicesUseTheKey")
            .unwrap();
        let cond = &use_["Condition"]["StringEquals"];
        assert_eq!(cond["kms:CallerAccount"], json!({"Ref": "AWS::AccountId"}));
        let via: Vec<String> = cond["kms:ViaService"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["Fn::Sub"].as_str().unwrap().to_string())
            .collect();
        for service in [
            "rds",
            "s3",
            "elasticfilesystem",
            "elasticache",
            "secretsmanager",
        ] {
            assert!(
                via.contains(&format!("{service}.${{AWS::Region}}.amazonaws.com")),
                "{service}"
            );
        }
        let trail = policy
            .iter()
            .find(|s| s["Principal"]["Service"] == "cloudtrail.amazonaws.com")
            .unwrap();
        let arn = trail["Condition"]["StringEquals"]["aws:SourceArn"]["Fn::Sub"]
            .as_str()
            .unwrap();
        assert!(arn.ends_with(&format!(":trail/{}", names().trail)), "{arn}");
        assert_eq!(
            t["Resources"][KEY_ALIAS]["Properties"]["AliasName"],
            names().kms_alias
        );
    }

    #[test]
    fn the_buckets_lifecycle_aborts_unfinished_uploads_and_never_expires_a_version() {
        let t = template_of(&spec(EXISTING));
        let rules = t["Resources"][BUCKET]["Properties"]["LifecycleConfiguration"]["Rules"]
            .as_array()
            .unwrap();
        assert_eq!(rules.len(), 1);
        let rule = rules[0].as_object().unwrap();
        assert_eq!(
            rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"],
            ABORT_INCOMPLETE_UPLOADS_DAYS
        );
        let mut keys: Vec<&str> = rule.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["AbortIncompleteMultipartUpload", "Id", "Status"],
            "{rule:?}"
        );
    }

    #[test]
    fn the_bucket_is_private_versioned_encrypted_and_tls_only() {
        let t = template_of(&spec(EXISTING));
        let b = &t["Resources"][BUCKET]["Properties"];
        assert_eq!(b["BucketName"], names().bucket);
        assert_eq!(b["VersioningConfiguration"]["Status"], "Enabled");
        let sse = &b["BucketEncryption"]["ServerSideEncryptionConfiguration"][0];
        assert_eq!(
            sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"],
            "aws:kms"
        );
        assert_eq!(
            sse["ServerSideEncryptionByDefault"]["KMSMasterKeyID"],
            json!({"Fn::GetAtt": [KEY, "Arn"]})
        );
        assert_eq!(sse["BucketKeyEnabled"], true);
        for (k, v) in b["PublicAccessBlockConfiguration"].as_object().unwrap() {
            assert_eq!(v, true, "{k}");
        }
        assert_eq!(
            b["PublicAccessBlockConfiguration"]
                .as_object()
                .unwrap()
                .len(),
            4
        );
        assert_eq!(
            b["OwnershipControls"]["Rules"][0]["ObjectOwnership"],
            "BucketOwnerEnforced"
        );
        let policy = statements(&t["Resources"][BUCKET_POLICY]["Properties"]["PolicyDocument"]);
        let deny = policy.iter().find(|s| s["Sid"] == "DenyPlainHttp").unwrap();
        assert_eq!(deny["Effect"], "Deny");
        assert_eq!(deny["Condition"]["Bool"]["aws:SecureTransport"], "false");
    }

    #[test]
    fn a_kept_clinic_trail_is_validated_encrypted_and_under_awslogs() {
        let t = template_of(&spec(EXISTING));
        let trail = &t["Resources"][TRAIL];
        let p = &trail["Properties"];
        assert_eq!(p["TrailName"], names().trail);
        assert_eq!(p["S3BucketName"], json!({"Ref": BUCKET}));
        assert!(p.get("S3KeyPrefix").is_none());
        assert_eq!(p["KMSKeyId"], json!({"Fn::GetAtt": [KEY, "Arn"]}));
        assert_eq!(p["EnableLogFileValidation"], true);
        assert_eq!(p["IsLogging"], true);
        assert_eq!(trail["DependsOn"], json!([BUCKET_POLICY]));
        let policy = statements(&t["Resources"][BUCKET_POLICY]["Properties"]["PolicyDocument"]);
        let put = policy
            .iter()
            .find(|s| s["Action"] == "s3:PutObject")
            .unwrap();
        assert_eq!(put["Principal"]["Service"], "cloudtrail.amazonaws.com");
        assert_eq!(
            put["Resource"]["Fn::Sub"],
            "${Bucket.Arn}/AWSLogs/${AWS::AccountId}/*"
        );
        assert!(put["Condition"]["StringEquals"]["aws:SourceArn"].is_object());
        assert!(policy.iter().any(|s| s["Action"] == "s3:GetBucketAcl"));
    }

    #[test]
    fn without_a_clinic_trail_cloudtrail_is_granted_nothing() {
        let mut s = spec(EXISTING);
        s.audit.cloud_trail = false;
        let t = template_of(&s);
        assert!(t["Resources"].get(TRAIL).is_none());
        assert!(!t.to_string().contains("cloudtrail"));
        // The TLS-only policy stays.
        assert!(t["Resources"].get(BUCKET_POLICY).is_some());
    }

    #[test]
    fn an_adopted_bucket_is_written_to_but_never_created_or_reconfigured() {
        for audit in [true, false] {
            let mut s = spec(EXISTING);
            s.audit.cloud_trail = audit;
            s.adopt = Some(AdoptSpec {
                db_instance_identifier: None,
                bucket_name: Some("hospital-records".into()),
                approved_changes: Vec::new(),
            });
            let t = template_of(&s);
            assert!(resources_of_type(&t, "AWS::S3::Bucket").is_empty());
            assert!(resources_of_type(&t, "AWS::S3::BucketPolicy").is_empty());
            assert_eq!(t["Outputs"][OUT_BUCKET]["Value"], "hospital-records");
            if audit {
                let trail = &t["Resources"][TRAIL];
                assert_eq!(trail["Properties"]["S3BucketName"], "hospital-records");
                assert!(trail.get("DependsOn").is_none());
            } else {
                assert!(t["Resources"].get(TRAIL).is_none());
            }
        }
    }

    #[test]
    fn the_security_group_admits_three_ports_from_the_cluster_only() {
        for (yaml, source_key, source) in [
            (EXISTING, "SourceSecurityGroupId", "sg-0a1b2c3d4e5f60718"),
            (NEW_VPC, "CidrIp", "10.20.0.0/16"),
        ] {
            let t = template_of(&spec(yaml));
            let sg = &t["Resources"][SECURITY_GROUP]["Properties"];
            assert!(!sg["GroupDescription"].as_str().unwrap().is_empty());
            let rules = sg["SecurityGroupIngress"].as_array().unwrap();
            let ports: Vec<u64> = rules
                .iter()
                .map(|r| r["FromPort"].as_u64().unwrap())
                .collect();
            assert_eq!(ports, [3306, 2049, 6379]);
            for r in rules {
                assert_eq!(r["IpProtocol"], "tcp");
                assert_eq!(r["FromPort"], r["ToPort"]);
                assert_eq!(r[source_key], source);
                assert_eq!(r.as_object().unwrap().len(), 5, "{r}");
                assert!(!r["Description"].as_str().unwrap().is_empty());
            }
            let egress = sg["SecurityGroupEgress"].as_array().unwrap();
            assert_eq!(egress.len(), 1);
            assert_eq!(egress[0]["CidrIp"], "127.0.0.1/32");
        }
        let t = template_of(&spec(EXISTING));
        assert_eq!(
            t["Resources"][SECURITY_GROUP]["Properties"]["VpcId"],
            "vpc-0a1b2c3d4e5f60718"
        );
    }

    #[test]
    fn the_database_requires_tls_in_the_engine_family() {
        for (version, family) in [("8.0", "mysql8.0"), ("8.4.3", "mysql8.4")] {
            let mut s = spec(EXISTING);
            s.database.engine_version = version.into();
            let t = template_of(&s);
            let p = &t["Resources"][DB_PARAMETER_GROUP]["Properties"];
            assert_eq!(p["Family"], family);
            assert_eq!(p["Parameters"], json!({"require_secure_transport": "1"}));
        }
        let t = template_of(&spec(EXISTING));
        assert_eq!(
            t["Resources"][DB_SUBNET_GROUP]["Properties"]["SubnetIds"],
            json!(["subnet-0a1b2c3d4e5f60718", "subnet-1a2b3c4d5e6f70819"])
        );
    }

    #[test]
    fn a_new_vpc_is_private_with_a_subnet_per_zone() {
        let t = template_of(&spec(NEW_VPC));
        let vpc = &t["Resources"][VPC]["Properties"];
        assert_eq!(vpc["CidrBlock"], "10.20.0.0/16");
        assert_eq!(vpc["EnableDnsSupport"], true);
        assert_eq!(vpc["EnableDnsHostnames"], true);
        let subnets = resources_of_type(&t, "AWS::EC2::Subnet");
        let blocks: Vec<&str> = subnets
            .iter()
            .map(|(_, s)| s["Properties"]["CidrBlock"].as_str().unwrap())
            .collect();
        assert_eq!(blocks, ["10.20.0.0/18", "10.20.64.0/18", "10.20.128.0/18"]);
        for (i, (_, s)) in subnets.iter().enumerate() {
            assert_eq!(
                s["Properties"]["AvailabilityZone"],
                json!({"Fn::Select": [i, {"Fn::GetAZs": ""}]})
            );
            assert_eq!(s["Properties"]["MapPublicIpOnLaunch"], false);
        }
        assert_eq!(resources_of_type(&t, "AWS::EC2::RouteTable").len(), 1);
        assert_eq!(
            resources_of_type(&t, "AWS::EC2::SubnetRouteTableAssociation").len(),
            3
        );
        assert_eq!(resources_of_type(&t, "AWS::EFS::MountTarget").len(), 3);
        for kind in [
            "AWS::EC2::InternetGateway",
            "AWS::EC2::VPCGatewayAttachment",
            "AWS::EC2::NatGateway",
            "AWS::EC2::Route",
        ] {
            assert!(resources_of_type(&t, kind).is_empty(), "{kind}");
        }
        let refs: Vec<Value> = (0..3)
            .map(|i| json!({"Ref": format!("PrivateSubnet{i}")}))
            .collect();
        assert_eq!(
            t["Resources"][DB_SUBNET_GROUP]["Properties"]["SubnetIds"],
            json!(refs)
        );
        assert_eq!(
            t["Resources"][CACHE_SUBNET_GROUP]["Properties"]["SubnetIds"],
            json!(refs)
        );
        // No VPC resources with an existing network.
        let t = template_of(&spec(EXISTING));
        assert!(resources_of_type(&t, "AWS::EC2::VPC").is_empty());
        assert!(resources_of_type(&t, "AWS::EC2::Subnet").is_empty());
        assert_eq!(resources_of_type(&t, "AWS::EFS::MountTarget").len(), 2);
    }

    #[test]
    fn the_file_system_is_encrypted_with_the_clinic_key_in_the_declared_mode() {
        let cases = [
            (ThroughputMode::Elastic, None, "elastic"),
            (ThroughputMode::Bursting, None, "bursting"),
            (ThroughputMode::Provisioned, Some(64), "provisioned"),
        ];
        for (mode, mibps, want) in cases {
            let mut s = spec(EXISTING);
            s.documents.throughput_mode = mode;
            s.documents.provisioned_throughput_mi_bps = mibps;
            let t = template_of(&s);
            let p = &t["Resources"][FILE_SYSTEM]["Properties"];
            assert_eq!(p["Encrypted"], true);
            assert_eq!(p["KmsKeyId"], json!({"Fn::GetAtt": [KEY, "Arn"]}));
            assert_eq!(p["ThroughputMode"], want);
            assert_eq!(p["ProvisionedThroughputInMibps"], json!(mibps));
            let policy = statements(&p["FileSystemPolicy"]);
            assert!(policy.iter().any(|s| s["Effect"] == "Deny"
                && s["Condition"]["Bool"]["aws:SecureTransport"] == "false"));
        }
    }

    #[test]
    fn redis_is_encrypted_and_fails_over_when_it_has_replicas() {
        for (replicas, clusters, failover) in [(0, 1, false), (1, 2, true), (5, 6, true)] {
            let mut s = spec(EXISTING);
            s.sessions.replicas = replicas;
            s.sessions.node_type = "cache.r7g.large".into();
            let t = template_of(&s);
            let p = &t["Resources"][REDIS]["Properties"];
            assert_eq!(p["Engine"], "redis");
            assert_eq!(p["CacheNodeType"], "cache.r7g.large");
            assert_eq!(p["NumCacheClusters"], clusters);
            assert_eq!(p["AutomaticFailoverEnabled"], failover);
            assert_eq!(p["MultiAZEnabled"], failover);
            assert_eq!(p["AtRestEncryptionEnabled"], true);
            assert_eq!(p["TransitEncryptionEnabled"], true);
            assert_eq!(p["KmsKeyId"], json!({"Fn::GetAtt": [KEY, "Arn"]}));
            assert_eq!(
                p["CacheSubnetGroupName"],
                json!({"Ref": CACHE_SUBNET_GROUP})
            );
            assert_eq!(p["SecurityGroupIds"], json!([{"Ref": SECURITY_GROUP}]));
        }
    }

    #[test]
    fn redis_takes_a_generated_auth_token_by_reference_only() {
        let t = template_of(&spec(EXISTING));
        let token = &t["Resources"][REDIS_AUTH];
        assert_eq!(token["Type"], "AWS::SecretsManager::Secret");
        assert_eq!(
            token["Properties"]["KmsKeyId"],
            json!({"Fn::GetAtt": [KEY, "Arn"]})
        );
        assert_eq!(
            token["Properties"]["GenerateSecretString"],
            json!({"PasswordLength": 64, "ExcludePunctuation": true})
        );
        assert!(token["Properties"].get("Name").is_none());
        assert_eq!(
            t["Resources"][REDIS]["Properties"]["AuthToken"],
            json!({"Fn::Sub": "{{resolve:secretsmanager:${RedisAuthToken}:SecretString}}"})
        );
        assert_eq!(
            t["Outputs"][OUT_REDIS_AUTH_SECRET]["Value"],
            json!({"Ref": REDIS_AUTH})
        );
    }

    #[test]
    fn a_clinic_with_the_most_and_largest_tags_fits_an_inline_template_body() {
        // Admission allows 40 user tags of 128 + 256 characters; they are the stack's tags,
        // so the body (CloudFormation takes 51,200 bytes inline) does not grow with them.
        let plain = rendered(&spec(NEW_VPC)).body.len();
        let mut s = spec(NEW_VPC);
        for i in 0..40 {
            s.tags.insert(format!("{i:0>128}"), "v".repeat(256));
        }
        let body = rendered(&s).body;
        assert_eq!(body.len(), plain);
        assert!(body.len() < 51_200 / 2, "{}", body.len());
    }
}
