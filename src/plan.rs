//! Desired state + live state -> the list of changes.
//!
//! Planning only reads. Every resource costs exactly one GetResourcePolicy (plus one
//! DescribeStreamConsumer for a consumer named without its timestamp); `--prune` adds the
//! listings of the scopes the manifests cover.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use crate::arn::ResourceArn;
use crate::kinesis::{ApiError, Kinesis, Op, Resilient, concurrently};
use crate::manifest::{DesiredResource, DesiredState, Intent, Source};
use crate::policy::{PolicyDocument, PolicyError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Delete,
    #[serde(rename = "no-op")]
    NoOp,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::NoOp => "no-op",
        }
    }
}

/// Why a resource is deleted: the plan must say whether a human asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteCause {
    EnsureAbsent,
    Prune,
}

/// One resource's planned action. Its JSON form (see `render`) carries `before` and `after`,
/// the live and desired policies in canonical form; they are derived from the documents here
/// when serialised rather than stored, so a plan of 10,000 creates holds each policy once.
#[derive(Debug, Clone)]
pub struct Change {
    /// The ARN the calls address (a consumer's live, timestamped ARN).
    pub arn: String,
    /// The ARN as the manifest wrote it (equal to `arn` except for consumers named without a
    /// timestamp, and absent for pruned resources).
    pub declared_arn: Option<String>,
    pub kind: &'static str,
    pub action: Action,
    pub reason: String,
    pub source: Option<Source>,
    pub delete_cause: Option<DeleteCause>,
    pub target: ResourceArn,
    /// What PutResourcePolicy sends, shared with the manifest it came from.
    pub put_json: Option<Arc<str>>,
    /// The desired policy; `None` for deletes and no-ops. Shared with the manifest.
    pub desired: Option<Arc<PolicyDocument>>,
    /// The live policy; `None` when there is none, and for no-ops.
    pub live: Option<PolicyDocument>,
    /// The raw live policy when it did not parse.
    pub live_raw: Option<String>,
    /// When `live` was read: a write long after it reads it again first (see
    /// [`crate::apply::REREAD_AFTER`]).
    pub read_at: std::time::Instant,
}

impl Serialize for Change {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Out<'a> {
            arn: &'a str,
            declared_arn: Option<&'a str>,
            kind: &'static str,
            action: Action,
            reason: &'a str,
            source: Option<&'a Source>,
            before: Option<serde_json::Value>,
            after: Option<serde_json::Value>,
            #[serde(skip_serializing_if = "Option::is_none")]
            access: Option<crate::policy::AccessChange>,
            #[serde(skip_serializing_if = "Option::is_none")]
            delete_cause: Option<DeleteCause>,
        }
        Out {
            arn: &self.arn,
            declared_arn: self.declared_arn.as_deref(),
            kind: self.kind,
            action: self.action,
            reason: &self.reason,
            source: self.source.as_ref(),
            before: self.before(),
            after: self.after(),
            access: self.access(),
            delete_cause: self.delete_cause,
        }
        .serialize(s)
    }
}

impl Change {
    /// Why, for a log event (see [`loggable`]).
    pub fn reason_label(&self) -> String {
        loggable(&self.reason)
    }

    /// Whom it starts and stops naming, as the plan's `allows now` / `allows no longer` lines,
    /// joined by `; ` for a log event, within [`LOG_ACCESS`] bytes as the log escapes it.
    pub fn access_label(&self) -> String {
        self.access()
            .map(|a| fit_log_field(&crate::render::access_summary(&a).join("; "), LOG_ACCESS))
            .unwrap_or_default()
    }

    /// The live policy this change replaces, on one line (canonical JSON, or its raw text when
    /// it does not parse; empty for none): what a log keeps of a drift undone, which `access`
    /// alone does not show when the principals stay (a condition loosened, an action added).
    pub fn before_label(&self) -> String {
        let text = match (&self.live, &self.live_raw) {
            (None, Some(raw)) => raw.clone(),
            _ => self.before().map(|v| v.to_string()).unwrap_or_default(),
        };
        fit_log_field(&text, LOG_BEFORE)
    }

    /// The manifest's `file:line` for a log event (see [`loggable`]), or empty for a change no
    /// manifest declared (prune).
    pub fn source_label(&self) -> String {
        self.source
            .as_ref()
            .map_or_else(String::new, |s| loggable(&s.to_string()))
    }

