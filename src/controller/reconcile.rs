//! One reconcile: fetch -> validate -> plan -> apply (or only report, with `--dry-run`), then
//! per-resource backoff, status and metrics.
//!
//! Nothing is applied from a revision that failed to fetch or validate; the last good one
//! stays what `/status` and the metrics report. A webhook run reconciles only what changed
//! since the last run (a git diff, or for a directory the files whose content differs);
//! scheduled and startup runs scan everything, which is how hand edits get undone.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::Instrument;

use crate::apply::{self, ApplyOptions, Outcome};
use crate::arn::ResourceArn;
use crate::cli::Engine;
use crate::kinesis::{AwsKinesis, Resilient};
use crate::manifest::{self, DesiredResource, DesiredState, Intent};
use crate::plan::{self, Action, DeleteCause, PlanOptions, PlanRefused, Summary};

use super::backoff::Backoff;
use super::file_index::FileIndex;
use super::http::{REPLACED_UNDER_WAY, Shared};
use super::source::Source;
use super::trigger::Trigger;
use super::webhook::Pushed;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub dry_run: bool,
    pub prune: bool,
    pub max_deletes: usize,
    /// The first wait after a failure (see [`super::backoff`]).
    pub retry_delay: Duration,
    /// How long a refused branch head must stay the head to be applied (see
    /// [`Reconciler::admit`]).
    pub reset_settle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    /// Everything in scope is in sync (or, dry run, was read).
    Success,
    /// The run completed but some resources failed; they back off and are retried.
    Partial,
    FetchFailed,
    Invalid,
    /// Planning refused as a whole (a prune guard): nothing was applied.
    Refused,
    /// A forced push took away the revision while it was being applied: what was under way
    /// finished, the rest was not started. Not a revision applied (see
    /// [`Reconciler::admit`]).
    Stopped,
}

