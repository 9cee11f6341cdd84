//! The reconcile driver on the real control plane, with a kind of the tests' own
//! (`Widget`, group `test.openemr.io`) whose pipeline the tests control: an error whose text
//! changes on every call, a change whose call "crashes" after it went out, status writes by
//! other field managers and from a stale cache.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector;
use kube::{Api, Client, CustomResource, CustomResourceExt, ResourceExt};
use openemr_operator::api::{ChangeIntent, Condition};
use openemr_operator::conditions::{self, Verdict};
use openemr_operator::controller::driver::{Driver, apply_status, field_manager};
use openemr_operator::controller::{
    Context, DriverConfig, Error, ObjectStatus, Plan, Reconcile, Requeue, run_controller,
    status_with,
};
use openemr_operator::metrics::Metrics;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use support::{TestNamespace, env, eventually};
use tokio_util::sync::CancellationToken;

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "test.openemr.io",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct WidgetSpec {
    /// `fail`: observe always fails, with a new message each time. `create`: make the
    /// ConfigMap named after the widget. `refused`: plan `Ready` and a ConfigMap whose
    /// name the API server refuses.
    mode: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WidgetStatus {
    #[serde(default)]
    conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    in_flight: Option<ChangeIntent>,
}

openemr_operator::object_status!(WidgetStatus);

/// What the tests see of the widgets' pipelines, by widget name.
#[derive(Default)]
struct Record {
    attempts: Vec<Instant>,
    creates: usize,
    /// The intent as stored on the API server when `act` ran.
    intent_stored_at_act: Vec<Option<ChangeIntent>>,
    /// Plans that started from a status holding an intent.
    plans_seeing_intent: usize,
}

static RECORDS: Mutex<Option<HashMap<String, Record>>> = Mutex::new(None);
/// While set, `act` makes its call and then never returns (the process "crashes").
static HANG_AFTER_CALL: AtomicBool = AtomicBool::new(false);
static CALLS: AtomicUsize = AtomicUsize::new(0);

fn record<T>(name: &str, f: impl FnOnce(&mut Record) -> T) -> T {
    let mut records = RECORDS.lock().unwrap();
    f(records
        .get_or_insert_with(HashMap::new)
        .entry(name.to_string())
        .or_default())
}

#[derive(Debug)]
pub struct CreateConfigMap {
    name: String,
    token: String,
}

impl Reconcile for Widget {
    type Observed = bool;
    type Change = CreateConfigMap;
    const CONTROLLER: &'static str = "widget";

    async fn observe(&self, ctx: &Context) -> Result<bool, Error> {
        let name = self.name_any();
        record(&name, |r| r.attempts.push(Instant::now()));
        if self.spec.mode == "fail" {
            // Like an AWS error carrying a request id: different on every call.
            let n = CALLS.fetch_add(1, Ordering::SeqCst);
            return Err(Error::Act {
                action: "DescribeWidget".into(),
                reason: "Flaky",
                message: format!("service unavailable (request id {n})"),
            });
        }
        let api: Api<ConfigMap> =
            Api::namespaced(ctx.client.clone(), &self.namespace().unwrap_or_default());
        let found = api.get_opt(&name).await.map_err(|e| Error::Act {
            action: "GetConfigMap".into(),
            reason: "ObserveFailed",
            message: e.to_string(),
        })?;
        Ok(found.is_some())
    }

    fn plan(&self, exists: &bool, now: Timestamp) -> Plan<WidgetStatus, CreateConfigMap> {
        if self.status.as_ref().and_then(|s| s.in_flight()).is_some() {
            record(&self.name_any(), |r| r.plans_seeing_intent += 1);
        }
        let made = if *exists {
            Verdict::truthy("Made", "Exists", "")
        } else {
            Verdict::falsy("Made", "Missing", "")
        };
        let refused = self.spec.mode == "refused";
        // As a planner does that judges from what serves now, before its changes are made.
        let ready = if *exists || refused {
            Verdict::truthy("Ready", "Ready", "serving")
        } else {
            Verdict::falsy("Ready", "NotReady", "")
        };
        let status = status_with(self, &[made, ready], now);
        let changes = if refused {
            vec![CreateConfigMap {
                name: format!("{}-Not_A_Name", self.name_any()),
                token: format!("refused-{}", self.metadata.generation.unwrap_or(0)),
            }]
        } else if *exists {
            Vec::new()
        } else {
            vec![CreateConfigMap {
                name: self.name_any(),
                token: format!(
                    "{}-{}",
                    self.uid().unwrap_or_default(),
                    self.metadata.generation.unwrap_or(0)
                ),
            }]
        };
        Plan {
            status,
            changes,
            requeue: Requeue::After(Duration::from_secs(1)),
            failure: None,
        }
    }

    fn intent(change: &CreateConfigMap) -> (String, String) {
        ("CreateConfigMap".into(), change.token.clone())
    }

    async fn act(&self, change: &CreateConfigMap, ctx: &Context) -> Result<(), Error> {
        let ns = self.namespace().unwrap_or_default();
        let stored = Api::<Widget>::namespaced(ctx.client.clone(), &ns)
            .get(&self.name_any())
            .await
            .ok()
            .and_then(|w| w.status)
            .and_then(|s| s.in_flight);
        record(&self.name_any(), |r| r.intent_stored_at_act.push(stored));
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": change.name, "annotations": {"token": change.token}},
        }))
        .unwrap();
        Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns)
            .create(&PostParams::default(), &cm)
            .await
            .map_err(|e| Error::Act {
                action: "CreateConfigMap".into(),
                reason: "CreateFailed",
                message: e.to_string(),
            })?;
        record(&self.name_any(), |r| r.creates += 1);
        if HANG_AFTER_CALL.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