    /// A no-op on `target` with nothing recorded yet: the caller records the live policy and
    /// decides the action.
    pub(crate) fn new(target: ResourceArn) -> Self {
        Change {
            arn: target.to_string(),
            declared_arn: None,
            kind: target.kind(),
            action: Action::NoOp,
            reason: String::new(),
            source: None,
            delete_cause: None,
            target,
            put_json: None,
            desired: None,
            live: None,
            live_raw: None,
            // Made right after the read, wherever a change is planned.
            read_at: std::time::Instant::now(),
        }
    }

    /// Whether `raw`, read now, is still the live policy this change was planned against.
    pub fn live_is_still(&self, raw: Option<&str>) -> bool {
        match (&self.live, &self.live_raw, raw) {
            (None, None, None) => true,
            (_, Some(was), Some(now)) => was == now,
            (Some(was), None, Some(now)) => PolicyDocument::from_json_str(now)
                .is_ok_and(|now| now.equivalent_in(was, &self.target.scope.partition)),
            _ => false,
        }
    }

    /// Whom the change starts and stops naming; `None` for a no-op. A live policy that could
    /// not be read names nobody kpr can tell: all the manifest names counts as new, and the
    /// change says that whom the live policy named is not known.
    pub fn access(&self) -> Option<crate::policy::AccessChange> {
        (self.action != Action::NoOp).then(|| crate::policy::AccessChange {
            before_unknown: self.live.is_none() && self.live_raw.is_some(),
            ..crate::policy::AccessChange::between(
                self.live.as_ref(),
                self.desired.as_deref(),
                Some(&self.target.scope.partition),
            )
        })
    }

    /// The live policy in canonical form, or its raw text when it is not a valid document.
    pub fn before(&self) -> Option<serde_json::Value> {
        match (&self.live, &self.live_raw) {
            (Some(doc), _) => Some(doc.canonical_in(&self.target.scope.partition)),
            (None, Some(raw)) => Some(serde_json::Value::String(raw.clone())),
            (None, None) => None,
        }
    }

    /// The desired policy in canonical form.
    pub fn after(&self) -> Option<serde_json::Value> {
        let partition = &self.target.scope.partition;
        self.desired.as_deref().map(|d| d.canonical_in(partition))
    }

    /// Records the live policy (`None`: there is none). Returns the parse outcome.
    fn record_live(&mut self, raw: Option<String>) -> Option<Result<(), PolicyError>> {
        let raw = raw?;
        Some(match PolicyDocument::from_json_str(&raw) {
            Ok(doc) => {
                self.live = Some(doc);
                Ok(())
            }
            Err(e) => {
                self.live_raw = Some(raw);
                Err(e)
            }
        })
    }

    /// An in-sync resource needs only its identity and reason: dropping the policy bodies keeps
    /// a 10,000-resource plan from holding 10,000 policies nobody will look at.
    fn slim(&mut self) {
        self.put_json = None;
        self.desired = None;
        self.live = None;
        self.live_raw = None;
    }
}

/// What a change event's fields may take of a log line, in bytes as the log escapes them: a
/// line past 16 KiB is split by Docker's and containerd's log drivers, and a collector then
/// gets broken JSON, for the very events kept for audit. With the ARN, source and span, an
/// event stays under 14 KiB.
const LOG_BEFORE: usize = 6 * 1024;
const LOG_ACCESS: usize = 4 * 1024;
/// A reason, an error or a path: one may quote a live policy's key, of any length.
const LOG_REASON: usize = 2 * 1024;

/// Text from a manifest, a live policy or an answer (a reason, an error, a path), for a log
/// event: on one line, so that nothing in it forges a line or a terminal escape, and within
/// [`LOG_REASON`] bytes as the log escapes it.
pub fn loggable(text: &str) -> String {
    fit_log_field(&crate::manifest::one_line(text), LOG_REASON)
}

/// `text` as it is when escaped it fits in `budget` bytes; else its start, and the whole one's
/// length and sha256, to match it with the plan's document.
fn fit_log_field(text: &str, budget: usize) -> String {
    // The larger of the two formats' escapes: serde_json's (a quote or backslash two bytes, a
    // control character six) and the text log's, as Rust's Debug writes it (`\u{7f}`,
    // `\u{200b}`).
    let escaped = |c: char| {
        let json = match c {
            '"' | '\\' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        };
        json.max(c.escape_debug().map(char::len_utf8).sum())
    };
    if text.chars().map(escaped).sum::<usize>() <= budget {
        return text.to_string();
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let tail = format!("... ({} bytes in all, sha256 {hex}...)", text.len());
    let mut used = tail.len();
    let mut cut = 0;
    for (i, c) in text.char_indices() {
        used += escaped(c);
        if used > budget {
            break;
        }
        cut = i + c.len_utf8();
    }
    format!("{}{tail}", &text[..cut])
}

/// A resource kpr could not plan or apply, with what a person needs to act on it.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub arn: String,
    pub source: Option<Source>,
    pub operation: Option<&'static str>,
    pub code: Option<String>,
    pub retryable: bool,
    pub message: String,
}

