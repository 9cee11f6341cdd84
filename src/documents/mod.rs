//! The documents engine: a clinic's `sites/` copied into its bucket and back, by the
//! operator's own binary (`openemr-operator documents …`), run as a Job beside the clinic.
//!
//! One mirror of the tree lives under the bucket's documents prefix
//! ([`DOCUMENTS_PREFIX`](crate::controller::deployment::clinic::DOCUMENTS_PREFIX)): one
//! object per file, its key the file's path, so a person can restore the newest state with
//! `aws s3 sync`. Bucket versioning is the deduplication: a file unchanged since the last
//! set is the same object version, referenced by every set's [`manifest`]. A set is named
//! by its manifest's key. [`backup`] walks and stores, [`restore`] brings a set back,
//! [`verify`] checks one without downloading it, [`prune`] drops sets, [`copy`] copies one into another region's bucket,
//! [`sqlconf`] points a restored site at its database, [`swap`] exchanges an in-place
//! restore's site for the live one,
//! [`store`] is all it asks of S3, [`walk`] the ordered walk.

pub mod backup;
pub mod copy;
pub mod fitness;
pub mod journal;
pub mod manifest;
pub mod prune;
pub mod restore;
pub mod sqlconf;
pub mod store;
pub mod swap;
pub mod sweep;
pub mod verify;
pub mod walk;

/// The S3 client of the subcommands: the standard credential chain (IRSA, Pod Identity,
/// environment), `AWS_ENDPOINT_URL` honoured, path-style addressing when asked (S3-compatible
/// stores, emulators).
pub async fn s3_client(path_style: bool) -> aws_sdk_s3::Client {
    let config = crate::aws::load_base_config().await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(path_style)
            .build(),
    )
}

/// [`s3_client`] in `region` rather than the environment's (a copy's destination).
pub async fn s3_client_in(path_style: bool, region: &str) -> aws_sdk_s3::Client {
    let config = crate::aws::load_base_config().await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(path_style)
            .region(aws_sdk_s3::config::Region::new(region.to_string()))
            .build(),
    )
}
