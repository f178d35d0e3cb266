//! The HTTP side: `/healthz`, `/readyz`, `/metrics`, `/status` and `POST /webhook`.
//!
//! Handlers only read shared state or push a trigger; they never wait for a reconcile, so a
//! slow AWS call cannot make a webhook delivery time out (GitHub gives up after 10 s).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tracing::Instrument;

use super::reconcile::{RunResult, Status};
use super::trigger::{Queue, Trigger};
use super::webhook::{self, AuthError, Event, Pushed, ReplayGuard};
use super::{RotatingSecret, Settings, SourceSpec};
use crate::cli::CliError;
use crate::plan::Action;
use crate::signals::Interrupt;

/// Enough to cover GitHub's redelivery window for any realistic push rate.
const REPLAY_MEMORY: usize = 4096;

/// Pushes kept for the next run: more than a run is likely to see come in.
const MAX_PENDING_PUSHES: usize = 1024;
/// In the workdir, beside the working copy (which a damaged copy's recovery moves aside).
const PENDING_PUSHES: &str = "pending-pushes";
/// Its first line: the source its pushes are of (see [`super::source::identity`]).
const PENDING_SOURCE: &str = "source ";

pub struct Shared {
    pub queue: Queue,
    pub status: RwLock<Status>,
    pub ready: AtomicBool,
    /// The reconcile worker died of a panic: nothing will run again, so the process is unhealthy.
    pub worker_panicked: AtomicBool,
    pub metrics: PrometheusHandle,
    /// Set on shutdown: the running reconcile starts no more changes.
    pub interrupt: Interrupt,
    webhook_secret: RotatingSecret,
    /// Only pushes to this branch trigger; `None` for a directory source.
    branch: Option<String>,
    /// And only of this repository, when the payload names one.
    repository: Option<webhook::Repository>,
    replay: Mutex<ReplayGuard>,
    /// The pushes webhooks announced since a run last took them, oldest first: the next run
    /// judges each in turn (a push forward, a reset, or a late delivery), so none of them is
    /// lost to the one after it (see [`super::reconcile`]).
    pub pushes: Mutex<VecDeque<Pushed>>,
    /// The pushes a run took from `pushes` and is judging: kept on disk with the queue
    /// until their judgement is (see [`Shared::keep_pending`]).
    judging: Mutex<Vec<Pushed>>,
    /// Where the pushes not yet judged are kept across a restart (git sources): a push
    /// answered 202 must not be lost to a stop or a crash before a run judged it.
    /// With the source it is for: pushes of another (a changed `--git-branch`) are not
    /// restored.
    pending_file: Option<(std::path::PathBuf, String)>,
    /// The revision a run is applying, while it applies it (see [`Shared::applying`]).
    under_way: Mutex<Option<Applying>>,
    max_body: usize,
    /// Bytes of not yet authenticated webhook bodies held at once (see [`read_body`]).
    body_budget: tokio::sync::Semaphore,
}

/// A run's writes under way: what they take live, and what stops them.
struct Applying {
    revision: String,
    interrupt: Interrupt,
    /// A heal from the last good revision while git is down: with no history to check a
    /// push against, any push that may have rewritten it stops the heal, not only one from
    /// the revision itself (the next run holds back for such a push all the same).
    healing: bool,
}

/// Ends [`Shared::applying`] when dropped, whichever way the run ends.
pub struct ApplyingGuard(Arc<Shared>);

impl Drop for ApplyingGuard {
    fn drop(&mut self) {
        *self.0.under_way.lock().expect("applying lock") = None;
    }
}

/// [`Applying::interrupt`]'s reason when a forced push took the revision away.
pub const REPLACED_UNDER_WAY: &str = "a forced push that replaced the revision being applied";
/// The same for a heal from the last good revision (see [`Shared::healing`]).
pub const DOUBTED_UNDER_WAY: &str =
    "a push that may have taken the last good revision away, during a heal from it";

