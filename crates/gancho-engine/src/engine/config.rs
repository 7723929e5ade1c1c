//! How the engine runs, what goes wrong outside any one rule, and the names of the sources
//! of its own events.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use gancho_store::StoreError;

use crate::sandbox::Limits;

/// The source name of timer firings (`timer.NAME`) and cron ticks (`cron.RULE`).
pub const TIMER_SOURCE: &str = "timer";
pub const CRON_SOURCE: &str = "cron";

/// What went wrong outside any one rule.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Cluster mode: the engine's own events could not be published to its partition's stream.
    #[error(transparent)]
    Publish(#[from] gancho_core::publish::PublishError),
    /// The cause is in the message, not a `source`: printed as a chain it said it twice.
    #[error("reading the rules folder {path}: {cause}")]
    RulesDir {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// [`Engine::run_until_idle`](crate::Engine::run_until_idle) gave up: work was left.
    #[error("not idle after {waited:?}: the engine is at event {cursor}, the log at {durable}")]
    NotIdle {
        waited: std::time::Duration,
        cursor: u64,
        durable: u64,
    },
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub rules_dir: PathBuf,
    pub limits: Limits,
    /// Events processed and committed together, at most.
    pub batch_size: usize,
    /// Each source's correlation keys, when known (from the daemon's config).
    pub source_keys: Option<BTreeMap<String, BTreeSet<String>>>,
    /// How long the store keeps events (`[store] retention`), when it deletes any: a window
    /// longer than it is logged, once per rule.
    pub retention_ms: Option<i64>,
    /// A timer or expectation already due when it is set fires no earlier than this after its
    /// event was received (`[engine] late_grace`).
    pub late_grace_ms: i64,
    /// How long traces are kept (`[engine] trace_retention`; `None`: for ever): a re-run's
    /// mark outlives the trace of the run it re-ran.
    pub trace_retention_ms: Option<i64>,
    /// Cluster mode: where timer firings and cron ticks go (the partition's stream, whence
    /// they come back into the log); `None`: appended to the log directly.
    pub own_events: Option<std::sync::Arc<dyn gancho_core::publish::BlockingPublisher>>,
    /// Cluster mode: the log is filled from the partition's stream, which loses nothing, and
    /// may be behind the state's cursor (a new owner's log catching up): the engine waits for
    /// it. Otherwise a cursor past the log's end means the log lost its newest events (fsync
    /// off, a power loss), and the engine resumes at the log's end.
    pub log_from_stream: bool,
    /// Which rules run here: all of them on a single node; in cluster mode, the partitioned
    /// ones in a partition's engine and the global ones on the global lane's.
    pub lane: Lane,
    /// Cluster mode, a partition's engine: where events are placed, to refuse a query that
    /// needs another partition's events.
    pub placement: Option<Placement>,
}

/// Where a cluster places events, as a partition's engine needs it: a partitioned rule sees
/// its partition's events only, so a query that would need another partition's is refused at
/// run time (an error that says so) rather than answered from a part of the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// This engine's partition.
    pub partition: u16,
    /// The cluster's partition count.
    pub partitions: u16,
    /// Each source's partition key and the keys colocated with it.
    pub sources: BTreeMap<String, SourcePlacement>,
}

/// A source's partition key and its colocated keys (`[sources.NAME] partition_key`,
/// `colocated`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePlacement {
    pub key: String,
    pub colocated: BTreeSet<String>,
}

impl Placement {
    /// Whether a query of `source` events selected by `keys` (name, value) finds all its
    /// events in this partition; if not, why (the message a rule's error carries).
    pub(crate) fn check(&self, source: &str, keys: &[(String, String)]) -> Result<(), String> {
        // A source not configured has no events anywhere; timer firings stay in their partition.
        let Some(placed) = self.sources.get(source) else {
            return Ok(());
        };
        if let Some((_, value)) = keys.iter().find(|(name, _)| *name == placed.key) {
            let home = gancho_core::partition::partition_of(value, self.partitions);
            return if home == self.partition {
                Ok(())
            } else {
                Err(format!(
                    "the {source} events with this {key:?} are in partition {home}, and this rule \
                     runs in partition {this}: a partitioned rule sees its own partition's events \
                     only (declare `const SCOPE = \"global\";` to query every partition)",
                    key = placed.key,
                    this = self.partition,
                ))
            };
        }
        if keys.iter().any(|(name, _)| placed.colocated.contains(name)) {
            return Ok(());
        }
        let colocated = if placed.colocated.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = placed.colocated.iter().map(String::as_str).collect();
            format!(" or a key colocated with it ({})", names.join(", "))
        };
        Err(format!(
            "in cluster mode, a partitioned rule must select {source} events by their partition \
             key {key:?}{colocated}: the others are spread over every partition (declare \
             `const SCOPE = \"global\";` to query every partition)",
            key = placed.key,
        ))
    }
}

