//! The fleet end to end: `serve` (embedded broker or mosquitto) and agents as separate
//! processes. Short heartbeats and debounces keep each scenario within seconds; agents
//! profile a tiny model on the CPU executor.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use moirai_agent::link::REFUSED_EXIT;
use moirai_core::wire::life::{Death, OrchState};
use moirai_core::wire::topic::Topics;
use moirai_core::wire::{decode, encode, TopicKind, PROTOCOL_VERSION};
use moirai_tests::fleet::{free_port, mosquitto, repo_root, scratch, wait_for_port, Proc};

const ORCH: &str = env!("CARGO_BIN_EXE_moirai-test-orchestrator");
const AGENT: &str = env!("CARGO_BIN_EXE_moirai-test-agent");
const HEARTBEAT_TIMEOUT_MS: u64 = 1500;
const DEBOUNCE_MS: u64 = 300;
const MAX_DEBOUNCE_MS: u64 = 2000;
const SLOW: Duration = Duration::from_secs(90);

fn board(dir: &Path, name: &str, gflops: f64) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "name = \"{name}\"\nbackend = \"cpu\"\n[compute]\nf32_gflops = {gflops}\n\
             [memory]\nbandwidth_gbps = 10.0\ncapacity_mb = 4096\nusable_mb = 2048\n\
             [runtime]\nlaunch_overhead_us = 20.0\n[network]\nnic_mbps = 1000.0\n"
        ),
    )
    .expect("board file");
    p
}

struct Fleet {
    dir: PathBuf,
    port: u16,
    orch: Proc,
    agents: Vec<Proc>,
}

fn start_orchestrator(dir: &Path, port: u16, external: bool) -> Proc {
    let mut cmd = Command::new(ORCH);
    cmd.arg("serve")
        .arg("--model")
        .arg(repo_root().join("tests/fixtures/onnx/tiny-fleet.onnx"))
        .arg("--store")
        .arg(dir.join("profiles.json"))
        .args(["--heartbeat-timeout-ms", &HEARTBEAT_TIMEOUT_MS.to_string()])
        .args(["--debounce-ms", &DEBOUNCE_MS.to_string()])
        .args(["--max-debounce-ms", &MAX_DEBOUNCE_MS.to_string()])
        .args(["--profile-runs", "1", "--time-limit-ms", "500"]);
    if external {
        cmd.args(["--broker", &format!("mqtt://127.0.0.1:{port}")]);
    } else {
        cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
    }
    let mut p = Proc::spawn("orchestrator", cmd);
    p.expect(0, SLOW, "a broker connection", |l| {
        l.starts_with("connected to")
    });
    p
}

fn start_agent(dir: &Path, port: u16, name: &str, board_file: &Path) -> Proc {
    let mut cmd = Command::new(AGENT);
    cmd.args(["--broker", &format!("mqtt://127.0.0.1:{port}")])
        .arg("--config")
        .arg(board_file)
        .args(["--name", name, "--cpu", "--heartbeat-ms", "200"])
        .args(["--keep-alive-s", "5", "--probe-bytes", "65536"]);
    let _ = dir;
    Proc::spawn(name, cmd)
}

/// A `plan epoch=` line naming exactly these agents.
fn plan_with(agents: &[&str]) -> impl Fn(&str) -> bool {
    let want = format!(" agents={} ", agents.join(","));
    move |l: &str| l.starts_with("plan epoch=") && l.contains(&want)
}

fn is_plan(l: &str) -> bool {
    l.starts_with("plan epoch=")
}

