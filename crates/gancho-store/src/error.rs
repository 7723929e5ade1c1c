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
    /// The database was written in a format this build cannot read: by a newer build, or one
    /// older than the oldest it migrates.
    #[error(
        "the {database} database is in format {found}; this build reads formats {oldest} to {current}"
    )]
    Format {
        database: &'static str,
        found: u32,
        oldest: u32,
        current: u32,
    },
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
    /// Events given with their seqs ([`crate::Appender::append_at`]) whose seqs do not grow.
    #[error("events out of order: {0}")]
    OutOfOrder(String),
    /// The writer thread has stopped (the store is shutting down).
    #[error("the store is shutting down")]
    Closed,
}
