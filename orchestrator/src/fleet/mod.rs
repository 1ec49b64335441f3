//! The fleet as the orchestrator sees it, as a pure state machine: [`Fleet::handle`] takes a
//! decoded message and the clock and returns [`Outbound`] actions (commands, profile
//! requests, replans). The MQTT loop in [`crate::bus`] only turns bytes into [`Inbound`] and
//! actions into publishes, so everything here is tested without a broker.
//!
//! - [`registry`]: [`registry::FleetRegistry`], the agents and their sessions.
//! - [`life`]: the per-agent session state machine (`bd_seq` ordering, timeouts).
//! - [`store`]: measured kernel times by board class, on disk.
//!
//! Profiling: when an agent of a board class joins, the kernel signatures of the model the
//! store has no time for on that class are sent to it, once per class. A replan waits, after
//! the debounce, until no online class is being profiled (or its profiling timed out; then
//! the roofline stands in for what is missing).

pub mod debounce;
pub mod life;
pub mod model;
pub mod registry;
pub mod view;

use std::collections::BTreeMap;
use std::time::Duration;

use moirai_core::kernel::KernelSignature;
use moirai_core::wire::life::{Birth, Command, Death, Heartbeat};
use moirai_core::wire::profile::{ProfileReport, ProfileRequest};
use tracing::{info, warn};

use debounce::Debouncer;
use life::Transition;
use moirai_core::cost::ProfileTable;
use registry::FleetRegistry;

/// Timing knobs of the fleet.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Silence after which an agent is declared dead.
    pub heartbeat_timeout: Duration,
    /// A replan waits until membership was quiet this long...
    pub debounce: Duration,
    /// ...but no longer than this after the first change.
    pub max_debounce: Duration,
    /// Profiling taking longer than this is abandoned (roofline for what is missing).
    pub profile_timeout: Duration,
    /// Timed runs per kernel asked of agents.
    pub profile_runs: u32,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            heartbeat_timeout: Duration::from_secs(6),
            debounce: Duration::from_millis(500),
            max_debounce: Duration::from_secs(5),
            profile_timeout: Duration::from_secs(60),
            profile_runs: 5,
        }
    }
}

/// A decoded message from an agent.
#[derive(Clone, Debug)]
pub enum Inbound {
    Birth(Birth),
    Death { name: String, death: Death },
    Heartbeat { name: String, heartbeat: Heartbeat },
    Report { name: String, report: ProfileReport },
}

/// What the fleet asks the MQTT loop and the planner to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Outbound {
    Command {
        name: String,
        command: Command,
    },
    Profile {
        name: String,
        request: ProfileRequest,
    },
    /// Progress of a board class's profiling, for progress bars.
    ProfileProgress {
        board: String,
        agent: String,
        done: u32,
        total: u32,
    },
    /// The profile store changed: persist it.
    SaveProfiles,
    /// An agent restarted and lost its assignment: send it the current one again.
    Resend {
        name: String,
    },
    /// Membership changed and settled: plan again.
    Replan {
        reasons: Vec<String>,
    },
}

/// Profiling of one board class in progress.
#[derive(Clone, Debug)]
struct Profiling {
    agent: String,
    request_id: u64,
    deadline: Duration,
}

/// Messages that were dropped, by reason (never a panic).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropCounts {
    pub undecodable: u64,
    pub stale: u64,
    pub unexpected_reports: u64,
}

/// The orchestrator's fleet state.
pub struct Fleet {
    config: FleetConfig,
    registry: FleetRegistry,
    store: ProfileTable,
    /// The model's distinct kernels.
    signatures: Vec<KernelSignature>,
    profiling: BTreeMap<String, Profiling>,
    debounce: Debouncer,
    next_request: u64,
    pub drops: DropCounts,
}

impl Fleet {
    pub fn new(config: FleetConfig, store: ProfileTable, signatures: Vec<KernelSignature>) -> Self {
        let debounce = Debouncer::new(config.debounce, config.max_debounce);
        Self {
            config,
            registry: FleetRegistry::new(),
            store,
            signatures,
            profiling: BTreeMap::new(),
            debounce,
            next_request: 1,
            drops: DropCounts::default(),
        }
    }

    pub fn registry(&self) -> &FleetRegistry {
        &self.registry
    }

