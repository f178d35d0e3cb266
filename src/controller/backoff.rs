//! Per-resource backoff: a resource that keeps failing is left out of runs for exponentially
//! longer, so one broken stream neither spins the loop nor eats the rate limit the others need.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::arn::ResourceArn;

pub const BASE_DELAY: Duration = Duration::from_secs(30);
pub const MAX_DELAY: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone)]
pub struct Entry {
    pub failures: u32,
    pub not_before: Instant,
    pub last_error: String,
    /// The manifest (`file:line`) that declared it when it last failed, when one did.
    pub source: Option<String>,
    /// Whether the last run's manifests declare it: only then does an incremental run, which
    /// reconciles what the manifests declare, retry it.
    pub declared: bool,
}

#[derive(Debug)]
pub struct Backoff {
    entries: HashMap<ResourceArn, Entry>,
    base: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BASE_DELAY, MAX_DELAY)
    }
}

fn doubling(base: Duration, max: Duration, failures: u32) -> Duration {
    base.saturating_mul(1u32.checked_shl(failures.max(1) - 1).unwrap_or(u32::MAX))
        .min(max)
}

/// The longest wait when the first is `base`: [`MAX_DELAY`], or `base` if that is longer.
pub fn cap(base: Duration) -> Duration {
    base.max(MAX_DELAY)
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            base,
            max,
        }
    }

    /// Waits from `base`, doubling, up to [`cap`]`(base)`.
    pub fn starting_at(base: Duration) -> Self {
        Self::new(base, cap(base))
    }

    /// The wait after the `failures`-th failure in a row: the first delay, doubling, up to
    /// the cap. The same schedule serves a resource and a run that failed as a whole.
    pub fn delay(&self, failures: u32) -> Duration {
        doubling(self.base, self.max, failures)
    }

    /// `id` must be an identity ([`ResourceArn::identity`]): a consumer keeps its backoff
    /// across re-registrations.
    pub fn failed(&mut self, id: ResourceArn, now: Instant, error: String, source: Option<String>) {
        let e = self.entries.entry(id).or_insert(Entry {
            failures: 0,
            not_before: now,
            last_error: String::new(),
            source: None,
            declared: true,
        });
        e.failures = e.failures.saturating_add(1);
        e.not_before = now + doubling(self.base, self.max, e.failures);
        e.last_error = error;
        e.source = source;
    }

    pub fn succeeded(&mut self, id: &ResourceArn) {
        self.forget(id);
    }

    /// Drops a resource that is no longer managed.
    pub fn forget(&mut self, id: &ResourceArn) {
        self.entries.remove(id);
    }

    /// Resources a run must leave out now.
    pub fn skipped(&self, now: Instant) -> HashSet<ResourceArn> {
        self.entries
            .iter()
            .filter(|(_, e)| e.not_before > now)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Failed resources whose wait is over: an incremental run retries them too.
    pub fn due(&self, now: Instant) -> impl Iterator<Item = &ResourceArn> {
        self.entries
            .iter()
            .filter(move |(_, e)| e.not_before <= now)
            .map(|(id, _)| id)
    }

    /// When the first resource's wait ends: a run then retries it, whatever the schedule.
    pub fn next_due(&self) -> Option<Instant> {
        self.entries.values().map(|e| e.not_before).min()
    }

    /// Whether some resource whose wait is over is one the manifests no longer declare.
    pub fn undeclared_due(&self, now: Instant) -> bool {
        self.entries
            .values()
            .any(|e| e.not_before <= now && !e.declared)
    }

    pub fn mark_declared(&mut self, mut declared: impl FnMut(&ResourceArn) -> bool) {
        for (id, e) in &mut self.entries {
            e.declared = declared(id);
        }
    }

    pub fn get(&self, id: &ResourceArn) -> Option<&Entry> {
        self.entries.get(id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Forget resources that left the desired state (and are no prune candidates any more).
    pub fn retain(&mut self, mut keep: impl FnMut(&ResourceArn) -> bool) {
        self.entries.retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arn(name: &str) -> ResourceArn {
        ResourceArn::parse(&format!(
            "arn:aws:kinesis:us-east-1:111122223333:stream/{name}"
        ))
        .unwrap()
    }

    #[test]
    fn delays_double_up_to_the_cap_and_reset_on_success() {
        let mut b = Backoff::new(Duration::from_secs(30), Duration::from_secs(300));
        let t0 = Instant::now();
        let a = arn("a");
        let mut delays = Vec::new();
        for _ in 0..7 {
            b.failed(a.clone(), t0, "boom".into(), None);
            delays.push(b.get(&a).unwrap().not_before - t0);
        }
        let secs: Vec<u64> = delays.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [30, 60, 120, 240, 300, 300, 300]);
        assert_eq!(b.get(&a).unwrap().failures, 7);
        b.succeeded(&a);
        assert!(b.get(&a).is_none());
        b.failed(a.clone(), t0, "again".into(), None);
        assert_eq!(b.get(&a).unwrap().not_before - t0, Duration::from_secs(30));
    }

    #[test]
    fn skipped_until_not_before_then_due() {
        let mut b = Backoff::new(Duration::from_secs(30), Duration::from_secs(1800));
        let t0 = Instant::now();
        b.failed(arn("broken"), t0, "AccessDenied".into(), None);
        assert!(b.skipped(t0).contains(&arn("broken")));
        assert!(!b.skipped(t0).contains(&arn("fine")));
        assert_eq!(b.due(t0).count(), 0);
        let later = t0 + Duration::from_secs(31);
        assert!(b.skipped(later).is_empty());
        assert_eq!(b.due(later).collect::<Vec<_>>(), [&arn("broken")]);
        b.retain(|id| id != &arn("broken"));
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn a_due_resource_no_manifest_declares_is_told_apart() {
        let mut b = Backoff::new(Duration::from_secs(30), Duration::from_secs(1800));
        let t0 = Instant::now();
        b.failed(arn("kept"), t0, "x".into(), None);
        b.failed(arn("gone"), t0, "x".into(), None);
        let later = t0 + Duration::from_secs(31);
        assert!(!b.undeclared_due(later), "declared until told otherwise");
        b.mark_declared(|id| id == &arn("kept"));
        assert!(!b.undeclared_due(t0), "not due yet");
        assert!(b.undeclared_due(later));
        b.retain(|id| id == &arn("kept"));
        assert!(!b.undeclared_due(later));
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        for _ in 0..100 {
            b.failed(arn("x"), t0, String::new(), None);
        }
        assert_eq!(b.get(&arn("x")).unwrap().not_before - t0, MAX_DELAY);
    }
}
