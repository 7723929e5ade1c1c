//! The real daemon as the benchmarks run it: started from its release binary on a config
//! they write, watched through `/proc` (resident memory, CPU time) and `gancho status`, and
//! stopped with SIGTERM. Building the config from the command line is `main.rs`'.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::load::{self, LoadSpec, Target};

/// The real daemon, started from its release binary.
pub(crate) struct Gancho {
    child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) config: PathBuf,
    pub(crate) bin: PathBuf,
    /// The admin listener's address, when its config has a token.
    pub(crate) admin: Option<SocketAddr>,
}

impl Gancho {
    /// Starts `bin` with this config text (written to `dir/gancho.toml`).
    pub(crate) fn start_with(bin: &Path, dir: &Path, config_text: &str) -> anyhow::Result<Gancho> {
        let bin = bin.to_owned();
        let config = dir.join("gancho.toml");
        std::fs::write(&config, config_text)?;
        let mut child = Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env(
                "GANCHO_LOG",
                std::env::var("GANCHO_BENCH_LOG").unwrap_or_else(|_| "warn,gancho=info".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let field = |line: &str, name: &str| {
            line.split(name)
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|value| value.parse::<SocketAddr>().ok())
        };
        let (addr, admin) = loop {
            let Some(line) = lines.next() else {
                bail!("gancho exited before it was ready");
            };
            let line = line?;
            if line.contains("gancho is ready")
                && let Some(addr) = field(&line, "listen=")
            {
                break (addr, field(&line, "admin="));
            }
        };
        // Keep draining its log so it never blocks on a full pipe, into `dir/gancho.log`.
        let log = std::fs::File::create(dir.join("gancho.log"))?;
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut log = std::io::BufWriter::new(log);
            for line in lines.map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
            }
        });
        Ok(Gancho {
            child,
            addr,
            admin,
            config,
            bin,
        })
    }

    /// Posts `spec`'s load to `target` for `duration`, uncounted, then waits for the indexer:
    /// a store past its first seconds, as a running daemon's is (see `--prime`).
    pub(crate) fn prime(
        &self,
        target: &Target,
        spec: &LoadSpec,
        duration: Duration,
    ) -> anyhow::Result<()> {
        load::run(
            target,
            &LoadSpec {
                duration,
                warmup: Duration::ZERO,
                ..spec.clone()
            },
        )?;
        self.wait_indexed(Duration::from_secs(300))?;
        Ok(())
    }

    /// The CPU time the daemon has used so far, user and system, in clock ticks
    /// (`/proc/PID/stat`; 100 a second on Linux).
    pub(crate) fn cpu_ticks(&self) -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // The fields after the command name (which is in parentheses and may hold spaces).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| -> anyhow::Result<u64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .context("no CPU times in /proc/PID/stat")
        };
        // utime and stime: fields 14 and 15, the 12th and 13th after the name.
        Ok(tick(11)? + tick(12)?)
    }

    /// The daemon's resident memory now and at its peak (`VmRSS`, `VmHWM`).
    pub(crate) fn memory(&self) -> anyhow::Result<Memory> {
        let (rss_kb, peak_kb) = crate::rss::memory_kb_of(&self.child.id().to_string())
            .context("no VmRSS or VmHWM in /proc/PID/status")?;
        Ok(Memory { rss_kb, peak_kb })
    }

    /// `gancho status`: (durable, indexed).
    pub(crate) fn status(&self) -> anyhow::Result<(u64, u64)> {
        fetch_status(&self.bin, &self.config)
    }

    /// Waits until the engine has processed (durably) every event in the log.
    pub(crate) fn wait_processed(&self, timeout: Duration) -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        loop {
            let status = status_json(&self.bin, &self.config)?;
            if status["engine_cursor"].as_u64() >= status["durable"].as_u64() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("the engine did not catch up within {timeout:?}: {status}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the index catches up with the log; returns how many events that took and
    /// how long, or `None` on timeout.
    pub(crate) fn wait_indexed(
        &self,
        timeout: Duration,
    ) -> anyhow::Result<Option<(u64, Duration)>> {
        let start = std::time::Instant::now();
        let (_, first) = self.status()?;
        loop {
            let (durable, indexed) = self.status()?;
            if indexed >= durable {
                return Ok(Some((indexed - first, start.elapsed())));
            }
            if start.elapsed() > timeout {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the daemon with SIGTERM and waits for it to exit.
    pub(crate) fn terminate(mut self) -> anyhow::Result<()> {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("gancho exited with {status}");
        }
        Ok(())
    }

    /// Sends it a signal by name (`STOP`, `CONT`).
    pub(crate) fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{name} failed: {status}");
        }
        Ok(())
    }

    /// Kills the daemon (SIGKILL: nothing handed over).
    pub(crate) fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Stops the daemon with SIGTERM and returns the sequence number of the last event it
    /// stored: with all-distinct events and no deletions, the number of events stored.
    pub(crate) fn stop(self) -> anyhow::Result<u64> {
        let (bin, config) = (self.bin.clone(), self.config.clone());
        self.terminate()?;
        let out = Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .args(["events", "--json", "--limit", "1"])
            .output()?;
        if !out.status.success() {
            bail!("gancho events: {}", String::from_utf8_lossy(&out.stderr));
        }
        let events: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
        Ok(events.first().and_then(|e| e["seq"].as_u64()).unwrap_or(0))
    }
}

/// A process's resident memory, kB.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Memory {
    pub(crate) rss_kb: u64,
    pub(crate) peak_kb: u64,
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {:.1} MB, peak {:.1} MB",
            mb(self.rss_kb),
            mb(self.peak_kb)
        )
    }
}

pub(crate) fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The bytes each database folder under `store` takes on disk.
pub(crate) fn store_sizes(store: &Path) -> Vec<(String, u64)> {
    fn size(path: &Path) -> u64 {
        match std::fs::read_dir(path) {
            Ok(entries) => entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum(),
            Err(_) => 0,
        }
    }
    ["log", "indexes", "engine"]
        .into_iter()
        .map(|name| (name.to_owned(), size(&store.join(name))))
        .collect()
}

impl Drop for Gancho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `gancho status --json` of the daemon whose config is `config`.
pub(crate) fn status_json(bin: &Path, config: &Path) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(["status", "--json"])
        .output()?;
    if !out.status.success() {
        bail!("gancho status: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `gancho status --json` of the daemon whose config is `config`: (durable, indexed).
pub(crate) fn fetch_status(bin: &Path, config: &Path) -> anyhow::Result<(u64, u64)> {
    let status = status_json(bin, config)?;
    let field = |name: &str| status[name].as_u64().context("bad `gancho status`");
    Ok((field("durable")?, field("indexed")?))
}
