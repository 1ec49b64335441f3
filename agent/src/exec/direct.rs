//! The optional direct data path: activations from agent to agent over TCP, beside MQTT.
//!
//! An agent started with `--direct-listen` takes TCP connections there and says where in a
//! retained [`DirectAddr`] on its `direct` topic. A sender that knows a peer's address writes
//! that peer's chunks on one connection: frames of a little-endian `u32` length and one
//! encoded [`ActivationChunk`], the same bytes MQTT would carry, so the receiver decodes them
//! with the same checks. A connection opens with a hello naming the agent and session the
//! sender means ([`hello`]); the receiver answers one byte only if that is itself, so a stale
//! address (a restarted agent, a reused port) is never written to. Whatever cannot be written (no connection, a peer gone) is handed back
//! for MQTT, and the receiver's reassembly takes a chunk from either path (duplicates are
//! ignored), so the path can make a transfer faster but never lose one.
//!
//! No TLS here: use it on a trusted network, or stay on the broker (the default).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moirai_core::wire::data::{ActivationChunk, DirectAddr};
use moirai_core::wire::{decode, WireMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// The first frame on a connection: whom the sender means.
pub fn hello(peer: &str, bd_seq: u64) -> Vec<u8> {
    format!("moirai-direct/1 {peer} {bd_seq}").into_bytes()
}

/// The receiver's answer to a hello that names it.
const WELCOME: u8 = 1;
const MAX_HELLO: usize = 128;

/// A failed peer is not dialled again for this long (its chunks go by MQTT meanwhile).
const REDIAL_AFTER: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Chunks per path, for logs and tests.
#[derive(Debug, Default)]
pub struct DirectStats {
    /// Chunks written to a peer's connection.
    pub sent: AtomicU64,
    /// Chunks handed back for MQTT because the connection failed.
    pub fell_back: AtomicU64,
    /// Chunks received on the listener.
    pub received: AtomicU64,
}

impl DirectStats {
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.fell_back.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }
}

