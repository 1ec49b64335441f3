//! The lifecycle of one agent as the orchestrator sees it: a pure state machine over
//! births, deaths, heartbeats and the clock.
//!
//! Sessions are ordered by `bd_seq`. A message naming an older session than the one known is
//! stale and changes nothing: this is what lets a restarted agent survive the Last Will of its
//! predecessor that the broker delivers late. A session dies by its Last Will or by silence
//! longer than the heartbeat timeout; one that died of silence may come back (its heartbeats
//! resume after a partition), one that left a Last Will cannot.

use std::time::Duration;

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeathCause {
    /// The broker delivered the agent's Last Will (or the agent said goodbye).
    LastWill,
    /// No heartbeat within the timeout.
    HeartbeatTimeout,
}

impl std::fmt::Display for DeathCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeathCause::LastWill => "last will",
            DeathCause::HeartbeatTimeout => "heartbeat timeout",
        })
    }
}

/// Where a known agent stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Online,
    Dead(DeathCause),
}

/// The session state of one agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub bd_seq: u64,
    pub liveness: Liveness,
    /// Clock reading of the last message of this session.
    pub last_seen: Duration,
}

/// What a lifecycle message did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The agent went from unknown or dead to online.
    Joined,
    /// A newer session replaced an online one (the agent restarted before its death was
    /// seen): membership is unchanged but the agent lost its assignment.
    Restarted { previous: u64 },
    /// The same online session announced itself again.
    Reannounced,
    /// The agent went from online to dead.
    Left(DeathCause),
    /// A heartbeat of the current session.
    Alive,
    /// Heartbeats from a session without a birth: ask for one.
    NeedsRebirth,
    /// Heartbeats from a session whose death was delivered: ask for a new session.
    NeedsNewSession,
    /// A message of an older session, or a death of a session already dead: ignored.
    Stale,
}

impl Session {
    /// A session born now.
    pub fn born(bd_seq: u64, now: Duration) -> Self {
        Self {
            bd_seq,
            liveness: Liveness::Online,
            last_seen: now,
        }
    }

    pub fn is_online(&self) -> bool {
        self.liveness == Liveness::Online
    }

    pub fn on_birth(&mut self, bd_seq: u64, now: Duration) -> Transition {
        if bd_seq < self.bd_seq {
            return Transition::Stale;
        }
        if bd_seq == self.bd_seq {
            return match self.liveness {
                Liveness::Online => {
                    self.last_seen = now;
                    Transition::Reannounced
                }
                // A session that left a Last Will is over; its birth is a late duplicate.
                Liveness::Dead(DeathCause::LastWill) => Transition::Stale,
                Liveness::Dead(DeathCause::HeartbeatTimeout) => {
                    *self = Session::born(bd_seq, now);
                    Transition::Joined
                }
            };
        }
        let was_online = self.is_online();
        let previous = self.bd_seq;
        *self = Session::born(bd_seq, now);
        if was_online {
            Transition::Restarted { previous }
        } else {
            Transition::Joined
        }
    }

    pub fn on_death(&mut self, bd_seq: u64) -> Transition {
        if bd_seq < self.bd_seq || !self.is_online() && bd_seq == self.bd_seq {
            return Transition::Stale;
        }
        let was_online = self.is_online();
        self.bd_seq = bd_seq;
        self.liveness = Liveness::Dead(DeathCause::LastWill);
        if was_online {
            Transition::Left(DeathCause::LastWill)
        } else {
            Transition::Stale
        }
    }

    pub fn on_heartbeat(&mut self, bd_seq: u64, now: Duration) -> Transition {
        if bd_seq < self.bd_seq {
            return Transition::Stale;
        }
        if bd_seq == self.bd_seq && self.is_online() {
            self.last_seen = now;
            return Transition::Alive;
        }
        if bd_seq == self.bd_seq && self.liveness == Liveness::Dead(DeathCause::LastWill) {
            // Its death was delivered, yet it speaks: a will fired for a live connection.
            return Transition::NeedsNewSession;
        }
        Transition::NeedsRebirth
    }

    /// Declares the session dead when it has been silent longer than `timeout`.
    pub fn on_tick(&mut self, now: Duration, timeout: Duration) -> Transition {
        if self.is_online() && now.saturating_sub(self.last_seen) > timeout {
            self.liveness = Liveness::Dead(DeathCause::HeartbeatTimeout);
            return Transition::Left(DeathCause::HeartbeatTimeout);
        }
        Transition::Stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_late_last_will_of_the_previous_session_does_not_kill_the_new_one() {
        let mut s = Session::born(5, S);
        assert_eq!(s.on_birth(6, 2 * S), Transition::Restarted { previous: 5 });
        assert_eq!(s.on_death(5), Transition::Stale);
        assert!(s.is_online());
        assert_eq!(s.on_death(6), Transition::Left(DeathCause::LastWill));
        assert!(!s.is_online());
    }

    #[test]
    fn silence_longer_than_the_timeout_kills_and_a_returning_session_may_rejoin() {
        let mut s = Session::born(1, S);
        assert_eq!(s.on_heartbeat(1, 2 * S), Transition::Alive);
        assert_eq!(s.on_tick(3 * S, 2 * S), Transition::Stale);
        assert_eq!(
            s.on_tick(5 * S, 2 * S),
            Transition::Left(DeathCause::HeartbeatTimeout)
        );
        assert_eq!(s.on_heartbeat(1, 6 * S), Transition::NeedsRebirth);
        assert_eq!(s.on_birth(1, 6 * S), Transition::Joined);
        assert!(s.is_online());
    }

    #[test]
    fn a_session_that_left_a_last_will_cannot_be_reborn_but_is_told_to_start_anew() {
        let mut s = Session::born(3, S);
        s.on_death(3);
        assert_eq!(s.on_birth(3, 2 * S), Transition::Stale);
        // Still speaking after its will was delivered: the broker fired it for a live
        // connection. The agent is asked for a new session, not ignored forever.
        assert_eq!(s.on_heartbeat(3, 2 * S), Transition::NeedsNewSession);
        assert_eq!(s.on_heartbeat(2, 2 * S), Transition::Stale);
        assert_eq!(s.on_birth(4, 2 * S), Transition::Joined);
    }

    #[test]
    fn old_births_and_heartbeats_are_stale() {
        let mut s = Session::born(9, S);
        assert_eq!(s.on_birth(8, 2 * S), Transition::Stale);
        assert_eq!(s.on_heartbeat(8, 2 * S), Transition::Stale);
        assert_eq!(s.last_seen, S);
        assert_eq!(s.on_birth(9, 3 * S), Transition::Reannounced);
    }

    #[test]
    fn heartbeats_of_an_unseen_newer_session_ask_for_a_birth() {
        let mut s = Session::born(2, S);
        assert_eq!(s.on_heartbeat(3, 2 * S), Transition::NeedsRebirth);
        assert_eq!(s.bd_seq, 2);
    }
}
