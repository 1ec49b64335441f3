//! The orchestrator's MQTT side: connection options (its Last Will is the retained
//! `online: false`), the subscriptions, and the translation between bytes on topics and the
//! fleet's [`Inbound`] messages. No state lives here.

use std::time::Duration;

use moirai_core::wire::data::ServingStats;
use moirai_core::wire::life::{Birth, Death, FleetSnapshot, Heartbeat, OrchState};
use moirai_core::wire::profile::ProfileReport;
use moirai_core::wire::topic::Topics;
use moirai_core::wire::{decode, encode, BrokerAddr, Topic, TopicKind, WireError};
use rumqttc::{AsyncClient, EventLoop, LastWill, MqttOptions, QoS};

use crate::fleet::Inbound;

/// Options for the orchestrator's client. `session` identifies this orchestrator run.
pub fn options(addr: &BrokerAddr, client_id: &str, topics: &Topics, session: u64) -> MqttOptions {
    let mut o = moirai_link::mqtt::options(client_id, addr);
    let offline = encode(&OrchState {
        online: false,
        session,
    })
    .unwrap_or_default();
    o.set_last_will(LastWill::new(
        topics.orch_state(),
        offline,
        QoS::AtLeastOnce,
        true,
    ));
    o
}

/// A client and its event loop; the request channel is large so that publishing from the
/// select loop never waits on it.
pub fn connect(opts: MqttOptions) -> (AsyncClient, EventLoop) {
    AsyncClient::new(opts, 8192)
}

/// Topic filters the orchestrator listens to.
pub fn filters(topics: &Topics) -> Vec<String> {
    [
        TopicKind::Birth,
        TopicKind::Death,
        TopicKind::Heartbeat,
        TopicKind::ProfileReport,
    ]
    .into_iter()
    .map(|k| topics.all_agents(k))
    .collect()
}

/// When a payload failed because its sender speaks another wire protocol, and it is a
/// birth (sent once per session, so one refusal per attempt to join): the agent and the
/// text to send it.
pub fn refusal_for(topics: &Topics, topic: &str, error: &WireError) -> Option<(String, String)> {
    let WireError::Version {
        found, expected, ..
    } = error
    else {
        return None;
    };
    match topics.parse(topic).ok()? {
        Topic::Agent {
            name,
            kind: TopicKind::Birth,
        } => Some((
            name.to_string(),
            moirai_core::wire::refusal::protocol_mismatch(name.as_str(), *found, *expected),
        )),
        _ => None,
    }
}

/// Decodes a publish. `Ok(None)`: a topic the fleet does not act on (its own state, a
/// command echo). A name inside a payload must match the topic.
pub fn decode_inbound(
    topics: &Topics,
    topic: &str,
    payload: &[u8],
) -> Result<Option<Inbound>, WireError> {
    let Topic::Agent { name, kind } = topics.parse(topic)? else {
        return Ok(None);
    };
    let name_s = name.to_string();
    Ok(Some(match kind {
        TopicKind::Birth => {
            let b: Birth = decode(payload)?;
            if b.name != name {
                return Err(WireError::Topic {
                    topic: topic.to_string(),
                    reason: "the birth names another agent than its topic",
                });
            }
            Inbound::Birth(b)
        }
        TopicKind::Death => Inbound::Death {
            name: name_s,
            death: decode::<Death>(payload)?,
        },
        TopicKind::Heartbeat => Inbound::Heartbeat {
            name: name_s,
            heartbeat: decode::<Heartbeat>(payload)?,
        },
        TopicKind::ProfileReport => Inbound::Report {
            name: name_s,
            report: decode::<ProfileReport>(payload)?,
        },
        _ => return Ok(None),
    }))
}

/// Connects as a short-lived observer and waits up to `wait` for the retained fleet
/// snapshot. `Ok(None)`: no orchestrator has published one on this broker and prefix.
pub async fn fetch_snapshot(
    addr: &BrokerAddr,
    topics: &Topics,
    wait: Duration,
) -> Result<Option<FleetSnapshot>, FetchError> {
    Ok(fetch_view(addr, topics, wait, false).await?.snapshot)
}

