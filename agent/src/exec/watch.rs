//! The deadline of the requests an agent has handed to its executor thread, as a pure state
//! machine (times are `Duration`s since the worker started).
//!
//! Nothing waits silently: a request that overruns its deadline fails with the group the
//! executor is stuck in, and so does every request queued behind it, at once; while the
//! executor stays stuck, a new request fails as soon as its inputs are in. When the stuck run
//! finally returns, its late result (and those of the runs failed behind it) are dropped.

use std::collections::BTreeMap;
use std::time::Duration;

/// A request: (epoch, request id).
pub type RunKey = (u64, u64);

/// Runs in flight on the executor and whether it is stuck.
#[derive(Debug, Default)]
pub struct RunWatch {
    /// Deadline of each run handed over and not yet back.
    inflight: BTreeMap<RunKey, Duration>,
    /// Runs failed for their deadline whose results are still to come back (and be dropped).
    abandoned: BTreeMap<RunKey, ()>,
    /// Where the executor got stuck, while it is.
    stuck: Option<String>,
}

impl RunWatch {
    /// A run handed to the executor, due by `deadline`; `Err(reason)` when the executor is
    /// stuck (the run fails at once; it is not handed over).
    pub fn start(&mut self, key: RunKey, deadline: Duration) -> Result<(), String> {
        if let Some(at) = &self.stuck {
            return Err(format!(
                "the executor is still stuck in {at}, after a request overran its deadline"
            ));
        }
        self.inflight.insert(key, deadline);
        Ok(())
    }

    /// A run came back; `true` when its result is to be sent (it was not failed already).
    pub fn finish(&mut self, key: RunKey) -> bool {
        if self.abandoned.remove(&key).is_some() {
            // The run that overran is back: the executor moves again.
            if self.abandoned.is_empty() {
                self.stuck = None;
            }
            return false;
        }
        self.inflight.remove(&key).is_some()
    }

    /// The runs to fail at `now`: once one is past its deadline, every run in flight (the
    /// others wait behind it), each with the reason; `running` says which group the executor
    /// is in.
    pub fn overdue(&mut self, now: Duration, running: &str) -> Vec<(RunKey, String)> {
        let Some((&late, &due)) = self.inflight.iter().find(|(_, &d)| d <= now) else {
            return Vec::new();
        };
        let at = if running.is_empty() {
            "the share".to_string()
        } else {
            format!("group `{running}`")
        };
        let over = now.saturating_sub(due);
        let mut out = Vec::with_capacity(self.inflight.len());
        for (key, _) in std::mem::take(&mut self.inflight) {
            let reason = if key == late {
                format!(
                    "{at} overran the request's deadline (by {} ms)",
                    over.as_millis()
                )
            } else {
                format!("queued behind request {} stuck in {at}", late.1)
            };
            self.abandoned.insert(key, ());
            out.push((key, reason));
        }
        self.stuck = Some(at);
        out
    }

    /// Runs in flight.
    pub fn len(&self) -> usize {
        self.inflight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_run_that_returns_in_time_is_answered() {
        let mut w = RunWatch::default();
        w.start((1, 1), 5 * S).unwrap();
        assert!(w.overdue(4 * S, "conv1").is_empty());
        assert!(w.finish((1, 1)));
        assert!(w.is_empty());
    }

    #[test]
    fn an_overrun_fails_it_and_everything_behind_it_naming_the_group() {
        let mut w = RunWatch::default();
        w.start((1, 1), 5 * S).unwrap();
        w.start((1, 2), 6 * S).unwrap();
        let failed = w.overdue(5 * S + S / 2, "encoder.attn");
        assert_eq!(failed.len(), 2);
        assert!(
            failed[0].1.contains("group `encoder.attn` overran"),
            "{}",
            failed[0].1
        );
        assert!(
            failed[1].1.contains("queued behind request 1"),
            "{}",
            failed[1].1
        );
        // While stuck, a new request fails at once.
        let e = w.start((1, 3), 20 * S).unwrap_err();
        assert!(e.contains("still stuck in group `encoder.attn`"), "{e}");
        // The late results are dropped; once back, the executor takes requests again.
        assert!(!w.finish((1, 1)));
        assert!(w.start((1, 4), 30 * S).is_err());
        assert!(!w.finish((1, 2)));
        w.start((1, 4), 30 * S).unwrap();
        assert!(w.finish((1, 4)));
    }

    #[test]
    fn nothing_is_overdue_without_runs() {
        let mut w = RunWatch::default();
        assert!(w.overdue(100 * S, "").is_empty());
        assert!(!w.finish((9, 9)));
    }
}
