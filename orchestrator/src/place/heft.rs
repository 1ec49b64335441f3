//! HEFT with insertion: Topcuoglu, Hariri and Wu, "Performance-effective and low-complexity
//! task scheduling for heterogeneous computing", IEEE TPDS 13(3), 2002.
//!
//! Ops are taken by decreasing upward rank (mean run time plus the longest mean-cost path to
//! an exit); each goes to the device where it finishes earliest, allowed to fill an idle gap
//! left earlier on that device (the "insertion-based policy"). Memory-aware: a device whose
//! memory is full is skipped; an op that fits nowhere is an error naming the devices.

use moirai_core::Graph;

use super::greedy::{by_decreasing_rank, earliest_finish, no_room, upward_rank};
use super::{PlaceError, Placed};
use crate::simulate::Engine;

pub fn place(g: &Graph) -> Result<Placed, PlaceError> {
    let rank = upward_rank(g);
    let mut engine = Engine::new(g, true);
    for op in by_decreasing_rank(g, &rank) {
        let (d, _) = earliest_finish(&mut engine, op, g.device_ids())
            .ok_or_else(|| no_room(&engine, op, "heft"))?;
        engine.commit(op, d);
    }
    Ok(Placed {
        schedule: engine.to_schedule("heft", 0.0, 0.0),
        optimal: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{chain, diamond, independent};

    #[test]
    fn diamond_uses_the_fast_device_when_transfers_do_not_pay() {
        // Parallel branches on the slow device would take 8 ms plus 2 ms of transfers,
        // while running b after c on the fast device costs 4 ms: optimum 10 on device 0.
        let p = place(&diamond()).unwrap();
        assert_eq!(p.schedule.makespan_ms, 10.0);
    }

    #[test]
    fn independent_ops_spread_evenly() {
        // 8 unit ops on 4 identical devices: optimum 2.
        let p = place(&independent(8, 4, 1.0)).unwrap();
        assert_eq!(p.schedule.makespan_ms, 2.0);
    }

    #[test]
    fn a_chain_stays_on_the_fast_device() {
        let p = place(&chain(10, 0.5)).unwrap();
        assert_eq!(p.schedule.makespan_ms, 10.0);
    }
}
