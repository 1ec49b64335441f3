//! The registry as a [`FleetSnapshot`] (what the orchestrator publishes) and as a table
//! (what `moirai fleet` prints).

use std::time::Duration;

use moirai_core::wire::data::ServingStats;
use moirai_core::wire::life::{FleetRow, FleetSnapshot};
use moirai_core::wire::truncated;

use super::life::Liveness;
use super::Fleet;

/// The registry now. `ops_of` tells how many ops an agent runs in the current plan.
pub fn snapshot(
    fleet: &Fleet,
    now: Duration,
    taken_at_ms: u64,
    plan: Option<(u64, f64, &str)>,
    ops_of: impl Fn(&str) -> u32,
) -> FleetSnapshot {
    let agents = fleet
        .registry()
        .all()
        .map(|(name, r)| FleetRow {
            name: r.birth.name.clone(),
            board: r.birth.board.clone(),
            adapter: r.birth.adapter.clone(),
            backend: r.birth.backend.clone(),
            online: r.is_online(),
            cause: match r.session.liveness {
                Liveness::Online => truncated(""),
                Liveness::Dead(c) => truncated(&c.to_string()),
            },
            bd_seq: r.session.bd_seq,
            last_seen_ms: now.saturating_sub(r.session.last_seen).as_millis() as u64,
            heartbeats: r.heartbeats,
            busy: r.busy,
            emulation_scale: r.birth.emulation_scale,
            link: r.link,
            ops: if r.is_online() { ops_of(name) } else { 0 },
        })
        .collect();
    let (epoch, makespan_ms, model) = plan.unwrap_or((0, 0.0, ""));
    FleetSnapshot {
        taken_at_ms,
        epoch,
        makespan_ms,
        model: model.to_string(),
        agents,
        dropped: fleet.drops.undecodable,
    }
}

/// The serving figures under the table: requests, measured latency next to the prediction.
pub fn serving(s: &ServingStats, now_ms: u64) -> String {
    let [p50, p90, p99] = s.latency_ms;
    let age = now_ms.saturating_sub(s.taken_at_ms) as f64 / 1e3;
    let mut out = format!(
        "serving: epoch {}, {} agents; {} requests answered, {} failed, {} re-run (as of {age:.1} s ago)\n",
        s.epoch, s.agents, s.completed, s.failed, s.reruns
    );
    if s.completed > 0 {
        out.push_str(&format!(
            "latency: measured p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms; predicted {:.2} ms; measured/predicted p50 {:.2}\n",
            s.predicted_ms, s.ratio_p50
        ));
    }
    out
}

fn rate(bps: u64) -> String {
    let b = bps as f64;
    if b >= 1e9 {
        format!("{:.1} GB/s", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB/s", b / 1e6)
    } else {
        format!("{:.0} kB/s", b / 1e3)
    }
}

/// A plain-text table, one row per agent.
pub fn table(s: &FleetSnapshot, now_ms: u64) -> String {
    let header = [
        "agent",
        "board",
        "adapter",
        "state",
        "bd_seq",
        "last seen",
        "ops",
        "link up/down",
        "emulated",
    ];
    let mut rows: Vec<[String; 9]> = Vec::new();
    for a in &s.agents {
        let age = a.last_seen_ms + now_ms.saturating_sub(s.taken_at_ms);
        rows.push([
            a.name.to_string(),
            a.board.to_string(),
            format!("{} ({})", a.adapter, a.backend),
            if a.online {
                if a.busy {
                    "online, profiling"
                } else {
                    "online"
                }
                .to_string()
            } else {
                format!("dead: {}", a.cause)
            },
            a.bd_seq.to_string(),
            format!("{:.1} s ago", age as f64 / 1e3),
            a.ops.to_string(),
            a.link
                .map(|l| format!("{} / {}", rate(l.up_bps), rate(l.down_bps)))
                .unwrap_or_else(|| "-".into()),
            a.emulation_scale
                .map(|x| format!("x{x:.2}"))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = String::new();
    let online = s.agents.iter().filter(|a| a.online).count();
    out.push_str(&format!(
        "fleet: {online} online, {} known; plan epoch {} ({}), makespan {:.2} ms; {} payloads dropped\n",
        s.agents.len(),
        s.epoch,
        if s.model.is_empty() { "-" } else { &s.model },
        s.makespan_ms,
        s.dropped
    ));
    out.push_str(&line(header.to_vec()));
    out.push('\n');
    out.push_str(&line(
        width
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::testutil::birth;
    use crate::fleet::{FleetConfig, Inbound};
    use moirai_core::cost::ProfileTable;
    use moirai_core::wire::life::Death;

    #[test]
    fn the_table_shows_online_and_dead_agents_with_their_sessions() {
        let mut f = Fleet::new(FleetConfig::default(), ProfileTable::new(), vec![]);
        f.handle(Inbound::Birth(birth("alpha", "pi5", 11)), Duration::ZERO);
        f.handle(Inbound::Birth(birth("beta", "orin", 12)), Duration::ZERO);
        f.handle(
            Inbound::Death {
                name: "beta".into(),
                death: Death { bd_seq: 12 },
            },
            Duration::from_secs(1),
        );
        let s = snapshot(&f, Duration::from_secs(2), 1000, Some((3, 4.5, "m")), |n| {
            if n == "alpha" {
                7
            } else {
                0
            }
        });
        let t = table(&s, 1500);
        assert!(
            t.starts_with("fleet: 1 online, 2 known; plan epoch 3 (m)"),
            "{t}"
        );
        let alpha = t.lines().find(|l| l.starts_with("alpha")).unwrap();
        assert!(
            alpha.contains("online")
                && alpha.contains(" 11 ")
                && alpha.contains("2.5 s ago")
                && alpha.contains(" 7 "),
            "{alpha}"
        );
        let beta = t.lines().find(|l| l.starts_with("beta")).unwrap();
        assert!(beta.contains("dead: last will"), "{beta}");
    }
}
