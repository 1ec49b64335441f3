//! Workspace integration tests, one module per area.

mod boards;
mod broker;
mod coarsen;
mod conformance;
mod costing;
mod fleet;
mod import;
mod infer;
mod layout;
mod placement;
mod rollout;
mod security;
