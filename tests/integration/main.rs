//! Workspace integration tests, one module per area.

mod boards;
mod coarsen;
mod fleet;
mod import;
mod placement;
mod security;
