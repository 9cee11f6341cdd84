//! Holds on a clinic's web tier: whoever must stop the web tier for a while (a quiesced
//! backup, an in-place restore, a person) places a hold, and the clinic controller keeps
//! the workers at 0 until the last hold is released; then `spec.web.replicas` comes back.
//!
//! A hold is a `coordination.k8s.io/v1` Lease in the clinic's namespace, labelled
//! [`HOLD_ON_LABEL`]` = <clinic>`: who (`spec.holderIdentity`), since when
//! (`spec.acquireTime`), why (annotation [`REASON_ANNOTATION`]). It lives in the API server,
//! so it survives operator restarts; one owned by its holder (an OpenEMRBackup, say) goes
//! with it. The spec is never edited, so GitOps tools see no drift while a hold is on.
//!
//! A Lease with `leaseDurationSeconds` holds only while its holder renews it: a holder that
//! died mid-backup cannot keep a clinic down for good. The lapsed Lease is left to its
//! holder (never deleted here) and named in `WorkloadReady`.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::api::deployment::WebHold;

/// Label on a hold's Lease naming the clinic it holds.
pub const HOLD_ON_LABEL: &str = "openemr.io/hold-on";
/// Annotation on a hold's Lease saying why.
pub const REASON_ANNOTATION: &str = "openemr.io/hold-reason";

/// The hold a Lease stands for, if it is one for `clinic`.
pub fn hold_of(lease: &Lease, clinic: &str) -> Option<WebHold> {
    if lease.labels().get(HOLD_ON_LABEL).map(String::as_str) != Some(clinic) {
        return None;
    }
    if lease.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let spec = lease.spec.as_ref();
    let expires = spec.and_then(|s| {
        let last = s.renew_time.as_ref().or(s.acquire_time.as_ref())?.0;
        let seconds = s.lease_duration_seconds.filter(|d| *d > 0)?;
        Some(Time(last + Duration::from_secs(seconds as u64)))
    });
    Some(WebHold {
        holder: spec
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| lease.name_any()),
        reason: lease.annotations().get(REASON_ANNOTATION).cloned(),
        since: spec
            .and_then(|s| s.acquire_time.as_ref())
            .map(|t| Time(t.0))
            .or_else(|| lease.metadata.creation_timestamp.clone()),
        lease: lease.name_any(),
        expires,
        effective: false,
    })
}

/// `holds` split into those in force at `now` and those that lapsed unrenewed.
pub fn in_force(holds: &[WebHold], now: Timestamp) -> (Vec<WebHold>, Vec<WebHold>) {
    holds
        .iter()
        .cloned()
        .partition(|h| h.expires.as_ref().is_none_or(|t| t.0 > now))
}

/// Holds in a stable order (oldest first, then by Lease name).
pub fn sorted(mut holds: Vec<WebHold>) -> Vec<WebHold> {
    holds.sort_by(|a, b| {
        let key = |h: &WebHold| h.since.as_ref().map(|t| t.0);
        key(a).cmp(&key(b)).then_with(|| a.lease.cmp(&b.lease))
    });
    holds
}

/// The Lease name of `holder`'s hold on `clinic`.
pub fn lease_name(clinic: &str, holder: &str) -> String {
    format!("{clinic}-hold-{holder}")
}

