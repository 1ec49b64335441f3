//! Best single device: every op on one device, each device tried; the plan to beat, since
//! splitting a model only pays when the parallelism outweighs the transfers.

use moirai_core::DeviceId;
use moirai_core::Graph;

use super::{PlaceError, Placed};
use crate::simulate::{all_on, memory_shortfall, simulate};

pub fn place(g: &Graph) -> Result<Placed, PlaceError> {
    let mut best: Option<(f64, DeviceId)> = None;
    let mut shortfalls = Vec::new();
    for d in g.device_ids() {
        let p = all_on(g, d);
        if let Some(s) = memory_shortfall(g, &p) {
            shortfalls.push(s.to_string());
            continue;
        }
        let m = simulate(g, &p, false).makespan();
        if best.is_none_or(|(b, _)| m < b) {
            best = Some((m, d));
        }
    }
    let (_, d) = best.ok_or_else(|| PlaceError::Infeasible {
        method: "single".into(),
        reason: format!("no device holds the whole graph: {}", shortfalls.join("; ")),
    })?;
    Ok(Placed {
        schedule: simulate(g, &all_on(g, d), false).to_schedule("single", 0.0, 0.0),
        optimal: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{diamond, example_1};

    #[test]
    fn picks_the_fast_device() {
        let p = place(&diamond()).unwrap();
        assert_eq!(p.schedule.makespan_ms, 10.0);
        assert_eq!(p.schedule.devices_used(), vec![0]);
    }

    #[test]
    fn says_which_device_lacks_how_much() {
        let err = place(&example_1()).unwrap_err().to_string();
        assert!(
            err.contains("device 0 needs 44 bytes but has 14 (lacks 30)"),
            "{err}"
        );
        assert!(
            err.contains("device 2 needs 44 bytes but has 16 (lacks 28)"),
            "{err}"
        );
    }
}