impl Shared {
    /// A forced push took away the revision a run is applying: the run starts no more of its
    /// changes (those under way finish), so a head withdrawn, a grant made by mistake, say,
    /// goes no further live than it already had. The push's own run applies what replaced
    /// it, scanning everything, as what was left undone and what was done differ per file.
    /// A push forward does not stop a run: what it applies is still history, and stopping
    /// every run a new push comes during would starve a busy branch.
    fn stop_replaced(&self, pushed: &Pushed) {
        let applying = self.under_way.lock().expect("applying lock");
        let Some(a) = applying.as_ref() else {
            return;
        };
        let stops = if a.healing {
            // GitLab's pushes do not say whether they rewrote history.
            pushed.forced != Some(false)
        } else {
            pushed.forced == Some(true) && pushed.from.as_deref() == Some(a.revision.as_str())
        };
        if !stops {
            return;
        }
        let (reason, message) = if a.healing {
            (
                DOUBTED_UNDER_WAY,
                "a push that may have rewritten history came while healing from the last good revision: the run starts no more of its changes",
            )
        } else {
            (
                REPLACED_UNDER_WAY,
                "a forced push replaced the revision being applied: the run starts no more of its changes (any not started yet are dropped)",
            )
        };
        a.interrupt.set(reason);
        tracing::info!(revision = a.revision, commit = pushed.commit, "{message}");
    }

    /// From now until the guard is dropped, a run applies `revision`, stopped by `interrupt`;
    /// a forced push that took `revision` away and is already queued stops it at once.
    pub fn applying(self: &Arc<Self>, revision: String, interrupt: &Interrupt) -> ApplyingGuard {
        self.under_way(revision, interrupt, false)
    }

    /// As [`Shared::applying`], for a heal from the last good revision `revision` while git is
    /// down: any push that may have rewritten history stops it.
    pub fn healing(self: &Arc<Self>, revision: String, interrupt: &Interrupt) -> ApplyingGuard {
        self.under_way(revision, interrupt, true)
    }

    fn under_way(
        self: &Arc<Self>,
        revision: String,
        interrupt: &Interrupt,
        healing: bool,
    ) -> ApplyingGuard {
        let pushes = self.pushes.lock().expect("pushes lock");
        let applying = Applying {
            revision,
            interrupt: interrupt.clone(),
            healing,
        };
        let mut slot = self.under_way.lock().expect("applying lock");
        *slot = Some(applying);
        drop(slot);
        for pushed in pushes.iter() {
            self.stop_replaced(pushed);
        }
        ApplyingGuard(self.clone())
    }

    /// Queues a push for the next run to judge, and keeps it on disk before the webhook is
    /// answered. Under the queue's lock, which a run takes to start applying (see
    /// [`Shared::applying`]): the push is either queued before it looks or seen here.
    pub fn queue_push(&self, pushed: Pushed) {
        let mut pushes = self.pushes.lock().expect("pushes lock");
        self.stop_replaced(&pushed);
        // Bounded, for a flood of deliveries during a long run: the oldest go first.
        if pushes.len() >= MAX_PENDING_PUSHES {
            pushes.pop_front();
        }
        self.append_pending(&pushed);
        pushes.push_back(pushed);
    }

    /// Takes the queued pushes for a run to judge; they stay on disk until
    /// [`Shared::judged`].
    pub fn take_pushes(&self) -> Vec<Pushed> {
        let mut pushes = self.pushes.lock().expect("pushes lock");
        let taken: Vec<Pushed> = pushes.drain(..).collect();
        self.judging
            .lock()
            .expect("judging lock")
            .clone_from(&taken);
        taken
    }

    /// The pushes taken last are judged, and their judgement kept: only the queue stays on
    /// disk.
    pub fn judged(&self) {
        let pushes = self.pushes.lock().expect("pushes lock");
        self.judging.lock().expect("judging lock").clear();
        self.keep_pending(&pushes);
    }

    /// Pushes an earlier process had not judged, queued for the first run. Called before the
    /// server takes webhooks: one queued first would write the file over them.
    pub fn restore_pending(&self) -> usize {
        let Some((file, source)) = &self.pending_file else {
            return 0;
        };
        // A rewrite a stop cut short left its temporary file: the old list stands.
        let _ = std::fs::remove_file(file.with_extension("new"));
        let Ok(text) = std::fs::read_to_string(file) else {
            return 0;
        };
        let mut lines = text.lines();
        let kept_for = lines.next().and_then(|l| l.strip_prefix(PENDING_SOURCE));
        if !kept_for.is_some_and(|k| super::source::same_source(k, source)) {
            if !text.trim().is_empty() {
                tracing::info!(file = %file.display(), "pushes kept for another repository, branch or path: dropped");
            }
            // Not kept for later either: back on that source they would be long out of date.
            let _ = std::fs::remove_file(file);
            return 0;
        }
        // The newest, within the queue's bound: the file is appended to, and a process that
        // stopped mid-judgement kept those it was judging too. A line cut short by a crash
        // reads as none.
        let restored: Vec<Pushed> = lines.filter_map(Pushed::from_line).collect();
        let skip = restored.len().saturating_sub(MAX_PENDING_PUSHES);
        let mut pushes = self.pushes.lock().expect("pushes lock");
        pushes.extend(restored.into_iter().skip(skip));
        let restored = pushes.len();
        // Written again whole, so the file holds no more than the queue.
        self.keep_pending(&pushes);
        restored
    }

