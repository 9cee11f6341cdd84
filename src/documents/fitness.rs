//! Whether a bucket can hold sets: versioning on, and no lifecycle rule that would take away
//! a version a manifest references. Sets are versions of the mirror's keys, kept only by
//! being referenced; a bucket that is not versioned overwrites them, and one that expires
//! noncurrent versions (or current objects, or sends them to an archive a restore cannot
//! read directly) breaks older sets silently. The operator's own clinic bucket is made
//! fit; an adopted one may not be, so every backup asks first (two requests) and refuses
//! naming the setting.
//!
//! Intelligent-Tiering's archive tiers are judged too, where a lifecycle rule moves the
//! sets' objects into that storage class (the engine writes them as `STANDARD`, which no
//! Intelligent-Tiering configuration touches): an object archived there cannot be read
//! without a restore request to S3 first. That costs a third request, only then.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{
    BucketVersioningStatus, ExpirationStatus, IntelligentTieringAccessTier,
    IntelligentTieringConfiguration, IntelligentTieringStatus, LifecycleRule,
    TransitionStorageClass,
};

use super::store::{Store, StoreError, failed};

/// Why a bucket with this versioning status and these lifecycle rules cannot hold the
/// sets whose keys start with any of `prefixes` (the mirror's and the manifests'), or
/// `None` when it can.
pub fn unfit(
    bucket: &str,
    versioning: Option<&BucketVersioningStatus>,
    rules: &[LifecycleRule],
    prefixes: &[&str],
) -> Option<String> {
    if versioning != Some(&BucketVersioningStatus::Enabled) {
        let now = versioning.map_or("never enabled", |v| v.as_str());
        return Some(format!(
            "bucket {bucket}: versioning is {now}; sets need it Enabled (each set references versions of the mirror's keys)"
        ));
    }
    let mut why = Vec::new();
    for rule in rules {
        if *rule.status() != ExpirationStatus::Enabled {
            continue;
        }
        let Some(scope) = applies_to(rule, prefixes) else {
            continue;
        };
        let name = format!(
            "lifecycle rule {:?} (on {scope})",
            rule.id().unwrap_or("without id")
        );
        if let Some(noncurrent) = rule.noncurrent_version_expiration() {
            why.push(format!(
                "{name} has NoncurrentVersionExpiration ({} days): it would delete versions older sets reference",
                noncurrent.noncurrent_days().unwrap_or_default()
            ));
        }
        if let Some(expiration) = rule.expiration()
            && (expiration.days().is_some() || expiration.date().is_some())
        {
            why.push(format!(
                "{name} has Expiration of current objects: it would delete manifests and turn the mirror into delete markers"
            ));
        }
        let archived = moved_to(rule).find(|class| {
            matches!(
                class,
                TransitionStorageClass::Glacier | TransitionStorageClass::DeepArchive
            )
        });
        if let Some(class) = archived {
            why.push(format!(
                "{name} moves versions to {}: a restore cannot read them without a restore request to S3 first",
                class.as_str()
            ));
        }
    }
    if why.is_empty() {
        None
    } else {
        Some(format!("bucket {bucket}: {}", why.join("; ")))
    }
}

/// The prefix of `prefixes` a rule reaches (a rule without a prefix reaches them all), or
/// `None`. A rule that needs a tag reaches nothing here: the engine tags no object. A size
/// bound is no guard: some file is of that size.
fn applies_to<'a>(rule: &LifecycleRule, prefixes: &[&'a str]) -> Option<&'a str> {
    #[allow(deprecated)]
    let legacy = rule.prefix();
    let filter = rule.filter();
    let tagged = filter.is_some_and(|f| f.tag().is_some())
        || filter
            .and_then(|f| f.and())
            .is_some_and(|and| !and.tags().is_empty());
    let own = filter
        .and_then(|f| f.prefix().or_else(|| f.and().and_then(|a| a.prefix())))
        .or(legacy);
    reaches(own, tagged, prefixes)
}

