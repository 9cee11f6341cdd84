//! Regular expressions the API server enforces on string fields (OpenAPI `pattern`).
//!
//! They are written for Go's RE2 (what kube-apiserver evaluates): no look-around, no
//! back-references. Each is anchored. Whatever a pattern cannot judge (does this time zone
//! exist, is this cron field in range) the controllers check and report as a condition.

/// An AWS commercial, GovCloud or China region, e.g. `us-east-1`, `us-gov-west-1`, `ap-southeast-2`.
pub const REGION: &str = r"^[a-z]{2}(-gov|-iso[a-z]?)?-(north|south|east|west|central|northeast|northwest|southeast|southwest)-[1-9]$";

/// An IAM role ARN.
pub const IAM_ROLE_ARN: &str =
    r"^arn:aws(-cn|-us-gov|-iso|-iso-b)?:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$";

/// A KMS key or alias ARN (the region is the fourth `:`-separated field).
pub const KMS_KEY_ARN: &str = r"^arn:aws(-cn|-us-gov|-iso|-iso-b)?:kms:[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[1-9]:[0-9]{12}:(key/(mrk-)?[a-f0-9-]{32,36}|alias/[A-Za-z0-9/_-]{1,250})$";

/// An RDS DB instance snapshot ARN (manual `snapshot:name` or automated `snapshot:rds:name`).
pub const RDS_SNAPSHOT_ARN: &str = r"^arn:aws(-cn|-us-gov|-iso|-iso-b)?:rds:[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[1-9]:[0-9]{12}:snapshot:(rds:|awsbackup:)?[A-Za-z][A-Za-z0-9-]{0,254}$";

/// An RDS DB instance identifier: a letter, then letters, digits and single hyphens, no trailing hyphen.
pub const DB_INSTANCE_IDENTIFIER: &str = r"^[A-Za-z](-?[A-Za-z0-9])*$";

/// An S3 bucket name (lower case, digits, dots and hyphens; 3–63 characters).
pub const S3_BUCKET: &str = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$";

/// A key prefix inside a bucket: no leading slash, no `..` path segment, no whitespace.
pub const S3_PREFIX: &str = r"^([A-Za-z0-9!_.*'()-]+/)*[A-Za-z0-9!_.*'()-]*$";

/// `vpc-` followed by 8 or 17 hex digits.
pub const VPC_ID: &str = r"^vpc-([0-9a-f]{8}|[0-9a-f]{17})$";
/// `subnet-` followed by 8 or 17 hex digits.
pub const SUBNET_ID: &str = r"^subnet-([0-9a-f]{8}|[0-9a-f]{17})$";
/// `sg-` followed by 8 or 17 hex digits.
pub const SECURITY_GROUP_ID: &str = r"^sg-([0-9a-f]{8}|[0-9a-f]{17})$";
/// `fs-` followed by 8 or 17 hex digits.
pub const EFS_FILE_SYSTEM_ID: &str = r"^fs-([0-9a-f]{8}|[0-9a-f]{17})$";

/// An IPv4 CIDR block between /16 and /24, e.g. `10.40.0.0/16`.
pub const IPV4_CIDR: &str = r"^(([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])\.){3}([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])/(1[6-9]|2[0-4])$";

/// An RDS DB instance class, e.g. `db.t4g.medium`, `db.r7g.2xlarge`.
pub const DB_INSTANCE_CLASS: &str = r"^db\.[a-z0-9-]+\.[a-z0-9]+$";

/// An ElastiCache node type, e.g. `cache.t4g.micro`.
pub const CACHE_NODE_TYPE: &str = r"^cache\.[a-z0-9-]+\.[a-z0-9]+$";

/// A MySQL engine version OpenEMR supports on RDS: 8.0 or 8.4, optionally with a patch level.
pub const MYSQL_VERSION: &str = r"^8\.(0|4)(\.[0-9]{1,3})?$";

/// A MySQL identifier the operator will create (database or user name).
pub const MYSQL_IDENTIFIER: &str = r"^[A-Za-z][A-Za-z0-9_]{0,15}$";

/// An RDS backup window `hh:mm-hh:mm` in UTC.
pub const BACKUP_WINDOW: &str = r"^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$";

/// An RDS maintenance window `ddd:hh:mm-ddd:hh:mm` in UTC.
pub const MAINTENANCE_WINDOW: &str = r"^(mon|tue|wed|thu|fri|sat|sun):([01][0-9]|2[0-3]):[0-5][0-9]-(mon|tue|wed|thu|fri|sat|sun):([01][0-9]|2[0-3]):[0-5][0-9]$";

/// A five-field cron expression (minute hour day-of-month month day-of-week) or a macro such
/// as `@daily`. Ranges of the numbers are checked by the controller, which can parse them.
pub const CRON: &str = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[0-9*,/-]+[ \t]+[0-9*,/-]+[ \t]+[0-9*,/?LW-]+[ \t]+[0-9A-Za-z*,/-]+[ \t]+[0-9A-Za-z*,/?L#-]+)$";

/// An IANA time zone name such as `UTC`, `Europe/Berlin`, `America/Argentina/Buenos_Aires`
/// or `Etc/GMT+5`. Whether the zone exists is checked by the controller against the tz database.
pub const TIME_ZONE: &str =
    r"^(UTC|Etc/[A-Za-z0-9+-]{1,10}|[A-Z][A-Za-z_-]{1,30}(/[A-Z0-9][A-Za-z0-9_+-]{1,30}){1,2})$";

/// A Go-style duration made of hours, minutes and seconds, e.g. `72h`, `1h30m`.
pub const DURATION: &str = r"^([0-9]{1,6}(h|m|s))+$";

/// A DNS-1123 subdomain (ingress host names).
pub const DNS_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A DNS-1123 label (names of objects the operator creates from this one).
pub const DNS_LABEL: &str = r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$";

/// A container image reference: optional registry (with port), a lower-case repository, an
/// optional tag and an optional sha256 digest.
pub const IMAGE: &str = r"^([a-z0-9.-]+(:[0-9]{1,5})?/)?[a-z0-9][a-z0-9./_-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$";
