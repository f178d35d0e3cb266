//! What starts a reconcile: the schedule, webhooks and startup, funnelled through one
//! coalescing queue that a single worker drains.
//!
//! The queue holds at most one pending trigger. While a run is in flight any number of new
//! triggers merge into that one slot, so a burst of pushes costs at most one extra run, and a
//! run can never start while another is going.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    Schedule,
    Webhook,
    /// A failed run tried again, scanning what it would have (`full`), or failed resources
    /// whose wait is over (not `full`).
    Retry {
        full: bool,
    },
}

impl Trigger {
    /// One of each label.
    pub const ALL: [Trigger; 4] = [
        Trigger::Startup,
        Trigger::Schedule,
        Trigger::Webhook,
        Trigger::Retry { full: false },
    ];

    pub fn label(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Schedule => "schedule",
            Trigger::Webhook => "webhook",
            Trigger::Retry { .. } => "retry",
        }
    }

    /// Scheduled and startup runs scan everything (that is how drift gets found); a webhook
    /// only needs what its push changed.
    pub fn full_scan(self) -> bool {
        match self {
            Trigger::Startup | Trigger::Schedule => true,
            Trigger::Webhook => false,
            Trigger::Retry { full } => full,
        }
    }

    /// Merging never loses work: a pending full scan absorbs an incremental trigger, and an
    /// incremental one is upgraded by a full one.
    pub(super) fn merge(pending: Option<Trigger>, new: Trigger) -> Trigger {
        match pending {
            None => new,
            Some(p) if p.full_scan() || !new.full_scan() => p,
            Some(_) => new,
        }
    }
}

#[derive(Default)]
struct QueueState {
    pending: Option<Trigger>,
    closed: bool,
    /// A run is under way. Kept with `pending`, under one lock, so that taking a trigger and
    /// starting its run are one step to an observer: "nothing pending, nothing running" is
    /// never seen in between.
    running: bool,
}

/// A one-slot mailbox for a single consumer.
#[derive(Default)]
pub struct Queue {
    state: Mutex<QueueState>,
    notify: Notify,
}

impl Queue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns false once the queue is closed (shutting down): the trigger was dropped.
    pub fn push(&self, trigger: Trigger) -> bool {
        {
            let mut s = self.state.lock().expect("queue lock");
            if s.closed {
                return false;
            }
            s.pending = Some(Trigger::merge(s.pending, trigger));
        }
        // notify_one keeps a permit when the worker is busy, so the wake-up is never lost.
        self.notify.notify_one();
        true
    }

    /// The next trigger; `None` once closed, even if one was pending, since shutdown means
    /// "finish what runs, start nothing new".
    pub async fn next(&self) -> Option<Trigger> {
        loop {
            {
                let mut s = self.state.lock().expect("queue lock");
                if s.closed {
                    return None;
                }
                if let Some(t) = s.pending.take() {
                    s.running = true;
                    return Some(t);
                }
            }
            self.notify.notified().await;
        }
    }

    pub fn close(&self) {
        self.state.lock().expect("queue lock").closed = true;
        self.notify.notify_one();
    }

    /// A run starts that did not come through the queue (a retry).
    pub fn begin(&self) {
        self.state.lock().expect("queue lock").running = true;
    }

    /// The run [`Queue::next`] or [`Queue::begin`] started is over.
    pub fn finish(&self) {
        self.state.lock().expect("queue lock").running = false;
    }

    /// What is pending and whether a run is under way, read together.
    pub fn snapshot(&self) -> (Option<Trigger>, bool) {
        let s = self.state.lock().expect("queue lock");
        (s.pending, s.running)
    }
}

/// When the periodic full scans happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// A 6- or 7-field expression (seconds first), evaluated in UTC.
    Cron(String),
    Every(Duration),
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Cron(c) => write!(f, "cron {c:?}"),
            Schedule::Every(d) => write!(f, "every {}", humantime::format_duration(*d)),
        }
    }
}

/// Seconds since the epoch of the first occurrence strictly after now, from the same parser
/// tokio-cron-scheduler's jobs use (so what parses here is what a scheduler would accept).
fn next_cron_tick(expr: &str) -> Result<Option<u64>, String> {
    let mut job = tokio_cron_scheduler::Job::new(expr, |_, _| {})
        .map_err(|e| format!("cron expression {expr:?} does not parse: {e}"))?;
    let data = job
        .job_data()
        .map_err(|e| format!("cron expression {expr:?}: {e}"))?;
    Ok((data.next_tick != 0).then_some(data.next_tick))
}