impl Failure {
    /// A failed ListStreams or ListStreamConsumers: about a whole scope or stream's consumers,
    /// not one policy.
    pub fn is_listing(&self) -> bool {
        matches!(
            self.operation,
            Some(op) if op == Op::ListStreams.as_str() || op == Op::ListStreamConsumers.as_str()
        )
    }

    pub fn from_api(arn: String, source: Option<Source>, e: &ApiError) -> Self {
        Failure {
            arn,
            source,
            operation: Some(e.op.as_str()),
            code: e.code.clone(),
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    /// Sorted by ARN; includes no-ops so callers can count and report them.
    pub changes: Vec<Change>,
    pub failures: Vec<Failure>,
    /// With `--prune`, the targets no resource listed in reach matched, when every listing
    /// succeeded: they name nothing that exists (a typo), not a policy already deleted.
    #[serde(skip)]
    pub unlisted_targets: Vec<ResourceArn>,
}

impl Plan {
    /// Declared resources the plan took up (each has a change or a failure): what `--target`
    /// reports against the number declared. Prune's deletes and failures, of resources no
    /// manifest declares, are not among them.
    pub fn planned(&self) -> usize {
        let changes = self
            .changes
            .iter()
            .filter(|c| c.delete_cause != Some(DeleteCause::Prune));
        changes.count() + self.failures.iter().filter(|f| f.source.is_some()).count()
    }

    /// Deletes of resources no manifest declares (`--prune`).
    pub fn pruned(&self) -> usize {
        let pruned = self.changes.iter();
        pruned
            .filter(|c| c.delete_cause == Some(DeleteCause::Prune))
            .count()
    }

    /// With `--prune`, whether a listing failed: what it would have found is unknown.
    pub fn listing_failed(&self) -> bool {
        self.failures.iter().any(Failure::is_listing)
    }

    /// Whether the plan has anything for `arn` (any action, or a failure).
    pub fn covers(&self, arn: &ResourceArn) -> bool {
        self.changes.iter().any(|c| c.target.same_resource(arn))
            || self
                .failures
                .iter()
                .any(|f| ResourceArn::parse(&f.arn).is_ok_and(|a| a.same_resource(arn)))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub delete: usize,
    pub unchanged: usize,
    pub failed: usize,
    /// Changes an interrupted apply never started: neither done nor failed.
    #[serde(skip_serializing_if = "is_zero")]
    pub not_started: usize,
    /// Changes a hard stop cut off under way: they may or may not have landed.
    #[serde(skip_serializing_if = "is_zero")]
    pub under_way: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Plan {
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            failed: self.failures.len(),
            ..Summary::default()
        };
        for c in &self.changes {
            match c.action {
                Action::Create => s.create += 1,
                Action::Update => s.update += 1,
                Action::Delete => s.delete += 1,
                Action::NoOp => s.unchanged += 1,
            }
        }
        s
    }

    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.action != Action::NoOp)
    }
}

#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub concurrency: usize,
    /// Only these resources (matched by ARN, a consumer with or without its timestamp).
    pub targets: Vec<ResourceArn>,
    pub prune: bool,
    pub max_deletes: usize,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            targets: Vec::new(),
            prune: false,
            max_deletes: DEFAULT_MAX_DELETES,
        }
    }
}

pub const DEFAULT_MAX_DELETES: usize = 3;

/// Planning refused as a whole: nothing may be applied from it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlanRefused {
    #[error("--prune with an empty manifest set would delete every policy in reach; refusing")]
    PruneWithoutManifests,
    #[error(
        "--prune would delete {count} policies, more than the limit of {max} (--max-deletes, KPR_MAX_DELETES or maxDeletes); review the plan and raise the limit if this is intended:\n{arns}"
    )]
    TooManyDeletes {
        count: usize,
        max: usize,
        arns: String,
        /// The whole plan it refused, deletes included, for a person to review (the CLI
        /// shows it); `None` where only the count is known.
        plan: Option<Box<Plan>>,
    },
}

