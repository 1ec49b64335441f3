//! `moirai rollout`: a new agent binary to a fraction of the fleet, checked and reversible.
//!
//! The tool reads the orchestrator's retained registry for the online agents, picks the
//! stage (a percentage, at least one agent, by name order so that a later, larger stage
//! includes the earlier one), and sends each the offer and the binary in chunks over the
//! broker (`wire::rollout`). Each agent checks size and SHA-256, starts the new binary on
//! trial and keeps it only if it comes online in time; otherwise it rolls back on its own.
//! The tool waits for every agent's verdict and reports it; the exit status says whether
//! the whole stage switched.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use moirai_core::wire::rollout::{
    chunk_count, UpgradeChunk, UpgradeOffer, UpgradeState, UpgradeStatus, CHUNK_BYTES,
};
use moirai_core::wire::topic::Topics;
use moirai_core::wire::{decode, encode, truncated, BrokerAddr, Topic, TopicKind, WireError};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use thiserror::Error;
use tracing::debug;

use crate::security::{ClientLogin, SecurityError};

/// What to roll out where (`moirai rollout`).
#[derive(Debug, Clone)]
pub struct RolloutOptions {
    /// The orchestrator's broker (`mqtt://host:port`).
    pub broker: String,
    pub prefix: String,
    /// Release name the agents install the binary under (`releases/<VERSION>/`).
    pub to: String,
    /// The agent binary for the boards of this stage (e.g. from `cross/build.sh aarch64`).
    pub binary: PathBuf,
    /// Share of the online agents to switch, e.g. `10%` (at least one agent).
    pub stage: String,
    /// Exactly these agents instead of a share of the registry.
    pub agents: Vec<String>,
    /// Seconds the new binary has to come online before its agent rolls it back.
    pub online_within_s: u32,
    /// How long to wait for the registry.
    pub wait_ms: u64,
    /// TLS and login (the orchestrator's credentials: agents accept offers from it only).
    pub security: ClientLogin,
}

#[derive(Debug, Error)]
pub enum RolloutError {
    #[error("--stage `{0}`: expected a percentage in (0, 100], e.g. 10%")]
    Stage(String),
    #[error("{path}: {source}")]
    Binary {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is empty")]
    EmptyBinary(PathBuf),
    #[error("no orchestrator registry on {0} within the wait (is `moirai serve` running?), and no --agents given")]
    NoRegistry(String),
    #[error("no agent online to roll out to")]
    NoAgents,
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error("broker: {0}")]
    Mqtt(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// A percentage such as `10%` or `10` as a fraction.
pub fn parse_stage(s: &str) -> Result<f64, RolloutError> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| RolloutError::Stage(s.to_string()))?;
    if !(v > 0.0 && v <= 100.0) {
        return Err(RolloutError::Stage(s.to_string()));
    }
    Ok(v / 100.0)
}

/// The agents of a stage: the first `ceil(fraction * n)` (at least one) by name.
pub fn pick_stage(mut online: Vec<String>, fraction: f64) -> Vec<String> {
    online.sort();
    online.dedup();
    let n = ((fraction * online.len() as f64).ceil() as usize).clamp(1, online.len().max(1));
    online.truncate(n);
    online
}

/// Each agent's verdict.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Online,
    RolledBack(String),
    Refused(String),
    NoAnswer,
}

