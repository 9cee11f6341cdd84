//! Start-up and shutdown of `openemr-operator run` on a control plane of its own where the
//! CRDs are not installed yet: the operator is alive but not ready until they are
//! Established, then ready; SIGTERM ends it with status 0 in either state.

mod support;

use support::operator::Operator;
use support::{TestEnv, private_env_without_crds};

async fn readyz(operator: &Operator) -> Option<u16> {
    operator.get("/readyz").await.map(|(code, _)| code)
}

#[tokio::test]
async fn waits_for_the_crds_then_becomes_ready_and_exits_zero_on_sigterm() {
    let env = private_env_without_crds();
    let crds = TestEnv::crd_args();
    let mut get = vec!["get", "--ignore-not-found", "-o", "name"];
    get.extend(crds.iter().map(String::as_str));
    assert_eq!(
        env.kubectl(&get).trim(),
        "",
        "this control plane starts without the CRDs"
    );

    // First run: SIGTERM while still waiting for the CRDs.
    let early = Operator::start(env, None);
    early.wait_for("/healthz", 200).await;
    assert_eq!(readyz(&early).await, Some(503), "not ready without CRDs");
    assert_eq!(early.metric("openemr_operator_ready").await, 0);
    assert_eq!(
        early.terminate().code(),
        Some(0),
        "clean exit while waiting"
    );

    // Second run: the CRDs arrive while it waits.
    let operator = Operator::start(env, None);
    operator.wait_for("/healthz", 200).await;
    assert_eq!(readyz(&operator).await, Some(503));
    env.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        &openemr_operator::api::all_crds_yaml().unwrap(),
    );
    operator.wait_for("/readyz", 200).await;
    assert_eq!(operator.metric("openemr_operator_ready").await, 1);
    let log = operator.log();
    for crd in &crds {
        let name = crd.trim_start_matches("crd/");
        assert!(
            log.contains(name),
            "the log names CRD {name} as established:\n{log}"
        );
    }
    assert_eq!(
        operator.terminate().code(),
        Some(0),
        "clean exit when running"
    );
}

/// A hold renewed at every look of its set must outlive a few looks, or it would lapse
/// under a set that is alive: refused before anything starts, naming both flags.
#[test]
fn a_quiesce_hold_shorter_than_three_looks_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_openemr-operator"))
        .args(["run", "--cluster-id", "c1", "--progress-interval", "30s"])
        .args(["--quiesce-hold-lifetime", "1m"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("--quiesce-hold-lifetime") && said.contains("--progress-interval"),
        "{said}"
    );
}