impl Fleet {
    /// Orchestrator plus agents a (fast board), b and c (slow board); waits for their plan.
    fn start(external_port: Option<u16>) -> Fleet {
        let dir = scratch("fleet");
        let port = external_port.unwrap_or_else(free_port);
        let orch = start_orchestrator(&dir, port, external_port.is_some());
        let fast = board(&dir, "test-fast", 400.0);
        let slow = board(&dir, "test-slow", 50.0);
        let agents = vec![
            start_agent(&dir, port, "a", &fast),
            start_agent(&dir, port, "b", &slow),
            start_agent(&dir, port, "c", &slow),
        ];
        let mut f = Fleet {
            dir,
            port,
            orch,
            agents,
        };
        f.orch
            .expect(0, SLOW, "a plan on a,b,c", plan_with(&["a", "b", "c"]));
        for a in &mut f.agents {
            a.expect(0, SLOW, "an assignment", |l| l.contains("assignment"));
        }
        f
    }

    fn board(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.toml"))
    }

    fn agent(&mut self, name: &str) -> &mut Proc {
        self.agents
            .iter_mut()
            .find(|p| p.name == name)
            .expect("known agent")
    }
}

/// `bd_seq` in the orchestrator's latest `joined NAME` or `restarted NAME` line.
fn bd_seq_of(orch: &mut Proc, name: &str) -> u64 {
    orch.drain();
    orch.seen
        .iter()
        .rev()
        .filter(|l| {
            l.starts_with(&format!("joined {name} "))
                || l.starts_with(&format!("restarted {name} "))
        })
        .find_map(|l| {
            l.split("bd_seq=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("a joined line with bd_seq")
}

/// Publishes a death for `name` with `bd_seq`, as a broker delivering a stale Last Will would.
fn inject_death(port: u16, name: &str, bd_seq: u64) {
    let topic = Topics::default().agent(name, TopicKind::Death);
    let bytes = encode(&Death { bd_seq }).expect("encodes");
    publish_raw(port, "late-will", &topic, bytes, None);
}

/// Publishes `bytes` on `topic` as client `id` (QoS 1, waits for the PUBACK) once the
/// orchestrator's retained state says it is online (it subscribes before announcing that, so
/// nothing published after it is lost); with `listen`, first subscribes to that topic and
/// returns the first payload seen on it within 20 s.
fn publish_raw(
    port: u16,
    id: &str,
    topic: &str,
    bytes: Vec<u8>,
    listen: Option<&str>,
) -> Option<Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        let (client, mut el) = rumqttc::AsyncClient::new(opts, 10);
        let state = Topics::default().orch_state();
        client
            .subscribe(&state, rumqttc::QoS::AtLeastOnce)
            .await
            .expect("queued");
        let t0 = Instant::now();
        loop {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no orchestrator online"
            );
            match tokio::time::timeout(Duration::from_millis(500), el.poll()).await {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))))
                    if p.topic == state
                        && decode::<OrchState>(&p.payload).is_ok_and(|s| s.online) =>
                {
                    break
                }
                Ok(Err(e)) => panic!("waiting for the orchestrator: {e}"),
                _ => {}
            }
        }
        if let Some(l) = listen {
            client
                .subscribe(l, rumqttc::QoS::AtLeastOnce)
                .await
                .expect("queued");
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => break,
                    Ok(_) => {}
                    Err(e) => panic!("subscribing to {l}: {e}"),
                }
            }
        }
        client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, bytes)
            .await
            .expect("queued");
        let mut got = None;
        let t0 = Instant::now();
        let mut acked = false;
        while t0.elapsed() < Duration::from_secs(20)
            && !(acked && (listen.is_none() || got.is_some()))
        {
            match tokio::time::timeout(Duration::from_millis(500), el.poll()).await {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => acked = true,
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                    if Some(p.topic.as_str()) == listen {
                        got = Some(p.payload.to_vec());
                    }
                }
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(e)) => panic!("publishing to {topic}: {e}"),
            }
        }
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
        got
    })
}

