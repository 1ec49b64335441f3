//! [`FleetRegistry`]: every agent the orchestrator has heard of, its birth, its session and
//! what its heartbeats said. Pure: the caller passes the clock.

use std::collections::BTreeMap;
use std::time::Duration;

use moirai_core::wire::life::{Birth, Death, Heartbeat, LinkStats};

use super::life::{Liveness, Session, Transition};

/// One agent.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentRecord {
    /// Its latest accepted birth.
    pub birth: Birth,
    pub session: Session,
    /// Heartbeats received in the current session.
    pub heartbeats: u64,
    pub busy: bool,
    pub link: Option<LinkStats>,
}

impl AgentRecord {
    pub fn is_online(&self) -> bool {
        self.session.is_online()
    }
}

/// Every agent by name.
#[derive(Clone, Debug, Default)]
pub struct FleetRegistry {
    agents: BTreeMap<String, AgentRecord>,
}

impl FleetRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn on_birth(&mut self, birth: Birth, now: Duration) -> Transition {
        let name = birth.name.to_string();
        match self.agents.get_mut(&name) {
            None => {
                self.agents.insert(
                    name,
                    AgentRecord {
                        session: Session::born(birth.bd_seq, now),
                        birth,
                        heartbeats: 0,
                        busy: false,
                        link: None,
                    },
                );
                Transition::Joined
            }
            Some(rec) => {
                let t = rec.session.on_birth(birth.bd_seq, now);
                if matches!(
                    t,
                    Transition::Joined | Transition::Restarted { .. } | Transition::Reannounced
                ) {
                    if !matches!(t, Transition::Reannounced) {
                        rec.heartbeats = 0;
                        rec.link = None;
                    }
                    rec.birth = birth;
                }
                t
            }
        }
    }

    pub fn on_death(&mut self, name: &str, death: &Death) -> Transition {
        match self.agents.get_mut(name) {
            None => Transition::Stale,
            Some(rec) => rec.session.on_death(death.bd_seq),
        }
    }

    pub fn on_heartbeat(&mut self, name: &str, hb: &Heartbeat, now: Duration) -> Transition {
        match self.agents.get_mut(name) {
            None => Transition::NeedsRebirth,
            Some(rec) => {
                let t = rec.session.on_heartbeat(hb.bd_seq, now);
                if t == Transition::Alive {
                    rec.heartbeats += 1;
                    rec.busy = hb.busy;
                    if hb.link.is_some() {
                        rec.link = hb.link;
                    }
                }
                t
            }
        }
    }

    /// Declares silent agents dead; returns those that left.
    pub fn tick(&mut self, now: Duration, timeout: Duration) -> Vec<(String, Transition)> {
        self.agents
            .iter_mut()
            .filter_map(|(name, rec)| match rec.session.on_tick(now, timeout) {
                t @ Transition::Left(_) => Some((name.clone(), t)),
                _ => None,
            })
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&AgentRecord> {
        self.agents.get(name)
    }

    /// Every agent, by name.
    pub fn all(&self) -> impl Iterator<Item = (&str, &AgentRecord)> {
        self.agents.iter().map(|(n, r)| (n.as_str(), r))
    }

    /// Online agents, by name.
    pub fn online(&self) -> impl Iterator<Item = (&str, &AgentRecord)> {
        self.all().filter(|(_, r)| r.is_online())
    }

    pub fn online_count(&self) -> usize {
        self.online().count()
    }

    /// Names of online agents, sorted.
    pub fn online_names(&self) -> Vec<String> {
        self.online().map(|(n, _)| n.to_string()).collect()
    }

    /// How an agent is doing, for tables.
    pub fn liveness(&self, name: &str) -> Option<Liveness> {
        self.agents.get(name).map(|r| r.session.liveness)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::life::DeathCause;
    use crate::fleet::testutil::birth;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn agents_join_heartbeat_and_time_out() {
        let mut r = FleetRegistry::new();
        assert_eq!(r.on_birth(birth("a", "pi5", 1), S), Transition::Joined);
        assert_eq!(r.on_birth(birth("b", "orin", 1), S), Transition::Joined);
        let hb = Heartbeat {
            bd_seq: 1,
            seq: 0,
            busy: true,
            link: None,
        };
        assert_eq!(r.on_heartbeat("a", &hb, 3 * S), Transition::Alive);
        assert_eq!(r.get("a").unwrap().heartbeats, 1);
        assert!(r.get("a").unwrap().busy);
        let left = r.tick(4 * S, 2 * S);
        assert_eq!(
            left,
            vec![(
                "b".to_string(),
                Transition::Left(DeathCause::HeartbeatTimeout)
            )]
        );
        assert_eq!(r.online_names(), vec!["a".to_string()]);
    }

    #[test]
    fn a_stale_birth_does_not_overwrite_the_known_board() {
        let mut r = FleetRegistry::new();
        r.on_birth(birth("a", "pi5", 5), S);
        assert_eq!(r.on_birth(birth("a", "orin", 4), S), Transition::Stale);
        assert_eq!(r.get("a").unwrap().birth.board.as_str(), "pi5");
    }

    #[test]
    fn unknown_agents_are_asked_for_a_birth_and_their_deaths_ignored() {
        let mut r = FleetRegistry::new();
        let hb = Heartbeat {
            bd_seq: 1,
            seq: 0,
            busy: false,
            link: None,
        };
        assert_eq!(r.on_heartbeat("x", &hb, S), Transition::NeedsRebirth);
        assert_eq!(r.on_death("x", &Death { bd_seq: 1 }), Transition::Stale);
        assert_eq!(r.online_count(), 0);
    }
}
