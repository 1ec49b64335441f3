//! `moirai-orchestrator`: turns a model and a fleet into a plan and keeps it running.
//!
//! Pipeline stages, one module each:
//! - [`cluster`], [`costing`]: a model (imported and coarsened by `moirai-model`) and a cluster
//!   file into the costed graph (board figures, roofline or profiles).
//! - [`simulate`]: the list-scheduling simulator every placer goes through.
//! - [`place`]: baselines (single device, HEFT, m-TOPO, m-ETF, m-SCT, GETF) and the Moirai placer.
//! - [`bound`]: lower bounds on the makespan.
//! - [`report`]: tables and Gantt charts.
//! - [`fleet`]: the agents, their lifecycle and measured profiles, as a pure state machine.
//! - [`replan`]: warm-started replanning on the online agents (the fleet debounces).
//! - [`lp`]: the LP relaxations the baselines and bounds solve (microlp).
//! - [`broker`], [`bus`], [`serve`]: the embedded MQTT broker, fetching retained views, and
//!   the orchestrator's main loop, which reports [`serve::ServeEvent`]s.
//! - [`infer`]: distributed inference sessions, their requests and HTTP endpoint.
//! - [`rollout`], [`security`], [`local_agent`]: staged rollout, TLS and device tables, agent
//!   processes on this machine.
//!
//! Options and printing are the binary's (`src/commands/`, one file per subcommand).

pub mod bound;
pub mod broker;
pub mod bus;
pub mod cluster;
pub mod costing;
pub mod fleet;
pub mod infer;
pub mod local_agent;
pub mod lp;
pub mod place;
pub mod replan;
pub mod report;
pub mod rollout;
pub mod security;
pub mod serve;
pub mod simulate;

#[cfg(test)]
pub(crate) mod testutil;
