//! `moirai-model`: a model as both sides of Moirai handle it.
//!
//! - [`import`]: ONNX files into nodes with shapes, dtypes and costs ([`import::onnx`]), and
//!   profiled-graph/v1 JSON into a [`moirai_core::Graph`] ([`import::profiled`]).
//! - [`coarsen`]: the nodes fused the way an executor fuses them, each group with the
//!   [`moirai_core::kernel::KernelSignature`] agents profile and run.
//! - [`ops`]: the one op table (cost kind, family, commutativity) every other module asks.
//! - [`loaded`]: a model file read, hashed, imported and coarsened ([`loaded::LoadedModel`]).
//! - [`split`]: a placement of the groups cut into one share per agent
//!   ([`moirai_core::wire::data::SubgraphSpec`]); [`submodel`]: a share as a standalone ONNX
//!   model with exactly its weights.
//! - [`tensor_proto`]: ONNX `TensorProto` files of every boundary dtype.
//! - [`profiles`]: a profile table (`moirai-profiles/v1`) kept in a file.
//!
//! The orchestrator plans with it and the agents execute with it; neither side's I/O loops
//! live here.

pub mod coarsen;
pub mod import;
pub mod loaded;
pub mod ops;
pub mod profiles;
pub mod split;
pub mod submodel;
pub mod tensor_proto;
