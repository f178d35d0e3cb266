//! Executes a plan: bounded concurrency, each write followed by a read-back that proves the live
//! policy is now equivalent to the manifest. One resource failing never stops the others.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;

use crate::kinesis::{ApiError, Kinesis, Resilient, concurrently};
use crate::plan::{Action, Change, Failure, Plan, Summary};

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub concurrency: usize,
    /// Read back after each write and compare (`--no-verify` turns it off).
    pub verify: bool,
    /// How long to wait for a read-back to reflect the write (eventual consistency).
    pub verify_timeout: Duration,
    /// Once set, no further change starts; see [`Interrupt`].
    pub interrupt: Interrupt,
}

/// A request to stop an apply part-way (a signal). Changes already started finish, write and
/// read-back, so that each is reported as it really ended; the rest are reported as not
/// started, so the next run does them. Stopping a write half-way would leave its outcome
/// unknown.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<OnceLock<&'static str>>);

impl Interrupt {
    /// The first reason given is kept.
    pub fn set(&self, reason: &'static str) {
        let _ = self.0.set(reason);
    }

    pub fn reason(&self) -> Option<&'static str> {
        self.0.get().copied()
    }
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            verify: true,
            verify_timeout: Duration::from_secs(10),
            interrupt: Interrupt::default(),
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
}

impl Report {
    pub fn failures(&self) -> impl Iterator<Item = &Failure> {
        self.plan_failures
            .iter()
            .chain(self.results.iter().filter_map(|r| r.error.as_ref()))
    }

    /// Whether the live state may still differ from the manifests: something failed, or an
    /// interrupt left changes unmade.
    pub fn incomplete(&self) -> bool {
        self.failures().next().is_some()
            || self.interrupted.as_ref().is_some_and(|i| i.not_started > 0)
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
            let result = apply_one(api, &change, opts).await;
            if shown {
                progress.inc(1);
            }
            let outcome = if result.is_ok() {
                Outcome::Applied
            } else {
                Outcome::Failed
            };
            metrics::counter!("kpr_changes_total", "action" => change.action.as_str(), "outcome" => if result.is_ok() { "applied" } else { "failed" })
                .increment(1);
            // Why, and from which manifest line: the service's log is its record of what it did.
            let source = change.source_label();
            match &result {
                Ok(()) => tracing::info!(arn = %change.arn, action = change.action.as_str(), reason = %change.reason, source, outcome = "applied", "change applied"),
                Err(f) => tracing::warn!(arn = %change.arn, action = change.action.as_str(), reason = %change.reason, source, outcome = "failed", error = %f.message, "change failed"),
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
    let interrupted = opts.interrupt.reason().map(|by| Interrupted {
        by,
        not_started: results
            .iter()
            .filter(|r| r.outcome == Outcome::NotStarted)
            .count(),
    });
    Report {
        results,
        plan_failures: plan.failures,
        interrupted,
    }
}

async fn apply_one<K: Kinesis>(
    api: &Resilient<K>,
    change: &Change,
    opts: &ApplyOptions,
) -> Result<(), Failure> {
    let fail = |e: &ApiError| Failure::from_api(change.arn.clone(), change.source.clone(), e);
    match change.action {
        Action::NoOp => return Ok(()),
        Action::Create | Action::Update => {
            let json = change
                .put_json
                .as_deref()
                .expect("create/update always carries the policy to put");
            api.put_policy(&change.target, json)
                .await
                .map_err(|e| fail(&e))?;
        }
        Action::Delete => match api.delete_policy(&change.target).await {
            // Already gone (AWS and moto answer NotFound when there is no policy): the goal
            // state holds, as Terraform treats it.
            Err(e) if e.class == crate::kinesis::ErrorClass::NotFound => {}
            other => other.map_err(|e| fail(&e))?,
        },
    }
    if opts.verify {
        verify(api, change, opts.verify_timeout).await?;
    }
    Ok(())
}

/// Read the policy back until it matches, tolerating a short window of eventual consistency.
async fn verify<K: Kinesis>(
    api: &Resilient<K>,
    change: &Change,
    timeout: Duration,
) -> Result<(), Failure> {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        let live = api.get_policy(&change.target).await.map_err(|e| {
            let mut f = Failure::from_api(change.arn.clone(), change.source.clone(), &e);
            f.message = format!("written, but the read-back failed: {}", f.message);
            f
        })?;
        let ok = match (&change.desired, live.as_deref()) {
            (None, None) => true,
            // The text just written, back unchanged: no parse needed.
            (Some(_), Some(raw)) if change.put_json.as_deref() == Some(raw) => true,
            (Some(want), Some(raw)) => crate::policy::PolicyDocument::from_json_str(raw)
                .is_ok_and(|got| got.equivalent(want)),
            _ => false,
        };
        if ok {
            return Ok(());
        }
        if started.elapsed() + delay > timeout {
            return Err(crate::plan::local_failure(
                change.arn.clone(),
                change.source.clone(),
                Some(crate::kinesis::Op::GetResourcePolicy),
                format!(
                    "verification failed: {}s after the write the live policy is still not equivalent to the manifest (something else is writing it, or the service rewrote it: compare with `kpr policy diff`)",
                    timeout.as_secs()
                ),
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