    pub fn store(&self) -> &ProfileTable {
        &self.store
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// Board classes being profiled now.
    pub fn profiling_boards(&self) -> Vec<String> {
        self.profiling.keys().cloned().collect()
    }

    /// A payload that did not decode was dropped.
    pub fn count_undecodable(&mut self) {
        self.drops.undecodable += 1;
    }

    pub fn handle(&mut self, msg: Inbound, now: Duration) -> Vec<Outbound> {
        let mut out = Vec::new();
        match msg {
            Inbound::Birth(birth) => {
                let name = birth.name.to_string();
                let board = birth.board.to_string();
                let bd_seq = birth.bd_seq;
                match self.registry.on_birth(birth, now) {
                    Transition::Joined => {
                        info!(agent = %name, board = %board, bd_seq, "agent joined");
                        self.debounce.note(format!("{name} ({board}) joined"), now);
                        self.maybe_profile(&name, &board, now, &mut out);
                    }
                    Transition::Restarted { previous } => {
                        info!(agent = %name, bd_seq, previous, "agent restarted");
                        out.push(Outbound::Resend { name: name.clone() });
                        self.maybe_profile(&name, &board, now, &mut out);
                    }
                    Transition::Reannounced => out.push(Outbound::Resend { name }),
                    _ => {
                        self.drops.stale += 1;
                        info!(agent = %name, bd_seq, "stale birth ignored");
                    }
                }
            }
            Inbound::Death { name, death } => match self.registry.on_death(&name, &death) {
                Transition::Left(cause) => self.left(&name, cause, now),
                _ => {
                    self.drops.stale += 1;
                    info!(agent = %name, bd_seq = death.bd_seq, "stale death ignored");
                }
            },
            Inbound::Heartbeat { name, heartbeat } => {
                match self.registry.on_heartbeat(&name, &heartbeat, now) {
                    Transition::NeedsRebirth => out.push(Outbound::Command {
                        name,
                        command: Command::Rebirth,
                    }),
                    Transition::NeedsNewSession => {
                        info!(agent = %name, bd_seq = heartbeat.bd_seq, "heartbeat of a dead session; asking for a new one");
                        out.push(Outbound::Command {
                            name,
                            command: Command::NewSession {
                                bd_seq: heartbeat.bd_seq,
                            },
                        })
                    }
                    Transition::Stale => self.drops.stale += 1,
                    _ => {}
                }
            }
            Inbound::Report { name, report } => self.on_report(&name, report, &mut out),
        }
        out
    }

    /// Advances the clock: timeouts, abandoned profiling, a settled debounce.
    pub fn tick(&mut self, now: Duration) -> Vec<Outbound> {
        for (name, t) in self.registry.tick(now, self.config.heartbeat_timeout) {
            if let Transition::Left(cause) = t {
                self.left(&name, cause, now);
            }
        }
        let expired: Vec<String> = self
            .profiling
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(b, _)| b.clone())
            .collect();
        for board in expired {
            warn!(board = %board, "profiling timed out; the roofline stands in");
            self.profiling.remove(&board);
        }
        let mut out = Vec::new();
        if self.profiling.is_empty() && self.registry.online_count() > 0 {
            if let Some(reasons) = self.debounce.take_if_due(now) {
                out.push(Outbound::Replan { reasons });
            }
        }
        out
    }

    /// Whether a replan is waiting (for the debounce or for profiling).
    pub fn replan_pending(&self) -> bool {
        self.debounce.is_armed()
    }

    fn left(&mut self, name: &str, cause: life::DeathCause, now: Duration) {
        info!(agent = %name, %cause, "agent left");
        self.debounce.note(format!("{name} left ({cause})"), now);
        // Profiling it was doing is lost; another agent of the class will be asked on the
        // next join, and the replan does not wait for it.
        self.profiling.retain(|_, p| p.agent != name);
    }

    fn maybe_profile(&mut self, name: &str, board: &str, now: Duration, out: &mut Vec<Outbound>) {
        if self.profiling.contains_key(board) {
            return;
        }
        let missing: Vec<KernelSignature> = self
            .signatures
            .iter()
            .filter(|s| self.store.get(board, &s.key()).is_none())
            .cloned()
            .collect();
        if missing.is_empty() {
            return;
        }
        let request_id = self.next_request;
        self.next_request += 1;
        info!(agent = %name, board, kernels = missing.len(), request_id, "profiling requested");
        out.push(Outbound::ProfileProgress {
            board: board.to_string(),
            agent: name.to_string(),
            done: 0,
            total: missing.len() as u32,
        });
        out.push(Outbound::Profile {
            name: name.to_string(),
            request: ProfileRequest {
                request_id,
                signatures: missing,
                runs: self.config.profile_runs,
            },
        });
        self.profiling.insert(
            board.to_string(),
            Profiling {
                agent: name.to_string(),
                request_id,
                deadline: now + self.config.profile_timeout,
            },
        );
    }

