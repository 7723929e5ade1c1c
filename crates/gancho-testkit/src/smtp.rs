//! An SMTP server for tests.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;

/// A message the server accepted (250 after DATA).
#[derive(Debug, Clone, PartialEq)]
pub struct Mail {
    /// The envelope: `MAIL FROM` and every `RCPT TO`, without angle brackets.
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent, dot-unstuffed, CRLF line ends.
    pub data: String,
    /// The user of `AUTH PLAIN`, if the client authenticated.
    pub user: Option<String>,
}

impl Mail {
    /// The value of a header (the first one of that name), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let mut found: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(value) = found.as_mut() {
                    value.push_str(line.trim_start());
                }
                continue;
            }
            if found.is_some() {
                break;
            }
            if let Some((key, value)) = line.split_once(':')
                && key.eq_ignore_ascii_case(name)
            {
                found = Some(value.trim().to_owned());
            }
        }
        found
    }
}

/// One transaction: a message the client tried to send, and the reply its DATA got.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub mail: Mail,
    pub code: u16,
}

#[derive(Debug, Default)]
struct State {
    transactions: Vec<Transaction>,
    /// Replies to give at the end of the next DATAs instead of 250.
    script: VecDeque<(u16, String)>,
    /// Wait this long before answering the end of DATA.
    delay: Duration,
}

/// An SMTP server on a loopback port. Stops with the test process.
#[derive(Debug, Clone)]
pub struct SmtpServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Default for SmtpServer {
    fn default() -> SmtpServer {
        SmtpServer::start()
    }
}

impl SmtpServer {
    pub fn start() -> SmtpServer {
        let state = Arc::new(Mutex::new(State::default()));
        let addr = crate::listen(state.clone(), serve);
        SmtpServer { addr, state }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `smtp://127.0.0.1:PORT`: plain SMTP, no TLS.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next DATAs are answered with these replies, in order, instead of 250.
    pub fn refuse_next(&self, replies: &[(u16, &str)]) {
        self.lock()
            .script
            .extend(replies.iter().map(|(c, t)| (*c, (*t).to_owned())));
    }

    /// Answers the end of every DATA only after `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    pub fn transactions(&self) -> Vec<Transaction> {
        self.lock().transactions.clone()
    }

    /// The messages accepted so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.lock()
            .transactions
            .iter()
            .filter(|t| t.code == 250)
            .map(|t| t.mail.clone())
            .collect()
    }

    /// Waits until at least `n` messages were accepted.
    pub fn wait_for_mails(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        crate::wait_for_len(n, timeout, || self.mails())
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut lines = BufReader::new(stream);
    let mut reply = |text: &str| out.write_all(format!("{text}\r\n").as_bytes());
    reply("220 testkit ESMTP ready")?;
    let mut mail = Mail {
        from: String::new(),
        to: Vec::new(),
        data: String::new(),
        user: None,
    };
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end();
        let upper = command.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            reply("250-testkit greets you\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 AUTH PLAIN")?;
        } else if upper.starts_with("HELO") {
            reply("250 testkit")?;
        } else if let Some(encoded) = upper.strip_prefix("AUTH PLAIN ").map(|_| &command[11..]) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .unwrap_or_default();
            let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
            mail.user = parts
                .get(1)
                .map(|u| String::from_utf8_lossy(u).into_owned());
            reply("235 2.7.0 authenticated")?;
        } else if upper.starts_with("MAIL FROM:") {
            mail.from = address(&command[10..]);
            mail.to.clear();
            reply("250 2.1.0 ok")?;
        } else if upper.starts_with("RCPT TO:") {
            mail.to.push(address(&command[8..]));
            reply("250 2.1.5 ok")?;
        } else if upper == "DATA" {
            reply("354 end with <CRLF>.<CRLF>")?;
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            mail.data = data;
            let (delay, scripted) = {
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                (state.delay, state.script.pop_front())
            };
            std::thread::sleep(delay);
            let (code, text) = scripted.unwrap_or((250, "2.0.0 queued".to_owned()));
            state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .transactions
                .push(Transaction {
                    mail: mail.clone(),
                    code,
                });
            reply(&format!("{code} {text}"))?;
        } else if upper == "RSET" {
            mail.from.clear();
            mail.to.clear();
            reply("250 2.0.0 reset")?;
        } else if upper == "NOOP" {
            reply("250 2.0.0 ok")?;
        } else if upper == "QUIT" {
            reply("221 2.0.0 bye")?;
            return Ok(());
        } else {
            reply("502 5.5.2 command not recognized")?;
        }
    }
}

/// `<a@b> SIZE=12` → `a@b`.
fn address(arg: &str) -> String {
    let arg = arg.trim();
    match (arg.find('<'), arg.find('>')) {
        (Some(open), Some(close)) if open < close => arg[open + 1..close].to_owned(),
        _ => arg.split_whitespace().next().unwrap_or_default().to_owned(),
    }
}
