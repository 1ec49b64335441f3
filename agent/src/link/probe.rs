//! Link probes, as a pure state machine over the events the MQTT loop sees.
//!
//! A probe first publishes a tiny message to the agent's own probe topic (QoS 0) and waits
//! for it to come back: the round trip. Then it publishes `bytes` at QoS 1: the broker's
//! PUBACK ends the upload; the payload coming back ends the download.

use std::time::{Duration, Instant};

use moirai_core::wire::life::LinkStats;

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    Small {
        sent: Instant,
    },
    Large {
        rtt: Duration,
        sent: Instant,
        pkid: Option<u16>,
        acked: Option<Instant>,
    },
}

/// What the loop should publish next.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeStep {
    /// Publish the tiny probe (QoS 0).
    SendSmall {
        seq: u32,
    },
    /// Publish the large probe (QoS 1), and report its packet id with
    /// [`LinkProbe::on_large_sent`].
    SendLarge {
        seq: u32,
        bytes: usize,
    },
    Done(LinkStats),
}

#[derive(Clone, Debug)]
pub struct LinkProbe {
    pub seq: u32,
    bytes: usize,
    phase: Phase,
}

impl LinkProbe {
    pub fn start(seq: u32, bytes: usize, now: Instant) -> (Self, ProbeStep) {
        (
            Self {
                seq,
                bytes,
                phase: Phase::Small { sent: now },
            },
            ProbeStep::SendSmall { seq },
        )
    }

    /// The large probe left with this packet id.
    pub fn on_large_sent(&mut self, id: u16) {
        if let Phase::Large { pkid, .. } = &mut self.phase {
            pkid.get_or_insert(id);
        }
    }

    pub fn on_puback(&mut self, id: u16, now: Instant) {
        if let Phase::Large { pkid, acked, .. } = &mut self.phase {
            if *pkid == Some(id) && acked.is_none() {
                *acked = Some(now);
            }
        }
    }

    /// Our probe `seq` came back.
    pub fn on_echo(&mut self, seq: u32, now: Instant) -> Option<ProbeStep> {
        if seq != self.seq {
            return None;
        }
        match self.phase.clone() {
            Phase::Small { sent } => {
                self.phase = Phase::Large {
                    rtt: now.saturating_duration_since(sent),
                    sent: now,
                    pkid: None,
                    acked: None,
                };
                Some(ProbeStep::SendLarge {
                    seq,
                    bytes: self.bytes,
                })
            }
            Phase::Large {
                rtt, sent, acked, ..
            } => {
                // Without a PUBACK first (it may arrive after the echo) split the time evenly.
                let total = now.saturating_duration_since(sent);
                let acked = acked.unwrap_or(sent + total / 2);
                let tiny = Duration::from_micros(1);
                let up = acked.saturating_duration_since(sent).max(tiny);
                let down = now.saturating_duration_since(acked).max(tiny);
                let b = self.bytes as f64;
                Some(ProbeStep::Done(LinkStats {
                    up_bps: (b / up.as_secs_f64()) as u64,
                    down_bps: (b / down.as_secs_f64()) as u64,
                    rtt_us: rtt.as_micros() as u64,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_measures_rtt_then_up_and_down_rates() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let (mut p, step) = LinkProbe::start(7, 1_000_000, t0);
        assert_eq!(step, ProbeStep::SendSmall { seq: 7 });
        assert_eq!(p.on_echo(6, t0 + ms(1)), None, "someone else's probe");
        assert_eq!(
            p.on_echo(7, t0 + ms(2)),
            Some(ProbeStep::SendLarge {
                seq: 7,
                bytes: 1_000_000
            })
        );
        p.on_large_sent(42);
        p.on_puback(41, t0 + ms(50));
        p.on_puback(42, t0 + ms(102)); // 100 ms up
        match p.on_echo(7, t0 + ms(352)) {
            // 250 ms down
            Some(ProbeStep::Done(s)) => {
                assert_eq!(s.rtt_us, 2000);
                assert!((s.up_bps as i64 - 10_000_000).abs() < 1000, "{s:?}");
                assert!((s.down_bps as i64 - 4_000_000).abs() < 1000, "{s:?}");
            }
            other => panic!("{other:?}"),
        }
    }
}