    /// Adds one push to the pending file: one short write, whatever the queue's length (a
    /// flood of webhooks must not rewrite the whole queue each time). The caller holds the
    /// queue's lock, so lines go in the queue's order.
    fn append_pending(&self, pushed: &Pushed) {
        use std::io::{Read, Seek, SeekFrom, Write};
        let Some((file, source)) = &self.pending_file else {
            return;
        };
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(file)
            .and_then(|mut f| {
                let len = f.metadata()?.len();
                let mut text = String::new();
                if len == 0 {
                    text = format!("{PENDING_SOURCE}{source}\n");
                } else {
                    // After a line a crash cut short, on a line of its own.
                    let mut last = [0u8];
                    f.seek(SeekFrom::Start(len - 1))?;
                    f.read_exact(&mut last)?;
                    if last[0] != b'\n' {
                        text.push('\n');
                    }
                }
                text.push_str(&pushed.to_line());
                text.push('\n');
                f.write_all(text.as_bytes())
            });
        if let Err(e) = appended {
            tracing::warn!(file = %file.display(), error = %e, "cannot keep a push not yet judged: a restart before the next run would not know it");
        }
    }

    /// Writes the pushes being judged and those queued (`pushes`, whose lock the caller holds)
    /// to the pending file, replacing it whole (a new file renamed over the old): a crash
    /// leaves the old list or the new, never half of one. Once a judgement is kept, and at
    /// start-up; each push in between is appended ([`Shared::append_pending`]).
    fn keep_pending(&self, pushes: &VecDeque<Pushed>) {
        let Some((file, source)) = &self.pending_file else {
            return;
        };
        let judging = self.judging.lock().expect("judging lock");
        let lines: String = judging
            .iter()
            .chain(pushes.iter())
            .map(|p| p.to_line() + "\n")
            .collect();
        let tmp = file.with_extension("new");
        let kept = if lines.is_empty() {
            std::fs::remove_file(file).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
        } else {
            // On disk before the rename: a power loss must not leave an empty file in place
            // of the list.
            let text = format!("{PENDING_SOURCE}{source}\n{lines}");
            std::fs::File::create(&tmp)
                .and_then(|mut f| {
                    std::io::Write::write_all(&mut f, text.as_bytes())?;
                    f.sync_all()
                })
                .and_then(|()| std::fs::rename(&tmp, file))
        };
        if let Err(e) = kept {
            tracing::warn!(file = %file.display(), temporary = %tmp.display(), error = %e, "cannot keep the pushes not yet judged: a restart before the next run would not know them");
        }
    }

    /// Delivery ids an earlier process saw (kept in the working copy): their redeliveries
    /// are duplicates after a restart too.
    pub fn remember_deliveries(&self, ids: &[String]) {
        let mut replay = self.replay.lock().expect("replay lock");
        for id in ids {
            replay.first_time(id);
        }
    }

    pub fn new(settings: &Settings, metrics: PrometheusHandle, source: String) -> Self {
        Self {
            queue: Queue::new(),
            status: RwLock::new(Status {
                source,
                dry_run: settings.dry_run,
                prune: settings.prune,
                ..Status::default()
            }),
            ready: AtomicBool::new(false),
            worker_panicked: AtomicBool::new(false),
            metrics,
            interrupt: Interrupt::default(),
            // Read again on each delivery: a rotated secret works without a restart.
            webhook_secret: RotatingSecret::new(
                "webhook secret",
                settings.webhook_secret.clone(),
                settings.webhook_secret_file.clone(),
            ),
            branch: match &settings.source {
                SourceSpec::Git(g) => Some(g.branch.clone()),
                SourceSpec::Dir(_) => None,
            },
            repository: match &settings.source {
                SourceSpec::Git(g) => Some(webhook::Repository::from_settings(
                    &g.url,
                    g.repository.as_deref(),
                )),
                SourceSpec::Dir(_) => None,
            },
            replay: Mutex::new(ReplayGuard::new(REPLAY_MEMORY)),
            pushes: Mutex::new(VecDeque::new()),
            judging: Mutex::new(Vec::new()),
            pending_file: match &settings.source {
                SourceSpec::Git(g) => Some((
                    g.workdir.join(PENDING_PUSHES),
                    super::source::identity(&g.url, &g.branch, &g.path),
                )),
                SourceSpec::Dir(_) => None,
            },
            under_way: Mutex::new(None),
            max_body: settings.webhook_max_body,
            // Room for two of the largest bodies allowed, at least.
            body_budget: tokio::sync::Semaphore::new(
                BODY_BUDGET.max(settings.webhook_max_body.saturating_mul(2)),
            ),
        }
    }
}

