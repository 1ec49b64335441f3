//! Workspace integration tests, one module per area.

mod boards;
mod coarsen;
mod import;
