//! m-SCT from Baechi (Jeon et al., SoCC 2020, §4.3), after Hanen and Munier, "An
//! approximation algorithm for scheduling dependent tasks on m processors with small
//! communication delays", Discrete Applied Mathematics 108(3), 2001.
//!
//! Small Communication Times: an LP relaxation decides each op's *favourite child*, the
//! successor that should run right after it on the same device so their edge costs nothing.
//! Variables `x_e in [0,1]` (1: edge e pays its transfer), start times `s_i`, makespan `w`:
//!
//! ```text
//! min w   s.t.  s_j >= s_i + p_i + c_e x_e        for every edge e = (i, j)
//!               sum_{e in out(i)} x_e >= |out(i)| - 1   (at most one favourite child)
//!               sum_{e in in(j)}  x_e >= |in(j)|  - 1   (at most one favourite parent)
//!               w >= s_i + p_i
//! ```
//! solved with microlp, with mean run and transfer times (the adaptation to heterogeneous
//! devices). An edge with `x_e < 1/2` marks a favourite child. Scheduling is then ETF, except
//! that a favourite child goes to its parent's device when it has room.

use std::time::Duration;

use moirai_core::{DeviceId, EdgeId, Graph, OpId};

use super::greedy::{etf, mean_time, mean_transfer, upward_rank};
use super::{PlaceError, Placed};
use crate::lp::Lp;

/// For every op, the parent whose favourite child it is.
pub fn favourite_parents(g: &Graph) -> Result<Vec<Option<OpId>>, String> {
    let mut lp = Lp::new();
    let w = lp.var(1.0, 0.0, f64::INFINITY);
    let s: Vec<_> = g
        .op_ids()
        .map(|_| lp.var(0.0, 0.0, f64::INFINITY))
        .collect();
    let x: Vec<_> = (0..g.edges().len())
        .map(|_| lp.var(0.0, 0.0, 1.0))
        .collect();
    for (e, edge) in g.edges().iter().enumerate() {
        let (i, j) = (edge.src.index(), edge.dst.index());
        let c = mean_transfer(g, EdgeId::from(e));
        lp.ge(
            &[(s[j], 1.0), (s[i], -1.0), (x[e], -c)],
            mean_time(g, edge.src),
        );
    }
    for op in g.op_ids() {
        let out = g.out_edges(op);
        if out.len() > 1 {
            let terms: Vec<_> = out.iter().map(|e| (x[e.index()], 1.0)).collect();
            lp.ge(&terms, out.len() as f64 - 1.0);
        }
        let inc = g.in_edges(op);
        if inc.len() > 1 {
            let terms: Vec<_> = inc.iter().map(|e| (x[e.index()], 1.0)).collect();
            lp.ge(&terms, inc.len() as f64 - 1.0);
        }
        if out.is_empty() {
            lp.ge(&[(w, 1.0), (s[op.index()], -1.0)], mean_time(g, op));
        }
    }
    let sol = lp.solve(Duration::from_secs(30))?;
    let mut parent = vec![None; g.num_ops()];
    for op in g.op_ids() {
        // The out-edge with the smallest x below 1/2 is the favourite.
        let fav = g
            .out_edges(op)
            .iter()
            .map(|&e| (sol.value(x[e.index()]), e))
            .filter(|(v, _)| *v < 0.5)
            .min_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((_, e)) = fav {
            let child = g.edge(e).dst;
            if parent[child.index()].is_none() {
                parent[child.index()] = Some(op);
            }
        }
    }
    Ok(parent)
}

pub fn place(g: &Graph) -> Result<Placed, PlaceError> {
    let parent = favourite_parents(g).map_err(|reason| PlaceError::Solver {
        method: "msct".into(),
        reason,
    })?;
    let rank = upward_rank(g);
    let engine = etf(g, "msct", &rank, |engine, op| {
        match parent[op.index()].and_then(|p| engine.device_of(p)) {
            Some(d) => vec![d],
            None => g.device_ids().collect::<Vec<DeviceId>>(),
        }
    })?;
    Ok(Placed {
        schedule: engine.to_schedule("msct", 0.0, 0.0),
        optimal: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{chain, diamond};

    #[test]
    fn every_link_of_a_chain_is_a_favourite() {
        let g = chain(4, 5.0);
        let p = favourite_parents(&g).unwrap();
        assert_eq!(p, vec![None, Some(OpId(0)), Some(OpId(1)), Some(OpId(2))]);
        assert_eq!(place(&g).unwrap().schedule.makespan_ms, 4.0);
    }

    #[test]
    fn a_fork_has_at_most_one_favourite_child() {
        let p = favourite_parents(&diamond()).unwrap();
        let children_of_a = p.iter().filter(|x| **x == Some(OpId(0))).count();
        assert!(children_of_a <= 1);
    }
}
