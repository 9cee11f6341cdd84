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

/// An object key: like a prefix, but naming an object (its last segment not empty).
pub const S3_KEY: &str = r"^([A-Za-z0-9!_.*'()-]+/)*[A-Za-z0-9!_.*'()-]+$";

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
/// as `@daily`. Each field is a comma-separated list of `*`, numbers, ranges and names, each
/// with an optional `/step`; day-of-month also takes `?`, `L`, `LW`, `nW`, day-of-week `?`,
/// `nL`, `n#k`. Empty list items are refused here, since a parser may accept them and then
/// search for decades for a time that never comes. Number ranges are checked by the
/// controller, which can parse them.
pub fn cron_pattern() -> String {
    let n = "[0-9]{1,2}";
    let name = "[A-Za-z]{3}";
    let list = |item: String| format!("{item}(,{item})*");
    let minute_or_hour = list(format!(r"(\*|{n}(-{n})?)(/{n})?"));
    let day_of_month = list(format!(r"(\*|\?|L|LW|{n}W|{n}(-{n})?)(/{n})?"));
    let month = list(format!(r"(\*|({n}|{name})(-({n}|{name}))?)(/{n})?"));
    let day_of_week = list(format!(
        r"(\*|\?|({n}|{name})(-({n}|{name}))?|({n}|{name})L|({n}|{name})#[1-5])(/{n})?"
    ));
    let sep = r"[ \t]+";
    format!(
        "^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|{minute_or_hour}{sep}{minute_or_hour}{sep}{day_of_month}{sep}{month}{sep}{day_of_week})$"
    )
}

/// An IANA time zone name such as `UTC`, `Europe/Berlin`, `America/Argentina/Buenos_Aires`
/// or `Etc/GMT+5`. Whether the zone exists is checked by the controller against the tz database.
pub const TIME_ZONE: &str =
    r"^(UTC|Etc/[A-Za-z0-9+-]{1,10}|[A-Z][A-Za-z_-]{1,30}(/[A-Z0-9][A-Za-z0-9_+-]{1,30}){1,2})$";

/// A Go-style duration made of hours, minutes and seconds, e.g. `72h`, `1h30m`.
pub const DURATION: &str = r"^([0-9]{1,6}(h|m|s))+$";

/// The length of a [`DURATION`] (`1h30m` is 5,400 s); `None` when `text` is not one.
pub fn duration_of(text: &str) -> Option<std::time::Duration> {
    let mut seconds: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        if number.is_empty() || number.len() > 6 {
            return None;
        }
        let n: u64 = number.parse().ok()?;
        seconds = seconds.checked_add(n.checked_mul(unit)?)?;
        number.clear();
    }
    (number.is_empty() && !text.is_empty()).then(|| std::time::Duration::from_secs(seconds))
}

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

/// A name formatted like an IPv4 address, which S3 refuses as a bucket name.
pub const IPV4_ADDRESS_LIKE: &str = r"^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$";

pub fn s3_bucket() -> Rule {
    Rule::new(format!(
        "self.matches(r'{S3_BUCKET}') && !self.matches(r'{IPV4_ADDRESS_LIKE}')"
    ))
    .message("must be an S3 bucket name (not an ARN, not formatted as an IP address): 3 to 63 lower-case letters, digits, dots and hyphens")
}

