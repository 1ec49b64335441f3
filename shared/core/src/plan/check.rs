//! The validator: checks a [`Schedule`] against every rule of the cost model and names the
//! first rule it breaks.
//!
//! Rules (from `../shared/benchmarks/README.md`): every op appears once, on a real device,
//! for exactly its run time there; every edge whose ends sit on different devices is carried
//! by one transfer of the right duration between the right devices, after the producer ends
//! and before the consumer starts; an edge within one device still orders its ends; a device
//! runs one op at a time; each device has one egress and one ingress port, each carrying
//! one transfer at a time; the static memory sum fits; the stated makespan is the latest end.
//!
//! Intervals are half-open, so zero-length ops and transfers never collide. Times compare
//! with a tolerance of [`TOLERANCE_MS`] to absorb float rounding in JSON round trips.

use thiserror::Error;

use super::Schedule;
use crate::ids::{DeviceId, EdgeId, OpId};
use crate::Graph;

/// Slack allowed when comparing times (1 ns).
pub const TOLERANCE_MS: f64 = 1e-6;

/// The first rule a schedule breaks.
#[derive(Debug, Error, PartialEq)]
pub enum Violation {
    #[error("schedule names op `{0}`, which the graph does not have")]
    UnknownOp(String),
    #[error("op `{0}` is scheduled more than once")]
    DuplicateOp(String),
    #[error("op `{0}` is not scheduled")]
    MissingOp(String),
    #[error("op `{op}` is on device {device}, but the graph has {count} devices")]
    BadDevice {
        op: String,
        device: u16,
        count: usize,
    },
    #[error("op `{op}` starts at {start_ms} ms, before time 0")]
    NegativeStart { op: String, start_ms: f64 },
    #[error("op `{op}` runs {found_ms} ms on device {device}, but its run time there is {expected_ms} ms")]
    OpDuration {
        op: String,
        device: u16,
        expected_ms: f64,
        found_ms: f64,
    },
    #[error("transfer {transfer} names edge {edge}, which the graph does not have")]
    UnknownEdge { transfer: usize, edge: u32 },
    #[error("edge {edge} is carried by more than one transfer")]
    EdgeCarriedTwice { edge: u32 },
    #[error(
        "edge {edge} ({src} -> {dst}) crosses devices {from} -> {to} but no transfer carries it"
    )]
    MissingTransfer {
        edge: u32,
        src: String,
        dst: String,
        from: u16,
        to: u16,
    },
    #[error("transfer {transfer} carries edge {edge}, whose ends are both on device {device}")]
    NeedlessTransfer {
        transfer: usize,
        edge: u32,
        device: u16,
    },
    #[error("transfer {transfer} goes {from} -> {to}, but edge {edge} needs {expected_from} -> {expected_to}")]
    TransferEnds {
        transfer: usize,
        edge: u32,
        from: u16,
        to: u16,
        expected_from: u16,
        expected_to: u16,
    },
    #[error(
        "transfer {transfer} mixes edges {a} and {b}, which do not share a producer and tensor"
    )]
    TransferMixesTensors { transfer: usize, a: u32, b: u32 },
    #[error("transfer {transfer} carries no edge")]
    EmptyTransfer { transfer: usize },
    #[error("transfer {transfer} lasts {found_ms} ms, but moving its tensor {from} -> {to} takes {expected_ms} ms")]
    TransferDuration {
        transfer: usize,
        from: u16,
        to: u16,
        expected_ms: f64,
        found_ms: f64,
    },
    #[error("transfer {transfer} of edge {edge} starts at {start_ms} ms, before its producer `{op}` ends at {end_ms} ms")]
    TransferBeforeProducer {
        transfer: usize,
        edge: u32,
        op: String,
        start_ms: f64,
        end_ms: f64,
    },
    #[error("transfer {transfer} of edge {edge} ends at {end_ms} ms, after its consumer `{op}` starts at {start_ms} ms")]
    TransferAfterConsumer {
        transfer: usize,
        edge: u32,
        op: String,
        end_ms: f64,
        start_ms: f64,
    },
    #[error("edge {edge}: `{dst}` starts at {start_ms} ms, before `{src}` ends at {end_ms} ms on the same device")]
    Precedence {
        edge: u32,
        src: String,
        dst: String,
        end_ms: f64,
        start_ms: f64,
    },
    #[error("device {device} runs `{a}` and `{b}` at the same time")]
    DeviceOverlap { device: u16, a: String, b: String },
    #[error("the {port} port of device {device} carries transfers {a} and {b} at the same time")]
    PortOverlap {
        device: u16,
        port: &'static str,
        a: usize,
        b: usize,
    },
    #[error("device {device} holds {needed} bytes of ops but has {capacity}")]
    Memory {
        device: u16,
        needed: u64,
        capacity: u64,
    },
    #[error("stated makespan {stated_ms} ms differs from the latest end {actual_ms} ms")]
    Makespan { stated_ms: f64, actual_ms: f64 },
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= TOLERANCE_MS * (1.0 + a.abs().max(b.abs()) * 1e-3)
}