impl RunResult {
    pub const ALL: [RunResult; 6] = [
        RunResult::Success,
        RunResult::Partial,
        RunResult::FetchFailed,
        RunResult::Invalid,
        RunResult::Refused,
        RunResult::Stopped,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RunResult::Success => "success",
            RunResult::Partial => "partial",
            RunResult::FetchFailed => "fetch_failed",
            RunResult::Invalid => "invalid",
            RunResult::Refused => "refused",
            RunResult::Stopped => "stopped",
        }
    }

    /// The revision was validated and taken to AWS: it becomes the last good one.
    pub fn completed(self) -> bool {
        matches!(self, RunResult::Success | RunResult::Partial)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResourceState {
    InSync,
    Drifted,
    Failed,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ResourceCounts {
    pub in_sync: usize,
    pub drifted: usize,
    pub failed: usize,
    pub backing_off: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResourceStatus {
    pub arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    /// applied | unchanged | failed (apply); in_sync | drifted | failed (dry run);
    /// left_alone (manifest removed without --prune).
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkippedStatus {
    pub arn: String,
    pub consecutive_failures: u32,
    pub retry_after: String,
    pub last_error: String,
    /// The manifest line that declared it when it last failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    pub trigger: &'static str,
    /// full | incremental
    pub scope: &'static str,
    pub revision: Option<String>,
    pub started_at: String,
    pub duration_seconds: f64,
    pub result: RunResult,
    pub dry_run: bool,
    pub summary: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_files: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub resources: Vec<ResourceStatus>,
    pub skipped: Vec<SkippedStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorStatus {
    pub at: String,
    pub trigger: &'static str,
    pub revision: Option<String>,
    pub result: RunResult,
    pub message: String,
}

/// What `/status` shows (the HTTP layer adds live fields such as `ready`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub source: String,
    pub dry_run: bool,
    pub prune: bool,
    pub runs: u64,
    pub last_good_revision: Option<String>,
    pub last_success_at: Option<String>,
    pub resources: ResourceCounts,
    pub last_run: Option<RunStatus>,
    pub last_error: Option<ErrorStatus>,
    /// The retry the worker will start unless a trigger comes first.
    pub next_retry: Option<RetryStatus>,
    /// A commit a push named that the last fetch did not bring: kpr fetches again soon.
    pub awaited_commit: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetryStatus {
    pub at: String,
    /// `full`, or `incremental` (failed resources whose wait is over, and what changed).
    pub scan: &'static str,
    /// `failure`, or `awaited_commit` (a fetch for a pushed commit not yet fetched).
    pub reason: &'static str,
}

/// What the last applied revision declared, file by file (repository-relative): an
/// incremental run needs it to see which resources a changed file no longer declares.
struct Applied {
    revision: Option<String>,
    files: FileIndex,
}

/// What a run keeps of its desired state after planning: which resources it declares, and
/// the per-file index the next incremental run starts from.
struct Declared {
    ids: HashSet<ResourceArn>,
    files: FileIndex,
}

/// One resource's result in a run, whatever produced it (plan failure, apply, dry run).
struct Item {
    /// `None` for failures not about one resource (listing a scope).
    id: Option<ResourceArn>,
    status: ResourceStatus,
    state: ResourceState,
    /// Its policy was deleted because no manifest declares it any more: no longer managed.
    released: bool,
}

struct RunOutcome {
    result: RunResult,
    /// Whether the run scanned only what a push changed; `None` when it ended before that
    /// was decided (its trigger's scope is reported).
    incremental: Option<bool>,
    revision: Option<String>,
    error: Option<String>,
    summary: Summary,
    changed_files: Option<Vec<String>>,
    resources: Vec<ResourceStatus>,
    skipped: Vec<SkippedStatus>,
    /// A listing (ListStreams, ListStreamConsumers: what prune deletes from) failed. It has
    /// no resource to back off, so the full scan it was part of stays owed.
    listing_failed: bool,
    /// The run failed (git down, an invalid head), but reconciled in its place what the last
    /// good revision declares: the service is at work, and ready.
    reconciled_meanwhile: bool,
}

impl RunOutcome {
    fn new() -> Self {
        RunOutcome {
            result: RunResult::Success,
            incremental: None,
            revision: None,
            error: None,
            summary: Summary::default(),
            changed_files: None,
            resources: Vec::new(),
            skipped: Vec::new(),
            listing_failed: false,
            reconciled_meanwhile: false,
        }
    }

    fn fail(mut self, result: RunResult, message: String) -> Self {
        self.result = result;
        self.error = Some(message);
        self
    }
}

/// The part of the desired state an incremental run reconciles.
struct Incremental {
    changed: Vec<PathBuf>,
    desired: DesiredState,
    /// Identities whose manifest was removed and that become delete candidates (`--prune`).
    removed: HashSet<ResourceArn>,
    left_alone: Vec<ResourceArn>,
}

/// A revision that failed validation.
struct Invalid {
    message: String,
    revision: Option<String>,
    untouched: Option<Untouched>,
}

/// What an invalid revision declares without error: its files that the revision did not
/// change still say what the last good revision said.
struct Untouched {
    /// The resources of files without errors.
    valid: DesiredState,
    /// Files with errors (as the loader names them).
    error_files: HashSet<PathBuf>,
    digests: Vec<(PathBuf, u64)>,
    /// Symlinks followed: `git diff` would not name what changed behind them.
    symlinks: usize,
}

/// A run's validated manifests.
struct Loaded {
    desired: DesiredState,
    /// The git commit, or a directory's content digest.
    revision: Option<String>,
    /// Each source-relative file and a digest of its bytes, in path order (directory sources
    /// only).
    digests: Vec<(PathBuf, u64)>,
    /// Symlinks followed to reach manifests (see [`manifest::Loaded::symlinks`]).
    symlinks: usize,
}

pub struct Reconciler {
    source: Source,
    api: Resilient<AwsKinesis>,
    engine: Engine,
    opts: RunOptions,
    shared: Arc<Shared>,
    backoff: Backoff,
    applied: Option<Applied>,
    /// Each managed resource's state, for the counts: keyed by [`state_key`].
    states: HashMap<u64, ResourceState>,
    /// A pushed commit the last fetch did not bring (see [`Reconciler::check_awaited`]).
    awaiting: Option<Awaiting>,
    /// A commit behind what was applied that a push's webhook named (a reset): it may be
    /// applied as the branch head until a run has applied it or another push names another
    /// commit, whatever became of the run the webhook started (refused, invalid).
    reset_named: Option<Reset>,
    /// Until a run completes, the last good revision an earlier process recorded (git
    /// sources): what drift correction on an invalid branch measures "untouched" against.
    restored: Option<String>,
    /// The last good revision known to be recorded in the working copy.
    recorded: Option<String>,
    /// Each push judged, as `(before, after)`, latest last: the chain of moves a late webhook
    /// is told by, and one seen again is a new push of the same move (see
    /// [`Reconciler::judge`]).
    seen_pushes: std::collections::VecDeque<(String, String)>,
    /// The delivery ids of the webhooks judged, latest last: one seen again is a redelivery.
    /// Both are kept in the working copy, so a restart tells late webhooks as before.
    seen_deliveries: std::collections::VecDeque<String>,
    /// Whether the pushes seen and the commit awaited were read from the working copy.
    memory_read: bool,
    /// Pushes judged so far, and how many had been when the revision applied last changed
    /// with nothing awaited: the pushes judged before that are older than the branch's coming
    /// to that revision, however it came there (a fetch after a push kpr never heard of).
    judged_total: usize,
    applied_after_judged: usize,
    /// Pushes judged forward whose payload did not say whether they were forced (GitLab),
    /// as `(before, after)`, until the working copy has both commits to tell.
    unsure_forced: Vec<(String, String)>,
    /// The heads resets replaced (none an ancestor of another), refused while a replica may
    /// still serve them, also after the reset is applied, until a revision built on one is
    /// applied (see [`Reconciler::admit`]). Kept in the working copy for a restart.
    replaced: Vec<String>,
    /// A head refused since then, fetched again and again (see [`RESET_SETTLE`]).
    refused_since: Option<(String, Instant)>,
    /// The last head fetched was refused: the branch may be going back from the last good
    /// revision, which must not then be put back while fetches fail (see
    /// [`Reconciler::correct_from_last_good`]). Cleared when a fetched head is taken.
    head_refused: bool,
    /// A push judged since the last good revision was recorded rewrote history, or may have
    /// (GitLab's do not say), or an earlier process left it so: that revision may be on its
    /// way out, and is not put back while fetches fail. Commits a fetch never brought have
    /// no ancestry to ask. Kept in the working copy, with `head_refused`.
    good_in_doubt: bool,
    /// What the working copy holds of the two above.
    doubt_noted: bool,
    /// The commit awaited as the working copy holds it (see [`Reconciler::note_awaited`]).
    awaited_noted: Option<String>,
    /// A run was stopped part-way by a push that replaced its revision: until a full run
    /// completes, no diff between revisions tells what is live.
    stopped_part_way: bool,
}

/// How long the branch must stay at a head kpr refused (behind what was applied, or what a
/// reset replaced) before kpr takes it as where the branch is, by default: far longer than a
/// git host's replica lags, and the cure for a reset whose webhook was lost or judged late.
pub const RESET_SETTLE: Duration = Duration::from_secs(120);

/// A reset a webhook announced, pending until a run applies it: its commit, and the head it
/// replaced when the payload named it (see [`Reconciler::execute`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reset {
    commit: String,
    from: Option<String>,
}

/// What a push's webhook means (see [`Reconciler::judge`]).
enum Judged {
    /// The branch moved to a commit not behind what was applied.
    Forward,
    /// The branch moved back, behind what was applied, on purpose.
    Reset,
    /// Superseded by what was applied or by a push seen before it: nothing to do.
    Late(&'static str),
}

/// The pushes a process remembers, for telling a late webhook.
const SEEN_PUSHES: usize = 64;

/// Heads resets replaced, kept at most.
const MAX_REPLACED: usize = 16;

struct Awaiting {
    commit: String,
    /// Fetches in a row that came without it.
    misses: u32,
}

/// How many fetches in a row may miss a pushed commit before kpr stops fetching for it: the
/// waits between them double from one second, so it gives up about a minute after the push.
const AWAIT_MISSES: u32 = 7;

/// A resource's key in `Reconciler::states`: a 64-bit hash of its identity ARN, not the ARN.
/// The states live as long as the controller and are only counted; 10,000 ARN keys were
/// 10,000 small allocations, made late in a run among its garbage, and measured after a
/// reconcile of 10,000 resources they held ~0.5 MB live and pinned freed heap pages around
/// them. Two resources sharing a key would only make a count off by one; among a million
/// resources the chance of any pair is about 3 in 100 million.
fn state_key(id: &ResourceArn) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    id.to_string().hash(&mut hasher);
    hasher.finish()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Sets its flag if dropped while unwinding: a panic that ends the worker must not go unseen.
struct SetOnPanic<'a>(&'a AtomicBool);

impl Drop for SetOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Drains the trigger queue, one run at a time, until shutdown closes it; between triggers,
/// starts the retries that failures call for.
pub async fn worker(mut reconciler: Reconciler, shared: Arc<Shared>) {
    let _watch = SetOnPanic(&shared.worker_panicked);
    // Failures are tried again on their own clock, not the schedule's: with a daily cron, a
    // failed fetch or a throttled resource would otherwise wait a day. A trigger from the
    // queue comes first, and every run sets the next retry afresh.
    let mut retry: Option<(tokio::time::Instant, Trigger)> = None;
    let mut owed = Owed::default();
    loop {
        let trigger = tokio::select! {
            biased;
            next = shared.queue.next() => match next {
                Some(trigger) => trigger,
                None => break,
            },
            () = sleep_until(retry.map(|(at, _)| at)) => match retry.take() {
                Some((_, trigger)) => {
                    shared.queue.begin();
                    trigger
                }
                None => continue,
            },
        };
        shared.status.write().expect("status lock").next_retry = None;
        let (result, ran_full, listing_failed) = reconciler.run(trigger).await;
        shared.queue.finish();
        super::memory::release_freed_memory();
        owed.after(trigger, ran_full, result.completed() && !listing_failed);
        retry = match (owed.scope, retry) {
            // A queued run came before the retry and did not cover what it owes: the retry
            // keeps its time.
            (Some(scope), Some((at, _))) if result.completed() => Some((
                at,
                Trigger::Retry {
                    full: scope.full_scan(),
                },
            )),
            _ => reconciler.next_retry(&owed),
        };
        let awaited = reconciler.awaited_fetch();
        let (next, brought_forward) = with_awaited_fetch(
            retry,
            awaited.map(|(wait, _)| tokio::time::Instant::now() + wait),
        );
        retry = next;
        let reason = match awaited {
            Some((_, why)) if brought_forward => why,
            _ => "failure",
        };
        if let Some((at, next)) = retry {
            let wait = at.saturating_duration_since(tokio::time::Instant::now());
            let scan = if next.full_scan() {
                "full"
            } else {
                "incremental"
            };
            tracing::info!(
                scan,
                reason,
                after = %humantime::format_duration(round_ms(wait)),
                "retry scheduled"
            );
            shared.status.write().expect("status lock").next_retry = Some(RetryStatus {
                at: rfc3339(SystemTime::now() + wait),
                scan,
                reason,
            });
        }
    }
}

/// `message` with the paths it names below `root` made relative to it. Only where a path
/// starts (the message's start, or after a space): the root's text may also be part of an ARN
/// (`--dir orders`, `stream/orders/consumer/c`).
fn shorten_paths(message: &str, root: &Path) -> String {
    let shown = root.display().to_string();
    let prefix = format!("{}/", shown.trim_end_matches('/'));
    message
        .split(' ')
        .map(|word| word.strip_prefix(prefix.as_str()).unwrap_or(word))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The next retry, brought forward to `awaited` (a fetch for a pushed commit not yet seen)
/// when that is sooner; true if it was. A retry keeps its scope: a full scan still owed stays
/// one (every run fetches, so it serves the awaited commit as well).
fn with_awaited_fetch(
    retry: Option<(tokio::time::Instant, Trigger)>,
    awaited: Option<tokio::time::Instant>,
) -> (Option<(tokio::time::Instant, Trigger)>, bool) {
    match (retry, awaited) {
        (Some((at, trigger)), Some(fetch)) if fetch < at => (Some((fetch, trigger)), true),
        (None, Some(fetch)) => (Some((fetch, Trigger::Retry { full: false })), true),
        (retry, _) => (retry, false),
    }
}

/// What runs that failed as a whole left undone: the widest of their scopes, owed until a
/// run at least that wide completes. A full scan that failed is not paid off by a webhook's
/// incremental run that happened to succeed after it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Owed {
    scope: Option<Trigger>,
    /// Failed runs in a row since the scope was last paid: how long the next retry waits.
    failed_runs: u32,
}

impl Owed {
    /// After a run for `trigger`; `ran_full`: it did scan everything, whatever it was for.
    fn after(&mut self, trigger: Trigger, ran_full: bool, completed: bool) {
        if !completed {
            self.scope = Some(Trigger::merge(self.scope, trigger));
            self.failed_runs += 1;
        } else if self.scope.is_some_and(|owed| ran_full || !owed.full_scan()) {
            *self = Owed::default();
        }
    }
}

/// Why a plan's changes were not applied: a dry run, or a plan refused as a whole.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unapplied {
    DryRun,
    Refused,
}

/// One item per change of a plan not applied, each drift logged: in sync, or drifted (its
/// outcome says why it stays so).
fn unapplied(changes: &[plan::Change], why: Unapplied) -> Vec<Item> {
    changes
        .iter()
        .map(|c| {
            let drifted = c.action != Action::NoOp;
            if drifted {
                // Not applied: whom it names is what applying it would change, not what did.
                let access = match c.access_label() {
                    a if a.is_empty() => a,
                    a => format!("if applied: {a}"),
                };
                let (arn, action, reason, source, before) = (
                    &c.arn,
                    c.action.as_str(),
                    c.reason_label(),
                    c.source_label(),
                    c.before_label(),
                );
                match why {
                    Unapplied::DryRun => tracing::info!(%arn, action, outcome = "dry_run", %reason, source, access, before, "drift (dry run: not applied)"),
                    Unapplied::Refused => tracing::warn!(%arn, action, outcome = "refused", %reason, source, access, before, "drift not corrected: the plan was refused"),
                }
            }
            let outcome = match (drifted, why) {
                (false, _) => "in_sync",
                (true, Unapplied::DryRun) => "drifted",
                (true, Unapplied::Refused) => "refused",
            };
            Item {
                id: Some(c.target.identity()),
                status: ResourceStatus {
                    arn: c.arn.clone(),
                    action: Some(c.action.as_str()),
                    outcome,
                    error: None,
                    source: c.source.as_ref().map(ToString::to_string),
                },
                state: if drifted {
                    ResourceState::Drifted
                } else {
                    ResourceState::InSync
                },
                released: false,
            }
        })
        .collect()
}

/// A failed listing of a scope's streams or a stream's consumers, not a call about one policy.
/// `/status` lists what happened to each resource; the in-sync majority is only counted.
fn list_in_status(out: &mut RunOutcome, items: Vec<Item>) {
    out.resources.extend(
        items
            .into_iter()
            .map(|i| i.status)
            .filter(|s| !matches!(s.outcome, "unchanged" | "in_sync")),
    );
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A wait as a person reads it: up to the next millisecond, so a 30 s delay measured a
/// moment after it was set reads "30s", not "29s 999ms".
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_micros().div_ceil(1000) as u64)
}

impl Reconciler {
    pub fn new(
        source: Source,
        api: Resilient<AwsKinesis>,
        engine: Engine,
        opts: RunOptions,
        shared: Arc<Shared>,
    ) -> Self {
        let retry_delay = opts.retry_delay;
        Self {
            source,
            api,
            engine,
            opts,
            shared,
            backoff: Backoff::starting_at(retry_delay),
            applied: None,
            states: HashMap::new(),
            awaiting: None,
            reset_named: None,
            restored: None,
            recorded: None,
            seen_pushes: std::collections::VecDeque::new(),
            seen_deliveries: std::collections::VecDeque::new(),
            memory_read: false,
            unsure_forced: Vec::new(),
            judged_total: 0,
            applied_after_judged: 0,
            replaced: Vec::new(),
            refused_since: None,
            stopped_part_way: false,
            head_refused: false,
            good_in_doubt: false,
            doubt_noted: false,
            awaited_noted: None,
        }
    }

    /// Records a completed run's revision in the working copy, for a restart on an invalid
    /// branch (see `restored`). A failure costs only that: it is logged and the run stands.
    async fn record_good(&mut self, revision: Option<&str>) {
        let Some(revision) = revision.filter(|_| !self.source.is_dir()) else {
            return;
        };
        // Fetched after the forced pushes judged so far (unless a replica behind them served
        // it: a commit they announced is then still awaited).
        if self.awaiting.is_none() {
            self.good_in_doubt = false;
        }
        if self
            .reset_named
            .as_ref()
            .is_some_and(|r| r.commit == revision)
        {
            self.reset_named = None;
            self.note_reset().await;
        }
        // A revision built on a replaced head: a replica serving that head is behind now, and
        // refused as such.
        let mut kept = Vec::new();
        for head in &self.replaced {
            // The head itself too: recorded good, it was named by a push or settled.
            if !self.source.contains(head, revision).await {
                kept.push(head.clone());
            }
        }
        self.set_replaced(kept).await;
        if self.recorded.as_deref() == Some(revision) {
            return;
        }
        match self.source.record_good(revision).await {
            Ok(()) => self.recorded = Some(revision.to_string()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the last good revision in the working copy")
            }
        }
    }

    /// A git host may deliver a push's webhook before a fetch can see the pushed commit (a
    /// replica behind the one that took the push). The run applies what it fetched all the
    /// same; while the commit is missing the worker fetches again ([`Self::awaited_fetch`]),
    /// so the push is applied in seconds rather than at the next scheduled run. `wanted` is
    /// what was awaited when the run began; `head` the commit fetched, `None` when the fetch
    /// failed: a miss all the same, or a git host that stays down would be asked every second.
    async fn check_awaited(&mut self, wanted: Option<String>, head: Option<&str>) {
        let Some(commit) = wanted else {
            self.awaiting = None;
            self.note_awaited(None).await;
            return;
        };
        // A commit behind what was applied (a reset) has arrived only as the head itself: the
        // head before the reset contains it too. And it is never given up: the branch could
        // then never go back to it without another webhook, and what the reset revokes would
        // stay granted. (A late webhook of a push already superseded looks the same; it costs
        // a fetch every few minutes until the next push.)
        let reset = self
            .reset_named
            .as_ref()
            .is_some_and(|r| r.commit == commit);
        let arrived = match head {
            Some(head) if commit != head && reset => false,
            Some(head) => self.source.contains(&commit, head).await,
            None => false,
        };
        let misses = match &self.awaiting {
            Some(a) if a.commit == commit => a.misses + 1,
            _ => 1,
        };
        if arrived || (misses >= AWAIT_MISSES && !reset) {
            if arrived && misses > 1 {
                tracing::info!(commit, head, "the pushed commit has arrived");
            } else if !arrived {
                tracing::warn!(
                    commit,
                    head,
                    fetches = misses,
                    "giving up on the pushed commit: no fetch brought it (a replica far \
                     behind, or a push replaced it); the next push or scheduled run takes \
                     the branch as it is"
                );
            }
            self.awaiting = None;
        } else {
            if head.is_some() && reset {
                tracing::warn!(
                    commit,
                    head,
                    "the pushed commit is behind what was applied (a reset): applied once the \
                     branch head is that commit; fetching again until then"
                );
            } else if head.is_some() {
                tracing::warn!(
                    commit,
                    head,
                    "the branch does not contain the pushed commit yet (the git host's \
                     replica is behind its webhook?): judging what was fetched meanwhile, and \
                     fetching again soon"
                );
            }
            self.awaiting = Some(Awaiting { commit, misses });
        }
        let awaited = self.awaiting.as_ref().map(|a| a.commit.clone());
        self.note_awaited(awaited.clone()).await;
        self.shared
            .status
            .write()
            .expect("status lock")
            .awaited_commit = awaited;
    }

    /// Whether a push that named a commit behind `applied` is only a late delivery: it moved
    /// the branch from a commit that does not contain `applied` (from before it, or aside of
    /// it), so a later push, already applied, superseded it. A reset moves the branch from
    /// `applied` or beyond. Taken for a reset, a late delivery would be awaited, and a replica
    /// serving exactly that commit would roll the branch back to it. A push that created the
    /// branch, or came from a commit this copy lacks, is taken for a reset: nothing says
    /// otherwise, and a reset lost would leave what it revokes granted.
    async fn superseded(&self, pushed: &Pushed, applied: &str) -> bool {
        let Some(from) = pushed.from.as_deref() else {
            return false;
        };
        self.source.has_commit(from).await && !self.source.contains(applied, from).await
    }

    /// Judges the pushes webhooks announced since the last run, in the order they came, and
    /// returns the commit to await. A webhook can come late, after pushes that followed its
    /// own; taking it as news could end a reset that came later, replace a newer commit
    /// awaited, or, taken for a reset, let a replica serving its commit roll the branch back.
    /// Where the payloads leave it open, a push is not made a reset: a reset lets kpr apply a
    /// head behind what was applied, while a reset missed only leaves a run refused, loudly.
    async fn take_pushes(&mut self) -> Option<String> {
        let pushes = self.shared.take_pushes();
        let mut wanted = self
            .awaiting
            .as_ref()
            .map(|a| a.commit.clone())
            .or_else(|| self.reset_named.as_ref().map(|r| r.commit.clone()));
        let reset_before = self.reset_named.clone();
        let judged_any = !pushes.is_empty();
        for pushed in pushes {
            // The HTTP side drops a redelivery too, but one that came before a restarted
            // process read the deliveries kept is only told here.
            if let Some(d) = &pushed.delivery {
                if self.seen_deliveries.contains(d) {
                    tracing::info!(
                        commit = pushed.commit,
                        delivery = d,
                        "a redelivered webhook: its push was judged before; nothing to wait for"
                    );
                    continue;
                }
                if self.seen_deliveries.len() >= SEEN_PUSHES {
                    self.seen_deliveries.pop_front();
                }
                self.seen_deliveries.push_back(d.clone());
            }
            if pushed.forced != Some(false) {
                self.good_in_doubt = true;
            }
            match self.judge(&pushed, wanted.as_deref()).await {
                Judged::Late(why) => {
                    tracing::info!(
                        commit = pushed.commit,
                        from = pushed.from,
                        "a late webhook: {why}; nothing to wait for"
                    );
                    // Late or not, a forced push took its `before` away; unless what was
                    // applied holds it, a replica still serving it must not bring it back.
                    if pushed.forced == Some(true)
                        && let Some(from) = &pushed.from
                        && !self.holds_applied(from).await
                    {
                        self.add_replaced(from).await;
                    }
                }
                Judged::Forward => {
                    self.reset_named = None;
                    // A forced push (an amend, a rebase) took its `before` away: a replica
                    // still serving it must not bring it back.
                    if let Some(from) = &pushed.from {
                        match pushed.forced {
                            Some(true) => self.add_replaced(from).await,
                            Some(false) => {}
                            // Told once both commits are here (see `tell_forced`).
                            None => {
                                if self.unsure_forced.len() >= MAX_REPLACED {
                                    self.unsure_forced.remove(0);
                                }
                                self.unsure_forced
                                    .push((from.clone(), pushed.commit.clone()));
                            }
                        }
                    }
                    wanted = Some(pushed.commit.clone());
                }
                Judged::Reset => {
                    self.reset_named = Some(Reset {
                        commit: pushed.commit.clone(),
                        from: pushed.from.clone(),
                    });
                    if let Some(from) = &pushed.from {
                        self.add_replaced(from).await;
                    }
                    // The heads pushes seen brought the branch to since it was last at the
                    // reset's commit, and that it does not hold, are left too: the head
                    // replaced may be one kpr never fetched, whose ancestors it cannot tell.
                    for head in self.left_by_reset(&pushed.commit).await {
                        self.add_replaced(&head).await;
                    }
                    wanted = Some(pushed.commit.clone());
                }
            }
            if let Some(from) = pushed.from {
                if self.seen_pushes.len() >= SEEN_PUSHES {
                    self.seen_pushes.pop_front();
                }
                self.seen_pushes.push_back((from, pushed.commit));
                self.judged_total += 1;
            }
        }
        if self.reset_named != reset_before {
            self.note_reset().await;
        }
        if judged_any {
            self.source
                .note_seen(self.seen_pushes.iter(), self.seen_deliveries.iter())
                .await;
            // Now, not when the run ends: a stop or a crash during the fetch must not lose it,
            // nor the commit to await (a redelivery of its webhook is a duplicate by then).
            self.note_doubt().await;
            if wanted.is_some() {
                self.note_awaited(wanted.clone()).await;
            }
            self.shared.judged();
        }
        wanted
    }

    /// Keeps the commit awaited in the working copy when it is not what is kept there.
    async fn note_awaited(&mut self, commit: Option<String>) {
        if commit != self.awaited_noted {
            self.source.note_awaited(commit.as_deref()).await;
            self.awaited_noted = commit;
        }
    }

    /// Keeps the doubt about the last good revision (see `good_in_doubt`) in the working
    /// copy when it changed.
    async fn note_doubt(&mut self) {
        let doubt = self.head_refused || self.good_in_doubt;
        if doubt != self.doubt_noted {
            self.source.note_in_doubt(doubt).await;
            self.doubt_noted = doubt;
        }
    }

    /// What one push's webhook means, given what was applied, the reset pending, the commit
    /// awaited (`awaited`) and the pushes seen before it.
    async fn judge(&self, pushed: &Pushed, awaited: Option<&str>) -> Judged {
        let commit = pushed.commit.as_str();
        let from = pushed.from.as_deref();
        let reset = self.reset_named.as_ref().map(|r| r.commit.as_str());
        let last = self.last_good();
        let last = last.as_deref();
        // Whether `from` is a commit after `commit` on the branch (so the push went back): one
        // the working copy lacks is, since every ancestor of what was applied was fetched.
        let went_back = async |from: &str| {
            from != commit
                && (!self.source.has_commit(from).await || self.source.contains(commit, from).await)
        };
        // A push from where the branch is known to be is current: from what was applied (no
        // push from there is older than it), from the commit awaited, or, made again, from the
        // pending reset's commit. A git host names each event once (GitHub's X-GitHub-Delivery
        // is kept by its redeliveries, which kpr drops as duplicates), so a move seen before,
        // under a new delivery, is a new push: its owner undoing the reset. Only where it went
        // then decides: back behind (or from after) what was applied is a reset.
        let repeated = from.is_some_and(|f| {
            self.seen_pushes
                .iter()
                .any(|(b, a)| b.as_str() == f && a.as_str() == commit)
        });
        let current = async |from: &str| {
            let back = self.behind(commit).await.is_some()
                || (last == Some(commit) && went_back(from).await);
            if back { Judged::Reset } else { Judged::Forward }
        };
        if let Some(f) = from
            && ((awaited == Some(f) && reset != Some(f)) || (reset == Some(f) && repeated))
        {
            return current(f).await;
        }
        // Forward to a head a reset (or a forced push) replaced, a head no push seen brought:
        // the push that brought it, come late after the reset that undid it, reads the same
        // as its owner pushing it again. Not granted: a head pushed again is applied after
        // --reset-settle, while one taken back by a late webhook would re-grant what the reset
        // revoked. (A head a seen push brought has had its push; not forward, as an amend
        // undone by a force-push back, it is news.)
        if let Some(f) = from
            && !repeated
            && !self.seen_pushes.iter().any(|(_, a)| a == commit)
            && self.in_replaced(commit).await
            && (!self.source.has_commit(commit).await || self.source.contains(f, commit).await)
        {
            return Judged::Late(
                "it brings back a head a reset or a forced push replaced, by a move not seen \
                 before (the push that reset undid, come late?); if pushed again, it is \
                 applied after --reset-settle",
            );
        }
        // From what was applied back to a head a reset replaced, a move seen before: pushed
        // again by its owner (the chain check below would take it for the push the reset
        // undid).
        if let Some(f) = from
            && last == Some(f)
            && !self.left_behind(commit, f)
            && self.in_replaced(commit).await
        {
            return current(f).await;
        }
        if reset == Some(commit) {
            // Again the reset's commit: the same push delivered twice, or a reset to it again;
            // not a push that went forward to it, which is older history come late (taken for
            // the reset, its `before` would replace the head the reset replaced).
            let same = self
                .reset_named
                .as_ref()
                .is_some_and(|r| r.from.as_deref() == from);
            return match from {
                Some(from) if !same && !went_back(from).await => {
                    Judged::Late("it went forward to the pending reset's commit")
                }
                _ => Judged::Reset,
            };
        }
        if last == Some(commit) {
            // From the pending reset's commit: the reset undone by its owner, if a push seen
            // before brought what was applied (this move then is not that push). If none did,
            // it may be the push that brought it, which the reset undid, come late.
            if let (Some(from), Some(reset)) = (from, reset)
                && from == reset
            {
                return if self.seen_pushes.iter().any(|(_, a)| a == commit) {
                    Judged::Forward
                } else {
                    Judged::Late("it may be the push the pending reset undid, come late")
                };
            }
            // Back to what was applied, from a commit after it: a reset all the same, so that a
            // replica still serving the commit it replaced is not applied. From a commit kpr
            // awaits, that is what it is; otherwise, if a push seen before moved on from what
            // was applied and none since brought the branch back, this one is older (a
            // redelivery). Brought back, the branch left it again unseen and this push returns
            // it: a reset (were it older still, the head it names as replaced was left all
            // the same). Going forward to it, it is the push that was applied, come late.
            let back = match from {
                Some(from) if awaited == Some(from) => true,
                Some(_)
                    if self.seen_pushes.iter().any(|(b, _)| b == commit)
                        && self.seen_pushes.back().is_none_or(|(_, a)| a != commit) =>
                {
                    false
                }
                Some(from) => went_back(from).await,
                None => false,
            };
            return if back {
                Judged::Reset
            } else {
                Judged::Late("it names what was applied")
            };
        }
        let behind = self.behind(commit).await;
        if let (Some(from), Some(reset)) = (from, reset)
            && from == reset
        {
            // From the reset's commit: further back is a second reset; forward, the branch
            // moved on from the reset, unless to a commit still behind what was applied, which
            // may as well be the push the reset undid, delivered late.
            return match behind {
                Some(_) if self.source.contains(commit, reset).await => Judged::Reset,
                Some(_) => Judged::Late(
                    "its push came from the pending reset to a commit behind what was applied (or was the push that reset undid)",
                ),
                None => Judged::Forward,
            };
        }
        // A push to a commit a push seen before moved the branch on from, unless it came from
        // where the pushes seen since led (a force-push back to an earlier head): that push's
        // past, come late. Behind what was applied, only a push forward to it: a reset goes
        // back to such commits too, and a push kpr missed would break the chain.
        let left_behind = match from {
            Some(from) => self.left_behind(commit, from),
            None => false,
        };
        let forward = match (&behind, from) {
            (None, _) => true,
            (Some(_), Some(from)) => self.source.contains(from, commit).await,
            (Some(_), None) => false,
        };
        if left_behind && forward {
            return Judged::Late("a push seen before it moved the branch on from its commit");
        }
        // From what was applied: no push from there is older than it.
        if let Some(f) = from
            && last == Some(f)
        {
            return current(f).await;
        }
        match behind {
            Some(applied) if self.superseded(pushed, &applied).await => {
                Judged::Late("its push came from before what was applied, which superseded it")
            }
            Some(_) => Judged::Reset,
            None => Judged::Forward,
        }
    }

    /// Whether a push seen moved the branch on from `commit` and the pushes seen after it do
    /// not lead to `from`: a push from `from` to `commit` is then older than that move.
    fn left_behind(&self, commit: &str, from: &str) -> bool {
        // Only a move after the branch last came to `from` is later than a push from there:
        // one before it is older history, not what supersedes this push. The branch came to
        // what was applied by a fetch, also when no push seen brought it there.
        let mut start = self.seen_start(from);
        if self.last_good().as_deref() == Some(from) {
            let forgotten = self.judged_total.saturating_sub(self.seen_pushes.len());
            start = start.max(self.applied_after_judged.saturating_sub(forgotten));
        }
        let next = |at: &str| {
            self.seen_pushes
                .range(start.min(self.seen_pushes.len())..)
                .rev()
                .find(|(b, _)| b == at)
                .map(|(_, a)| a.as_str())
        };
        let Some(mut at) = next(commit) else {
            return false;
        };
        // Bounded by the pushes kept: a cycle (the branch back and forth) ends it too.
        for _ in 0..self.seen_pushes.len() {
            if at == from {
                return false;
            }
            match next(at) {
                Some(a) => at = a,
                None => break,
            }
        }
        at != from
    }

    /// Keeps the pending reset (or its absence) where a restart finds it.
    async fn note_reset(&self) {
        let reset = self.reset_named.as_ref();
        self.source
            .note_reset(reset.map(|r| (r.commit.as_str(), r.from.as_deref())))
            .await;
    }

    /// The revision last applied, or recorded as good by an earlier process.
    fn last_good(&self) -> Option<String> {
        match &self.applied {
            Some(applied) => applied.revision.clone(),
            None => self.recorded.clone(),
        }
    }

    /// The revision last applied (or recorded as good), when `head` is one of its ancestors
    /// and not itself: the branch went back. Taking it as is would undo applied commits, and
    /// with `--prune` delete the policies they added.
    async fn behind(&self, head: &str) -> Option<String> {
        let last = self.last_good()?;
        (last != head && self.source.contains(head, &last).await).then_some(last)
    }

    /// How long after this run to fetch again, and why: for a pushed commit not yet seen
    /// (`awaited_commit`: one second after the first miss, doubling), or for a refused head
    /// whose settle time is up (`reset_settle`), whichever comes first.
    pub fn awaited_fetch(&self) -> Option<(Duration, &'static str)> {
        // Capped: a reset is awaited for as long as it takes.
        let awaited = self
            .awaiting
            .as_ref()
            .map(|a| Duration::from_secs(1 << (a.misses - 1).min(8)));
        // A refused head is fetched again when its settle time is up, not at the next retry.
        let settling = self.refused_since.as_ref().map(|(_, since)| {
            self.opts
                .reset_settle
                .saturating_sub(since.elapsed())
                .max(Duration::from_secs(1))
        });
        let awaited = awaited.map(|a| (a, "awaited_commit"));
        let settling = settling.map(|s| (s, "reset_settle"));
        match (awaited, settling) {
            (Some(a), Some(s)) => Some(if s.0 < a.0 { s } else { a }),
            (a, s) => a.or(s),
        }
    }

    /// One run: how it ended, whether it scanned everything (an incremental trigger does when
    /// nothing was applied before, or git cannot list the changes), and whether a listing
    /// failed (see [`RunOutcome::listing_failed`]).
    pub async fn run(&mut self, trigger: Trigger) -> (RunResult, bool, bool) {
        let started = Instant::now();
        let started_at = SystemTime::now();
        let span = tracing::info_span!(
            "reconcile",
            trigger = trigger.label(),
            revision = tracing::field::Empty
        );
        let out = self.execute(trigger, &span).instrument(span.clone()).await;
        if out.result.completed() {
            self.record_good(out.revision.as_deref())
                .instrument(span.clone())
                .await;
        }
        self.note_doubt().await;
        let _in_span = span.enter();
        let (result, full, listing_failed) = (
            out.result,
            out.incremental == Some(false),
            out.listing_failed,
        );
        self.record(trigger, started, started_at, out);
        (result, full, listing_failed)
    }

    /// What to run next without being asked, and when: what runs that failed as a whole owe,
    /// with their scope; else, once the first failed resource's wait is over, a run for the
    /// resources whose wait is over.
    fn next_retry(&self, owed: &Owed) -> Option<(tokio::time::Instant, Trigger)> {
        let now = tokio::time::Instant::now();
        if let Some(scope) = owed.scope {
            let wait = self.backoff.delay(owed.failed_runs);
            let trigger = Trigger::Retry {
                full: scope.full_scan(),
            };
            return Some((now + wait, trigger));
        }
        let due = tokio::time::Instant::from_std(self.backoff.next_due()?);
        if due > now {
            return Some((due, Trigger::Retry { full: false }));
        }
        // A wait already over: it ended while the run just finished was under way (a full
        // run leaves out what is still waiting when it starts), or the run could not take the
        // resource. An incremental run takes every declared one whose wait is over, at once.
        if !self.backoff.undeclared_due(now.into_std()) {
            return Some((now, Trigger::Retry { full: false }));
        }
        // One no manifest declares any more (its manifest is gone, or a prune delete failed):
        // a full run retries it or forgets it; sooner than one delay it would spin.
        Some((now + self.backoff.delay(1), Trigger::Retry { full: true }))
    }

    /// A manifest's path below the source's root, as it may be logged (a file name can hold a
    /// line break or a terminal escape).
    fn rel(&self, p: &Path) -> String {
        let rel = p.strip_prefix(self.source.root()).unwrap_or(p);
        if rel.as_os_str().is_empty() {
            // The directory itself: "no manifests found" is said of it.
            return ".".to_string();
        }
        manifest::one_line(&rel.to_string_lossy()).into_owned()
    }

    /// A diagnostic's message, on one line, with the other files it names ("declared twice:
    /// here and at …") relative to the source as the file it is about is.
    fn rel_message(&self, message: &str) -> String {
        manifest::one_line(&shorten_paths(message, self.source.root())).into_owned()
    }

    /// Loads and validates the manifests. A directory source has no revisions, so its
    /// revision is a digest of the files' content (`content-…`): equal content, equal revision.
    async fn load(&self, revision: Option<String>) -> Result<Loaded, Invalid> {
        /// Reads of a directory source before a run gives up on it holding still.
        const STABLE_READS: usize = 5;
        let dir = self.source.manifest_dir();
        let mut opts = self.engine.load.clone();
        let is_dir = self.source.is_dir();
        opts.digests = is_dir;
        // A directory kpr does not own may change while it is read (a ConfigMap's atomic
        // `..data` swap, a sync): a load that straddles one mixes two versions, and a
        // resource moved between files would be missing from it, its policy deleted by
        // --prune. Read again until the directory held still; a git checkout is kpr's own.
        let loaded = tokio::task::spawn_blocking(move || {
            for _ in 0..STABLE_READS {
                let before = is_dir.then(|| manifest::DirSnapshot::of(&dir));
                let loaded = manifest::load_dir(&dir, &opts);
                if before.is_none_or(|b| b == manifest::DirSnapshot::of(&dir)) {
                    return Some(loaded);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            None
        })
        .await
        .map_err(|e| Invalid {
            message: format!("loading the manifests failed: {e}"),
            revision: None,
            untouched: None,
        })?;
        let Some(mut loaded) = loaded else {
            return Err(Invalid {
                message: format!(
                    "the manifest directory changed while it was read, {STABLE_READS} times \
                     running; nothing applied from it (is it written in place, not swapped in \
                     whole?)"
                ),
                revision: None,
                untouched: None,
            });
        };
        let symlinks = loaded.symlinks;
        let mut digests = std::mem::take(&mut loaded.digests);
        for (file, _) in &mut digests {
            if let Ok(rel) = file.strip_prefix(self.source.root()) {
                *file = rel.to_path_buf();
            }
        }
        let revision =
            revision.or_else(|| self.source.is_dir().then(|| content_revision(&digests)));
        let new_revision = self.applied.as_ref().is_none_or(|a| a.revision != revision);
        if new_revision {
            for d in loaded.warnings() {
                tracing::warn!(file = %self.rel(&d.file), line = d.line, "{}", manifest::one_line(&d.message));
            }
        }
        // What the revision still declares without error, for drift correction of the files
        // it did not change (see `correct_untouched`).
        // A second declaration spoils only itself (it is not in the state), not its file.
        let error_files: HashSet<PathBuf> = loaded
            .errors()
            .filter(|d| !d.message.contains(manifest::DECLARED_TWICE))
            .map(|d| d.file.clone())
            .collect();
        let invalid = loaded.has_errors();
        let valid = invalid.then(|| std::mem::take(&mut loaded.state));
        let desired = loaded.into_result().map_err(|errors| {
            const SHOWN: usize = 10;
            let shown: Vec<String> = errors
                .iter()
                .take(SHOWN)
                .map(|d| match d.line {
                    Some(l) => format!(
                        "{}:{l}: {}",
                        self.rel(&d.file),
                        self.rel_message(&d.message)
                    ),
                    None => format!("{}: {}", self.rel(&d.file), self.rel_message(&d.message)),
                })
                .collect();
            let more = errors.len().saturating_sub(SHOWN);
            format!(
                "{} error(s) in the manifests, nothing applied from this revision: {}{}",
                errors.len(),
                shown.join("; "),
                if more > 0 {
                    format!(" (and {more} more)")
                } else {
                    String::new()
                }
            )
        });
        let desired = match desired {
            Ok(desired) => desired,
            Err(message) => {
                return Err(Invalid {
                    message,
                    revision: revision.clone(),
                    untouched: valid.map(|valid| Untouched {
                        valid,
                        error_files,
                        digests,
                        symlinks,
                    }),
                });
            }
        };
        Ok(Loaded {
            desired,
            revision,
            digests,
            symlinks,
        })
    }

    /// What a webhook run must look at, or `None` for a full run (no applied revision yet, or
    /// the diff failed).
    async fn incremental_scope(
        &self,
        revision: Option<&str>,
        desired: &DesiredState,
        declared: &Declared,
        now: Instant,
    ) -> Option<Incremental> {
        let Some(applied) = &self.applied else {
            tracing::info!("no revision applied yet: full run");
            return None;
        };
        let changed = self.changed_files(revision, declared).await?;
        Some(changed_scope(
            changed,
            desired,
            &declared.ids,
            &applied.files,
            self.source.root(),
            &self.backoff.due(now).cloned().collect(),
            self.opts.prune,
        ))
    }

    /// The manifest files `revision` changed since the revision last applied; `None` when
    /// that cannot be told (nothing applied yet, or git cannot say).
    async fn changed_files(
        &self,
        revision: Option<&str>,
        declared: &Declared,
    ) -> Option<Vec<PathBuf>> {
        let new = revision?;
        let (old, files) = match &self.applied {
            Some(applied) => (applied.revision.as_deref()?, Some(&applied.files)),
            // No run completed since the restart: the revision an earlier process recorded.
            None => (self.restored.as_deref()?, None),
        };
        if old == new {
            Some(Vec::new())
        } else if self.source.is_dir() {
            Some(declared.files.changed_since(files?))
        } else {
            match self.source.changed_files(old, new).await? {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, old, new, "cannot list the changed files since the last applied revision");
                    None
                }
            }
        }
    }

    /// Whether the fetched branch head may be applied. Not a head behind what was applied,
    /// unless a webhook named it (a reset); nor the head a reset replaced, or one before it
    /// and after the reset's commit, which a replica behind the reset's webhook may still
    /// serve. Either refusal is a guess about replicas, and a webhook can be lost or come out
    /// of order: a head that stays the one fetched for `--reset-settle` is where the branch
    /// is, and is applied.
    async fn admit(&mut self, head: &str, wanted: Option<String>) -> Result<(), String> {
        // What was applied, when `head` is behind it (nothing below changes either). Also
        // when what was applied is not in the working copy at all (cloned afresh, after a
        // damaged copy, from a replica that lacks it): a head that held it would have brought
        // it, so this one may go back from it.
        let behind = match self.behind(head).await {
            Some(last) => Some(last),
            None => match self.last_good() {
                Some(last) if last != head && !self.source.has_commit(&last).await => Some(last),
                _ => None,
            },
        };
        let ahead = self.last_good().as_deref() != Some(head) && behind.is_none();
        // With a reset pending, a new head built on the reset's commit (outside what it
        // replaced) is the branch moved on from it: no run is to go back to it.
        if let Some(reset) = self.reset_named.clone()
            && reset.commit != head
            && ahead
            && self.source.contains(&reset.commit, head).await
            && !self.in_replaced(head).await
        {
            tracing::info!(
                reset = reset.commit,
                head,
                "the branch moved on from the reset it was awaited for"
            );
            self.reset_named = None;
            self.note_reset().await;
        }
        // Whether a push's webhook named this very head: then the branch is where its owner
        // put it, even behind what was applied (a reset, force-pushed). Containing the commit
        // is not enough: the head before a reset contains the older commit too.
        let named = wanted.as_deref() == Some(head)
            || self.reset_named.as_ref().is_some_and(|r| r.commit == head);
        self.check_awaited(wanted, Some(head)).await;
        // What was applied counts too, when a reset or force-push took that very head away
        // (a stopped run's head is only partly live), or a force-push announced since has
        // not arrived: taken again from a replica behind the push, it would undo what the
        // owner did meanwhile to match it (a grant removed by hand). Not its ancestors: a
        // reset's own commit is one of the head it replaced.
        let applied_again = !ahead && behind.is_none();
        let replaced = if ahead {
            self.in_replaced(head).await
        } else {
            applied_again && self.replaced.iter().any(|r| r == head)
        };
        let forced_pending = applied_again && self.good_in_doubt && self.awaiting.is_some();
        let refusal = if !named && forced_pending && !replaced {
            Some(format!(
                "the fetched branch head {head} is what was applied, and a force-push announced \
                 since ({}) has not arrived (a replica behind it): nothing applied",
                self.awaiting.as_ref().map_or("", |a| a.commit.as_str())
            ))
        } else if !named && replaced {
            Some(format!(
                "the fetched branch head {head} is what a reset replaced{} (a replica not \
                 caught up with the reset or force-push, or the commit pushed again): nothing \
                 applied",
                self.reset_named
                    .as_ref()
                    .map(|r| format!(" (the reset to {})", r.commit))
                    .unwrap_or_default(),
            ))
        } else {
            behind.as_ref().filter(|_| !named).map(|applied| {
                format!(
                    "the fetched branch head {head} is behind {applied}, which was already \
                     applied (a replica behind its webhook, or a reset no webhook announced): \
                     nothing applied, so as not to undo what was applied; a push, or the \
                     webhook of a reset, that names the head applies it"
                )
            })
        };
        self.head_refused = refusal.is_some();
        let Some(refusal) = refusal else {
            self.refused_since = None;
            return Ok(());
        };
        let since = match &self.refused_since {
            Some((refused, since)) if refused == head => *since,
            _ => {
                self.refused_since = Some((head.to_string(), Instant::now()));
                Instant::now()
            }
        };
        let settle = self.opts.reset_settle;
        if since.elapsed() < settle {
            let message = format!(
                "{refusal}; applied if the branch stays there for {}",
                humantime::format_duration(settle)
            );
            tracing::warn!(head, "{message}");
            return Err(message);
        }
        tracing::warn!(
            head,
            settled = %humantime::format_duration(settle),
            "the branch has stayed at a head kpr refused ({refusal}): taken as where its owner put it"
        );
        self.refused_since = None;
        self.head_refused = false;
        // Taken: no longer refused as replaced (what it is an ancestor of still is).
        let mut kept = self.replaced.clone();
        kept.retain(|r| r != head);
        self.set_replaced(kept).await;
        if let Some(applied) = behind {
            // A reset no webhook announced (or one judged late): kept as one until applied.
            self.reset_named = Some(Reset {
                commit: head.to_string(),
                from: Some(applied.clone()),
            });
            self.add_replaced(&applied).await;
            self.note_reset().await;
        }
        Ok(())
    }

    /// Whether `head` is a head a reset replaced, or one of its ancestors (those after what
    /// was applied: the caller checks that).
    async fn in_replaced(&self, head: &str) -> bool {
        for replaced in &self.replaced {
            // Equal first: a replaced head the working copy lacks has no ancestry to ask.
            if head == replaced || self.source.contains(head, replaced).await {
                return true;
            }
        }
        false
    }

    /// A push a payload did not say was forced (GitLab's) rewrote history when its `before`
    /// is not an ancestor of its `after`: told once a fetch brought both, its `before` is a
    /// head taken away, refused like one a reset replaced.
    async fn tell_forced(&mut self) {
        for (from, commit) in std::mem::take(&mut self.unsure_forced) {
            if !(self.source.has_commit(&from).await && self.source.has_commit(&commit).await) {
                self.unsure_forced.push((from, commit));
                continue;
            }
            if !self.source.contains(&from, &commit).await {
                tracing::info!(
                    from,
                    commit,
                    "the push rewrote history (its before is not an ancestor of its after): \
                     its before is refused as replaced"
                );
                self.add_replaced(&from).await;
            }
        }
    }

    /// Where the pushes seen since one last brought the branch to `commit` begin (all, when
    /// none did).
    fn seen_start(&self, commit: &str) -> usize {
        self.seen_pushes
            .iter()
            .rposition(|(_, a)| a == commit)
            .map_or(0, |i| i + 1)
    }

    /// Whether what was applied holds `commit` (it is an ancestor of it, or it).
    async fn holds_applied(&self, commit: &str) -> bool {
        match self.last_good() {
            Some(last) => last == commit || self.source.contains(commit, &last).await,
            None => false,
        }
    }

    /// The heads pushes seen brought the branch to since it was last at `commit`, that
    /// `commit` does not hold: what a reset to `commit` leaves behind.
    async fn left_by_reset(&self, commit: &str) -> Vec<String> {
        let mut left = Vec::new();
        for (_, head) in self.seen_pushes.range(self.seen_start(commit)..) {
            if head != commit && !left.contains(head) && !self.source.contains(head, commit).await {
                left.push(head.clone());
            }
        }
        left
    }

    /// Adds a head a reset replaced, unless one already kept covers it; drops those it covers.
    async fn add_replaced(&mut self, head: &str) {
        if self.in_replaced(head).await {
            return;
        }
        let mut kept = Vec::new();
        for replaced in &self.replaced {
            if !self.source.contains(replaced, head).await {
                kept.push(replaced.clone());
            }
        }
        kept.push(head.to_string());
        // Bounded: the oldest go first.
        let excess = kept.len().saturating_sub(MAX_REPLACED);
        kept.drain(..excess);
        self.set_replaced(kept).await;
    }

    /// The heads resets replaced, kept in the working copy when they changed.
    async fn set_replaced(&mut self, heads: Vec<String>) {
        if heads != self.replaced {
            self.replaced = heads;
            self.source.note_replaced(&self.replaced).await;
        }
    }

    async fn execute(&mut self, trigger: Trigger, span: &tracing::Span) -> RunOutcome {
        let mut out = RunOutcome::new();
        // Before the awaited commit is judged, even on a failed fetch: whether it is behind
        // what was applied depends on it, on the first runs after a restart too.
        if self.applied.is_none() && self.recorded.is_none() && !self.memory_read {
            self.source.forget_foreign_state().await;
        }
        if self.applied.is_none() && self.recorded.is_none() {
            self.restored = self.source.recorded_good().await;
            self.recorded.clone_from(&self.restored);
            self.reset_named = self
                .source
                .noted_reset()
                .await
                .map(|(commit, from)| Reset { commit, from });
            self.replaced = self.source.noted_replaced().await;
            // What an earlier process applied stays the last good revision until a run of
            // this one completes: /status must not say "none" while kpr measures against it.
            if let Some(restored) = &self.restored {
                let mut status = self.shared.status.write().expect("status lock");
                status
                    .last_good_revision
                    .get_or_insert_with(|| restored.clone());
            }
        }
        // What an earlier process judged and awaited, read once, before this one judges.
        if !self.memory_read {
            self.memory_read = true;
            let (pushes, deliveries) = self.source.noted_seen().await;
            self.shared.remember_deliveries(&deliveries);
            self.seen_pushes = pushes.into();
            self.judged_total = self.seen_pushes.len();
            self.seen_deliveries = deliveries.into();
            if self.source.noted_in_doubt().await {
                self.good_in_doubt = true;
                self.doubt_noted = true;
            }
            self.awaited_noted = self.source.noted_awaited().await;
            if let Some(commit) = self.awaited_noted.clone() {
                self.shared
                    .status
                    .write()
                    .expect("status lock")
                    .awaited_commit = Some(commit.clone());
                self.awaiting = Some(Awaiting { commit, misses: 0 });
            }
        }
        // Taken before the fetch (a push that comes during it is judged by the run it queues),
        // and judged before it: what was applied, and its history, are in the working copy.
        let wanted = self.take_pushes().await;
        let revision = match self.source.sync().await {
            Ok(r) => r,
            Err(e) => {
                // The head refused before is not known to be the head any more: its settle
                // time starts again, and the retry backs off as for any failed fetch.
                self.refused_since = None;
                tracing::error!(error = %e, "fetching the manifests failed; nothing applied from the branch, the last good revision stays");
                self.check_awaited(wanted, None).await;
                return self.correct_from_last_good(out, trigger, e).await;
            }
        };
        if let Some(head) = &revision {
            span.record("revision", head.as_str());
        }
        self.tell_forced().await;
        if let Some(head) = &revision
            && let Err(message) = self.admit(head, wanted).await
        {
            // Not corrected from the last good revision: a reset or force-push pending may
            // be taking it back.
            return out.fail(RunResult::FetchFailed, message);
        }
        // From the head admitted on, a forced push that takes it away stops the run's writes.
        let interrupt = self.shared.interrupt.child();
        let _applying = revision
            .as_ref()
            .filter(|_| !self.source.is_dir())
            .map(|head| self.shared.applying(head.clone(), &interrupt));
        out.revision = revision.clone();
        let Loaded {
            desired,
            revision,
            digests,
            symlinks,
        } = match self.load(revision).await {
            Ok(l) => l,
            Err(invalid) => {
                // A directory's revision is known only now, from its content.
                if let Some(r) = &invalid.revision {
                    span.record("revision", r.as_str());
                }
                tracing::error!(error = %invalid.message, "invalid manifests; nothing applied from this revision");
                if invalid.revision.is_some() {
                    out.revision = invalid.revision.clone();
                }
                return match invalid.untouched {
                    // A scan on the schedule (or its retry) still corrects drift where the
                    // bad revision changed nothing: one bad push must not switch off self-healing.
                    Some(untouched) if trigger.full_scan() => {
                        self.correct_untouched(out, invalid.message, invalid.revision, untouched)
                            .await
                    }
                    _ => out.fail(RunResult::Invalid, invalid.message),
                };
            }
        };
        if let Some(r) = &revision {
            span.record("revision", r.as_str());
        }
        out.revision = revision.clone();
        // What the run keeps of the desired state once it has planned (see below).
        let declared = self.declared(&desired, digests);
        let now = Instant::now();
        let scope = if trigger.full_scan() {
            None
        } else if self.stopped_part_way {
            tracing::info!(
                "the run before was stopped part-way: what it left undone is in no diff, full run"
            );
            None
        } else if self.diff_misses_links(symlinks) {
            // git diff names a link's target, or nothing when the target lies outside
            // --git-path, never the path kpr read: a changed file could go unseen.
            tracing::info!(
                symlinks,
                "manifests are reached through symlinks, which git diff does not follow: full run"
            );
            None
        } else {
            self.incremental_scope(revision.as_deref(), &desired, &declared, now)
                .await
        };
        let concurrency = self.engine.concurrency;
        let hidden = indicatif::ProgressBar::hidden();
        let mut skip = HashSet::new();
        out.incremental = Some(scope.is_some());
        let planned = match &scope {
            Some(inc) => {
                out.changed_files = Some(
                    inc.changed
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect(),
                );
                for arn in &inc.left_alone {
                    out.resources.push(ResourceStatus {
                        arn: arn.to_string(),
                        action: None,
                        outcome: "left_alone",
                        error: None,
                        source: None,
                    });
                }
                if inc.desired.is_empty() {
                    // A pushed commit not fetched yet changed nothing known so far.
                    match &self.awaiting {
                        Some(awaited) => tracing::info!(
                            changed_files = inc.changed.len(),
                            awaited = %awaited.commit,
                            "no manifest changed in what was fetched; the pushed commit is \
                             not here yet"
                        ),
                        None => tracing::info!(
                            changed_files = inc.changed.len(),
                            "the push changed no manifest: nothing to reconcile"
                        ),
                    }
                    self.finish(&mut out, declared, revision, Vec::new(), Some(inc), &skip);
                    return out;
                }
                tracing::info!(
                    changed_files = inc.changed.len(),
                    resources = inc.desired.resources.len(),
                    "incremental run"
                );
                let opts = PlanOptions {
                    concurrency,
                    targets: Vec::new(),
                    prune: false,
                    max_deletes: self.opts.max_deletes,
                };
                plan::plan(&self.api, &inc.desired, &opts, &hidden).await
            }
            None => {
                skip = self.backoff.skipped(now);
                // A resource still waiting out its backoff is taken all the same when this
                // revision changed its manifest: the change may be its fix, and an incremental
                // run would have taken it.
                if !skip.is_empty()
                    && let Some(changed) = self.changed_files(revision.as_deref(), &declared).await
                {
                    let changed: HashSet<&Path> = changed.iter().map(PathBuf::as_path).collect();
                    let root = self.source.root();
                    for r in &desired.resources {
                        if changed.contains(declaring_file(r, root)) {
                            skip.remove(&r.arn.identity());
                        }
                    }
                }
                let opts = PlanOptions {
                    concurrency,
                    targets: Vec::new(),
                    prune: self.opts.prune,
                    max_deletes: self.opts.max_deletes,
                };
                plan::plan_skipping(&self.api, &desired, &opts, &skip, &hidden).await
            }
        };
        let mut plan = match planned {
            Ok(p) => p,
            Err(mut refused) => {
                tracing::error!(error = %refused, "plan refused; nothing applied");
                if let PlanRefused::TooManyDeletes { plan: Some(p), .. } = &mut refused {
                    self.record_refused(&mut out, p);
                }
                return out.fail(RunResult::Refused, refused.to_string());
            }
        };
        if let Some(inc) = &scope {
            let removed_id = |arn: &str| {
                ResourceArn::parse(arn)
                    .map(|a| inc.removed.contains(&a.identity()))
                    .unwrap_or(false)
            };
            // A removed manifest's stream may be gone too: nothing left to delete.
            plan.failures.retain(|f| {
                !(removed_id(&f.arn) && f.code.as_deref() == Some("ResourceNotFoundException"))
            });
            let mut deletes = Vec::new();
            for c in &mut plan.changes {
                if c.action == Action::Delete && inc.removed.contains(&c.target.identity()) {
                    c.delete_cause = Some(DeleteCause::Prune);
                    c.reason = "manifest removed (--prune)".into();
                    deletes.push(format!("  - {}", c.arn));
                }
            }
            if deletes.len() > self.opts.max_deletes {
                self.record_refused(&mut out, &mut plan);
                let refused = PlanRefused::TooManyDeletes {
                    count: deletes.len(),
                    max: self.opts.max_deletes,
                    arns: deletes.join("\n"),
                    plan: None,
                };
                tracing::error!(error = %refused, "plan refused; nothing applied");
                return out.fail(RunResult::Refused, refused.to_string());
            }
        }

        // Beyond `declared`, the desired state (~4 KiB a resource) is dropped before the
        // writes, which for a large first apply are the longest phase; planned changes keep
        // only the policies they write.
        drop(desired);
        let (items, interrupted) = self.apply_plan(plan, &interrupt, &mut out).await;
        self.finish(&mut out, declared, revision, items, scope.as_ref(), &skip);
        if scope.is_none() {
            self.stopped_part_way = false;
        }
        if let Some(i) = interrupted.filter(|i| i.not_started > 0) {
            let failed = match out.summary.failed {
                0 => String::new(),
                n => format!("; {n} resource(s) failed"),
            };
            if i.by == REPLACED_UNDER_WAY {
                // Some of the revision is live and some not: only a full scan can tell which,
                // and the revision must not count as applied, nor be taken again from a
                // replica still serving it (see `admit`).
                self.stopped_part_way = true;
                out.result = RunResult::Stopped;
                out.error = Some(format!(
                    "stopped by {}: {} of its change(s) not started; the next run scans \
                     everything, from the head the branch holds then{failed}",
                    i.by, i.not_started
                ));
            } else {
                out.result = RunResult::Partial;
                out.error = Some(format!(
                    "interrupted by {}: {} change(s) not started, left for the next run{failed}",
                    i.by, i.not_started
                ));
            }
        }
        out
    }

    /// Sources as the repository names them, in the change events' logs as in `/status`,
    /// not under this instance's working copy.
    fn relative_sources(&self, plan: &mut plan::Plan) {
        let root = self.source.root();
        let changes = plan.changes.iter_mut().filter_map(|c| c.source.as_mut());
        let failures = plan.failures.iter_mut().filter_map(|f| f.source.as_mut());
        for source in changes.chain(failures) {
            if let Ok(rel) = source.file.strip_prefix(root) {
                source.file = rel.to_path_buf();
            }
        }
    }

    /// What a plan refused as a whole (too many deletes) would have changed: nothing is
    /// applied, but each drift is logged, listed in `/status` and counted, as a dry run does.
    /// A hand-made grant on a declared resource must not go unseen while the guard holds.
    fn record_refused(&mut self, out: &mut RunOutcome, plan: &mut plan::Plan) {
        self.relative_sources(plan);
        let items = unapplied(&plan.changes, Unapplied::Refused);
        self.record_states(&items);
        list_in_status(out, items);
    }

    /// Each item's state, for the counts.
    fn record_states(&mut self, items: &[Item]) {
        for item in items {
            if let Some(id) = &item.id {
                self.states.insert(state_key(id), item.state);
            }
        }
    }

    /// While the revision is invalid: reconciles the resources of the files it did not change
    /// since the last good revision, which declare what that revision declared. No prune, no
    /// applied revision recorded: the run stays `invalid`, and is retried as one.
    async fn correct_untouched(
        &mut self,
        out: RunOutcome,
        message: String,
        revision: Option<String>,
        untouched: Untouched,
    ) -> RunOutcome {
        let Untouched {
            valid,
            error_files,
            digests,
            symlinks,
        } = untouched;
        // A change of the bad revision behind a link could pass for an untouched file.
        if self.diff_misses_links(symlinks) {
            tracing::warn!(
                "manifests are reached through a symlink, behind which git diff cannot tell an untouched file: no drift is corrected until the revision is valid"
            );
            return out.fail(
                RunResult::Invalid,
                format!(
                    "{message}; no drift is corrected meanwhile: the manifests are reached \
                     through a symlink, behind which git diff cannot tell an untouched file"
                ),
            );
        }
        let declared = self.declared(&valid, digests);
        let Some(changed) = self.changed_files(revision.as_deref(), &declared).await else {
            return out.fail(RunResult::Invalid, message);
        };
        let changed: HashSet<&Path> = changed.iter().map(PathBuf::as_path).collect();
        let root = self.source.root();
        let resources: Vec<DesiredResource> = valid
            .resources
            .into_iter()
            .filter(|r| {
                !changed.contains(declaring_file(r, root)) && !error_files.contains(&r.source.file)
            })
            .collect();
        if resources.is_empty() {
            return out.fail(RunResult::Invalid, message);
        }
        let untouched = DesiredState { resources };
        self.correct_meanwhile(
            out,
            RunResult::Invalid,
            message,
            untouched,
            "of files the invalid revision did not change",
            &self.shared.interrupt.clone(),
        )
        .await
    }

    /// While the branch cannot be fetched (a git host down, a token expired): a full scan
    /// still corrects drift, as the last good revision declares it, checked out again from
    /// the working copy. Self-healing must not wait for the git host: a hand-made grant would
    /// stay live for the whole outage. The run stays failed. Not while a reset or force-push
    /// is taking that revision back: a grant it withdrew, removed by hand meanwhile, would be
    /// put back.
    async fn correct_from_last_good(
        &mut self,
        out: RunOutcome,
        trigger: Trigger,
        message: String,
    ) -> RunOutcome {
        // Not the head of a stopped run (still the one applied, to judge late webhooks by):
        // the one recorded before it.
        let good = if self.stopped_part_way {
            self.recorded.clone()
        } else {
            self.last_good()
        };
        let Some(good) = good.filter(|_| trigger.full_scan()) else {
            return out.fail(RunResult::FetchFailed, message);
        };
        if self.reset_named.is_some()
            || self.head_refused
            || self.good_in_doubt
            || self.in_replaced(&good).await
        {
            tracing::info!(
                revision = good,
                "a reset or force-push may be taking the last good revision back (one is pending, or the last head fetched was refused): no drift is corrected until a fetch succeeds"
            );
            return out.fail(RunResult::FetchFailed, message);
        }
        tracing::Span::current().record("revision", good.as_str());
        if let Err(e) = self.source.check_out(&good).await {
            tracing::warn!(error = %e, revision = good, "cannot check out the last good revision: no drift is corrected until a fetch succeeds");
            return out.fail(RunResult::FetchFailed, message);
        }
        let desired = match self.load(Some(good.clone())).await {
            Ok(loaded) => loaded.desired,
            Err(invalid) => {
                tracing::warn!(error = %invalid.message, revision = good, "the last good revision does not load: no drift is corrected until a fetch succeeds");
                return out.fail(RunResult::FetchFailed, message);
            }
        };
        // A push that may take the last good revision away, queued or arriving while this
        // runs, stops its writes: what that revision granted may be what the push withdrew.
        let interrupt = self.shared.interrupt.child();
        let _healing = self.shared.healing(good.clone(), &interrupt);
        self.correct_meanwhile(
            out,
            RunResult::FetchFailed,
            message,
            desired,
            &format!("of the last good revision {good}"),
            &interrupt,
        )
        .await
    }

    /// Reconciles `desired`, what the last good revision declares, in a run that fails for
    /// `message` all the same: no prune, no revision recorded, retried as a failed run.
    /// `which`: what the resources are, for the log and the run's message.
    async fn correct_meanwhile(
        &mut self,
        mut out: RunOutcome,
        result: RunResult,
        message: String,
        untouched: DesiredState,
        which: &str,
        interrupt: &crate::signals::Interrupt,
    ) -> RunOutcome {
        let skip = self.backoff.skipped(Instant::now());
        let opts = PlanOptions {
            concurrency: self.engine.concurrency,
            targets: Vec::new(),
            prune: false,
            max_deletes: self.opts.max_deletes,
        };
        let hidden = indicatif::ProgressBar::hidden();
        let plan = match plan::plan_skipping(&self.api, &untouched, &opts, &skip, &hidden).await {
            Ok(p) => p,
            Err(refused) => return out.fail(result, format!("{message}; {refused}")),
        };
        // What the run took: a resource waiting out its backoff is left to its own retry.
        let left: HashSet<ResourceArn> = untouched
            .resources
            .iter()
            .map(|r| r.arn.identity())
            .filter(|id| skip.contains(id))
            .collect();
        let n = untouched.resources.len() - left.len();
        drop(untouched);
        tracing::info!(
            resources = n,
            "meanwhile reconciling the resources {which}, as the last good revision declares them"
        );
        if self.applied.is_none() {
            tracing::info!(
                last_good = self.restored.as_deref().unwrap_or_default(),
                "no run has completed since the restart: the last good revision is the one recorded in the working copy before it"
            );
        }
        let (items, interrupted) = self.apply_plan(plan, interrupt, &mut out).await;
        if let Some(i) = interrupted.filter(|i| i.not_started > 0) {
            tracing::info!(
                not_started = i.not_started,
                "interrupted by {}: {} change(s) not started",
                i.by,
                i.not_started
            );
        }
        self.back_off(&items);
        self.record_states(&items);
        list_in_status(&mut out, items);
        out.skipped = self.skipped_status(&left, Instant::now());
        out.result = result;
        out.reconciled_meanwhile = true;
        out.error = Some(format!(
            "{message}; meanwhile the {n} resource(s) {which} were {} as the last good \
             revision declares them{}",
            if self.opts.dry_run {
                "checked (dry run: nothing written)"
            } else {
                "reconciled"
            },
            if left.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} more wait out their backoff: see `skipped`)",
                    left.len()
                )
            }
        ));
        out
    }

    /// `/status`'s list of the resources a run left to their backoff.
    fn skipped_status(&self, skip: &HashSet<ResourceArn>, now: Instant) -> Vec<SkippedStatus> {
        let wall_now = SystemTime::now();
        let mut skipped: Vec<SkippedStatus> = skip
            .iter()
            .filter_map(|id| {
                let e = self.backoff.get(id)?;
                Some(SkippedStatus {
                    arn: id.to_string(),
                    consecutive_failures: e.failures,
                    retry_after: rfc3339(wall_now + e.not_before.saturating_duration_since(now)),
                    last_error: e.last_error.clone(),
                    source: e.source.clone(),
                })
            })
            .collect();
        skipped.sort_by(|a, b| a.arn.cmp(&b.arn));
        skipped
    }

    /// For a git source: whether `git diff` may miss a change because the manifests are reached
    /// through symlinks (it names a link's target, not the path kpr read).
    fn diff_misses_links(&self, symlinks: usize) -> bool {
        !self.source.is_dir() && (symlinks > 0 || self.source.manifest_dir_is_linked())
    }

    /// Backoff after a run's items: a failure waits longer, a success is forgotten. Returns
    /// the resources that failed.
    fn back_off(&mut self, items: &[Item]) -> HashSet<ResourceArn> {
        let now = Instant::now();
        let mut failed = HashSet::new();
        for item in items {
            let Some(id) = &item.id else { continue };
            if item.state == ResourceState::Failed {
                failed.insert(id.clone());
                let error = item.status.error.clone().unwrap_or_default();
                let source = item.status.source.clone();
                self.backoff.failed(id.clone(), now, error, source);
            } else {
                self.backoff.succeeded(id);
            }
        }
        failed
    }

    /// Applies a plan (or, in a dry run, reports it): one item per resource, and whether a
    /// shutdown cut the apply short.
    async fn apply_plan(
        &mut self,
        mut plan: plan::Plan,
        interrupt: &crate::signals::Interrupt,
        out: &mut RunOutcome,
    ) -> (Vec<Item>, Option<apply::Interrupted>) {
        let concurrency = self.engine.concurrency;
        let hidden = indicatif::ProgressBar::hidden();
        self.relative_sources(&mut plan);
        let mut items = Vec::new();
        let mut interrupted = None;
        for f in &plan.failures {
            // A failure while planning is an event of its own, as a failed write is (apply).
            let source = f
                .source
                .as_ref()
                .map(|s| crate::plan::loggable(&s.to_string()));
            let operation = f.operation.unwrap_or("");
            tracing::warn!(arn = %f.arn, operation, source, outcome = "failed", error = %crate::plan::loggable(&f.message), "planning failed");
            out.listing_failed |= f.is_listing();
            items.push(self.failure_item(f));
        }
        if self.opts.dry_run {
            out.summary = plan.summary();
            items.extend(unapplied(&plan.changes, Unapplied::DryRun));
        } else {
            let plan_failures = std::mem::take(&mut plan.failures);
            let opts = ApplyOptions {
                concurrency,
                interrupt: interrupt.clone(),
                ..ApplyOptions::default()
            };
            let report = apply::apply(&self.api, plan, &opts, &hidden).await;
            out.summary = report.summary();
            out.summary.failed += plan_failures.len();
            interrupted = report.interrupted.clone();
            for r in &report.results {
                let c = &r.change;
                let state = match r.outcome {
                    Outcome::Applied | Outcome::Unchanged => ResourceState::InSync,
                    Outcome::Failed => ResourceState::Failed,
                    // Shutdown came first: still drift to fix, not a failure to back off from.
                    Outcome::NotStarted => ResourceState::Drifted,
                    // Only a CLI's hard stop reports it; serve never stops an apply so.
                    Outcome::UnderWay => ResourceState::Drifted,
                };
                let outcome = r.outcome.as_str();
                items.push(Item {
                    id: Some(c.target.identity()),
                    status: ResourceStatus {
                        arn: c.arn.clone(),
                        action: Some(c.action.as_str()),
                        outcome,
                        error: r.error.as_ref().map(|e| e.message.clone()),
                        source: c.source.as_ref().map(ToString::to_string),
                    },
                    state,
                    released: releases(r.outcome, c),
                });
            }
        }
        (items, interrupted)
    }

    fn declared(&self, desired: &DesiredState, digests: Vec<(PathBuf, u64)>) -> Declared {
        Declared {
            ids: desired.resources.iter().map(|r| r.arn.identity()).collect(),
            files: index_files(desired, self.source.root(), digests),
        }
    }

    fn failure_item(&self, f: &plan::Failure) -> Item {
        // A listing failure concerns a whole scope or stream, not one policy: backing the
        // stream's own policy off for it would be wrong.
        let about_one = !f.is_listing();
        Item {
            id: about_one
                .then(|| ResourceArn::parse(&f.arn).ok().map(|a| a.identity()))
                .flatten(),
            status: ResourceStatus {
                arn: f.arn.clone(),
                action: None,
                outcome: "failed",
                error: Some(f.message.clone()),
                source: f.source.as_ref().map(ToString::to_string),
            },
            state: ResourceState::Failed,
            released: false,
        }
    }

    /// Backoff, resource states and the applied revision, once a run got through planning.
    fn finish(
        &mut self,
        out: &mut RunOutcome,
        declared: Declared,
        revision: Option<String>,
        items: Vec<Item>,
        incremental: Option<&Incremental>,
        skip: &HashSet<ResourceArn>,
    ) {
        let failed_now = self.back_off(&items);
        let now = Instant::now();
        let Declared {
            ids: declared,
            files,
        } = declared;
        self.backoff.mark_declared(|id| declared.contains(id));
        match incremental {
            None => {
                // A full run saw everything: states are rebuilt, and backoff forgets resources
                // that are neither declared nor still waiting.
                let previous = std::mem::take(&mut self.states);
                for id in skip.iter().filter(|id| declared.contains(*id)) {
                    let key = state_key(id);
                    let state = previous.get(&key).copied().unwrap_or(ResourceState::Failed);
                    self.states.insert(key, state);
                }
                // Without --prune an undeclared resource is not managed: nothing to retry.
                let prune = self.opts.prune;
                self.backoff.retain(|id| {
                    declared.contains(id) || failed_now.contains(id) || (prune && skip.contains(id))
                });
            }
            Some(inc) => {
                for id in inc.removed.iter().chain(&inc.left_alone) {
                    self.states.remove(&state_key(&id.identity()));
                }
                // Left alone (no --prune) is no longer managed: nothing of it to retry, and a
                // backoff entry kept for it would only call for a full scan to drop it.
                for arn in &inc.left_alone {
                    self.backoff.forget(&arn.identity());
                }
            }
        }
        for item in &items {
            let Some(id) = &item.id else { continue };
            // A removed manifest's resource that is now without a policy is no longer managed;
            // a pending (dry run) or failed delete still is.
            let removed_and_done = item.state == ResourceState::InSync
                && incremental.is_some_and(|inc| inc.removed.contains(id));
            if item.released || removed_and_done {
                self.states.remove(&state_key(id));
            } else {
                self.states.insert(state_key(id), item.state);
            }
        }
        self.states.shrink_to_fit();
        if items.iter().any(|i| i.state == ResourceState::Failed) {
            out.result = RunResult::Partial;
            let failed = items
                .iter()
                .filter(|i| i.state == ResourceState::Failed)
                .count();
            out.error = Some(if out.listing_failed {
                format!(
                    "{failed} resource(s) failed, a listing among them: a full scan is retried \
                     with backoff"
                )
            } else {
                format!("{failed} resource(s) failed; they are retried with backoff")
            });
        }
        out.skipped = self.skipped_status(skip, now);
        list_in_status(out, items);
        out.resources.shrink_to_fit();
        let moved =
            self.applied.as_ref().map(|a| a.revision.as_deref()) != Some(revision.as_deref());
        if moved && self.awaiting.is_none() {
            self.applied_after_judged = self.judged_total;
        }
        self.applied = Some(Applied { revision, files });
    }

    fn counts(&self) -> ResourceCounts {
        let mut c = ResourceCounts {
            backing_off: self.backoff.len(),
            ..ResourceCounts::default()
        };
        for s in self.states.values() {
            match s {
                ResourceState::InSync => c.in_sync += 1,
                ResourceState::Drifted => c.drifted += 1,
                ResourceState::Failed => c.failed += 1,
            }
        }
        c
    }

    fn record(
        &mut self,
        trigger: Trigger,
        started: Instant,
        started_at: SystemTime,
        out: RunOutcome,
    ) {
        let duration = started.elapsed();
        let result = out.result;
        metrics::counter!("kpr_reconcile_runs_total", "trigger" => trigger.label(), "result" => result.label())
            .increment(1);
        metrics::histogram!("kpr_reconcile_duration_seconds").record(duration.as_secs_f64());
        let counts = self.counts();
        metrics::gauge!("kpr_resources", "state" => "in_sync").set(counts.in_sync as f64);
        metrics::gauge!("kpr_resources", "state" => "drifted").set(counts.drifted as f64);
        metrics::gauge!("kpr_resources", "state" => "failed").set(counts.failed as f64);
        metrics::gauge!("kpr_resources_backing_off").set(counts.backing_off as f64);
        let finished = SystemTime::now();
        // A run in which every resource failed or was left to its backoff (AWS unreachable,
        // say) completed, but converged nothing: the "stopped converging" alert must still
        // see the time pass. A run with nothing to do at all did converge.
        // Nor one that had nothing to do (a push that changed no manifest, a payload-less
        // trigger) while resources still fail or wait out their backoff: an outage's pushes
        // would keep the alert quiet.
        let s = &out.summary;
        let none_ok = s.create + s.update + s.delete + s.unchanged == 0;
        let still_failing = counts.failed > 0 || counts.backing_off > 0;
        let converged = result.completed()
            && !(none_ok && (s.failed > 0 || !out.skipped.is_empty() || still_failing));
        if converged {
            metrics::gauge!("kpr_last_success_timestamp_seconds").set(
                finished
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
            );
        }
        // Readiness is kpr's own, not git's: a restart during a git outage that reconciled
        // the last good revision is at work, and must keep taking webhooks (out of its
        // Service, it would miss the pushes made once git is back).
        if result.completed() || out.reconciled_meanwhile {
            self.shared.ready.store(true, Ordering::SeqCst);
        }
        let scope = if out.incremental.unwrap_or(!trigger.full_scan()) {
            "incremental"
        } else {
            "full"
        };
        let duration_ms = duration.as_millis() as u64;
        match result {
            RunResult::Success => tracing::info!(
                result = result.label(),
                scope,
                create = s.create,
                update = s.update,
                delete = s.delete,
                unchanged = s.unchanged,
                failed = s.failed,
                skipped = out.skipped.len(),
                dry_run = self.opts.dry_run,
                duration_ms,
                "reconcile finished"
            ),
            _ => tracing::warn!(
                result = result.label(),
                scope,
                create = s.create,
                update = s.update,
                delete = s.delete,
                unchanged = s.unchanged,
                failed = s.failed,
                skipped = out.skipped.len(),
                dry_run = self.opts.dry_run,
                duration_ms,
                error = out.error.as_deref().unwrap_or(""),
                "reconcile finished"
            ),
        }
        let mut status = self.shared.status.write().expect("status lock");
        status.runs += 1;
        status.resources = counts;
        if result.completed() {
            status.last_good_revision = out.revision.clone();
        }
        if converged {
            status.last_success_at = Some(rfc3339(finished));
        }
        if let (Some(message), false) = (&out.error, result == RunResult::Success) {
            status.last_error = Some(ErrorStatus {
                at: rfc3339(finished),
                trigger: trigger.label(),
                revision: out.revision.clone(),
                result,
                message: message.clone(),
            });
        }
        status.last_run = Some(RunStatus {
            trigger: trigger.label(),
            scope,
            revision: out.revision,
            started_at: rfc3339(started_at),
            duration_seconds: duration.as_secs_f64(),
            result,
            dry_run: self.opts.dry_run,
            summary: out.summary,
            changed_files: out.changed_files,
            error: out.error,
            resources: out.resources,
            skipped: out.skipped,
        });
        drop(status);
        // Drains histogram samples even when nobody scrapes /metrics.
        self.shared.metrics.run_upkeep();
    }
}

