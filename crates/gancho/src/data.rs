//! The data folder's databases, opened together: the event log and its indexes
//! (`gancho-store`) and the engine's state with the outbox (`gancho-state`). The binary is
//! where they meet: no library crate holds both.

use std::path::Path;

use gancho_state::EngineState;
use gancho_store::{Store, StoreConfig, StoreError};

/// Both stores of a data folder. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Data {
    pub store: Store,
    pub state: EngineState,
}

impl Data {
    /// Opens the store folder `dir` (the log first: it holds the folder's lock against a
    /// second process).
    pub fn open(dir: &Path, config: &StoreConfig) -> Result<Data, StoreError> {
        let store = Store::open(dir, config)?;
        match EngineState::open(dir, config) {
            Ok(state) => Ok(Data { store, state }),
            Err(err) => {
                // The log's threads are running: stop them, so the databases are let go.
                if let Err(shutdown) = store.shutdown() {
                    tracing::warn!(error = %shutdown, "closing the log after the engine's database failed to open");
                }
                Err(err)
            }
        }
    }

    /// Why either store stopped accepting work, if one failed.
    pub fn failure(&self) -> Option<String> {
        self.store.failure().or_else(|| self.state.failure())
    }

    /// Makes the engine's last commits durable, then stops the log's threads and flushes it.
    pub fn shutdown(&self) -> Result<(), StoreError> {
        self.state.close();
        self.store.shutdown()
    }
}
