//! The control socket on a cluster node: the commands that read or change a store answer from
//! the partitions this node runs now (each partition's store moves with its ownership, so a
//! node answers for its own; `gancho cluster status` says which node runs which). The
//! listings (`outbox`, `dead`, `sent`, `timers`, `state`) go through each running partition
//! in turn, `--limit` counted over all of them; `gancho dead retry` puts dead letters back in
//! the outbox of the partition that holds them, through its fenced commits (journaled, so the
//! partition's next owner has them); `gancho quarantine` reads the node's own store. The
//! commands that name an event by its seq, or change the rules, are refused with a reason:
//! seqs are per partition, and rules are deployed to every node.

use gancho_core::{Clock, SystemClock};
use gancho_node::LaneStores;
use gancho_store::StoreError;

use super::{Pending, Request, Response, stream_list, stream_listing};
use crate::data::Data;

/// Whether a cluster node answers `request` (else [`refusal`] says why not).
pub(super) fn supported(request: &Request) -> bool {
    matches!(
        request,
        Request::Outbox { .. }
            | Request::Dead { .. }
            | Request::DeadRetry { .. }
            | Request::Sent(_)
            | Request::Timers { .. }
            | Request::State { .. }
            | Request::Poisoned { .. }
            | Request::Quarantine { .. }
    )
}

/// Why a cluster node does not answer `request`.
pub(super) fn refusal(request: &Request) -> Response {
    let what = match request {
        Request::Events(_) | Request::Log { .. } | Request::Explain { .. } => {
            "events are numbered per partition on a cluster node, so `gancho events`, `explain` \
             and `replay` cannot name one yet; read a partition's stream in NATS (GANCHO_EV_<N>)"
        }
        Request::Status => {
            "`gancho status` is a single node's; on a cluster node run `gancho cluster status`"
        }
        Request::Prune { .. } => {
            "each partition's owner prunes it (a minute after it starts, then hourly); \
             `gancho prune` is a single node's"
        }
        Request::Rules { .. }
        | Request::RuleControl { .. }
        | Request::RuleRuns { .. }
        | Request::Rerun { .. }
        | Request::DiscardTimer { .. }
        | Request::ClearState { .. }
        | Request::FindEvent { .. } => {
            "the rules' commands (`rules`, `rules disable`, `rerun`, `timers discard`, \
             `state --clear`, `explain --rule`) are a single node's for now: on a cluster node \
             each partition runs its own engine"
        }
        _ => "not answered on a cluster node",
    };
    Response::Error(format!("cluster node: {what} (docs/cluster.md)"))
}

/// The listings, over the partitions `lanes` (the quarantine: the node's own store `node`).
pub(super) fn stream(
    lanes: &[LaneStores],
    node: &Data,
    request: &Request,
    tx: &tokio::sync::mpsc::Sender<Vec<u8>>,
) {
    let capped = |limit: usize| move |n: usize| limit == 0 || n < limit;
    match request {
        Request::Quarantine { .. } => stream_listing(node, request, tx),
        Request::Outbox { limit } => stream_list("outbox", tx, |f| {
            let (room, mut n) = (capped(*limit), 0);
            for lane in lanes {
                lane.state.outbox().each_pending(*limit, |item| {
                    n += 1;
                    if room(n - 1) {
                        f(Pending::from(item))
                    } else {
                        Ok(())
                    }
                })?;
            }
            Ok(())
        }),
        Request::Dead { limit } => stream_list("dead", tx, |f| {
            let (room, mut n) = (capped(*limit), 0);
            for lane in lanes {
                lane.state.outbox().each_dead(*limit, |dead| {
                    n += 1;
                    if room(n - 1) { f(dead) } else { Ok(()) }
                })?;
            }
            Ok(())
        }),
        Request::Sent(query) => stream_list("sent", tx, |f| {
            let (room, mut n) = (capped(query.limit), 0);
            for lane in lanes {
                lane.state.outbox().each_sent(query, |sent| {
                    n += 1;
                    if room(n - 1) { f(sent) } else { Ok(()) }
                })?;
            }
            Ok(())
        }),
        Request::Timers { rule } => stream_list("timers", tx, |f| {
            for lane in lanes {
                lane.state.each_timer(rule.as_deref(), &mut *f)?;
            }
            Ok(())
        }),
        Request::State { rule } => stream_list("state", tx, |f| {
            for lane in lanes {
                lane.state.each_state(rule.as_deref(), &mut *f)?;
            }
            Ok(())
        }),
        _ => {
            let answer = serde_json::to_vec(&refusal(request)).unwrap_or_default();
            let _ = tx.blocking_send(answer);
        }
    }
}

/// The requests that are not listings.
pub(super) fn answer(lanes: &[LaneStores], request: &Request) -> Response {
    let result = match request {
        Request::DeadRetry { id } => retry_dead(lanes, id.as_deref()).map(Response::Retried),
        Request::Poisoned { limit } => poisoned(lanes, *limit).map(Response::Poisoned),
        _ => return refusal(request),
    };
    result.unwrap_or_else(|err| Response::Error(err.to_string()))
}

/// Puts dead letters back in their partitions' outboxes: the one with action id `id` (in the
/// partition that holds it), or every one.
fn retry_dead(lanes: &[LaneStores], id: Option<&str>) -> Result<usize, StoreError> {
    let now_ms = SystemClock.now().timestamp_millis();
    let mut revived = 0;
    for lane in lanes {
        revived += lane.state.outbox().retry_dead(id, now_ms)?;
        if id.is_some() && revived > 0 {
            break;
        }
    }
    Ok(revived)
}

fn poisoned(
    lanes: &[LaneStores],
    limit: usize,
) -> Result<Vec<gancho_state::poison::Poisoned>, StoreError> {
    let mut all = Vec::new();
    for lane in lanes {
        all.extend(lane.state.poisoned(limit)?);
    }
    if limit > 0 {
        all.truncate(limit);
    }
    Ok(all)
}
