//! A fault-injecting HTTP/1.1 proxy between the operator and moto: AWS misbehaving the way
//! it does in production (throttling, 5xx, connection resets, latency, a fixed error such
//! as `AccessDenied`), per operation, changeable while a test runs, and reproducible.
//!
//! Each request is named by its operation: the `X-Amz-Target` header (JSON protocols:
//! `secretsmanager.GetSecretValue` → `GetSecretValue`), the `Action` parameter of a
//! form-encoded body or of the query string (query protocols: RDS, CloudFormation, STS,
//! EC2), else `s3:<METHOD>`. A [`Rule`] for that operation, or else the rule for `*`,
//! decides what happens to it:
//!
//! - a fixed error ([`AwsFault`]) is answered every time;
//! - otherwise one draw decides between a reset (the socket is closed with an RST before
//!   anything is forwarded: the operation did not happen), throttling (as AWS answers it in
//!   that protocol), a 500 `InternalFailure` or 503 `ServiceUnavailable`, and forwarding;
//! - a forwarded request waits the rule's latency first. From then on it is *in flight*
//!   until moto's answer came back, and it is carried out even if the client is gone
//!   meanwhile (killed): the operation happens, its answer is lost, as with a real
//!   network;
//! - a forwarded request may also lose its answer: moto did the operation, the client gets
//!   a 503 instead (AWS acted, then failed to say so);
//! - a forwarded request's successful (2xx) answer may be rewritten: each of the rule's
//!   substitutions replaces every occurrence of a text, or of a regular expression, in the
//!   body (XML or JSON alike).
//!   moto has no `creating` snapshot, no rollback or in-progress stack states, no
//!   `storage-full` or `pending-reboot`: this is how tests make AWS answer as it does;
//! - a rule may be limited to the next n requests of its operation, then it is gone.
//!
//! The draw for the n-th request of an operation depends only on the seed, the operation
//! and n, so a run is reproducible however requests of different operations interleave.
//! The seed is [`DEFAULT_SEED`] unless `FAULT_SEED` is set or [`FaultProxy::start_seeded`]
//! is used.
//!
//! The proxy runs on a thread and runtime of its own, so it answers while the test's own
//! runtime is blocked (a `std::thread::sleep`, a `kubectl`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// The seed when neither `FAULT_SEED` nor [`FaultProxy::start_seeded`] gives one.
pub const DEFAULT_SEED: u64 = 0x5eed_0ffa_17e5;

/// How a service speaks, which decides what an error looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// awsQuery (RDS, CloudFormation, STS…): form-encoded request, XML `<ErrorResponse>`.
    Query,
    /// ec2Query: form-encoded request, XML `<Response><Errors>`.
    Ec2,
    /// awsJson 1.0/1.1 (Secrets Manager, KMS…): `X-Amz-Target`, JSON `__type`.
    Json,
    /// REST-XML of S3: `<Error>` at the root.
    S3,
}

/// An error answered instead of forwarding, in the protocol of the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsFault {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl AwsFault {
    pub fn new(status: u16, code: &str, message: &str) -> AwsFault {
        AwsFault {
            status,
            code: code.to_string(),
            message: message.to_string(),
        }
    }

    /// What IAM answers when the caller may not do `action` (e.g. `rds:CreateDBInstance`).
    pub fn access_denied(action: &str) -> AwsFault {
        AwsFault::new(
            403,
            "AccessDenied",
            &format!(
                "User: arn:aws:sts::123456789012:assumed-role/openemr-operator/test is not \
                 authorized to perform: {action} because no identity-based policy allows \
                 the {action} action"
            ),
        )
    }
}

/// What the proxy does to the requests of one operation. Probabilities are of each
/// request, checked in the order reset, throttling, server error.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rule {
    pub throttle: f64,
    pub server_error: f64,
    pub reset: f64,
    /// Waited before a request is forwarded (not before a fault is answered).
    pub latency: Duration,
    /// Answered to every request, instead of any draw.
    pub error: Option<AwsFault>,
    /// Probability that a forwarded request's answer is replaced by a 503.
    pub lose_answer: f64,
    /// The rule applies to this many more requests, then is removed (`None`: for good).
    pub times: Option<u64>,
    /// Substitutions applied, in order, to a forwarded request's 2xx answer.
    pub rewrites: Vec<Rewrite>,
}

impl Rule {
    pub fn throttle(mut self, probability: f64) -> Rule {
        self.throttle = probability;
        self
    }

