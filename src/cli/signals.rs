//! SIGINT and SIGTERM, the two ways a scheduler or a person stops a run: `replicate` and the
//! commands holding a VM's lease stop their work on the first, and exit at once on the
//! second.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Listens for SIGINT and SIGTERM from its creation on, so a signal between two waits is not
/// missed.
pub(super) struct Interrupts {
    terminate: Option<Signal>,
    interrupt: Option<Signal>,
}

impl Interrupts {
    /// Must be called within the runtime. A signal that cannot be listened for (no signal
    /// driver) is left to its default action: it ends the process.
    pub(super) fn listen() -> Interrupts {
        Interrupts {
            terminate: signal(SignalKind::terminate()).ok(),
            interrupt: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Waits for the next SIGINT or SIGTERM.
    pub(super) async fn next(&mut self) {
        async fn one(signal: &mut Option<Signal>) {
            match signal {
                Some(signal) => drop(signal.recv().await),
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = one(&mut self.interrupt) => {}
            () = one(&mut self.terminate) => {}
        }
    }
}
