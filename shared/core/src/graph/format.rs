//! The `profiled-graph/v1` JSON form of a [`Graph`] (see `../shared/benchmarks/README.md`).
//!
//! The reader walks the JSON by hand rather than through `#[derive(Deserialize)]` so that
//! every refusal names the field and the op or edge it sits in ("op `17`: `time_ms`[2] is
//! -1"), which serde's line/column messages cannot.

use std::collections::HashMap;

use serde_json::{json, Map, Value};
use thiserror::Error;

use super::{Device, Edge, Graph, GraphError, Op};
use crate::ids::OpId;

/// The `format` tag this module reads and writes.
pub const FORMAT: &str = "profiled-graph/v1";

/// Why a profiled-graph JSON document was refused.
#[derive(Debug, Error, PartialEq)]
pub enum FormatError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("`format` is {found:?}, expected \"{FORMAT}\"")]
    WrongFormat { found: String },
    #[error("`time_unit` is {0:?}; only \"ms\" is supported")]
    TimeUnit(String),
    #[error("{place}: missing field `{field}`")]
    Missing { place: String, field: &'static str },
    #[error("{place}: field `{field}` should be {expected}")]
    Type {
        place: String,
        field: &'static str,
        expected: &'static str,
    },
    #[error("op `{0}` is defined twice")]
    DuplicateOp(String),
    #[error("device `{0}` is defined twice")]
    DuplicateDevice(String),
    #[error("edge {edge}: `{field}` names op `{id}`, which is not defined")]
    UnknownOp {
        edge: usize,
        field: &'static str,
        id: String,
    },
    #[error("edge {edge} ({src} -> {dst}) duplicates edge {first}")]
    DuplicateEdge {
        edge: usize,
        first: usize,
        src: String,
        dst: String,
    },
    #[error(transparent)]
    Graph(#[from] GraphError),
}

fn field<'a>(
    obj: &'a Map<String, Value>,
    place: &str,
    f: &'static str,
) -> Result<&'a Value, FormatError> {
    obj.get(f).ok_or_else(|| FormatError::Missing {
        place: place.to_string(),
        field: f,
    })
}

fn type_err(place: &str, field: &'static str, expected: &'static str) -> FormatError {
    FormatError::Type {
        place: place.to_string(),
        field,
        expected,
    }
}

/// An op or device id may be written as a string or a number; both become a string.
fn id_of(v: &Value, place: &str, f: &'static str) -> Result<String, FormatError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(type_err(place, f, "a string or number")),
    }
}

/// A JSON number, kept as f64 even when NaN-like values sneak in as strings (refused).
fn num(v: &Value, place: &str, f: &'static str) -> Result<f64, FormatError> {
    v.as_f64().ok_or_else(|| type_err(place, f, "a number"))
}

fn bytes(v: &Value, place: &str, f: &'static str) -> Result<u64, FormatError> {
    match v.as_f64() {
        Some(x) if x.is_finite() && x >= 0.0 && x <= u64::MAX as f64 => Ok(x.round() as u64),
        _ => Err(type_err(place, f, "a non-negative number of bytes")),
    }
}

fn num_array(v: &Value, place: &str, f: &'static str) -> Result<Vec<f64>, FormatError> {
    v.as_array()
        .ok_or_else(|| type_err(place, f, "an array of numbers"))?
        .iter()
        .map(|x| num(x, place, f))
        .collect()
}

