//! The agent's side of the lifecycle, as a pure state machine.
//!
//! - `bd_seq` increases on every connection. It starts from the wall clock in milliseconds
//!   (`max(previous + 1, now)`), so a restarted agent process also outranks its predecessor
//!   without keeping a file: the predecessor's Last Will, delivered late by the broker,
//!   names a smaller `bd_seq` and the orchestrator ignores it.
//! - The Last Will of a connection is the [`Death`] with that connection's `bd_seq`; the loop
//!   sets it before each (re)connection from [`AgentLife::death`].
//! - The agent announces itself (birth) only once the orchestrator's retained state says
//!   online, again when that state shows a new orchestrator session, and on a
//!   [`moirai_core::wire::life::Command::Rebirth`].
//! - Heartbeats go out only while announced.

use moirai_core::wire::life::{Death, Heartbeat, LinkStats, OrchState};

/// What the loop should do next.
#[derive(Clone, Debug, PartialEq)]
pub enum LifeAction {
    /// Subscribe to the orchestrator's state and to the agent's own topics.
    Subscribe,
    /// Publish a birth with the current `bd_seq`.
    Announce,
}

#[derive(Clone, Debug)]
pub struct AgentLife {
    bd_seq: u64,
    connected: bool,
    /// Orchestrator session announced to in this connection.
    announced_to: Option<u64>,
    orch_online: bool,
    hb_seq: u64,
}

impl AgentLife {
    /// State before the first connection; `now_ms` is the wall clock.
    pub fn new(now_ms: u64) -> Self {
        Self {
            bd_seq: now_ms.max(1),
            connected: false,
            announced_to: None,
            orch_online: false,
            hb_seq: 0,
        }
    }

    pub fn bd_seq(&self) -> u64 {
        self.bd_seq
    }

    /// The Last Will of the current (or next) connection.
    pub fn death(&self) -> Death {
        Death {
            bd_seq: self.bd_seq,
        }
    }

    pub fn is_announced(&self) -> bool {
        self.announced_to.is_some()
    }

    pub fn on_connected(&mut self) -> Vec<LifeAction> {
        self.connected = true;
        self.announced_to = None;
        self.orch_online = false;
        self.hb_seq = 0;
        vec![LifeAction::Subscribe]
    }

    /// The connection dropped: the next one gets a larger `bd_seq` (set it as the new Last
    /// Will before reconnecting).
    pub fn on_disconnected(&mut self, now_ms: u64) {
        // Always a new session: even an attempt that never saw its CONNACK may have had its
        // will registered, and fired, by the broker; a birth under that bd_seq would then be
        // refused as the birth of a dead session.
        self.bd_seq = (self.bd_seq + 1).max(now_ms);
        self.connected = false;
        self.announced_to = None;
        self.orch_online = false;
    }

    pub fn on_orch_state(&mut self, s: &OrchState) -> Vec<LifeAction> {
        self.orch_online = s.online;
        if !self.connected || !s.online {
            return vec![];
        }
        if self.announced_to == Some(s.session) {
            return vec![];
        }
        self.announced_to = Some(s.session);
        vec![LifeAction::Announce]
    }

    pub fn on_rebirth(&mut self) -> Vec<LifeAction> {
        if self.connected && self.orch_online {
            vec![LifeAction::Announce]
        } else {
            vec![]
        }
    }

    /// The heartbeat to send now, if announced.
    pub fn heartbeat(&mut self, busy: bool, link: Option<LinkStats>) -> Option<Heartbeat> {
        self.announced_to?;
        let hb = Heartbeat {
            bd_seq: self.bd_seq,
            seq: self.hb_seq,
            busy,
            link,
        };
        self.hb_seq += 1;
        Some(hb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn online(session: u64) -> OrchState {
        OrchState {
            online: true,
            session,
        }
    }

    #[test]
    fn the_agent_waits_for_the_orchestrator_before_announcing() {
        let mut l = AgentLife::new(1000);
        assert_eq!(l.on_connected(), vec![LifeAction::Subscribe]);
        assert!(l.heartbeat(false, None).is_none());
        assert!(l
            .on_orch_state(&OrchState {
                online: false,
                session: 1
            })
            .is_empty());
        assert_eq!(l.on_orch_state(&online(1)), vec![LifeAction::Announce]);
        assert!(l.on_orch_state(&online(1)).is_empty(), "once per session");
        assert_eq!(l.heartbeat(false, None).unwrap().bd_seq, 1000);
        assert_eq!(l.heartbeat(false, None).unwrap().seq, 1);
        assert_eq!(
            l.on_orch_state(&online(2)),
            vec![LifeAction::Announce],
            "a restarted orchestrator hears the agent again"
        );
    }

    #[test]
    fn every_connection_has_a_larger_bd_seq_and_will() {
        let mut l = AgentLife::new(1000);
        l.on_connected();
        l.on_orch_state(&online(1));
        let first = l.death();
        l.on_disconnected(500); // a clock that went backwards still increases
        assert_eq!(l.bd_seq(), 1001);
        // A failed attempt may still have had its will registered and fired: a new number.
        l.on_disconnected(600);
        assert_eq!(l.bd_seq(), 1002);
        l.on_connected();
        assert!(l.death().bd_seq > first.bd_seq);
        assert_eq!(l.on_orch_state(&online(1)), vec![LifeAction::Announce]);
        l.on_disconnected(5000);
        assert_eq!(l.bd_seq(), 5000);
    }

    #[test]
    fn a_restarted_process_outranks_its_predecessor() {
        let old = AgentLife::new(10_000);
        let new = AgentLife::new(10_050);
        assert!(new.bd_seq() > old.bd_seq());
    }

    #[test]
    fn rebirth_is_answered_only_while_the_orchestrator_is_online() {
        let mut l = AgentLife::new(1);
        assert!(l.on_rebirth().is_empty());
        l.on_connected();
        assert!(l.on_rebirth().is_empty());
        l.on_orch_state(&online(3));
        assert_eq!(l.on_rebirth(), vec![LifeAction::Announce]);
    }
}
