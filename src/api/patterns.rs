//! Regular expressions the API server enforces on string fields (OpenAPI `pattern`).
//!
//! They are written for Go's RE2 (what kube-apiserver evaluates): no look-around, no
//! back-references. Each is anchored. Whatever a pattern cannot judge (does this time zone
//! exist, is this cron field in range) the controllers check and report as a condition.
//!
//! The formats people type most (regions, ARNs, bucket names, schedules, zones, durations,
//! windows, versions) are checked by CEL rules built from these patterns instead, so that a
//! refusal says what is allowed in words, e.g. "must be an AWS region such as us-east-1".

use kube::core::Rule;

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

/// A CEL rule that the field matches `regex`, refused with `message`, which says what is
/// allowed in words rather than as a regular expression.
fn matching(regex: &str, message: &str) -> Rule {
    Rule::new(format!("self.matches(r'{regex}')")).message(message)
}

pub fn region() -> Rule {
    matching(
        REGION,
        "must be an AWS region such as us-east-1 or eu-central-1",
    )
}

pub fn iam_role_arn() -> Rule {
    matching(
        IAM_ROLE_ARN,
        "must be an IAM role ARN such as arn:aws:iam::123456789012:role/openemr",
    )
}

pub fn kms_key_arn() -> Rule {
    matching(
        KMS_KEY_ARN,
        "must be a KMS key or alias ARN such as arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    )
}

pub fn rds_snapshot_arn() -> Rule {
    matching(
        RDS_SNAPSHOT_ARN,
        "must be the ARN of an RDS DB snapshot (not its name), such as arn:aws:rds:us-east-1:123456789012:snapshot:clinic-a-20260101",
    )
}

pub fn s3_bucket() -> Rule {
    matching(
        S3_BUCKET,
        "must be an S3 bucket name (not an ARN): 3 to 63 lower-case letters, digits, dots and hyphens",
    )
}

pub fn cron() -> Rule {
    matching(
        CRON,
        "must be a five-field cron expression (minute hour day-of-month month day-of-week) such as '30 2 * * *', or @hourly, @daily, @weekly, @monthly or @yearly",
    )
}

pub fn time_zone() -> Rule {
    matching(
        TIME_ZONE,
        "must be an IANA time zone name such as UTC, Europe/Berlin or America/New_York",
    )
}

pub fn duration() -> Rule {
    matching(
        DURATION,
        "must be a duration of hours, minutes and seconds such as 4h, 90m or 1h30m",
    )
}

pub fn backup_window() -> Rule {
    matching(
        BACKUP_WINDOW,
        "must be hh:mm-hh:mm in UTC, such as 03:00-04:00",
    )
}

pub fn maintenance_window() -> Rule {
    matching(
        MAINTENANCE_WINDOW,
        "must be ddd:hh:mm-ddd:hh:mm in UTC, such as sun:05:00-sun:06:00",
    )
}

pub fn mysql_version() -> Rule {
    matching(
        MYSQL_VERSION,
        "must be MySQL 8.0 or 8.4, optionally with a patch level such as 8.0.40",
    )
}

#[cfg(test)]
mod tests {
    /// The rules embed the patterns in CEL raw strings, which end at the first quote.
    #[test]
    fn patterns_hold_no_quotes() {
        for p in [
            super::REGION,
            super::IAM_ROLE_ARN,
            super::KMS_KEY_ARN,
            super::RDS_SNAPSHOT_ARN,
            super::S3_BUCKET,
            super::CRON,
            super::TIME_ZONE,
            super::DURATION,
            super::BACKUP_WINDOW,
            super::MAINTENANCE_WINDOW,
            super::MYSQL_VERSION,
        ] {
            assert!(!p.contains('\''), "{p}");
        }
    }
}
