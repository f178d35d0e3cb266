//! The stop signals a one-shot `apply` and the service both answer: SIGTERM (what
//! orchestrators and CI runners send on cancel) and SIGINT (Ctrl-C); and the [`Interrupt`]
//! they, or a push that replaces the revision under way, make of an apply.

use std::sync::{Arc, OnceLock};

/// Stop signals from the moment this is created: one created early misses none of them, even
/// while the process is busy elsewhere.
pub struct StopSignals {
    /// SIGTERM, and SIGINT unless the process started with it ignored.
    #[cfg(unix)]
    streams: Option<(
        tokio::signal::unix::Signal,
        Option<tokio::signal::unix::Signal>,
    )>,
}

/// Whether the process started with signal `number` ignored, as a shell starts a background
/// job with SIGINT: a Ctrl-C meant for the foreground must not stop it. Linux says so in
/// /proc/self/status, until a handler is installed.
#[cfg(unix)]
fn ignored_at_start(number: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & (1 << (number - 1)) != 0)
}

impl StopSignals {
    /// Needs a running Tokio runtime.
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            // Before any handler: installing one clears the inherited "ignored".
            let interrupt = if ignored_at_start(2) {
                None
            } else {
                signal(SignalKind::interrupt()).ok()
            };
            let streams = signal(SignalKind::terminate())
                .ok()
                .map(|term| (term, interrupt));
            Self { streams }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next stop signal: its name and the exit status a shell gives a process it killed
    /// (128 + the signal's number).
    pub async fn next(&mut self) -> (&'static str, u8) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.streams {
            let interrupted = async {
                match int {
                    Some(int) => int.recv().await,
                    None => std::future::pending().await,
                }
            };
            return tokio::select! {
                _ = term.recv() => ("SIGTERM", 128 + 15),
                _ = interrupted => ("SIGINT", 128 + 2),
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        ("SIGINT", 128 + 2)
    }
}

impl Default for StopSignals {
    fn default() -> Self {
        Self::new()
    }
}

/// A request to stop an apply part-way (a signal, or a push that replaced the revision being
/// applied). Changes already started finish, write and read-back, so that each is reported as
/// it really ended; the rest are reported as not started, so the next run does them. Stopping
/// a write half-way would leave its outcome unknown; a write still waiting its turn at the
/// rate limit has not started, and is withheld (see [`Interrupt::stopped`]).
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<InterruptState>);

#[derive(Debug, Default)]
struct InterruptState {
    reason: OnceLock<&'static str>,
    /// Wakes [`Interrupt::stopped`] of this one and of its children.
    set: tokio::sync::Notify,
    /// Set, it stops this one too (see [`Interrupt::child`]).
    parent: Option<Interrupt>,
}

impl Interrupt {
    /// The first reason given is kept.
    pub fn set(&self, reason: &'static str) {
        let _ = self.0.reason.set(reason);
        self.0.set.notify_waiters();
    }

    /// Its own reason, else its parent's.
    pub fn reason(&self) -> Option<&'static str> {
        self.0
            .reason
            .get()
            .copied()
            .or_else(|| self.0.parent.as_ref()?.reason())
    }

    /// Returns once this one or a parent is set.
    pub async fn stopped(&self) {
        loop {
            let mut woken: Vec<_> = std::iter::successors(Some(self), |i| i.0.parent.as_ref())
                .map(|i| Box::pin(i.0.set.notified()))
                .collect();
            // Registered before the check, so a `set` between the two is not missed.
            for w in &mut woken {
                w.as_mut().enable();
            }
            if self.reason().is_some() {
                return;
            }
            futures::future::select_all(woken).await;
        }
    }

    /// One of its own that this one stops as well: a run's, under the process's shutdown.
    pub fn child(&self) -> Interrupt {
        Interrupt(Arc::new(InterruptState {
            reason: OnceLock::new(),
            set: tokio::sync::Notify::new(),
            parent: Some(self.clone()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_stops_on_its_own_interrupt_or_the_process_one_and_the_process_on_its_own() {
        let process = Interrupt::default();
        let run = process.child();
        let next = process.child();
        run.set("replaced");
        assert_eq!(
            (run.reason(), process.reason(), next.reason()),
            (Some("replaced"), None, None)
        );
        process.set("SIGTERM");
        assert_eq!(
            (run.reason(), next.reason()),
            (Some("replaced"), Some("SIGTERM"))
        );
    }

    #[tokio::test]
    async fn stopped_wakes_when_it_or_a_parent_is_set() {
        let process = Interrupt::default();
        let run = process.child();
        let waiting = tokio::spawn({
            let run = run.clone();
            async move { run.stopped().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        process.set("SIGTERM");
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("a parent's stop wakes the child")
            .unwrap();
        // Already set: at once.
        run.stopped().await;
        let own = Interrupt::default().child();
        own.set("replaced");
        own.stopped().await;
    }
}
