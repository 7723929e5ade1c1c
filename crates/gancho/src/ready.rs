//! Readiness (`GET /readyz`, on the public and the admin listeners): the daemon takes traffic
//! when its stores work, its engine runs, and the indexer and the engine keep up: each within
//! `[admin] ready_max_lag` events of the log's durable head. A load balancer then sends
//! webhooks elsewhere while gancho catches up, and gets them back once it has.

use std::sync::Arc;

use gancho_engine::SharedStatus;
use gancho_ingress::Readiness;

use crate::data::Data;

/// Why the daemon is not ready, if it is not.
pub fn check(data: &Data, engine: &SharedStatus, max_lag: u64) -> Result<(), String> {
    if let Some(reason) = data.store.failure() {
        return Err(format!("the event store failed: {reason}"));
    }
    if let Some(reason) = data.state.failure() {
        return Err(format!("the engine's database failed: {reason}"));
    }
    let log = data.store.status();
    let index_lag = log.durable.saturating_sub(log.indexed);
    if index_lag > max_lag {
        return Err(format!(
            "the indexer is {index_lag} events behind the log (ready_max_lag is {max_lag})"
        ));
    }
    let cursor = engine.lock().unwrap_or_else(|e| e.into_inner()).cursor;
    let engine_lag = log.durable.saturating_sub(cursor);
    if engine_lag > max_lag {
        return Err(format!(
            "the engine is {engine_lag} events behind the log (ready_max_lag is {max_lag})"
        ));
    }
    Ok(())
}

/// [`check`] as the HTTP servers ask it.
pub fn readiness(data: Data, engine: SharedStatus, max_lag: u64) -> Readiness {
    Arc::new(move || check(&data, &engine, max_lag))
}