impl Schedule {
    /// Classic 5-field cron gets a leading `0` seconds field; 6 and 7 fields pass as they are
    /// (tokio-cron-scheduler only accepts those).
    pub fn parse_cron(text: &str) -> Result<Self, String> {
        let fields = text.split_whitespace().count();
        let expr = match fields {
            5 => format!(
                "0 {}",
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            ),
            6 | 7 => text.split_whitespace().collect::<Vec<_>>().join(" "),
            n => {
                return Err(format!(
                    "cron expression {text:?} has {n} fields; expected 5 (min hour dom month \
                     dow), 6 (sec min hour dom month dow) or 7 (... year)"
                ));
            }
        };
        match next_cron_tick(&expr)? {
            Some(_) => Ok(Schedule::Cron(expr)),
            None => Err(format!("cron expression {text:?} never fires again")),
        }
    }

    pub fn interval(d: Duration) -> Result<Self, String> {
        if d < Duration::from_millis(100) {
            return Err(format!(
                "interval {} is too short (at least 100ms)",
                humantime::format_duration(d)
            ));
        }
        Ok(Schedule::Every(d))
    }

    /// What to wait for next. `last` is the cron tick that fired before: a timer that woke a
    /// hair early, by the wall clock, must neither fire that tick again nor invent one.
    fn next(&self, last: Option<u64>) -> Option<Next> {
        match self {
            Schedule::Every(d) => Some(Next::Fire(*d, None)),
            Schedule::Cron(expr) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
                let tick = next_cron_tick(expr).ok()??;
                if let Some(last) = last.filter(|&l| tick <= l) {
                    // The clock has not passed the tick just fired: look again once it has.
                    let past = Duration::from_secs(last + 1).saturating_sub(now);
                    return Some(Next::Recheck(past.max(Duration::from_millis(10))));
                }
                let at = Duration::from_secs(tick);
                Some(Next::Fire(at.saturating_sub(now), Some(tick)))
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Sleep, then run; for cron, the tick this run is for.
    Fire(Duration, Option<u64>),
    /// Sleep, then ask again without running.
    Recheck(Duration),
}

/// Pushes a full-scan trigger at every scheduled time (after a random jitter) until the queue
/// closes.
pub async fn run_schedule(
    schedule: Schedule,
    jitter: Duration,
    shared: std::sync::Arc<super::http::Shared>,
) {
    let mut last = None;
    loop {
        let (delay, tick) = match schedule.next(last) {
            Some(Next::Fire(delay, tick)) => (delay, tick),
            Some(Next::Recheck(delay)) => {
                tokio::time::sleep(delay).await;
                continue;
            }
            None => {
                tracing::warn!(%schedule, "the schedule has no further occurrence; only webhooks trigger runs now");
                return;
            }
        };
        tokio::time::sleep(delay).await;
        last = tick;
        if !jitter.is_zero() {
            // Spreads many controllers sharing one schedule (and one account's rate limit).
            tokio::time::sleep(jitter.mul_f64(fastrand::f64())).await;
        }
        if !shared.queue.push(Trigger::Schedule) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn cron_accepts_5_6_and_7_fields() {
        assert_eq!(
            Schedule::parse_cron("*/5 * * * *").unwrap(),
            Schedule::Cron("0 */5 * * * *".into())
        );
        assert_eq!(
            Schedule::parse_cron("30 0 3 * * Mon").unwrap(),
            Schedule::Cron("30 0 3 * * Mon".into())
        );
        assert_eq!(
            Schedule::parse_cron("0 0 3 * * * 2099").unwrap(),
            Schedule::Cron("0 0 3 * * * 2099".into())
        );
        assert_eq!(
            Schedule::parse_cron("  0  4 * * *  ").unwrap(),
            Schedule::Cron("0 0 4 * * *".into())
        );
        for bad in [
            "",
            "* * *",
            "61 * * * *",
            "* * * * * * * *",
            "not a cron at all x",
        ] {
            assert!(Schedule::parse_cron(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            Schedule::parse_cron("0 0 0 1 1 * 2001")
                .unwrap_err()
                .contains("never")
        );
    }

    #[test]
    fn interval_and_next_delay() {
        assert!(Schedule::interval(Duration::ZERO).is_err());
        let every = Schedule::interval(Duration::from_secs(300)).unwrap();
        assert_eq!(every.to_string(), "every 5m");
        assert_eq!(
            every.next(None),
            Some(Next::Fire(Duration::from_secs(300), None))
        );
        let hourly = Schedule::parse_cron("0 * * * *").unwrap();
        let fires = || match hourly.next(None) {
            Some(Next::Fire(d, Some(tick))) => (d, tick),
            other => panic!("an hourly cron fires: {other:?}"),
        };
        // `next` reads the wall clock: should the hour turn between two looks, look again.
        let (d, tick, again) = std::iter::repeat_with(|| {
            let (d, tick) = fires();
            // Asked again with that tick as the last one fired, as after a timer that woke
            // before the wall clock reached it: no run, neither that tick again nor one a
            // second later (not an hourly time), but a look once the clock is past it.
            let again = hourly.next(Some(tick));
            (d, tick, again)
        })
        .take(3)
        .find(|&(_, tick, _)| fires().1 == tick)
        .expect("the hour turned three times in a row");
        assert!(d <= Duration::from_secs(3600), "{d:?}");
        let Some(Next::Recheck(wait)) = again else {
            panic!("fired again before the clock passed the last tick: {again:?}")
        };
        assert!(
            wait >= d && wait <= d + Duration::from_secs(1),
            "{wait:?} vs {d:?}"
        );
        // Once past it, the next hourly time.
        let Some(Next::Fire(_, Some(next))) = hourly.next(Some(tick - 3600)) else {
            panic!("an hourly cron fires")
        };
        assert_eq!(next, tick);
    }

    #[test]
    fn merging_keeps_the_widest_scan() {
        use Trigger::*;
        assert_eq!(Trigger::merge(None, Webhook), Webhook);
        assert_eq!(Trigger::merge(Some(Webhook), Webhook), Webhook);
        assert_eq!(Trigger::merge(Some(Webhook), Schedule), Schedule);
        assert_eq!(Trigger::merge(Some(Schedule), Webhook), Schedule);
        assert_eq!(Trigger::merge(Some(Startup), Schedule), Startup);
    }

    #[tokio::test]
    async fn triggers_during_a_run_coalesce_into_one_more_run() {
        let q = Arc::new(Queue::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let worker = {
            let (q, runs, gate) = (q.clone(), runs.clone(), gate.clone());
            tokio::spawn(async move {
                while let Some(t) = q.next().await {
                    runs.fetch_add(1, Ordering::SeqCst);
                    started_tx.send(t).unwrap();
                    gate.acquire().await.unwrap().forget();
                    q.finish();
                }
            })
        };
        assert_eq!(q.snapshot(), (None, false));
        assert!(q.push(Trigger::Webhook));
        assert_eq!(started.recv().await, Some(Trigger::Webhook));
        // Taken and running in one step: never "nothing pending, nothing running" between.
        assert_eq!(q.snapshot(), (None, true));
        // The first run is now "in flight": a burst arrives, one of them a scheduled scan.
        for i in 0..100 {
            q.push(if i == 50 {
                Trigger::Schedule
            } else {
                Trigger::Webhook
            });
        }
        assert_eq!(q.snapshot().0, Some(Trigger::Schedule));
        gate.add_permits(1);
        assert_eq!(started.recv().await, Some(Trigger::Schedule));
        assert_eq!(q.snapshot().0, None);
        gate.add_permits(1);
        q.close();
        worker.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(!q.push(Trigger::Webhook), "a closed queue takes nothing");
    }

    #[tokio::test]
    async fn close_wakes_an_idle_worker_and_drops_the_pending_trigger() {
        let q = Arc::new(Queue::new());
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.next().await })
        };
        tokio::task::yield_now().await;
        q.close();
        assert_eq!(waiter.await.unwrap(), None);
        let q = Queue::new();
        q.push(Trigger::Webhook);
        q.close();
        assert_eq!(q.next().await, None);
    }
}
