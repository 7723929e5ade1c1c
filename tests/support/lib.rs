//! What the end-to-end tests share: starting the real `gancho` binary on a temp data folder,
//! talking HTTP to it, and running its commands. Nothing here is a stand-in for a part of
//! gancho: the daemon under test is the binary users run.

// Test support: a failed expectation here is a failed test, so panicking is the point.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The `gancho` binary: `GANCHO_BIN`, or the one cargo built for this test (the e2e tests are a
/// test target of the `gancho` package, so cargo builds the binary first, and builds it again
/// when its code changed).
pub fn gancho_bin() -> PathBuf {
    match std::env::var_os("GANCHO_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_BIN_EXE_gancho")),
    }
}

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A child process that is killed (and reaped) when dropped, so a failing test leaves no
/// daemon behind.
#[derive(Debug)]
pub struct Reaped(pub Child);

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sets up `command` (which runs the daemon) as the tests start it: none of the caller's
/// `GANCHO_CONFIG`, systemd socket or allocator setting, no stdout, stderr piped.
pub fn as_daemon(command: &mut Command) -> &mut Command {
    command
        .env_remove("GANCHO_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("MIMALLOC_PURGE_DELAY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
}

/// A withdrawal for the standard `bank` source.
pub fn withdrawal(id: &str) -> Vec<u8> {
    format!(
        r#"{{"id":"{id}","kind":"withdrawal","at":1764320000,"account":"ES76{id}","phone":"+34600000001","amount":20,"currency":"EUR","atm":"Madrid"}}"#
    )
    .into_bytes()
}

/// Writes a rule file into the setup's rules folder.
pub fn write_rule(setup: &Setup, name: &str, text: &str) {
    let rules = setup.dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join(name), text).unwrap();
}

/// A rule that calls `url` for every bank event, with the event's id in the body.
pub fn call_rule(setup: &Setup, url: &str) {
    write_rule(
        setup,
        "notify.rhai",
        &format!(
            "const ON = [\"bank.*\"];\nhttp(#{{ method: \"POST\", url: \"{url}\", json: #{{ id: event.id }} }});\n"
        ),
    );
}