/// Two bodies of GitHub's largest size, and then some.
const BODY_BUDGET: usize = 64 << 20;

pub fn install_metrics() -> Result<PrometheusHandle, CliError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("kpr_reconcile_duration_seconds".into()),
            &[
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
            ],
        )
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| CliError::Usage(format!("cannot set up metrics: {e}")))?;
    metrics::describe_counter!(
        "kpr_reconcile_runs_total",
        "Reconcile runs by trigger (startup, schedule, webhook, retry) and result"
    );
    metrics::describe_histogram!(
        "kpr_reconcile_duration_seconds",
        metrics::Unit::Seconds,
        "Duration of reconcile runs"
    );
    metrics::describe_gauge!(
        "kpr_resources",
        "Managed resources by state after the last runs (in_sync, drifted, failed)"
    );
    metrics::describe_gauge!(
        "kpr_resources_backing_off",
        "Resources that failed and wait before their next attempt"
    );
    metrics::describe_gauge!(
        "kpr_last_success_timestamp_seconds",
        "When a reconcile last completed (success or partial) with a resource not failed; \
         the start's time until then"
    );
    metrics::describe_counter!("kpr_webhooks_total", "Webhook deliveries by result");
    metrics::describe_counter!(
        "kpr_http_connections_refused_total",
        "HTTP connections closed as they came, the connection limit reached"
    );
    metrics::describe_counter!(
        "kpr_api_calls_total",
        "Kinesis API calls by operation and outcome"
    );
    metrics::describe_counter!("kpr_api_retries_total", "Kinesis API call retries");
    metrics::describe_counter!(
        "kpr_changes_total",
        "Changes applied, by action and outcome"
    );
    // Each counter an alert watches is exported at 0 from the start: a series that first
    // appears at 1 has no increase() in Prometheus, so the first invalid revision, refused
    // webhook or failed change after a start would raise no alert.
    for result in RunResult::ALL.map(RunResult::label) {
        for trigger in Trigger::ALL.map(Trigger::label) {
            metrics::counter!("kpr_reconcile_runs_total", "trigger" => trigger, "result" => result)
                .absolute(0);
        }
    }
    for result in WEBHOOK_RESULTS {
        metrics::counter!("kpr_webhooks_total", "result" => result).absolute(0);
    }
    for action in [Action::Create, Action::Update, Action::Delete].map(Action::as_str) {
        // "unchanged": a change its late re-read found already made.
        for outcome in ["applied", "unchanged", "failed"] {
            metrics::counter!("kpr_changes_total", "action" => action, "outcome" => outcome)
                .absolute(0);
        }
    }
    metrics::counter!("kpr_http_connections_refused_total").absolute(0);
    // From the start, as the start's time: a service that never converges after a restart
    // (credentials broken, AWS unreachable) must still make `time() - …` grow, where a series
    // missing until the first success would keep the "stopped converging" alert quiet, and
    // even resolve one the pod before it had raised.
    metrics::gauge!("kpr_last_success_timestamp_seconds").set(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    Ok(handle)
}

/// Connections served at once, at most. One more is closed as it comes, so that clients
/// holding connections cannot spend the descriptors git, the manifests and AWS need: with them
/// spent, every run failed and `/healthz` stopped answering. A quarter of the open-file limit
/// when that is lower.
const MAX_CONNECTIONS: usize = 256;

/// Raises the soft limit on open files to the hard one, as Go's runtime does for every
/// program (systemd starts services at a soft 1024 under a hard 524288), and returns the soft
/// limit then in force.
pub fn raise_open_files() -> Option<libc::rlim_t> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct passed, which lives on
    // this stack frame for the duration of the call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