/// The file that declares `r`, relative to the source's root: the path `git diff` and the file
/// index name.
fn declaring_file<'r>(r: &'r DesiredResource, root: &Path) -> &'r Path {
    r.source.file.strip_prefix(root).unwrap_or(&r.source.file)
}

/// Source-relative manifest file -> its digest (directory sources) and the resources it
/// declares.
fn index_files(desired: &DesiredState, root: &Path, digests: Vec<(PathBuf, u64)>) -> FileIndex {
    let declared = desired.resources.iter().map(|r| {
        let arn = (r.arn.to_string(), r.source.line);
        (declaring_file(r, root).to_path_buf(), 0, vec![arn])
    });
    // FileIndex merges the entries of one file: its digest with what it declares.
    let read = digests
        .into_iter()
        .map(|(file, digest)| (file, digest, Vec::new()));
    FileIndex::new(read.chain(declared))
}

/// A directory's revision: one digest over every file's path and digest, in path order.
fn content_revision(digests: &[(PathBuf, u64)]) -> String {
    use std::hash::{Hash, Hasher};
    // `load_dir` lists files in path order already; sorting keeps this true of any caller.
    let mut files: Vec<&(PathBuf, u64)> = digests.iter().collect();
    files.sort();
    let mut hasher = std::hash::DefaultHasher::new();
    files.hash(&mut hasher);
    format!("content-{:016x}", hasher.finish())
}