fn install_widget_crd() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let crd = serde_yaml_ng::to_string(&Widget::crd()).unwrap();
        env().kubectl_stdin(&["apply", "--server-side", "-f", "-"], &crd);
        env().kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/widgets.test.openemr.io",
        ]);
    });
}

/// A running controller of widgets in one namespace, in this process.
struct Running {
    driver: Arc<Driver<Widget>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(client: Client, namespace: &str, config: DriverConfig) -> Running {
    let metrics = Arc::new(Metrics::new());
    let (ctx, _ours) = Context::new(client, metrics.clone(), Some(namespace.into()), config);
    // Widgets name nothing; no other cache to wait for.
    ctx.mark_caches_synced();
    let (reader, writer) = reflector::store();
    let driver = Arc::new(Driver::<Widget>::new(Arc::new(ctx), reader));
    let shutdown = CancellationToken::new();
    let (synced, _rx) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(run_controller(
        driver.clone(),
        writer,
        shutdown.clone(),
        synced,
    ));
    Running {
        driver,
        metrics,
        shutdown,
        task,
    }
}

fn widget(name: &str, mode: &str) -> Widget {
    Widget::new(
        name,
        WidgetSpec {
            mode: mode.to_string(),
        },
    )
}

fn synced(w: &Widget) -> Option<Condition> {
    conditions::find(&w.status.as_ref()?.conditions, "Synced").cloned()
}

#[tokio::test]
async fn an_error_with_new_text_each_call_still_backs_off() {
    install_widget_crd();
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "driver-backoff").await;
    let config = DriverConfig {
        retry_initial: Duration::from_millis(500),
        retry_max: Duration::from_secs(2),
        ..DriverConfig::default()
    };
    let running = start(client.clone(), &ns.name, config.clone());
    let widgets: Api<Widget> = Api::namespaced(client.clone(), &ns.name);
    widgets
        .create(&PostParams::default(), &widget("flaky", "fail"))
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_secs(8)).await;
    let attempts = record("flaky", |r| r.attempts.clone());
    // Retries after 0.5, 1, 2, 2, 2 s (+ at most 10% each): 5 to 6 attempts in 8 s. Every
    // failure from the second on writes a new message; were those writes to wake the
    // object, it would loop hot.
    assert!(
        (4..=7).contains(&attempts.len()),
        "{} attempts in 8 s",
        attempts.len()
    );
    for (i, pair) in attempts.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let least = config.backoff(i as u32 + 1).mul_f64(0.95);
        assert!(
            gap >= least,
            "retry {i} came after {gap:?}, before {least:?}"
        );
    }
    let stored = widgets.get("flaky").await.unwrap();
    let condition = synced(&stored).expect("Synced reported");
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "Flaky")
    );
    assert!(
        condition.message.contains("request id"),
        "{}",
        condition.message
    );
    let writes = running
        .metrics
        .status_writes
        .get_or_create(&openemr_operator::metrics::ControllerLabel::new("widget"))
        .get();
    // The first failure writes nothing; each later one its new message.
    assert_eq!(writes as usize, attempts.len() - 1);
    assert_eq!(running.driver.tracked_objects(), 1);

    // Deleting the object forgets its state.
    widgets.delete("flaky", &Default::default()).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the deleted widget forgotten",
        || async { (running.driver.tracked_objects() == 0).then_some(()) },
    )
    .await;
    running.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running.task)
        .await
        .expect("the controller stops")
        .unwrap();
}