/// Parses a profiled-graph/v1 document.
pub fn from_json(text: &str) -> Result<Graph, FormatError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| FormatError::Json(e.to_string()))?;
    let top = doc
        .as_object()
        .ok_or_else(|| type_err("document", "(root)", "an object"))?;
    let format = field(top, "document", "format")?
        .as_str()
        .ok_or_else(|| type_err("document", "format", "a string"))?;
    if format != FORMAT {
        return Err(FormatError::WrongFormat {
            found: format.to_string(),
        });
    }
    if let Some(unit) = top.get("time_unit") {
        let unit = unit
            .as_str()
            .ok_or_else(|| type_err("document", "time_unit", "a string"))?;
        if unit != "ms" {
            return Err(FormatError::TimeUnit(unit.to_string()));
        }
    }
    let name = top
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("graph")
        .to_string();

    let mut devices = Vec::new();
    for (i, d) in field(top, "document", "devices")?
        .as_array()
        .ok_or_else(|| type_err("document", "devices", "an array"))?
        .iter()
        .enumerate()
    {
        let place = format!("device {i}");
        let obj = d
            .as_object()
            .ok_or_else(|| type_err(&place, "(device)", "an object"))?;
        let name = obj
            .get("name")
            .map(|v| id_of(v, &place, "name"))
            .transpose()?
            .unwrap_or_else(|| format!("dev{i}"));
        if devices.iter().any(|x: &Device| x.name == name) {
            return Err(FormatError::DuplicateDevice(name));
        }
        let memory_bytes = match obj.get("memory_bytes") {
            Some(v) => bytes(v, &place, "memory_bytes")?,
            None => u64::MAX,
        };
        devices.push(Device { name, memory_bytes });
    }

    let mut ops = Vec::new();
    let mut by_name: HashMap<String, OpId> = HashMap::new();
    for (i, o) in field(top, "document", "ops")?
        .as_array()
        .ok_or_else(|| type_err("document", "ops", "an array"))?
        .iter()
        .enumerate()
    {
        let place = format!("op #{i}");
        let obj = o
            .as_object()
            .ok_or_else(|| type_err(&place, "(op)", "an object"))?;
        let name = id_of(field(obj, &place, "id")?, &place, "id")?;
        let place = format!("op `{name}`");
        let time_ms = num_array(field(obj, &place, "time_ms")?, &place, "time_ms")?;
        let memory_bytes = match obj.get("memory_bytes") {
            Some(v) => bytes(v, &place, "memory_bytes")?,
            None => 0,
        };
        let kernel = obj
            .get("kernel")
            .and_then(Value::as_str)
            .map(str::to_string);
        if by_name
            .insert(name.clone(), OpId::from(ops.len()))
            .is_some()
        {
            return Err(FormatError::DuplicateOp(name));
        }
        ops.push(Op {
            name,
            time_ms,
            memory_bytes,
            kernel,
        });
    }

    let k = devices.len();
    let mut edges = Vec::new();
    let mut seen: HashMap<(OpId, OpId, Option<String>), usize> = HashMap::new();
    for (i, e) in field(top, "document", "edges")?
        .as_array()
        .ok_or_else(|| type_err("document", "edges", "an array"))?
        .iter()
        .enumerate()
    {
        let place = format!("edge {i}");
        let obj = e
            .as_object()
            .ok_or_else(|| type_err(&place, "(edge)", "an object"))?;
        let end = |f: &'static str| -> Result<OpId, FormatError> {
            let id = id_of(field(obj, &place, f)?, &place, f)?;
            by_name.get(&id).copied().ok_or(FormatError::UnknownOp {
                edge: i,
                field: f,
                id,
            })
        };
        let (src, dst) = (end("src")?, end("dst")?);
        let place = format!(
            "edge {i} ({} -> {})",
            ops[src.index()].name,
            ops[dst.index()].name
        );
        let rows = field(obj, &place, "transfer_ms")?
            .as_array()
            .ok_or_else(|| type_err(&place, "transfer_ms", "a matrix (array of arrays)"))?;
        let mut transfer_ms = Vec::with_capacity(k * k);
        for row in rows {
            let row = num_array(row, &place, "transfer_ms")?;
            if row.len() != k {
                return Err(GraphError::TransferSize {
                    edge: i,
                    src: ops[src.index()].name.clone(),
                    dst: ops[dst.index()].name.clone(),
                    rows: rows.len(),
                    cols: row.len(),
                    k,
                }
                .into());
            }
            transfer_ms.extend(row);
        }
        if rows.len() != k {
            return Err(GraphError::TransferSize {
                edge: i,
                src: ops[src.index()].name.clone(),
                dst: ops[dst.index()].name.clone(),
                rows: rows.len(),
                cols: k,
                k,
            }
            .into());
        }
        let tensor = obj
            .get("tensor")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(&first) = seen.get(&(src, dst, tensor.clone())) {
            return Err(FormatError::DuplicateEdge {
                edge: i,
                first,
                src: ops[src.index()].name.clone(),
                dst: ops[dst.index()].name.clone(),
            });
        }
        seen.insert((src, dst, tensor.clone()), i);
        edges.push(Edge {
            src,
            dst,
            transfer_ms,
            tensor,
        });
    }
    Ok(Graph::new(name, devices, ops, edges)?)
}

