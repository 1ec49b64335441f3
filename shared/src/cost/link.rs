//! Link transfer times: how long a tensor of a given size takes between two devices.
//!
//! A link is a bandwidth and a one-way latency. The time to move `bytes` is
//! `latency + bytes * 8 / bandwidth`: store-and-forward of one message, no pipelining across
//! tensors (the placer's port model serialises transfers on each device anyway).

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
}
