//! One agent process: one MQTT session, one identity, one lifecycle.
//!
//! The link ([`crate::link::run`]) owns the session: birth, heartbeats, profiling, link
//! probes, rollout. The inference worker ([`crate::exec::worker`]) rides on it through a
//! [`crate::port`] pair, so its shares, weights, activations and statuses travel under
//! the same client id, TLS and login. There is no switch for inference: an agent that can
//! execute, does.
//!
//! Stopping: the worker stops first (its last messages, such as clearing its direct address,
//! are queued on the link), then the link says its death and leaves. A link that ends on its
//! own (refused, or a rolled-out release staged) closes the worker's inbox, which ends it.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::config::AgentConfig;
use crate::exec::worker::{self, WorkerError, WorkerOptions};
use crate::link::{self, AdapterInfo, AgentEvent, LinkError, TimerFactory};
use crate::port;
use crate::rollout::Staged;

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the inference worker stopped: {0}")]
    Worker(#[from] WorkerError),
}

/// What one agent process runs.
pub struct AgentParts {
    pub config: AgentConfig,
    /// The adapter the profiler times kernels on (named in the birth).
    pub adapter: AdapterInfo,
    pub timer: TimerFactory,
    /// The executor of the shares; `None` for an agent that only profiles (tests of the
    /// lifecycle, simulated fleets).
    pub worker: Option<WorkerOptions>,
    pub events: Option<mpsc::UnboundedSender<AgentEvent>>,
}

/// How long the worker gets to finish when the agent stops.
const WORKER_STOP: Duration = Duration::from_secs(3);

/// Runs the agent until `shutdown` resolves, the orchestrator refuses it, or a rolled-out
/// release arrived whole (returned for the caller to try).
pub async fn run(
    parts: AgentParts,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Option<Staged>, AgentError> {
    let AgentParts {
        config,
        adapter,
        timer,
        worker: worker_opts,
        events,
    } = parts;
    let (stop_worker, worker_stopped) = oneshot::channel::<()>();
    let (stop_link, link_stopped) = oneshot::channel::<()>();
    let (data, mut worker_task) = match worker_opts {
        Some(opts) => {
            let (link_end, worker_port) =
                port::pair(worker::subscriptions(&config.topics, config.name.as_str()));
            let task = tokio::spawn(worker::run(opts, worker_port, async {
                let _ = worker_stopped.await;
            }));
            (Some(link_end), Some(task))
        }
        None => (None, None),
    };
    let link = link::run(config, adapter, timer, events, data, async {
        let _ = link_stopped.await;
    });
    tokio::pin!(link);
    tokio::pin!(shutdown);
    let worker_ended = async {
        match worker_task.as_mut() {
            Some(t) => t.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = &mut link => {
            // The link left by itself; the worker's inbox is closed and it ends.
            let _ = stop_worker.send(());
            if let Some(t) = worker_task {
                let _ = tokio::time::timeout(WORKER_STOP, t).await;
            }
            Ok(r?)
        }
        ended = worker_ended => {
            // The worker could not start (a local model unreadable, the direct port taken):
            // the agent leaves rather than announce shares it cannot run.
            let _ = stop_link.send(());
            let _ = link.await;
            match ended {
                Ok(Ok(())) => Ok(None),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => {
                    warn!(error = %e, "the inference worker panicked");
                    Err(WorkerError::Runtime(std::io::Error::other(e.to_string())).into())
                }
            }
        }
        _ = &mut shutdown => {
            let _ = stop_worker.send(());
            if let Some(t) = worker_task {
                if tokio::time::timeout(WORKER_STOP, t).await.is_err() {
                    warn!("the inference worker did not stop in time");
                }
            }
            let _ = stop_link.send(());
            Ok(link.await?)
        }
    }
}
