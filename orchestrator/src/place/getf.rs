//! GETF: Su, Lin, Ma, Kao, Leung and Hsu, "Scheduling precedence-constrained jobs on related
//! machines with communication delay" / "Group Earliest Time First" (Su et al., 2020).
//!
//! Devices are split into speed groups (a device joins the current group while its speed is
//! within a factor 2 of the group's fastest). An LP relaxation assigns each op fractionally to
//! groups, minimising `T` subject to precedence with the group run times and each group's load
//! spread over its devices; each op then goes to the group holding the largest share of it,
//! and ETF schedules it on that group's devices. Memory-aware: when its group is full an op
//! may take any device with room.

use std::time::Duration;

use moirai_core::{DeviceId, Graph};

use super::greedy::{etf, upward_rank};
use super::{PlaceError, Placed};
use crate::lp::AssignmentLp;

/// Devices grouped by speed, fastest group first.
pub fn speed_groups(g: &Graph) -> Vec<Vec<DeviceId>> {
    let total: Vec<f64> = g
        .device_ids()
        .map(|d| g.op_ids().map(|o| g.time(o, d)).sum::<f64>().max(1e-12))
        .collect();
    let mut devices: Vec<DeviceId> = g.device_ids().collect();
    devices.sort_by(|a, b| total[a.index()].total_cmp(&total[b.index()]).then(a.cmp(b)));
    let mut groups: Vec<Vec<DeviceId>> = Vec::new();
    for d in devices {
        match groups.last_mut() {
            Some(grp) if total[d.index()] <= 2.0 * total[grp[0].index()] => grp.push(d),
            _ => groups.push(vec![d]),
        }
    }
    groups
}

/// The group each op is assigned to by the LP relaxation.
pub fn group_of_ops(g: &Graph, groups: &[Vec<DeviceId>]) -> Result<Vec<usize>, String> {
    // Run time of an op on a group: on its fastest member.
    let p = |op, grp: &Vec<DeviceId>| {
        grp.iter()
            .map(|&d| g.time(op, d))
            .fold(f64::INFINITY, f64::min)
    };
    let AssignmentLp { mut lp, t, x } =
        AssignmentLp::new(g, groups.len(), |op, gi| p(op, &groups[gi]));
    for (gi, grp) in groups.iter().enumerate() {
        let mut terms = vec![(t, 1.0)];
        terms.extend(
            g.op_ids()
                .map(|op| (x[op.index()][gi], -p(op, grp) / grp.len() as f64)),
        );
        lp.ge(&terms, 0.0);
    }
    let sol = lp.solve(Duration::from_secs(30))?;
    Ok(g.op_ids()
        .map(|op| {
            (0..groups.len())
                .max_by(|&a, &b| {
                    sol.value(x[op.index()][a])
                        .total_cmp(&sol.value(x[op.index()][b]))
                        .then(b.cmp(&a))
                })
                .unwrap_or(0)
        })
        .collect())
}

pub fn place(g: &Graph) -> Result<Placed, PlaceError> {
    let groups = speed_groups(g);
    let group = group_of_ops(g, &groups).map_err(|reason| PlaceError::Solver {
        method: "getf".into(),
        reason,
    })?;
    let rank = upward_rank(g);
    let engine = etf(g, "getf", &rank, |_, op| groups[group[op.index()]].clone())?;
    Ok(Placed {
        schedule: engine.to_schedule("getf", 0.0, 0.0),
        optimal: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{chain, independent};

    #[test]
    fn devices_of_one_speed_form_one_group() {
        assert_eq!(speed_groups(&independent(4, 3, 1.0)).len(), 1);
        // Device 1 is three times slower than device 0.
        assert_eq!(
            speed_groups(&chain(3, 1.0)),
            vec![vec![DeviceId(0)], vec![DeviceId(1)]]
        );
    }

    #[test]
    fn independent_ops_spread_evenly() {
        assert_eq!(
            place(&independent(6, 3, 1.0)).unwrap().schedule.makespan_ms,
            2.0
        );
    }

    #[test]
    fn a_chain_goes_to_the_fast_group() {
        assert_eq!(place(&chain(5, 1.0)).unwrap().schedule.makespan_ms, 5.0);
    }
}
