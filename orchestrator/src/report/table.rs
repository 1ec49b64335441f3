//! Plain-text and Markdown tables of plans, and CSV for scripts.

use std::fmt::Write;

use crate::place::Plan;

/// One row of a method comparison: a plan, or why the method had none.
pub struct Row {
    pub graph: String,
    pub method: String,
    pub outcome: Result<Plan, String>,
}

fn cells(r: &Row) -> Vec<String> {
    match &r.outcome {
        Ok(p) => vec![
            r.graph.clone(),
            r.method.clone(),
            format!("{:.4}", p.makespan()),
            format!("{:.4}", p.bound.value_ms),
            format!("{:.3}", p.makespan() / p.bound.value_ms.max(1e-12)),
            if p.optimal {
                "optimal".to_string()
            } else {
                format!("{:.1}%", 100.0 * p.gap())
            },
            format!("{:.3}", p.schedule.solve_seconds),
            format!("{:.3}", p.reached_seconds),
            p.schedule
                .devices_used()
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ],
        Err(e) => vec![
            r.graph.clone(),
            r.method.clone(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            format!("({e})"),
        ],
    }
}

const HEADER: [&str; 9] = [
    "graph",
    "method",
    "makespan_ms",
    "lower_bound_ms",
    "ratio",
    "gap",
    "solve_s",
    "reached_s",
    "devices",
];

/// A Markdown table (also readable on a terminal).
pub fn markdown(rows: &[Row]) -> String {
    let body: Vec<Vec<String>> = rows.iter().map(cells).collect();
    let mut width: Vec<usize> = HEADER.iter().map(|h| h.len()).collect();
    for r in &body {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cols: Vec<String>| {
        let mut s = String::from("|");
        for (c, w) in cols.iter().zip(&width) {
            let _ = write!(s, " {c:<w$} |");
        }
        s.push('\n');
        s
    };
    let mut out = line(HEADER.iter().map(|s| s.to_string()).collect());
    out += &line(width.iter().map(|w| "-".repeat(*w)).collect());
    for r in body {
        out += &line(r);
    }
    out
}

/// The same rows as CSV.
pub fn csv(rows: &[Row]) -> String {
    let mut out = HEADER.join(",") + ",error\n";
    for r in rows {
        match &r.outcome {
            Ok(_) => {
                let c = cells(r);
                let _ = writeln!(out, "{},\"{}\",", c[..8].join(","), c[8]);
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "{},{},,,,,,,,\"{}\"",
                    r.graph,
                    r.method,
                    e.replace('"', "'")
                );
            }
        }
    }
    out
}