/// The prefix of `prefixes` that a filter on `own` (none: everything) reaches, unless it
/// needs a tag.
fn reaches<'a>(own: Option<&str>, tagged: bool, prefixes: &[&'a str]) -> Option<&'a str> {
    if tagged {
        return None;
    }
    let own = own.unwrap_or("");
    prefixes
        .iter()
        .find(|p| p.starts_with(own) || own.starts_with(**p))
        .copied()
}

/// Whether an enabled lifecycle rule moves objects under `prefixes` (current or noncurrent
/// versions) into Intelligent-Tiering.
pub fn into_intelligent_tiering(rules: &[LifecycleRule], prefixes: &[&str]) -> bool {
    rules.iter().any(|rule| {
        *rule.status() == ExpirationStatus::Enabled
            && applies_to(rule, prefixes).is_some()
            && moved_to(rule).any(|class| *class == TransitionStorageClass::IntelligentTiering)
    })
}

/// The storage classes a rule moves objects to, current versions or noncurrent ones.
fn moved_to(rule: &LifecycleRule) -> impl Iterator<Item = &TransitionStorageClass> {
    rule.transitions()
        .iter()
        .filter_map(|t| t.storage_class())
        .chain(
            rule.noncurrent_version_transitions()
                .iter()
                .filter_map(|t| t.storage_class()),
        )
}

/// Why Intelligent-Tiering configurations would archive the sets' objects under `prefixes`
/// (those a lifecycle rule moved into that class), or `None`.
pub fn archived_by_tiering(
    bucket: &str,
    configurations: &[IntelligentTieringConfiguration],
    prefixes: &[&str],
) -> Option<String> {
    let why: Vec<String> = configurations
        .iter()
        .filter(|c| *c.status() == IntelligentTieringStatus::Enabled)
        .filter_map(|c| {
            let filter = c.filter();
            let tagged = filter.is_some_and(|f| f.tag().is_some())
                || filter
                    .and_then(|f| f.and())
                    .is_some_and(|and| !and.tags().is_empty());
            let own = filter.and_then(|f| f.prefix().or_else(|| f.and().and_then(|a| a.prefix())));
            let scope = reaches(own, tagged, prefixes)?;
            let archive = c.tierings().iter().find(|t| {
                matches!(
                    t.access_tier(),
                    IntelligentTieringAccessTier::ArchiveAccess
                        | IntelligentTieringAccessTier::DeepArchiveAccess
                )
            })?;
            Some(format!(
                "Intelligent-Tiering configuration {:?} (on {scope}) moves objects a lifecycle rule put in INTELLIGENT_TIERING to {} after {} days: a restore cannot read them without a restore request to S3 first",
                c.id(),
                archive.access_tier().as_str(),
                archive.days()
            ))
        })
        .collect();
    (!why.is_empty()).then(|| format!("bucket {bucket}: {}", why.join("; ")))
}

