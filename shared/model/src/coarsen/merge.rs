//! Groups of nodes over a DAG, merged pairwise without ever creating a cycle.
//!
//! Merging groups `a` and `b` contracts them into one vertex. The result stays acyclic
//! exactly when no path links them through a third group: a path `a -> x -> ... -> b` would
//! become `ab -> x -> ... -> ab`. [`GroupGraph::try_merge`] checks both directions with a
//! depth-first search and refuses such merges; whether a merge is *wanted* is the rules'
//! business ([`super::rules`]).

use std::collections::BTreeSet;

/// A partition of DAG nodes into groups, with the edges between groups.
#[derive(Clone, Debug)]
pub struct GroupGraph {
    group_of: Vec<usize>,
    members: Vec<Vec<usize>>,
    succ: Vec<BTreeSet<usize>>,
    pred: Vec<BTreeSet<usize>>,
    alive: Vec<bool>,
    /// DFS scratch: `seen[g] == epoch` marks a visit in the current search.
    seen: Vec<u32>,
    epoch: u32,
}

impl GroupGraph {
    /// One group per node `0..n`; `edges` are `(src, dst)` node pairs (duplicates allowed).
    pub fn new(n: usize, edges: impl IntoIterator<Item = (usize, usize)>) -> GroupGraph {
        let mut succ = vec![BTreeSet::new(); n];
        let mut pred = vec![BTreeSet::new(); n];
        for (s, d) in edges {
            if s != d {
                succ[s].insert(d);
                pred[d].insert(s);
            }
        }
        GroupGraph {
            group_of: (0..n).collect(),
            members: (0..n).map(|i| vec![i]).collect(),
            succ,
            pred,
            alive: vec![true; n],
            seen: vec![0; n],
            epoch: 0,
        }
    }

    /// The group node `node` belongs to.
    pub fn group_of(&self, node: usize) -> usize {
        self.group_of[node]
    }

    /// Nodes of group `g`, in the order they joined.
    pub fn members(&self, g: usize) -> &[usize] {
        &self.members[g]
    }

    pub fn succ(&self, g: usize) -> &BTreeSet<usize> {
        &self.succ[g]
    }

    pub fn pred(&self, g: usize) -> &BTreeSet<usize> {
        &self.pred[g]
    }

    /// Live groups, by id.
    pub fn groups(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.alive.len()).filter(|&g| self.alive[g])
    }

    pub fn is_alive(&self, g: usize) -> bool {
        self.alive[g]
    }

    pub fn len(&self) -> usize {
        self.alive.iter().filter(|a| **a).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a path of two or more edges leads from `from` to `to`.
    fn indirect_path(&mut self, from: usize, to: usize) -> bool {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.seen.iter_mut().for_each(|s| *s = 0);
            self.epoch = 1;
        }
        let mut stack: Vec<usize> = self.succ[from]
            .iter()
            .copied()
            .filter(|&s| s != to)
            .collect();
        for &s in &stack {
            self.seen[s] = self.epoch;
        }
        while let Some(g) = stack.pop() {
            for &s in &self.succ[g] {
                if s == to {
                    return true;
                }
                if self.seen[s] != self.epoch {
                    self.seen[s] = self.epoch;
                    stack.push(s);
                }
            }
        }
        false
    }

    /// Whether merging `a` and `b` would create a cycle.
    pub fn would_create_cycle(&mut self, a: usize, b: usize) -> bool {
        self.indirect_path(a, b) || self.indirect_path(b, a)
    }

    /// Merges group `b` into group `a` unless that creates a cycle; returns whether it
    /// merged. Both must be live and distinct.
    pub fn try_merge(&mut self, a: usize, b: usize) -> bool {
        if a == b || !self.alive[a] || !self.alive[b] || self.would_create_cycle(a, b) {
            return false;
        }
        let moved = std::mem::take(&mut self.members[b]);
        for &n in &moved {
            self.group_of[n] = a;
        }
        self.members[a].extend(moved);
        for s in std::mem::take(&mut self.succ[b]) {
            self.pred[s].remove(&b);
            if s != a {
                self.pred[s].insert(a);
                self.succ[a].insert(s);
            }
        }
        for p in std::mem::take(&mut self.pred[b]) {
            self.succ[p].remove(&b);
            if p != a {
                self.succ[p].insert(a);
                self.pred[a].insert(p);
            }
        }
        self.succ[a].remove(&b);
        self.pred[a].remove(&b);
        self.alive[b] = false;
        true
    }

    /// Live groups in a topological order (ties broken by smallest member node).
    pub fn topo_order(&self) -> Vec<usize> {
        let mut indeg: Vec<usize> = (0..self.alive.len()).map(|g| self.pred[g].len()).collect();
        let key = |g: usize| self.members[g].iter().copied().min().unwrap_or(usize::MAX);
        let mut ready: BTreeSet<(usize, usize)> = self
            .groups()
            .filter(|&g| indeg[g] == 0)
            .map(|g| (key(g), g))
            .collect();
        let mut order = Vec::with_capacity(self.len());
        while let Some((_, g)) = ready.pop_first() {
            order.push(g);
            for &s in &self.succ[g] {
                indeg[s] -= 1;
                if indeg[s] == 0 {
                    ready.insert((key(s), s));
                }
            }
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// a(0) -> b(1) -> d(3), a -> c(2) -> d
    fn diamond() -> GroupGraph {
        GroupGraph::new(4, [(0, 1), (1, 3), (0, 2), (2, 3)])
    }

    #[test]
    fn merging_along_a_lone_edge_contracts_it() {
        let mut g = diamond();
        assert!(g.try_merge(0, 1));
        assert_eq!(g.group_of(1), 0);
        assert_eq!(g.len(), 3);
        assert_eq!(g.succ(0), &BTreeSet::from([2, 3]));
        assert_eq!(g.pred(3), &BTreeSet::from([0, 2]));
    }

    #[test]
    fn merging_the_ends_of_a_diamond_is_refused() {
        // a -> b -> d and a -> d through c: contracting a and d would make a cycle.
        let mut g = diamond();
        assert!(g.would_create_cycle(0, 3));
        assert!(!g.try_merge(0, 3));
        assert!(!g.try_merge(3, 0));
        assert_eq!(g.len(), 4);
    }

    #[test]
    fn a_direct_edge_with_a_detour_is_refused() {
        // a -> b directly and a -> x -> b.
        let mut g = GroupGraph::new(3, [(0, 2), (0, 1), (1, 2)]);
        assert!(!g.try_merge(0, 2));
        // Merging the detour first makes the direct merge legal.
        assert!(g.try_merge(0, 1));
        assert!(g.try_merge(0, 2));
        assert_eq!(g.len(), 1);
        assert!(g.succ(0).is_empty());
    }

    #[test]
    fn siblings_merge_when_unrelated() {
        let mut g = diamond();
        assert!(g.try_merge(1, 2));
        assert_eq!(g.topo_order(), vec![0, 1, 3]);
    }

    #[test]
    fn topo_order_survives_merges() {
        let mut g = GroupGraph::new(5, [(0, 1), (1, 2), (2, 3), (0, 4), (4, 3)]);
        assert!(g.try_merge(1, 2));
        assert!(g.try_merge(3, 4));
        let order = g.topo_order();
        assert_eq!(order.len(), g.len());
        let pos = |x: usize| order.iter().position(|&o| o == x).unwrap();
        for a in g.groups().collect::<Vec<_>>() {
            for &b in g.succ(a) {
                assert!(pos(a) < pos(b));
            }
        }
    }
}
