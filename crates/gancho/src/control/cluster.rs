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
use gancho_node::{LaneStores, RunningStores};
use gancho_store::StoreError;

use super::{Pending, Request, Response, stream_list, stream_listing};
use crate::data::Data;

/// Whether a cluster node answers `request` (else [`refusal`] says why not).
pub(super) fn supported(request: &Request) -> bool {
    why_not(request).is_none()
}

/// Why a cluster node does not answer `request`.
pub(super) fn refusal(request: &Request) -> Response {
    let what = why_not(request).unwrap_or("answered on a cluster node, but not this way");
    Response::Error(format!("cluster node: {what} (docs/cluster.md)"))
}

/// Why a cluster node does not answer `request`; `None` if it does. Every request is named, so
/// that a new one is placed here when it is added.
fn why_not(request: &Request) -> Option<&'static str> {
    match request {
        Request::Outbox { .. }
        | Request::Dead { .. }
        | Request::DeadRetry { .. }
        | Request::Sent(_)
        | Request::Timers { .. }
        | Request::State { .. }
        | Request::Poisoned { .. }
        | Request::Quarantine { .. } => None,
        Request::Events(_)
        | Request::Log { .. }
        | Request::Explain { .. }
        | Request::FindEvent { .. } => Some(
            "events are numbered per partition on a cluster node, so `gancho events`, `explain` \
             and `replay` cannot name one yet; read a partition's stream in NATS (GANCHO_EV_<N>)",
        ),
        Request::Status => Some(
            "`gancho status` is a single node's; on a cluster node run `gancho cluster status`",
        ),
        Request::Prune { .. } => Some(
            "each partition's owner prunes it (a minute after it starts, then hourly); \
             `gancho prune` is a single node's",
        ),
        Request::Rules { .. }
        | Request::RuleControl { .. }
        | Request::RuleRuns { .. }
        | Request::Rerun { .. }
        | Request::DiscardTimer { .. }
        | Request::ClearState { .. } => Some(
            "the rules' commands (`rules`, `rules disable`, `rerun`, `timers discard`, \
             `state --clear`, `explain --rule`) are a single node's for now: on a cluster node \
             each partition runs its own engine",
        ),
    }
}

/// Each partition running now, one at a time: its stores are taken just before `f` reads them
/// and let go after (a partition that stopped meanwhile is skipped), so that no listing keeps
/// a stopped partition's databases open longer than its own turn. `f` says whether to go on.
fn each_lane(
    lanes: &RunningStores,
    mut f: impl FnMut(&LaneStores) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    for p in lanes.partitions() {
        if let Some(lane) = lanes.lane(p)
            && !f(&lane)?
        {
            break;
        }
    }
    Ok(())
}

/// A listing's items handed to `f`: each partition's in turn, walked by `walk` for what is left
/// of `limit` (0: all, as `walk`'s own limit means), until `limit` items went.
fn each_lane_capped<T>(
    lanes: &RunningStores,
    limit: usize,
    f: &mut dyn FnMut(T) -> Result<(), StoreError>,
    mut walk: impl FnMut(
        &LaneStores,
        usize,
        &mut dyn FnMut(T) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut n = 0;
    each_lane(lanes, |lane| {
        let room = if limit == 0 { 0 } else { limit - n };
        walk(lane, room, &mut |item| {
            n += 1;
            f(item)
        })?;
        Ok(limit == 0 || n < limit)
    })
}

/// The listings, over the partitions `lanes` (the quarantine: the node's own store `node`).
pub(super) fn stream(
    lanes: &RunningStores,
    node: &Data,
    request: &Request,
    tx: &tokio::sync::mpsc::Sender<Vec<u8>>,
) {
    match request {
        Request::Quarantine { .. } => stream_listing(node, request, tx),
        Request::Outbox { limit } => stream_list("outbox", tx, |f| {
            each_lane_capped(lanes, *limit, f, |lane, room, g| {
                lane.state
                    .outbox()
                    .each_pending(room, |item| g(Pending::from(item)))
            })
        }),
        Request::Dead { limit } => stream_list("dead", tx, |f| {
            each_lane_capped(lanes, *limit, f, |lane, room, g| {
                lane.state.outbox().each_dead(room, g)
            })
        }),
        Request::Sent(query) => stream_list("sent", tx, |f| {
            if query.limit == 0 {
                return each_lane(lanes, |lane| {
                    lane.state.outbox().each_sent(query, &mut *f)?;
                    Ok(true)
                });
            }
            // The newest `limit` of all the partitions', oldest first as on one node.
            let mut newest = Vec::new();
            each_lane(lanes, |lane| {
                lane.state.outbox().each_sent(query, |sent| {
                    newest.push(sent);
                    Ok(())
                })?;
                Ok(true)
            })?;
            newest.sort_by(|a, b| (a.delivered_ms, &a.id).cmp(&(b.delivered_ms, &b.id)));
            let skip = newest.len().saturating_sub(query.limit);
            newest.into_iter().skip(skip).try_for_each(&mut *f)
        }),
        Request::Timers { rule } => stream_list("timers", tx, |f| {
            each_lane(lanes, |lane| {
                lane.state.each_timer(rule.as_deref(), &mut *f)?;
                Ok(true)
            })
        }),
        Request::State { rule } => stream_list("state", tx, |f| {
            each_lane(lanes, |lane| {
                lane.state.each_state(rule.as_deref(), &mut *f)?;
                Ok(true)
            })
        }),
        _ => {
            let answer = serde_json::to_vec(&refusal(request)).unwrap_or_default();
            let _ = tx.blocking_send(answer);
        }
    }
}

/// The requests that are not listings.
pub(super) fn answer(lanes: &RunningStores, request: &Request) -> Response {
    let result = match request {
        Request::DeadRetry { id } => return retry_dead(lanes, id.as_deref()),
        Request::Poisoned { limit } => poisoned(lanes, *limit).map(Response::Poisoned),
        _ => return refusal(request),
    };
    result.unwrap_or_else(|err| Response::Error(err.to_string()))
}

/// Puts dead letters back in their partitions' outboxes: the one with action id `id` (in the
/// partition that holds it), or every one. A partition that fails (one stopping) does not keep
/// the others from theirs; the answer then says what was done and what failed.
fn retry_dead(lanes: &RunningStores, id: Option<&str>) -> Response {
    let now_ms = SystemClock.now().timestamp_millis();
    let (mut revived, mut failed) = (0, Vec::new());
    let _ = each_lane(lanes, |lane| {
        match lane.state.outbox().retry_dead(id, now_ms) {
            Ok(n) => revived += n,
            Err(err) => failed.push(format!("partition {}: {err}", lane.partition)),
        }
        Ok(id.is_none() || revived == 0)
    });
    if failed.is_empty() {
        Response::Retried(revived)
    } else {
        Response::Error(format!(
            "{revived} dead letter(s) put back in the partitions that answered; failed in {} \
             (some of a failed partition's letters may be back too: `gancho dead` lists what is \
             still dead)",
            failed.join("; ")
        ))
    }
}

/// The oldest `limit` (0: all) runs set aside, of all the partitions, by when.
fn poisoned(
    lanes: &RunningStores,
    limit: usize,
) -> Result<Vec<gancho_state::poison::Poisoned>, StoreError> {
    let mut all = Vec::new();
    // All of each partition's (a few at most): its own are in event order, not by time.
    each_lane(lanes, |lane| {
        all.extend(lane.state.poisoned(0)?);
        Ok(true)
    })?;
    all.sort_by_key(|run| run.set_aside_ms);
    if limit > 0 {
        all.truncate(limit);
    }
    Ok(all)
}