#[tokio::test]
async fn an_intent_is_stored_before_the_call_and_a_crash_after_it_makes_no_duplicate() {
    install_widget_crd();
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "driver-intent").await;
    let widgets: Api<Widget> = Api::namespaced(client.clone(), &ns.name);
    HANG_AFTER_CALL.store(true, Ordering::SeqCst);
    let first = start(client.clone(), &ns.name, DriverConfig::default());
    let created = widgets
        .create(&PostParams::default(), &widget("maker", "create"))
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the call to go out", || async {
        (record("maker", |r| r.creates) == 1).then_some(())
    })
    .await;
    // The process dies after the call went out, before it could record the outcome.
    first.task.abort();
    let _ = first.task.await;
    HANG_AFTER_CALL.store(false, Ordering::SeqCst);

    let token = format!("{}-1", created.uid().unwrap());
    let stored_at_act = record("maker", |r| r.intent_stored_at_act.clone());
    let intent = stored_at_act[0]
        .clone()
        .expect("intent stored before the call");
    assert_eq!(
        (intent.action.as_str(), intent.token.as_str()),
        ("CreateConfigMap", token.as_str())
    );
    let left = widgets.get("maker").await.unwrap().status.unwrap();
    assert_eq!(left.in_flight.as_ref().map(|i| &i.token), Some(&token));

    // A new process, with no memory of the first: it sees the intent, looks, and finds
    // the change made.
    let second = start(client.clone(), &ns.name, DriverConfig::default());
    let done = eventually(Duration::from_secs(20), "the intent settled", || async {
        let w = widgets.get("maker").await.ok()?;
        let status = w.status.clone()?;
        let made = conditions::find(&status.conditions, "Made")?;
        (status.in_flight.is_none() && made.status == "True").then_some(w)
    })
    .await;
    assert_eq!(record("maker", |r| r.creates), 1, "no duplicate call");
    assert!(record("maker", |r| r.plans_seeing_intent) >= 1);
    assert_eq!(synced(&done).map(|c| c.status), Some("True".into()));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let cm = cms.get("maker").await.unwrap();
    assert_eq!(cm.annotations().get("token"), Some(&token));
    second.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), second.task)
        .await
        .expect("the controller stops")
        .unwrap();
}

