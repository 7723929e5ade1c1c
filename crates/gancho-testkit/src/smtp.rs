//! An SMTP server for tests.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
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
    /// The session was encrypted when the message was sent.
    pub tls: bool,
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

/// How a server speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SmtpTls {
    /// TLS from the first byte (`smtps://`; port 465 in real life).
    Implicit,
    /// Plain until the client says STARTTLS, which the server offers, and requires before
    /// MAIL.
    StartTls,
}

/// An SMTP server on a loopback port. Stops with the test process.
#[derive(Debug, Clone)]
pub struct SmtpServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tls: Option<SmtpTls>,
    /// The CA that signed a TLS server's certificate (for 127.0.0.1), PEM.
    ca_pem: Option<String>,
}

/// What each connection's thread shares.
#[derive(Debug)]
struct Shared {
    state: Arc<Mutex<State>>,
    tls: Option<(SmtpTls, Arc<rustls::ServerConfig>)>,
}

impl Default for SmtpServer {
    fn default() -> SmtpServer {
        SmtpServer::start()
    }
}

impl SmtpServer {
    pub fn start() -> SmtpServer {
        SmtpServer::start_with(None)
    }

    /// A server that speaks TLS, with a certificate for 127.0.0.1 signed by a CA made for it
    /// ([`SmtpServer::ca_pem`]).
    pub fn start_tls(mode: SmtpTls) -> SmtpServer {
        SmtpServer::start_with(Some(mode))
    }

    fn start_with(tls: Option<SmtpTls>) -> SmtpServer {
        let state = Arc::new(Mutex::new(State::default()));
        let (ca_pem, config) = match tls {
            Some(mode) => {
                let (ca, config) = tls_config();
                (Some(ca), Some((mode, Arc::new(config))))
            }
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            state: state.clone(),
            tls: config,
        });
        let addr = crate::listen(shared, serve);
        SmtpServer {
            addr,
            state,
            tls,
            ca_pem,
        }
    }

    /// The CA of a TLS server's certificate, PEM.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL a client uses: `smtp://127.0.0.1:PORT`; with `?tls=required` for STARTTLS;
    /// `smtps://` for implicit TLS.
    pub fn url(&self) -> String {
        match self.tls {
            None => format!("smtp://{}", self.addr),
            Some(SmtpTls::StartTls) => format!("smtp://{}?tls=required", self.addr),
            Some(SmtpTls::Implicit) => format!("smtps://{}", self.addr),
        }
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

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it.
#[allow(clippy::unwrap_used)]
fn tls_config() -> (String, rustls::ServerConfig) {
    use rcgen::{
        BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let cert = params.signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (ca_cert.pem(), config)
}

fn serve(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    match &shared.tls {
        None => dialogue(BufReader::new(stream), &shared.state, false, false).map(drop),
        Some((SmtpTls::Implicit, config)) => dialogue(
            BufReader::new(tls(stream, config)?),
            &shared.state,
            false,
            true,
        )
        .map(drop),
        Some((SmtpTls::StartTls, config)) => {
            let mut reader = BufReader::new(stream);
            if dialogue(&mut reader, &shared.state, true, false)? {
                let stream = reader.into_inner();
                let mut tls = BufReader::new(tls(stream, config)?);
                // After STARTTLS the client greets again; there is no new banner.
                session(&mut tls, &shared.state, false, true)?;
            }
            Ok(())
        }
    }
}

fn tls(
    stream: TcpStream,
    config: &Arc<rustls::ServerConfig>,
) -> std::io::Result<rustls::StreamOwned<rustls::ServerConnection, TcpStream>> {
    let connection =
        rustls::ServerConnection::new(config.clone()).map_err(std::io::Error::other)?;
    Ok(rustls::StreamOwned::new(connection, stream))
}

/// Greets, then serves commands; true when the client asked for STARTTLS (the caller then
/// wraps the stream and goes on).
fn dialogue<S: Read + Write>(
    mut reader: impl std::borrow::BorrowMut<BufReader<S>>,
    state: &Mutex<State>,
    offer_starttls: bool,
    encrypted: bool,
) -> std::io::Result<bool> {
    let reader = reader.borrow_mut();
    reader.get_mut().write_all(b"220 testkit ESMTP ready\r\n")?;
    reader.get_mut().flush()?;
    session(reader, state, offer_starttls, encrypted)
}

fn session<S: Read + Write>(
    lines: &mut BufReader<S>,
    state: &Mutex<State>,
    offer_starttls: bool,
    encrypted: bool,
) -> std::io::Result<bool> {
    let reply = |lines: &mut BufReader<S>, text: &str| -> std::io::Result<()> {
        lines
            .get_mut()
            .write_all(format!("{text}\r\n").as_bytes())?;
        lines.get_mut().flush()
    };
    let mut mail = Mail {
        from: String::new(),
        to: Vec::new(),
        data: String::new(),
        user: None,
        tls: encrypted,
    };
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(false);
        }
        let command = line.trim_end().to_owned();
        let upper = command.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            let starttls = if offer_starttls {
                "250-STARTTLS\r\n"
            } else {
                ""
            };
            reply(
                lines,
                &format!(
                    "250-testkit greets you\r\n{starttls}250-8BITMIME\r\n250-SMTPUTF8\r\n250 AUTH PLAIN"
                ),
            )?;
        } else if upper.starts_with("HELO") {
            reply(lines, "250 testkit")?;
        } else if upper == "STARTTLS" && offer_starttls {
            reply(lines, "220 2.0.0 ready to start TLS")?;
            return Ok(true);
        } else if offer_starttls && (upper.starts_with("MAIL") || upper.starts_with("AUTH")) {
            reply(lines, "530 5.7.0 must issue a STARTTLS command first")?;
        } else if let Some(encoded) = upper.strip_prefix("AUTH PLAIN ").map(|_| &command[11..]) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .unwrap_or_default();
            let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
            mail.user = parts
                .get(1)
                .map(|u| String::from_utf8_lossy(u).into_owned());
            reply(lines, "235 2.7.0 authenticated")?;
        } else if upper.starts_with("MAIL FROM:") {
            mail.from = address(&command[10..]);
            mail.to.clear();
            reply(lines, "250 2.1.0 ok")?;
        } else if upper.starts_with("RCPT TO:") {
            mail.to.push(address(&command[8..]));
            reply(lines, "250 2.1.5 ok")?;
        } else if upper == "DATA" {
            reply(lines, "354 end with <CRLF>.<CRLF>")?;
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line)? == 0 {
                    return Ok(false);
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
            reply(lines, &format!("{code} {text}"))?;
        } else if upper == "RSET" {
            mail.from.clear();
            mail.to.clear();
            reply(lines, "250 2.0.0 reset")?;
        } else if upper == "NOOP" {
            reply(lines, "250 2.0.0 ok")?;
        } else if upper == "QUIT" {
            reply(lines, "221 2.0.0 bye")?;
            return Ok(false);
        } else {
            reply(lines, "502 5.5.2 command not recognized")?;
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
