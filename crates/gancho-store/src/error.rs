use std::path::Path;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (usually the running daemon) holds the database.
    #[error("the store at {path} is in use by another process")]
    Locked { path: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("storage engine: {0}")]
    Engine(String),
    /// A record on disk could not be decoded: a bug, or a store written by another version.
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("the store was written by schema version {found}, this build reads version {expected}")]
    Schema { found: u32, expected: u32 },
    /// An event too large to be stored (a field over 64 KiB).
    #[error("event too large: {0}")]
    TooLarge(String),
    /// The store could not make events durable and stopped accepting them; the process should
    /// restart.
    #[error("the store failed and stopped accepting events: {0}")]
    Failed(String),
    /// Too many submissions are waiting for the disk: retry later.
    #[error("the store is busy; retry later")]
    Busy,
    /// The writer thread has stopped (the store is shutting down).
    #[error("the store is shutting down")]
    Closed,
}

impl StoreError {
    pub(crate) fn sled(err: sled::Error) -> StoreError {
        match err {
            sled::Error::Io(source) => StoreError::Io {
                what: "storage engine I/O".to_owned(),
                source,
            },
            other => StoreError::Engine(other.to_string()),
        }
    }

    pub(crate) fn from_open(path: &Path, err: sled::Error) -> StoreError {
        match err {
            sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => {
                StoreError::Locked {
                    path: path.display().to_string(),
                }
            }
            sled::Error::Io(source) => StoreError::Io {
                what: format!("opening store at {}", path.display()),
                source,
            },
            other => StoreError::Engine(format!("opening store at {}: {other}", path.display())),
        }
    }
}