fn targeted(targets: &[ResourceArn], arn: &ResourceArn) -> bool {
    targets.is_empty() || targets.iter().any(|t| target_names(t, arn))
}

/// Whether a `--target` names `arn`: the same resource and, when both carry a consumer's
/// creation epoch, the same registration. A target naming a past registration must not act on
/// the one registered now (with --prune, delete its policy).
pub fn target_names(target: &ResourceArn, arn: &ResourceArn) -> bool {
    let epoch = |a: &ResourceArn| a.consumer.as_ref().and_then(|c| c.created);
    target.same_resource(arn)
        && match (epoch(target), epoch(arn)) {
            (Some(t), Some(a)) => t == a,
            _ => true,
        }
}

pub async fn plan<K: Kinesis>(
    api: &Resilient<K>,
    desired: &DesiredState,
    opts: &PlanOptions,
    progress: &indicatif::ProgressBar,
) -> Result<Plan, PlanRefused> {
    plan_skipping(api, desired, opts, &HashSet::new(), progress).await
}

/// [`plan`], leaving out the resources in `skip` (by [`ResourceArn::identity`]) entirely: they
/// are neither read nor pruned. `kpr serve` uses it to back off resources that keep failing.
pub async fn plan_skipping<K: Kinesis>(
    api: &Resilient<K>,
    desired: &DesiredState,
    opts: &PlanOptions,
    skip: &HashSet<ResourceArn>,
    progress: &indicatif::ProgressBar,
) -> Result<Plan, PlanRefused> {
    if opts.prune && desired.is_empty() {
        return Err(PlanRefused::PruneWithoutManifests);
    }
    let selected: Vec<&DesiredResource> = desired
        .resources
        .iter()
        .filter(|r| {
            targeted(&opts.targets, &r.arn)
                && (skip.is_empty() || !skip.contains(&r.arn.identity()))
        })
        .collect();
    progress.set_length(selected.len() as u64);
    // A hidden bar still keeps its rate estimate on every `inc` (~2% of a plan's CPU).
    let shown = !progress.is_hidden();
    let mut plan = Plan::default();
    // Sized up front: growing it by doubling copied every change and faulted in fresh pages.
    plan.changes.reserve(selected.len());
    let results = concurrently(selected, opts.concurrency, |r| async move {
        let out = plan_one(api, r).await;
        if shown {
            progress.inc(1);
        }
        out
    });
    let mut results = std::pin::pin!(results);
    while let Some(r) = results.next().await {
        match r {
            // A consumer declared by name is resolved only now: a target may name another
            // registration of it.
            Ok(c) if !targeted(&opts.targets, &c.target) => plan.failures.push(Failure {
                arn: c.declared_arn.clone().unwrap_or_else(|| c.arn.clone()),
                source: c.source.clone(),
                operation: None,
                code: None,
                retryable: false,
                message: format!(
                    "--target names another registration of this consumer than the one \
                     registered now ({}): nothing planned for it",
                    c.target
                ),
            }),
            Ok(c) => plan.changes.push(c),
            Err(f) => plan.failures.push(f),
        }
    }
    let refused = if opts.prune {
        prune(api, desired, opts, skip, &mut plan).await.err()
    } else {
        None
    };
    plan.changes.sort_by(|a, b| a.arn.cmp(&b.arn));
    plan.failures.sort_by(|a, b| a.arn.cmp(&b.arn));
    match refused {
        None => Ok(plan),
        Some(mut refused) => {
            if let PlanRefused::TooManyDeletes {
                plan: refused_plan, ..
            } = &mut refused
            {
                *refused_plan = Some(Box::new(plan));
            }
            Err(refused)
        }
    }
}

/// A consumer named without its epoch follows re-registration, but a policy Resource pinned to
/// the epoch it had when written grants nothing on the consumer registered now: kpr would put
/// it, and every later plan would call it in sync. (Lint can only check that the Resource names
/// some registration of the consumer; which one is registered is known here.)
fn stale_consumer_resource(r: &DesiredResource, resolved: &ResourceArn) -> Option<Failure> {
    let Intent::Present { document, .. } = &r.intent else {
        return None;
    };
    // Described without its epoch (moto), the consumer's registration cannot be told: a
    // Resource `NAME:*`, the advice below, would be refused as well.
    if !r.arn.needs_resolution()
        || resolved
            .consumer
            .as_ref()
            .is_some_and(|c| c.created.is_none())
    {
        return None;
    }
    let resolved = resolved.to_string();
    let stale = document
        .statements()
        .iter()
        .flat_map(|s| s.resources().unwrap_or_default())
        .find(|res| **res != resolved && !crate::policy::wildcard_match(res, &resolved))?;
    Some(Failure {
        arn: r.arn.to_string(),
        source: Some(r.source.clone()),
        operation: None,
        code: None,
        retryable: false,
        message: format!(
            "the policy's Resource {stale:?} is not the consumer as registered now ({resolved}): \
             the grant would match nothing. Write \"{}:*\" to follow re-registration, or \
             \"{resolved}\" to grant this registration only",
            r.arn
        ),
    })
}