/// Finds two overlapping half-open intervals among `(start, end, tag)`.
fn first_overlap<T: Copy>(mut iv: Vec<(f64, f64, T)>) -> Option<(T, T)> {
    iv.retain(|(s, e, _)| e - s > TOLERANCE_MS);
    iv.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut last: Option<(f64, T)> = None;
    for (s, e, t) in iv {
        if let Some((end, prev)) = last {
            if s < end - TOLERANCE_MS {
                return Some((prev, t));
            }
            if e > end {
                last = Some((e, t));
            }
        } else {
            last = Some((e, t));
        }
    }
    None
}

/// Checks `s` against every rule; `Ok` when the schedule is valid for `g`.
pub fn validate(g: &Graph, s: &Schedule) -> Result<(), Violation> {
    let k = g.num_devices();
    let mut slot_of: Vec<Option<usize>> = vec![None; g.num_ops()];
    for (i, slot) in s.ops.iter().enumerate() {
        let op = g
            .find_op(&slot.id)
            .ok_or_else(|| Violation::UnknownOp(slot.id.clone()))?;
        if slot_of[op.index()].replace(i).is_some() {
            return Err(Violation::DuplicateOp(slot.id.clone()));
        }
        if slot.device as usize >= k {
            return Err(Violation::BadDevice {
                op: slot.id.clone(),
                device: slot.device,
                count: k,
            });
        }
        if slot.start_ms < -TOLERANCE_MS || !slot.start_ms.is_finite() {
            return Err(Violation::NegativeStart {
                op: slot.id.clone(),
                start_ms: slot.start_ms,
            });
        }
        let expected = g.time(op, DeviceId(slot.device));
        if !close(slot.end_ms - slot.start_ms, expected) {
            return Err(Violation::OpDuration {
                op: slot.id.clone(),
                device: slot.device,
                expected_ms: expected,
                found_ms: slot.end_ms - slot.start_ms,
            });
        }
    }
    if let Some(missing) = slot_of.iter().position(Option::is_none) {
        return Err(Violation::MissingOp(g.op(OpId::from(missing)).name.clone()));
    }
    let slot = |op: OpId| &s.ops[slot_of[op.index()].expect("checked above")];

    // Transfers: who carries which edge, with the right ends and duration.
    let mut carrier: Vec<Option<usize>> = vec![None; g.edges().len()];
    for (t, tr) in s.transfers.iter().enumerate() {
        let Some(&first) = tr.edges.first() else {
            return Err(Violation::EmptyTransfer { transfer: t });
        };
        let mut expected: f64 = 0.0;
        for &e in &tr.edges {
            if e as usize >= g.edges().len() {
                return Err(Violation::UnknownEdge {
                    transfer: t,
                    edge: e,
                });
            }
            if carrier[e as usize].replace(t).is_some() {
                return Err(Violation::EdgeCarriedTwice { edge: e });
            }
            let eid = EdgeId(e);
            let edge = g.edge(eid);
            let (from, to) = (slot(edge.src).device, slot(edge.dst).device);
            if from == to {
                return Err(Violation::NeedlessTransfer {
                    transfer: t,
                    edge: e,
                    device: from,
                });
            }
            if (from, to) != (tr.from, tr.to) {
                return Err(Violation::TransferEnds {
                    transfer: t,
                    edge: e,
                    from: tr.from,
                    to: tr.to,
                    expected_from: from,
                    expected_to: to,
                });
            }
            if e != first {
                let same = match (g.share_key(EdgeId(first)), g.share_key(eid)) {
                    (Some(a), Some(b)) => a == b,
                    _ => false,
                };
                if !same {
                    return Err(Violation::TransferMixesTensors {
                        transfer: t,
                        a: first,
                        b: e,
                    });
                }
            }
            expected = expected.max(g.transfer(eid, DeviceId(from), DeviceId(to)));
            let producer = slot(edge.src);
            if tr.start_ms < producer.end_ms - TOLERANCE_MS {
                return Err(Violation::TransferBeforeProducer {
                    transfer: t,
                    edge: e,
                    op: producer.id.clone(),
                    start_ms: tr.start_ms,
                    end_ms: producer.end_ms,
                });
            }
            let consumer = slot(edge.dst);
            if tr.end_ms > consumer.start_ms + TOLERANCE_MS {
                return Err(Violation::TransferAfterConsumer {
                    transfer: t,
                    edge: e,
                    op: consumer.id.clone(),
                    end_ms: tr.end_ms,
                    start_ms: consumer.start_ms,
                });
            }
        }
        if !close(tr.end_ms - tr.start_ms, expected) {
            return Err(Violation::TransferDuration {
                transfer: t,
                from: tr.from,
                to: tr.to,
                expected_ms: expected,
                found_ms: tr.end_ms - tr.start_ms,
            });
        }
    }
    for (e, edge) in g.edges().iter().enumerate() {
        let (src, dst) = (slot(edge.src), slot(edge.dst));
        if src.device != dst.device {
            if carrier[e].is_none() {
                return Err(Violation::MissingTransfer {
                    edge: e as u32,
                    src: src.id.clone(),
                    dst: dst.id.clone(),
                    from: src.device,
                    to: dst.device,
                });
            }
        } else if dst.start_ms < src.end_ms - TOLERANCE_MS {
            return Err(Violation::Precedence {
                edge: e as u32,
                src: src.id.clone(),
                dst: dst.id.clone(),
                end_ms: src.end_ms,
                start_ms: dst.start_ms,
            });
        }
    }

    // Resources: devices, ports, memory.
    for d in 0..k as u16 {
        let on_d: Vec<(f64, f64, usize)> = s
            .ops
            .iter()
            .enumerate()
            .filter(|(_, o)| o.device == d)
            .map(|(i, o)| (o.start_ms, o.end_ms, i))
            .collect();
        if let Some((a, b)) = first_overlap(on_d) {
            return Err(Violation::DeviceOverlap {
                device: d,
                a: s.ops[a].id.clone(),
                b: s.ops[b].id.clone(),
            });
        }
        for (port, pick) in [("egress", true), ("ingress", false)] {
            let iv: Vec<(f64, f64, usize)> = s
                .transfers
                .iter()
                .enumerate()
                .filter(|(_, t)| if pick { t.from == d } else { t.to == d })
                .map(|(i, t)| (t.start_ms, t.end_ms, i))
                .collect();
            if let Some((a, b)) = first_overlap(iv) {
                return Err(Violation::PortOverlap {
                    device: d,
                    port,
                    a,
                    b,
                });
            }
        }
        let needed: u64 = s
            .ops
            .iter()
            .filter(|o| o.device == d)
            .map(|o| g.op(g.find_op(&o.id).expect("checked above")).memory_bytes)
            .sum();
        let capacity = g.devices()[d as usize].memory_bytes;
        if needed > capacity {
            return Err(Violation::Memory {
                device: d,
                needed,
                capacity,
            });
        }
    }
    let actual = s.ops.iter().map(|o| o.end_ms).fold(0.0, f64::max);
    if !close(actual, s.makespan_ms) {
        return Err(Violation::Makespan {
            stated_ms: s.makespan_ms,
            actual_ms: actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::tests::diamond;
    use crate::plan::{OpSlot, TransferSlot};

    /// a on 0, b on 0, c on 1, d on 0: c's input and output cross devices.
    fn good() -> Schedule {
        let op = |id: &str, device, start_ms, end_ms| OpSlot {
            id: id.into(),
            device,
            start_ms,
            end_ms,
        };
        let tr = |edge, from, to, start_ms, end_ms| TransferSlot {
            edges: vec![edge],
            from,
            to,
            start_ms,
            end_ms,
        };
        Schedule {
            graph: "diamond".into(),
            method: "hand".into(),
            makespan_ms: 12.0,
            lower_bound_ms: 6.0,
            solve_seconds: 0.0,
            ops: vec![
                op("a", 0, 0.0, 1.0),
                op("b", 0, 1.0, 5.0),
                op("c", 1, 2.0, 10.0),
                op("d", 0, 11.0, 12.0),
            ],
            transfers: vec![tr(1, 0, 1, 1.0, 2.0), tr(3, 1, 0, 10.0, 11.0)],
        }
    }

    fn broken(f: impl FnOnce(&mut Schedule)) -> Violation {
        let mut s = good();
        f(&mut s);
        validate(&diamond(), &s).unwrap_err()
    }

    #[test]
    fn the_hand_made_schedule_is_valid() {
        validate(&diamond(), &good()).unwrap();
    }

    #[test]
    fn an_unknown_op_is_caught() {
        assert!(matches!(
            broken(|s| s.ops[0].id = "zz".into()),
            Violation::UnknownOp(_)
        ));
    }

    #[test]
    fn a_duplicated_op_is_caught() {
        assert!(matches!(
            broken(|s| s.ops[1].id = "a".into()),
            Violation::DuplicateOp(_)
        ));
    }

    #[test]
    fn a_missing_op_is_caught() {
        assert_eq!(
            broken(|s| {
                s.ops.pop();
            }),
            Violation::MissingOp("d".into())
        );
    }

    #[test]
    fn a_device_out_of_range_is_caught() {
        assert!(matches!(
            broken(|s| s.ops[0].device = 7),
            Violation::BadDevice { .. }
        ));
    }

    #[test]
    fn a_negative_start_is_caught() {
        assert!(matches!(
            broken(|s| {
                s.ops[0].start_ms = -1.0;
                s.ops[0].end_ms = 0.0;
            }),
            Violation::NegativeStart { .. }
        ));
    }

    #[test]
    fn a_wrong_run_time_is_caught() {
        assert!(matches!(
            broken(|s| s.ops[1].end_ms = 4.0),
            Violation::OpDuration { .. }
        ));
    }

    #[test]
    fn a_missing_transfer_is_caught() {
        assert!(matches!(
            broken(|s| {
                s.transfers.pop();
            }),
            Violation::MissingTransfer { edge: 3, .. }
        ));
    }

    #[test]
    fn a_transfer_on_a_local_edge_is_caught() {
        assert!(matches!(
            broken(|s| s.transfers[0].edges = vec![0]),
            Violation::NeedlessTransfer { edge: 0, .. }
        ));
    }

    #[test]
    fn a_transfer_between_wrong_devices_is_caught() {
        assert!(matches!(
            broken(|s| s.transfers[0].from = 1),
            Violation::TransferEnds { .. }
        ));
    }

    #[test]
    fn an_edge_carried_twice_is_caught() {
        assert!(matches!(
            broken(|s| s.transfers[1].edges = vec![1]),
            Violation::EdgeCarriedTwice { edge: 1 }
        ));
    }

    #[test]
    fn mixing_unrelated_edges_in_one_transfer_is_caught() {
        assert!(matches!(
            broken(|s| s.transfers[0].edges = vec![1, 3]),
            Violation::TransferMixesTensors { .. } | Violation::TransferEnds { .. }
        ));
    }

    #[test]
    fn a_transfer_of_wrong_length_is_caught() {
        assert!(matches!(
            broken(|s| s.transfers[0].end_ms = 1.5),
            Violation::TransferDuration { .. }
        ));
    }

    #[test]
    fn a_transfer_before_its_producer_is_caught() {
        assert!(matches!(
            broken(|s| {
                s.transfers[0].start_ms = 0.5;
                s.transfers[0].end_ms = 1.5;
            }),
            Violation::TransferBeforeProducer { .. }
        ));
    }

    #[test]
    fn a_transfer_after_its_consumer_is_caught() {
        assert!(matches!(
            broken(|s| {
                s.transfers[0].start_ms = 1.5;
                s.transfers[0].end_ms = 2.5;
            }),
            Violation::TransferAfterConsumer { .. }
        ));
    }

    #[test]
    fn local_precedence_is_checked() {
        assert!(matches!(
            broken(|s| {
                s.ops[1].start_ms = 0.5;
                s.ops[1].end_ms = 4.5;
            }),
            Violation::Precedence { edge: 0, .. } | Violation::DeviceOverlap { .. }
        ));
    }

    #[test]
    fn two_ops_at_once_on_a_device_is_caught() {
        // Move d onto device 0 at a time b is running; keep edges consistent by moving b late.
        let v = broken(|s| {
            s.ops[1].start_ms = 6.0;
            s.ops[1].end_ms = 10.0;
            s.ops[3].start_ms = 11.0;
            s.ops[3].end_ms = 12.0;
            s.ops[0].start_ms = 0.0;
            s.ops.push(OpSlot {
                id: "a".into(),
                device: 0,
                start_ms: 0.0,
                end_ms: 1.0,
            });
            s.ops.pop();
            s.ops[1].start_ms = 0.5;
            s.ops[1].end_ms = 4.5;
        });
        assert!(
            matches!(
                v,
                Violation::Precedence { .. } | Violation::DeviceOverlap { .. }
            ),
            "{v}"
        );
        // A pure overlap: c moved onto device 0 over b's interval (transfers removed).
        let mut s = good();
        s.ops[2] = OpSlot {
            id: "c".into(),
            device: 0,
            start_ms: 1.0,
            end_ms: 5.0,
        };
        s.transfers.clear();
        assert!(matches!(
            validate(&diamond(), &s).unwrap_err(),
            Violation::DeviceOverlap { device: 0, .. }
        ));
    }

    #[test]
    fn two_transfers_on_one_port_is_caught() {
        // b on device 1 too, with both transfers leaving device 0 at the same time.
        let mut s = good();
        s.ops[1] = OpSlot {
            id: "b".into(),
            device: 1,
            start_ms: 10.0,
            end_ms: 18.0,
        };
        s.ops[3] = OpSlot {
            id: "d".into(),
            device: 0,
            start_ms: 19.0,
            end_ms: 20.0,
        };
        s.makespan_ms = 20.0;
        s.transfers = vec![
            TransferSlot {
                edges: vec![0],
                from: 0,
                to: 1,
                start_ms: 1.0,
                end_ms: 2.0,
            },
            TransferSlot {
                edges: vec![1],
                from: 0,
                to: 1,
                start_ms: 1.5,
                end_ms: 2.5,
            },
            TransferSlot {
                edges: vec![2],
                from: 1,
                to: 0,
                start_ms: 18.0,
                end_ms: 19.0,
            },
            TransferSlot {
                edges: vec![3],
                from: 1,
                to: 0,
                start_ms: 10.0,
                end_ms: 11.0,
            },
        ];
        s.ops[2].start_ms = 2.5;
        s.ops[2].end_ms = 10.5;
        s.ops[1].start_ms = 10.5;
        s.ops[1].end_ms = 18.5;
        s.transfers[2].start_ms = 18.5;
        s.transfers[2].end_ms = 19.5;
        s.transfers[3].start_ms = 10.5;
        s.transfers[3].end_ms = 11.5;
        s.ops[3].start_ms = 19.5;
        s.ops[3].end_ms = 20.5;
        s.makespan_ms = 20.5;
        let v = validate(&diamond(), &s).unwrap_err();
        assert_eq!(
            v,
            Violation::PortOverlap {
                device: 0,
                port: "egress",
                a: 0,
                b: 1
            },
            "{v}"
        );
        // Shift the second one after the first: only the device ops remain to check.
        s.transfers[1].start_ms = 2.0;
        s.transfers[1].end_ms = 3.0;
        s.ops[2].start_ms = 3.0;
        s.ops[2].end_ms = 11.0;
        s.transfers[3].start_ms = 11.0;
        s.transfers[3].end_ms = 12.0;
        s.ops[1].start_ms = 11.0;
        s.ops[1].end_ms = 19.0;
        s.transfers[2].start_ms = 19.0;
        s.transfers[2].end_ms = 20.0;
        s.ops[3].start_ms = 20.0;
        s.ops[3].end_ms = 21.0;
        s.makespan_ms = 21.0;
        // Ingress of device 0 now carries transfer 3 (11-12) and 2 (19-20): no clash; but
        // device 1 runs c (3-11) and b (11-19) back to back: valid.
        validate(&diamond(), &s).unwrap();
        s.transfers[2].start_ms = 11.5;
        s.transfers[2].end_ms = 12.5;
        let v = validate(&diamond(), &s).unwrap_err();
        assert!(
            matches!(
                v,
                Violation::TransferBeforeProducer { .. } | Violation::PortOverlap { .. }
            ),
            "{v}"
        );
    }

    #[test]
    fn memory_overflow_is_caught() {
        let g = diamond();
        let mut devices = g.devices().to_vec();
        devices[0].memory_bytes = 25;
        let g = Graph::new("m", devices, g.ops().to_vec(), g.edges().to_vec()).unwrap();
        assert_eq!(
            validate(&g, &good()).unwrap_err(),
            Violation::Memory {
                device: 0,
                needed: 30,
                capacity: 25
            }
        );
    }

    #[test]
    fn a_wrong_makespan_is_caught() {
        assert!(matches!(
            broken(|s| s.makespan_ms = 11.0),
            Violation::Makespan { .. }
        ));
    }
}
