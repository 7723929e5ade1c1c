//! The client side of the control socket: the CLI's commands ask the running daemon, or, when
//! no daemon answers, open the stopped store and answer themselves with the same functions.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use gancho_store::{StoreConfig, StoreError};
use tracing::debug;

use super::{Request, Response, answer, stream_listing};
use crate::data::Data;

/// A listing's items, handed to `f` as they arrive: from the running daemon's stream, or,
/// when no daemon answers, from the store, through the same [`stream_listing`] on a thread of
/// this process. Neither side holds the whole answer.
pub fn each_item<T: serde::de::DeserializeOwned>(
    socket: &Path,
    store_dir: Option<&Path>,
    request: &Request,
    mut f: impl FnMut(T) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    // An error of `f` (stdout closed) is returned as it is, not as a parse error.
    let mut failed = None;
    let mut g = |item| {
        f(item).map_err(|err| {
            let text = format!("{err:#}");
            failed = Some(err);
            anyhow::anyhow!(text)
        })
    };
    let read = match UnixStream::connect(socket) {
        Ok(mut stream) => {
            let mut line = serde_json::to_vec(request)?;
            line.push(b'\n');
            stream.write_all(&line)?;
            // A listing with few matches over a long log may send nothing for a long while.
            stream.set_read_timeout(Some(Duration::from_secs(3600)))?;
            let mut reader = serde_json::Deserializer::from_reader(std::io::BufReader::new(stream));
            serde::de::DeserializeSeed::deserialize(stream::Answer::new(&mut g), &mut reader)
                .with_context(|| format!("reading the daemon's answer at {}", socket.display()))
        }
        Err(err) => {
            debug!(error = %err, "no daemon on the control socket; opening the store");
            let data = open_stopped(socket, store_dir)?;
            let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
            let producer = {
                let (data, request) = (data.clone(), request.clone());
                std::thread::spawn(move || stream_listing(&data, &request, &tx))
            };
            let mut reader = serde_json::Deserializer::from_reader(stream::Chunks {
                rx,
                chunk: Vec::new(),
                at: 0,
            });
            let read =
                serde::de::DeserializeSeed::deserialize(stream::Answer::new(&mut g), &mut reader)
                    .context("listing");
            // Dropping the reader lets a producer blocked on a full channel finish.
            drop(reader);
            if producer.join().is_err() {
                bail!("the listing thread panicked");
            }
            data.shutdown().context("closing the store")?;
            read
        }
    };
    match (failed, read) {
        (Some(err), _) => Err(err),
        (None, read) => read,
    }
}

/// Reading `{"TAG":[...]}` (or `{"error":"..."}`) one item at a time.
mod stream {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};

    /// Reads an answer, handing each item of its list to the function.
    pub(super) struct Answer<'f, F, T>(&'f mut F, PhantomData<T>);

    impl<'f, F, T> Answer<'f, F, T> {
        pub(super) fn new(f: &'f mut F) -> Answer<'f, F, T> {
            Answer(f, PhantomData)
        }
    }

    impl<'de, T: DeserializeOwned, F: FnMut(T) -> anyhow::Result<()>> DeserializeSeed<'de>
        for Answer<'_, F, T>
    {
        type Value = ();

        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(AnswerVisitor(self.0, PhantomData))
        }
    }

    struct AnswerVisitor<'f, F, T>(&'f mut F, PhantomData<T>);

    impl<'de, T: DeserializeOwned, F: FnMut(T) -> anyhow::Result<()>> Visitor<'de>
        for AnswerVisitor<'_, F, T>
    {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a listing or an error")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            match map.next_key::<String>()?.as_deref() {
                Some("error") => Err(de::Error::custom(map.next_value::<String>()?)),
                Some(_) => map.next_value_seed(Items(self.0, PhantomData)),
                None => Err(de::Error::custom("an empty answer")),
            }
        }
    }

    struct Items<'f, F, T>(&'f mut F, PhantomData<T>);

    impl<'de, T: DeserializeOwned, F: FnMut(T) -> anyhow::Result<()>> DeserializeSeed<'de>
        for Items<'_, F, T>
    {
        type Value = ();

        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de, T: DeserializeOwned, F: FnMut(T) -> anyhow::Result<()>> Visitor<'de> for Items<'_, F, T> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(item) = seq.next_element::<T>()? {
                (self.0)(item).map_err(|err| de::Error::custom(format!("{err:#}")))?;
            }
            Ok(())
        }
    }

    /// The chunks a listing thread of this process sends, read as one stream of bytes.
    pub(super) struct Chunks {
        pub(super) rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
        pub(super) chunk: Vec<u8>,
        pub(super) at: usize,
    }

    impl std::io::Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            while self.at >= self.chunk.len() {
                match self.rx.blocking_recv() {
                    Some(chunk) => (self.chunk, self.at) = (chunk, 0),
                    None => return Ok(0),
                }
            }
            let n = buf.len().min(self.chunk.len() - self.at);
            buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }
}

/// Asks the running daemon, or opens the store when no daemon answers.
pub fn ask(socket: &Path, store_dir: Option<&Path>, request: &Request) -> anyhow::Result<Response> {
    match UnixStream::connect(socket) {
        Ok(stream) => ask_daemon(stream, request)
            .with_context(|| format!("asking the daemon at {}", socket.display())),
        Err(err) => {
            debug!(error = %err, "no daemon on the control socket; opening the store");
            let data = open_stopped(socket, store_dir)?;
            let response = answer(&data, None, request);
            data.shutdown().context("closing the store")?;
            Ok(response)
        }
    }
}

/// Opens the store of a stopped daemon (`None`: a cluster node, which has none to open).
fn open_stopped(socket: &Path, store_dir: Option<&Path>) -> anyhow::Result<Data> {
    let Some(store_dir) = store_dir else {
        bail!(
            "no gancho node answers on {}: on a cluster node the commands ask the running \
             daemon, which reads the partitions it runs (a stopped node's copies of them may be \
             another node's by now)",
            socket.display()
        );
    };
    if !store_dir.exists() {
        bail!(
            "no store at {} (has the daemon ever run with this config?)",
            store_dir.display()
        );
    }
    let config = StoreConfig {
        fsync: false,
        cache_capacity: 64 * 1024 * 1024,
        ..StoreConfig::default()
    };
    match Data::open(store_dir, &config) {
        Ok(data) => Ok(data),
        Err(StoreError::Locked { path }) => bail!(
            "the store at {path} is held by a running daemon, but its control socket {} does not answer",
            socket.display()
        ),
        Err(err) => Err(err).context("opening the store"),
    }
}

fn ask_daemon(mut stream: UnixStream, request: &Request) -> anyhow::Result<Response> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    // The answer runs to the end of the stream: payloads are kept as sent, new lines included.
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    if reply.is_empty() {
        bail!("the daemon closed the connection without answering");
    }
    Ok(serde_json::from_str(&reply)?)
}
