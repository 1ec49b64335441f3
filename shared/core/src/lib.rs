//! `moirai-core`: what the orchestrator and the agents both speak.
//!
//! - [`graph`]: the operator DAG the placer works on ([`graph::Graph`]), annotated with
//!   per-device run time, resident memory and per-edge transfer cost, and its
//!   `profiled-graph/v1` JSON form ([`graph::format`]).
//! - [`plan`]: a [`plan::Schedule`] (ops and transfers on a time axis) and the validator that
//!   checks it against every rule of the cost model ([`plan::check`]).
//! - [`kernel`]: the signature of a fused kernel, the unit agents profile and execute.
//! - [`device`]: board classes ([`device::BoardSpec`]) and clusters ([`device::Cluster`]).
//! - [`cost`]: the roofline cost model, the profile table that replaces it, and the costed
//!   graph every caller builds the same way ([`cost::plan`]); [`link`]: transfer times.
//! - [`tensor`]: tensor values of every boundary dtype, as requests and activations carry them.
//! - [`wire`]: the MQTT topics and messages between orchestrator and agents.
//! - [`digest`] (SHA-256) and [`stats`] (percentiles): one of each for both sides.
//!
//! No async and no I/O here: everything is plain data and pure functions, so both sides and
//! the tests can use it without a runtime.

pub mod cost;
pub mod device;
pub mod digest;
pub mod graph;
pub mod ids;
pub mod kernel;
pub mod link;
pub mod plan;
pub mod stats;
pub mod tensor;
pub mod wire;

pub use graph::Graph;
pub use ids::{DeviceId, EdgeId, OpId};
pub use plan::Schedule;