/// What `moirai fleet` shows: the registry and, where an inference session runs, its
/// serving figures. Either may be missing.
#[derive(Clone, Debug, Default)]
pub struct FleetView {
    pub snapshot: Option<FleetSnapshot>,
    pub serving: Option<ServingStats>,
}

/// Once one retained message arrived, the other gets this long (retained messages arrive
/// together right after the subscription; a missing one should not cost the whole wait).
const SECOND_MESSAGE_GRACE: Duration = Duration::from_millis(300);

/// Connects as a short-lived observer and collects the retained fleet snapshot and (with
/// `serving`) the serving figures, waiting up to `wait` in all.
pub async fn fetch_view(
    addr: &BrokerAddr,
    topics: &Topics,
    wait: Duration,
    serving: bool,
) -> Result<FleetView, FetchError> {
    let id = format!("moirai-fleet-{}", std::process::id());
    let o = moirai_link::mqtt::options(id, addr);
    let (client, mut el) = AsyncClient::new(o, 16);
    let (fleet_topic, serving_topic) = (topics.orch_fleet(), topics.orch_serving());
    let mut view = FleetView::default();
    let complete = |v: &FleetView| v.snapshot.is_some() && (!serving || v.serving.is_some());
    let deadline = tokio::time::Instant::now() + wait;
    let mut until = deadline;
    loop {
        let ev = match tokio::time::timeout_at(until, el.poll()).await {
            Ok(ev) => ev,
            Err(_) => break,
        };
        match ev {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                let mut subs = vec![fleet_topic.clone()];
                if serving {
                    subs.push(serving_topic.clone());
                }
                for t in subs {
                    client
                        .subscribe(t, QoS::AtLeastOnce)
                        .await
                        .map_err(|e| FetchError::Mqtt(e.to_string()))?;
                }
            }
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                if p.topic == fleet_topic {
                    view.snapshot =
                        Some(decode::<FleetSnapshot>(&p.payload).map_err(FetchError::Wire)?);
                } else if p.topic == serving_topic {
                    view.serving =
                        Some(decode::<ServingStats>(&p.payload).map_err(FetchError::Wire)?);
                } else {
                    continue;
                }
                if complete(&view) {
                    break;
                }
                until = deadline.min(tokio::time::Instant::now() + SECOND_MESSAGE_GRACE);
            }
            Ok(_) => {}
            Err(e) => {
                let _ = client.try_disconnect();
                return Err(FetchError::Mqtt(e.to_string()));
            }
        }
    }
    let _ = client.try_disconnect();
    Ok(view)
}

/// Why `moirai fleet` could not read the registry.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("broker: {0}")]
    Mqtt(String),
    #[error("fleet snapshot: {0}")]
    Wire(WireError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::testutil::birth;
    use proptest::prelude::*;

    #[test]
    fn a_birth_on_its_own_topic_decodes_and_on_another_is_refused() {
        let t = Topics::default();
        let bytes = encode(&birth("a", "pi5", 3)).unwrap();
        match decode_inbound(&t, &t.agent("a", TopicKind::Birth), &bytes).unwrap() {
            Some(Inbound::Birth(b)) => assert_eq!(b.bd_seq, 3),
            other => panic!("{other:?}"),
        }
        assert!(decode_inbound(&t, &t.agent("b", TopicKind::Birth), &bytes).is_err());
    }

    #[test]
    fn the_orchestrators_own_topics_are_not_inbound() {
        let t = Topics::default();
        let bytes = encode(&OrchState {
            online: true,
            session: 1,
        })
        .unwrap();
        assert!(decode_inbound(&t, &t.orch_state(), &bytes)
            .unwrap()
            .is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_payloads_on_every_topic_never_panic(kind in 0usize..8, bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let t = Topics::default();
            let _ = decode_inbound(&t, &t.agent("a", TopicKind::ALL[kind]), &bytes);
        }
    }
}
