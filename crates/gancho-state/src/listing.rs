//! The outbox and dead letters as streams, for operators: each item is handed over as it is
//! read, in decision order (event seq, rule, position), so listing a million of them holds
//! none but the one being handed over and the committed items not yet applied.
//!
//! A channel's keys sort in decision order (its byte, then seq, rule as a length-prefixed
//! string, position, all big-endian), so each channel is one ordered range, and the channels
//! are merged by their keys without the channel byte.

use gancho_core::Channel;
use gancho_store::StoreError;
use gancho_store::kv::Iter;

use crate::outbox::{DeadLetter, Delivery, Outbox, OutboxItem, decode, prefixed};
use crate::overlay::{Slot, lock};
use crate::schema::{DEAD, DELIVERY, OUTBOX, channel_byte};

/// A key and its value.
type Entry = (Vec<u8>, Vec<u8>);
/// A staged write: a key and its new value, `None` for a removal.
type Staged = (Vec<u8>, Option<Vec<u8>>);

/// One channel's entries under a prefix, in key order: the tree's, with the overlay's staged
/// writes (a few) laid over them.
pub(crate) struct ChannelEntries {
    tree: std::iter::Peekable<Iter>,
    staged: std::iter::Peekable<std::vec::IntoIter<Staged>>,
}

impl ChannelEntries {
    /// The next (key, value), in key order; a staged write replaces the tree's entry of the
    /// same key, a staged removal hides it.
    pub(crate) fn next(&mut self) -> Result<Option<Entry>, StoreError> {
        loop {
            let tree_key = match self.tree.peek() {
                Some(Ok((key, _))) => Some(key.to_vec()),
                Some(Err(_)) => {
                    return match self.tree.next() {
                        Some(Err(err)) => Err(err),
                        _ => Ok(None),
                    };
                }
                None => None,
            };
            let staged_key = self.staged.peek().map(|(key, _)| key.clone());
            let take_staged = match (&tree_key, &staged_key) {
                (None, None) => return Ok(None),
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(t), Some(s)) => s <= t,
            };
            if take_staged {
                let Some((key, value)) = self.staged.next() else {
                    return Ok(None);
                };
                if tree_key.as_ref() == Some(&key) {
                    self.tree.next();
                }
                match value {
                    Some(value) => return Ok(Some((key, value))),
                    None => continue,
                }
            }
            return match self.tree.next() {
                Some(Ok((key, value))) => Ok(Some((key.to_vec(), value.to_vec()))),
                Some(Err(err)) => Err(err),
                None => Ok(None),
            };
        }
    }
}

/// The committed entries with keys in `start..end` (the overlay's staged writes laid over the
/// tree's), in key order, read as they are handed over.
pub(crate) fn committed_range(
    overlay: &std::sync::Mutex<crate::overlay::Overlay>,
    tree: &gancho_store::kv::Tree,
    start: Vec<u8>,
    end: Vec<u8>,
) -> Result<ChannelEntries, StoreError> {
    let staged: Vec<Staged> = {
        let overlay = lock(overlay);
        let mut staged = Vec::new();
        for (key, (_, slot)) in overlay.range(start.clone()..end.clone()) {
            let value = match slot {
                Slot::Removed => None,
                other => other.encode()?.map(|v| v.into_owned()),
            };
            staged.push((key.clone(), value));
        }
        staged
    };
    Ok(ChannelEntries {
        tree: tree.range(start..end).peekable(),
        staged: staged.into_iter().peekable(),
    })
}

impl Outbox {
    /// The channels' ranges under `prefix` (`O` items or `Z` dead letters), merged in decision
    /// order: each (key without its prefix, value) to `f`, at most `limit` (0: all).
    ///
    /// With `after` (a key as handed to `f`), only the entries whose key without the channel
    /// byte comes after its own: the page after the one that ended there. Those keys are
    /// unique across channels (an action is in one).
    fn each_merged(
        &self,
        prefix: u8,
        channels_listed: &[Channel],
        after: Option<&[u8]>,
        limit: usize,
        mut f: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut channels = Vec::new();
        for &channel in channels_listed {
            let mut start = vec![prefix, channel_byte(channel)];
            if let Some(rest) = after.and_then(|key| key.get(1..)) {
                // Strictly after: the smallest key greater than the cursor's.
                start.extend_from_slice(rest);
                start.push(0);
            }
            let end = vec![prefix, channel_byte(channel) + 1];
            channels.push(committed_range(
                &self.shared.overlay,
                self.tree(),
                start,
                end,
            )?);
        }
        let mut heads = Vec::with_capacity(channels.len());
        for channel in &mut channels {
            heads.push(channel.next()?);
        }
        let mut handed = 0;
        while handed < limit {
            // The head whose key (without prefix and channel byte) comes first.
            let next = heads
                .iter()
                .enumerate()
                .filter_map(|(i, head)| head.as_ref().map(|(key, _)| (i, key.get(2..))))
                .min_by(|a, b| a.1.cmp(&b.1))
                .map(|(i, _)| i);
            let Some(i) = next else {
                break;
            };
            let taken = std::mem::replace(&mut heads[i], channels[i].next()?);
            if let Some((key, value)) = taken {
                f(key.get(1..).unwrap_or_default().to_vec(), value)?;
                handed += 1;
            }
        }
        Ok(())
    }

