//! Executes a plan: bounded concurrency, each write followed by a read-back that proves the live
//! policy is now equivalent to the manifest. One resource failing never stops the others.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;

use crate::kinesis::{ApiError, Kinesis, Resilient, concurrently};
use crate::plan::{Action, Change, Failure, Plan, Summary};
use crate::signals::Interrupt;

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub concurrency: usize,
    /// Read back after each write and compare (`--no-verify` turns it off).
    pub verify: bool,
    /// How long to wait for a read-back to reflect the write (eventual consistency).
    pub verify_timeout: Duration,
    /// Once set, no further change starts; see [`Interrupt`].
    pub interrupt: Interrupt,
    /// Filled in as changes finish; see [`Settled`].
    pub settled: Settled,
    /// A change whose live policy was read longer ago than this reads it again before its
    /// write; see [`REREAD_AFTER`].
    pub reread_after: Duration,
}

/// PutResourcePolicy has no condition on what it replaces: a policy edited by hand between
/// kpr's read and its write would be overwritten unseen, named in no plan and no report. Most
/// writes follow their read within seconds, as the bench's one read per change relies on;
/// under `--rate-limit 5` a 10,000-resource estate reads for half an hour before it writes,
/// so a write that long after its read reads again first, and one whose policy changed
/// meanwhile is not made: the next run shows the change in its plan.
pub const REREAD_AFTER: Duration = Duration::from_secs(60);

/// What an apply has done so far, resource by resource. A hard stop never gets to the
/// report, yet a pipeline must still learn what was changed, what failed and what may or
/// may not have landed: this is what it prints instead.
#[derive(Debug, Clone, Default)]
pub struct Settled(Arc<Mutex<SettledState>>);

#[derive(Debug, Default)]
struct SettledState {
    /// Changes to make (no-ops aside); those without an entry in `states` were not started.
    pending: usize,
    /// By ARN (one change each), so the lists come out in the plan's order.
    states: BTreeMap<String, Progress>,
}

#[derive(Debug)]
enum Progress {
    UnderWay,
    Done(Made),
    Failed(Failure),
}

/// What a change that did not fail came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    Written,
    /// Its late re-read found the policy already as the manifest asks (another kpr, a hand
    /// apply): nothing was written, and kpr does not count it as its change.
    AlreadySo,
}

impl Made {
    fn outcome(self) -> Outcome {
        match self {
            Made::Written => Outcome::Applied,
            Made::AlreadySo => Outcome::Unchanged,
        }
    }
}

impl Settled {
    fn begin(&self, pending: usize) {
        self.0.lock().expect("settled").pending = pending;
    }

    fn started(&self, arn: &str) {
        let mut s = self.0.lock().expect("settled");
        s.states.insert(arn.to_string(), Progress::UnderWay);
    }

    /// Started, but stopped before its write was sent.
    fn withheld(&self, arn: &str) {
        self.0.lock().expect("settled").states.remove(arn);
    }

    fn finished(&self, arn: &str, result: &Result<Made, Failure>) {
        let progress = match result {
            Ok(made) => Progress::Done(*made),
            Err(f) => Progress::Failed(f.clone()),
        };
        let mut s = self.0.lock().expect("settled");
        s.states.insert(arn.to_string(), progress);
    }