/// Mailjet fixtures copied from `shared/fixtures/mailjet`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = repo_root().join("tests/fixtures").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A data folder and a config file for one daemon, kept across restarts.
#[derive(Debug)]
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Setup {
    /// `extra` is appended to a config that listens on a free port and keeps its data in the
    /// temp folder (and keeps every event, unless `extra` has a `[store]` section).
    pub fn new(extra: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("gancho.toml");
        let mut text = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nrules_dir = {:?}\n{extra}\n",
            dir.path().join("data").display().to_string(),
            dir.path().join("rules").display().to_string(),
        );
        // The tests' events carry fixed times, long past by the default retention (30 days):
        // the daemon's first prune, a minute after it starts, would delete them under a slow
        // test. Tests of retention set their own `[store]`.
        if !extra.contains("[store]") {
            text.push_str("\n[store]\nretention = \"0\"\n");
        }
        std::fs::write(&config, text).expect("writing config");
        Setup { dir, config }
    }

    /// The default test config: a `mailjet` source with basic auth, and the `bank` json
    /// source of the config example.
    pub fn standard() -> Setup {
        Setup::new(STANDARD_SOURCES)
    }

    /// Top-level keys `top` (before any section), then the standard sources.
    pub fn standard_with_top(top: &str) -> Setup {
        Setup::new(&format!("{top}\n{STANDARD_SOURCES}"))
    }

    /// The standard sources and `extra` (such as an `[email]` section).
    pub fn standard_with(extra: &str) -> Setup {
        Setup::new(&format!("{STANDARD_SOURCES}\n{extra}"))
    }

    pub fn start(&self) -> Daemon {
        Daemon::start(self, &[])
    }

    /// Starts the daemon with extra environment variables.
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Daemon {
        Daemon::start(self, env)
    }

    /// Runs a `gancho` command with this config, which must succeed, and parses its JSON
    /// output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.command(args);
        assert!(
            out.status.success(),
            "gancho {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Whether a listing command (`outbox`, `timers`, … with `--json`) lists nothing.
    pub fn lists_nothing(&self, args: &[&str]) -> bool {
        self.json(args).as_array().is_some_and(Vec::is_empty)
    }

    /// Runs a `gancho` command with this config.
    pub fn command(&self, args: &[&str]) -> Output {
        Command::new(gancho_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("GANCHO_CONFIG")
            .output()
            .expect("running gancho")
    }

    /// `gancho events --json ARGS`, parsed; panics with the command's stderr if it fails.
    pub fn events(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut all = vec!["events", "--json"];
        if !args.contains(&"--limit") {
            all.extend_from_slice(&["--limit", "0"]);
        }
        all.extend_from_slice(args);
        let out = self.command(&all);
        assert!(
            out.status.success(),
            "gancho events failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("events JSON")
    }

    pub fn quarantine(&self) -> Vec<serde_json::Value> {
        let out = self.command(&["quarantine", "--json", "--limit", "0"]);
        assert!(
            out.status.success(),
            "gancho quarantine failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("quarantine JSON")
    }
}

pub const MAILJET_USER: &str = "mailjet";
pub const MAILJET_PASSWORD: &str = "s3cret";

const STANDARD_SOURCES: &str = r#"
[sources.mailjet]
kind = "mailjet"
basic_auth = { user = "mailjet", password = "s3cret" }

[sources.bank]
kind = "json"
type = "/kind"
time = "/at"
id = "/id"
keys = { account = "/account" }
"#;

/// A running daemon. Killed (SIGKILL) when dropped, if still running.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    /// The admin listener's, when the config gives it a token.
    pub admin: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
}

/// `gancho run` with the setup's config and these environment variables, as the tests start
/// it (`as_daemon`: stderr piped; set another after this to keep the log elsewhere).
pub fn daemon_command(setup: &Setup, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(gancho_bin());
    as_daemon(&mut command)
        .arg("--config")
        .arg(&setup.config)
        .arg("run")
        .env("GANCHO_LOG", "info")
        // After `as_daemon`, which removes `NOTIFY_SOCKET`: a test may set it.
        .envs(env.iter().copied());
    command
}

impl Daemon {
    fn start(setup: &Setup, env: &[(&str, &str)]) -> Daemon {
        let mut child = daemon_command(setup, env).spawn().expect("spawning gancho");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let log_writer = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("gancho is ready")
                    && let Some(addr) = field(&line, "listen=")
                    && let Some(tx) = addr_tx.take()
                {
                    let _ = tx.send((addr, field(&line, "admin=")));
                }
                let mut log = log_writer.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let (addr, admin) = match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok((addr, admin)) => (
                addr.parse().expect("listen address"),
                admin.and_then(|a| a.parse().ok()),
            ),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gancho did not become ready:\n{}", log.lock().unwrap());
            }
        };
        Daemon {
            child,
            addr,
            admin,
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the daemon to exit by itself.
    pub fn wait_exit(mut self, timeout: Duration) -> ExitStatus {
        wait_with_timeout(&mut self.child, timeout)
            .unwrap_or_else(|| panic!("gancho did not exit:\n{}", self.log()))
    }

    /// `kill -9`.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        wait_with_timeout(&mut self.child, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("gancho did not stop on SIGTERM:\n{}", self.log()))
    }

    pub fn post(&self, source: &str, body: &[u8]) -> Response {
        self.request(&Request::post(&format!("/hooks/{source}"), body))
    }

    /// Posts to the standard `mailjet` source with its credentials.
    pub fn post_mailjet(&self, body: &[u8]) -> Response {
        self.request(
            &Request::post("/hooks/mailjet", body).basic_auth(MAILJET_USER, MAILJET_PASSWORD),
        )
    }

    pub fn request(&self, request: &Request) -> Response {
        request.send(self.addr).expect("HTTP request")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test shows what its daemons logged last.
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(400)..];
            eprintln!(
                "--- the last {} lines of daemon {}'s log:\n{}",
                tail.len(),
                self.child.id(),
                tail.join("\n")
            );
        }
    }
}

/// A field of a log line, `name=` in text, under `fields` in JSON (`log_format = "json"`).
fn field(line: &str, name: &str) -> Option<String> {
    if line.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        return value["fields"][name.trim_end_matches('=')]
            .as_str()
            .map(str::to_owned);
    }
    let start = line.find(name)? + name.len();
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP/1.1 request, written by hand so tests control every byte (a wrong content type, a
/// lying Content-Length, a body over the limit).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn post(path: &str, body: &[u8]) -> Request {
        Request {
            method: "POST".to_owned(),
            path: path.to_owned(),
            headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
            body: body.to_vec(),
        }
    }

    pub fn get(path: &str) -> Request {
        Request {
            method: "GET".to_owned(),
            path: path.to_owned(),
            headers: vec![],
            body: vec![],
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn basic_auth(self, user: &str, password: &str) -> Request {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.header("Authorization", &format!("Basic {token}"))
    }

    pub fn send(&self, addr: SocketAddr) -> std::io::Result<Response> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.method,
            self.path,
            self.body.len()
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        // The server may answer (413) and close before reading the whole body.
        let _ = stream.write_all(&self.body);
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        Response::parse(&raw)
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    fn parse(raw: &[u8]) -> std::io::Result<Response> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| bad("no end of headers"))?;
        let head = String::from_utf8_lossy(&raw[..split]);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let body = String::from_utf8_lossy(&raw[split + 4..]).into_owned();
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}
