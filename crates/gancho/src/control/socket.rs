//! The daemon's end of the control socket: a Unix socket (mode 0600, in the data folder) that
//! takes one JSON request a connection and answers it, streaming listings as they are read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use gancho_engine::SharedStatus;
use gancho_node::RunningStores;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

use super::{Request, Response, answer, is_listing, stream_listing};
use crate::data::Data;

/// The largest request line the daemon reads.
const MAX_REQUEST: u64 = 64 * 1024;

/// A listening control socket; the file is removed when this is dropped.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    listener: tokio::net::UnixListener,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        // Best effort: a leftover file is replaced at the next start anyway.
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ControlSocket {
    /// Binds the socket. The caller holds the store, so no other daemon can be using this data
    /// folder: a file already at `path` is left over from a crash and is replaced.
    pub fn bind(path: &Path) -> anyhow::Result<ControlSocket> {
        match std::fs::remove_file(path) {
            Ok(()) => debug!(path = %path.display(), "removed a stale control socket"),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| format!("removing stale {}", path.display()));
            }
        }
        let listener = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("binding control socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
        Ok(ControlSocket {
            path: path.to_owned(),
            listener,
        })
    }

    /// Answers requests until the task is dropped.
    pub async fn serve(self, data: Data, engine: SharedStatus) {
        self.serve_with(Backend::Single { data, engine }).await;
    }

    /// A cluster node's: answers from the partitions it runs (`super::cluster`), and the
    /// quarantine from its own store `node`.
    pub async fn serve_cluster(self, node: Data, lanes: RunningStores) {
        self.serve_with(Backend::Cluster { node, lanes }).await;
    }

    async fn serve_with(self, backend: Backend) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    warn!(error = %err, "accepting on the control socket failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let backend = backend.clone();
            tokio::spawn(async move {
                if let Err(err) = serve_one(stream, backend).await {
                    warn!(error = %err, "control request failed");
                }
            });
        }
    }
}

/// What the socket answers from.
#[derive(Clone)]
enum Backend {
    /// A single node's store and engine.
    Single { data: Data, engine: SharedStatus },
    /// A cluster node's own store, and the partitions it runs.
    Cluster { node: Data, lanes: RunningStores },
}

impl Backend {
    fn is_listing(&self, request: &Request) -> bool {
        match self {
            Backend::Single { .. } => is_listing(request),
            Backend::Cluster { .. } => is_listing(request) && super::cluster::supported(request),
        }
    }

    /// Streams a listing's answer through `tx` (on a blocking thread).
    fn stream(&self, request: &Request, tx: &tokio::sync::mpsc::Sender<Vec<u8>>) {
        match self {
            Backend::Single { data, .. } => stream_listing(data, request, tx),
            Backend::Cluster { node, lanes } => super::cluster::stream(lanes, node, request, tx),
        }
    }

    /// Answers a request that is not a listing (on a blocking thread).
    fn answer(&self, request: &Request) -> Response {
        match self {
            Backend::Single { data, engine } => answer(data, Some(engine), request),
            Backend::Cluster { lanes, .. } => super::cluster::answer(lanes, request),
        }
    }
}

async fn serve_one(stream: tokio::net::UnixStream, backend: Backend) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::io::BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) if backend.is_listing(&request) => {
            // Written as it is read: a million items cost the daemon no more memory than a
            // hundred (the bounded channel holds the reader to the client's pace).
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
            let producer = tokio::task::spawn_blocking(move || backend.stream(&request, &tx));
            while let Some(chunk) = rx.recv().await {
                write.write_all(&chunk).await?;
            }
            producer.await?;
            write.shutdown().await?;
            return Ok(());
        }
        Ok(request) => tokio::task::spawn_blocking(move || backend.answer(&request)).await?,
        Err(err) => Response::Error(format!("bad request: {err}")),
    };
    let bytes = serde_json::to_vec(&response)?;
    write.write_all(&bytes).await?;
    write.shutdown().await?;
    Ok(())
}
