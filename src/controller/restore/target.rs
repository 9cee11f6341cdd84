//! The clinic a side-by-side restore makes (pure): the request's `deploymentSpec`, or a
//! copy of the source clinic's spec with what would tie the copy to the original taken
//! out, marked so that the clinic controller waits for the restore instead of creating an
//! empty database and installing OpenEMR over it.
//!
//! Taken out of a copied spec, and why:
//! - `adopt`: the copy must make its own stack, key, bucket, file system and database,
//!   never take over the original's;
//! - `web.ingress`: production traffic must never reach a copy (its host is the
//!   original's); a request that wants an Ingress gives a `deploymentSpec`;
//! - `database.credentialsSecretRef` and `web.adminCredentialsSecretRef`: the copy gets its
//!   own generated Secret, and the restore sets the OpenEMR user's password in the restored
//!   database to it (the source's password must not open the copy);
//! - `deletionPolicy` becomes `Retain` (with `skipFinalSnapshot` off): a copy that may be
//!   serving after a disaster keeps its data when its object is deleted.
//!
//! The clinic is not owned by its RestoreRequest: deleting the request never deletes a
//! clinic that may now be serving.

use std::collections::BTreeMap;

use kube::api::ObjectMeta;

use crate::api::deployment::OpenEMRDeploymentSpec;
use crate::api::{DeletionPolicy, OpenEMRDeployment};
use crate::controller::deployment::clinic::RESTORED_BY;

/// Annotation on a restored clinic: the uid of the RestoreRequest that made it, so that the
/// request recognises its own clinic (it is not the clinic's owner) and a request of the
/// same name made later does not.
pub const RESTORED_BY_UID: &str = "openemr.io/restored-by-uid";
/// Label on a restored clinic naming the clinic whose data it holds (when it came from
/// one), for `kubectl get -l`.
pub const RESTORED_FROM: &str = "openemr.io/restored-from";

/// A copy of `source` that shares nothing with the original clinic.
pub fn copied_spec(source: &OpenEMRDeploymentSpec) -> OpenEMRDeploymentSpec {
    let mut spec = source.clone();
    spec.adopt = None;
    spec.web.ingress = None;
    spec.database.credentials_secret_ref = None;
    spec.web.admin_credentials_secret_ref = None;
    spec.deletion_policy = DeletionPolicy::Retain;
    spec.skip_final_snapshot = false;
    spec
}

/// The clinic `name` in `namespace` that request `request` (of uid `uid`) restores into.
pub fn clinic(
    namespace: &str,
    name: &str,
    request: &str,
    uid: &str,
    source_clinic: Option<&str>,
    spec: OpenEMRDeploymentSpec,
) -> OpenEMRDeployment {
    let mut clinic = OpenEMRDeployment::new(name, spec);
    clinic.metadata = ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        annotations: Some(BTreeMap::from([
            (RESTORED_BY.to_string(), request.to_string()),
            (RESTORED_BY_UID.to_string(), uid.to_string()),
        ])),
        labels: source_clinic.map(|s| BTreeMap::from([(RESTORED_FROM.to_string(), s.to_string())])),
        ..ObjectMeta::default()
    };
    clinic
}

/// Whether `clinic` was made by the request of uid `uid`.
pub fn made_by(clinic: &OpenEMRDeployment, uid: &str) -> bool {
    clinic
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RESTORED_BY_UID))
        .is_some_and(|u| u == uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> OpenEMRDeploymentSpec {
        serde_json::from_value(serde_json::json!({
            "aws": {"region": "us-east-1"},
            "network": {"vpcId": "vpc-1", "subnetIds": ["subnet-1", "subnet-2"]},
            "database": {"credentialsSecretRef": {"name": "prod-db"}, "instanceClass": "db.r6g.large"},
            "web": {"ingress": {"host": "emr.clinic.example"}, "adminCredentialsSecretRef": {"name": "prod-admin"}, "replicas": 3},
            "deletionPolicy": "Delete",
            "skipFinalSnapshot": true,
            "adopt": {"dbInstanceIdentifier": "prod-db"},
            "tags": {"team": "emr"},
        }))
        .unwrap()
    }

    #[test]
    fn a_copy_shares_nothing_with_the_original_and_keeps_its_data() {
        let copy = copied_spec(&source());
        assert_eq!(copy.adopt, None);
        assert_eq!(copy.web.ingress, None);
        assert_eq!(copy.database.credentials_secret_ref, None);
        assert_eq!(copy.web.admin_credentials_secret_ref, None);
        assert_eq!(copy.deletion_policy, DeletionPolicy::Retain);
        assert!(!copy.skip_final_snapshot);
        // What shapes the clinic stays: size, placement, tags.
        assert_eq!(copy.database.instance_class, "db.r6g.large");
        assert_eq!(copy.web.replicas, 3);
        assert_eq!(copy.aws.region, "us-east-1");
        assert_eq!(copy.tags["team"], "emr");
    }

    #[test]
    fn the_clinic_is_marked_and_not_owned() {
        let c = clinic(
            "ns",
            "copy-a",
            "restore-a",
            "uid-1",
            Some("clinic-a"),
            copied_spec(&source()),
        );
        assert_eq!(
            crate::controller::deployment::clinic::restored_by(&c),
            Some("restore-a")
        );
        assert!(made_by(&c, "uid-1"));
        assert!(!made_by(&c, "uid-2"));
        assert_eq!(c.metadata.owner_references, None);
        assert_eq!(c.metadata.labels.unwrap()[RESTORED_FROM], "clinic-a");
    }
}
