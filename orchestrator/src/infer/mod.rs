//! Distributed inference: the model runs where it was placed.
//!
//! - [`model`]: [`model::InferModel`] (imported, coarsened, hashed, with its weights) and one
//!   plan epoch ([`model::plan_epoch`]).
//! - [`split`]: a placement cut into one [`moirai_shared::wire::data::SubgraphSpec`] per agent.
//! - [`submodel`]: an agent's nodes and exactly their weights as a standalone ONNX model
//!   (what agents execute; built by the agent from a hash-checked local copy, or streamed).
//! - [`requests`]: the requests in flight, a pure state machine (epochs, reruns, outputs).
//! - [`session`]: the MQTT loop on the orchestrator: plans, weights, inputs, outputs.
//! - [`tensor`]: ONNX `TensorProto` files (`input_0.pb`) in and out.
//! - [`run`]: `moirai run`, a local fleet for one distributed inference (and `--bench`,
//!   `--serve`).
//! - [`http`]: `POST /v1/infer`, `GET /v1/metrics` (Prometheus text).
//! - [`client`]: `moirai infer` against that endpoint.

pub mod client;
pub mod http;
pub mod model;
pub mod requests;
pub mod run;
pub mod session;
pub mod split;
pub mod submodel;
pub mod tensor;

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong serving a request or preparing the model.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Import(#[from] crate::import::onnx::ImportError),
    #[error(transparent)]
    Submodel(#[from] submodel::SubmodelError),
    #[error(transparent)]
    Split(#[from] split::SplitError),
    #[error(transparent)]
    Wire(#[from] moirai_shared::wire::WireError),
    #[error(transparent)]
    Tensor(#[from] tensor::TensorError),
    #[error("the request lacks the model input `{0}`")]
    MissingInput(String),
    #[error("input `{name}` is {got}; the model takes {want}")]
    InputMismatch {
        name: String,
        got: String,
        want: String,
    },
    #[error("output `{tensor}`: {what}")]
    BadOutput { tensor: String, what: String },
    #[error("agent {agent} refused its share of the plan: {reason}")]
    Refused { agent: String, reason: String },
    #[error("agent {agent} failed the request: {reason}")]
    AgentFailed { agent: String, reason: String },
    #[error("planning failed: {0}")]
    Plan(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the inference session stopped")]
    Stopped,
}
