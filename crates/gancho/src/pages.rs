//! Listings a page at a time, for the admin API and the dashboard: at most `limit` items from where the last
//! page ended, and an opaque `cursor` for the next. Each listing walks the store with the same
//! function the CLI's listing uses (`Store::each_event`, `Outbox::each_pending`, …), given a
//! start position; a page holds at most `limit` items (bounded by [`MAX_LIMIT`]), the listing
//! as a whole is never held.
//!
//! Events, deliveries and quarantined items come newest first (what an operator looks for),
//! the next page further back; the outbox, dead letters and timers come in queue order (the
//! order they are delivered or fire), the next page further on. The cursor names its listing:
//! one of another listing, or one that is not a cursor, is refused.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gancho_core::Channel;
use gancho_state::sent::SentQuery;
use gancho_store::StoreError;
use serde::{Deserialize, Serialize};

use crate::control::{Pending, Query};
use crate::data::Data;

/// Items in a page when the request names no limit.
pub const DEFAULT_LIMIT: usize = 100;
/// The most items a page holds.
pub const MAX_LIMIT: usize = 1000;

/// Which listing, with its filters.
#[derive(Debug, Clone)]
pub enum Listing {
    Events(Query),
    Outbox { channel: Option<Channel> },
    Dead { channel: Option<Channel> },
    Sent(SentQuery),
    Quarantine,
    Timers { rule: Option<String> },
}

impl Listing {
    fn tag(&self) -> &'static str {
        match self {
            Listing::Events(_) => "events",
            Listing::Outbox { .. } => "outbox",
            Listing::Dead { .. } => "dead",
            Listing::Sent(_) => "sent",
            Listing::Quarantine => "quarantine",
            Listing::Timers { .. } => "timers",
        }
    }
}

/// One page: its items (as JSON) and the cursor of the next, `None` when this one is the last.
#[derive(Debug, Serialize)]
pub struct Page {
    pub items: Vec<serde_json::Value>,
    pub next_cursor: Option<String>,
}

/// Why a page cannot be given.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("cursor: not a cursor of the {0} listing")]
    BadCursor(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a page ended, as the cursor carries it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Position {
    /// Events: the smallest seq handed over.
    Seq(u64),
    /// Quarantine: the smallest record id handed over.
    Id(u64),
    /// Outbox, dead letters, timers: the key of the last item.
    Key(Vec<u8>),
    /// Deliveries: the oldest handed over, its delivery time and id.
    Sent(i64, String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    listing: String,
    at: Position,
}

fn encode(tag: &str, at: Position) -> String {
    let cursor = Cursor {
        listing: tag.to_owned(),
        at,
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&cursor).unwrap_or_default())
}

fn decode(tag: &'static str, cursor: &str) -> Result<Position, PageError> {
    let bad = || PageError::BadCursor(tag);
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if cursor.listing != tag {
        return Err(bad());
    }
    Ok(cursor.at)
}

/// An item of a listing, as the store gives it.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Item {
    Event(gancho_core::Event),
    Quarantined(gancho_store::Quarantined),
    Sent(gancho_state::sent::Sent),
    Pending(Box<Pending>),
    Dead(Box<gancho_state::DeadLetter>),
    Timer(Box<gancho_state::inspect::TimerView>),
}

impl Item {
    pub fn event(self) -> Option<gancho_core::Event> {
        match self {
            Item::Event(event) => Some(event),
            _ => None,
        }
    }

    pub fn quarantined(self) -> Option<gancho_store::Quarantined> {
        match self {
            Item::Quarantined(item) => Some(item),
            _ => None,
        }
    }

    pub fn pending(self) -> Option<Pending> {
        match self {
            Item::Pending(item) => Some(*item),
            _ => None,
        }
    }

    pub fn dead(self) -> Option<gancho_state::DeadLetter> {
        match self {
            Item::Dead(letter) => Some(*letter),
            _ => None,
        }
    }

    pub fn timer(self) -> Option<gancho_state::inspect::TimerView> {
        match self {
            Item::Timer(timer) => Some(*timer),
            _ => None,
        }
    }
}

