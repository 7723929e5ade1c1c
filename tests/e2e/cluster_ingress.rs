//! Ingress in cluster mode, in process, against a real three-server JetStream cluster: a
//! request's events go to their partitions' streams and it is answered 200 only once every one
//! is acknowledged there; its refused items go to the node's own quarantine; without NATS the
//! answer is 503 and nothing is acknowledged.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use gancho_cluster::{
    ClusterConfig, ClusterPublisher, create_streams, event_stream, fix_partitions, ingress_context,
    partition_for,
};
use gancho_core::SystemClock;
use gancho_ingress::{IngressConfig, IngressServer, SourceConfig};
use gancho_store::{Store, StoreConfig};
use gancho_testkit::nats::NatsCluster;
use serde_json::json;

use crate::support::{MAILJET_PASSWORD, MAILJET_USER, Request};

const PARTITIONS: u16 = 4;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn config_of(cluster: &NatsCluster) -> ClusterConfig {
    toml::from_str(&format!("{}node = \"n1\"\n", cluster.cluster_keys())).expect("[cluster]")
}

/// Messages in each partition's stream.
async fn stored(js: &jetstream::Context) -> Vec<u64> {
    let mut counts = Vec::new();
    for p in 0..PARTITIONS {
        let mut stream = js.get_stream(event_stream(p)).await.expect("stream");
        counts.push(stream.info().await.expect("stream info").state.messages);
    }
    counts
}

/// The ingress server of one node, running on its own thread until dropped.
struct Node {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Store>>,
}

impl Node {
    fn start(config: ClusterConfig, store_dir: std::path::PathBuf) -> Node {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            gancho_ingress::block_on(async move {
                let client = gancho_cluster::connect(&config, None).await.expect("NATS");
                let js = jetstream::new(client.clone());
                fix_partitions(&js, PARTITIONS).await.expect("partitions");
                create_streams(&js, PARTITIONS).await.expect("streams");
                let store = Store::open(&store_dir, &StoreConfig::default()).expect("store");
                let source: SourceConfig = toml::from_str(&format!(
                    "kind = \"mailjet\"\nbasic_auth = {{ user = \"{MAILJET_USER}\", password = \"{MAILJET_PASSWORD}\" }}\n"
                ))
                .expect("source");
                let ingress = IngressConfig {
                    sources: vec![source.into_source("mailjet").expect("source")],
                    workers: 1,
                    shutdown_grace: Duration::from_secs(1),
                    ..IngressConfig::default()
                };
                let publisher = ClusterPublisher::new(
                    ingress_context(client),
                    PARTITIONS,
                    HashMap::from([("mailjet".to_owned(), "email".to_owned())]),
                );
                let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
                let server = IngressServer::start_publishing(
                    listener,
                    ingress,
                    store.clone(),
                    Arc::new(SystemClock),
                    Arc::new(|| Ok(())),
                    Some(Arc::new(publisher)),
                )
                .expect("ingress");
                addr_tx.send(server.local_addr()).expect("the test waits");
                let handle = server.handle();
                // The server serves while its future is polled.
                let served = actix_web::rt::spawn(server.wait());
                let _ = stopped.await;
                handle.stop().await;
                let _ = served.await;
                store
            })
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the node started");
        Node {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn post(&self, body: &serde_json::Value) -> crate::support::Response {
        let body = serde_json::to_vec(body).expect("JSON");
        Request::post("/hooks/mailjet", &body)
            .basic_auth(MAILJET_USER, MAILJET_PASSWORD)
            .send(self.addr)
            .expect("HTTP")
    }

    /// Stops the server; returns the node's store.
    fn stop(mut self) -> Store {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("the node's thread")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[test]
fn cluster_ingress_acknowledges_only_what_the_streams_hold() {
    let Some(mut cluster) = NatsCluster::start(3) else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let node = Node::start(config_of(&cluster), dir.path().join("store"));
    let items: Vec<_> = (0..20)
        .map(|i| json!({"event": "open", "time": 1433103519, "MessageID": i, "email": format!("u{i}@x")}))
        .collect();
    let mut body = items.clone();
    body.push(json!({"time": 1433103519, "email": "no-type@x"}));
    let response = node.post(&json!(body));
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.json(),
        json!({"stored": 20, "duplicates": 0, "quarantined": 1})
    );

    let rt = runtime();
    let js = rt.block_on(async {
        jetstream::new(
            gancho_cluster::connect(&config_of(&cluster), None)
                .await
                .expect("NATS"),
        )
    });
    // Each event is in the stream of its e-mail address's partition.
    let counts = rt.block_on(stored(&js));
    assert_eq!(counts.iter().sum::<u64>(), 20);
    let mut expected = vec![0u64; PARTITIONS as usize];
    for i in 0..20 {
        let mut keys = gancho_core::Keys::new();
        keys.insert("email".to_owned(), format!("u{i}@x"));
        let event: gancho_core::NewEvent = serde_json::from_value(json!({
            "id": "x", "source": "mailjet", "type": "open",
            "time": "2026-11-30T10:00:00Z", "received": "2026-11-30T10:00:01Z",
            "keys": keys, "data": {},
        }))
        .expect("an event");
        expected[partition_for(&event, "email", PARTITIONS) as usize] += 1;
    }
    assert_eq!(counts, expected);

    // The same request again: the streams know the events.
    let response = node.post(&json!(body));
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.json(),
        json!({"stored": 0, "duplicates": 20, "quarantined": 1})
    );
    assert_eq!(rt.block_on(stored(&js)).iter().sum::<u64>(), 20);

    // No NATS server left: 503, never 200.
    for i in 0..3 {
        cluster.kill(i);
    }
    let response = node
        .post(&json!([{"event": "open", "time": 1433103519, "MessageID": 99, "email": "late@x"}]));
    assert_eq!(response.status, 503, "{}", response.body);
    assert!(
        response.body.contains("cluster did not store"),
        "{}",
        response.body
    );

    // Only the refused items are in this node's own store, in its quarantine.
    let store = node.stop();
    assert_eq!(store.last_seq().expect("the log"), 0);
    let quarantined = store.quarantine(10).expect("the quarantine");
    assert_eq!(quarantined.len(), 2);
}
