//! The deadline of the requests an agent has handed to its executor thread, as a pure state
//! machine (times are `Duration`s since the worker started).
//!
//! Nothing waits silently: a request whose run has taken longer than its deadline since the
//! executor started it fails with the group the executor is stuck in, and so does every
//! request queued behind it, at once; while the executor stays stuck, a new request fails as
//! soon as its inputs are in. When the stuck run finally returns, its late result (and those of
//! the runs failed behind it) are dropped. Time spent queued does not count: a burst of
//! requests is not a hang.

use std::collections::BTreeSet;
use std::time::Duration;

/// A request: (epoch, request id).
pub type RunKey = (u64, u64);

/// Runs in flight on the executor and whether it is stuck.
#[derive(Debug, Default)]
pub struct RunWatch {
    /// Runs handed over and not yet back.
    inflight: BTreeSet<RunKey>,
    /// Runs failed for a deadline whose results are still to come back (and be dropped).
    abandoned: BTreeSet<RunKey>,
    /// Where the executor got stuck, while it is.
    stuck: Option<String>,
}

impl RunWatch {
    /// A run handed to the executor; `Err(reason)` when the executor is stuck (the run fails
    /// at once; it is not handed over).
    pub fn start(&mut self, key: RunKey) -> Result<(), String> {
        if let Some(at) = &self.stuck {
            return Err(format!(
                "the executor is still stuck in {at}, after a request overran its deadline"
            ));
        }
        self.inflight.insert(key);
        Ok(())
    }

    /// A run came back; `true` when its result is to be sent (it was not failed already).
    pub fn finish(&mut self, key: RunKey) -> bool {
        if self.abandoned.remove(&key) {
            // Once every abandoned run is back, the executor moves again.
            if self.abandoned.is_empty() {
                self.stuck = None;
            }
            return false;
        }
        self.inflight.remove(&key)
    }

    /// The runs to fail: when the run the executor is on (`running`: its key and for how
    /// long it has run) is past `limit`, it and every run queued behind it, each with the
    /// reason; `group` says where the executor is.
    pub fn overdue(
        &mut self,
        running: Option<(RunKey, Duration)>,
        group: &str,
        limit: Duration,
    ) -> Vec<(RunKey, String)> {
        let Some((late, ran)) =
            running.filter(|(k, ran)| *ran > limit && self.inflight.contains(k))
        else {
            return Vec::new();
        };
        let at = if group.is_empty() {
            "the share".to_string()
        } else {
            format!("group `{group}`")
        };
        let mut out = Vec::with_capacity(self.inflight.len());
        for key in std::mem::take(&mut self.inflight) {
            let reason = if key == late {
                format!(
                    "{at} overran the request's deadline of {} ms (running {} ms)",
                    limit.as_millis(),
                    ran.as_millis()
                )
            } else {
                format!("queued behind request {} stuck in {at}", late.1)
            };
            self.abandoned.insert(key);
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
        w.start((1, 1)).unwrap();
        assert!(w.overdue(Some(((1, 1), 4 * S)), "conv1", 5 * S).is_empty());
        assert!(w.finish((1, 1)));
        assert!(w.is_empty());
    }

    #[test]
    fn time_spent_queued_is_no_overrun() {
        let mut w = RunWatch::default();
        for r in 1..=20 {
            w.start((1, r)).unwrap();
        }
        // Request 20 waited long, but the one running started a moment ago.
        assert!(w.overdue(Some(((1, 7), S)), "conv1", 5 * S).is_empty());
        assert_eq!(w.len(), 20);
    }

    #[test]
    fn an_overrun_fails_it_and_everything_behind_it_naming_the_group() {
        let mut w = RunWatch::default();
        w.start((1, 1)).unwrap();
        w.start((1, 2)).unwrap();
        let failed = w.overdue(Some(((1, 1), 6 * S)), "encoder.attn", 5 * S);
        assert_eq!(failed.len(), 2);
        assert!(
            failed[0]
                .1
                .contains("group `encoder.attn` overran the request's deadline of 5000 ms"),
            "{}",
            failed[0].1
        );
        assert!(
            failed[1].1.contains("queued behind request 1"),
            "{}",
            failed[1].1
        );
        // While stuck, a new request fails at once.
        let e = w.start((1, 3)).unwrap_err();
        assert!(e.contains("still stuck in group `encoder.attn`"), "{e}");
        // The late results are dropped; once back, the executor takes requests again.
        assert!(!w.finish((1, 1)));
        assert!(w.start((1, 4)).is_err());
        assert!(!w.finish((1, 2)));
        w.start((1, 4)).unwrap();
        assert!(w.finish((1, 4)));
    }

    #[test]
    fn nothing_is_overdue_without_runs() {
        let mut w = RunWatch::default();
        assert!(w.overdue(Some(((9, 9), 100 * S)), "", S).is_empty());
        assert!(w.overdue(None, "", S).is_empty());
        assert!(!w.finish((9, 9)));
    }
}
