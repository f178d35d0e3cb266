//! The stop signals a one-shot `apply` and the service both answer: SIGTERM (what
//! orchestrators and CI runners send on cancel) and SIGINT (Ctrl-C).

/// Stop signals from the moment this is created: one created early misses none of them, even
/// while the process is busy elsewhere.
pub struct StopSignals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    /// Needs a running Tokio runtime.
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => None,
            };
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
            return tokio::select! {
                _ = term.recv() => ("SIGTERM", 128 + 15),
                _ = int.recv() => ("SIGINT", 128 + 2),
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
