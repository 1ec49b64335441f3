//! Link transfer times: how long a tensor of a given size takes between two devices.
//!
//! A link ([`LinkSpec`]) is a bandwidth and a one-way latency. The time to move `bytes` is
//! `latency + bytes * 8 / bandwidth`: store-and-forward of one message, no pipelining across
//! tensors (the placer's port model serialises transfers on each device anyway). [`Links`]
//! holds one for every ordered pair of devices: a cluster file's network, or the fleet's
//! measured rates through the broker.

use serde::{Deserialize, Serialize};

/// A directed network path between two devices.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// Sustained payload bandwidth, in megabits per second (10^6 bit/s).
    pub bandwidth_mbps: f64,
    /// One-way latency per transfer, in milliseconds.
    pub latency_ms: f64,
}

impl LinkSpec {
    /// Time in ms to move `bytes` over this link.
    pub fn transfer_ms(&self, bytes: u64) -> f64 {
        let bits = bytes as f64 * 8.0;
        self.latency_ms + bits / (self.bandwidth_mbps * 1e6) * 1e3
    }

    /// The same link capped at `cap_mbps` (a NIC slower than the network).
    pub fn capped(self, cap_mbps: f64) -> LinkSpec {
        LinkSpec {
            bandwidth_mbps: self.bandwidth_mbps.min(cap_mbps),
            ..self
        }
    }

    /// Whether both figures are usable (bandwidth > 0, latency >= 0, both finite).
    pub fn is_valid(&self) -> bool {
        self.bandwidth_mbps.is_finite()
            && self.bandwidth_mbps > 0.0
            && self.latency_ms.is_finite()
            && self.latency_ms >= 0.0
    }
}

/// The path between every ordered pair of `k` devices (the diagonal is never used: a tensor
/// that stays on its device costs nothing).
#[derive(Clone, Debug, PartialEq)]
pub struct Links {
    k: usize,
    matrix: Vec<LinkSpec>,
}

impl Links {
    /// `link(a, b)` for every ordered pair of `k` devices.
    pub fn from_fn(k: usize, link: impl Fn(usize, usize) -> LinkSpec) -> Links {
        let matrix = (0..k)
            .flat_map(|a| (0..k).map(move |b| (a, b)))
            .map(|(a, b)| link(a, b))
            .collect();
        Links { k, matrix }
    }

    /// Through the broker: up the sender's egress (`up_mbps[a]`), then down the receiver's
    /// ingress (`down_mbps[b]`), and one broker hop of `hop_ms`. The two legs in series are
    /// one link whose bandwidth is `1 / (1/up + 1/down)`.
    pub fn through_broker(up_mbps: &[f64], down_mbps: &[f64], hop_ms: f64) -> Links {
        let k = up_mbps.len().min(down_mbps.len());
        Links::from_fn(k, |a, b| LinkSpec {
            bandwidth_mbps: 1.0 / (1.0 / up_mbps[a].max(1e-9) + 1.0 / down_mbps[b].max(1e-9)),
            latency_ms: hop_ms,
        })
    }

    /// Devices it links.
    pub fn len(&self) -> usize {
        self.k
    }

    pub fn is_empty(&self) -> bool {
        self.k == 0
    }

    /// The path from `a` to `b`.
    pub fn get(&self, a: usize, b: usize) -> LinkSpec {
        self.matrix[a * self.k + b]
    }

    /// Time in ms to move `bytes` from `a` to `b`; 0 on the same device.
    pub fn transfer_ms(&self, a: usize, b: usize, bytes: u64) -> f64 {
        if a == b {
            0.0
        } else {
            self.get(a, b).transfer_ms(bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_megabyte_over_gigabit_takes_eight_ms_plus_latency() {
        let l = LinkSpec {
            bandwidth_mbps: 1000.0,
            latency_ms: 0.5,
        };
        assert!((l.transfer_ms(1_000_000) - 8.5).abs() < 1e-9);
        assert_eq!(l.transfer_ms(0), 0.5);
    }

    #[test]
    fn a_slow_nic_caps_the_link() {
        let l = LinkSpec {
            bandwidth_mbps: 1000.0,
            latency_ms: 0.0,
        }
        .capped(100.0);
        assert_eq!(l.bandwidth_mbps, 100.0);
        assert!((l.transfer_ms(125_000) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn zero_bandwidth_is_not_valid() {
        let l = LinkSpec {
            bandwidth_mbps: 0.0,
            latency_ms: 1.0,
        };
        assert!(!l.is_valid());
    }

    #[test]
    fn two_legs_through_the_broker_add_up_as_one_link() {
        let l = Links::through_broker(&[100.0, 50.0], &[100.0, 25.0], 0.5);
        // 1 MB up at 100 Mbit/s (80 ms) and down at 25 Mbit/s (320 ms), plus the hop.
        assert!((l.transfer_ms(0, 1, 1_000_000) - 400.5).abs() < 1e-6);
        assert_eq!(l.transfer_ms(1, 1, 1_000_000), 0.0);
    }
}
