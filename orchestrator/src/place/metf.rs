//! m-ETF from Baechi (Jeon et al., SoCC 2020, §4.2), after Hwang, Chow, Anger and Lee,
//! "Scheduling precedence graphs in systems with interprocessor communication times",
//! SIAM J. Comput. 18(2), 1989.
//!
//! Earliest Time First: at every step, among the ready ops, the one that can start earliest is
//! scheduled (ties: larger upward rank). Adapted to per-device run times: each ready op is
//! matched with the device where it would finish first, then ops compete on start time.
//! Memory-aware as in Baechi: a device without room for the op is not a candidate.

use moirai_core::Graph;

use super::greedy::{etf, upward_rank};
use super::{PlaceError, Placed};

pub fn place(g: &Graph) -> Result<Placed, PlaceError> {
    let rank = upward_rank(g);
    let engine = etf(g, "metf", &rank, |_, _| g.device_ids().collect())?;
    Ok(Placed {
        schedule: engine.to_schedule("metf", 0.0, 0.0),
        optimal: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{chain, independent};

    #[test]
    fn independent_ops_spread_evenly() {
        assert_eq!(
            place(&independent(6, 3, 2.0)).unwrap().schedule.makespan_ms,
            4.0
        );
    }

    #[test]
    fn a_chain_with_costly_transfers_stays_together() {
        assert_eq!(place(&chain(5, 10.0)).unwrap().schedule.makespan_ms, 5.0);
    }
}
