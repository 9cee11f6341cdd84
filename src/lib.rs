//! openemr-operator: runs OpenEMR clinics on AWS from Kubernetes custom resources and keeps
//! their patient data safe.
//!
//! `api` is the `openemr.io/v1alpha1` API; `controller` holds one controller per kind, each
//! a pipeline of observe → plan (pure) → act → status; `aws` builds the AWS clients and
//! counts their calls; `run` is the `run` command; `server` serves health and metrics;
//! `metrics` owns the Prometheus registry; `clock` is the wall clock every time comparison
//! reads; `mysql` is the operator's own TLS sessions with a clinic's database;
//! `conditions` and `schedule` are pure helpers.

// kube's `printcolumn(...)` repeats `type_ = ...` by design; clippy reads it as duplicates.
#[allow(clippy::duplicated_attributes)]
pub mod api;
pub mod aws;
pub mod clock;
pub mod conditions;
pub mod controller;
pub mod documents;
pub mod metrics;
pub mod mysql;
pub mod run;
pub mod schedule;
pub mod server;