/// Runs a rollout, telling `progress` one line per step of each agent; `Ok(true)` when every
/// agent switched.
pub fn run(
    args: RolloutOptions,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<bool, RolloutError> {
    let fraction = parse_stage(&args.stage)?;
    let binary = std::fs::read(&args.binary).map_err(|source| RolloutError::Binary {
        path: args.binary.clone(),
        source,
    })?;
    if binary.is_empty() {
        return Err(RolloutError::EmptyBinary(args.binary.clone()));
    }
    let addr = BrokerAddr::parse(&args.broker)?;
    let topics = Topics::new(&args.prefix)?;
    let security = args.security.load(None)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RolloutError::Runtime)?;
    let agents = if args.agents.is_empty() {
        // The registry is republished every few seconds: a fleet that is just forming may
        // show up in a later one.
        let until = std::time::Instant::now() + Duration::from_millis(args.wait_ms);
        let online = loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            let snap = rt
                .block_on(crate::bus::fetch_snapshot(&addr, &topics, left))
                .map_err(|e| RolloutError::Mqtt(e.to_string()))?
                .ok_or_else(|| RolloutError::NoRegistry(addr.to_string()))?;
            let online = snap
                .agents
                .iter()
                .filter(|a| a.online)
                .map(|a| a.name.to_string())
                .collect::<Vec<_>>();
            if !online.is_empty() {
                break online;
            }
            if std::time::Instant::now() >= until {
                return Err(RolloutError::NoAgents);
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let total = online.len();
        let stage = pick_stage(online, fraction);
        progress(format!(
            "rollout of {} to {} of {total} online agents ({}): {}",
            args.to,
            stage.len(),
            args.stage,
            stage.join(", ")
        ));
        stage
    } else {
        args.agents.clone()
    };
    let rollout = moirai_link::clock::now_ms().max(1);
    let offer = UpgradeOffer {
        rollout,
        version: truncated(&args.to),
        size: binary.len() as u64,
        sha256: moirai_core::digest::sha256(&binary),
        chunks: chunk_count(binary.len() as u64),
        online_within_s: args.online_within_s,
    };
    let mut opts =
        moirai_link::mqtt::options(format!("moirai-rollout-{}", std::process::id()), &addr);
    security.apply(&mut opts);
    // Transfer at a few MB/s over a slow link, plus the trial.
    let wait =
        Duration::from_secs(u64::from(args.online_within_s) + 30 + binary.len() as u64 / (1 << 20));
    let verdicts = rt.block_on(send_and_wait(
        opts, &topics, &agents, &offer, &binary, wait, progress,
    ))?;
    let mut all = true;
    for (agent, v) in &verdicts {
        let line = match v {
            Verdict::Online => format!("{agent}: online on {}", args.to),
            Verdict::RolledBack(why) => format!("{agent}: rolled back: {why}"),
            Verdict::Refused(why) => format!("{agent}: refused: {why}"),
            Verdict::NoAnswer => format!("{agent}: no answer within {} s", wait.as_secs()),
        };
        all &= *v == Verdict::Online;
        progress(line);
    }
    Ok(all)
}

async fn send_and_wait(
    opts: MqttOptions,
    topics: &Topics,
    agents: &[String],
    offer: &UpgradeOffer,
    binary: &[u8],
    wait: Duration,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<BTreeMap<String, Verdict>, RolloutError> {
    let (client, mut el) = AsyncClient::new(opts, 64);
    let mut verdicts: BTreeMap<String, Verdict> = agents
        .iter()
        .map(|a| (a.clone(), Verdict::NoAnswer))
        .collect();
    let mqtt = |e: rumqttc::ClientError| RolloutError::Mqtt(e.to_string());
    // Statuses first, so that no verdict can be missed.
    client
        .subscribe(
            topics.all_agents(TopicKind::UpgradeStatus),
            QoS::AtLeastOnce,
        )
        .await
        .map_err(mqtt)?;
    let sender = {
        let client = client.clone();
        let topics = topics.clone();
        let agents = agents.to_vec();
        let offer = offer.clone();
        let binary = binary.to_vec();
        async move {
            for a in &agents {
                let o = encode(&offer)?;
                client
                    .publish(
                        topics.agent(a, TopicKind::UpgradeOffer),
                        QoS::AtLeastOnce,
                        false,
                        o,
                    )
                    .await
                    .map_err(mqtt)?;
                for (i, part) in binary.chunks(CHUNK_BYTES).enumerate() {
                    let c = encode(&UpgradeChunk {
                        rollout: offer.rollout,
                        index: i as u32,
                        bytes: part.to_vec(),
                    })?;
                    client
                        .publish(
                            topics.agent(a, TopicKind::UpgradeChunk),
                            QoS::AtLeastOnce,
                            false,
                            c,
                        )
                        .await
                        .map_err(mqtt)?;
                }
            }
            Ok::<(), RolloutError>(())
        }
    };
    let receiver = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(Topic::Agent { name, .. }) = topics.parse(&p.topic) else {
                        continue;
                    };
                    let Some(v) = verdicts.get_mut(name.as_str()) else {
                        continue;
                    };
                    match decode::<UpgradeStatus>(&p.payload) {
                        Ok(s) if s.rollout == offer.rollout => {
                            progress(format!("{name}: {}", describe(&s.state)));
                            match s.state {
                                UpgradeState::Staged => {}
                                UpgradeState::Online { .. } => *v = Verdict::Online,
                                UpgradeState::RolledBack { reason } => {
                                    *v = Verdict::RolledBack(reason.to_string())
                                }
                                UpgradeState::Refused { reason } => {
                                    *v = Verdict::Refused(reason.to_string())
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => debug!(topic = %p.topic, error = %e, "status dropped"),
                    }
                    if verdicts.values().all(|v| *v != Verdict::NoAnswer) {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(RolloutError::Mqtt(e.to_string())),
            }
        }
    };
    let sent_and_answered = async {
        let (sent, answered) = tokio::join!(sender, receiver);
        sent.and(answered)
    };
    let outcome = tokio::time::timeout(wait, sent_and_answered).await;
    let _ = client.try_disconnect();
    match outcome {
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) | Err(_) => Ok(verdicts),
    }
}

fn describe(s: &UpgradeState) -> String {
    match s {
        UpgradeState::Staged => "binary received and checked; trying it".into(),
        UpgradeState::Online { version } => format!("online on {version}"),
        UpgradeState::RolledBack { reason } => format!("rolled back: {reason}"),
        UpgradeState::Refused { reason } => format!("refused: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_percentages_and_grow_by_name() {
        assert_eq!(parse_stage("10%").unwrap(), 0.1);
        assert_eq!(parse_stage("100").unwrap(), 1.0);
        for bad in ["0%", "101%", "ten", "-5%", ""] {
            assert!(parse_stage(bad).is_err(), "{bad}");
        }
        let fleet: Vec<String> = (0..25).rev().map(|i| format!("pi-{i:02}")).collect();
        let ten = pick_stage(fleet.clone(), 0.1);
        assert_eq!(ten, ["pi-00", "pi-01", "pi-02"]);
        let half = pick_stage(fleet.clone(), 0.5);
        assert_eq!(half.len(), 13);
        assert!(
            ten.iter().all(|a| half.contains(a)),
            "a later stage includes the earlier one"
        );
        assert_eq!(pick_stage(vec!["only".into()], 0.01), ["only"]);
    }
}