    /// Hands the outbox item stored under `suffix` to `f`, with its delivery record. An
    /// unreadable record is logged and skipped: listings show what they can, never fail.
    fn hand_item(
        &self,
        suffix: Vec<u8>,
        value: &[u8],
        f: &mut impl FnMut(OutboxItem) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let delivery: Option<Delivery> = self
            .tree()
            .get(prefixed(DELIVERY, &suffix))?
            .and_then(|v| decode("delivery record", &v).ok());
        match decode("outbox item", value) {
            Ok(action) => f(OutboxItem {
                key: suffix,
                action,
                delivery,
            }),
            Err(err) => {
                tracing::error!(error = %err, "an outbox item that cannot be read");
                Ok(())
            }
        }
    }

    /// The entries under `prefix` (`O` items or `Z` dead letters) that the rules decided on
    /// the event `seq`, channel by channel: each (key without its prefix, value) to `f`. A key
    /// range per channel (the keys start with the event's seq), not a walk of the queue.
    fn each_of_event(
        &self,
        prefix: u8,
        seq: u64,
        mut f: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for channel in Channel::ALL {
            let byte = channel_byte(channel);
            let mut start = vec![prefix, byte];
            start.extend_from_slice(&seq.to_be_bytes());
            let end = match seq.checked_add(1) {
                Some(next) => {
                    let mut end = vec![prefix, byte];
                    end.extend_from_slice(&next.to_be_bytes());
                    end
                }
                None => vec![prefix, byte + 1],
            };
            let mut entries = committed_range(&self.shared.overlay, self.tree(), start, end)?;
            while let Some((key, value)) = entries.next()? {
                f(key.get(1..).unwrap_or_default().to_vec(), value)?;
            }
        }
        Ok(())
    }

    /// The items waiting in the outbox that the rules decided on the event `seq`, each with its
    /// delivery record (what `gancho explain` shows of them).
    pub fn each_pending_of_event(
        &self,
        seq: u64,
        mut f: impl FnMut(OutboxItem) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.each_of_event(OUTBOX, seq, |suffix, value| {
            self.hand_item(suffix, &value, &mut f)
        })
    }

    /// The dead letters of the actions the rules decided on the event `seq`.
    pub fn each_dead_of_event(
        &self,
        seq: u64,
        mut f: impl FnMut(DeadLetter) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.each_of_event(DEAD, seq, |_, value| hand_letter(&value, &mut f))
    }

    /// Hands the items waiting in the outbox (not yet durable ones included) to `f` in
    /// decision order, the oldest `limit` (0: all), each with its delivery record.
    pub fn each_pending(
        &self,
        limit: usize,
        f: impl FnMut(OutboxItem) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.each_pending_after(None, None, limit, f)
    }

    /// [`Outbox::each_pending`] of one channel (or all), from after the item whose `key` is
    /// `after`: the next page.
    pub fn each_pending_after(
        &self,
        channel: Option<Channel>,
        after: Option<&[u8]>,
        limit: usize,
        mut f: impl FnMut(OutboxItem) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let channels = channel.map_or(Channel::ALL.to_vec(), |c| vec![c]);
        self.each_merged(OUTBOX, &channels, after, limit, |suffix, value| {
            self.hand_item(suffix, &value, &mut f)
        })
    }

    /// Hands the dead letters to `f`, oldest decision first, at most `limit` (0: all).
    pub fn each_dead(
        &self,
        limit: usize,
        mut f: impl FnMut(DeadLetter) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.each_dead_after(None, None, limit, |_, dead| f(dead))
    }

    /// [`Outbox::each_dead`] of one channel (or all) from after the letter whose key is
    /// `after`, each letter handed with its key (the cursor of the page that ends there).
    pub fn each_dead_after(
        &self,
        channel: Option<Channel>,
        after: Option<&[u8]>,
        limit: usize,
        mut f: impl FnMut(Vec<u8>, DeadLetter) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let channels = channel.map_or(Channel::ALL.to_vec(), |c| vec![c]);
        self.each_merged(DEAD, &channels, after, limit, |key, value| {
            hand_letter(&value, |dead| f(key, dead))
        })
    }
}

/// Hands the dead letter `value` to `f`; one that cannot be read is logged and skipped, so it
/// does not hide the others.
fn hand_letter(
    value: &[u8],
    f: impl FnOnce(DeadLetter) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    match decode("dead letter", value) {
        Ok(dead) => f(dead),
        Err(err) => {
            tracing::error!(error = %err, "skipping a dead letter that cannot be read");
            Ok(())
        }
    }
}