#[test]
fn agents_of_another_protocol_version_are_refused_with_a_reason_on_both_sides() {
    let dir = scratch("refusal");
    let port = free_port();
    let mut orch = start_orchestrator(&dir, port, false);
    let topics = Topics::default();

    // A birth from a future agent: only its version byte and its topic can be trusted.
    let mut birth = vec![PROTOCOL_VERSION + 1];
    birth.extend_from_slice(b"anything a newer protocol might carry");
    let refusal = publish_raw(
        port,
        "future-pi",
        &topics.agent("future-pi", TopicKind::Birth),
        birth,
        Some(&topics.agent("future-pi", TopicKind::Refused)),
    )
    .expect("a refusal on the agent's refused topic");
    let text = String::from_utf8(refusal).expect("plain text");
    let future = format!("protocol {}", PROTOCOL_VERSION + 1);
    let ours = format!("speaks {PROTOCOL_VERSION}");
    assert!(text.contains(&future) && text.contains(&ours), "{text}");
    orch.expect(0, SLOW, "the refusal", |l| {
        l.starts_with("refused future-pi: ") && l.contains(&future)
    });
    assert_eq!(orch.count_from(0, |l| l.starts_with("joined future-pi")), 0);

    // The agent side: told it is refused, a real agent stops with its own exit status
    // and says why.
    let b = board(&dir, "test-slow", 50.0);
    let mut agent = start_agent(&dir, port, "old-pi", &b);
    orch.expect(0, SLOW, "old-pi joining", |l| {
        l.starts_with("joined old-pi ")
    });
    publish_raw(
        port,
        "tester",
        &topics.agent("old-pi", TopicKind::Refused),
        b"you are too old\x1b[2J".to_vec(),
        None,
    );
    let status = agent.wait_exit(SLOW).expect("the agent stops");
    assert_eq!(
        status.code(),
        Some(i32::from(REFUSED_EXIT)),
        "{}",
        agent.tail(20)
    );
    agent.expect(0, SLOW, "the reason", |l| {
        l.contains("refused this agent: you are too old[2J")
    });
}

#[test]
fn the_fleet_on_the_embedded_broker_plans_replans_and_survives_faults() {
    let mut f = Fleet::start(None);
    let o = &mut f.orch;
    assert!(
        o.count_from(0, |l| l.starts_with("profiling test-fast on a:")
            && l.contains("kernels"))
            >= 1,
        "the fast class was profiled:\n{}",
        o.tail(40)
    );

    // A join of a known class: profiled already, exactly one replan.
    let from = o.seen.len();
    let slow = f.board("test-slow");
    f.agents.push(start_agent(&f.dir, f.port, "d", &slow));
    let o = &mut f.orch;
    o.expect(
        from,
        SLOW,
        "a plan on a,b,c,d",
        plan_with(&["a", "b", "c", "d"]),
    );
    std::thread::sleep(Duration::from_millis(3 * MAX_DEBOUNCE_MS));
    assert_eq!(
        o.count_from(from, is_plan),
        1,
        "one join, one replan:\n{}",
        o.tail(40)
    );
    assert_eq!(
        o.count_from(from, |l| l.starts_with("profiling test-slow")),
        0,
        "a second board of a known class is not profiled again"
    );

    // SIGKILL: gone and replanned within the heartbeat timeout (plus the debounce).
    let from = o.seen.len();
    let t0 = Instant::now();
    f.agent("b").kill();
    let o = &mut f.orch;
    o.expect(from, SLOW, "b leaving", |l| l.starts_with("left b"));
    o.expect(from, SLOW, "a plan on a,c,d", plan_with(&["a", "c", "d"]));
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(HEARTBEAT_TIMEOUT_MS + MAX_DEBOUNCE_MS + 1000),
        "replanned {took:?} after the kill"
    );

    // A stopped agent sends no heartbeat and leaves no Last Will (its socket stays open):
    // the heartbeat timeout declares it dead; resumed, it is asked for a birth and rejoins.
    let from = o.seen.len();
    let pid = f.agent("d").pid().to_string();
    Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill -STOP");
    let o = &mut f.orch;
    o.expect(from, SLOW, "d timing out", |l| {
        l == "left d (heartbeat timeout)"
    });
    o.expect(from, SLOW, "a plan on a,c", plan_with(&["a", "c"]));
    Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .expect("kill -CONT");
    let o = &mut f.orch;
    o.expect(from, SLOW, "d back", |l| l.starts_with("joined d "));
    o.expect(
        from,
        SLOW,
        "a plan on a,c,d again",
        plan_with(&["a", "c", "d"]),
    );

    // A restarted agent outranks its predecessor: the old session's Last Will, delivered
    // late, changes nothing.
    let old = bd_seq_of(o, "c");
    f.agent("c").kill();
    let slow = f.board("test-slow");
    let from = f.orch.seen.len();
    let c2 = start_agent(&f.dir, f.port, "c", &slow);
    f.agents.retain(|p| p.name != "c");
    f.agents.push(c2);
    let o = &mut f.orch;
    let i = o.expect(from, SLOW, "c's new session", |l| {
        l.starts_with("joined c ") || l.starts_with("restarted c ")
    });
    let new = bd_seq_of(o, "c");
    assert!(new > old, "bd_seq {new} after restart, {old} before");
    if o.seen[i].starts_with("joined") {
        // The broker delivered the old Last Will before the new birth: c left and came back.
        o.expect(from, SLOW, "a plan with c", plan_with(&["a", "c", "d"]));
    }
    std::thread::sleep(Duration::from_millis(MAX_DEBOUNCE_MS));
    let from = o.seen.len();
    inject_death(f.port, "c", old);
    std::thread::sleep(Duration::from_millis(HEARTBEAT_TIMEOUT_MS));
    let o = &mut f.orch;
    assert_eq!(
        o.count_from(from, |l| l.starts_with("left c")),
        0,
        "{}",
        o.tail(30)
    );
    assert_eq!(
        o.count_from(from, is_plan),
        0,
        "a stale death replans nothing"
    );
    // The death of the current session does count.
    inject_death(f.port, "c", new);
    o.expect(from, SLOW, "c leaving on its own death", |l| {
        l == "left c (last will)"
    });
}