/// Which rules an engine runs. Cluster mode splits them: a partition's engine runs the
/// partitioned rules (the default scope), the global lane's runs the rules of the global scope
/// (`const SCOPE = "global";` and every `EVERY` rule). A rule of the other scope is not loaded
/// there: it runs on the other lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lane {
    /// A single node: every rule.
    #[default]
    All,
    /// A partition in cluster mode: the partitioned rules.
    Partition,
    /// The global lane in cluster mode: the global rules.
    Global,
}

impl Lane {
    /// Whether a rule of `scope` runs on this lane.
    pub(crate) fn runs(self, scope: crate::rule::Scope) -> bool {
        use crate::rule::Scope;
        match self {
            Lane::All => true,
            Lane::Partition => scope == Scope::Partition,
            Lane::Global => scope == Scope::Global,
        }
    }
}

/// The `[engine]` section of the config file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// A timer or expectation that is already due when it is set (its event is older than
    /// its window: webhooks delivered in a burst after an outage) fires no earlier than this
    /// after its event was received, so that the events queued behind it can still cancel it.
    /// Default: `"2m"`. Example: `"10m"`.
    #[serde(deserialize_with = "gancho_core::config::duration::deserialize")]
    pub late_grace: std::time::Duration,
    /// How long the traces of rule runs (`gancho explain`) are kept; `"0"` keeps them for
    /// ever. Default: `"7d"`. Example: `"30d"`.
    #[serde(deserialize_with = "gancho_core::config::duration::retention::deserialize")]
    pub trace_retention: Option<std::time::Duration>,
}

impl Default for EngineSection {
    fn default() -> EngineSection {
        EngineSection {
            late_grace: std::time::Duration::from_secs(120),
            trace_retention: Some(std::time::Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

impl EngineConfig {
    pub fn new(rules_dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            rules_dir: rules_dir.into(),
            limits: Limits::default(),
            batch_size: 4096,
            source_keys: None,
            retention_ms: None,
            late_grace_ms: 120_000,
            trace_retention_ms: Some(7 * 24 * 3_600_000),
            own_events: None,
            log_from_stream: false,
            lane: Lane::All,
            placement: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(partition: u16) -> Placement {
        Placement {
            partition,
            partitions: 16,
            sources: BTreeMap::from([(
                "mailjet".to_owned(),
                SourcePlacement {
                    key: "email".to_owned(),
                    colocated: BTreeSet::from(["MessageID".to_owned()]),
                },
            )]),
        }
    }

    fn keys(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_partition_answers_queries_of_its_own_events_only() {
        // alice@example.com is in partition 15 of 16 (the pinned hash).
        let home = placement(15);
        assert_eq!(
            home.check("mailjet", &keys(&[("email", "alice@example.com")])),
            Ok(())
        );
        assert_eq!(home.check("mailjet", &keys(&[("MessageID", "19")])), Ok(()));
        // Sources the cluster does not place (timer firings, a source not configured).
        assert_eq!(home.check("timer", &[]), Ok(()));
        assert_eq!(home.check("shop", &keys(&[("order", "1")])), Ok(()));

        let elsewhere = placement(3)
            .check("mailjet", &keys(&[("email", "alice@example.com")]))
            .unwrap_err();
        assert!(
            elsewhere.starts_with(
                "the mailjet events with this \"email\" are in partition 15, and this rule runs in partition 3"
            ),
            "{elsewhere}"
        );
        for pairs in [&[][..], &[("campaign", "7")][..]] {
            let spread = home.check("mailjet", &keys(pairs)).unwrap_err();
            assert!(
                spread.starts_with(
                    "in cluster mode, a partitioned rule must select mailjet events by their partition key \"email\" or a key colocated with it (MessageID)"
                ),
                "{spread}"
            );
            assert!(spread.contains("const SCOPE = \"global\";"), "{spread}");
        }
    }

    #[test]
    fn each_lane_runs_its_scope() {
        use crate::rule::Scope;
        assert!(Lane::All.runs(Scope::Partition) && Lane::All.runs(Scope::Global));
        assert!(Lane::Partition.runs(Scope::Partition) && !Lane::Partition.runs(Scope::Global));
        assert!(Lane::Global.runs(Scope::Global) && !Lane::Global.runs(Scope::Partition));
    }
}
