//! Workspace integration tests, one module per area.

mod boards;
mod fleet;
mod coarsen;
mod import;
mod security;
