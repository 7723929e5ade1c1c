//! A TCP proxy on loopback for the failure tests of cluster mode (issue 17): it forwards a
//! client's connections to one upstream address, and can be told to lose what passes, as a
//! network that drops packets does. Bytes it loses are lost for good (no retransmission), so a
//! connection it let down is useless afterwards: [`Proxy::heal`] closes every connection made
//! before it, and the client reconnects.
//!
//! Modes:
//! - [`Flow::Open`]: everything passes;
//! - [`Flow::BlackHole`]: nothing passes either way, connections stay open, new ones are
//!   accepted and never answered (a node cut off from the network, whose peers time out);
//! - [`Flow::HoldReplies`]: what the client sends passes, what the upstream answers is lost (a
//!   request carried out whose answer never arrives: a lost acknowledgement).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the proxy lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Open = 0,
    BlackHole = 1,
    HoldReplies = 2,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    flow: AtomicU8,
    /// Bumped by `heal`: connections of an earlier generation are closed.
    generation: AtomicU64,
    connections: Mutex<Vec<(u64, TcpStream)>>,
    stopped: AtomicBool,
}

/// A running proxy; it stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a loopback port and forwards each connection to `upstream`.
    #[allow(clippy::unwrap_used)]
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            flow: AtomicU8::new(Flow::Open as u8),
            generation: AtomicU64::new(0),
            connections: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if accepting.stopped.load(Ordering::Acquire) {
                    break;
                }
                let shared = Arc::clone(&accepting);
                std::thread::spawn(move || connect(client, &shared));
            }
        });
        Proxy { addr, shared }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `nats://` URL of the proxy.
    pub fn nats_url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    pub fn set(&self, flow: Flow) {
        self.shared.flow.store(flow as u8, Ordering::Release);
    }

    /// Lets everything through again, and closes the connections that lost bytes (all those
    /// made so far): their clients reconnect through the proxy.
    pub fn heal(&self) {
        let generation = self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.set(Flow::Open);
        let mut connections = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        connections.retain(|(g, stream)| {
            if *g <= generation {
                let _ = stream.shutdown(Shutdown::Both);
                false
            } else {
                true
            }
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        // Wakes the accepting thread so that it sees `stopped`.
        let _ = TcpStream::connect(self.addr);
        let connections = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (_, stream) in connections.iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn flow(shared: &Shared) -> Flow {
    match shared.flow.load(Ordering::Acquire) {
        1 => Flow::BlackHole,
        2 => Flow::HoldReplies,
        _ => Flow::Open,
    }
}

fn connect(client: TcpStream, shared: &Arc<Shared>) {
    // A black hole answers nothing, not even by connecting upstream: the client waits.
    while flow(shared) == Flow::BlackHole && !shared.stopped.load(Ordering::Acquire) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let Ok(upstream) = TcpStream::connect(shared.upstream) else {
        return;
    };
    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
    let generation = shared.generation.load(Ordering::Acquire);
    let (Ok(client2), Ok(upstream2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    {
        let mut connections = shared.connections.lock().unwrap_or_else(|e| e.into_inner());
        for stream in [&client, &upstream] {
            if let Ok(stream) = stream.try_clone() {
                connections.push((generation, stream));
            }
        }
    }
    let up = Arc::clone(shared);
    std::thread::spawn(move || pump(client, upstream2, &up, false));
    pump(upstream, client2, shared, true);
}

/// Copies `from` to `to` while the flow lets this direction through, losing the bytes
/// otherwise; ends when either side closes.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, reply: bool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let passes = match flow(shared) {
            Flow::Open => true,
            Flow::BlackHole => false,
            Flow::HoldReplies => !reply,
        };
        if passes && to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An upstream that echoes what it reads.
    fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn round_trip(stream: &mut TcpStream, text: &[u8]) -> Option<Vec<u8>> {
        stream.write_all(text).ok()?;
        let mut buf = vec![0u8; text.len()];
        stream.read_exact(&mut buf).ok()?;
        Some(buf)
    }

    #[test]
    fn it_forwards_loses_in_each_mode_and_heals_with_new_connections() {
        let proxy = Proxy::start(echo());
        let mut a = TcpStream::connect(proxy.addr()).unwrap();
        a.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert_eq!(round_trip(&mut a, b"one").as_deref(), Some(&b"one"[..]));
        // Replies held: the echo's answer is lost.
        proxy.set(Flow::HoldReplies);
        assert_eq!(round_trip(&mut a, b"two"), None);
        // A black hole: nothing either way, and a new connection is never answered.
        proxy.set(Flow::BlackHole);
        assert_eq!(round_trip(&mut a, b"three"), None);
        let mut b = TcpStream::connect(proxy.addr()).unwrap();
        b.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert_eq!(round_trip(&mut b, b"four"), None);
        // Healed: the connection that lost bytes is closed, a new one works.
        proxy.heal();
        let mut buf = [0u8; 16];
        assert!(matches!(a.read(&mut buf), Ok(0) | Err(_)));
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(round_trip(&mut c, b"five").as_deref(), Some(&b"five"[..]));
    }
}
