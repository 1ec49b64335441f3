//! The embedded MQTT broker: rumqttd (no TLS, no websockets) on its own threads inside the
//! orchestrator's process, so `moirai serve` needs nothing else.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use std::sync::Arc;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};
use thiserror::Error;
use tracing::{error, info};

use crate::security::BrokerSecurity;

#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("cannot bind the broker to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the embedded broker did not accept connections on {addr} within {waited:?}")]
    NotListening { addr: SocketAddr, waited: Duration },
    #[error("cannot start the broker thread: {0}")]
    Thread(std::io::Error),
}

/// Largest MQTT payload the broker accepts (profile requests are the largest messages).
pub use moirai_link::mqtt::MAX_PAYLOAD;

/// A running embedded broker. It lives as long as the process.
#[derive(Clone, Debug)]
pub struct EmbeddedBroker {
    /// Plain MQTT: where the orchestrator's own client connects. With TLS this is a second
    /// listener on the loopback interface only (a certificate names the host's public name,
    /// which a loopback connection could not verify).
    pub addr: SocketAddr,
    /// The TLS listener for the devices, when TLS is on.
    pub tls_addr: Option<SocketAddr>,
}

fn server(
    name: &str,
    listen: SocketAddr,
    tls: Option<TlsConfig>,
    security: &BrokerSecurity,
) -> ServerSettings {
    let mut server = ServerSettings {
        name: name.into(),
        listen,
        tls,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: MAX_PAYLOAD,
            max_inflight_count: 200,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    if let Some(table) = &security.devices {
        let table = Arc::new(table.clone());
        server.set_auth_handler(move |client_id, username, password| {
            std::future::ready(table.admits(&client_id, &username, &password))
        });
    }
    server
}

fn config(
    addr: SocketAddr,
    max_connections: usize,
    tls_addr: Option<SocketAddr>,
    security: &BrokerSecurity,
) -> Config {
    let plain = server("moirai-v4", addr, None, security);
    let mut servers = HashMap::from([("1".to_string(), plain)]);
    if let (Some(tls_addr), Some(tls)) = (tls_addr, &security.tls) {
        let tls = TlsConfig::Rustls {
            capath: None,
            certpath: tls.cert_file.display().to_string(),
            keypath: tls.key_file.display().to_string(),
        };
        let tls = server("moirai-v4-tls", tls_addr, Some(tls), security);
        servers.insert("2".to_string(), tls);
    }
    Config {
        id: 0,
        router: RouterConfig {
            max_connections,
            max_outgoing_packet_count: 1000,
            max_segment_size: 64 << 20,
            max_segment_count: 4,
            ..Default::default()
        },
        v4: Some(servers),
        ..Default::default()
    }
}

/// Starts the broker on `listen` (port 0 picks a free port) and waits until it accepts
/// connections.
pub fn start(listen: SocketAddr, max_connections: usize) -> Result<EmbeddedBroker, BrokerError> {
    start_secured(listen, max_connections, &BrokerSecurity::default())
}

/// Like [`start`], with TLS and device credentials: with TLS, `listen` serves TLS and the
/// plain listener moves to a free loopback port for the orchestrator's own client; with a
/// device table every client must log in (the orchestrator's included).
pub fn start_secured(
    listen: SocketAddr,
    max_connections: usize,
    security: &BrokerSecurity,
) -> Result<EmbeddedBroker, BrokerError> {
    let (addr, tls_addr) = if security.tls.is_some() {
        let tls_addr = pick_port(listen)?;
        (
            pick_port(SocketAddr::from(([127, 0, 0, 1], 0)))?,
            Some(tls_addr),
        )
    } else {
        (pick_port(listen)?, None)
    };
    let mut broker = Broker::new(config(addr, max_connections, tls_addr, security));
    std::thread::Builder::new()
        .name("moirai-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    let loopback = |a: SocketAddr| {
        if a.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        } else {
            a
        }
    };
    let connect_to = loopback(addr);
    for a in [Some(connect_to), tls_addr.map(loopback)]
        .into_iter()
        .flatten()
    {
        wait_listening(a)?;
    }
    info!(%addr, ?tls_addr, login = security.devices.is_some(), "embedded broker listening");
    Ok(EmbeddedBroker {
        addr: connect_to,
        tls_addr,
    })
}

fn wait_listening(addr: SocketAddr) -> Result<(), BrokerError> {
    let waited = Duration::from_secs(5);
    let t0 = Instant::now();
    while t0.elapsed() < waited {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotListening { addr, waited })
}

/// `listen`, with a free port picked when its port is 0 (rumqttd binds inside its own
/// thread and does not report the port); fails early when the port is taken.
fn pick_port(listen: SocketAddr) -> Result<SocketAddr, BrokerError> {
    let addr = if listen.port() == 0 {
        let l = TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
            addr: listen,
            source,
        })?;
        l.local_addr().map_err(|source| BrokerError::Bind {
            addr: listen,
            source,
        })?
    } else {
        // Fail early and clearly when the port is taken.
        drop(
            TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
                addr: listen,
                source,
            })?,
        );
        listen
    };
    Ok(addr)
}
