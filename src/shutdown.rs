//! Stopping a run on request. The first SIGINT/SIGTERM asks the run to drain: admit nothing
//! more, let calls in flight finish within the grace period, write what came back. A second
//! asks it to stop now. The run sees only this handle, so tests and embedders can drive it
//! without signals.

use tokio::sync::watch;

/// How far a stop has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    /// Admit nothing more; in-flight calls may finish.
    Draining,
    /// Abandon in-flight calls; flush and exit.
    Now,
}

/// A cloneable stop switch.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: watch::Sender<Phase>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            tx: watch::channel(Phase::Running).0,
        }
    }
}

impl Shutdown {
    pub fn phase(&self) -> Phase {
        *self.tx.borrow()
    }

    /// Moves to the next phase (Running -> Draining -> Now).
    pub fn escalate(&self) -> Phase {
        let mut next = Phase::Running;
        self.tx.send_modify(|p| {
            *p = match *p {
                Phase::Running => Phase::Draining,
                _ => Phase::Now,
            };
            next = *p;
        });
        next
    }

    /// Resolves once the phase is at least `phase`.
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|p| *p >= phase).await;
    }

    /// Escalates on SIGINT, SIGTERM and SIGHUP (a closed terminal or a dropped SSH session
    /// drains like a Ctrl-C; twice stops at once).
    pub fn listen_for_signals(&self) {
        let this = self.clone();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            // Registered now, not in the task: a signal that arrives before the task first
            // runs must drain the run too, not kill it.
            let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                return;
            };
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                        _ = hup.recv() => {}
                    }
                    if this.escalate() == Phase::Now {
                        break;
                    }
                }
            });
        }
        #[cfg(not(unix))]
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                if this.escalate() == Phase::Now {
                    break;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn escalates_in_order() {
        let s = Shutdown::default();
        assert_eq!(s.phase(), Phase::Running);
        assert_eq!(s.escalate(), Phase::Draining);
        s.reached(Phase::Draining).await;
        assert_eq!(s.escalate(), Phase::Now);
        assert_eq!(s.escalate(), Phase::Now);
        s.reached(Phase::Now).await;
    }
}