pub fn cron() -> Rule {
    matching(
        &cron_pattern(),
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
    use super::{DURATION, duration_of};
    use regex::Regex;

    /// The rules embed the patterns in CEL raw strings, which end at the first quote.
    #[test]
    fn patterns_hold_no_quotes() {
        let cron = super::cron_pattern();
        for p in [
            super::REGION,
            super::IAM_ROLE_ARN,
            super::KMS_KEY_ARN,
            super::RDS_SNAPSHOT_ARN,
            super::S3_BUCKET,
            super::IPV4_ADDRESS_LIKE,
            &cron,
            super::TIME_ZONE,
            super::DURATION,
            super::BACKUP_WINDOW,
            super::MAINTENANCE_WINDOW,
            super::MYSQL_VERSION,
        ] {
            assert!(!p.contains('\''), "{p}");
        }
    }

    fn check(pattern: &str, accepted: &[&str], refused: &[&str]) {
        let re = Regex::new(pattern).unwrap();
        for s in accepted {
            assert!(re.is_match(s), "{s:?} should match {pattern}");
        }
        for s in refused {
            assert!(!re.is_match(s), "{s:?} should not match {pattern}");
        }
    }

    #[test]
    fn cron() {
        check(
            &super::cron_pattern(),
            &[
                "30 2 * * *",
                "@daily",
                "*/15 * * * *",
                "0,30 8-18 * * MON-FRI",
                "0 0 L * *",
                "0 0 15W * *",
                "0 0 ? * 5#3",
                "0 0 * * 5L",
                "0 0 1-31/7 JAN-DEC *",
            ],
            &[
                ", * * * *",
                "1,,2 * * * *",
                "*/ * * * *",
                "0 0 ,1 * *",
                "0 30 2 * * *",
                "every night",
                "@reboot",
                "TZ=UTC 0 0 * * *",
            ],
        );
    }

    #[test]
    fn regions_time_zones_durations() {
        check(
            super::REGION,
            &[
                "us-east-1",
                "eu-central-1",
                "us-gov-west-1",
                "ap-southeast-2",
                "il-central-1",
            ],
            &["us-east", "US-EAST-1", "useast1", "us-east-1a"],
        );
        check(
            super::TIME_ZONE,
            &[
                "UTC",
                "Europe/Berlin",
                "America/Argentina/Buenos_Aires",
                "Etc/GMT+5",
                "America/Port-au-Prince",
            ],
            &["europe/berlin", "Local", "Europe/", "+02:00"],
        );
        check(
            super::DURATION,
            &["4h", "90m", "1h30m", "45s"],
            &["2 hours", "1d", "h", "-1h"],
        );
    }

    #[test]
    fn arns_and_names() {
        check(
            super::RDS_SNAPSHOT_ARN,
            &[
                "arn:aws:rds:us-east-1:123456789012:snapshot:clinic-a-20260101",
                "arn:aws:rds:us-east-1:123456789012:snapshot:rds:clinic-a-2026-01-01-03-00",
            ],
            &[
                "clinic-a-20260101",
                "arn:aws:rds:us-east-1:123:snapshot:x",
                "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:x",
            ],
        );
        check(
            super::KMS_KEY_ARN,
            &[
                "arn:aws:kms:us-west-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                "arn:aws:kms:us-west-2:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab",
                "arn:aws:kms:us-west-2:123456789012:alias/openemr",
            ],
            &["1234abcd-12ab-34cd-56ef-1234567890ab", "alias/openemr"],
        );
        check(
            super::IPV4_ADDRESS_LIKE,
            &["192.168.5.4", "10.0.0.1"],
            &["a.b.c.d", "clinic-1.2.3.4", "1.2.3"],
        );
        check(
            super::S3_BUCKET,
            &["clinic-a-docs", "a.b.c"],
            &["Clinic_A", "arn:aws:s3:::x", "ab"],
        );
        check(
            super::DB_INSTANCE_IDENTIFIER,
            &["clinic-a", "db1"],
            &["clinic--a", "1db", "db-"],
        );
        check(
            super::IMAGE,
            &[
                "openemr/openemr:7.0.3",
                "registry:5000/openemr/openemr:7.0.3",
                "openemr/openemr@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ],
            &["OpenEMR/OpenEMR:7.0.3", "openemr openemr", ""],
        );
    }

    #[test]
    fn windows_and_versions() {
        check(
            super::BACKUP_WINDOW,
            &["03:00-04:00", "23:30-00:30"],
            &["3:00-4:00", "24:00-01:00", "03:00"],
        );
        check(
            super::MAINTENANCE_WINDOW,
            &["sun:05:00-sun:06:00"],
            &["sunday:05:00-sunday:06:00", "sun:5:00-sun:6:00"],
        );
        check(
            super::MYSQL_VERSION,
            &["8.0", "8.4", "8.0.40"],
            &["5.7", "8", "8.0.40.1", "9.0"],
        );
    }

    #[test]
    fn a_duration_reads_as_its_pattern_allows() {
        let secs = |t: &str| duration_of(t).map(|d| d.as_secs());
        assert_eq!(secs("72h"), Some(72 * 3600));
        assert_eq!(secs("1h30m"), Some(5400));
        assert_eq!(secs("10m5s"), Some(605));
        let pattern = Regex::new(DURATION).unwrap();
        for bad in ["", "10", "h", "1d", "1.5h", "1234567h", "-1h"] {
            assert_eq!(secs(bad), None, "{bad}");
            assert!(!pattern.is_match(bad) || bad.is_empty(), "{bad}");
        }
    }
}
