//! A fault-injecting HTTP proxy that sits between `kpr` and kinesis-mock, inside the test
//! process: it answers a chosen share of calls with the errors the real service sends (or a
//! 5xx, a delay, a dropped connection), can enforce a request rate, can play "backend gone",
//! and counts every call it sees per operation and per resource ARN.
//!
//! Fault decisions are a pure function of (seed, operation, ARN, how many times this proxy has
//! seen that operation on that ARN), not of arrival order: a failing run reproduces with the same
//! seed however kpr's concurrent calls interleave.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What the proxy does instead of (or before) forwarding a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// 400 `ResourceInUseException`: the resource is not ACTIVE (retryable).
    ResourceInUse,
    /// 400 `LimitExceededException`: too many requests (retryable).
    LimitExceeded,
    /// 400 `AccessDeniedException` (must not be retried).
    AccessDenied,
    /// 400 `InvalidArgumentException` (must not be retried).
    InvalidArgument,
    /// 400 `ResourceNotFoundException`: the resource is gone (deleted since it was listed).
    ResourceNotFound,
    /// 500 with the service's JSON error body (`InternalFailure`).
    Http500,
    /// 503 with a plain-text body, as a load balancer in front of the service would send.
    Http503,
    /// 403 with an HTML page, as a corporate proxy or a firewall refusing the call sends: no
    /// Kinesis error, and the call never reached the service (must not be retried).
    Http403Html,
    /// Read the request, then close the connection without answering.
    Drop,
    /// Wait, then forward.
    Delay(Duration),
}

impl Fault {
    /// A short label for counters and messages.
    pub fn label(self) -> &'static str {
        match self {
            Fault::ResourceInUse => "ResourceInUseException",
            Fault::LimitExceeded => "LimitExceededException",
            Fault::AccessDenied => "AccessDeniedException",
            Fault::InvalidArgument => "InvalidArgumentException",
            Fault::ResourceNotFound => "ResourceNotFoundException",
            Fault::Http500 => "http500",
            Fault::Http503 => "http503",
            Fault::Http403Html => "http403html",
            Fault::Drop => "drop",
            Fault::Delay(_) => "delay",
        }
    }

    /// The faults a client should retry, in the proportions the mixed-fault tests use.
    pub const RETRYABLE_MIX: [Fault; 6] = [
        Fault::ResourceInUse,
        Fault::LimitExceeded,
        Fault::Http500,
        Fault::Http503,
        Fault::Drop,
        Fault::Delay(Duration::from_millis(150)),
    ];
}

/// How the backend disappears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// The listening socket is closed: new connections are refused, open ones are dropped.
    Refuse,
    /// Connections are accepted and closed at once; requests on open ones get no answer.
    Drop,
}

/// Counts of one operation (or one ARN and operation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    /// Requests that arrived (each of the others is a subset).
    pub seen: u64,
    /// Answered by the upstream (its answer was relayed).
    pub forwarded: u64,
    /// Answered (or dropped) by the proxy itself.
    pub faulted: u64,
}

impl Count {
    fn add(&mut self, other: &Count) {
        self.seen += other.seen;
        self.forwarded += other.forwarded;
        self.faulted += other.faulted;
    }
}

#[derive(Debug, Default)]
struct Stats {
    /// (operation, ARN) -> counts. Calls without an ARN in the body use "".
    calls: HashMap<(String, String), Count>,
    /// Fault label -> how often it was injected.
    faults: BTreeMap<&'static str, u64>,
    /// (operation, User-Agent product) -> calls: which client path sent them.
    agents: BTreeMap<(String, String), u64>,
    total: u64,
}

#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Default)]
struct Config {
    seed: u64,
    /// Share of calls (0..=1) answered with a fault drawn from `mix`.
    fault_rate: f64,
    mix: Vec<Fault>,
    /// Only calls of these operations are eligible for random faults (empty: all).
    ops: Vec<String>,
    /// Always applied to every forwarded call.
    delay: Option<Duration>,
    /// (operation or "" for any, ARN) -> fault, applied to every matching call.
    sticky: HashMap<(String, String), Fault>,
    bucket: Option<TokenBucket>,
    /// Switch to `gone` once this many calls have been seen.
    gone_after: Option<(u64, Gone)>,
    gone: Option<Gone>,
    /// Calls of these operations wait, counted as seen, until [`Proxy::release`].
    held: Vec<String>,
    /// (operation, from, to): text replaced in that operation's forwarded answers.
    rewrites: Vec<(String, String, String)>,
}

