//! MQTT client options and publishing, the same for every client: the orchestrator, the
//! agents, the observers (`moirai fleet`, `moirai rollout`) and the tests.

use std::time::Duration;

use moirai_core::wire::{encode, BrokerAddr, WireMessage};
use rumqttc::{AsyncClient, MqttOptions, QoS};

/// Largest MQTT payload anyone sends or the embedded broker accepts: a weight or activation
/// chunk is 256 KiB, a rollout chunk the same; the largest message (a profile request or a
/// subgraph spec) is 1 MiB. 8 MiB leaves room without letting one packet take a board's memory.
pub const MAX_PAYLOAD: usize = 8 << 20;

/// The packet limit of every client: a payload of [`MAX_PAYLOAD`] plus its topic and header.
pub const MAX_PACKET: usize = MAX_PAYLOAD + 1024;

/// Keep-alive of every client: the broker publishes a Last Will 1.5 times this after a
/// client goes silent.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Options of a client named `client_id` on `broker`: the packet limit, the keep-alive, and
/// a clean session (nothing a client missed while away is worth replaying).
pub fn options(client_id: impl Into<String>, broker: &BrokerAddr) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    o.set_keep_alive(KEEP_ALIVE);
    o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    o.set_clean_session(true);
    o
}

/// Publishes `msg` with QoS 1, not retained, without waiting; an encoding failure or a full
/// client queue is logged, not returned (the loops that call this keep running).
pub fn publish<M: WireMessage>(client: &AsyncClient, topic: String, msg: &M) {
    send(client, topic, msg, false)
}

/// [`publish`], retained (states and addresses a late subscriber must see).
pub fn publish_retained<M: WireMessage>(client: &AsyncClient, topic: String, msg: &M) {
    send(client, topic, msg, true)
}

fn send<M: WireMessage>(client: &AsyncClient, topic: String, msg: &M, retain: bool) {
    match encode(msg) {
        Ok(bytes) => {
            if let Err(e) = client.try_publish(&topic, QoS::AtLeastOnce, retain, bytes) {
                tracing::warn!(%topic, error = %e, "publish dropped");
            }
        }
        Err(e) => tracing::warn!(%topic, error = %e, "cannot encode"),
    }
}