    fn on_report(&mut self, name: &str, report: ProfileReport, out: &mut Vec<Outbound>) {
        let Some(rec) = self.registry.get(name) else {
            self.drops.unexpected_reports += 1;
            return;
        };
        let board = rec.birth.board.to_string();
        let expected = self
            .profiling
            .get(&board)
            .is_some_and(|p| p.agent == name && p.request_id == report.request_id);
        if !expected || rec.session.bd_seq != report.bd_seq {
            self.drops.unexpected_reports += 1;
            warn!(agent = %name, request_id = report.request_id, "unexpected profile report dropped");
            return;
        }
        for e in &report.entries {
            if e.time_ms.is_finite() && e.time_ms >= 0.0 {
                self.store.insert(&board, &e.key, e.time_ms);
            }
        }
        for f in &report.failures {
            warn!(agent = %name, kernel = %f.key, reason = %f.reason, "kernel not profiled; roofline stands in");
        }
        out.push(Outbound::ProfileProgress {
            board: board.clone(),
            agent: name.to_string(),
            done: report.done,
            total: report.total,
        });
        if !report.entries.is_empty() {
            out.push(Outbound::SaveProfiles);
        }
        if report.is_last() {
            info!(agent = %name, board = %board, "profiling finished");
            self.profiling.remove(&board);
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use moirai_core::wire::life::Birth;
    use moirai_core::wire::truncated;

    /// A birth of agent `name` of board class `board`.
    pub fn birth(name: &str, board: &str, bd_seq: u64) -> Birth {
        Birth {
            name: truncated(name),
            board: truncated(board),
            adapter: truncated("test"),
            backend: truncated("cpu"),
            memory_bytes: 1 << 30,
            peak_gflops: 100.0,
            mem_gbps: 10.0,
            emulation_scale: None,
            agent_version: truncated("0.1.0"),
            protocol: moirai_core::wire::PROTOCOL_VERSION,
            bd_seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::birth;
    use super::*;
    use moirai_core::kernel::{DType, FusedNode, KernelClass, TensorShape};
    use moirai_core::wire::profile::ProfileEntry;

    const MS: Duration = Duration::from_millis(1);

    fn sig(n: usize) -> KernelSignature {
        KernelSignature {
            class: KernelClass::Eltwise,
            nodes: vec![FusedNode {
                op_type: "Relu".into(),
                attrs: Default::default(),
            }],
            inputs: vec![TensorShape {
                dims: vec![1, n],
                dtype: DType::F32,
            }],
            outputs: vec![TensorShape {
                dims: vec![1, n],
                dtype: DType::F32,
            }],
            flops: n as u64,
            bytes: 8 * n as u64,
            dag: None,
            shapes: Vec::new(),
        }
    }

    fn config() -> FleetConfig {
        FleetConfig {
            heartbeat_timeout: 100 * MS,
            debounce: 10 * MS,
            max_debounce: 50 * MS,
            profile_timeout: 1000 * MS,
            profile_runs: 3,
        }
    }

    fn replans(out: &[Outbound]) -> usize {
        out.iter()
            .filter(|o| matches!(o, Outbound::Replan { .. }))
            .count()
    }

    fn answer(f: &mut Fleet, out: &[Outbound], bd_seq: u64, now: Duration) -> Vec<Outbound> {
        let (name, req) = out
            .iter()
            .find_map(|o| match o {
                Outbound::Profile { name, request } => Some((name.clone(), request.clone())),
                _ => None,
            })
            .expect("a profile request");
        let entries = req
            .signatures
            .iter()
            .map(|s| ProfileEntry {
                key: s.key(),
                time_ms: 0.5,
                runs: 3,
            })
            .collect::<Vec<_>>();
        f.handle(
            Inbound::Report {
                name,
                report: ProfileReport {
                    request_id: req.request_id,
                    bd_seq,
                    done: entries.len() as u32,
                    total: entries.len() as u32,
                    entries,
                    failures: vec![],
                    emulation_scale: None,
                },
            },
            now,
        )
    }

    #[test]
    fn a_burst_of_joins_of_a_known_class_causes_one_replan_after_the_debounce() {
        let mut store = ProfileTable::new();
        store.insert("pi5", &sig(4).key(), 1.0);
        let mut f = Fleet::new(config(), store, vec![sig(4)]);
        let mut total = 0;
        for (i, t) in [0u64, 3, 6].into_iter().enumerate() {
            let out = f.handle(
                Inbound::Birth(birth(&format!("a{i}"), "pi5", 1)),
                Duration::from_millis(t),
            );
            assert!(
                !out.iter().any(|o| matches!(o, Outbound::Profile { .. })),
                "a known class is not profiled again"
            );
            total += replans(&f.tick(Duration::from_millis(t)));
        }
        assert_eq!(total, 0, "no replan inside the debounce window");
        total += replans(&f.tick(15 * MS));
        total += replans(&f.tick(40 * MS));
        assert_eq!(total, 1);
    }

    #[test]
    fn a_new_class_is_profiled_once_and_the_replan_waits_for_it() {
        let mut f = Fleet::new(config(), ProfileTable::new(), vec![sig(4), sig(8)]);
        let out = f.handle(Inbound::Birth(birth("a", "orin", 1)), Duration::ZERO);
        let out2 = f.handle(Inbound::Birth(birth("b", "orin", 1)), MS);
        assert!(!out2.iter().any(|o| matches!(o, Outbound::Profile { .. })));
        assert_eq!(replans(&f.tick(30 * MS)), 0, "profiling still running");
        let done = answer(&mut f, &out, 1, 31 * MS);
        assert!(done.contains(&Outbound::SaveProfiles));
        assert_eq!(f.store().count("orin"), 2);
        assert_eq!(replans(&f.tick(32 * MS)), 1);
        assert_eq!(replans(&f.tick(100 * MS)), 0);
    }

    #[test]
    fn a_report_from_a_stranger_or_an_old_session_is_dropped() {
        let mut f = Fleet::new(config(), ProfileTable::new(), vec![sig(4)]);
        let out = f.handle(Inbound::Birth(birth("a", "orin", 2)), Duration::ZERO);
        answer(&mut f, &out, 1, MS);
        assert_eq!(f.drops.unexpected_reports, 1);
        assert_eq!(f.store().count("orin"), 0);
    }

    #[test]
    fn a_silent_agent_is_declared_dead_and_triggers_a_replan() {
        let mut store = ProfileTable::new();
        store.insert("pi5", &sig(4).key(), 1.0);
        let mut f = Fleet::new(config(), store, vec![sig(4)]);
        f.handle(Inbound::Birth(birth("a", "pi5", 1)), Duration::ZERO);
        f.handle(Inbound::Birth(birth("b", "pi5", 1)), Duration::ZERO);
        assert_eq!(replans(&f.tick(20 * MS)), 1);
        for t in [50u64, 100, 150] {
            f.handle(
                Inbound::Heartbeat {
                    name: "a".into(),
                    heartbeat: Heartbeat {
                        bd_seq: 1,
                        seq: t,
                        busy: false,
                        link: None,
                    },
                },
                Duration::from_millis(t),
            );
        }
        assert_eq!(replans(&f.tick(150 * MS)), 0, "b died just now; debouncing");
        assert_eq!(f.registry().online_names(), vec!["a".to_string()]);
        let out = f.tick(170 * MS);
        match &out[..] {
            [Outbound::Replan { reasons }] => {
                assert!(
                    reasons[0].contains("b left (heartbeat timeout)"),
                    "{reasons:?}"
                )
            }
            other => panic!("expected one replan, got {other:?}"),
        }
    }

    #[test]
    fn a_late_last_will_after_a_restart_changes_nothing() {
        let mut f = Fleet::new(config(), ProfileTable::new(), vec![]);
        f.handle(Inbound::Birth(birth("a", "pi5", 1)), Duration::ZERO);
        assert_eq!(replans(&f.tick(20 * MS)), 1);
        let out = f.handle(Inbound::Birth(birth("a", "pi5", 2)), 30 * MS);
        assert_eq!(out, vec![Outbound::Resend { name: "a".into() }]);
        f.handle(
            Inbound::Death {
                name: "a".into(),
                death: Death { bd_seq: 1 },
            },
            31 * MS,
        );
        assert_eq!(f.registry().online_names(), vec!["a".to_string()]);
        assert_eq!(replans(&f.tick(80 * MS)), 0);
        assert_eq!(f.drops.stale, 1);
    }
}
