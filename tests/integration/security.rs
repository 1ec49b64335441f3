//! TLS and per-device credentials: the embedded broker and mosquitto (configured from
//! `firmware-configs/mosquitto/`) refuse clients without the right password, mosquitto's ACL
//! keeps an agent to its own topics, and orchestrator and agents talk end to end over TLS.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use moirai_link::tls::{ClientSecurity, Credentials};
use moirai_orchestrator::broker::start_secured;
use moirai_orchestrator::security::{BrokerSecurity, ClientLogin, DeviceTable, ServerTls};
use moirai_tests::fleet::{free_port, scratch, serve_command, Proc};
use moirai_tests::pki::TestPki;
use moirai_tests::secured::{collect, connect, mosquitto_from_templates, subscribe, PREFIX};
use rumqttc::QoS;

const ORCH: &str = env!("CARGO_BIN_EXE_moirai-test-orchestrator");
const AGENT: &str = env!("CARGO_BIN_EXE_moirai-test-agent");
const SLOW: Duration = Duration::from_secs(90);

fn creds(user: &str, password: &str) -> ClientSecurity {
    ClientSecurity {
        tls: None,
        credentials: Some(Credentials {
            username: user.into(),
            password: password.into(),
        }),
    }
}

fn with_tls(mut s: ClientSecurity, ca: &Path) -> ClientSecurity {
    s.tls = Some(moirai_link::tls::client_tls(ca).expect("CA file"));
    s
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("scratch file");
    p
}

fn board(dir: &Path) -> PathBuf {
    write(
        dir,
        "test-board.toml",
        "name = \"test-board\"\nbackend = \"cpu\"\n[compute]\nf32_gflops = 100.0\n\
         [memory]\nbandwidth_gbps = 10.0\ncapacity_mb = 4096\nusable_mb = 2048\n\
         [runtime]\nlaunch_overhead_us = 20.0\n[network]\nnic_mbps = 1000.0\n",
    )
}

fn orchestrator(dir: &Path, extra: &[&str]) -> Proc {
    let mut p = Proc::spawn("orchestrator", serve_command(ORCH, dir, extra));
    p.expect(0, SLOW, "a broker connection", |l| {
        l.starts_with("connected to")
    });
    p
}

fn agent(name: &str, board: &Path, broker: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(AGENT);
    cmd.args(["--broker", broker])
        .arg("--config")
        .arg(board)
        .args(["--name", name, "--cpu", "--heartbeat-ms", "200"])
        .args(["--keep-alive-s", "5", "--probe-bytes", "65536"])
        .args(extra);
    Proc::spawn(name, cmd)
}

/// Waits for `good` to join, then gives the others as long again: none of them may join.
fn only_joins(orch: &mut Proc, good: &str, refused: &[&str]) {
    let t0 = std::time::Instant::now();
    let want = format!("joined {good} ");
    orch.expect(0, SLOW, &want, |l| l.starts_with(&want));
    let settle = t0.elapsed().max(Duration::from_secs(3));
    std::thread::sleep(settle);
    for name in refused {
        let line = format!("joined {name} ");
        assert_eq!(
            orch.count_from(0, |l| l.starts_with(&line)),
            0,
            "{name} joined without valid credentials:\n{}",
            orch.tail(40)
        );
    }
}

#[tokio::test]
async fn the_embedded_broker_admits_a_device_only_with_its_password_and_its_own_name() {
    let mut table = DeviceTable::default();
    table.insert("pi-1", "one");
    table.insert("pi-2", "two");
    let security = BrokerSecurity {
        tls: None,
        devices: Some(table),
    };
    let broker = start_secured("127.0.0.1:0".parse().unwrap(), 16, &security).expect("broker");
    let port = broker.addr.port();

    assert!(
        connect("pi-1", port, &ClientSecurity::default())
            .await
            .is_err(),
        "no credentials"
    );
    assert!(
        connect("pi-1", port, &creds("pi-1", "two")).await.is_err(),
        "wrong password"
    );
    assert!(
        connect("pi-1", port, &creds("nobody", "one"))
            .await
            .is_err(),
        "unknown user"
    );
    assert!(
        connect("pi-2", port, &creds("pi-1", "one")).await.is_err(),
        "pi-1's credentials under pi-2's name"
    );
    connect("pi-1", port, &creds("pi-1", "one"))
        .await
        .expect("pi-1 with its own password");
}

