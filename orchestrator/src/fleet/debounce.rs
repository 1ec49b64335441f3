//! A [`Debouncer`]: turns a burst of membership changes into one replan.

use std::time::Duration;

/// Collects membership changes; due once they have been quiet for `quiet`, or `max` after
/// the first one, whichever comes first.
#[derive(Clone, Debug)]
pub struct Debouncer {
    quiet: Duration,
    max: Duration,
    first: Option<Duration>,
    last: Duration,
    reasons: Vec<String>,
}

impl Debouncer {
    pub fn new(quiet: Duration, max: Duration) -> Self {
        Self {
            quiet,
            max,
            first: None,
            last: Duration::ZERO,
            reasons: Vec::new(),
        }
    }

    pub fn note(&mut self, reason: String, now: Duration) {
        self.first.get_or_insert(now);
        self.last = now;
        self.reasons.push(reason);
    }

    pub fn is_armed(&self) -> bool {
        self.first.is_some()
    }

    /// The collected reasons, when due; disarms.
    pub fn take_if_due(&mut self, now: Duration) -> Option<Vec<String>> {
        let first = self.first?;
        let due =
            now.saturating_sub(self.last) >= self.quiet || now.saturating_sub(first) >= self.max;
        if !due {
            return None;
        }
        self.first = None;
        Some(std::mem::take(&mut self.reasons))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_debouncer_waits_for_quiet_and_caps_the_wait() {
        let mut d = Debouncer::new(10 * MS, 25 * MS);
        assert_eq!(d.take_if_due(100 * MS), None);
        d.note("a".into(), Duration::ZERO);
        d.note("b".into(), 8 * MS);
        assert_eq!(d.take_if_due(12 * MS), None);
        assert_eq!(
            d.take_if_due(18 * MS),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert!(!d.is_armed());
        // Changes every 5 ms never go quiet; the cap fires.
        for t in (30..60).step_by(5) {
            d.note(format!("{t}"), t * MS);
            if let Some(r) = d.take_if_due(t * MS) {
                assert_eq!(t, 55);
                assert_eq!(r.len(), 6);
                return;
            }
        }
        panic!("the cap never fired");
    }
}
