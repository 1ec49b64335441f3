//! Distributed inference: the model runs where it was placed.
//!
//! The model itself ([`moirai_model::loaded::LoadedModel`]), the split of a placement into
//! shares and the sub-models live in `moirai-model`; here:
//! - [`model`]: one plan epoch ([`model::plan_epoch`]).
//! - [`epochs`]: the epochs in force and waiting, a pure state machine (readiness, deaths).
//! - [`requests`]: the requests in flight, a pure state machine (epochs, reruns, outputs).
//! - [`session`]: the MQTT loop on the orchestrator: plans, weights, inputs, outputs.
//! - [`run`]: `moirai run`, a local fleet for one distributed inference (and `--bench`,
//!   `--serve`).
//! - [`http`]: `POST /v1/infer`, `GET /v1/metrics` (Prometheus text).

pub mod epochs;
pub mod http;
pub mod model;
pub mod requests;
pub mod run;
pub mod session;

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
    Import(#[from] moirai_model::import::onnx::ImportError),
    #[error(transparent)]
    Load(#[from] moirai_model::loaded::LoadError),
    #[error(transparent)]
    Submodel(#[from] moirai_model::submodel::SubmodelError),
    #[error(transparent)]
    Split(#[from] moirai_model::split::SplitError),
    #[error(transparent)]
    Wire(#[from] moirai_core::wire::WireError),
    #[error(transparent)]
    Tensor(#[from] moirai_model::tensor_proto::TensorError),
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
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("no agent to plan on")]
    NoAgent,
    #[error(transparent)]
    Profiles(#[from] moirai_model::profiles::StoreError),
    #[error(transparent)]
    Graph(#[from] moirai_core::cost::plan::PlanError),
    #[error(transparent)]
    Place(#[from] crate::place::PlaceError),
    #[error("planning failed: {0}")]
    Plan(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the inference session stopped")]
    Stopped,
}
