//! The embedded broker (rumqttd, patched in `vendor/rumqttd`) stays open to everyone after
//! clients that vanish in the middle of their handshake.

use std::time::Duration;

use moirai_link::tls::ClientSecurity;
use moirai_orchestrator::broker::start;
use moirai_tests::secured::connect;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An MQTT 3.1.1 CONNECT with a clean session, a 60 s keep-alive and no credentials.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// Sends a CONNECT and resets the connection at once (zero linger), so that the broker's
/// CONNACK hits a dead socket after it has registered the client's will.
async fn connect_and_vanish(port: u16, client_id: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("tcp connect");
    s.write_all(&connect_packet(client_id)).await.expect("send");
    s.set_zero_linger().expect("linger");
    drop(s);
}

#[tokio::test]
async fn a_client_reconnecting_under_its_old_id_never_poisons_the_embedded_broker() {
    let broker = start("127.0.0.1:0".parse().unwrap(), 64).expect("broker");
    let port = broker.addr.port();

    // A well-formed handshake first, to show the packet above is one the broker accepts.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&connect_packet("probe")).await.unwrap();
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut ack))
        .await
        .expect("CONNACK within 5 s")
        .expect("CONNACK");
    assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK, accepted");
    drop(s);

    for _ in 0..20 {
        connect_and_vanish(port, "flaky").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in ["flaky", "bystander"] {
        connect(id, port, &ClientSecurity::default())
            .await
            .unwrap_or_else(|e| panic!("{id} after 20 aborted handshakes of flaky: {e}"));
    }
}
