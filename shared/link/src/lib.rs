//! `moirai-link`: what every Moirai process needs to talk over the broker, one of each.
//!
//! - [`mqtt`]: client options with the one packet limit both sides and the embedded broker
//!   agree on ([`mqtt::MAX_PACKET`]), and publishing without waiting.
//! - [`tls`]: TLS (rustls with ring, trusting one CA file) and a login, as an MQTT client
//!   adds them ([`tls::ClientSecurity`]).
//! - [`shutdown`]: the future that resolves on SIGINT or SIGTERM.
//! - [`clock`]: wall-clock milliseconds, the time stamp of every message that carries one.

pub mod clock;
pub mod mqtt;
pub mod shutdown;
pub mod tls;