fn max_connections(open_files: Option<libc::rlim_t>) -> usize {
    open_files.map_or(MAX_CONNECTIONS, |n| {
        MAX_CONNECTIONS.min(usize::try_from(n / 4).unwrap_or(usize::MAX).max(4))
    })
}

/// How long a client may take to send a request's head, and how long a kept-alive connection
/// may sit idle before it: a git host sends its webhook at once, a probe or scraper too.
const HEADER_READ: Duration = Duration::from_secs(10);

/// The most a connection reads ahead (hyper's own default is ~400 KiB): each connection waiting
/// for the body budget holds one such read, uncounted, so this bounds what a crowd of them
/// holds beyond the budget ([`MAX_CONNECTIONS`] × this).
const READ_BUFFER: usize = 64 << 10;

/// Connections one address may hold at once, of [`MAX_CONNECTIONS`]: one client holding idle
/// connections must leave room for the others (a liveness probe failing would get the pod
/// restarted over and over). Half: behind a proxy every delivery comes from the proxy's
/// address, and a burst of a hundred at once must still get in.
fn per_peer(max: usize) -> usize {
    (max / 2).max(2)
}

/// The last slots, an eighth, go only to addresses holding fewer than [`FEW`], none: while
/// fewer addresses than that hold idle connections, a probe or a git host that holds none
/// gets in. Against more (a flood from many addresses) only a proxy in front helps.
fn reserved(max: usize) -> usize {
    (max / 8).max(1)
}
const FEW: usize = 1;

pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status))
        .route(
            "/webhook",
            // The handler reads the body itself, under its own limit.
            post(webhook).layer(DefaultBodyLimit::disable()),
        )
        .with_state(shared);
    // axum::serve sets no header-read timeout and no connection limit: hyper's own builder,
    // with a timer, does the first; a semaphore the second.
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ)
        .max_buf_size(READ_BUFFER);
    let max = max_connections(raise_open_files());
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let peers = Arc::new(PeerSlots::new(per_peer(max)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let stopped = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    tokio::pin!(stopped);
    const WARN_EVERY: Duration = Duration::from_secs(60);
    let mut last_warned = None;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: accepting again at once would spin.
                    tracing::error!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut stopped => break,
        };
        let scarce = slots.available_permits() <= reserved(max);
        let slot = match peers.take(peer.ip(), scarce) {
            Some(peer_slot) => slots
                .clone()
                .try_acquire_owned()
                .ok()
                .map(|slot| (slot, peer_slot)),
            None => None,
        };
        let Some(slot) = slot else {
            // Once a minute at most: a flood of connections must not flood the log too.
            if last_warned.is_none_or(|at: tokio::time::Instant| at.elapsed() >= WARN_EVERY) {
                tracing::warn!(
                    max,
                    per_address = peers.limit,
                    %peer,
                    "too many HTTP connections open, in all or from one address: closing new \
                     ones (logged once a minute)"
                );
                last_warned = Some(tokio::time::Instant::now());
            }
            metrics::counter!("kpr_http_connections_refused_total").increment(1);
            continue;
        };
        // Who sent a refused webhook goes in its log (behind a proxy: the proxy).
        let app = app
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        let service = hyper_util::service::TowerToHyperService::new(app);
        let conn =
            graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A client that went away or timed out: nothing to report.
            let _ = conn.await;
            drop(slot);
        });
    }
    // Idle keep-alive connections close at once; the caller bounds the wait for the others.
    graceful.shutdown().await;
}

/// Connections open per address, each at most `limit`.
struct PeerSlots {
    limit: usize,
    open: Arc<Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

/// One address's connection: given back when dropped.
struct PeerSlot {
    ip: std::net::IpAddr,
    open: Arc<Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

impl PeerSlots {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            open: Arc::default(),
        }
    }

    /// A slot for `ip`, if it holds fewer than its share: [`FEW`] once slots are `scarce`.
    fn take(&self, ip: std::net::IpAddr, scarce: bool) -> Option<PeerSlot> {
        let mut open = self.open.lock().expect("peer slots");
        let n = open.entry(ip).or_default();
        let limit = if scarce { FEW } else { self.limit };
        (*n < limit).then(|| {
            *n += 1;
            PeerSlot {
                ip,
                open: Arc::clone(&self.open),
            }
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("peer slots");
        if let std::collections::hash_map::Entry::Occupied(mut n) = open.entry(self.ip) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
    }
}

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    if s.worker_panicked.load(Ordering::SeqCst) {
        // Webhooks would still be accepted and queued, and never run: better restarted.
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "unhealthy: the reconcile worker panicked (see the log); restart kpr\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no reconcile has completed yet, nor reconciled a last good revision\n",
        )
            .into_response()
    }
}