    /// For the log of a stop that cuts the apply short: every resource written, failed or
    /// under way, by name (a cancelled merge job's log is the record of what it changed).
    pub fn describe(&self) -> String {
        let s = self.0.lock().expect("settled");
        let (mut applied, mut failed, mut under_way) = (Vec::new(), Vec::new(), Vec::new());
        let mut already = Vec::new();
        for (arn, p) in &s.states {
            match p {
                Progress::Done(Made::Written) => applied.push(arn.clone()),
                Progress::Done(Made::AlreadySo) => already.push(arn.clone()),
                // One line each, as a log reader takes them (the SDK's credential errors
                // span several).
                Progress::Failed(f) => {
                    failed.push(format!("{arn}: {}", crate::manifest::one_line(&f.message)));
                }
                Progress::UnderWay => under_way.push(arn.clone()),
            }
        }
        let not_started = s.pending.saturating_sub(s.states.len());
        [
            (format!("{} change(s) applied", applied.len()), applied),
            (format!("{} failed", failed.len()), failed),
            (
                format!(
                    "{} under way, which may or may not have been applied",
                    under_way.len()
                ),
                under_way,
            ),
            (format!("{not_started} not started"), Vec::new()),
        ]
        .into_iter()
        // Rare (a late re-read found it made by someone else): said only when it happened.
        .chain((!already.is_empty()).then(|| {
            (
                format!(
                    "{} already as the manifests ask, made meanwhile by someone else",
                    already.len()
                ),
                already,
            )
        }))
        .map(|(head, items)| {
            std::iter::once(head)
                .chain(items.into_iter().map(|i| format!("  {i}")))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect::<Vec<_>>()
        .join("\n")
    }

    /// The report of `plan` (the one under way) as far as it got, for a hard stop by `then`:
    /// changes under way are `UnderWay`, those never reached `NotStarted`.
    pub fn report(&self, plan: Plan, by: &'static str, then: &'static str) -> Report {
        let s = self.0.lock().expect("settled");
        let results: Vec<ResourceResult> = plan
            .changes
            .into_iter()
            .map(|change| {
                let (outcome, error) = match (change.action, s.states.get(&change.arn)) {
                    (Action::NoOp, _) => (Outcome::Unchanged, None),
                    (_, None) => (Outcome::NotStarted, None),
                    (_, Some(Progress::UnderWay)) => (Outcome::UnderWay, None),
                    (_, Some(Progress::Done(made))) => (made.outcome(), None),
                    (_, Some(Progress::Failed(f))) => (Outcome::Failed, Some(f.clone())),
                };
                ResourceResult {
                    change,
                    outcome,
                    error,
                }
            })
            .collect();
        let interrupted = Interrupted::of(by, &results, Some(then));
        Report {
            results,
            plan_failures: plan.failures,
            interrupted: Some(interrupted),
        }
    }
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            verify: true,
            verify_timeout: Duration::from_secs(10),
            interrupt: Interrupt::default(),
            settled: Settled::default(),
            reread_after: REREAD_AFTER,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Applied,
    Unchanged,
    Failed,
    /// An interrupted apply never started it: nothing was tried, the next run makes it.
    #[serde(rename = "not_started")]
    NotStarted,
    /// A hard stop came while its write or read-back was under way: it may or may not have
    /// landed (`kpr plan` tells).
    #[serde(rename = "under_way")]
    UnderWay,
}

impl Outcome {
    /// As in the JSON report: the metrics' and the log's `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Failed => "failed",
            Outcome::NotStarted => "not_started",
            Outcome::UnderWay => "under_way",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ResourceResult {
    #[serde(flatten)]
    pub change: Change,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub results: Vec<ResourceResult>,
    /// Resources that failed before a change could be planned (carried over from the plan).
    pub plan_failures: Vec<Failure>,
    /// Why the apply stopped early, if it did, and how many changes it never started.
    pub interrupted: Option<Interrupted>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Interrupted {
    pub by: &'static str,
    pub not_started: usize,
    /// The second signal, which stopped kpr at once (only in a hard stop's report).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hard_stop: Option<&'static str>,
}

impl Interrupted {
    fn of(by: &'static str, results: &[ResourceResult], hard_stop: Option<&'static str>) -> Self {
        Self {
            by,
            not_started: results
                .iter()
                .filter(|r| r.outcome == Outcome::NotStarted)
                .count(),
            hard_stop,
        }
    }
}

impl Report {
    pub fn failures(&self) -> impl Iterator<Item = &Failure> {
        self.plan_failures
            .iter()
            .chain(self.results.iter().filter_map(|r| r.error.as_ref()))
    }

    /// Whether the live state may still differ from the manifests: something failed, or an
    /// interrupt left changes unmade (or, stopping at once, some undecided).
    pub fn incomplete(&self) -> bool {
        self.failures().next().is_some()
            || self
                .interrupted
                .as_ref()
                .is_some_and(|i| i.not_started > 0 || i.hard_stop.is_some())
    }

    /// Counts of what was actually done (a failed create is counted as failed, not created).
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            failed: self.failures().count(),
            ..Summary::default()
        };
        for r in &self.results {
            match (r.outcome, r.change.action) {
                (Outcome::Applied, Action::Create) => s.create += 1,
                (Outcome::Applied, Action::Update) => s.update += 1,
                (Outcome::Applied, Action::Delete) => s.delete += 1,
                (Outcome::Unchanged, _) | (Outcome::Applied, Action::NoOp) => s.unchanged += 1,
                (Outcome::Failed, _) => {}
                (Outcome::NotStarted, _) => s.not_started += 1,
                (Outcome::UnderWay, _) => s.under_way += 1,
            }
        }
        s
    }
}

pub async fn apply<K: Kinesis>(
    api: &Resilient<K>,
    plan: Plan,
    opts: &ApplyOptions,
    progress: &indicatif::ProgressBar,
) -> Report {
    let pending = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::NoOp)
        .count();
    progress.set_length(pending as u64);
    opts.settled.begin(pending);
    // A hidden bar still keeps its rate estimate on every `inc`.
    let shown = !progress.is_hidden();
    let mut results: Vec<ResourceResult> =
        concurrently(plan.changes, opts.concurrency, |change| async move {
            if change.action == Action::NoOp {
                return ResourceResult {
                    change,
                    outcome: Outcome::Unchanged,
                    error: None,
                };
            }
            if opts.interrupt.reason().is_some() {
                return ResourceResult {
                    change,
                    outcome: Outcome::NotStarted,
                    error: None,
                };
            }
            opts.settled.started(&change.arn);
            let Some(result) = apply_one(api, &change, opts).await else {
                opts.settled.withheld(&change.arn);
                // Closes its `change starting`: nothing was sent.
                tracing::info!(arn = %change.arn, action = change.action.as_str(), outcome = "not_started", reason = %change.reason_label(), source = change.source_label(), "change withheld: a stop came before its write was sent");
                return ResourceResult {
                    change,
                    outcome: Outcome::NotStarted,
                    error: None,
                };
            };
            opts.settled.finished(&change.arn, &result);
            if shown {
                progress.inc(1);
            }
            let outcome = result.as_ref().map_or(Outcome::Failed, |made| made.outcome());
            metrics::counter!("kpr_changes_total", "action" => change.action.as_str(), "outcome" => outcome.as_str())
                .increment(1);
            // Why, from which manifest line, and whom it grants or stops granting: the
            // service's log is its record of what it did (a drift undone names the intruder).
            let source = change.source_label();
            let access = change.access_label();
            match &result {
                Ok(Made::Written) => tracing::info!(arn = %change.arn, action = change.action.as_str(), reason = %change.reason_label(), source, access, outcome = "applied", "change applied"),
                // Its re-read came before any `change starting`: this line is its record.
                Ok(Made::AlreadySo) => tracing::info!(arn = %change.arn, action = change.action.as_str(), reason = %change.reason_label(), source, outcome = "unchanged", "change not needed: the live policy changed since kpr read it into what this change would make"),
                Err(f) => tracing::warn!(arn = %change.arn, action = change.action.as_str(), reason = %change.reason_label(), source, access, outcome = "failed", error = %crate::plan::loggable(&f.message), "change failed"),
            }
            ResourceResult {
                change,
                outcome,
                error: result.err(),
            }
        })
        .collect()
        .await;
    results.sort_by(|a, b| a.change.arn.cmp(&b.change.arn));
    let interrupted = opts
        .interrupt
        .reason()
        .map(|by| Interrupted::of(by, &results, None));
    Report {
        results,
        plan_failures: plan.failures,
        interrupted,
    }
}

/// `None`: stopped before its write was sent, so nothing was tried.
async fn apply_one<K: Kinesis>(
    api: &Resilient<K>,
    change: &Change,
    opts: &ApplyOptions,
) -> Option<Result<Made, Failure>> {
    let fail = |e: &ApiError| Failure::from_api(change.arn.clone(), change.source.clone(), e);
    if change.action == Action::NoOp {
        return Some(Ok(Made::AlreadySo));
    }
    let read_ago = change.read_at.elapsed();
    if read_ago >= opts.reread_after {
        let (unchanged, done) = match api.get_policy(&change.target).await {
            Ok(raw) => (
                change.live_is_still(raw.as_deref()),
                holds(change, raw.as_deref()),
            ),
            // The resource gone meanwhile: the write says so (or, for a delete, is done).
            Err(e) if e.class == crate::kinesis::ErrorClass::NotFound => (true, false),
            Err(e) => return Some(Err(fail(&e))),
        };
        // Someone made the change meanwhile (another kpr, a hand apply): nothing to write.
        if done {
            return Some(Ok(Made::AlreadySo));
        }
        if !unchanged {
            return Some(Err(crate::plan::local_failure(
                change.arn.clone(),
                change.source.clone(),
                Some(crate::kinesis::Op::GetResourcePolicy),
                format!(
                    "not written: its live policy changed in the {}s since kpr read it, and \
                     the write would replace that change unseen; the next plan shows it",
                    read_ago.as_secs()
                ),
            )));
        }
    }
    // Before the write, not only after it: a process killed (-9, OOM, a lost node) between the
    // two leaves a change made and, without this line, recorded nowhere, as the next run finds
    // it in sync. The one-shot apply has printed its plan by now and logs it at `info` only.
    tracing::info!(arn = %change.arn, action = change.action.as_str(), outcome = "starting", reason = %change.reason_label(), source = change.source_label(), access = change.access_label(), before = change.before_label(), "change starting");
    let written = match change.action {
        Action::NoOp => unreachable!("a no-op returned before its re-read"),
        Action::Create | Action::Update => {
            let json = change
                .put_json
                .as_deref()
                .expect("create/update always carries the policy to put");
            api.put_policy_unless(&change.target, json, &opts.interrupt)
                .await?
        }
        Action::Delete => match api
            .delete_policy_unless(&change.target, &opts.interrupt)
            .await?
        {
            // Already gone (AWS and moto answer NotFound when there is no policy): the goal
            // state holds, as Terraform treats it.
            Err(e) if e.class == crate::kinesis::ErrorClass::NotFound => Ok(()),
            other => other,
        },
    };
    // How long a read-back waits for the service to show a write (eventual consistency).
    let tolerance = if opts.verify {
        opts.verify_timeout
    } else {
        Duration::ZERO
    };
    if let Err(e) = written {
        // Some attempt got no answer it could read, or a 5xx: the write may have taken effect
        // (even when a later attempt was refused outright, an expired token say). Reading it
        // back tells. A policy in place is not a failure, and a pipeline must not go red for
        // want of an answer; one not in place may still land, and the failure says so.
        if !e.unanswered {
            return Some(Err(fail(&e)));
        }
        return Some(match read_back(api, change, tolerance).await {
            Ok(()) => {
                tracing::info!(arn = %change.arn, error = %e, "the write's answer was lost, but the policy reads back as written");
                Ok(Made::Written)
            }
            Err(unknown) => {
                let mut f = fail(&e);
                f.message = format!(
                    "{}; it may have taken effect all the same: {}",
                    f.message,
                    match unknown {
                        ReadBack::Failed(r) => format!("reading it back failed ({r})"),
                        ReadBack::NotInPlace(waited) if waited.is_zero() => {
                            "it did not read back in place; `kpr plan` shows where it stands"
                                .to_string()
                        }
                        ReadBack::NotInPlace(waited) => format!(
                            "it did not read back in place within {}s; `kpr plan` shows where it \
                             stands",
                            waited.as_secs()
                        ),
                    }
                );
                Err(f)
            }
        });
    }
    if opts.verify {
        return Some(verify(api, change, tolerance).await.map(|()| Made::Written));
    }
    Some(Ok(Made::Written))
}

/// After a write: the policy reads back in place within `timeout`, or a failure says why not.
async fn verify<K: Kinesis>(
    api: &Resilient<K>,
    change: &Change,
    timeout: Duration,
) -> Result<(), Failure> {
    read_back(api, change, timeout)
        .await
        .map_err(|unknown| match unknown {
            ReadBack::Failed(e) => {
                let mut f = Failure::from_api(change.arn.clone(), change.source.clone(), &e);
                f.message = format!("written, but the read-back failed: {}", f.message);
                f
            }
            ReadBack::NotInPlace(waited) => crate::plan::local_failure(
                change.arn.clone(),
                change.source.clone(),
                Some(crate::kinesis::Op::GetResourcePolicy),
                format!(
                    "verification failed: after waiting {}s in all between read-backs the live policy is still not equivalent to the manifest (something else is writing it, or the service rewrote it: compare with `kpr policy diff`)",
                    waited.as_secs()
                ),
            ),
        })
}

/// Why a read-back did not find the change in place.
enum ReadBack {
    Failed(crate::kinesis::ApiError),
    /// After waiting this long in all between reads.
    NotInPlace(Duration),
}

/// Whether `live` is what `change` set out to make.
fn holds(change: &Change, live: Option<&str>) -> bool {
    match (&change.desired, live) {
        (None, None) => true,
        // The text just written, back unchanged: no parse needed.
        (Some(_), Some(raw)) if change.put_json.as_deref() == Some(raw) => true,
        (Some(want), Some(raw)) => crate::policy::PolicyDocument::from_json_str(raw)
            .is_ok_and(|got| got.equivalent_in(want, &change.target.scope.partition)),
        _ => false,
    }
}

/// Read the policy back until it matches, tolerating `timeout` of eventual consistency (none:
/// one read): after a write, to verify it, and after a write whose answer was lost, to learn
/// whether it took effect. The window counts only the waits between reads: time a read spends
/// queued behind the rate limit or in its retries is the client's, not the service's, and
/// counting it failed a correct write at high concurrency under a low `--rate-limit`.
async fn read_back<K: Kinesis>(
    api: &Resilient<K>,
    change: &Change,
    timeout: Duration,
) -> Result<(), ReadBack> {
    let mut waited = Duration::ZERO;
    let mut delay = Duration::from_millis(50);
    loop {
        let live = match api.get_policy(&change.target).await {
            // A delete whose resource is gone as well: it has no policy, as asked.
            Err(e)
                if change.desired.is_none() && e.class == crate::kinesis::ErrorClass::NotFound =>
            {
                None
            }
            read => read.map_err(ReadBack::Failed)?,
        };
        if holds(change, live.as_deref()) {
            return Ok(());
        }
        if waited >= timeout {
            return Err(ReadBack::NotInPlace(waited));
        }
        let pause = delay.min(timeout - waited);
        tokio::time::sleep(pause).await;
        waited += pause;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arn::ResourceArn;
    use crate::kinesis::{ApiError, ErrorClass, RetryPolicy};
    use crate::policy::PolicyDocument;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    const POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"111122223333"},"Action":"kinesis:GetRecords","Resource":"arn:aws:kinesis:us-east-1:111122223333:stream/s"}]}"#;

    /// Every read takes `read_takes` (a queue before it, say); the first `stale` reads still
    /// see no policy.
    struct SlowReads {
        read_takes: Duration,
        stale: u32,
        reads: AtomicU32,
    }

    impl Kinesis for SlowReads {
        async fn get_policy(&self, _: &ResourceArn) -> Result<Option<String>, ApiError> {
            tokio::time::sleep(self.read_takes).await;
            let n = self.reads.fetch_add(1, Ordering::SeqCst);
            Ok((n >= self.stale).then(|| POLICY.to_string()))
        }
        async fn put_policy(&self, _: &ResourceArn, _: &str) -> Result<(), ApiError> {
            unimplemented!()
        }
        crate::kinesis::calls_a_test_does_not_make!();
    }

    fn written() -> Change {
        let target = ResourceArn::parse("arn:aws:kinesis:us-east-1:111122223333:stream/s").unwrap();
        let mut change = Change::new(target);
        change.action = crate::plan::Action::Create;
        change.put_json = Some(Arc::from(POLICY));
        change.desired = Some(Arc::new(PolicyDocument::from_json_str(POLICY).unwrap()));
        change
    }

    fn api(read_takes: Duration, stale: u32) -> Resilient<SlowReads> {
        let reads = SlowReads {
            read_takes,
            stale,
            reads: AtomicU32::new(0),
        };
        Resilient::new(reads, RetryPolicy::default(), 0)
    }

    #[test]
    fn settled_names_what_finished_and_what_was_under_way() {
        let settled = Settled::default();
        settled.begin(6);
        for arn in ["arn:c", "arn:b", "arn:a", "arn:d", "arn:e"] {
            settled.started(arn);
        }
        settled.withheld("arn:d");
        settled.finished("arn:a", &Ok(Made::Written));
        let denied = crate::plan::local_failure("arn:b".into(), None, None, "de\nnied".into());
        settled.finished("arn:b", &Err(denied));
        settled.finished("arn:e", &Ok(Made::AlreadySo));
        assert_eq!(
            settled.describe(),
            "1 change(s) applied\n  arn:a\n1 failed\n  arn:b: de\\nnied\n\
             1 under way, which may or may not have been applied\n  arn:c\n2 not started\n\
             1 already as the manifests ask, made meanwhile by someone else\n  arn:e"
        );
    }

    #[tokio::test]
    async fn a_read_back_slowed_by_the_client_does_not_use_up_the_consistency_window() {
        // Each read takes longer than the whole window, and the first is stale: the service
        // was consistent after one more read, which must still be made.
        let slow = api(Duration::from_millis(300), 1);
        verify(&slow, &written(), Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(slow.inner().reads.load(Ordering::SeqCst), 2);
    }

    /// Puts answered, attempt by attempt, with these errors (class, whether the answer was
    /// lost; the last repeats); the first lands when `lands`.
    struct LostAnswers {
        lands: bool,
        answers: Vec<(ErrorClass, bool)>,
        puts: AtomicU32,
        live: std::sync::Mutex<Option<String>>,
        reads: AtomicU32,
    }

    impl Kinesis for LostAnswers {
        async fn get_policy(&self, _: &ResourceArn) -> Result<Option<String>, ApiError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(self.live.lock().unwrap().clone())
        }
        async fn put_policy(&self, _: &ResourceArn, policy: &str) -> Result<(), ApiError> {
            let n = self.puts.fetch_add(1, Ordering::SeqCst) as usize;
            if self.lands && n == 0 {
                *self.live.lock().unwrap() = Some(policy.to_string());
            }
            let (class, unanswered) = self.answers[n.min(self.answers.len() - 1)];
            Err(ApiError {
                op: crate::kinesis::Op::PutResourcePolicy,
                class,
                code: None,
                message: "connection closed before message completed".into(),
                attempts: 1,
                unanswered,
            })
        }
        crate::kinesis::calls_a_test_does_not_make!();
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_whose_answer_was_lost_is_settled_by_reading_it_back() {
        use ErrorClass::{Fatal, Retryable};
        for (lands, answers, applied, reads) in [
            (true, vec![(Retryable, true)], true, 1),
            // Not in place: read until the consistency window is over, then it may still land.
            (false, vec![(Retryable, true)], false, 4),
            // Refused outright: nothing to read.
            (true, vec![(Fatal, false)], false, 0),
            (true, vec![(Retryable, false)], false, 0),
            // The first answer lost, the retry refused (an expired token): the first landed.
            (true, vec![(Retryable, true), (Fatal, false)], true, 1),
        ] {
            let lost = LostAnswers {
                lands,
                answers: answers.clone(),
                puts: AtomicU32::new(0),
                live: std::sync::Mutex::new(None),
                reads: AtomicU32::new(0),
            };
            let retry = RetryPolicy {
                max_attempts: 2,
                ..RetryPolicy::default()
            };
            let api = Resilient::new(lost, retry, 0);
            let opts = ApplyOptions {
                verify: true,
                verify_timeout: Duration::from_millis(300),
                ..ApplyOptions::default()
            };
            let result = apply_one(&api, &written(), &opts).await.expect("sent");
            let case = format!("{lands} {answers:?}: {result:?}");
            assert_eq!(result.is_ok(), applied, "{case}");
            assert_eq!(api.inner().reads.load(Ordering::SeqCst), reads, "{case}");
            if let Err(f) = result
                && answers[0].1
            {
                assert!(
                    f.message.contains("may have taken effect all the same")
                        && f.message.contains("did not read back in place"),
                    "{case}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_policy_that_never_arrives_fails_after_the_window() {
        let never = api(Duration::ZERO, u32::MAX);
        let started = std::time::Instant::now();
        let err = verify(&never, &written(), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(
            err.message.contains("verification failed"),
            "{}",
            err.message
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        // 50, 100, then the 50 left of the window: each wait followed by a read.
        assert_eq!(never.inner().reads.load(Ordering::SeqCst), 4);
    }

    /// The live policy is `now`, whatever was planned; counts reads and puts.
    struct EditedMeanwhile {
        now: Option<String>,
        reads: AtomicU32,
        puts: AtomicU32,
    }

    impl Kinesis for EditedMeanwhile {
        async fn get_policy(&self, _: &ResourceArn) -> Result<Option<String>, ApiError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Ok(self.now.clone())
        }
        async fn put_policy(&self, _: &ResourceArn, _: &str) -> Result<(), ApiError> {
            self.puts.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        crate::kinesis::calls_a_test_does_not_make!();
    }

    /// A read longer ago than the 60 s after which a write reads again.
    fn read_long_ago() -> std::time::Instant {
        std::time::Instant::now()
            .checked_sub(Duration::from_secs(90))
            .unwrap()
    }

    /// As the report says it: the metrics and the logs use the same words.
    #[test]
    fn an_outcome_is_named_as_the_json_names_it() {
        for o in [
            Outcome::Applied,
            Outcome::Unchanged,
            Outcome::Failed,
            Outcome::NotStarted,
            Outcome::UnderWay,
        ] {
            assert_eq!(
                serde_json::to_value(o).unwrap(),
                serde_json::json!(o.as_str())
            );
        }
    }

    fn edited_meanwhile(now: Option<String>) -> Resilient<EditedMeanwhile> {
        let inner = EditedMeanwhile {
            now,
            reads: AtomicU32::new(0),
            puts: AtomicU32::new(0),
        };
        Resilient::new(inner, RetryPolicy::default(), 0)
    }

    /// A write long after its read reads again first, and is not made over a policy changed
    /// meanwhile; a prompt one costs no read.
    #[tokio::test]
    async fn a_policy_changed_since_a_long_ago_read_is_not_overwritten() {
        let planned = POLICY.replace("111122223333", "444455556666");
        // Laid out anew by another tool, meaning the same: still the policy planned against.
        let relaid = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(&planned).unwrap(),
        )
        .unwrap();
        let edited = planned.replace("kinesis:GetRecords", "kinesis:*");
        let opts = ApplyOptions {
            verify: false,
            reread_after: Duration::from_secs(60),
            ..ApplyOptions::default()
        };
        let long_ago = read_long_ago();
        let written_ = Some(Made::Written);
        // (live now, read at, reads, puts, what it made: none when it failed)
        for (now, read_at, reads, puts, made) in [
            (Some(edited.clone()), long_ago, 1, 0, None),
            (None, long_ago, 1, 0, None),
            (Some(relaid), long_ago, 1, 1, written_),
            (Some(planned.clone()), long_ago, 1, 1, written_),
            (Some(edited), std::time::Instant::now(), 0, 1, written_),
            // Changed meanwhile into what the manifest asks: nothing to write, and not kpr's.
            (
                Some(POLICY.to_string()),
                long_ago,
                1,
                0,
                Some(Made::AlreadySo),
            ),
        ] {
            let api = edited_meanwhile(now.clone());
            let mut change = written();
            change.action = crate::plan::Action::Update;
            change.live = Some(PolicyDocument::from_json_str(&planned).unwrap());
            change.read_at = read_at;
            let result = apply_one(&api, &change, &opts).await.expect("sent");
            let case = format!("{now:?}: {result:?}");
            assert_eq!(api.inner().reads.load(Ordering::SeqCst), reads, "{case}");
            assert_eq!(api.inner().puts.load(Ordering::SeqCst), puts, "{case}");
            assert_eq!(result.as_ref().ok().copied(), made, "{case}");
            if let Err(f) = result {
                assert!(
                    f.message
                        .starts_with("not written: its live policy changed in the 90s"),
                    "{case}"
                );
            }
        }
        // A delete whose policy someone removed meanwhile: done, and no delete is sent (this
        // fake has none to answer).
        let api = edited_meanwhile(None);
        let mut delete = written();
        delete.action = crate::plan::Action::Delete;
        (delete.desired, delete.put_json) = (None, None);
        delete.live = Some(PolicyDocument::from_json_str(&planned).unwrap());
        delete.read_at = long_ago;
        let result = apply_one(&api, &delete, &opts).await.expect("sent");
        assert_eq!(result.ok(), Some(Made::AlreadySo));
        assert_eq!(api.inner().reads.load(Ordering::SeqCst), 1);
    }

    /// A change its late re-read finds already made is reported as unchanged, not as kpr's:
    /// not counted as an update (a pipeline would read exit 2, "changes made"), and said so.
    #[tokio::test]
    async fn a_change_found_already_made_is_not_reported_as_applied() {
        let api = edited_meanwhile(Some(POLICY.to_string()));
        let mut change = written();
        change.action = crate::plan::Action::Update;
        change.live = Some(PolicyDocument::from_json_str(&POLICY.replace("1111", "4444")).unwrap());
        change.read_at = read_long_ago();
        let plan = Plan {
            changes: vec![change],
            ..Plan::default()
        };
        let opts = ApplyOptions {
            reread_after: Duration::from_secs(60),
            ..ApplyOptions::default()
        };
        let report = apply(&api, plan, &opts, &indicatif::ProgressBar::hidden()).await;
        assert_eq!(api.inner().puts.load(Ordering::SeqCst), 0);
        assert_eq!(report.results[0].outcome, Outcome::Unchanged);
        let summary = report.summary();
        assert_eq!((summary.update, summary.unchanged), (0, 1), "{summary:?}");
        let text = crate::render::apply_text(&report, &crate::render::Style { color: false });
        assert!(
            text.contains("already as the manifest asks: changed since kpr read it"),
            "{text}"
        );
        // A prune's delete found already made: it has no manifest to speak of.
        let api = edited_meanwhile(None);
        let mut delete = written();
        delete.action = crate::plan::Action::Delete;
        delete.delete_cause = Some(crate::plan::DeleteCause::Prune);
        (delete.desired, delete.put_json) = (None, None);
        delete.live = Some(PolicyDocument::from_json_str(POLICY).unwrap());
        delete.read_at = read_long_ago();
        let plan = Plan {
            changes: vec![delete],
            ..Plan::default()
        };
        let report = apply(&api, plan, &opts, &indicatif::ProgressBar::hidden()).await;
        assert_eq!(report.results[0].outcome, Outcome::Unchanged);
        let text = crate::render::apply_text(&report, &crate::render::Style { color: false });
        assert!(
            text.contains("already without a policy: changed since kpr read it, nothing deleted")
                && !text.contains("manifest"),
            "{text}"
        );
    }

    /// The text log of what runs while [`Log::capture`]'s guard lives.
    #[derive(Clone, Default)]
    struct Log(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Log {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Log {
        fn capture(&self) -> tracing::subscriber::DefaultGuard {
            let writer = self.clone();
            tracing::subscriber::set_default(
                tracing_subscriber::fmt()
                    .with_writer(move || writer.clone())
                    .with_ansi(false)
                    .with_max_level(tracing::Level::INFO)
                    .finish(),
            )
        }

        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// A reason quoting a live policy's own key (a policy kpr cannot parse) may hold a line
    /// break or a terminal escape: in the text log it is escaped, and forges no line.
    #[tokio::test]
    async fn a_reason_cannot_forge_a_log_line() {
        let log = Log::default();
        let _logging = log.capture();
        let api = edited_meanwhile(None);
        let mut change = written();
        change.reason = "live policy is not valid (Statement[0].Act\nFAKE \u{1b}[31mion)".into();
        let opts = ApplyOptions {
            verify: false,
            ..ApplyOptions::default()
        };
        apply_one(&api, &change, &opts)
            .await
            .expect("sent")
            .unwrap();
        let text = log.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            !text.contains('\u{1b}') && text.contains("Act\\nFAKE"),
            "{text}"
        );
    }

    /// Counts puts; the first one stops the apply as it ends.
    struct StopsAtFirstPut {
        puts: AtomicU32,
        interrupt: Interrupt,
    }

    impl Kinesis for StopsAtFirstPut {
        async fn get_policy(&self, _: &ResourceArn) -> Result<Option<String>, ApiError> {
            Ok(Some(POLICY.to_string()))
        }
        async fn put_policy(&self, _: &ResourceArn, _: &str) -> Result<(), ApiError> {
            self.puts.fetch_add(1, Ordering::SeqCst);
            // The others start meanwhile, and wait their turn.
            tokio::task::yield_now().await;
            self.interrupt.set("a forced push");
            Ok(())
        }
        crate::kinesis::calls_a_test_does_not_make!();
    }

    #[tokio::test]
    async fn a_stop_withholds_the_writes_still_waiting_for_the_rate_limit() {
        let interrupt = Interrupt::default();
        let inner = StopsAtFirstPut {
            puts: AtomicU32::new(0),
            interrupt: interrupt.clone(),
        };
        // One request a second: the first write goes at once, the other two wait their turn
        // with their tasks already started.
        let api = Resilient::new(inner, RetryPolicy::default(), 1);
        let changes = ["a", "b", "c"].map(|name| {
            let target = ResourceArn::parse(&format!(
                "arn:aws:kinesis:us-east-1:111122223333:stream/{name}"
            ))
            .unwrap();
            Change {
                target,
                ..written()
            }
        });
        let plan = Plan {
            changes: changes.to_vec(),
            ..Plan::default()
        };
        let opts = ApplyOptions {
            concurrency: 3,
            verify: false,
            interrupt,
            ..ApplyOptions::default()
        };
        // The log, to see that every `change starting` is closed.
        let log = Log::default();
        let _logging = log.capture();
        let report = apply(&api, plan, &opts, &indicatif::ProgressBar::hidden()).await;
        let log = log.text();
        assert_eq!(
            (
                log.matches("change starting").count(),
                log.matches("change applied").count(),
                log.matches("change withheld").count()
            ),
            (3, 1, 2),
            "{log}"
        );
        assert_eq!(api.inner().puts.load(Ordering::SeqCst), 1);
        let outcomes: Vec<_> = report.results.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes.iter().filter(|o| **o == Outcome::Applied).count(),
            1,
            "{outcomes:?}"
        );
        assert_eq!(report.interrupted.map(|i| i.not_started), Some(2));
        assert!(opts.settled.describe().contains("0 under way"));
    }
}
