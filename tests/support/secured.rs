//! Brokers and clients for the security tests: mosquitto configured from the repository's
//! templates (`firmware-configs/mosquitto/`: TLS listener, password file, ACL), and MQTT
//! clients built with the orchestrator's own [`ClientSecurity`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use moirai_link::tls::ClientSecurity;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS};

use crate::fleet::{free_port, mosquitto_binary, repo_root, wait_for_port, Proc};
use crate::pki::TestPki;

/// Topic prefix the templates are rendered with.
pub const PREFIX: &str = "moirai/v1";

/// A mosquitto started from the templates.
pub struct SecuredMosquitto {
    pub proc: Proc,
    /// Its TLS port on 127.0.0.1.
    pub port: u16,
}

fn find(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Renders `firmware-configs/mosquitto/{mosquitto.conf,acl}.template` into `dir`, writes the
/// password file for `users` (`orchestrator` is the orchestrator's username) and starts
/// mosquitto on a free TLS port. `Err` says why it cannot run here (no mosquitto).
pub fn mosquitto_from_templates(
    dir: &Path,
    pki: &TestPki,
    orchestrator: &str,
    users: &[(&str, &str)],
) -> Result<SecuredMosquitto, String> {
    let bin = mosquitto_binary().ok_or("mosquitto is not installed")?;
    let passwd_bin = find("mosquitto_passwd").ok_or("mosquitto_passwd is not installed")?;
    let templates = repo_root().join("firmware-configs/mosquitto");
    let read = |name: &str| {
        std::fs::read_to_string(templates.join(name)).map_err(|e| format!("{name}: {e}"))
    };
    let port = free_port();
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).map_err(|e| e.to_string())?;
    std::fs::copy(&pki.server.cert, tls.join("server.pem")).map_err(|e| e.to_string())?;
    std::fs::copy(&pki.server.key, tls.join("server.key")).map_err(|e| e.to_string())?;
    let mut conf = read("mosquitto.conf.template")?
        .replace("@DIR@", &dir.display().to_string())
        .replace("@TLS_PORT@", &port.to_string());
    // Run as root (CI), mosquitto drops to its own user, which cannot read a scratch dir.
    if running_as_root() {
        conf.push_str("\nuser root\n");
    }
    let acl = read("acl.template")?
        .replace("@PREFIX@", PREFIX)
        .replace("@ORCHESTRATOR@", orchestrator);
    std::fs::write(dir.join("mosquitto.conf"), conf).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("acl"), acl).map_err(|e| e.to_string())?;
    let passwd = dir.join("passwd");
    for (i, (user, password)) in users.iter().enumerate() {
        let mut cmd = Command::new(&passwd_bin);
        if i == 0 {
            cmd.arg("-c");
        }
        let status = cmd
            .arg("-b")
            .arg(&passwd)
            .arg(user)
            .arg(password)
            .status()
            .map_err(|e| format!("mosquitto_passwd: {e}"))?;
        if !status.success() {
            return Err(format!("mosquitto_passwd failed for {user}: {status}"));
        }
    }
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(dir.join("mosquitto.conf"));
    let mut proc = Proc::spawn("mosquitto", cmd);
    if wait_for_port(port, Duration::from_secs(10)).is_none() {
        return Err(format!(
            "mosquitto did not listen on {port}:\n{}",
            proc.tail(30)
        ));
    }
    Ok(SecuredMosquitto { proc, port })
}

/// Options for a client of 127.0.0.1:`port` with `security` applied.
pub fn options(client_id: &str, port: u16, security: &ClientSecurity) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_clean_session(true);
    security.apply(&mut o);
    o
}

/// Connects and waits for the broker's verdict: `Ok` with the client and its event loop on
/// a successful CONNACK, `Err` with the reason otherwise (refused, TLS failure, closed).
pub async fn connect(
    client_id: &str,
    port: u16,
    security: &ClientSecurity,
) -> Result<(AsyncClient, EventLoop), String> {
    let (client, mut el) = AsyncClient::new(options(client_id, port, security), 64);
    let verdict = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return if ack.code == ConnectReturnCode::Success {
                        Ok(())
                    } else {
                        Err(format!("refused: {:?}", ack.code))
                    };
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("no CONNACK within 5 s".into()));
    verdict.map(|()| (client, el))
}

/// Subscribes to `filter` and waits for the SUBACK; `Err` when the broker refused it (or
/// nothing came back within 5 s).
pub async fn subscribe(
    client: &AsyncClient,
    el: &mut EventLoop,
    filter: &str,
) -> Result<(), String> {
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    return if ack
                        .return_codes
                        .iter()
                        .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)))
                    {
                        Ok(())
                    } else {
                        Err(format!("subscription refused: {:?}", ack.return_codes))
                    };
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("no SUBACK within 5 s".into()))
}

/// The topics of the publishes `el` receives during `window`.
pub async fn collect(el: &mut EventLoop, window: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(r) = tokio::time::timeout_at(deadline, el.poll()).await {
        match r {
            Ok(Event::Incoming(Packet::Publish(p))) => got.push(p.topic.clone()),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    got
}

/// Drives `el` for `window` so the client's queued publishes go out.
pub async fn drive(el: &mut EventLoop, window: Duration) {
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(r) = tokio::time::timeout_at(deadline, el.poll()).await {
        if r.is_err() {
            break;
        }
    }
}
