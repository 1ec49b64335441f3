//! `moirai-orchestrator`: turns a model and a fleet into a plan and keeps it running.
//!
//! Pipeline stages, one module each:
//! - [`import`]: profiled-graph JSON (and ONNX) into a [`moirai_shared::Graph`].
//! - [`import::onnx`], [`coarsen`], [`cluster`], [`costing`]: an ONNX file and a cluster file
//!   into the costed graph (fusion-aware coarsening, board figures, roofline or profiles).
//! - [`simulate`]: the list-scheduling simulator every placer goes through.
//! - [`place`]: baselines (single device, HEFT, m-TOPO, m-ETF, m-SCT, GETF) and the Moirai placer.
//! - [`bound`]: lower bounds on the makespan.
//! - [`report`]: tables and Gantt charts.

pub mod bound;
pub mod cluster;
pub mod coarsen;
pub mod costing;
pub mod import;
pub mod place;
pub mod report;
pub mod simulate;