    pub fn server_error(mut self, probability: f64) -> Rule {
        self.server_error = probability;
        self
    }

    pub fn reset(mut self, probability: f64) -> Rule {
        self.reset = probability;
        self
    }

    pub fn latency(mut self, latency: Duration) -> Rule {
        self.latency = latency;
        self
    }

    pub fn error(mut self, fault: AwsFault) -> Rule {
        self.error = Some(fault);
        self
    }

    pub fn lose_answer(mut self, probability: f64) -> Rule {
        self.lose_answer = probability;
        self
    }

    /// Every `text` in a successful answer becomes `replacement`.
    pub fn rewrite(mut self, text: &str, replacement: &str) -> Rule {
        self.rewrites.push(Rewrite {
            pattern: regex::escape(text),
            replacement: replacement.to_string(),
            literal: true,
        });
        self
    }

    /// Substitutes what a regular expression matches (`$1`… name its groups): for a change
    /// to one item of a list answer, e.g. one stack of many, found by its name.
    pub fn rewrite_pattern(mut self, pattern: &str, replacement: &str) -> Rule {
        regex::Regex::new(pattern).expect("a valid pattern");
        self.rewrites.push(Rewrite {
            pattern: pattern.to_string(),
            replacement: replacement.to_string(),
            literal: false,
        });
        self
    }

    pub fn times(mut self, requests: u64) -> Rule {
        self.times = Some(requests);
        self
    }
}

/// One substitution of a [`Rule`].
#[derive(Clone, Debug, PartialEq)]
pub struct Rewrite {
    pub pattern: String,
    pub replacement: String,
    /// The replacement is taken as it is (no `$` groups).
    pub literal: bool,
}

impl Rewrite {
    fn apply(&self, text: &str) -> String {
        let pattern = regex::Regex::new(&self.pattern).expect("checked when made");
        if self.literal {
            pattern
                .replace_all(text, regex::NoExpand(&self.replacement))
                .into_owned()
        } else {
            pattern.replace_all(text, &self.replacement).into_owned()
        }
    }
}

/// What happened to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Reset,
    Throttled,
    ServerError(u16),
    Error(String),
    Forwarded,
    /// Forwarded, and moto's answer replaced by a 503.
    AnswerLost,
}

impl Outcome {
    /// Anything but a plain forward.
    pub fn is_fault(&self) -> bool {
        *self != Outcome::Forwarded
    }
}

/// The requests of one operation (or of all, summed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests received.
    pub seen: u64,
    pub resets: u64,
    pub throttled: u64,
    pub server_errors: u64,
    /// Fixed errors answered.
    pub errors: u64,
    /// Requests sent on to moto (after their latency).
    pub forwarded: u64,
    /// Forwarded requests moto answered.
    pub answered: u64,
    /// Forwarded requests whose answer was replaced by a 503.
    pub answers_lost: u64,
    /// Requests passed by the faults and not yet answered by moto (waiting out their
    /// latency, or at moto).
    pub in_flight: u64,
    /// Forwarded requests whose answer a rewrite rule applied to.
    pub rewritten: u64,
}

impl Counts {
    /// Requests answered with a fault or reset (the lost answers not included: those
    /// requests were forwarded).
    pub fn faulted(&self) -> u64 {
        self.resets + self.throttled + self.server_errors + self.errors
    }

    fn add(&mut self, other: &Counts) {
        self.seen += other.seen;
        self.resets += other.resets;
        self.throttled += other.throttled;
        self.server_errors += other.server_errors;
        self.errors += other.errors;
        self.forwarded += other.forwarded;
        self.answered += other.answered;
        self.answers_lost += other.answers_lost;
        self.in_flight += other.in_flight;
    }
}

/// One forwarded request and moto's answer, kept for the operations named in
/// [`FaultProxy::record`].
#[derive(Clone, Debug, Default)]
pub struct Exchange {
    /// The query string and the body (form-encoded for query protocols), as text.
    pub request: String,
    /// The access key id the request was signed with (SigV4 `Credential=`): whose
    /// credentials made it.
    pub access_key: String,
    /// The region it was signed for (the SigV4 credential scope): where it was sent.
    pub region: String,
    pub answer: String,
}

impl Exchange {
    /// The value of `key` in the request's query string or form body.
    pub fn param(&self, key: &str) -> Option<String> {
        self.request
            .split(['&', '?', '\n'])
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| percent_decode(v))
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The access key id of a SigV4 `Authorization` header.
fn access_key_of(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("Credential=").nth(1))
        .and_then(|v| v.split('/').next())
        .unwrap_or_default()
        .to_string()
}

