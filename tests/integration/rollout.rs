//! `moirai rollout` end to end: an agent run from an install layout (`releases/<v>/`, a
//! `current` link) gets a new binary over the embedded broker, tries it, and keeps it only
//! if it comes online.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use moirai_orchestrator::rollout::{self, RolloutOptions};
use moirai_tests::fleet::{free_port, scratch, serve_command, Proc};

const ORCH: &str = env!("CARGO_BIN_EXE_moirai-test-orchestrator");
const AGENT: &str = env!("CARGO_BIN_EXE_moirai-test-agent");
const SLOW: Duration = Duration::from_secs(90);

fn board(dir: &Path) -> PathBuf {
    let p = dir.join("test-board.toml");
    std::fs::write(
        &p,
        "name = \"test-board\"\nbackend = \"cpu\"\n[compute]\nf32_gflops = 100.0\n\
         [memory]\nbandwidth_gbps = 10.0\ncapacity_mb = 4096\nusable_mb = 2048\n\
         [runtime]\nlaunch_overhead_us = 20.0\n[network]\nnic_mbps = 1000.0\n",
    )
    .expect("board file");
    p
}

fn args(port: u16, to: &str, binary: &Path, within: u32) -> RolloutOptions {
    RolloutOptions {
        broker: format!("mqtt://127.0.0.1:{port}"),
        prefix: moirai_core::wire::topic::DEFAULT_PREFIX.into(),
        to: to.into(),
        binary: binary.to_path_buf(),
        stage: "100%".into(),
        agents: vec![],
        online_within_s: within,
        wait_ms: 10_000,
        security: Default::default(),
    }
}

#[test]
fn a_broken_release_rolls_back_and_a_good_one_becomes_current() {
    let dir = scratch("rollout");
    let root = dir.join("opt");
    std::fs::create_dir_all(root.join("releases/0.1.0")).unwrap();
    std::fs::copy(AGENT, root.join("releases/0.1.0/moirai-agent")).unwrap();
    symlink("releases/0.1.0", root.join("current")).unwrap();
    let current = || std::fs::read_link(root.join("current")).unwrap();

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let cmd = serve_command(ORCH, &dir, &["--listen", &listen]);
    let mut orch = Proc::spawn("orchestrator", cmd);
    orch.expect(0, SLOW, "a broker connection", |l| {
        l.starts_with("connected to")
    });

    let mut cmd = Command::new(root.join("current/moirai-agent"));
    cmd.args(["--broker", &format!("mqtt://127.0.0.1:{port}")])
        .arg("--config")
        .arg(board(&dir))
        .args(["--name", "pi", "--cpu", "--heartbeat-ms", "200"])
        .args(["--keep-alive-s", "5", "--probe-bytes", "65536"]);
    let mut agent = Proc::spawn("pi", cmd);
    orch.expect(0, SLOW, "pi joining", |l| l.starts_with("joined pi "));

    // A release that starts but never comes online (a hung binary): rolled back in time.
    let hung = dir.join("hung-agent");
    std::fs::write(&hung, "#!/bin/sh\nsleep 600\n").unwrap();
    let from = orch.seen.len();
    let switched = rollout::run(args(port, "0.2.0-broken", &hung, 2), &mut |l| {
        println!("{l}")
    })
    .expect("rollout runs");
    assert!(!switched, "a hung release must not count as switched");
    agent.expect(0, SLOW, "the rollback", |l| {
        l.contains("release 0.2.0-broken rolled back") && l.contains("not online within 2 s")
    });
    assert_eq!(current(), Path::new("releases/0.1.0"));
    assert!(!root.join("releases/0.2.0-broken").exists());
    orch.expect(from, SLOW, "pi back after the rollback", |l| {
        l.starts_with("joined pi ") || l.starts_with("restarted pi ")
    });

    // A release that crashes at once: rolled back as well.
    let from = orch.seen.len();
    let crashing = dir.join("crashing-agent");
    std::fs::write(&crashing, "#!/bin/sh\necho bad build >&2\nexit 3\n").unwrap();
    assert!(
        !rollout::run(args(port, "0.2.1", &crashing, 30), &mut |l| println!("{l}"))
            .expect("rollout runs")
    );
    agent.expect(0, SLOW, "the second rollback", |l| {
        l.contains("release 0.2.1 rolled back") && l.contains("exited")
    });
    assert_eq!(current(), Path::new("releases/0.1.0"));
    orch.expect(from, SLOW, "pi back after the second rollback", |l| {
        l.starts_with("joined pi ") || l.starts_with("restarted pi ")
    });

    // A working release (the same agent build under a new name): online, then current.
    let from = orch.seen.len();
    assert!(rollout::run(
        args(port, "0.3.0", Path::new(AGENT), 60),
        &mut |l| println!("{l}")
    )
    .expect("rollout runs"));
    // The new process reports online; its predecessor then switches the links and steps down.
    let status = agent.wait_exit(SLOW).expect("the old process steps down");
    assert_eq!(
        status.code(),
        Some(i32::from(moirai_agent::rollout::SWITCHED_EXIT))
    );
    assert_eq!(current(), Path::new("releases/0.3.0"));
    assert_eq!(
        std::fs::read_link(root.join("previous")).unwrap(),
        Path::new("releases/0.1.0")
    );
    orch.expect(from, SLOW, "the new release's session", |l| {
        l.starts_with("joined pi ") || l.starts_with("restarted pi ")
    });
    // The trial process runs on, detached from this test's handle: stop it by its pid.
    let line = agent.expect(0, SLOW, "the new pid", |l| l.contains("is online (pid "));
    let pid: String = agent.seen[line]
        .split("(pid ")
        .nth(1)
        .map(|r| r.chars().take_while(|c| c.is_ascii_digit()).collect())
        .unwrap_or_default();
    let _ = Command::new("kill").arg(&pid).status();
}
