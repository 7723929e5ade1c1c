//! Format versions and migrations: each database records the version of the format it was
//! written in under one key, and a store of an earlier version is brought up to date by numbered
//! steps, each run once, in order, at open. Nothing sniffs a layout at every open: a layout is
//! whatever its version says.
//!
//! A step that changes data writes its changes, makes them durable (the caller's `sync`: a
//! flush, and an `fdatasync` when the store is configured so), then records its version, so a
//! crash in a step runs that step again at the next open: each step must be idempotent.
//! A store written by a newer build (a version above the current one) is refused, never
//! "migrated" backwards.

use crate::error::StoreError;
use crate::kv::Tree;

/// One database's format: where its version is kept, the current version, and the steps from
/// each earlier version it can still read.
#[derive(Debug)]
pub struct Format {
    /// The database, for messages.
    pub name: &'static str,
    /// The key of the version (u32 BE) in the database's tree.
    pub key: &'static [u8],
    /// What this build writes.
    pub current: u32,
    /// The oldest version this build migrates (earlier ones are refused).
    pub oldest: u32,
    /// `steps[i]` brings version `oldest + i` to `oldest + i + 1`.
    pub steps: &'static [Step],
}

/// One numbered migration.
#[derive(Debug)]
pub struct Step {
    /// What it does, for the log.
    pub what: &'static str,
    pub run: fn(&Tree) -> Result<(), StoreError>,
}

impl Format {
    /// The version `tree` is in: `None` for a new (empty) database. A version this build
    /// cannot read (newer, or older than the oldest it migrates) is an error, found before
    /// anything is written.
    pub fn check(&self, tree: &Tree) -> Result<Option<u32>, StoreError> {
        let found = self.found(tree)?;
        match found {
            Some(found) if found > self.current || found < self.oldest => Err(StoreError::Format {
                database: self.name,
                found,
                oldest: self.oldest,
                current: self.current,
            }),
            _ => Ok(found),
        }
    }

    fn found(&self, tree: &Tree) -> Result<Option<u32>, StoreError> {
        Ok(match tree.get(self.key)? {
            Some(v) => Some(v.as_ref().try_into().map(u32::from_be_bytes).map_err(|_| {
                StoreError::Corrupt {
                    key: format!("{} format version", self.name),
                    reason: "not a u32".to_owned(),
                }
            })?),
            None if tree.iter().next().transpose()?.is_none() => None,
            // Written before formats had versions.
            None => Some(0),
        })
    }

    /// Brings `tree` to the current version, making each step durable with `sync`. An empty
    /// tree is a new database: it gets the current version without any step. `Ok(Some(from))`
    /// when steps ran.
    pub fn upgrade(
        &self,
        tree: &Tree,
        sync: &mut dyn FnMut() -> Result<(), StoreError>,
    ) -> Result<Option<u32>, StoreError> {
        let found = self.found(tree)?;
        let Some(found) = found else {
            tree.insert(self.key, &self.current.to_be_bytes())?;
            return Ok(None);
        };
        if found == self.current {
            return Ok(None);
        }
        if found > self.current || found < self.oldest {
            return Err(StoreError::Format {
                database: self.name,
                found,
                oldest: self.oldest,
                current: self.current,
            });
        }
        for version in found..self.current {
            let step = usize::try_from(version - self.oldest)
                .ok()
                .and_then(|i| self.steps.get(i))
                .ok_or(StoreError::Format {
                    database: self.name,
                    found,
                    oldest: self.oldest,
                    current: self.current,
                })?;
            tracing::info!(
                database = self.name,
                from = version,
                to = version + 1,
                step = step.what,
                "migrating the store"
            );
            (step.run)(tree)?;
            sync()?;
            tree.insert(self.key, &(version + 1).to_be_bytes())?;
            sync()?;
        }
        Ok(Some(found))
    }
}