#[derive(Default)]
struct State {
    rules: BTreeMap<String, Rule>,
    counts: BTreeMap<String, Counts>,
    history: BTreeMap<String, Vec<(Instant, Outcome)>>,
    /// Operations whose exchanges are kept, with them.
    recorded: BTreeMap<String, Vec<Exchange>>,
}

struct Shared {
    upstream: String,
    seed: u64,
    state: Mutex<State>,
}

/// A running proxy; stopped when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy on 127.0.0.1 (a free port) in front of `upstream` (`http://host:port`),
    /// passing everything until told otherwise.
    pub fn start(upstream: &str) -> FaultProxy {
        let seed = std::env::var("FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_SEED);
        Self::start_seeded(upstream, seed)
    }

    pub fn start_seeded(upstream: &str, seed: u64) -> FaultProxy {
        let authority = upstream
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("the proxy forwards plain HTTP only, not {upstream}"))
            .trim_end_matches('/')
            .to_string();
        let shared = Arc::new(Shared {
            upstream: authority,
            seed,
            state: Mutex::new(State::default()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("the proxy's runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    serve(listener, serving, stopped).await;
                });
                // Connections still open are dropped with the runtime.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("starting the proxy's thread");
        FaultProxy {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The address to give the operator as `AWS_ENDPOINT_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// Sets the rule of `operation` (or `*`: every operation without a rule of its own).
    pub fn set(&self, operation: &str, rule: Rule) {
        self.state().rules.insert(operation.to_string(), rule);
    }

    /// Removes the rule of `operation`; its requests follow `*` again.
    pub fn clear(&self, operation: &str) {
        self.state().rules.remove(operation);
    }

    /// Keeps every forwarded request of `operation` from now on, with its answer
    /// ([`FaultProxy::exchanges`]).
    pub fn record(&self, operation: &str) {
        self.state()
            .recorded
            .entry(operation.to_string())
            .or_default();
    }

    /// The exchanges of `operation` kept since [`FaultProxy::record`].
    pub fn exchanges(&self, operation: &str) -> Vec<Exchange> {
        self.state()
            .recorded
            .get(operation)
            .cloned()
            .unwrap_or_default()
    }

    /// Removes every rule: everything passes.
    pub fn clear_all(&self) {
        self.state().rules.clear();
    }

    /// The counts of one operation.
    pub fn counts(&self, operation: &str) -> Counts {
        self.state()
            .counts
            .get(operation)
            .copied()
            .unwrap_or_default()
    }

    /// The counts of every operation seen.
    pub fn all_counts(&self) -> BTreeMap<String, Counts> {
        self.state().counts.clone()
    }

    /// The counts summed over every operation.
    pub fn total(&self) -> Counts {
        let mut total = Counts::default();
        for c in self.state().counts.values() {
            total.add(c);
        }
        total
    }

    /// When each request of `operation` arrived and what was done to it, in order.
    pub fn history(&self, operation: &str) -> Vec<(Instant, Outcome)> {
        self.state()
            .history
            .get(operation)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits (polling every 10 ms, up to `timeout`) until `check` holds for the counts of
    /// `operation`, and returns them.
    pub async fn wait_until(
        &self,
        operation: &str,
        timeout: Duration,
        what: &str,
        check: impl Fn(&Counts) -> bool,
    ) -> Counts {
        let deadline = Instant::now() + timeout;
        loop {
            let counts = self.counts(operation);
            if check(&counts) {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {operation}: {what} ({counts:?})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A table of the counts per operation, for a test's output.
    pub fn report(&self) -> String {
        let mut out = String::from(
            "operation                      seen  reset thrott   5xx  error  fwd   answ   lost  in-fl\n",
        );
        let mut line = |name: &str, c: &Counts| {
            out.push_str(&format!(
                "{name:<28} {:>6} {:>6} {:>6} {:>5} {:>6} {:>5} {:>6} {:>6} {:>6}\n",
                c.seen,
                c.resets,
                c.throttled,
                c.server_errors,
                c.errors,
                c.forwarded,
                c.answered,
                c.answers_lost,
                c.in_flight
            ))
        };
        for (name, c) in self.all_counts() {
            line(&name, &c);
        }
        line("(total)", &self.total());
        out
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What to do with one request.
enum Decision {
    Reset,
    Answer(Fault),
    /// After this latency; with the answer replaced by a 503 if `lose` is set, else
    /// rewritten by `rewrites` if it succeeded.
    Forward {
        latency: Duration,
        lose: bool,
        rewrites: Vec<Rewrite>,
    },
}

enum Fault {
    Throttle,
    Server(u16),
    Fixed(AwsFault),
}

impl Shared {
    /// Counts the request and draws its fate.
    fn decide(&self, operation: &str) -> Decision {
        let mut state = self.state.lock().unwrap();
        let key = [operation, "*"]
            .into_iter()
            .find(|k| state.rules.contains_key(*k));
        let rule = key
            .and_then(|k| state.rules.get(k))
            .cloned()
            .unwrap_or_default();
        if let (Some(key), Some(left)) = (key, rule.times) {
            if left <= 1 {
                state.rules.remove(key);
            } else if let Some(r) = state.rules.get_mut(key) {
                r.times = Some(left - 1);
            }
        }
        let counts = state.counts.entry(operation.to_string()).or_default();
        let n = counts.seen;
        counts.seen += 1;
        let draw = unit(mix(self.seed, operation, n, 0));
        let (decision, outcome) = if let Some(fault) = rule.error {
            counts.errors += 1;
            let code = fault.code.clone();
            (Decision::Answer(Fault::Fixed(fault)), Outcome::Error(code))
        } else if draw < rule.reset {
            counts.resets += 1;
            (Decision::Reset, Outcome::Reset)
        } else if draw < rule.reset + rule.throttle {
            counts.throttled += 1;
            (Decision::Answer(Fault::Throttle), Outcome::Throttled)
        } else if draw < rule.reset + rule.throttle + rule.server_error {
            counts.server_errors += 1;
            let status = if unit(mix(self.seed, operation, n, 1)) < 0.5 {
                500
            } else {
                503
            };
            (
                Decision::Answer(Fault::Server(status)),
                Outcome::ServerError(status),
            )
        } else {
            counts.in_flight += 1;
            let lose = unit(mix(self.seed, operation, n, 2)) < rule.lose_answer;
            let outcome = if lose {
                counts.answers_lost += 1;
                Outcome::AnswerLost
            } else {
                Outcome::Forwarded
            };
            if !lose && !rule.rewrites.is_empty() {
                counts.rewritten += 1;
            }
            (
                Decision::Forward {
                    latency: rule.latency,
                    lose,
                    rewrites: rule.rewrites.clone(),
                },
                outcome,
            )
        };
        state
            .history
            .entry(operation.to_string())
            .or_default()
            .push((Instant::now(), outcome));
        decision
    }

    fn count(&self, operation: &str, f: impl FnOnce(&mut Counts)) {
        f(self
            .state
            .lock()
            .unwrap()
            .counts
            .entry(operation.to_string())
            .or_default());
    }
}

/// SplitMix64's finalizer over the seed, the operation (FNV-1a) and the request's number.
fn mix(seed: u64, operation: &str, n: u64, salt: u64) -> u64 {
    let mut name = 0xcbf2_9ce4_8422_2325_u64;
    for b in operation.bytes() {
        name = (name ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = seed
        ^ name
        ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ salt.wrapping_mul(0xd6e8_feb8_6659_fd93);
    for _ in 0..2 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
    }
    z
}

/// A number in [0, 1) from 53 bits of `x`.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                // Closing a connection is then an RST, which is what a reset must be; the
                // proxy closes a connection first only to reset it.
                let _ = stream.set_zero_linger();
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream, shared.clone()));
            }
        }
    }
}

/// Serves one client connection until it closes or a request on it is to be reset.
async fn connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let reset = Arc::new(tokio::sync::Notify::new());
    let service = {
        let reset = reset.clone();
        hyper::service::service_fn(move |request| handle(request, shared.clone(), reset.clone()))
    };
    let serving =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = serving => {}
        // Dropping the connection closes the socket without an answer.
        _ = reset.notified() => {}
    }
}

type Answer = Response<Full<Bytes>>;

async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
    reset: Arc<tokio::sync::Notify>,
) -> Result<Answer, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                &format!("reading body: {e}"),
            ));
        }
    };
    let call = Call::of(&parts, &body);
    match shared.decide(&call.operation) {
        Decision::Reset => {
            reset.notify_one();
            match std::future::pending::<Infallible>().await {}
        }
        Decision::Answer(fault) => Ok(call.fault_answer(&fault)),
        Decision::Forward {
            latency,
            lose,
            rewrites,
        } => {
            // A task of its own: it goes on if the client goes away (is killed).
            let operation = call.operation.clone();
            let forwarding =
                tokio::spawn(forward(shared, operation, latency, parts, body, rewrites));
            Ok(match forwarding.await {
                Ok(Ok(_)) if lose => call.fault_answer(&Fault::Server(503)),
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => plain(StatusCode::BAD_GATEWAY, &e),
                Err(e) => plain(StatusCode::BAD_GATEWAY, &e.to_string()),
            })
        }
    }
}

/// Decrements the in-flight count when the forwarding ends, however it ends.
struct InFlight {
    shared: Arc<Shared>,
    operation: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.count(&self.operation, |c| {
            c.in_flight = c.in_flight.saturating_sub(1)
        });
    }
}

async fn forward(
    shared: Arc<Shared>,
    operation: String,
    latency: Duration,
    mut parts: Parts,
    body: Bytes,
    rewrites: Vec<Rewrite>,
) -> Result<Answer, String> {
    let _in_flight = InFlight {
        shared: shared.clone(),
        operation: operation.clone(),
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    shared.count(&operation, |c| c.forwarded += 1);
    let stream = tokio::net::TcpStream::connect(&shared.upstream)
        .await
        .map_err(|e| format!("connecting to {}: {e}", shared.upstream))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake with {}: {e}", shared.upstream))?;
    tokio::spawn(connection);
    // The body went through whole: send it with its length, whatever framing it came in.
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts.headers.remove(header::CONNECTION);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Some(path) = parts.uri.path_and_query() {
        parts.uri = path.as_str().parse().unwrap();
    }
    let head = parts.method == Method::HEAD;
    let recording = shared
        .state
        .lock()
        .unwrap()
        .recorded
        .contains_key(&operation);
    let mut exchange = recording.then(|| Exchange {
        request: format!(
            "{}\n{}",
            parts.uri.query().unwrap_or_default(),
            String::from_utf8_lossy(&body)
        ),
        access_key: access_key_of(&parts.headers),
        region: credential_scope(&parts.headers, 2).unwrap_or_default(),
        answer: String::new(),
    });
    let response = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await
        .map_err(|e| format!("forwarding to {}: {e}", shared.upstream))?;
    let (mut parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| {
            // Said whole, for the next time this is seen (once, in CI): which answer broke.
            format!(
                "reading moto's answer to {operation} ({} {:?}): {e:?}",
                parts.status, parts.headers
            )
        })?
        .to_bytes();
    shared.count(&operation, |c| c.answered += 1);
    let body = match std::str::from_utf8(&body) {
        Ok(text) if parts.status.is_success() && !rewrites.is_empty() => {
            let mut text = text.to_string();
            for rewrite in &rewrites {
                text = rewrite.apply(&text);
            }
            Bytes::from(text)
        }
        _ => body,
    };
    if let Some(mut exchange) = exchange.take() {
        exchange.answer = String::from_utf8_lossy(&body).into_owned();
        if let Some(kept) = shared.state.lock().unwrap().recorded.get_mut(&operation) {
            kept.push(exchange);
        }
    }
    for name in [header::TRANSFER_ENCODING, header::CONNECTION] {
        parts.headers.remove(name);
    }
    parts.headers.remove("keep-alive");
    if !head {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    Ok(Response::from_parts(parts, Full::new(body)))
}

fn plain(status: StatusCode, text: &str) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(text.to_string())));
    *answer.status_mut() = status;
    answer
}

/// One request, as the proxy names it.
struct Call {
    operation: String,
    protocol: Protocol,
    /// The request's `Content-Type`, echoed in JSON answers (`application/x-amz-json-1.1`).
    content_type: Option<HeaderValue>,
}

impl Call {
    fn of(parts: &Parts, body: &[u8]) -> Call {
        let headers = &parts.headers;
        let content_type = headers.get(header::CONTENT_TYPE).cloned();
        if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
            return Call {
                operation: target.rsplit('.').next().unwrap_or(target).to_string(),
                protocol: Protocol::Json,
                content_type,
            };
        }
        let form = content_type
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("x-www-form-urlencoded"));
        let action = parts
            .uri
            .query()
            .and_then(|q| form_value(q, "Action"))
            .or_else(|| {
                form.then(|| std::str::from_utf8(body).ok())
                    .flatten()
                    .and_then(|b| form_value(b, "Action"))
            });
        match action {
            Some(action) => Call {
                operation: action,
                protocol: if signing_service(headers).as_deref() == Some("ec2") {
                    Protocol::Ec2
                } else {
                    Protocol::Query
                },
                content_type,
            },
            None => Call {
                operation: format!("s3:{}", parts.method),
                protocol: Protocol::S3,
                content_type,
            },
        }
    }

    fn fault_answer(&self, fault: &Fault) -> Answer {
        let (status, code, message) = match (fault, self.protocol) {
            (Fault::Throttle, Protocol::Json) => (400, "ThrottlingException", "Rate exceeded"),
            (Fault::Throttle, Protocol::Query) => (400, "Throttling", "Rate exceeded"),
            (Fault::Throttle, Protocol::Ec2) => {
                (503, "RequestLimitExceeded", "Request limit exceeded.")
            }
            (Fault::Throttle, Protocol::S3) => {
                (503, "SlowDown", "Please reduce your request rate.")
            }
            (Fault::Server(500), Protocol::S3) => (
                500,
                "InternalError",
                "We encountered an internal error. Please try again.",
            ),
            (Fault::Server(500), _) => (
                500,
                "InternalFailure",
                "The request processing has failed because of an unknown error, exception or failure.",
            ),
            (Fault::Server(status), _) => (
                *status,
                "ServiceUnavailable",
                "Service is unavailable. Please try again later.",
            ),
            (Fault::Fixed(f), _) => (f.status, f.code.as_str(), f.message.as_str()),
        };
        // The query code a JSON service compatible with its former query protocol sends.
        let query_code = match fault {
            Fault::Throttle => "Throttling",
            _ => code,
        };
        let request_id = request_id(&self.operation, status, code);
        let sender = if status < 500 { "Sender" } else { "Receiver" };
        let (content_type, body) = match self.protocol {
            Protocol::Json => (
                self.content_type
                    .clone()
                    .unwrap_or(HeaderValue::from_static("application/x-amz-json-1.1")),
                serde_json::json!({"__type": code, "message": message}).to_string(),
            ),
            Protocol::Query => (
                HeaderValue::from_static("text/xml"),
                format!(
                    "<ErrorResponse><Error><Type>{sender}</Type><Code>{}</Code>\
                     <Message>{}</Message></Error><RequestId>{request_id}</RequestId>\
                     </ErrorResponse>",
                    xml(code),
                    xml(message)
                ),
            ),
            Protocol::Ec2 => (
                HeaderValue::from_static("text/xml;charset=UTF-8"),
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
                     <Code>{}</Code><Message>{}</Message></Error></Errors>\
                     <RequestID>{request_id}</RequestID></Response>",
                    xml(code),
                    xml(message)
                ),
            ),
            Protocol::S3 => (
                HeaderValue::from_static("application/xml"),
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code>\
                     <Message>{}</Message><RequestId>{request_id}</RequestId></Error>",
                    xml(code),
                    xml(message)
                ),
            ),
        };
        let mut answer = Response::new(Full::new(Bytes::from(body)));
        *answer.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        let headers: &mut HeaderMap = answer.headers_mut();
        headers.insert(header::CONTENT_TYPE, content_type);
        headers.insert("x-amzn-requestid", header_value(&request_id));
        if self.protocol == Protocol::Json {
            headers.insert(
                "x-amzn-query-error",
                header_value(&format!("{query_code};{sender}")),
            );
        }
        if self.protocol == Protocol::S3 {
            headers.insert("x-amz-request-id", header_value(&request_id));
        }
        answer
    }
}

/// The value of `key` in a form-encoded string (action names need no decoding).
fn form_value(form: &str, key: &str) -> Option<String> {
    form.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key && !v.is_empty()).then(|| v.to_string())
    })
}

/// The service of the SigV4 credential scope (`Credential=AKID/date/region/SERVICE/aws4_request`).
fn signing_service(headers: &HeaderMap) -> Option<String> {
    credential_scope(headers, 3)
}

/// Part `n` of the SigV4 credential scope (`AKID/date/region/service/aws4_request`).
fn credential_scope(headers: &HeaderMap, n: usize) -> Option<String> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let scope = auth.split("Credential=").nth(1)?.split(',').next()?;
    scope.split('/').nth(n).map(str::to_string)
}

fn request_id(operation: &str, status: u16, code: &str) -> String {
    let n = mix(status.into(), operation, code.len() as u64, 7);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        n >> 32,
        (n >> 16) & 0xffff,
        n & 0xffff,
        status,
        n & 0xffff_ffff_ffff
    )
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("invalid"))
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