async fn plan_one<K: Kinesis>(api: &Resilient<K>, r: &DesiredResource) -> Result<Change, Failure> {
    let declared = r.arn.to_string();
    let fail = |e: &ApiError| Failure::from_api(declared.clone(), Some(r.source.clone()), e);
    let target = if r.arn.needs_resolution() {
        api.describe_consumer(&r.arn).await.map_err(|e| {
            let mut f = fail(&e);
            if e.class == crate::kinesis::ErrorClass::NotFound {
                f.message = format!(
                    "consumer {:?} is not registered on stream {} ({})",
                    r.arn
                        .consumer
                        .as_ref()
                        .map(|c| c.name.as_str())
                        .unwrap_or(""),
                    r.arn.stream_arn(),
                    e
                );
            }
            f
        })?
    } else {
        r.arn.clone()
    };
    if let Some(failure) = stale_consumer_resource(r, &target) {
        return Err(failure);
    }
    // Also for `ensure: absent`: a resource that does not exist has no policy, but a name
    // mistyped in a manifest meant to remove one must not pass as done.
    let live_raw = api.get_policy(&target).await.map_err(|e| {
        let mut f = fail(&e);
        if e.class == crate::kinesis::ErrorClass::NotFound {
            f.message = format!("{} does not exist ({e})", target.kind());
        }
        f
    })?;
    let mut change = Change::new(target);
    change.declared_arn = Some(declared);
    change.source = Some(r.source.clone());
    match &r.intent {
        // The steady state: the live text is exactly what kpr wrote last time. Equal bytes are
        // the same policy, so neither side needs parsing or a canonical form.
        Intent::Present { json, .. } if live_raw.as_deref() == Some(&**json) => {
            change.reason = "in sync".into();
        }
        Intent::Present { document, json } => {
            let live = change.record_live(live_raw);
            (change.action, change.reason) = match &live {
                None => (Action::Create, "no live policy".into()),
                Some(Err(e)) => (
                    Action::Update,
                    format!("live policy is not a valid policy document ({e})"),
                ),
                Some(Ok(_))
                    if change.live.as_ref().is_some_and(|l| {
                        l.equivalent_in(document, &change.target.scope.partition)
                    }) =>
                {
                    (Action::NoOp, "in sync".into())
                }
                Some(Ok(_)) => (Action::Update, "live policy differs".into()),
            };
            if change.action != Action::NoOp {
                change.put_json = Some(Arc::clone(json));
                change.desired = Some(Arc::clone(document));
            }
        }
        Intent::Absent => {
            let live = change.record_live(live_raw);
            (change.action, change.reason) = match &live {
                None => (Action::NoOp, "no policy, as required".into()),
                Some(_) => {
                    change.delete_cause = Some(DeleteCause::EnsureAbsent);
                    (Action::Delete, "ensure: absent".into())
                }
            };
        }
    }
    if change.action == Action::NoOp {
        change.slim();
    }
    Ok(change)
}

