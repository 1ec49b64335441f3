//! An SVG Gantt chart of a schedule: one lane per device and one per port (egress, ingress),
//! on a shared time axis. Ops show their id in a `<title>` (the browser's hover text) and, when
//! wide enough, as a label; transfers are drawn on both ports and as a line between lanes.

use std::fmt::Write;

use moirai_core::{Graph, Schedule};

const LANE: f64 = 26.0;
const LEFT: f64 = 120.0;
const WIDTH: f64 = 1200.0;

fn colour(i: usize) -> String {
    // Golden-angle hues: neighbours differ.
    format!("hsl({}, 60%, 62%)", (i as f64 * 137.508) % 360.0)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders `s` (a schedule of `g`) as a standalone SVG document.
pub fn svg(g: &Graph, s: &Schedule) -> String {
    let k = g.num_devices();
    let span = s.makespan_ms.max(1e-9);
    let x = |t: f64| LEFT + (t / span) * (WIDTH - LEFT - 20.0);
    // Lanes: per device, compute then egress then ingress.
    let lane_y = |d: usize, kind: usize| 40.0 + (d * 3 + kind) as f64 * LANE + d as f64 * 10.0;
    let height = lane_y(k, 0) + 40.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        out,
        r#"<text x="10" y="20" font-size="14">{} — {} — makespan {:.4} ms (lower bound {:.4} ms)</text>"#,
        esc(&s.graph),
        esc(&s.method),
        s.makespan_ms,
        s.lower_bound_ms
    );
    for d in 0..k {
        for (kind, label) in ["compute", "egress", "ingress"].iter().enumerate() {
            let y = lane_y(d, kind);
            let name = if kind == 0 {
                format!("{} {}", esc(&g.devices()[d].name), label)
            } else {
                format!("  {label}")
            };
            let _ = writeln!(
                out,
                r##"<rect x="{LEFT}" y="{y}" width="{}" height="{}" fill="{}"/><text x="4" y="{}">{name}</text>"##,
                WIDTH - LEFT - 20.0,
                LANE - 4.0,
                if kind == 0 { "#f4f4f4" } else { "#fafafa" },
                y + LANE / 2.0 + 3.0
            );
        }
    }
    // Time axis, ten ticks.
    let axis_y = lane_y(k, 0) + 5.0;
    for i in 0..=10 {
        let t = span * i as f64 / 10.0;
        let _ = writeln!(
            out,
            r##"<line x1="{0}" y1="35" x2="{0}" y2="{axis_y}" stroke="#ddd"/><text x="{0}" y="{1}" text-anchor="middle">{t:.3}</text>"##,
            x(t),
            axis_y + 14.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="end">ms</text>"#,
        WIDTH - 5.0,
        axis_y + 14.0
    );
    for (i, o) in s.ops.iter().enumerate() {
        let (x0, x1) = (x(o.start_ms), x(o.end_ms));
        let y = lane_y(o.device as usize, 0);
        let w = (x1 - x0).max(0.5);
        let _ = write!(
            out,
            r##"<rect x="{x0:.2}" y="{y}" width="{w:.2}" height="{}" fill="{}" stroke="#333" stroke-width="0.3"><title>op {} on device {}: {:.4}–{:.4} ms</title></rect>"##,
            LANE - 4.0,
            colour(i),
            esc(&o.id),
            o.device,
            o.start_ms,
            o.end_ms
        );
        if w > 8.0 * o.id.len() as f64 {
            let _ = write!(
                out,
                r#"<text x="{:.2}" y="{}" pointer-events="none">{}</text>"#,
                x0 + 2.0,
                y + LANE / 2.0 + 3.0,
                esc(&o.id)
            );
        }
        out.push('\n');
    }
    for (i, t) in s.transfers.iter().enumerate() {
        let (x0, x1) = (x(t.start_ms), x(t.end_ms));
        let w = (x1 - x0).max(0.5);
        let edges: Vec<String> = t
            .edges
            .iter()
            .map(|&e| {
                let edge = &g.edges()[e as usize];
                format!("{}→{}", g.op(edge.src).name, g.op(edge.dst).name)
            })
            .collect();
        let title = format!(
            "transfer {i}: device {} → {} ({}), {:.4}–{:.4} ms",
            t.from,
            t.to,
            esc(&edges.join(", ")),
            t.start_ms,
            t.end_ms
        );
        for (d, kind) in [(t.from as usize, 1), (t.to as usize, 2)] {
            let _ = write!(
                out,
                r##"<rect x="{x0:.2}" y="{}" width="{w:.2}" height="{}" fill="#5b8def" stroke="#1f4fa8" stroke-width="0.3"><title>{title}</title></rect>"##,
                lane_y(d, kind),
                LANE - 4.0
            );
        }
        let _ = writeln!(
            out,
            r##"<line x1="{x0:.2}" y1="{}" x2="{x1:.2}" y2="{}" stroke="#1f4fa8" stroke-opacity="0.35"/>"##,
            lane_y(t.from as usize, 1) + LANE / 2.0,
            lane_y(t.to as usize, 2) + LANE / 2.0
        );
    }
    out.push_str("</svg>\n");
    out
}
