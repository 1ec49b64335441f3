//! Every MQTT topic, built and parsed here only.
//!
//! Under a prefix (default [`DEFAULT_PREFIX`]):
//!
//! | topic | from | message |
//! |---|---|---|
//! | `<p>/orchestrator/state` (retained) | orchestrator, and its Last Will | `OrchState` |
//! | `<p>/orchestrator/fleet` (retained) | orchestrator | `FleetSnapshot` |
//! | `<p>/orchestrator/serving` (retained) | orchestrator's inference session | `ServingStats` |
//! | `<p>/agent/<name>/birth` | agent | `Birth` |
//! | `<p>/agent/<name>/death` | agent's Last Will | `Death` |
//! | `<p>/agent/<name>/heartbeat` | agent | `Heartbeat` |
//! | `<p>/agent/<name>/cmd` | orchestrator | `Command` |
//! | `<p>/agent/<name>/profile/request` | orchestrator | `ProfileRequest` |
//! | `<p>/agent/<name>/profile/report` | agent | `ProfileReport` |
//! | `<p>/agent/<name>/assign` | orchestrator | `Assignment` |
//! | `<p>/agent/<name>/probe` | agent, to itself | `Probe` |
//! | `<p>/agent/<name>/upgrade/offer` | `moirai rollout` | `UpgradeOffer` |
//! | `<p>/agent/<name>/upgrade/chunk` | `moirai rollout` | `UpgradeChunk` |
//! | `<p>/agent/<name>/upgrade/status` | agent | `UpgradeStatus` |
//! | `<p>/agent/<name>/refused` | orchestrator | UTF-8 text, outside the codec (see [`super::refusal`]) |
//!
//! Distributed inference ([`Topics::infer`], [`Topics::parse_infer`]), on the same session
//! as the agent's topics (who takes shares is known from births and deaths):
//!
//! | topic | from | message |
//! |---|---|---|
//! | `<p>/infer/<name>/subgraph` | orchestrator | `SubgraphSpec` |
//! | `<p>/infer/<name>/weights` | orchestrator | `WeightChunk` |
//! | `<p>/infer/<name>/status` | agent | `ExecStatus` |
//! | `<p>/infer/<name>/direct` (retained) | agent with the direct data path | `DirectAddr` (empty payload: gone) |
//! | `<p>/infer/<name>/act` | orchestrator or a peer | `ActivationChunk` |
//! | `<p>/infer/result` | agents | `ActivationChunk` (graph outputs) |

use super::{bounded, AgentName, WireError};

/// Prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "moirai/v1";

/// The kinds of per-agent topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopicKind {
    Birth,
    Death,
    Heartbeat,
    Command,
    ProfileRequest,
    ProfileReport,
    Assign,
    Probe,
    Refused,
    UpgradeOffer,
    UpgradeChunk,
    UpgradeStatus,
}

impl TopicKind {
    pub const ALL: [TopicKind; 12] = [
        TopicKind::Birth,
        TopicKind::Death,
        TopicKind::Heartbeat,
        TopicKind::Command,
        TopicKind::ProfileRequest,
        TopicKind::ProfileReport,
        TopicKind::Assign,
        TopicKind::Probe,
        TopicKind::Refused,
        TopicKind::UpgradeOffer,
        TopicKind::UpgradeChunk,
        TopicKind::UpgradeStatus,
    ];

    fn suffix(self) -> &'static str {
        match self {
            TopicKind::Birth => "birth",
            TopicKind::Death => "death",
            TopicKind::Heartbeat => "heartbeat",
            TopicKind::Command => "cmd",
            TopicKind::ProfileRequest => "profile/request",
            TopicKind::ProfileReport => "profile/report",
            TopicKind::Assign => "assign",
            TopicKind::Probe => "probe",
            TopicKind::Refused => "refused",
            TopicKind::UpgradeOffer => "upgrade/offer",
            TopicKind::UpgradeChunk => "upgrade/chunk",
            TopicKind::UpgradeStatus => "upgrade/status",
        }
    }
}

