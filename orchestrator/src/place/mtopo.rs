//! m-TOPO from Baechi: Jeon et al., "Baechi: fast device placement of machine learning
//! graphs", ACM SoCC 2020 (§4.1).
//!
//! Ops are walked in topological order and packed onto one device after another, each device
//! taking a balanced share. Baechi balances memory over identical devices; adapted here to
//! heterogeneous devices, the share of device k is proportional to its speed (the inverse of
//! the graph's total run time on it), and devices are filled fastest first. Memory-aware: an
//! op that does not fit the current device moves on to the next one with room.

use moirai_core::{DeviceId, Graph};

use super::greedy::no_room;
use super::{PlaceError, Placed};
use crate::simulate::{bottom_levels, simulate_into, Engine};

pub fn place(g: &Graph) -> Result<Placed, PlaceError> {
    let total: Vec<f64> = g
        .device_ids()
        .map(|d| g.op_ids().map(|o| g.time(o, d)).sum::<f64>().max(1e-12))
        .collect();
    let speed_sum: f64 = total.iter().map(|t| 1.0 / t).sum();
    let mut devices: Vec<DeviceId> = g.device_ids().collect();
    devices.sort_by(|a, b| total[a.index()].total_cmp(&total[b.index()]));
    // Each device takes ops until its share of the work (in its own time) is used up.
    let share: Vec<f64> = g
        .device_ids()
        .map(|d| (1.0 / total[d.index()]) / speed_sum)
        .collect();
    let mut engine = Engine::new(g, true);
    let mut placement = vec![DeviceId(0); g.num_ops()];
    let mut done = vec![0.0f64; g.num_devices()];
    let mut cur = 0usize;
    for &op in g.topo_order() {
        while cur + 1 < devices.len()
            && done[devices[cur].index()] >= share[devices[cur].index()] - 1e-12
        {
            cur += 1;
        }
        let d = (cur..devices.len())
            .chain(0..cur)
            .map(|i| devices[i])
            .find(|&d| engine.fits(op, d))
            .ok_or_else(|| no_room(&engine, op, "mtopo"))?;
        // Account memory through the engine so later fits() see it.
        engine.commit(op, d);
        placement[op.index()] = d;
        done[d.index()] += g.time(op, d) / total[d.index()];
    }
    let priority = bottom_levels(g, &placement);
    simulate_into(&mut engine, &placement, &priority);
    Ok(Placed {
        schedule: engine.to_schedule("mtopo", 0.0, 0.0),
        optimal: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::independent;

    #[test]
    fn identical_devices_get_equal_shares() {
        let p = place(&independent(8, 4, 1.0)).unwrap();
        assert_eq!(p.schedule.makespan_ms, 2.0);
        assert_eq!(p.schedule.devices_used(), vec![0, 1, 2, 3]);
    }
}
