//! A store in a temp dir, a rules folder, a manual clock, and events to feed the engine.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use gancho_core::{Action, ActionRequest, EventId, Keys, ManualClock, NewEvent};
use gancho_engine::{Engine, EngineConfig};
use gancho_state::EngineState;
use gancho_store::{Store, StoreConfig, Submission};

pub struct World {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub state: EngineState,
    pub clock: Arc<ManualClock>,
    pub rules: PathBuf,
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 10, 0, 0).unwrap()
}

pub fn hours(n: i64) -> chrono::Duration {
    chrono::Duration::hours(n)
}

impl World {
    /// A world whose rules folder holds these shipped rules (by file name in `rules/`).
    pub fn with_shipped(names: &[&str]) -> World {
        let world = World::empty();
        for name in names {
            world.install_shipped(name);
        }
        world
    }

    pub fn empty() -> World {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules");
        std::fs::create_dir_all(&rules).unwrap();
        let (store, state) = open_store(dir.path());
        World {
            store,
            state,
            clock: Arc::new(ManualClock::new(t0())),
            rules,
            dir,
        }
    }

    pub fn install_shipped(&self, name: &str) {
        let from = shipped(name);
        std::fs::copy(&from, self.rules.join(name)).unwrap();
    }

    pub fn write_rule(&self, name: &str, text: &str) {
        std::fs::write(self.rules.join(name), text).unwrap();
    }

    pub fn engine(&self) -> Engine {
        self.engine_with(EngineConfig::new(&self.rules))
    }

    /// An engine with a config of the test's own (other limits).
    pub fn engine_with(&self, config: EngineConfig) -> Engine {
        Engine::new(
            self.store.clone(),
            self.state.clone(),
            self.clock.clone(),
            config,
        )
        .unwrap()
    }

    /// Closes the store and opens it again, as a restart of the daemon does.
    pub fn restart(self) -> World {
        let World {
            dir,
            store,
            state,
            clock,
            rules,
        } = self;
        state.close();
        store.shutdown().unwrap();
        drop((store, state));
        let (store, state) = open_store(dir.path());
        World {
            store,
            state,
            dir,
            clock,
            rules,
        }
    }

    pub fn append(&self, events: Vec<NewEvent>) -> usize {
        let report = self
            .store
            .appender()
            .append_blocking(Submission {
                events,
                rejected: Vec::new(),
            })
            .unwrap();
        report.stored.len()
    }

    pub fn outbox(&self) -> Vec<ActionRequest> {
        self.state.decided_actions(0).unwrap()
    }

    pub fn emails_to(&self, to: &str) -> Vec<ActionRequest> {
        self.outbox()
            .into_iter()
            .filter(|a| matches!(&a.action, Action::Email(e) if e.to.iter().any(|t| t == to)))
            .collect()
    }
}

pub fn run(engine: &mut Engine) -> usize {
    engine.run_until_idle(Duration::from_secs(10)).unwrap()
}

fn open_store(path: &Path) -> (Store, EngineState) {
    let config = StoreConfig {
        fsync: false,
        cache_capacity: 16 * 1024 * 1024,
        ..StoreConfig::default()
    };
    let dir = path.join("store");
    (
        Store::open(&dir, &config).unwrap(),
        EngineState::open(&dir, &config).unwrap(),
    )
}

pub fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../rules")
        .join(name)
}

/// A Mailjet event as the `mailjet` adapter makes it.
pub fn mailjet(kind: &str, email: &str, message_id: u64, at: DateTime<Utc>) -> NewEvent {
    mailjet_with(kind, email, message_id, at, "")
}

pub fn mailjet_with(
    kind: &str,
    email: &str,
    message_id: u64,
    at: DateTime<Utc>,
    extra: &str,
) -> NewEvent {
    let text = format!(
        r#"{{"event":"{kind}","time":{},"MessageID":{message_id},"email":"{email}","mj_campaign_id":7{extra}}}"#,
        at.timestamp()
    );
    let mut keys = Keys::new();
    if let Some(hard) = ["true", "false"]
        .into_iter()
        .find(|h| extra.contains(&format!(r#""hard_bounce":{h}"#)))
    {
        keys.insert("hard_bounce".into(), hard.into());
    }
    keys.insert("email".into(), email.into());
    keys.insert("MessageID".into(), message_id.to_string());
    keys.insert("mj_campaign_id".into(), "7".into());
    NewEvent {
        id: EventId::from_content(&text),
        source: "mailjet".into(),
        kind: kind.into(),
        time: at,
        received: at,
        keys,
        data: serde_json::value::RawValue::from_string(text).unwrap(),
    }
}

/// A `bank` withdrawal as the config example's `json` source makes it.
pub fn withdrawal(id: &str, account: &str, at: DateTime<Utc>, atm: &str) -> NewEvent {
    let text = format!(
        r#"{{"id":"{id}","kind":"withdrawal","at":{},"account":"{account}","phone":"+34600000001","amount":120,"currency":"EUR","atm":"{atm}"}}"#,
        at.timestamp()
    );
    let mut keys = Keys::new();
    keys.insert("account".into(), account.into());
    NewEvent {
        id: EventId::from_provider(id),
        source: "bank".into(),
        kind: "withdrawal".into(),
        time: at,
        received: at,
        keys,
        data: serde_json::value::RawValue::from_string(text).unwrap(),
    }
}