/// Policies in the covered scopes that no manifest declares get a delete.
async fn prune<K: Kinesis>(
    api: &Resilient<K>,
    desired: &DesiredState,
    opts: &PlanOptions,
    skip: &HashSet<ResourceArn>,
    plan: &mut Plan,
) -> Result<(), PlanRefused> {
    // A consumer declared by name covers every registration; one pinned to a registration
    // (`NAME:EPOCH`) covers that one only: the policy of a later registration of the same
    // name is undeclared. A live consumer listed without its epoch (moto) cannot be told
    // apart, and counts as declared by either.
    let is_pinned = |a: &ResourceArn| a.consumer.as_ref().is_some_and(|c| c.created.is_some());
    let (pinned, by_name): (HashSet<&ResourceArn>, HashSet<&ResourceArn>) = desired
        .resources
        .iter()
        .map(|r| &r.arn)
        .partition(|a| is_pinned(a));
    let pinned_ids: HashSet<ResourceArn> = pinned.iter().map(|a| a.identity()).collect();
    let is_declared = |live: &ResourceArn, id: &ResourceArn| {
        by_name.contains(id)
            || pinned.contains(live)
            || (!is_pinned(live) && pinned_ids.contains(id))
    };
    let mut candidates = Vec::new();
    let mut listing_failed = false;
    // Under --target, only where a target is: a one-resource run in a large estate neither
    // lists every account nor fails for another account's broken role.
    let in_reach = |stream: &ResourceArn| {
        opts.targets.is_empty()
            || opts
                .targets
                .iter()
                .any(|t| t.scope == stream.scope && t.stream == stream.stream)
    };
    let scopes = desired
        .scopes()
        .into_iter()
        .filter(|scope| opts.targets.is_empty() || opts.targets.iter().any(|t| t.scope == *scope));
    for scope in scopes {
        let streams = match api.list_streams(&scope).await {
            Ok(s) => s,
            Err(e) => {
                plan.failures
                    .push(Failure::from_api(format!("scope {scope}"), None, &e));
                listing_failed = true;
                continue;
            }
        };
        let reached = streams.iter().filter(|s| in_reach(s));
        let consumer_lists: Vec<_> = concurrently(reached, opts.concurrency, |s| async move {
            (s, api.list_consumers(s).await)
        })
        .collect()
        .await;
        candidates.extend(streams.iter().cloned());
        for (stream, consumers) in consumer_lists {
            match consumers {
                Ok(c) => candidates.extend(c),
                // Deleted since the stream listing, its consumers with it: nothing to prune,
                // as for a policy read below.
                Err(e) if e.class == crate::kinesis::ErrorClass::NotFound => {}
                Err(e) => {
                    // Named by its stream, yet not the stream's own failure (a delete of it
                    // planned above stands): its consumers went unchecked.
                    let mut f = Failure::from_api(stream.to_string(), None, &e);
                    f.message = format!(
                        "its consumers were not checked for policies to prune: {}",
                        f.message
                    );
                    plan.failures.push(f);
                    listing_failed = true;
                }
            }
        }
    }
    if !listing_failed {
        plan.unlisted_targets = opts
            .targets
            .iter()
            .filter(|t| !candidates.iter().any(|a| target_names(t, a)))
            .cloned()
            .collect();
    }
    candidates.retain(|a| {
        let id = a.identity();
        !is_declared(a, &id) && !skip.contains(&id) && targeted(&opts.targets, a)
    });
    let found: Vec<Result<Option<Change>, Failure>> =
        concurrently(candidates, opts.concurrency, |arn| async move {
            match api.get_policy(&arn).await {
                Ok(None) => Ok(None),
                Ok(Some(raw)) => {
                    let mut change = Change::new(arn);
                    change.record_live(Some(raw));
                    change.action = Action::Delete;
                    change.reason = "policy not declared in any manifest (--prune)".into();
                    change.delete_cause = Some(DeleteCause::Prune);
                    Ok(Some(change))
                }
                // Deleted between listing and reading: nothing to prune.
                Err(e) if e.class == crate::kinesis::ErrorClass::NotFound => Ok(None),
                Err(e) => Err(Failure::from_api(arn.to_string(), None, &e)),
            }
        })
        .collect()
        .await;
    let mut deletes = Vec::new();
    for f in found {
        match f {
            Ok(Some(c)) => deletes.push(c),
            Ok(None) => {}
            Err(f) => plan.failures.push(f),
        }
    }
    let count = deletes.len();
    let refused = (count > opts.max_deletes).then(|| {
        let mut arns: Vec<&str> = deletes.iter().map(|c| c.arn.as_str()).collect();
        arns.sort_unstable();
        PlanRefused::TooManyDeletes {
            count,
            max: opts.max_deletes,
            arns: arns
                .iter()
                .map(|a| format!("  - {a}"))
                .collect::<Vec<_>>()
                .join("\n"),
            // The caller puts in the plan, once it is sorted.
            plan: None,
        }
    });
    // Into the plan even when refused: the refusal carries it, for a person to review.
    plan.changes.extend(deletes);
    refused.map_or(Ok(()), Err)
}

/// Used by callers that report which operation a failure came from without an API error.
pub fn local_failure(
    arn: String,
    source: Option<Source>,
    op: Option<Op>,
    message: String,
) -> Failure {
    Failure {
        arn,
        source,
        operation: op.map(Op::as_str),
        code: None,
        retryable: false,
        message,
    }
}

#[cfg(test)]
mod future_size {
    use crate::arn::ResourceArn;
    use crate::kinesis::{AwsKinesis, Resilient};
    use crate::manifest::{DesiredResource, Intent, Source};

