use crate::support::{Request, Setup, fixture};
use serde_json::{Value, json};

const SINGLE_FIXTURES: [(&str, &str); 7] = [
    ("mailjet/sent.json", "sent"),
    ("mailjet/open.json", "open"),
    ("mailjet/click.json", "click"),
    ("mailjet/bounce.json", "bounce"),
    ("mailjet/blocked.json", "blocked"),
    ("mailjet/spam.json", "spam"),
    ("mailjet/unsub.json", "unsub"),
];

#[test]
fn every_mailjet_fixture_is_stored_and_queryable_by_its_keys() {
    let setup = Setup::standard();
    let daemon = setup.start();
    for (file, kind) in SINGLE_FIXTURES {
        let body = fixture(file);
        let response = daemon.post_mailjet(&body);
        assert_eq!(response.status, 200, "{file}: {}", response.body);
        assert_eq!(response.json()["stored"], 1, "{file}");

        let payload: Value = serde_json::from_slice(&body).unwrap();
        let message_id = payload["MessageID"].to_string();
        let email = payload["email"].as_str().unwrap();
        let by_message = setup.events(&[
            "--source",
            "mailjet",
            "--type",
            kind,
            "--key",
            &format!("MessageID={message_id}"),
        ]);
        assert_eq!(by_message.len(), 1, "{file} by MessageID");
        let event = &by_message[0];
        assert_eq!(event["type"], kind);
        assert_eq!(event["source"], "mailjet");
        assert_eq!(event["keys"]["email"], email);
        assert_eq!(event["keys"]["CustomID"], "helloworld");
        // The payload comes back exactly, 17-digit ids included.
        assert_eq!(event["data"], payload, "{file}");
        let by_email = setup.events(&[
            "--source",
            "mailjet",
            "--type",
            kind,
            "--key",
            &format!("email={email}"),
        ]);
        assert!(
            by_email.iter().any(|e| e["seq"] == event["seq"]),
            "{file} by email"
        );
    }
    assert_eq!(setup.events(&[]).len(), SINGLE_FIXTURES.len());
}

#[test]
fn a_grouped_array_yields_one_event_per_item() {
    let setup = Setup::standard();
    let daemon = setup.start();
    let response = daemon.post_mailjet(&fixture("mailjet/grouped_v2_sent.json"));
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.json(),
        json!({"stored": 2, "duplicates": 0, "quarantined": 0})
    );
    // The two items differ only in the last digit of ids above 2^53.
    for id in ["19421777835146490", "19421777835146491"] {
        let events = setup.events(&[
            "--source",
            "mailjet",
            "--type",
            "sent",
            "--key",
            &format!("MessageID={id}"),
        ]);
        assert_eq!(events.len(), 1, "MessageID {id}");
        assert_eq!(events[0]["data"]["mj_message_id"], id);
    }
    // `sent.json` is the first item of the group: the same event, stored once.
    let response = daemon.post_mailjet(&fixture("mailjet/sent.json"));
    assert_eq!(
        response.json(),
        json!({"stored": 0, "duplicates": 1, "quarantined": 0})
    );
    assert_eq!(setup.events(&[]).len(), 2);
}

#[test]
fn posting_the_same_payload_twice_stores_it_once() {
    let setup = Setup::standard();
    let daemon = setup.start();
    let body = fixture("mailjet/open.json");
    assert_eq!(daemon.post_mailjet(&body).json()["stored"], 1);
    // A retry re-serialised without the white space is still the same event.
    let compact: Vec<u8> = String::from_utf8(body.clone())
        .unwrap()
        .lines()
        .map(str::trim)
        .collect::<String>()
        .replace("\": ", "\":")
        .into_bytes();
    assert_ne!(compact, body);
    let again = daemon.post_mailjet(&compact);
    assert_eq!(again.status, 200);
    assert_eq!(
        again.json(),
        json!({"stored": 0, "duplicates": 1, "quarantined": 0})
    );
    assert_eq!(setup.events(&[]).len(), 1);
}