/// A parsed topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topic {
    OrchState,
    OrchFleet,
    OrchServing,
    Agent { name: AgentName, kind: TopicKind },
}

/// Topic layout under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }
}

impl Topics {
    /// A layout under `prefix` (no leading or trailing `/`, no wildcards).
    pub fn new(prefix: &str) -> Result<Self, WireError> {
        let bad = |reason| {
            Err(WireError::Topic {
                topic: prefix.to_string(),
                reason,
            })
        };
        if prefix.is_empty() {
            return bad("the prefix is empty");
        }
        if prefix.starts_with('/') || prefix.ends_with('/') {
            return bad("the prefix starts or ends with `/`");
        }
        if prefix.contains(['+', '#', '\0']) || prefix.split('/').any(str::is_empty) {
            return bad("the prefix has a wildcard, a NUL or an empty level");
        }
        Ok(Self {
            prefix: prefix.to_string(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn orch_state(&self) -> String {
        format!("{}/orchestrator/state", self.prefix)
    }

    pub fn orch_fleet(&self) -> String {
        format!("{}/orchestrator/fleet", self.prefix)
    }

    /// Retained [`super::data::ServingStats`] of the inference session.
    pub fn orch_serving(&self) -> String {
        format!("{}/orchestrator/serving", self.prefix)
    }

    pub fn agent(&self, name: &str, kind: TopicKind) -> String {
        format!("{}/agent/{name}/{}", self.prefix, kind.suffix())
    }

    /// Filter matching `kind` for every agent.
    pub fn all_agents(&self, kind: TopicKind) -> String {
        format!("{}/agent/+/{}", self.prefix, kind.suffix())
    }

    /// Parses a topic of this layout.
    pub fn parse(&self, topic: &str) -> Result<Topic, WireError> {
        let bad = |reason| WireError::Topic {
            topic: topic.to_string(),
            reason,
        };
        let rest = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| bad("outside the prefix"))?;
        match rest {
            "orchestrator/state" => return Ok(Topic::OrchState),
            "orchestrator/fleet" => return Ok(Topic::OrchFleet),
            "orchestrator/serving" => return Ok(Topic::OrchServing),
            _ => {}
        }
        let rest = rest
            .strip_prefix("agent/")
            .ok_or_else(|| bad("neither orchestrator nor agent"))?;
        let (name, suffix) = rest.split_once('/').ok_or_else(|| bad("no kind"))?;
        let name = agent_name(name).map_err(|_| bad("bad agent name"))?;
        let kind = TopicKind::ALL
            .into_iter()
            .find(|k| k.suffix() == suffix)
            .ok_or_else(|| bad("unknown kind"))?;
        Ok(Topic::Agent { name, kind })
    }
}

/// The kinds of per-agent inference topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InferKind {
    Subgraph,
    Weights,
    Status,
    Act,
    /// Where the agent takes activations over TCP (retained; empty when it left).
    Direct,
}

impl InferKind {
    pub const ALL: [InferKind; 5] = [
        InferKind::Subgraph,
        InferKind::Weights,
        InferKind::Status,
        InferKind::Act,
        InferKind::Direct,
    ];

    fn suffix(self) -> &'static str {
        match self {
            InferKind::Subgraph => "subgraph",
            InferKind::Weights => "weights",
            InferKind::Status => "status",
            InferKind::Act => "act",
            InferKind::Direct => "direct",
        }
    }
}

/// A parsed inference topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InferTopic {
    Agent {
        name: AgentName,
        kind: InferKind,
    },
    /// Graph outputs, to the orchestrator.
    Result,
}

impl Topics {
    /// Per-agent inference topic.
    pub fn infer(&self, name: &str, kind: InferKind) -> String {
        format!("{}/infer/{name}/{}", self.prefix, kind.suffix())
    }

    /// Filter matching `kind` for every agent.
    pub fn infer_all(&self, kind: InferKind) -> String {
        format!("{}/infer/+/{}", self.prefix, kind.suffix())
    }

    /// Where graph outputs go.
    pub fn infer_result(&self) -> String {
        format!("{}/infer/result", self.prefix)
    }