#[test]
fn the_fleet_works_against_mosquitto_and_heals_after_a_broker_restart() {
    let Some((mut broker, port)) = mosquitto() else {
        println!("SKIPPED: mosquitto is not installed (CI installs it through .ci/run)");
        return;
    };
    let mut f = Fleet::start(Some(port));
    // Broker restart: everybody reconnects; the fleet is whole again.
    broker.kill();
    let from = f.orch.seen.len();
    std::thread::sleep(Duration::from_millis(300));
    let conf = f.dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .expect("config");
    let bin = moirai_tests::fleet::mosquitto_binary().expect("mosquitto");
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&conf);
    let _broker2 = Proc::spawn("mosquitto-2", cmd);
    wait_for_port(port, Duration::from_secs(10)).expect("mosquitto back");
    let o = &mut f.orch;
    o.expect(from, SLOW, "the orchestrator reconnecting", |l| {
        l.starts_with("connected to")
    });
    for name in ["a", "b", "c"] {
        o.expect(from, SLOW, "each agent again", |l| {
            l.starts_with(&format!("restarted {name} "))
                || l.starts_with(&format!("joined {name} "))
        });
    }
    // Whether the outage outlasted the heartbeat timeout or not, the plan ends on all three.
    std::thread::sleep(Duration::from_millis(
        HEARTBEAT_TIMEOUT_MS + MAX_DEBOUNCE_MS,
    ));
    let o = &mut f.orch;
    let last = o
        .seen
        .iter()
        .rev()
        .find(|l| is_plan(l))
        .cloned()
        .unwrap_or_default();
    assert!(
        last.contains(" agents=a,b,c "),
        "last plan: {last}\n{}",
        o.tail(40)
    );
    for a in &mut f.agents {
        if !a.is_running() {
            let tail = a.tail(20);
            panic!("{} exited:\n{tail}", a.name);
        }
    }
}