struct Shared {
    addr: SocketAddr,
    upstream: String,
    config: Mutex<Config>,
    stats: Mutex<Stats>,
    client: Client<HttpConnector, Full<Bytes>>,
    accept_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    handle: tokio::runtime::Handle,
    /// Connections open plus forwards under way; see [`Busy`].
    busy: std::sync::atomic::AtomicU64,
    /// Wakes held calls when a hold is released.
    gate: tokio::sync::Notify,
}

/// Counted in `Shared::busy` while it lives. A connection counts until it closes, so a request
/// kpr wrote just before it died, not yet read by the proxy, still keeps the proxy busy; a
/// forward counts until the upstream has answered it.
struct Busy(Arc<Shared>);

impl Busy {
    fn new(shared: &Arc<Shared>) -> Busy {
        shared
            .busy
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Busy(shared.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .busy
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The proxy; it stops when dropped.
pub struct Proxy {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

pub const TARGET_PREFIX: &str = "Kinesis_20131202.";

impl Proxy {
    /// Starts a proxy on 127.0.0.1 (a free port) forwarding to `upstream` (`http://host:port`),
    /// with no fault configured.
    pub fn start(upstream: &str) -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("fault-proxy")
            .build()
            .expect("proxy runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();
        let shared = Arc::new(Shared {
            addr,
            upstream: upstream.trim_end_matches('/').to_string(),
            config: Mutex::new(Config {
                seed: 1,
                ..Config::default()
            }),
            stats: Mutex::new(Stats::default()),
            client,
            accept_task: Mutex::new(None),
            handle: runtime.handle().clone(),
            busy: Default::default(),
            gate: tokio::sync::Notify::new(),
        });
        spawn_accept(&shared, listener);
        Proxy {
            shared,
            runtime: Some(runtime),
        }
    }

    /// The URL to give kpr as `--endpoint-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    fn config(&self) -> std::sync::MutexGuard<'_, Config> {
        self.shared.config.lock().unwrap()
    }

    /// Answer `rate` (0..=1) of the calls with a fault drawn uniformly from `mix`, decided by
    /// `seed`.
    pub fn random_faults(&self, seed: u64, rate: f64, mix: &[Fault]) -> &Self {
        let mut c = self.config();
        c.seed = seed;
        c.fault_rate = rate;
        c.mix = mix.to_vec();
        self
    }

    /// Restrict random faults to these operations (names without the target prefix).
    pub fn fault_ops(&self, ops: &[&str]) -> &Self {
        self.config().ops = ops.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Every call of `op` (None: any operation) on `arn` gets `fault`.
    pub fn always(&self, op: Option<&str>, arn: &str, fault: Fault) -> &Self {
        self.config()
            .sticky
            .insert((op.unwrap_or("").to_string(), arn.to_string()), fault);
        self
    }

    /// Delay every forwarded call (None: no delay).
    pub fn delay(&self, d: Option<Duration>) -> &Self {
        self.config().delay = d;
        self
    }

    /// Calls of `op` wait before they are forwarded until [`Proxy::release`]: a test acts
    /// while the caller is mid-call, with no timing to guess.
    pub fn hold(&self, op: &str) -> &Self {
        self.config().held.push(op.to_string());
        self
    }

    /// In every answer to `op` the backend sends, `from` is replaced by `to`: a service that
    /// answers with something other than what was asked.
    pub fn rewrite(&self, op: &str, from: &str, to: &str) -> &Self {
        self.config()
            .rewrites
            .push((op.to_string(), from.to_string(), to.to_string()));
        self
    }

    /// Every held call goes on, and none is held from now on.
    pub fn release(&self) {
        self.config().held.clear();
        self.shared.gate.notify_waiters();
    }

    /// Token bucket: `rate` calls per second, bursts of `burst`; calls above it get
    /// LimitExceededException. None removes the limit.
    pub fn rate_limit(&self, limit: Option<(f64, f64)>) -> &Self {
        self.config().bucket = limit.map(|(rate, burst)| TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        });
        self
    }

    /// After `after` calls in total (counting from proxy start), the backend goes away.
    pub fn gone_after(&self, after: u64, how: Gone) -> &Self {
        self.config().gone_after = Some((after, how));
        self
    }

    /// The backend goes away now.
    pub fn go_away(&self, how: Gone) {
        go_away(&self.shared, how);
    }

    /// Back to a healthy, fault-free proxy on the same address (counters are kept).
    pub fn heal(&self) {
        let was_refusing = {
            let mut c = self.config();
            let was = c.gone == Some(Gone::Refuse);
            *c = Config {
                seed: c.seed,
                ..Config::default()
            };
            was
        };
        self.shared.gate.notify_waiters();
        if was_refusing {
            let listener = self
                .shared
                .handle
                .block_on(async {
                    // The port was just released; retry briefly in case the kernel lags.
                    for _ in 0..50 {
                        if let Ok(l) = tokio::net::TcpListener::bind(self.shared.addr).await {
                            return Some(l);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    None
                })
                .expect("re-bind the proxy address");
            spawn_accept(&self.shared, listener);
        }
    }

    /// Forget every count.
    pub fn reset_counts(&self) {
        *self.shared.stats.lock().unwrap() = Stats::default();
    }

    /// Calls seen in total.
    pub fn total(&self) -> u64 {
        self.shared.stats.lock().unwrap().total
    }

    /// Counts of one operation (name without the target prefix), all ARNs.
    pub fn op(&self, op: &str) -> Count {
        let stats = self.shared.stats.lock().unwrap();
        let mut sum = Count::default();
        for ((o, _), c) in &stats.calls {
            if o == op {
                sum.add(c);
            }
        }
        sum
    }

    /// Counts of one operation on one ARN.
    pub fn op_on(&self, op: &str, arn: &str) -> Count {
        self.shared
            .stats
            .lock()
            .unwrap()
            .calls
            .get(&(op.to_string(), arn.to_string()))
            .copied()
            .unwrap_or_default()
    }

    /// Counts of every operation on one ARN.
    pub fn on(&self, arn: &str) -> Count {
        let stats = self.shared.stats.lock().unwrap();
        let mut sum = Count::default();
        for ((_, a), c) in &stats.calls {
            if a == arn {
                sum.add(c);
            }
        }
        sum
    }

    /// ARN -> calls seen (all operations).
    pub fn per_arn(&self) -> BTreeMap<String, u64> {
        let stats = self.shared.stats.lock().unwrap();
        let mut out = BTreeMap::new();
        for ((_, a), c) in &stats.calls {
            *out.entry(a.clone()).or_insert(0) += c.seen;
        }
        out
    }

    /// Operation -> counts.
    pub fn per_op(&self) -> BTreeMap<String, Count> {
        let stats = self.shared.stats.lock().unwrap();
        let mut out: BTreeMap<String, Count> = BTreeMap::new();
        for ((o, _), c) in &stats.calls {
            out.entry(o.clone()).or_default().add(c);
        }
        out
    }

    /// Fault label -> how often it was injected.
    /// User-Agent product (`kpr`, `aws-sdk-rust`) -> calls of `op`.
    pub fn agents(&self, op: &str) -> BTreeMap<String, u64> {
        let stats = self.shared.stats.lock().unwrap();
        stats
            .agents
            .iter()
            .filter(|((o, _), _)| o == op)
            .map(|((_, a), n)| (a.clone(), *n))
            .collect()
    }

    pub fn faults(&self) -> BTreeMap<&'static str, u64> {
        self.shared.stats.lock().unwrap().faults.clone()
    }

    /// Put + Delete calls seen.
    pub fn writes(&self) -> u64 {
        self.op("PutResourcePolicy").seen + self.op("DeleteResourcePolicy").seen
    }

    /// No connection open and no forward under way: once its client is gone, everything the
    /// client sent has been counted and has reached the upstream or never will.
    pub fn quiet(&self) -> bool {
        self.shared.busy.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    /// Wait until `cond` holds (checked every 10 ms) or `timeout` passes; returns whether it held.
    pub fn wait_for(&self, timeout: Duration, cond: impl Fn(&Proxy) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        cond(self)
    }

    /// A one-line summary for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "proxy saw {} calls; per operation {:?}; faults {:?}",
            self.total(),
            self.per_op()
                .into_iter()
                .map(|(o, c)| (o, c.seen, c.forwarded, c.faulted))
                .collect::<Vec<_>>(),
            self.faults()
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn spawn_accept(shared: &Arc<Shared>, listener: tokio::net::TcpListener) {
    let s = shared.clone();
    let task = shared.handle.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            if s.config.lock().unwrap().gone == Some(Gone::Drop) {
                drop(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let open = Busy::new(&s);
            let s = s.clone();
            tokio::spawn(async move {
                let _open = open;
                let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
                // Errors here are the faults this proxy injects (or kpr being killed).
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    *shared.accept_task.lock().unwrap() = Some(task);
}

fn go_away(shared: &Shared, how: Gone) {
    shared.config.lock().unwrap().gone = Some(how);
    if how == Gone::Refuse
        && let Some(task) = shared.accept_task.lock().unwrap().take()
    {
        // Dropping the accept loop drops the listener: the port refuses connections.
        task.abort();
    }
}

/// FNV-1a, then splitmix64: stable across toolchains, unlike `DefaultHasher`.
fn decision_seed(seed: u64, op: &str, arn: &str, n: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in op
        .bytes()
        .chain([0u8])
        .chain(arn.bytes())
        .chain(n.to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// What to do with one call, decided under the config lock.
enum Decision {
    /// Forward after the delay; `injected` when the delay is a drawn fault.
    Forward {
        delay: Option<Duration>,
        injected: bool,
    },
    Fault(Fault),
}

fn decide(shared: &Shared, op: &str, arn: &str, n: u64, total: u64) -> Decision {
    let mut c = shared.config.lock().unwrap();
    if c.gone.is_none()
        && let Some((after, how)) = c.gone_after
        && total > after
    {
        drop(c);
        go_away(shared, how);
        c = shared.config.lock().unwrap();
    }
    if c.gone.is_some() {
        return Decision::Fault(Fault::Drop);
    }
    let sticky = c
        .sticky
        .get(&(op.to_string(), arn.to_string()))
        .or_else(|| c.sticky.get(&(String::new(), arn.to_string())))
        .copied();
    if let Some(f) = sticky {
        return Decision::Fault(f);
    }
    if let Some(bucket) = &mut c.bucket
        && !bucket.take()
    {
        return Decision::Fault(Fault::LimitExceeded);
    }
    if c.fault_rate > 0.0
        && !c.mix.is_empty()
        && (c.ops.is_empty() || c.ops.iter().any(|o| o == op))
    {
        let mut rng = fastrand::Rng::with_seed(decision_seed(c.seed, op, arn, n));
        if rng.f64() < c.fault_rate {
            let f = c.mix[rng.usize(..c.mix.len())];
            return match f {
                Fault::Delay(d) => Decision::Forward {
                    delay: Some(d + c.delay.unwrap_or_default()),
                    injected: true,
                },
                f => Decision::Fault(f),
            };
        }
    }
    Decision::Forward {
        delay: c.delay,
        injected: false,
    }
}

fn aws_error(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"__type": code, "message": message}).to_string();
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amzn-RequestId", "00000000-0000-0000-0000-000000000000")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// An answer that is no Kinesis error: what a load balancer or a proxy in front sends.
fn page(status: StatusCode, content_type: &str, body: &'static [u8]) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

/// The error the service would send; `None` for a dropped connection.
fn fault_response(f: Fault, op: &str, arn: &str) -> Option<Response<Full<Bytes>>> {
    Some(match f {
        Fault::ResourceInUse => aws_error(
            400,
            "ResourceInUseException",
            &format!("Resource {arn} is not ACTIVE (injected)"),
        ),
        Fault::LimitExceeded => aws_error(
            400,
            "LimitExceededException",
            &format!("Rate exceeded for resource {arn} (injected)"),
        ),
        Fault::AccessDenied => aws_error(
            400,
            "AccessDeniedException",
            // As AWS words it: the resource's ARN in the middle of the sentence.
            &format!(
                "User: arn:aws:iam::000000000000:user/injected is not authorized to perform: \
                 kinesis:{op} on resource: {arn} because no identity-based policy allows the \
                 kinesis:{op} action"
            ),
        ),
        Fault::InvalidArgument => aws_error(
            400,
            "InvalidArgumentException",
            &format!("Invalid argument for {arn} (injected)"),
        ),
        Fault::ResourceNotFound => aws_error(
            400,
            "ResourceNotFoundException",
            &format!("Stream {arn} not found (injected)"),
        ),
        Fault::Http500 => aws_error(500, "InternalFailure", "injected internal failure"),
        Fault::Http503 => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            b"Service Unavailable (injected)",
        ),
        Fault::Http403Html => page(
            StatusCode::FORBIDDEN,
            "text/html",
            b"<html><body>Request blocked by policy (injected)</body></html>",
        ),
        Fault::Drop | Fault::Delay(_) => return None,
    })
}

#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the fault proxy")
    }
}

impl std::error::Error for Dropped {}

/// The resource a call addresses, for per-resource counts.
fn arn_of(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::new();
    };
    ["ResourceARN", "ConsumerARN", "StreamARN"]
        .iter()
        .find_map(|k| v.get(*k).and_then(|a| a.as_str()))
        .unwrap_or("")
        .to_string()
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
    let op = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(|t| t.strip_prefix(TARGET_PREFIX).unwrap_or(t).to_string())
        .unwrap_or_default();
    let arn = arn_of(&body);
    let key = (op.clone(), arn.clone());
    let agent = parts
        .headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .unwrap_or("")
        .to_string();
    let (n, total) = {
        let mut stats = shared.stats.lock().unwrap();
        stats.total += 1;
        *stats.agents.entry((op.clone(), agent)).or_insert(0) += 1;
        let total = stats.total;
        let c = stats.calls.entry(key.clone()).or_default();
        c.seen += 1;
        (c.seen - 1, total)
    };
    let record_fault = |label: &'static str| {
        let mut stats = shared.stats.lock().unwrap();
        stats.calls.get_mut(&key).unwrap().faulted += 1;
        *stats.faults.entry(label).or_insert(0) += 1;
    };
    let delay = match decide(&shared, &op, &arn, n, total) {
        Decision::Fault(f) => {
            record_fault(f.label());
            return fault_response(f, &op, &arn).ok_or(Dropped);
        }
        Decision::Forward { delay, injected } => {
            if injected {
                *shared
                    .stats
                    .lock()
                    .unwrap()
                    .faults
                    .entry("delay")
                    .or_insert(0) += 1;
            }
            delay
        }
    };
    // Counted from before the injected delay: a request waiting it out is under way too, and
    // quiet() must not report calm while it may still be forwarded.
    let under_way = Busy::new(&shared);
    loop {
        // Created before the check: a release between the two still wakes it.
        let released = shared.gate.notified();
        if !shared.config.lock().unwrap().held.contains(&op) {
            break;
        }
        released.await;
    }
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut builder = Request::builder().method(parts.method.clone()).uri(format!(
        "{}{}",
        shared.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    ));
    for (name, value) in &parts.headers {
        builder = builder.header(name, value);
    }
    let upstream_req = builder.body(Full::new(body)).unwrap();
    // The forward runs in its own task so that a kpr killed mid-call cannot cancel a write the
    // backend may already be applying: the counts then say exactly what reached the backend.
    let s = shared.clone();
    let forwarded = tokio::spawn(async move {
        let _under_way = under_way;
        // A failed forward drops kpr's connection too, which kpr sees as a dropped call:
        // counted apart from the injected drops, so a failure says which it was.
        let upstream_failed = || {
            *s.stats
                .lock()
                .unwrap()
                .faults
                .entry("upstream error (not injected)")
                .or_insert(0) += 1;
        };
        let Ok(resp) = s.client.request(upstream_req).await else {
            upstream_failed();
            return None;
        };
        let (mut parts, body) = resp.into_parts();
        let Ok(mut bytes) = body.collect().await.map(|b| b.to_bytes()) else {
            upstream_failed();
            return None;
        };
        let rewrites = s.config.lock().unwrap().rewrites.clone();
        for (_, from, to) in rewrites.iter().filter(|(o, _, _)| *o == key.0) {
            let text = String::from_utf8_lossy(&bytes).replace(from.as_str(), to);
            bytes = Bytes::from(text);
            parts.headers.remove(hyper::header::CONTENT_LENGTH);
        }
        s.stats
            .lock()
            .unwrap()
            .calls
            .get_mut(&key)
            .unwrap()
            .forwarded += 1;
        Some(Response::from_parts(parts, Full::new(bytes)))
    })
    .await
    .ok()
    .flatten();
    forwarded.ok_or(Dropped)
}

/// Smoke tests of the proxy itself, against a tiny in-process upstream.
#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> (String, tokio::runtime::Runtime) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"{\"Policy\":\"{}\"}",
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (format!("http://{addr}"), rt)
    }

    /// A one-request client on a fresh connection: (status, body), or None when dropped.
    fn call(url: &str, op: &str, arn: &str) -> Option<(u16, String)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client: Client<HttpConnector, Full<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let req = Request::post(format!("{url}/"))
                .header("x-amz-target", format!("{TARGET_PREFIX}{op}"))
                .body(Full::new(Bytes::from(
                    serde_json::json!({"ResourceARN": arn}).to_string(),
                )))
                .unwrap();
            let resp = client.request(req).await.ok()?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            Some((status, String::from_utf8_lossy(&body).into_owned()))
        })
    }

    #[test]
    fn counts_forwards_and_injects_sticky_faults() {
        let (up, _rt) = upstream();
        let p = Proxy::start(&up);
        p.always(Some("PutResourcePolicy"), "arn:b", Fault::AccessDenied);
        assert_eq!(call(&p.url(), "GetResourcePolicy", "arn:a").unwrap().0, 200);
        let (status, body) = call(&p.url(), "PutResourcePolicy", "arn:b").unwrap();
        assert_eq!(status, 400);
        assert!(
            body.contains("\"__type\":\"AccessDeniedException\""),
            "{body}"
        );
        assert_eq!(p.op_on("GetResourcePolicy", "arn:a").forwarded, 1);
        assert_eq!(p.op_on("PutResourcePolicy", "arn:b").faulted, 1);
        assert_eq!(p.total(), 2);
        assert_eq!(p.writes(), 1);
    }

    #[test]
    fn random_faults_depend_only_on_the_seed() {
        let (up, _rt) = upstream();
        let outcomes = |seed: u64| {
            let p = Proxy::start(&up);
            p.random_faults(seed, 0.5, &[Fault::LimitExceeded, Fault::Http500]);
            (0..40)
                .map(|i| {
                    call(&p.url(), "GetResourcePolicy", &format!("arn:{}", i % 4)).map(|r| r.0)
                })
                .collect::<Vec<_>>()
        };
        let a = outcomes(7);
        assert_eq!(a, outcomes(7));
        assert_ne!(a, outcomes(8));
        let faulted = a.iter().filter(|s| **s != Some(200)).count();
        assert!(
            (8..=32).contains(&faulted),
            "{faulted} of 40 faulted at rate 0.5"
        );
    }

    #[test]
    fn rate_limit_and_backend_gone() {
        let (up, _rt) = upstream();
        let p = Proxy::start(&up);
        p.rate_limit(Some((1.0, 2.0)));
        let statuses: Vec<u16> = (0..4)
            .map(|_| call(&p.url(), "GetResourcePolicy", "arn:a").unwrap().0)
            .collect();
        assert_eq!(statuses, [200, 200, 400, 400]);
        p.heal();
        p.go_away(Gone::Refuse);
        assert!(call(&p.url(), "GetResourcePolicy", "arn:a").is_none());
        p.heal();
        assert_eq!(call(&p.url(), "GetResourcePolicy", "arn:a").unwrap().0, 200);
        p.go_away(Gone::Drop);
        assert!(call(&p.url(), "GetResourcePolicy", "arn:a").is_none());
        p.heal();
        assert_eq!(call(&p.url(), "GetResourcePolicy", "arn:a").unwrap().0, 200);
    }
}