/// The page of `listing` after `cursor` (the first page without one), at most `limit` items
/// (0: [`DEFAULT_LIMIT`]; at most [`MAX_LIMIT`]), as JSON.
pub fn page(
    data: &Data,
    listing: &Listing,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Page, PageError> {
    let (items, next_cursor) = typed_page(data, listing, cursor, limit)?;
    Ok(Page {
        items: items.iter().map(to_json).collect::<Result<_, _>>()?,
        next_cursor,
    })
}

/// [`page`] with the items as the store gives them: the items and the next page's cursor.
pub fn typed_page(
    data: &Data,
    listing: &Listing,
    cursor: Option<&str>,
    limit: usize,
) -> Result<(Vec<Item>, Option<String>), PageError> {
    let limit = match limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    let at = cursor.map(|c| decode(listing.tag(), c)).transpose()?;
    let bad = || PageError::BadCursor(listing.tag());
    let mut items = Vec::new();
    let next = match listing {
        Listing::Events(query) => {
            let before = match at {
                None => None,
                Some(Position::Seq(seq)) => Some(seq),
                Some(_) => return Err(bad()),
            };
            let mut query = query.to_store();
            query.limit = limit;
            let mut lowest = None;
            data.store.each_event_before(&query, before, |event| {
                lowest = Some(lowest.map_or(event.seq, |l: u64| l.min(event.seq)));
                items.push(Item::Event(event));
                Ok(())
            })?;
            items.reverse();
            lowest.filter(|_| items.len() >= limit).map(Position::Seq)
        }
        Listing::Quarantine => {
            // Always a bound, so records are taken whole: the next page starts at one's id.
            let before = match at {
                None => Some(u64::MAX),
                Some(Position::Id(id)) => Some(id),
                Some(_) => return Err(bad()),
            };
            let mut lowest = None;
            data.store.each_quarantined_before(before, limit, |item| {
                lowest = Some(lowest.map_or(item.id, |l: u64| l.min(item.id)));
                items.push(Item::Quarantined(item));
                Ok(())
            })?;
            items.reverse();
            lowest.filter(|_| items.len() >= limit).map(Position::Id)
        }
        Listing::Sent(query) => {
            let before = match &at {
                None => None,
                Some(Position::Sent(ms, id)) => Some((*ms, id.as_str())),
                Some(_) => return Err(bad()),
            };
            let query = SentQuery {
                limit,
                ..query.clone()
            };
            let mut oldest = None;
            data.state
                .outbox()
                .each_sent_before(&query, before, |sent| {
                    if oldest.is_none() {
                        oldest = Some((sent.delivered_ms, sent.id.clone()));
                    }
                    items.push(Item::Sent(sent));
                    Ok(())
                })?;
            items.reverse();
            oldest
                .filter(|_| items.len() >= limit)
                .map(|(ms, id)| Position::Sent(ms, id))
        }
        Listing::Outbox { channel } => {
            let after = key_of(at, bad)?;
            let mut last = None;
            data.state
                .outbox()
                .each_pending_after(*channel, after.as_deref(), limit, |item| {
                    last = Some(item.key.clone());
                    items.push(Item::Pending(Box::new(Pending::from(item))));
                    Ok(())
                })?;
            last.filter(|_| items.len() >= limit).map(Position::Key)
        }
        Listing::Dead { channel } => {
            let after = key_of(at, bad)?;
            let mut last = None;
            data.state.outbox().each_dead_after(
                *channel,
                after.as_deref(),
                limit,
                |key, dead| {
                    last = Some(key);
                    items.push(Item::Dead(Box::new(dead)));
                    Ok(())
                },
            )?;
            last.filter(|_| items.len() >= limit).map(Position::Key)
        }
        Listing::Timers { rule } => {
            let after = key_of(at, bad)?;
            let mut last = None;
            data.state.each_timer_after(
                rule.as_deref(),
                after.as_deref(),
                limit,
                |key, timer| {
                    last = Some(key);
                    items.push(Item::Timer(Box::new(timer)));
                    Ok(())
                },
            )?;
            last.filter(|_| items.len() >= limit).map(Position::Key)
        }
    };
    Ok((items, next.map(|at| encode(listing.tag(), at))))
}

/// The key a cursor of a queue-ordered listing carries.
fn key_of(at: Option<Position>, bad: impl Fn() -> PageError) -> Result<Option<Vec<u8>>, PageError> {
    match at {
        None => Ok(None),
        Some(Position::Key(key)) => Ok(Some(key)),
        Some(_) => Err(bad()),
    }
}

/// An item as JSON; an item that cannot be is reported as the store's error.
fn to_json<T: Serialize>(value: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(value).map_err(|err| StoreError::Corrupt {
        key: "(listing)".to_owned(),
        reason: err.to_string(),
    })
}

/// The rules listing's name in its cursors.
const RULES: &str = "rules";

/// The page of the engine's `rules` (sorted by name) after `cursor`: the rules and the next
/// page's cursor.
pub fn rules_page(
    mut rules: Vec<gancho_engine::RuleStatus>,
    cursor: Option<&str>,
    limit: usize,
) -> Result<(Vec<gancho_engine::RuleStatus>, Option<String>), PageError> {
    let limit = match limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    let after = match cursor.map(|c| decode(RULES, c)).transpose()? {
        None => None,
        Some(Position::Key(name)) => Some(name),
        Some(_) => return Err(PageError::BadCursor(RULES)),
    };
    rules.sort_by(|a, b| a.name.cmp(&b.name));
    let rules: Vec<_> = rules
        .into_iter()
        .filter(|r| {
            after
                .as_ref()
                .is_none_or(|a| r.name.as_bytes() > a.as_slice())
        })
        .take(limit)
        .collect();
    let next = match rules.last() {
        Some(last) if rules.len() >= limit => {
            Some(encode(RULES, Position::Key(last.name.as_bytes().to_vec())))
        }
        _ => None,
    };
    Ok((rules, next))
}