    /// Each planned resource's future is moved into the concurrency buffer and polled through
    /// the retry layer: inlining one SDK send future (~13 KiB) made it ~30 KiB, and memmove was
    /// the largest single cost in `kpr plan`. The SDK paths are boxed; this keeps them so.
    #[tokio::test]
    async fn planning_one_resource_stays_small() {
        let api = Resilient::new(
            AwsKinesis::new(Default::default()).await,
            Default::default(),
            0,
        );
        let arn = ResourceArn::parse("arn:aws:kinesis:us-east-1:111122223333:stream/a").unwrap();
        let r = DesiredResource {
            arn,
            intent: Intent::Absent,
            source: Source {
                file: "a.yaml".into(),
                line: 1,
            },
        };
        let size = std::mem::size_of_val(&super::plan_one(&api, &r));
        assert!(size < 8 * 1024, "plan_one's future is {size} bytes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a log keeps of the policy a change replaces: the text itself when it does not
    /// parse (not quoted again), and a long one cut to fit a log line, with its digest.
    #[test]
    fn the_before_label_fits_a_log_line() {
        let target = ResourceArn::parse("arn:aws:kinesis:us-east-1:111122223333:stream/a").unwrap();
        let mut c = Change::new(target.clone());
        c.record_live(Some("{\"Version\": oops".into()));
        assert_eq!(c.before_label(), "{\"Version\": oops");
        let statements: Vec<String> = (0..200)
            .map(|i| {
                format!(
                    r#"{{"Sid":"S{i}","Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::444455556666:role/r{i}"}},"Action":"kinesis:GetRecords","Resource":"*"}}"#
                )
            })
            .collect();
        let mut long = Change::new(target);
        long.record_live(Some(format!(
            r#"{{"Version":"2012-10-17","Statement":[{}]}}"#,
            statements.join(",")
        )));
        let label = long.before_label();
        let as_json = serde_json::to_string(&label).unwrap();
        assert!(as_json.len() <= LOG_BEFORE + 2, "{}", as_json.len());
        assert!(label.contains("bytes in all, sha256 "), "{label}");
        assert!(label.starts_with(r#"{"Statement":[{"Action""#), "{label}");
        // Counted as the log escapes it: quotes and control characters take more than a byte
        // in JSON, DEL and invisible characters in the text format.
        let quoted = fit_log_field(&"\"\u{1b}".repeat(5000), 1000);
        assert!(
            serde_json::to_string(&quoted).unwrap().len() <= 1002,
            "{quoted}"
        );
        let invisible = fit_log_field(&"\u{7f}\u{200b}".repeat(5000), 1000);
        assert!(format!("{invisible:?}").len() <= 1002, "{invisible:?}");
        // A manifest's path may be long, and hold characters the log escapes.
        long.source = Some(Source {
            file: format!("m/{}/x.yaml", "\u{1b}".repeat(4000)).into(),
            line: 1,
        });
        assert!(
            long.source_label().len() <= LOG_REASON,
            "{}",
            long.source_label().len()
        );
        // A reason may quote a live policy's key of any length.
        long.reason = format!(
            "live policy is not valid (unknown key {:?})",
            "K".repeat(15_000)
        );
        assert!(
            long.reason_label().len() <= LOG_REASON,
            "{}",
            long.reason_label().len()
        );
        // Whom a change names, kept within its share too: a policy may name hundreds.
        let principals: Vec<String> = (0..400)
            .map(|i| format!("arn:aws:iam::444455556666:role/reader-{i:03}"))
            .collect();
        let access = fit_log_field(
            &format!("allows no longer: {}", principals.join(", ")),
            LOG_ACCESS,
        );
        assert!(access.len() <= LOG_ACCESS, "{}", access.len());
    }

    /// A live policy kpr cannot parse named someone: the plan must not read as though nobody
    /// loses access.
    #[test]
    fn an_unparsable_live_policy_leaves_whom_it_named_unknown() {
        let target = ResourceArn::parse("arn:aws:kinesis:us-east-1:111122223333:stream/a").unwrap();
        let live = |text: &str| {
            let mut c = Change::new(target.clone());
            c.action = Action::Delete;
            let parsed = c.record_live(Some(text.into()));
            (c, parsed)
        };
        let statement = r#"{"Effect":"Allow","Principal":{"AWS":"444455556666"},"Action":"kinesis:GetRecords","Resource":"*""#;
        let (c, parsed) = live(&format!(
            r#"{{"Version":"2012-10-17","Statement":[{statement},"Condition":{{"NumericLessThan":{{"n":18446744073709551616}}}}}}]}}"#
        ));
        assert!(matches!(parsed, Some(Err(_))), "{parsed:?}");
        assert!(c.access().unwrap().before_unknown);
        assert!(
            c.access_label().contains("not known"),
            "{}",
            c.access_label()
        );
        let (c, parsed) = live(&format!(
            r#"{{"Version":"2012-10-17","Statement":[{statement}}}]}}"#
        ));
        assert!(matches!(parsed, Some(Ok(()))), "{parsed:?}");
        let access = c.access().unwrap();
        assert!(!access.before_unknown);
        assert_eq!(access.allows_no_longer, ["444455556666"]);
    }

    /// A target with a consumer's epoch names that registration only; without one, any.
    #[test]
    fn a_target_with_an_epoch_names_that_registration() {
        let consumer = |suffix: &str| {
            ResourceArn::parse(&format!(
                "arn:aws:kinesis:us-east-1:111122223333:stream/s/consumer/c{suffix}"
            ))
            .unwrap()
        };
        let (now, past, any) = (
            consumer(":1700000002"),
            consumer(":1700000001"),
            consumer(""),
        );
        assert!(targeted(&[], &now));
        assert!(targeted(std::slice::from_ref(&now), &now));
        assert!(!targeted(std::slice::from_ref(&past), &now));
        assert!(targeted(std::slice::from_ref(&any), &now));
        assert!(targeted(std::slice::from_ref(&past), &any));
        assert!(targeted(&[past, now.clone()], &now));
        assert!(!targeted(&[consumer("x")], &now));
    }

    /// A by-name consumer's Resource must name the registration described; one described
    /// without its epoch (moto) cannot be told, and is not refused (the advice, `NAME:*`,
    /// would be refused too).
    #[test]
    fn a_stale_consumer_resource_is_told_only_against_a_known_registration() {
        let consumer = "arn:aws:kinesis:us-east-1:111122223333:stream/s/consumer/c";
        let declared = |resource: &str| {
            let document = crate::policy::PolicyDocument::from_json_str(&format!(
                r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"111122223333"}},"Action":"kinesis:SubscribeToShard","Resource":"{resource}"}}]}}"#
            ))
            .unwrap();
            DesiredResource {
                arn: ResourceArn::parse(consumer).unwrap(),
                intent: Intent::Present {
                    document: std::sync::Arc::new(document),
                    json: String::new().into(),
                },
                source: Source {
                    file: "c.yaml".into(),
                    line: 1,
                },
            }
        };
        let live = |suffix: &str| ResourceArn::parse(&format!("{consumer}{suffix}")).unwrap();
        let following = declared(&format!("{consumer}:*"));
        assert!(stale_consumer_resource(&following, &live(":1700000002")).is_none());
        assert!(stale_consumer_resource(&following, &live("")).is_none());
        let pinned = declared(&format!("{consumer}:1700000001"));
        assert!(stale_consumer_resource(&pinned, &live(":1700000002")).is_some());
        assert!(stale_consumer_resource(&pinned, &live(":1700000001")).is_none());
    }

    /// `--target ... --prune` reported prune's delete as one of the declared resources it
    /// planned.
    #[test]
    fn planned_counts_only_declared_resources() {
        let arn = |n: &str| {
            ResourceArn::parse(&format!(
                "arn:aws:kinesis:us-east-1:111122223333:stream/{n}"
            ))
            .unwrap()
        };
        let source = Source {
            file: "a.yaml".into(),
            line: 1,
        };
        let mut pruned = Change::new(arn("stray"));
        pruned.action = Action::Delete;
        pruned.delete_cause = Some(DeleteCause::Prune);
        let mut absent = Change::new(arn("gone"));
        absent.action = Action::Delete;
        absent.delete_cause = Some(DeleteCause::EnsureAbsent);
        absent.source = Some(source.clone());
        let failure = |arn: &str, source: Option<Source>| {
            local_failure(arn.into(), source, None, "failed".into())
        };
        let plan = Plan {
            changes: vec![pruned, absent, Change::new(arn("kept"))],
            failures: vec![
                failure("scope aws/111122223333/us-east-1", None),
                failure(
                    "arn:aws:kinesis:us-east-1:111122223333:stream/x",
                    Some(source),
                ),
            ],
            ..Plan::default()
        };
        assert_eq!(plan.planned(), 3);
    }
}
