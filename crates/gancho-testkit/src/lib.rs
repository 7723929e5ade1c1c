//! Real peers for gancho's tests, each on a loopback port of its own, with a thread per
//! connection and blocking I/O: an SMTP server ([`SmtpServer`]) that speaks the protocol
//! subset a mail client uses (EHLO, AUTH PLAIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT) and can be
//! told to refuse, and an HTTP/1.1 receiver ([`HttpReceiver`]) whose replies a test scripts; a
//! NATS JetStream cluster of real `nats-server` processes ([`nats::NatsCluster`]) for cluster
//! mode, and a TCP [`proxy::Proxy`] that can lose what passes, for its failure tests; and
//! [`crash`], which runs a test's writes in a child process that a fail point stops.
//!
//! Test code only: it trusts its peers (the code under test) and panics on what it cannot
//! serve. It must not be a dependency of anything shipped.

pub mod crash;
mod http;
pub mod nats;
pub mod proxy;
mod smtp;

pub use http::{HttpReceiver, Received, Reply, form};
pub use smtp::{Mail, SmtpServer, SmtpTls, Transaction};

use std::time::{Duration, Instant};

/// Binds a loopback port and serves each connection on a thread of its own with `serve`.
#[allow(clippy::unwrap_used)]
fn listen<S: Send + Sync + 'static>(
    state: std::sync::Arc<S>,
    serve: fn(std::net::TcpStream, &S) -> std::io::Result<()>,
) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            std::thread::spawn(move || {
                let _ = serve(stream, &state);
            });
        }
    });
    addr
}

/// Waits until `list` has at least `n` entries, and returns them (fewer on timeout).
fn wait_for_len<T>(n: usize, timeout: Duration, list: impl Fn() -> Vec<T>) -> Vec<T> {
    wait_until(timeout, || {
        let items = list();
        (items.len() >= n).then_some(items)
    })
    .unwrap_or_else(list)
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
