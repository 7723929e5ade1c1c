//! Real peers for gancho's tests, each on a loopback port of its own, with a thread per
//! connection and blocking I/O: an SMTP server ([`SmtpServer`]) that speaks the protocol
//! subset a mail client uses (EHLO, AUTH PLAIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT) and can be
//! told to refuse, and an HTTP/1.1 receiver ([`HttpReceiver`]) whose replies a test scripts.
//!
//! Test code only: it trusts its peers (the code under test) and panics on what it cannot
//! serve. It must not be a dependency of anything shipped.

mod http;
mod smtp;

pub use http::{HttpReceiver, Received, Reply, form};
pub use smtp::{Mail, SmtpServer, Transaction};

use std::time::{Duration, Instant};

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
