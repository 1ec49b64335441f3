//! The wire protocol between the orchestrator and the agents: every MQTT topic, every message
//! and every size limit.
//!
//! - [`topic`]: the topic layout under a configurable prefix (default `moirai/v1`), built and
//!   parsed only here.
//! - [`life`]: the lifecycle, Sparkplug B adapted: the orchestrator's retained
//!   [`life::OrchState`], an agent's [`life::Birth`], its [`life::Death`] (registered as the
//!   MQTT Last Will, carrying the same `bd_seq`), [`life::Heartbeat`] and the orchestrator's
//!   [`life::Command`]s.
//! - [`profile`]: [`profile::ProfileRequest`] (kernel signatures to time) and the chunked
//!   [`profile::ProfileReport`].
//! - [`assign`]: [`assign::Assignment`], an agent's share of a plan: its ops, the tensors it
//!   receives and sends, and the plan epoch.
//! - [`rollout`]: a new agent binary offered in chunks, tried, kept or rolled back.
//! - [`data`]: distributed inference: [`data::SubgraphSpec`], [`data::WeightChunk`],
//!   [`data::ExecStatus`], [`data::ActivationChunk`], [`data::ServingStats`].
//! - [`codec`]: the frame every payload is sent in: one version byte, then postcard; decoding
//!   checks the size limit first and never panics.
//!
//! No I/O here: the MQTT loops turn bytes into these messages and hand them to pure state
//! machines.

pub mod assign;
pub mod codec;
pub mod data;
pub mod life;
pub mod profile;
pub mod rollout;
pub mod topic;

use thiserror::Error;

pub use codec::{decode, encode, WireMessage};
pub use topic::{Topic, TopicKind};

/// Version of the wire protocol, the first byte of every payload. Bumped on any change of a
/// message layout or of what the topics mean. 4: the inference worker rides on the agent's
/// session; who takes shares is known from births and deaths (no `infer/<n>/hello|gone`), so
/// an agent of 3 would wait for shares that never come: it is refused instead.
pub const PROTOCOL_VERSION: u8 = 4;

/// Longest agent name, board class or adapter name, in bytes.
pub const NAME_LEN: usize = 32;

/// An agent's name: also its MQTT client id and its topic segment.
pub type AgentName = heapless::String<NAME_LEN>;

/// Which message a payload was meant to be (for errors and drop counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageKind {
    OrchState,
    Birth,
    Death,
    Heartbeat,
    Command,
    ProfileRequest,
    ProfileReport,
    Assignment,
    Probe,
    FleetSnapshot,
    UpgradeOffer,
    UpgradeChunk,
    UpgradeStatus,
    SubgraphSpec,
    WeightChunk,
    ExecStatus,
    ActivationChunk,
    ServingStats,
    DirectAddr,
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// The one message every protocol version can read: why the orchestrator refuses an agent.
///
/// An agent whose birth carries another protocol version cannot decode anything this
/// orchestrator encodes, so the refusal travels as plain UTF-8 text on the agent's `refused`
/// topic, a layout no version bump may change.
pub mod refusal {
    /// Longest refusal text an agent reads; the rest is cut.
    pub const MAX_LEN: usize = 512;

    /// The text sent to an agent speaking protocol `found` to an orchestrator speaking
    /// `expected`.
    pub fn protocol_mismatch(agent: &str, found: u8, expected: u8) -> String {
        format!(
            "agent `{agent}` speaks wire protocol {found}, this orchestrator speaks {expected}: \
             refused; install an agent built for protocol {expected} (or upgrade the orchestrator)"
        )
    }

    /// Reads a refusal payload: lossy UTF-8, at most [`MAX_LEN`] bytes, control characters
    /// dropped (the text ends up in logs and terminals).
    pub fn read(payload: &[u8]) -> String {
        let cut = &payload[..payload.len().min(MAX_LEN)];
        String::from_utf8_lossy(cut)
            .chars()
            .filter(|c| !c.is_control())
            .collect()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn hostile_refusals_are_cut_and_cleaned() {
            let mut p = b"bad\x1b[2J\n".to_vec();
            p.extend(vec![b'x'; 2000]);
            p.push(0xff);
            let t = super::read(&p);
            assert!(t.starts_with("bad[2J"));
            assert_eq!(t.len(), super::MAX_LEN - 2);
        }

        #[test]
        fn the_mismatch_names_both_versions() {
            let t = super::protocol_mismatch("pi-1", 2, 1);
            assert!(t.contains("`pi-1`") && t.contains("protocol 2") && t.contains("speaks 1"));
        }
    }
}

/// Why a payload or topic was rejected.
#[derive(Debug, Error)]
pub enum WireError {
    #[error("{kind} payload is empty")]
    Empty { kind: MessageKind },
    #[error("{kind} payload is {len} bytes, over its limit of {max}")]
    TooLarge {
        kind: MessageKind,
        len: usize,
        max: usize,
    },
    #[error("{kind} payload has protocol version {found}, expected {expected}")]
    Version {
        kind: MessageKind,
        found: u8,
        expected: u8,
    },
    #[error("{kind} payload does not decode: {source}")]
    Decode {
        kind: MessageKind,
        source: postcard::Error,
    },
    #[error("{kind} payload has {extra} trailing bytes")]
    Trailing { kind: MessageKind, extra: usize },
    #[error("{kind} cannot be encoded: {source}")]
    Encode {
        kind: MessageKind,
        source: postcard::Error,
    },
    #[error("topic `{topic}`: {reason}")]
    Topic { topic: String, reason: &'static str },
    #[error("name `{name}` is longer than {max} bytes")]
    NameTooLong { name: String, max: usize },
}

/// Builds a bounded name, naming the value when it does not fit.
pub fn bounded<const N: usize>(s: &str) -> Result<heapless::String<N>, WireError> {
    heapless::String::try_from(s).map_err(|_| WireError::NameTooLong {
        name: s.to_string(),
        max: N,
    })
}

/// A bounded string cut at `N` bytes (on a character boundary): for free text such as
/// adapter names where losing the tail is harmless.
pub fn truncated<const N: usize>(s: &str) -> heapless::String<N> {
    let mut end = s.len().min(N);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    heapless::String::try_from(&s[..end]).unwrap_or_default()
}

/// Where a broker listens: `mqtt://host:port`, `tcp://host:port` or `host:port` (port 1883
/// when left out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
}

impl BrokerAddr {
    pub fn parse(url: &str) -> Result<Self, WireError> {
        let bad = |reason| WireError::Topic {
            topic: url.to_string(),
            reason,
        };
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .unwrap_or(url);
        if rest.contains("://") {
            return Err(bad("only mqtt:// and tcp:// brokers are supported"));
        }
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, _)) if !h.ends_with(']') && h.contains(':') => (rest, 1883),
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad("the port is not a number from 0 to 65535"))?,
            ),
            None => (rest, 1883),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mqtt://{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_and_without_scheme_and_port() {
        assert_eq!(
            BrokerAddr::parse("mqtt://10.0.0.2:1884").unwrap(),
            BrokerAddr {
                host: "10.0.0.2".into(),
                port: 1884
            }
        );
        assert_eq!(BrokerAddr::parse("localhost").unwrap().port, 1883);
        assert_eq!(BrokerAddr::parse("tcp://h:7/").unwrap().host, "h");
        assert!(BrokerAddr::parse("ws://h:1").is_err());
        assert!(BrokerAddr::parse("h:99999").is_err());
        assert!(BrokerAddr::parse("mqtt://:1").is_err());
    }
}