/// Accepts connections on `listener` until the task is dropped; a connection whose hello is
/// `me` (see [`hello`]) is welcomed and every chunk read from it goes to `tx`.
pub async fn serve(
    listener: TcpListener,
    me: Vec<u8>,
    tx: mpsc::UnboundedSender<ActivationChunk>,
    stats: Arc<DirectStats>,
) {
    let me = Arc::new(me);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                debug!(%peer, "direct connection");
                let (me, tx, stats) = (me.clone(), tx.clone(), stats.clone());
                tokio::spawn(async move {
                    if let Some(stream) = welcome(stream, &me).await {
                        read_frames(stream, tx, stats).await;
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "direct listener");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads the hello; answers and hands the stream back only if it names `me`.
async fn welcome(mut stream: TcpStream, me: &[u8]) -> Option<TcpStream> {
    let read = async {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await.ok()?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_HELLO {
            return None;
        }
        let mut h = vec![0u8; len];
        stream.read_exact(&mut h).await.ok()?;
        Some(h)
    };
    let h = tokio::time::timeout(CONNECT_TIMEOUT, read).await.ok()??;
    if h != me {
        debug!(hello = %String::from_utf8_lossy(&h), "direct hello for someone else; closed");
        return None;
    }
    stream.write_all(&[WELCOME]).await.ok()?;
    Some(stream)
}

/// Reads frames until the peer closes or sends something that is not a chunk (then the
/// connection is dropped: the sender's later chunks go by MQTT).
async fn read_frames(
    mut stream: TcpStream,
    tx: mpsc::UnboundedSender<ActivationChunk>,
    stats: Arc<DirectStats>,
) {
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > ActivationChunk::MAX_SIZE {
            warn!(len, "direct frame over the chunk limit; connection dropped");
            return;
        }
        buf.resize(len, 0);
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        match decode::<ActivationChunk>(&buf) {
            Ok(c) => {
                stats.received.fetch_add(1, Ordering::Relaxed);
                if tx.send(c).is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!(error = %e, "bad direct frame; connection dropped");
                return;
            }
        }
    }
}

/// The sending side: one writer task per peer with a known address.
pub struct DirectLinks {
    addrs: HashMap<String, DirectAddr>,
    writers: HashMap<String, mpsc::UnboundedSender<Vec<u8>>>,
    failed_at: HashMap<String, Instant>,
    /// Where frames that could not be written go back (peer, encoded chunk), for MQTT.
    fallback: mpsc::UnboundedSender<(String, Vec<u8>)>,
    stats: Arc<DirectStats>,
}

impl DirectLinks {
    pub fn new(
        fallback: mpsc::UnboundedSender<(String, Vec<u8>)>,
        stats: Arc<DirectStats>,
    ) -> Self {
        DirectLinks {
            addrs: HashMap::new(),
            writers: HashMap::new(),
            failed_at: HashMap::new(),
            fallback,
            stats,
        }
    }

    /// A peer's retained address (`None`: it left). A new session replaces the old writer.
    pub fn learn(&mut self, peer: &str, addr: Option<DirectAddr>) {
        match addr {
            Some(a) => {
                if self.addrs.get(peer) != Some(&a) {
                    self.writers.remove(peer);
                    self.failed_at.remove(peer);
                    self.addrs.insert(peer.to_string(), a);
                }
            }
            None => {
                self.addrs.remove(peer);
                self.writers.remove(peer);
            }
        }
    }

    /// Queues one encoded chunk for `peer`; gives it back when there is no direct way now
    /// (the caller publishes it on MQTT).
    pub fn send(&mut self, peer: &str, frame: Vec<u8>) -> Result<(), Vec<u8>> {
        let Some(addr) = self.addrs.get(peer) else {
            return Err(frame);
        };
        if let Some(w) = self.writers.get(peer) {
            return match w.send(frame) {
                Ok(()) => Ok(()),
                // The writer ended (its connection failed): MQTT until the redial delay.
                Err(mpsc::error::SendError(frame)) => {
                    self.writers.remove(peer);
                    self.failed_at.insert(peer.to_string(), Instant::now());
                    Err(frame)
                }
            };
        }
        if self
            .failed_at
            .get(peer)
            .is_some_and(|t| t.elapsed() < REDIAL_AFTER)
        {
            return Err(frame);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_frames(
            peer.to_string(),
            addr.addr.to_string(),
            hello(peer, addr.bd_seq),
            rx,
            self.fallback.clone(),
            self.stats.clone(),
        ));
        let queued = tx.send(frame).map_err(|e| e.0);
        self.writers.insert(peer.to_string(), tx);
        queued
    }
}

/// Connects to `addr` and writes frames until the channel closes; on any failure the frame
/// in hand and every queued one go to `fallback`.
async fn write_frames(
    peer: String,
    addr: String,
    greeting: Vec<u8>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    fallback: mpsc::UnboundedSender<(String, Vec<u8>)>,
    stats: Arc<DirectStats>,
) {
    let give_back = |frame: Vec<u8>| {
        stats.fell_back.fetch_add(1, Ordering::Relaxed);
        let _ = fallback.send((peer.clone(), frame));
    };
    // Connected, and welcomed by the very agent and session meant.
    let connect = async {
        let mut s = TcpStream::connect(addr.as_str()).await?;
        s.set_nodelay(true)?;
        s.write_all(&(greeting.len() as u32).to_le_bytes()).await?;
        s.write_all(&greeting).await?;
        let mut ok = [0u8; 1];
        s.read_exact(&mut ok).await?;
        if ok[0] != WELCOME {
            return Err(std::io::Error::other("not welcomed"));
        }
        Ok::<_, std::io::Error>(s)
    };
    let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(s)) => s,
        other => {
            debug!(%peer, %addr, ?other, "direct connect failed; MQTT instead");
            rx.close();
            while let Some(f) = rx.recv().await {
                give_back(f);
            }
            return;
        }
    };
    while let Some(frame) = rx.recv().await {
        let len = (frame.len() as u32).to_le_bytes();
        let written = async {
            stream.write_all(&len).await?;
            stream.write_all(&frame).await
        }
        .await;
        match written {
            Ok(()) => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                debug!(%peer, error = %e, "direct write failed; MQTT instead");
                give_back(frame);
                rx.close();
                while let Some(f) = rx.recv().await {
                    give_back(f);
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moirai_core::wire::{encode, truncated};

    fn chunk(request: u64) -> ActivationChunk {
        let value = moirai_core::tensor::TensorValue::f32(&[1, 3], vec![1.0, 2.0, 3.0]);
        moirai_core::wire::data::activation_chunks(request, 1, "x", &value).remove(0)
    }

    #[tokio::test]
    async fn chunks_cross_a_direct_connection_and_fall_back_when_the_peer_is_gone() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (in_tx, mut in_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(DirectStats::default());
        let server = tokio::spawn(serve(listener, hello("b", 1), in_tx, stats.clone()));
        let (fb_tx, mut fb_rx) = mpsc::unbounded_channel();
        let mut links = DirectLinks::new(fb_tx, stats.clone());
        assert!(
            links.send("b", encode(&chunk(1)).unwrap()).is_err(),
            "no address yet"
        );
        links.learn(
            "b",
            Some(DirectAddr {
                bd_seq: 1,
                addr: truncated(&addr.to_string()),
            }),
        );
        for r in 0..3 {
            assert!(links.send("b", encode(&chunk(r)).unwrap()).is_ok());
        }
        for r in 0..3 {
            let c = tokio::time::timeout(Duration::from_secs(5), in_rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(c, chunk(r), "in order, intact");
        }
        // A stale address: the listener is b's earlier session, so it does not welcome the
        // writer and the chunk comes back for MQTT.
        links.learn(
            "b",
            Some(DirectAddr {
                bd_seq: 2,
                addr: truncated(&addr.to_string()),
            }),
        );
        assert!(links.send("b", encode(&chunk(8)).unwrap()).is_ok());
        let (peer, frame) = tokio::time::timeout(Duration::from_secs(5), fb_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(peer, "b");
        assert_eq!(decode::<ActivationChunk>(&frame).unwrap(), chunk(8));
        // Within the redial delay the next chunk is refused at once, for MQTT.
        assert!(links.send("b", encode(&chunk(9)).unwrap()).is_err());
        // The peer goes away: the same.
        server.abort();
        links.learn(
            "b",
            Some(DirectAddr {
                bd_seq: 3,
                addr: truncated("127.0.0.1:1"),
            }),
        );
        assert!(links.send("b", encode(&chunk(10)).unwrap()).is_ok());
        let (_, frame) = tokio::time::timeout(Duration::from_secs(5), fb_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(decode::<ActivationChunk>(&frame).unwrap(), chunk(10));
        assert_eq!(stats.snapshot(), (3, 2, 3));
    }

    #[tokio::test]
    async fn a_hostile_frame_drops_the_connection_not_the_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (in_tx, mut in_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(DirectStats::default());
        tokio::spawn(serve(listener, hello("a", 7), in_tx, stats.clone()));
        let greet = |h: Vec<u8>| [(h.len() as u32).to_le_bytes().to_vec(), h].concat();
        // A hello for someone else, a length over the limit, garbage of a plausible length.
        for frame in [
            greet(hello("b", 7)),
            [greet(hello("a", 7)), (u32::MAX).to_le_bytes().to_vec()].concat(),
            [
                greet(hello("a", 7)),
                8u32.to_le_bytes().to_vec(),
                vec![0xff; 8],
            ]
            .concat(),
        ] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&frame).await.unwrap();
            // The listener closes the connection (after its welcome, where one was due).
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
                .await
                .unwrap();
            assert!(rest.len() <= 1, "{rest:?}");
        }
        // A good frame on a new connection still arrives.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&greet(hello("a", 7))).await.unwrap();
        let f = encode(&chunk(4)).unwrap();
        s.write_all(&(f.len() as u32).to_le_bytes()).await.unwrap();
        s.write_all(&f).await.unwrap();
        let c = tokio::time::timeout(Duration::from_secs(5), in_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c, chunk(4));
        assert_eq!(stats.snapshot().2, 1);
    }
}