    /// Parses an inference topic of this layout.
    pub fn parse_infer(&self, topic: &str) -> Result<InferTopic, WireError> {
        let bad = |reason| WireError::Topic {
            topic: topic.to_string(),
            reason,
        };
        let rest = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix("/infer/"))
            .ok_or_else(|| bad("outside the inference topics"))?;
        if rest == "result" {
            return Ok(InferTopic::Result);
        }
        let (name, suffix) = rest.split_once('/').ok_or_else(|| bad("no kind"))?;
        let name = agent_name(name).map_err(|_| bad("bad agent name"))?;
        let kind = InferKind::ALL
            .into_iter()
            .find(|k| k.suffix() == suffix)
            .ok_or_else(|| bad("unknown kind"))?;
        Ok(InferTopic::Agent { name, kind })
    }
}

/// Checks that `s` can be an agent name: 1 to 32 bytes of letters, digits, `-`, `_`, `.`.
pub fn agent_name(s: &str) -> Result<AgentName, WireError> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(WireError::Topic {
            topic: s.to_string(),
            reason: "an agent name is 1 to 32 letters, digits, `-`, `_` or `.`",
        });
    }
    bounded(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_agent_topic_parses_back_to_its_name_and_kind() {
        let t = Topics::new("lab/moirai").unwrap();
        for kind in TopicKind::ALL {
            let topic = t.agent("board-1", kind);
            assert_eq!(
                t.parse(&topic).unwrap(),
                Topic::Agent {
                    name: agent_name("board-1").unwrap(),
                    kind
                }
            );
        }
        assert_eq!(t.parse(&t.orch_state()).unwrap(), Topic::OrchState);
        assert_eq!(t.parse(&t.orch_fleet()).unwrap(), Topic::OrchFleet);
        assert_eq!(t.parse(&t.orch_serving()).unwrap(), Topic::OrchServing);
    }

    #[test]
    fn topics_have_the_documented_layout() {
        let t = Topics::default();
        assert_eq!(t.orch_state(), "moirai/v1/orchestrator/state");
        assert_eq!(
            t.agent("a", TopicKind::ProfileReport),
            "moirai/v1/agent/a/profile/report"
        );
        assert_eq!(t.all_agents(TopicKind::Birth), "moirai/v1/agent/+/birth");
    }

    #[test]
    fn foreign_and_malformed_topics_are_rejected() {
        let t = Topics::default();
        for bad in [
            "other/agent/a/birth",
            "moirai/v1",
            "moirai/v1/agent/a",
            "moirai/v1/agent/a/unknown",
            "moirai/v1/agent//birth",
            "moirai/v1/agent/a+b/birth",
            "moirai/v1/agent/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/birth",
            "moirai/v1x/agent/a/birth",
        ] {
            assert!(t.parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn bad_prefixes_are_rejected() {
        for p in ["", "/a", "a/", "a/+/b", "a//b", "#"] {
            assert!(Topics::new(p).is_err(), "{p:?} accepted");
        }
    }

    #[test]
    fn every_inference_topic_parses_back() {
        let t = Topics::new("lab/moirai").unwrap();
        for kind in InferKind::ALL {
            assert_eq!(
                t.parse_infer(&t.infer("board-1", kind)).unwrap(),
                InferTopic::Agent {
                    name: agent_name("board-1").unwrap(),
                    kind
                }
            );
        }
        assert_eq!(
            t.parse_infer(&t.infer_result()).unwrap(),
            InferTopic::Result
        );
        assert_eq!(t.infer_all(InferKind::Act), "lab/moirai/infer/+/act");
        for bad in [
            "lab/moirai/infer/a",
            "lab/moirai/infer/a/x",
            "lab/moirai/agent/a/act",
            "lab/moirai/infer/a+/act",
            // Membership is the agent's birth and death; these are gone.
            "lab/moirai/infer/a/hello",
            "lab/moirai/infer/a/gone",
        ] {
            assert!(t.parse_infer(bad).is_err(), "{bad} parsed");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_topics_never_panic(s in ".{0,80}") {
            let _ = Topics::default().parse(&s);
        }
    }
}