/// Changed files -> what an incremental run reconciles: every resource declared in a changed
/// file (plus failed ones whose backoff is over), and, with prune, the resources a changed file
/// no longer declares, as `ensure: absent`. That costs one read per resource instead of
/// listing whole accounts. Removed resources outside every scope the manifests still cover are
/// left alone, as a full `--prune` run would leave them. `declared` is the identities
/// `desired` declares, computed once per run.
fn changed_scope(
    changed: Vec<PathBuf>,
    desired: &DesiredState,
    declared: &HashSet<ResourceArn>,
    applied_files: &FileIndex,
    root: &Path,
    due: &HashSet<ResourceArn>,
    prune: bool,
) -> Incremental {
    let changed_set: HashSet<&Path> = changed.iter().map(PathBuf::as_path).collect();
    let mut subset: Vec<DesiredResource> = desired
        .resources
        .iter()
        .filter(|r| {
            changed_set.contains(declaring_file(r, root)) || due.contains(&r.arn.identity())
        })
        .cloned()
        .collect();
    let scopes = desired.scopes();
    let mut removed = HashSet::new();
    let mut left_alone = Vec::new();
    for file in &changed {
        for (text, line) in applied_files.declared(file) {
            // Written from a parsed ARN, so it parses again.
            let Ok(arn) = ResourceArn::parse(text) else {
                continue;
            };
            let arn = &arn;
            let id = arn.identity();
            if declared.contains(&id) {
                continue;
            }
            if prune && scopes.contains(&arn.scope) {
                subset.push(DesiredResource {
                    arn: arn.clone(),
                    intent: Intent::Absent,
                    source: manifest::Source {
                        file: root.join(file),
                        line,
                    },
                });
                removed.insert(id);
            } else {
                tracing::info!(
                    arn = %arn,
                    file = %file.display(),
                    "manifest removed; the policy is left as it is ({})",
                    if prune {
                        "no manifest covers its account and region any more"
                    } else {
                        "no --prune"
                    }
                );
                left_alone.push(arn.clone());
            }
        }
    }
    Incremental {
        changed,
        desired: DesiredState { resources: subset },
        removed,
        left_alone,
    }
}