#[tokio::test]
async fn the_embedded_broker_serves_tls_to_clients_that_trust_its_ca_only() {
    let dir = scratch("tls-embedded");
    let pki = TestPki::generate(&dir).expect("test PKI");
    let mut table = DeviceTable::default();
    table.insert("pi-1", "one");
    let security = BrokerSecurity {
        tls: Some(ServerTls::new(pki.server.cert.clone(), pki.server.key.clone()).unwrap()),
        devices: Some(table),
    };
    let broker = start_secured("127.0.0.1:0".parse().unwrap(), 16, &security).expect("broker");
    let tls_port = broker.tls_addr.expect("a TLS listener").port();

    connect("pi-1", tls_port, &with_tls(creds("pi-1", "one"), &pki.ca))
        .await
        .expect("TLS with the right CA and password");
    let rogue = connect(
        "pi-1",
        tls_port,
        &with_tls(creds("pi-1", "one"), &pki.rogue_server.cert),
    )
    .await;
    assert!(rogue.is_err(), "a client trusting another CA connected");
    assert!(
        connect("pi-1", tls_port, &creds("pi-1", "one"))
            .await
            .is_err(),
        "plain MQTT on the TLS port"
    );
    assert!(
        connect("pi-1", tls_port, &with_tls(creds("pi-1", "bad"), &pki.ca))
            .await
            .is_err(),
        "TLS with a wrong password"
    );
}

#[tokio::test]
async fn mosquitto_with_the_acl_template_refuses_strangers_and_keeps_agents_to_their_topics() {
    let dir = scratch("mosquitto-acl");
    let pki = TestPki::generate(&dir).expect("test PKI");
    let users = [("orchestrator", "boss"), ("pi-1", "one"), ("pi-2", "two")];
    let mq = match mosquitto_from_templates(&dir, &pki, "orchestrator", &users) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let tls = |s: ClientSecurity| with_tls(s, &pki.ca);
    assert!(
        connect("pi-1", mq.port, &tls(ClientSecurity::default()))
            .await
            .is_err(),
        "no credentials"
    );
    assert!(
        connect("pi-1", mq.port, &tls(creds("pi-1", "two")))
            .await
            .is_err(),
        "wrong password"
    );
    assert!(
        connect("x", mq.port, &creds("pi-1", "one")).await.is_err(),
        "plain MQTT on the TLS listener"
    );

    let (orch, mut orch_el) = connect("orchestrator", mq.port, &tls(creds("orchestrator", "boss")))
        .await
        .expect("orchestrator connects");
    subscribe(&orch, &mut orch_el, &format!("{PREFIX}/agent/+/birth"))
        .await
        .expect("orchestrator subscribes to every birth");

    let (pi1, mut pi1_el) = connect("pi-1", mq.port, &tls(creds("pi-1", "one")))
        .await
        .expect("pi-1 connects");
    // Mosquitto 2.0 grants a subscription the ACL does not allow but never delivers on it
    // (the read check happens per message), so this is not asserted at SUBACK time.
    let own = format!("{PREFIX}/agent/pi-1/birth");
    let forged = format!("{PREFIX}/agent/pi-2/birth");
    let orders = format!("{PREFIX}/agent/pi-1/assign");
    for t in [&forged, &orders, &own] {
        pi1.publish(t.as_str(), QoS::AtLeastOnce, false, b"x".to_vec())
            .await
            .expect("queued");
    }
    let publisher = tokio::spawn(async move {
        moirai_tests::secured::drive(&mut pi1_el, Duration::from_secs(2)).await;
    });
    let got = collect(&mut orch_el, Duration::from_secs(3)).await;
    let _ = publisher.await;
    assert_eq!(
        got,
        vec![own],
        "the orchestrator saw exactly pi-1's own birth"
    );
    drop(mq);
}