#[test]
fn a_message_id_sent_as_a_string_is_the_same_key_as_a_number() {
    let setup = Setup::standard();
    let daemon = setup.start();
    let as_string =
        br#"{"event":"open","time":1433103600,"MessageID":"19421777396190491","email":"a@x"}"#;
    let as_number =
        br#"{"event":"click","time":1433103700,"MessageID":19421777396190491,"email":"a@x"}"#;
    assert_eq!(daemon.post_mailjet(as_string).status, 200);
    assert_eq!(daemon.post_mailjet(as_number).status, 200);
    let opens = setup.events(&[
        "--source",
        "mailjet",
        "--type",
        "open",
        "--key",
        "MessageID=19421777396190491",
    ]);
    let clicks = setup.events(&[
        "--source",
        "mailjet",
        "--type",
        "click",
        "--key",
        "MessageID=19421777396190491",
    ]);
    assert_eq!((opens.len(), clicks.len()), (1, 1));
    assert_eq!(opens[0]["data"]["MessageID"], "19421777396190491");
    assert_eq!(
        clicks[0]["data"]["MessageID"].to_string(),
        "19421777396190491"
    );
}

#[test]
fn a_json_source_reads_type_time_id_and_keys_from_its_pointers() {
    let setup = Setup::standard();
    let daemon = setup.start();
    let withdrawal = json!({"id": "w-1", "kind": "withdrawal", "at": 1764320000, "account": "ES7600000000000000000001",
        "phone": "+34600000001", "amount": 120, "currency": "EUR", "atm": "Madrid, Gran Via 1"});
    let body = serde_json::to_vec(&withdrawal).unwrap();
    assert_eq!(daemon.post("bank", &body).json()["stored"], 1);
    // The provider's id dedups even when the content differs (a retry with a new field).
    let mut retried = withdrawal.clone();
    retried["retry"] = json!(1);
    let again = daemon.post("bank", &serde_json::to_vec(&retried).unwrap());
    assert_eq!(again.json()["duplicates"], 1);
    let events = setup.events(&[
        "--source",
        "bank",
        "--type",
        "withdrawal",
        "--key",
        "account=ES7600000000000000000001",
    ]);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], "p:w-1");
    assert_eq!(events[0]["time"], "2025-11-28T08:53:20Z");
    assert_eq!(events[0]["data"], withdrawal);
}

#[test]
fn gancho_status_reports_how_far_the_log_is_durable_indexed_and_processed_and_http_does_not() {
    let setup = Setup::standard();
    let daemon = setup.start();
    assert_eq!(
        daemon
            .post_mailjet(&fixture("mailjet/grouped_v2_sent.json"))
            .status,
        200
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = setup.json(&["status", "--json"]);
        assert_eq!(status["durable"], 2);
        if status["indexed"] == 2 {
            assert_eq!(status["index_lag"], 0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never indexed: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The engine (no rules) moves past them too, and its cursor becomes durable.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while setup.json(&["status", "--json"])["engine_cursor"] != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the engine stayed behind"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The status is the operator's: the public listener serves only hooks and /healthz.
    for path in ["/status", "/admin/status", "/metrics"] {
        assert_eq!(daemon.request(&Request::get(path)).status, 404, "{path}");
    }
    assert_eq!(daemon.terminate().code(), Some(0));
    // With the daemon stopped, the command reads the store itself.
    let status = setup.json(&["status", "--json"]);
    assert_eq!(
        (status["durable"].as_u64(), status["engine_cursor"].as_u64()),
        (Some(2), Some(2))
    );
    let text = setup.command(&["status"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("engine cursor  2 (lag 0)"));
}

#[test]
fn healthz_answers_once_the_store_is_open() {
    let setup = Setup::standard();
    let daemon = setup.start();
    let response = daemon.request(&Request::get("/healthz"));
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "ok\n");
}