/// Prometheus label values escape backslash, quote and newline.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn metrics_text(State(s): State<Arc<Shared>>) -> Response {
    let mut text = s.metrics.render();
    // Rendered here rather than recorded: a gauge per revision label would keep one series
    // for every commit ever applied.
    let revision = {
        let status = s.status.read().expect("status lock");
        // A dry run writes nothing: no revision is "applied", however many it has planned.
        (!status.dry_run)
            .then(|| status.last_good_revision.clone())
            .flatten()
    };
    if let Some(rev) = revision {
        text.push_str(
            "# HELP kpr_applied_revision_info The revision (commit) last applied\n\
             # TYPE kpr_applied_revision_info gauge\n",
        );
        text.push_str(&format!(
            "kpr_applied_revision_info{{revision=\"{}\"}} 1\n",
            label_value(&rev)
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[derive(Serialize)]
struct StatusDoc<'a> {
    ready: bool,
    running: bool,
    pending: Option<&'static str>,
    #[serde(flatten)]
    status: &'a Status,
}

async fn status(State(s): State<Arc<Shared>>) -> Response {
    let (pending, running) = s.queue.snapshot();
    let status = s.status.read().expect("status lock");
    let doc = StatusDoc {
        ready: s.ready.load(Ordering::SeqCst),
        running,
        pending: pending.map(Trigger::label),
        status: &status,
    };
    let body = serde_json::to_string_pretty(&doc).expect("status serialises");
    drop(status);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Every `result` of `kpr_webhooks_total`, each exported from the start (see
/// [`install_metrics`]).
const WEBHOOK_RESULTS: [&str; 12] = [
    "accepted",
    "unauthorized",
    "too_large",
    "timeout",
    "busy",
    "duplicate",
    "ignored",
    "ping",
    "disabled",
    "secret_unreadable",
    "bad_request",
    "shutting_down",
];

fn reply(code: StatusCode, result: &'static str, message: String) -> Response {
    debug_assert!(WEBHOOK_RESULTS.contains(&result), "{result} not listed");
    metrics::counter!("kpr_webhooks_total", "result" => result).increment(1);
    let level_info = code.is_success();
    if level_info {
        tracing::info!(result, status = code.as_u16(), "webhook: {message}");
    } else if let Some(suppressed) = REFUSALS_LOGGED.admit(result) {
        let also = match suppressed {
            0 => String::new(),
            n => format!(" ({n} more {result} not logged in the last minute)"),
        };
        tracing::warn!(result, status = code.as_u16(), "webhook: {message}{also}");
    }
    let body = serde_json::json!({ "result": result, "message": message }).to_string();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Refused webhooks logged, per result: anyone who reaches `/webhook` can send them, 1,400 a
/// second from one connection, and the log must not grow with them (`kpr_webhooks_total`
/// counts every one).
static REFUSALS_LOGGED: RefusalLog = RefusalLog(std::sync::Mutex::new(Vec::new()));

struct RefusalLog(std::sync::Mutex<Vec<RefusalWindow>>);

struct RefusalWindow {
    result: &'static str,
    started: std::time::Instant,
    logged: u32,
    suppressed: u64,
}

impl RefusalLog {
    /// The first few of each result a minute are logged; `Some(n)` when this one is, with
    /// how many were not since the last one that was.
    fn admit(&self, result: &'static str) -> Option<u64> {
        self.admit_at(result, std::time::Instant::now())
    }

    fn admit_at(&self, result: &'static str, now: std::time::Instant) -> Option<u64> {
        const PER_MINUTE: u32 = 10;
        let mut windows = self.0.lock().expect("refusal log");
        let i = match windows.iter().position(|w| w.result == result) {
            Some(i) => i,
            None => {
                windows.push(RefusalWindow {
                    result,
                    started: now,
                    logged: 0,
                    suppressed: 0,
                });
                windows.len() - 1
            }
        };
        let w = &mut windows[i];
        if now.duration_since(w.started) >= Duration::from_secs(60) {
            w.started = now;
            w.logged = 0;
        }
        if w.logged < PER_MINUTE {
            w.logged += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// How long a body may take to arrive, waits for the byte budget included: GitHub gives a
/// delivery 10 s in all.
const BODY_READ: Duration = Duration::from_secs(10);
/// How long a body that already holds part of the budget waits for more.
const BUDGET_WAIT_HOLDING: Duration = Duration::from_secs(1);

/// Reads a webhook body within [`BODY_READ`] and the size limit. The bytes of bodies whose
/// sender is not authenticated yet (a GitHub signature covers the body) count against
/// [`BODY_BUDGET`] as they arrive, so senders that stall hold nothing, and senders that stream
/// garbage hold at most the budget, plus the frame each has read and is waiting to count (at
/// most [`READ_BUFFER`]); a delivery whose token already matched does not wait.
async fn read_body(
    s: &Shared,
    headers: &HeaderMap,
    mut body: Body,
    authenticated: bool,
) -> Result<Bytes, Response> {
    use http_body_util::BodyExt;
    let too_large = || {
        reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "body larger than {} bytes; ignored (raise --webhook-max-body): the push is \
                 applied by the next scheduled run",
                s.max_body
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.max_body as u64) {
        return Err(too_large());
    }
    let deadline = tokio::time::Instant::now() + BODY_READ;
    let timed_out = || {
        reply(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "the body did not arrive within {}",
                humantime::format_duration(BODY_READ)
            ),
        )
    };
    let mut held: Option<tokio::sync::SemaphorePermit<'_>> = None;
    // The frames as they came, joined once the body is whole: a sender that declares a length
    // and stalls costs nothing, and no buffer grows by copying (a crowd of growing buffers,
    // each up to twice its bytes, left the allocator holding several times the budget).
    let mut frames: Vec<Bytes> = Vec::new();
    let mut received = 0;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(timed_out()),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(reply(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("cannot read the body: {e}"),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if received + data.len() > s.max_body {
            return Err(too_large());
        }
        if !authenticated && !data.is_empty() {
            let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
            // A body that holds part of the budget does not wait long for more: bodies that
            // each hold some and wait for the rest would otherwise all wait out the deadline.
            let wait_until = if held.is_some() {
                deadline.min(tokio::time::Instant::now() + BUDGET_WAIT_HOLDING)
            } else {
                deadline
            };
            match tokio::time::timeout_at(wait_until, s.body_budget.acquire_many(n)).await {
                Ok(Ok(permit)) => match &mut held {
                    Some(h) => h.merge(permit),
                    None => held = Some(permit),
                },
                _ => {
                    return Err(reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "busy",
                        "webhook bodies not yet authenticated fill kpr's budget; try again".into(),
                    ));
                }
            }
        }
        received += data.len();
        frames.push(data);
    }
    Ok(match frames.len() {
        0 => Bytes::new(),
        1 => frames.swap_remove(0),
        _ => {
            let mut whole = Vec::with_capacity(received);
            for frame in frames {
                whole.extend_from_slice(&frame);
            }
            Bytes::from(whole)
        }
    })
}

fn unauthorized(e: AuthError) -> Response {
    let message = match e {
        AuthError::Missing => {
            "no signature: send X-Hub-Signature-256 (GitHub), X-Gitlab-Token (GitLab) or \
             Authorization: Bearer"
        }
        AuthError::Invalid => "signature or token does not match the configured secret",
    };
    reply(StatusCode::UNAUTHORIZED, "unauthorized", message.into())
}

async fn webhook(
    State(s): State<Arc<Shared>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::info_span!("webhook", peer = %peer);
    delivery(s, headers, body).instrument(span).await
}

async fn delivery(s: Arc<Shared>, headers: HeaderMap, body: Body) -> Response {
    // Fails closed: a secret file rotated to something unreadable must not leave the old
    // secret (perhaps leaked) working.
    let secret = match s.webhook_secret.read_now() {
        Ok(secret) => secret,
        Err(e) => {
            // Said before any sender is known: held to the refusals' budget, or a flood of
            // bare requests would write an ERROR line each.
            if let Some(suppressed) = REFUSALS_LOGGED.admit("secret_error") {
                tracing::error!(error = %e, suppressed, "cannot read the webhook secret: deliveries refused until it is fixed");
            }
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "secret_unreadable",
                "the webhook secret cannot be read: deliveries are refused until it is fixed"
                    .into(),
            );
        }
    };
    let Some(secret) = secret else {
        return reply(
            StatusCode::NOT_FOUND,
            "disabled",
            "the webhook is disabled: no secret is configured (set --webhook-secret-file or \
             KPR_WEBHOOK_SECRET); unsigned triggers are never accepted"
                .into(),
        );
    };
    let secret = secret.expose().as_bytes();
    // A token (GitLab, Bearer) is checked before the body is read, so only a GitHub signature,
    // which covers the body, makes kpr read one from a sender it does not know yet.
    let signed = headers.contains_key("x-hub-signature-256");
    if signed && !webhook::well_formed_signature(&headers) {
        return unauthorized(AuthError::Invalid);
    }
    if !signed && let Err(e) = webhook::authenticate(&headers, &[], secret) {
        return unauthorized(e);
    }
    let body = match read_body(&s, &headers, body, !signed).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let provider = match webhook::authenticate(&headers, &body, secret) {
        Ok(p) => p,
        Err(e) => return unauthorized(e),
    };
    let event = match webhook::parse_event(provider, &headers, &body) {
        Ok(e) => e,
        Err(e) => return reply(StatusCode::BAD_REQUEST, "bad_request", e),
    };
    // Remembered only once authenticated and understood: unsigned requests must not fill the
    // memory of seen ids, and a delivery that failed here may be redelivered.
    let delivery = webhook::delivery_id(&headers);
    if let Some(id) = &delivery
        && !s.replay.lock().expect("replay lock").first_time(id)
    {
        return reply(
            StatusCode::OK,
            "duplicate",
            format!("duplicate delivery {id}: already received, ignored"),
        );
    }
    match event {
        Event::Ping => reply(StatusCode::OK, "ping", "pong".into()),
        Event::Other(name) => reply(
            StatusCode::OK,
            "ignored",
            format!("event {name:?} ignored: only pushes trigger a run"),
        ),
        Event::Push {
            git_ref,
            pushed,
            repository,
        } => {
            if let (Some(ours), Some(named)) = (&s.repository, &repository)
                && !ours.matches(named)
            {
                // Loud: after a rename, or behind a mirror, every push would be ignored.
                tracing::warn!(
                    pushed = %named,
                    watching = %ours,
                    "a push of another repository ignored (after a rename or behind a mirror, \
                     name the repository with --git-repository)"
                );
                return reply(
                    StatusCode::OK,
                    "ignored",
                    format!("push to {named} ignored: watching {ours}"),
                );
            }
            if let (Some(branch), Some(r)) = (&s.branch, &git_ref) {
                let wanted = format!("refs/heads/{branch}");
                if *r != wanted {
                    return reply(
                        StatusCode::OK,
                        "ignored",
                        format!("push to {r} ignored: watching {wanted}"),
                    );
                }
            }
            // Only a git source has commits to wait for. Set before the trigger, so the run it
            // starts sees it. A push that names none leaves an earlier push's commit awaited.
            // A payload without a ref may be from any branch: nothing to wait for.
            let pushed = pushed
                .filter(|_| s.branch.is_some() && git_ref.is_some())
                .map(|p| webhook::Pushed {
                    // Kept in the working copy's git config: a plain word only.
                    delivery: delivery.clone().filter(|d| {
                        d.len() <= 128
                            && d.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    }),
                    ..p
                });
            let after = pushed.as_ref().map(|p| p.commit.clone());
            if let Some(pushed) = pushed {
                s.queue_push(pushed);
            }
            if s.queue.push(Trigger::Webhook) {
                reply(
                    StatusCode::ACCEPTED,
                    "accepted",
                    format!(
                        "reconcile queued{}{}",
                        after.map(|c| format!(" for {c}")).unwrap_or_default(),
                        delivery
                            .map(|d| format!(" (delivery {d})"))
                            .unwrap_or_default()
                    ),
                )
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "shutting down: no new runs".into(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten of each refusal a minute are logged, the rest counted into the next line logged.
    #[test]
    fn refused_webhooks_are_logged_ten_a_minute_per_result() {
        let log = RefusalLog(std::sync::Mutex::new(Vec::new()));
        let start = std::time::Instant::now();
        let admitted: Vec<Option<u64>> = (0..13)
            .map(|_| log.admit_at("unauthorized", start))
            .collect();
        assert_eq!(admitted[..10], [Some(0); 10]);
        assert_eq!(admitted[10..], [None; 3]);
        // Another result has its own ten.
        assert_eq!(log.admit_at("bad_request", start), Some(0));
        let later = start + Duration::from_secs(61);
        assert_eq!(log.admit_at("unauthorized", later), Some(3));
        assert_eq!(log.admit_at("unauthorized", later), Some(0));
    }
}