#[test]
fn agents_without_or_with_wrong_credentials_never_join_an_orchestrator_with_a_device_table() {
    let dir = scratch("embedded-login");
    let port = free_port();
    let table = write(
        &dir,
        "devices",
        "# test devices\ngood:right-password\nbad:other\n",
    );
    let right = write(&dir, "good.pw", "right-password\n");
    let wrong = write(&dir, "bad.pw", "guessed\n");
    let board = board(&dir);
    let mut orch = orchestrator(
        &dir,
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--credentials",
            &table.display().to_string(),
        ],
    );
    let url = format!("mqtt://127.0.0.1:{port}");
    let _good = agent(
        "good",
        &board,
        &url,
        &["--password-file", &right.display().to_string()],
    );
    let _bad = agent(
        "bad",
        &board,
        &url,
        &["--password-file", &wrong.display().to_string()],
    );
    let _anon = agent("anon", &board, &url, &[]);
    only_joins(&mut orch, "good", &["bad", "anon"]);
}

#[test]
// A second agent trusting another CA is left out: rumqttd 0.20's TLS listener thread panics
// (PoisonError, server/broker.rs:538) after a refused handshake, and later agents could not
// join; the refusal itself is checked in-process above.
fn an_agent_joins_over_tls_end_to_end() {
    let dir = scratch("tls-e2e");
    let pki = TestPki::generate(&dir).expect("test PKI");
    let port = free_port();
    let table = write(&dir, "devices", "good:pw-good\n");
    let good_pw = write(&dir, "good.pw", "pw-good\n");
    let board = board(&dir);
    let s = |p: &Path| p.display().to_string();
    let mut orch = orchestrator(
        &dir,
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--credentials",
            &s(&table),
            "--tls-cert",
            &s(&pki.server.cert),
            "--tls-key",
            &s(&pki.server.key),
        ],
    );
    let url = format!("mqtts://127.0.0.1:{port}");
    let mut good = agent(
        "good",
        &board,
        &url,
        &["--ca-file", &s(&pki.ca), "--password-file", &s(&good_pw)],
    );
    only_joins(&mut orch, "good", &[]);
    good.expect(0, SLOW, "an assignment over TLS", |l| {
        l.contains("assignment")
    });
}

#[test]
fn agents_join_through_mosquitto_over_tls_only_with_their_own_credentials() {
    let dir = scratch("mosquitto-e2e");
    let pki = TestPki::generate(&dir).expect("test PKI");
    let users = [
        ("orchestrator", "boss"),
        ("good", "pw-good"),
        ("bad", "pw-bad"),
    ];
    let mq = match mosquitto_from_templates(&dir, &pki, "orchestrator", &users) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let s = |p: &Path| p.display().to_string();
    let boss = write(&dir, "orch.pw", "boss\n");
    let good_pw = write(&dir, "good.pw", "pw-good\n");
    let wrong = write(&dir, "bad.pw", "not-pw-bad\n");
    let url = format!("mqtts://127.0.0.1:{}", mq.port);
    let mut orch = orchestrator(
        &dir,
        &[
            "--broker",
            &url,
            "--ca-file",
            &s(&pki.ca),
            "--username",
            "orchestrator",
            "--password-file",
            &s(&boss),
        ],
    );
    let board = board(&dir);
    let _good = agent(
        "good",
        &board,
        &url,
        &["--ca-file", &s(&pki.ca), "--password-file", &s(&good_pw)],
    );
    let _bad = agent(
        "bad",
        &board,
        &url,
        &["--ca-file", &s(&pki.ca), "--password-file", &s(&wrong)],
    );
    let _anon = agent("anon", &board, &url, &["--ca-file", &s(&pki.ca)]);
    only_joins(&mut orch, "good", &["bad", "anon"]);
    drop(mq);
}

#[test]
fn client_security_args_load_the_ca_and_default_the_username_to_the_agent_name() {
    let dir = scratch("client-args");
    let pki = TestPki::generate(&dir).expect("test PKI");
    let pw = write(&dir, "pw", "secret\n");
    let args = ClientLogin {
        ca_file: Some(pki.ca.clone()),
        username: None,
        password_file: Some(pw),
    };
    let sec = args.load(Some("pi-7")).expect("loads");
    assert!(sec.is_tls());
    let c = sec.credentials.expect("credentials");
    assert_eq!(
        (c.username.as_str(), c.password.as_str()),
        ("pi-7", "secret")
    );
    assert!(args.load(None).is_err(), "a password without any username");
}