#[tokio::test]
async fn ready_is_never_true_for_a_generation_whose_changes_failed() {
    install_widget_crd();
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "driver-ready").await;
    let widgets: Api<Widget> = Api::namespaced(client.clone(), &ns.name);
    let config = DriverConfig {
        report_after_failures: 1,
        ..DriverConfig::default()
    };
    let running = start(client.clone(), &ns.name, config);
    widgets
        .create(&PostParams::default(), &widget("server", "create"))
        .await
        .unwrap();
    let ready = |w: &Widget| {
        w.status
            .as_ref()
            .and_then(|s| conditions::find(&s.conditions, "Ready").cloned())
    };
    eventually(
        Duration::from_secs(20),
        "Ready for generation 1",
        || async {
            let w = widgets.get("server").await.ok()?;
            ready(&w).filter(|c| c.status == "True").map(|_| ())
        },
    )
    .await;

    // Generation 2 plans Ready from what serves, but its change is refused by the API
    // server: Ready must not be True for it, at the intent's write or after.
    widgets
        .patch(
            "server",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"mode": "refused"}})),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_failed = None;
    while Instant::now() < deadline {
        let w = widgets.get("server").await.unwrap();
        let c = ready(&w).unwrap();
        assert!(
            !(c.status == "True" && c.observed_generation == Some(2)),
            "Ready=True for generation 2: {c:?}"
        );
        if c.status == "False" {
            seen_failed = Some((c, synced(&w).unwrap()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (c, synced) = seen_failed.expect("Ready went False");
    assert_eq!(c.reason, "ReconcileFailed");
    assert!(
        c.message.starts_with("generation 2 is not in effect:"),
        "{}",
        c.message
    );
    assert_eq!(synced.status, "False");
    assert!(record("server", |r| r.intent_stored_at_act.len()) >= 1);
    running.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), running.task).await;
}

#[tokio::test]
async fn status_writes_never_force_over_others_nor_revert_from_a_stale_cache() {
    install_widget_crd();
    let client = env().admin().await;
    let ns = TestNamespace::new(env(), "driver-owners").await;
    let widgets: Api<Widget> = Api::namespaced(client.clone(), &ns.name);
    let w = widgets
        .create(&PostParams::default(), &widget("owned", "fail"))
        .await
        .unwrap();
    let ours = field_manager(Widget::CONTROLLER);
    let status = |reason: &str| WidgetStatus {
        conditions: conditions::merge(
            &[],
            &[Verdict::truthy("Made", "Exists", reason)],
            None,
            Timestamp::from_second(1_800_000_000).unwrap(),
        ),
        ..Default::default()
    };

    // Written by the foundation's single manager: taken over, not refused.
    widgets
        .patch_status(
            "owned",
            &PatchParams::apply("openemr-operator").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "test.openemr.io/v1", "kind": "Widget",
                "status": status("legacy"),
            })),
        )
        .await
        .unwrap();
    let after_legacy = apply_status(&widgets, "owned", &ours, &status("mine"), None)
        .await
        .expect("fields of an earlier manager of this operator are taken over");
    let managers: Vec<String> = after_legacy
        .managed_fields()
        .iter()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, std::slice::from_ref(&ours));

    // From a stale cache (an older resourceVersion): refused, nothing reverted.
    let stale = apply_status(
        &widgets,
        "owned",
        &ours,
        &status("stale"),
        w.resource_version().as_deref(),
    )
    .await;
    assert!(matches!(stale, Err(Error::StaleCache)), "{stale:?}");
    let kept = widgets.get("owned").await.unwrap().status.unwrap();
    assert_eq!(kept.conditions[0].message, "mine");

    // Another manager's fields are not forced over.
    widgets
        .patch_status(
            "owned",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "test.openemr.io/v1", "kind": "Widget",
                "status": {"observedGeneration": 7},
            })),
        )
        .await
        .unwrap();
    let mut mine = status("mine");
    mine.observed_generation = Some(1);
    let conflict = apply_status(&widgets, "owned", &ours, &mine, None).await;
    match conflict {
        Err(Error::StatusConflict { managers }) => assert_eq!(managers, ["someone-else"]),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let kept = widgets.get("owned").await.unwrap().status.unwrap();
    assert_eq!(kept.observed_generation, Some(7));
}