/// Places `holder`'s hold on `clinic`. With `lasts`, the hold lapses unless [`renew`]ed
/// within that long of the last renewal, so a holder that dies cannot keep the clinic down.
/// With `owner`, the Lease goes with its owner (a deleted set leaves no hold behind).
/// Placing a hold that exists puts it in force again, lapsed or not: its `renewTime` is
/// now, its lifetime and reason are the ones given (its `acquireTime` stays).
pub async fn place(
    client: &Client,
    namespace: &str,
    clinic: &str,
    holder: &str,
    reason: &str,
    lasts: Option<Duration>,
    owner: Option<&OwnerReference>,
) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let now = MicroTime(crate::clock::now());
    let mut spec = json!({"holderIdentity": holder, "acquireTime": now});
    if let Some(lasts) = lasts {
        spec["leaseDurationSeconds"] = json!(lasts.as_secs().clamp(1, i32::MAX as u64));
        spec["renewTime"] = json!(now);
    }
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(clinic, holder),
            "labels": {HOLD_ON_LABEL: clinic},
            "annotations": {REASON_ANNOTATION: reason},
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": spec,
    }))
    .map_err(kube::Error::SerdeError)?;
    match api.create(&PostParams::default(), &lease).await {
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let refresh = json!({
                "metadata": {"annotations": {REASON_ANNOTATION: reason}},
                "spec": {
                    "holderIdentity": holder,
                    "renewTime": now,
                    // A merge patch's null removes the field: then it never lapses.
                    "leaseDurationSeconds": lasts.map(|l| l.as_secs().clamp(1, i32::MAX as u64)),
                },
            });
            api.patch(
                &lease_name(clinic, holder),
                &PatchParams::default(),
                &Patch::Merge(&refresh),
            )
            .await
            .map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

/// Renews `holder`'s hold on `clinic` (its `renewTime` is now).
pub async fn renew(
    client: &Client,
    namespace: &str,
    clinic: &str,
    holder: &str,
) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let patch = json!({"spec": {"renewTime": MicroTime(crate::clock::now())}});
    api.patch(
        &lease_name(clinic, holder),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}

/// Releases `holder`'s hold on `clinic` (idempotent).
pub async fn release(
    client: &Client,
    namespace: &str,
    clinic: &str,
    holder: &str,
) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    match api
        .delete(&lease_name(clinic, holder), &DeleteParams::default())
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => other.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(labels: serde_json::Value, spec: serde_json::Value) -> Lease {
        serde_json::from_value(json!({
            "metadata": {
                "name": "clinic-a-hold-nightly",
                "labels": labels,
                "annotations": {REASON_ANNOTATION: "quiesced backup"},
                "creationTimestamp": "2026-11-23T03:00:05Z",
            },
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_lease_labelled_for_the_clinic_is_a_hold() {
        let l = lease(
            json!({HOLD_ON_LABEL: "clinic-a"}),
            json!({"holderIdentity": "backup/nightly", "acquireTime": "2026-11-23T03:00:00.000000Z"}),
        );
        let hold = hold_of(&l, "clinic-a").unwrap();
        assert_eq!(hold.holder, "backup/nightly");
        assert_eq!(hold.reason.as_deref(), Some("quiesced backup"));
        assert_eq!(hold.since.unwrap().0.to_string(), "2026-11-23T03:00:00Z");
        assert!(hold_of(&l, "clinic-b").is_none());
    }

    #[test]
    fn a_lease_with_a_duration_lapses_unless_renewed() {
        let l = lease(
            json!({HOLD_ON_LABEL: "clinic-a"}),
            json!({
                "holderIdentity": "backup/nightly",
                "acquireTime": "2026-11-23T03:00:00.000000Z",
                "renewTime": "2026-11-23T03:10:00.000000Z",
                "leaseDurationSeconds": 600,
            }),
        );
        let hold = hold_of(&l, "clinic-a").unwrap();
        assert_eq!(
            hold.expires.as_ref().unwrap().0.to_string(),
            "2026-11-23T03:20:00Z"
        );
        let at = |t: &str| t.parse::<Timestamp>().unwrap();
        let (on, lapsed) = in_force(std::slice::from_ref(&hold), at("2026-11-23T03:19:59Z"));
        assert_eq!((on.len(), lapsed.len()), (1, 0));
        let (on, lapsed) = in_force(std::slice::from_ref(&hold), at("2026-11-23T03:20:00Z"));
        assert_eq!((on.len(), lapsed.len()), (0, 1));
        // Without a duration it lasts until released.
        let forever = lease(
            json!({HOLD_ON_LABEL: "clinic-a"}),
            json!({"holderIdentity": "p"}),
        );
        let hold = hold_of(&forever, "clinic-a").unwrap();
        assert_eq!(hold.expires, None);
        assert_eq!(in_force(&[hold], at("2099-01-01T00:00:00Z")).0.len(), 1);
    }

    #[test]
    fn a_bare_lease_names_itself_and_its_creation() {
        let l = lease(json!({HOLD_ON_LABEL: "clinic-a"}), json!({}));
        let hold = hold_of(&l, "clinic-a").unwrap();
        assert_eq!(hold.holder, "clinic-a-hold-nightly");
        assert_eq!(hold.since.unwrap().0.to_string(), "2026-11-23T03:00:05Z");
        assert!(hold_of(&lease(json!({}), json!({})), "clinic-a").is_none());
    }
}