/// Writes a graph as a profiled-graph/v1 document.
pub fn to_json(g: &Graph) -> String {
    let k = g.num_devices();
    let doc = json!({
        "format": FORMAT,
        "name": g.name,
        "time_unit": "ms",
        "devices": g.devices().iter().map(|d| json!({"name": d.name, "memory_bytes": d.memory_bytes})).collect::<Vec<_>>(),
        "ops": g.ops().iter().map(|o| {
            let mut v = json!({"id": o.name, "time_ms": o.time_ms, "memory_bytes": o.memory_bytes});
            if let Some(kernel) = &o.kernel {
                v["kernel"] = json!(kernel);
            }
            v
        }).collect::<Vec<_>>(),
        "edges": g.edges().iter().map(|e| {
            let mut v = json!({
                "src": g.op(e.src).name,
                "dst": g.op(e.dst).name,
                "transfer_ms": e.transfer_ms.chunks(k).collect::<Vec<_>>(),
            });
            if let Some(t) = &e.tensor {
                v["tensor"] = json!(t);
            }
            v
        }).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&doc).expect("a JSON value always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"format":"profiled-graph/v1","name":"t","time_unit":"ms",
      "devices":[{"name":"d0","memory_bytes":10},{"name":"d1","memory_bytes":10}],
      "ops":[{"id":"1","time_ms":[1,2],"memory_bytes":1},{"id":"2","time_ms":[3,4],"memory_bytes":1}],
      "edges":[{"src":"1","dst":"2","transfer_ms":[[0,1],[1,0]]}]}"#;

    fn with(from: &str, to: &str) -> Result<Graph, FormatError> {
        assert!(GOOD.contains(from), "fixture lacks {from}");
        from_json(&GOOD.replacen(from, to, 1))
    }

    #[test]
    fn a_good_document_round_trips() {
        let g = from_json(GOOD).unwrap();
        assert_eq!(g.num_ops(), 2);
        let again = from_json(&to_json(&g)).unwrap();
        assert_eq!(again.ops(), g.ops());
        assert_eq!(again.edges(), g.edges());
        assert_eq!(again.devices(), g.devices());
    }

    #[test]
    fn malformed_json_is_refused() {
        assert!(matches!(
            from_json("{\"format\":"),
            Err(FormatError::Json(_))
        ));
    }

    #[test]
    fn wrong_format_tag_is_named() {
        let e = with("profiled-graph/v1", "profiled-graph/v9").unwrap_err();
        assert!(e.to_string().contains("profiled-graph/v9"), "{e}");
    }

    #[test]
    fn unknown_edge_end_names_edge_and_id() {
        let e = with(r#""dst":"2""#, r#""dst":"99""#).unwrap_err();
        assert_eq!(
            e,
            FormatError::UnknownOp {
                edge: 0,
                field: "dst",
                id: "99".into()
            }
        );
    }

    #[test]
    fn duplicate_op_id_is_named() {
        let e = with(r#"{"id":"2""#, r#"{"id":"1""#).unwrap_err();
        assert_eq!(e, FormatError::DuplicateOp("1".into()));
    }

    #[test]
    fn time_vector_of_wrong_size_names_the_op() {
        let e = with("[3,4]", "[3,4,5]").unwrap_err();
        assert!(
            matches!(e, FormatError::Graph(GraphError::OpTimeSize { ref op, .. }) if op == "2"),
            "{e}"
        );
    }

    #[test]
    fn transfer_matrix_of_wrong_size_names_the_edge() {
        let e = with("[[0,1],[1,0]]", "[[0,1],[1,0],[1,1]]").unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::Graph(GraphError::TransferSize { edge: 0, .. })
            ),
            "{e}"
        );
        let e = with("[[0,1],[1,0]]", "[[0,1],[1]]").unwrap_err();
        assert!(e.to_string().contains("edge 0 (1 -> 2)"), "{e}");
    }

    #[test]
    fn negative_time_names_op_and_device() {
        let e = with("[1,2]", "[1,-2]").unwrap_err();
        assert!(e.to_string().contains("op `1`: `time_ms`[1] is -2"), "{e}");
    }

    #[test]
    fn negative_transfer_names_edge() {
        let e = with("[[0,1],[1,0]]", "[[0,1],[-1,0]]").unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::Graph(GraphError::BadTransfer {
                    edge: 0,
                    from: 1,
                    to: 0,
                    ..
                })
            ),
            "{e}"
        );
    }

    #[test]
    fn non_numeric_time_is_refused() {
        let e = with("[1,2]", r#"[1,"NaN"]"#).unwrap_err();
        assert!(e.to_string().contains("op `1`"), "{e}");
    }

    #[test]
    fn a_cycle_is_refused() {
        let text = GOOD.replace(
            r#"[{"src":"1","dst":"2","transfer_ms":[[0,1],[1,0]]}]"#,
            r#"[{"src":"1","dst":"2","transfer_ms":[[0,1],[1,0]]},{"src":"2","dst":"1","transfer_ms":[[0,1],[1,0]]}]"#,
        );
        assert!(matches!(
            from_json(&text),
            Err(FormatError::Graph(GraphError::Cycle { .. }))
        ));
    }

    #[test]
    fn an_empty_graph_is_refused() {
        let text = GOOD
            .replace(r#"{"id":"1","time_ms":[1,2],"memory_bytes":1},{"id":"2","time_ms":[3,4],"memory_bytes":1}"#, "")
            .replace(r#"{"src":"1","dst":"2","transfer_ms":[[0,1],[1,0]]}"#, "");
        assert_eq!(
            from_json(&text).unwrap_err(),
            FormatError::Graph(GraphError::Empty)
        );
    }

    #[test]
    fn missing_field_names_the_op() {
        let e = with(r#""time_ms":[3,4],"#, "").unwrap_err();
        assert_eq!(e.to_string(), "op `2`: missing field `time_ms`");
    }
}