/// Whether a change leaves its resource unmanaged: a prune's delete made, or found already
/// made by its late re-read (`Unchanged`), leaves nothing to track either way.
fn releases(outcome: Outcome, change: &plan::Change) -> bool {
    matches!(outcome, Outcome::Applied | Outcome::Unchanged)
        && change.delete_cause == Some(DeleteCause::Prune)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyDocument;

    /// A fetch for an awaited commit only ever brings the next retry forward, and never
    /// narrows it: a full scan still owed stays a full scan.
    #[test]
    fn an_awaited_fetch_brings_a_retry_forward_and_keeps_its_scope() {
        let now = tokio::time::Instant::now();
        let secs = |n| now + Duration::from_secs(n);
        let full = Trigger::Retry { full: true };
        let incremental = Trigger::Retry { full: false };
        assert_eq!(with_awaited_fetch(None, None), (None, false));
        assert_eq!(
            with_awaited_fetch(None, Some(secs(1))),
            (Some((secs(1), incremental)), true)
        );
        assert_eq!(
            with_awaited_fetch(Some((secs(30), full)), Some(secs(1))),
            (Some((secs(1), full)), true)
        );
        assert_eq!(
            with_awaited_fetch(Some((secs(1), full)), Some(secs(4))),
            (Some((secs(1), full)), false)
        );
        assert_eq!(
            with_awaited_fetch(Some((secs(2), incremental)), None),
            (Some((secs(2), incremental)), false)
        );
    }

    /// A failed full scan stays owed through a webhook's incremental run that succeeds, and is
    /// paid by a full run; failed runs in a row lengthen the wait, and widen the scope.
    /// The other file a diagnostic names is shortened as the file it is about is; an ARN
    /// that holds the directory's name is left as it is.
    #[test]
    fn paths_in_messages_are_shortened_and_nothing_else() {
        let message = "arn:aws:kinesis:us-east-1:1:stream/orders/consumer/c is declared twice: \
                       here and at orders/a.yaml:1 (one manifest per resource)";
        for root in ["orders", "orders/"] {
            assert_eq!(
                shorten_paths(message, Path::new(root)),
                "arn:aws:kinesis:us-east-1:1:stream/orders/consumer/c is declared twice: here \
                 and at a.yaml:1 (one manifest per resource)"
            );
        }
    }

    #[test]
    fn what_failed_runs_owe_is_paid_only_by_a_run_as_wide() {
        let mut owed = Owed::default();
        owed.after(Trigger::Webhook, false, true);
        assert_eq!(owed, Owed::default());
        owed.after(Trigger::Schedule, true, false);
        owed.after(Trigger::Webhook, false, true);
        assert!(owed.scope.is_some_and(Trigger::full_scan), "{owed:?}");
        assert_eq!(owed.failed_runs, 1);
        // A failed incremental run after it does not shrink the debt.
        owed.after(Trigger::Webhook, false, false);
        assert!(owed.scope.is_some_and(Trigger::full_scan), "{owed:?}");
        assert_eq!(owed.failed_runs, 2);
        owed.after(Trigger::Retry { full: true }, true, true);
        assert_eq!(owed, Owed::default());
        // A webhook run that had to scan everything (nothing applied yet, say) pays it too.
        owed.after(Trigger::Startup, true, false);
        owed.after(Trigger::Webhook, true, true);
        assert_eq!(owed, Owed::default());
        // An incremental debt is paid by any run that completes.
        owed.after(Trigger::Webhook, false, false);
        assert!(owed.scope.is_some_and(|t| !t.full_scan()), "{owed:?}");
        owed.after(Trigger::Retry { full: false }, false, true);
        assert_eq!(owed, Owed::default());
    }

    #[test]
    fn a_panic_that_ends_the_worker_is_flagged_and_a_normal_end_is_not() {
        let flag = AtomicBool::new(false);
        let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _watch = SetOnPanic(&flag);
            panic!("a bug in a run");
        }));
        assert!(ended.is_err());
        assert!(flag.load(Ordering::SeqCst));
        let flag = AtomicBool::new(false);
        drop(SetOnPanic(&flag));
        assert!(!flag.load(Ordering::SeqCst));
    }

    const ACCOUNT: &str = "111122223333";

    fn arn(name: &str) -> ResourceArn {
        ResourceArn::parse(&format!(
            "arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/{name}"
        ))
        .unwrap()
    }

    fn present(name: &str, file: &str, root: &Path) -> DesiredResource {
        let a = arn(name);
        let json = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"{ACCOUNT}"}},"Action":"kinesis:GetRecords","Resource":"{a}"}}]}}"#
        );
        DesiredResource {
            arn: a,
            intent: Intent::Present {
                document: PolicyDocument::from_json_str(&json).unwrap().into(),
                json: json.into(),
            },
            source: manifest::Source {
                file: root.join(file),
                line: 1,
            },
        }
    }

    /// `changed_scope` with the declared ids computed from `new`, as a run does.
    fn incremental(
        changed: Vec<PathBuf>,
        new: &DesiredState,
        applied: &FileIndex,
        root: &Path,
        due: &HashSet<ResourceArn>,
        prune: bool,
    ) -> Incremental {
        let declared = new.resources.iter().map(|r| r.arn.identity()).collect();
        changed_scope(changed, new, &declared, applied, root, due, prune)
    }

    fn names(d: &DesiredState) -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = d
            .resources
            .iter()
            .map(|r| (r.arn.stream.clone(), matches!(r.intent, Intent::Absent)))
            .collect();
        v.sort();
        v
    }

    /// Old revision: a.yaml {a}, b.yaml {b1, b2}, c.yaml {c}.
    /// New revision: a.yaml {a} (edited), b.yaml {b1} (b2 dropped), c.yaml deleted,
    /// d.yaml {d} (new), e.yaml {e} (untouched).
    fn fixture(root: &Path) -> (DesiredState, FileIndex) {
        let old = DesiredState {
            resources: vec![
                present("a", "m/a.yaml", root),
                present("b1", "m/b.yaml", root),
                present("b2", "m/b.yaml", root),
                present("c", "m/c.yaml", root),
                present("e", "m/e.yaml", root),
            ],
        };
        let new = DesiredState {
            resources: vec![
                present("a", "m/a.yaml", root),
                present("b1", "m/b.yaml", root),
                present("d", "m/d.yaml", root),
                present("e", "m/e.yaml", root),
            ],
        };
        (new, index_files(&old, root, Vec::new()))
    }

    #[test]
    fn a_directory_revision_is_its_content() {
        let digests = |files: &[(&str, u64)]| -> Vec<(PathBuf, u64)> {
            files.iter().map(|(f, d)| (PathBuf::from(f), *d)).collect()
        };
        let one = content_revision(&digests(&[("a.yaml", 1), ("b.yaml", 2)]));
        assert_eq!(
            one,
            content_revision(&digests(&[("b.yaml", 2), ("a.yaml", 1)]))
        );
        assert_ne!(
            one,
            content_revision(&digests(&[("a.yaml", 1), ("b.yaml", 3)]))
        );
        assert_ne!(
            one,
            content_revision(&digests(&[("a.yaml", 2), ("b.yaml", 1)]))
        );
        assert!(one.starts_with("content-"));
    }

    fn changed() -> Vec<PathBuf> {
        ["m/a.yaml", "m/b.yaml", "m/c.yaml", "m/d.yaml"]
            .iter()
            .map(PathBuf::from)
            .collect()
    }

    #[test]
    fn changed_files_map_to_targets_without_prune() {
        let root = Path::new("/work/repo");
        let (new, applied) = fixture(root);
        let inc = incremental(changed(), &new, &applied, root, &HashSet::new(), false);
        assert_eq!(
            names(&inc.desired),
            [
                ("a".into(), false),
                ("b1".into(), false),
                ("d".into(), false)
            ]
        );
        assert!(inc.removed.is_empty());
        let mut left: Vec<String> = inc.left_alone.iter().map(|a| a.stream.clone()).collect();
        left.sort();
        assert_eq!(left, ["b2", "c"]);
    }

    #[test]
    fn removed_manifests_become_absent_with_prune() {
        let root = Path::new("/work/repo");
        let (new, applied) = fixture(root);
        let inc = incremental(changed(), &new, &applied, root, &HashSet::new(), true);
        assert_eq!(
            names(&inc.desired),
            [
                ("a".into(), false),
                ("b1".into(), false),
                ("b2".into(), true),
                ("c".into(), true),
                ("d".into(), false)
            ]
        );
        assert_eq!(inc.removed.len(), 2);
        assert!(inc.left_alone.is_empty());
    }

    #[test]
    fn an_unrelated_change_targets_nothing_but_due_retries() {
        let root = Path::new("/work/repo");
        let (new, applied) = fixture(root);
        let inc = incremental(
            vec![PathBuf::from("m/README.md")],
            &new,
            &applied,
            root,
            &HashSet::new(),
            true,
        );
        assert!(inc.desired.is_empty());
        let due: HashSet<ResourceArn> = [arn("e")].into_iter().collect();
        let inc = incremental(Vec::new(), &new, &applied, root, &due, false);
        assert_eq!(names(&inc.desired), [("e".into(), false)]);
    }

    #[test]
    fn prune_stays_inside_the_covered_scopes() {
        let root = Path::new("/work/repo");
        let other = ResourceArn::parse("arn:aws:kinesis:eu-west-1:111122223333:stream/x").unwrap();
        let applied =
            FileIndex::new([(PathBuf::from("m/x.yaml"), 0, vec![(other.to_string(), 1)])]);
        let new = DesiredState {
            resources: vec![present("a", "m/a.yaml", root)],
        };
        let inc = incremental(
            vec![PathBuf::from("m/x.yaml")],
            &new,
            &applied,
            root,
            &HashSet::new(),
            true,
        );
        assert!(inc.desired.is_empty());
        assert_eq!(inc.left_alone, [other]);
    }

    #[test]
    fn a_prune_delete_found_already_made_releases_its_resource() {
        let arn = ResourceArn::parse("arn:aws:kinesis:us-east-1:111122223333:stream/s").unwrap();
        let mut change = plan::Change::new(arn);
        change.action = Action::Delete;
        let all = [
            Outcome::Applied,
            Outcome::Unchanged,
            Outcome::Failed,
            Outcome::NotStarted,
            Outcome::UnderWay,
        ];
        // `ensure: absent`: declared, so still managed.
        change.delete_cause = Some(DeleteCause::EnsureAbsent);
        assert!(all.iter().all(|&o| !releases(o, &change)));
        change.delete_cause = Some(DeleteCause::Prune);
        let released: Vec<Outcome> = all.into_iter().filter(|&o| releases(o, &change)).collect();
        assert_eq!(released, [Outcome::Applied, Outcome::Unchanged]);
    }
}
