//! The inference session's plan epochs, as a pure state machine (no I/O, no clock).
//!
//! - Each plan gets the next epoch number when it is *started* ([`Epochs::start`]), and is
//!   kept once solved ([`Epochs::install`]).
//! - An epoch comes into force when every agent with a spec in it said ready, provided it is
//!   the newest epoch started and newer than the one in force: a late "ready" of an older plan
//!   never replaces a newer one.
//! - A death takes the epoch in force out of force when the dead agent had work in it; the
//!   epochs it had work in are returned so that their requests run again.
//! - Epochs no request runs on any more are forgotten, except the one in force and newer ones.

use std::collections::{BTreeMap, BTreeSet};

struct EpochState<P> {
    plan: P,
    /// The plan's agents, and whether each has work (nodes) in it.
    members: BTreeMap<String, bool>,
    ready: BTreeSet<String>,
}

/// The epochs of one session; `P` is what a plan carries (the session's [`super::model::EpochPlan`]).
pub struct Epochs<P> {
    epochs: BTreeMap<u64, EpochState<P>>,
    /// The newest epoch number handed out (0: none yet).
    newest: u64,
    active: Option<u64>,
}

impl<P> Default for Epochs<P> {
    fn default() -> Self {
        Self {
            epochs: BTreeMap::new(),
            newest: 0,
            active: None,
        }
    }
}

impl<P> Epochs<P> {
    /// A plan is being solved: its epoch number.
    pub fn start(&mut self) -> u64 {
        self.newest += 1;
        self.newest
    }

    /// Whether any plan was started yet.
    pub fn any_started(&self) -> bool {
        self.newest > 0
    }

    /// A solved plan of `epoch` for `members` (agent -> has work); it waits for their
    /// readiness.
    pub fn install(&mut self, epoch: u64, plan: P, members: BTreeMap<String, bool>) {
        self.epochs.insert(
            epoch,
            EpochState {
                plan,
                members,
                ready: BTreeSet::new(),
            },
        );
    }

    /// The epoch in force: new requests run there.
    pub fn active(&self) -> Option<u64> {
        self.active
    }

    pub fn plan(&self, epoch: u64) -> Option<&P> {
        self.epochs.get(&epoch).map(|e| &e.plan)
    }

    /// `agent` loaded its share of `epoch`. True when `epoch` came into force just now.
    pub fn ready(&mut self, agent: &str, epoch: u64) -> bool {
        let Some(e) = self.epochs.get_mut(&epoch) else {
            return false;
        };
        if !e.members.contains_key(agent) {
            // Not one of this plan's agents: its word does not count.
            return false;
        }
        e.ready.insert(agent.to_string());
        let all = e.members.keys().all(|a| e.ready.contains(a));
        if all && self.active.is_none_or(|a| a < epoch) && epoch == self.newest {
            self.active = Some(epoch);
            return true;
        }
        false
    }

    /// `agent` died: the epochs it had work in (their requests must run again); the epoch in
    /// force leaves force if it is one of them.
    pub fn agent_died(&mut self, agent: &str) -> BTreeSet<u64> {
        let touched: BTreeSet<u64> = self
            .epochs
            .iter()
            .filter(|(_, e)| e.members.get(agent).copied().unwrap_or(false))
            .map(|(&k, _)| k)
            .collect();
        if self.active.is_some_and(|a| touched.contains(&a)) {
            self.active = None;
        }
        touched
    }

    /// Drops the epochs older than the one in force that no request in `used` runs on.
    pub fn forget_unused(&mut self, used: &BTreeSet<u64>) {
        let Some(active) = self.active else { return };
        self.epochs.retain(|&e, _| e >= active || used.contains(&e));
    }

    /// Epochs kept (in force, waiting, or still running requests).
    pub fn kept(&self) -> Vec<u64> {
        self.epochs.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Installs a plan of the next epoch giving each agent a share (`true`: with work).
    fn plan(e: &mut Epochs<()>, agents: &[(&str, bool)]) -> u64 {
        let n = e.start();
        let members = agents.iter().map(|(a, w)| (a.to_string(), *w)).collect();
        e.install(n, (), members);
        n
    }

    #[test]
    fn an_epoch_comes_into_force_once_every_agent_with_a_spec_is_ready() {
        let mut e = Epochs::default();
        let n = plan(&mut e, &[("a", true), ("b", true)]);
        assert!(!e.ready("a", n));
        assert_eq!(e.active(), None);
        assert!(
            !e.ready("stranger", n),
            "an agent without a spec does not count"
        );
        assert!(e.ready("b", n));
        assert_eq!(e.active(), Some(n));
        assert!(!e.ready("b", n), "in force once, not twice");
    }

    #[test]
    fn a_late_ready_of_an_older_plan_never_replaces_a_newer_one() {
        let mut e = Epochs::default();
        let one = plan(&mut e, &[("a", true)]);
        let two = plan(&mut e, &[("a", true), ("b", true)]);
        // Epoch 1 is no longer the newest: its readiness does not bring it into force.
        assert!(!e.ready("a", one));
        assert!(!e.ready("a", two));
        assert!(e.ready("b", two));
        assert_eq!(e.active(), Some(two));
        assert!(!e.ready("a", one));
        assert_eq!(e.active(), Some(two));
    }

    #[test]
    fn a_death_takes_the_epoch_out_of_force_only_where_the_dead_agent_had_work() {
        let mut e = Epochs::default();
        let one = plan(&mut e, &[("a", true), ("idle", false)]);
        assert!(!e.ready("a", one));
        assert!(e.ready("idle", one));
        assert!(
            e.agent_died("idle").is_empty(),
            "no work, nothing to run again"
        );
        assert_eq!(e.active(), Some(one));
        assert_eq!(e.agent_died("a"), BTreeSet::from([one]));
        assert_eq!(e.active(), None);
        // The replacement comes into force on its own readiness.
        let two = plan(&mut e, &[("idle", true)]);
        assert!(e.ready("idle", two));
        assert_eq!(e.active(), Some(two));
    }

    #[test]
    fn old_epochs_are_kept_while_requests_run_on_them() {
        let mut e = Epochs::default();
        let one = plan(&mut e, &[("a", true)]);
        assert!(e.ready("a", one));
        let two = plan(&mut e, &[("a", true)]);
        assert!(e.ready("a", two));
        e.forget_unused(&BTreeSet::from([one]));
        assert_eq!(e.kept(), vec![one, two]);
        e.forget_unused(&BTreeSet::new());
        assert_eq!(e.kept(), vec![two]);
        assert!(e.plan(one).is_none());
    }
}