/// Reads the bucket's versioning and lifecycle, and says why it cannot hold sets.
pub async fn check(store: &Store, prefixes: &[&str]) -> Result<Option<String>, StoreError> {
    let versioning = store
        .client
        .get_bucket_versioning()
        .bucket(&store.bucket)
        .send()
        .await
        .map_err(failed("GetBucketVersioning", &store.bucket))?;
    let rules = match store
        .client
        .get_bucket_lifecycle_configuration()
        .bucket(&store.bucket)
        .send()
        .await
    {
        Ok(out) => out.rules().to_vec(),
        // No lifecycle configuration at all.
        Err(e) if e.code() == Some("NoSuchLifecycleConfiguration") => Vec::new(),
        Err(e) => return Err(failed("GetBucketLifecycleConfiguration", &store.bucket)(e)),
    };
    if let Some(why) = unfit(&store.bucket, versioning.status(), &rules, prefixes) {
        return Ok(Some(why));
    }
    if !into_intelligent_tiering(&rules, prefixes) {
        return Ok(None);
    }
    let mut configurations = Vec::new();
    let mut token = None;
    loop {
        let page = store
            .client
            .list_bucket_intelligent_tiering_configurations()
            .bucket(&store.bucket)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(failed(
                "ListBucketIntelligentTieringConfigurations",
                &store.bucket,
            ))?;
        configurations.extend(
            page.intelligent_tiering_configuration_list()
                .iter()
                .cloned(),
        );
        token = page.next_continuation_token().map(str::to_string);
        if token.is_none() || page.is_truncated() != Some(true) {
            break;
        }
    }
    Ok(archived_by_tiering(
        &store.bucket,
        &configurations,
        prefixes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::types::{
        LifecycleExpiration, LifecycleRuleAndOperator, LifecycleRuleFilter,
        NoncurrentVersionExpiration, NoncurrentVersionTransition, Tag,
    };

    const PREFIXES: &[&str] = &["documents/", "backups/documents/"];

    fn rule(prefix: Option<&str>) -> aws_sdk_s3::types::builders::LifecycleRuleBuilder {
        let builder = LifecycleRule::builder()
            .id("r")
            .status(ExpirationStatus::Enabled);
        match prefix {
            Some(p) => builder.filter(LifecycleRuleFilter::builder().prefix(p).build()),
            None => builder,
        }
    }

    fn expiring_noncurrent(prefix: Option<&str>) -> LifecycleRule {
        rule(prefix)
            .noncurrent_version_expiration(
                NoncurrentVersionExpiration::builder()
                    .noncurrent_days(30)
                    .build(),
            )
            .build()
            .unwrap()
    }

    fn on(rules: &[LifecycleRule]) -> Option<String> {
        unfit("b", Some(&BucketVersioningStatus::Enabled), rules, PREFIXES)
    }

    fn tiering(
        id: &str,
        prefix: Option<&str>,
        tier: IntelligentTieringAccessTier,
    ) -> IntelligentTieringConfiguration {
        let mut builder = IntelligentTieringConfiguration::builder()
            .id(id)
            .status(IntelligentTieringStatus::Enabled)
            .tierings(
                aws_sdk_s3::types::Tiering::builder()
                    .days(90)
                    .access_tier(tier)
                    .build()
                    .unwrap(),
            );
        if let Some(p) = prefix {
            builder = builder.filter(
                aws_sdk_s3::types::IntelligentTieringFilter::builder()
                    .prefix(p)
                    .build(),
            );
        }
        builder.build().unwrap()
    }

    #[test]
    fn intelligent_tiering_is_judged_only_where_a_rule_moves_objects_into_it() {
        let into = |class: TransitionStorageClass, prefix: Option<&str>| {
            rule(prefix)
                .noncurrent_version_transitions(
                    NoncurrentVersionTransition::builder()
                        .noncurrent_days(30)
                        .storage_class(class)
                        .build(),
                )
                .build()
                .unwrap()
        };
        assert!(into_intelligent_tiering(
            &[into(TransitionStorageClass::IntelligentTiering, None)],
            PREFIXES
        ));
        assert!(!into_intelligent_tiering(
            &[into(
                TransitionStorageClass::IntelligentTiering,
                Some("logs/")
            )],
            PREFIXES
        ));
        assert!(!into_intelligent_tiering(
            &[into(TransitionStorageClass::GlacierIr, None)],
            PREFIXES
        ));
        assert!(!into_intelligent_tiering(&[], PREFIXES));
    }

    #[test]
    fn archive_tiers_where_sets_are_are_refused_naming_the_configuration() {
        let archive = tiering(
            "cold",
            Some("backups/"),
            IntelligentTieringAccessTier::DeepArchiveAccess,
        );
        let said = archived_by_tiering("b", &[archive], PREFIXES).unwrap();
        assert!(said.contains("\"cold\" (on backups/documents/)"), "{said}");
        assert!(said.contains("DEEP_ARCHIVE_ACCESS after 90 days"), "{said}");
        let everywhere = tiering("all", None, IntelligentTieringAccessTier::ArchiveAccess);
        assert!(archived_by_tiering("b", std::slice::from_ref(&everywhere), PREFIXES).is_some());
        // Elsewhere, disabled, or tag-filtered: no object of a set is reached.
        let elsewhere = tiering(
            "logs",
            Some("logs/"),
            IntelligentTieringAccessTier::ArchiveAccess,
        );
        let mut disabled = everywhere.clone();
        disabled.status = IntelligentTieringStatus::Disabled;
        let tagged = IntelligentTieringConfiguration::builder()
            .id("tagged")
            .status(IntelligentTieringStatus::Enabled)
            .filter(
                aws_sdk_s3::types::IntelligentTieringFilter::builder()
                    .tag(Tag::builder().key("k").value("v").build().unwrap())
                    .build(),
            )
            .tierings(everywhere.tierings()[0].clone())
            .build()
            .unwrap();
        assert_eq!(
            archived_by_tiering("b", &[elsewhere, disabled, tagged], PREFIXES),
            None
        );
    }

    #[test]
    fn versioning_must_be_enabled() {
        let said = unfit("b", Some(&BucketVersioningStatus::Suspended), &[], PREFIXES).unwrap();
        assert!(said.contains("versioning is Suspended"), "{said}");
        let said = unfit("b", None, &[], PREFIXES).unwrap();
        assert!(said.contains("never enabled"), "{said}");
        assert_eq!(on(&[]), None);
    }

    #[test]
    fn expiring_noncurrent_versions_where_sets_are_is_refused_naming_the_rule() {
        for prefix in [None, Some(""), Some("doc"), Some("documents/default/")] {
            let said = on(&[expiring_noncurrent(prefix)]).unwrap();
            assert!(
                said.contains("NoncurrentVersionExpiration (30 days)") && said.contains("\"r\""),
                "{prefix:?}: {said}"
            );
        }
        // Elsewhere in the bucket, or only for tagged objects: no harm.
        assert_eq!(on(&[expiring_noncurrent(Some("logs/"))]), None);
        let tagged = rule(None)
            .filter(
                LifecycleRuleFilter::builder()
                    .and(
                        LifecycleRuleAndOperator::builder()
                            .prefix("documents/")
                            .tags(Tag::builder().key("k").value("v").build().unwrap())
                            .build(),
                    )
                    .build(),
            )
            .noncurrent_version_expiration(
                NoncurrentVersionExpiration::builder()
                    .noncurrent_days(1)
                    .build(),
            )
            .build()
            .unwrap();
        assert_eq!(on(&[tagged]), None);
        // Disabled: no harm.
        let mut disabled = expiring_noncurrent(None);
        disabled.status = ExpirationStatus::Disabled;
        assert_eq!(on(&[disabled]), None);
    }

    #[test]
    fn expiring_current_objects_or_archiving_is_refused_but_aborting_uploads_is_not() {
        let expiring = rule(Some("backups/"))
            .expiration(LifecycleExpiration::builder().days(90).build())
            .build()
            .unwrap();
        assert!(
            on(&[expiring])
                .unwrap()
                .contains("Expiration of current objects")
        );
        let markers = rule(None)
            .expiration(
                LifecycleExpiration::builder()
                    .expired_object_delete_marker(true)
                    .build(),
            )
            .build()
            .unwrap();
        assert_eq!(on(&[markers]), None);
        let archiving = rule(None)
            .noncurrent_version_transitions(
                NoncurrentVersionTransition::builder()
                    .noncurrent_days(30)
                    .storage_class(TransitionStorageClass::DeepArchive)
                    .build(),
            )
            .build()
            .unwrap();
        assert!(on(&[archiving]).unwrap().contains("DEEP_ARCHIVE"));
        let cheaper = rule(None)
            .noncurrent_version_transitions(
                NoncurrentVersionTransition::builder()
                    .noncurrent_days(30)
                    .storage_class(TransitionStorageClass::GlacierIr)
                    .build(),
            )
            .build()
            .unwrap();
        assert_eq!(on(&[cheaper]), None);
        let aborting = rule(None)
            .abort_incomplete_multipart_upload(
                aws_sdk_s3::types::AbortIncompleteMultipartUpload::builder()
                    .days_after_initiation(7)
                    .build(),
            )
            .build()
            .unwrap();
        assert_eq!(on(&[aborting]), None);
    }
}
