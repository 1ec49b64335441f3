//! The port between the agent's link and its inference worker: their traffic on one MQTT session.
//!
//! An agent has one session with the broker, under one client id, its TLS and its login: the
//! link loop's. The inference worker never touches MQTT: the link subscribes to the worker's
//! topics, hands it what arrives on them ([`DataIn`]) and publishes what it sends
//! ([`DataOut`]) in the order it was sent. So shares, weights, activations and statuses
//! travel under the same credentials as births and heartbeats, and a board that leaves has
//! one Last Will, not two.

use rumqttc::Publish;
use tokio::sync::mpsc;

/// Messages the link holds for a busy worker, at most; the link then waits for the worker
/// (a worker that stops reading stops the link's heartbeats too, and the board is held dead).
pub const INBOX: usize = 4096;

/// What the link hands the worker.
#[derive(Debug)]
pub enum DataIn {
    /// A new connection (its subscriptions are made): republish what must be retained.
    Connected,
    /// A publish on one of the worker's topics.
    Message(Publish),
}

/// What the worker asks the link to publish (QoS 1).
#[derive(Debug)]
pub struct DataOut {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// The link's end: the worker's topics and both directions.
#[derive(Debug)]
pub struct DataLink {
    pub subscriptions: Vec<String>,
    pub to_worker: mpsc::Sender<DataIn>,
    pub from_worker: mpsc::UnboundedReceiver<DataOut>,
}

/// The worker's end.
#[derive(Debug)]
pub struct DataPort {
    pub inbox: mpsc::Receiver<DataIn>,
    pub outbox: Outbox,
}

/// Where the worker's publishes go.
#[derive(Clone, Debug)]
pub struct Outbox(mpsc::UnboundedSender<DataOut>);

impl Outbox {
    /// Encodes `msg` and hands it to the link; a message that does not encode is logged.
    pub fn send<M: moirai_core::wire::WireMessage>(&self, topic: String, msg: &M, retain: bool) {
        match moirai_core::wire::encode(msg) {
            Ok(payload) => self.send_bytes(topic, payload, retain),
            Err(e) => tracing::warn!(%topic, error = %e, "cannot encode"),
        }
    }

    /// Hands already encoded bytes to the link.
    pub fn send_bytes(&self, topic: String, payload: Vec<u8>, retain: bool) {
        let _ = self.0.send(DataOut {
            topic,
            payload,
            retain,
        });
    }
}

/// Both ends, for a worker subscribed to `subscriptions`.
pub fn pair(subscriptions: Vec<String>) -> (DataLink, DataPort) {
    let (to_worker, inbox) = mpsc::channel(INBOX);
    let (outbox, from_worker) = mpsc::unbounded_channel();
    (
        DataLink {
            subscriptions,
            to_worker,
            from_worker,
        },
        DataPort {
            inbox,
            outbox: Outbox(outbox),
        },
    )
}
