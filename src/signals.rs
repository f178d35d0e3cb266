//! The stop signals a one-shot `apply` and the service both answer: SIGTERM (what
//! orchestrators and CI runners send on cancel) and SIGINT (Ctrl-C).

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
