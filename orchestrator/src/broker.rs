//! The embedded MQTT broker: rumqttd (no TLS, no websockets) on its own threads inside the
//! orchestrator's process, so `moirai serve` needs nothing else.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use thiserror::Error;
use tracing::{error, info};

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
pub const MAX_PAYLOAD: usize = 8 << 20;

/// A running embedded broker. It lives as long as the process.
#[derive(Clone, Debug)]
pub struct EmbeddedBroker {
    pub addr: SocketAddr,
}

fn config(addr: SocketAddr, max_connections: usize) -> Config {
    let server = ServerSettings {
        name: "moirai-v4".into(),
        listen: addr,
        tls: None,
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
    Config {
        id: 0,
        router: RouterConfig {
            max_connections,
            max_outgoing_packet_count: 1000,
            max_segment_size: 64 << 20,
            max_segment_count: 4,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    }
}

/// Starts the broker on `listen` (port 0 picks a free port) and waits until it accepts
/// connections.
pub fn start(listen: SocketAddr, max_connections: usize) -> Result<EmbeddedBroker, BrokerError> {
    // rumqttd binds inside its own thread and does not report the port; find a free one
    // first when asked for port 0.
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
        drop(TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
            addr: listen,
            source,
        })?);
        listen
    };
    let mut broker = Broker::new(config(addr, max_connections));
    std::thread::Builder::new()
        .name("moirai-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    let connect_to = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let waited = Duration::from_secs(5);
    let t0 = Instant::now();
    while t0.elapsed() < waited {
        if TcpStream::connect_timeout(&connect_to, Duration::from_millis(200)).is_ok() {
            info!(%addr, "embedded broker listening");
            return Ok(EmbeddedBroker { addr: connect_to });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotListening { addr, waited })
}
