//! Interchangeable devices: two boards of one class with the same links are the same to
//! the placer, so a new plan may put a whole share of the work on the newcomer instead of
//! where it already runs. After a replan, [`toward`] swaps the labels of interchangeable
//! devices so that as many ops as possible stay where the previous plan had them, which
//! means fewer weights and activations to move, for the same makespan.

use moirai_core::{DeviceId, EdgeId, Graph};

use crate::place::Placement;

/// Whether `a` and `b` can trade places: same memory, same run time for every op, same
/// transfer times to and from every other device, and between each other both ways.
pub fn interchangeable(g: &Graph, a: DeviceId, b: DeviceId) -> bool {
    if g.devices()[a.index()].memory_bytes != g.devices()[b.index()].memory_bytes {
        return false;
    }
    if g.op_ids().any(|o| g.time(o, a) != g.time(o, b)) {
        return false;
    }
    (0..g.edges().len()).map(EdgeId::from).all(|e| {
        g.transfer(e, a, b) == g.transfer(e, b, a)
            && g.device_ids().filter(|&x| x != a && x != b).all(|x| {
                g.transfer(e, a, x) == g.transfer(e, b, x)
                    && g.transfer(e, x, a) == g.transfer(e, x, b)
            })
    })
}

/// `placement` with interchangeable devices relabelled to keep ops where `previous` had
/// them (greedy matching within each class, largest overlap first).
pub fn toward(g: &Graph, placement: &Placement, previous: &Placement) -> Placement {
    let k = g.num_devices();
    // Classes of interchangeable devices.
    let mut class = vec![usize::MAX; k];
    let mut classes: Vec<Vec<DeviceId>> = Vec::new();
    for a in g.device_ids() {
        if class[a.index()] != usize::MAX {
            continue;
        }
        let mut members = vec![a];
        class[a.index()] = classes.len();
        for b in g.device_ids().skip(a.index() + 1) {
            if class[b.index()] == usize::MAX && interchangeable(g, a, b) {
                class[b.index()] = classes.len();
                members.push(b);
            }
        }
        classes.push(members);
    }
    // overlap[new][old]: ops the new plan puts on `new` that the previous plan had on `old`.
    let mut overlap = vec![vec![0usize; k]; k];
    for (n, o) in placement.iter().zip(previous) {
        overlap[n.index()][o.index()] += 1;
    }
    let mut rename: Vec<DeviceId> = g.device_ids().collect();
    for members in classes.iter().filter(|m| m.len() > 1) {
        let mut pairs: Vec<(usize, DeviceId, DeviceId)> = members
            .iter()
            .flat_map(|&n| members.iter().map(move |&o| (n, o)))
            .map(|(n, o)| (overlap[n.index()][o.index()], n, o))
            .collect();
        pairs.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
        let (mut new_done, mut old_done) = (vec![false; k], vec![false; k]);
        for (_, n, o) in pairs {
            if !new_done[n.index()] && !old_done[o.index()] {
                rename[n.index()] = o;
                new_done[n.index()] = true;
                old_done[o.index()] = true;
            }
        }
    }
    placement.iter().map(|d| rename[d.index()]).collect()
}

/// Ops placed differently.
pub fn moved(a: &Placement, b: &Placement) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::independent;

    #[test]
    fn identical_devices_are_relabelled_toward_the_previous_plan() {
        // Four identical devices, independent ops.
        let g = independent(8, 4, 1.0);
        assert!(interchangeable(&g, DeviceId(0), DeviceId(3)));
        let previous: Placement = (0..8usize).map(|i| DeviceId::from(i % 2)).collect();
        // The same split, but on devices 2 and 3.
        let new: Placement = (0..8usize).map(|i| DeviceId::from(2 + i % 2)).collect();
        assert_eq!(moved(&new, &previous), 8);
        let kept = toward(&g, &new, &previous);
        assert_eq!(kept, previous);
    }

    #[test]
    fn different_devices_keep_their_labels() {
        let g = crate::testutil::diamond();
        let p: Placement = g.op_ids().map(|o| DeviceId::from(o.index() % 2)).collect();
        let previous: Placement = p.iter().map(|d| DeviceId(1 - d.0)).collect();
        assert!(
            !interchangeable(&g, DeviceId(0), DeviceId(1)),
            "fast and slow"
        );
        assert_eq!(toward(&g, &p, &previous), p);
    }
}
