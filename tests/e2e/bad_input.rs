//! Every kind of bad input gets its status and a reason, and leaves nothing stored.

use crate::support::{Daemon, MAILJET_PASSWORD, MAILJET_USER, Request, Setup, fixture};
use serde_json::json;

fn small_limit() -> Setup {
    Setup::new(
        r#"
max_body_bytes = 2000

[sources.mailjet]
kind = "mailjet"
basic_auth = { user = "mailjet", password = "s3cret" }
"#,
    )
}

fn assert_refused(daemon: &Daemon, setup: &Setup, request: Request, status: u16, reason: &str) {
    let response = daemon.request(&request);
    assert_eq!(
        response.status, status,
        "{}: {}",
        request.path, response.body
    );
    let error = response.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains(reason),
        "reason {error:?} does not contain {reason:?}"
    );
    assert!(
        setup.events(&[]).is_empty(),
        "something was stored after a {status}"
    );
    assert!(
        setup.quarantine().is_empty(),
        "something was quarantined after a {status}"
    );
}

fn authed(body: &[u8]) -> Request {
    Request::post("/hooks/mailjet", body).basic_auth(MAILJET_USER, MAILJET_PASSWORD)
}

#[test]
fn each_bad_request_gets_its_status_and_reason_and_stores_nothing() {
    let setup = small_limit();
    let daemon = setup.start();
    let open = fixture("mailjet/open.json");

    assert_refused(
        &daemon,
        &setup,
        Request::post("/hooks/nope", &open),
        404,
        "unknown source \"nope\"",
    );

    assert_refused(
        &daemon,
        &setup,
        Request {
            path: "/hooks/mailjet/more".to_owned(),
            ..authed(&open)
        },
        404,
        "no route",
    );
    assert_refused(
        &daemon,
        &setup,
        Request::post("/hooks/", &open),
        404,
        "no route",
    );
    let response = daemon.request(&Request::get("/hooks/mailjet"));
    assert_eq!(response.status, 405, "{}", response.body);
    assert_eq!(response.header("allow"), Some("POST"));
    // A percent-encoded name is decoded.
    assert_refused(
        &daemon,
        &setup,
        Request::post("/hooks/no%20pe", &open),
        404,
        "unknown source \"no pe\"",
    );

    let response = daemon.request(&Request::post("/hooks/mailjet", &open));
    assert_eq!(
        response.header("www-authenticate"),
        Some("Basic realm=\"gancho\"")
    );
    assert_refused(
        &daemon,
        &setup,
        Request::post("/hooks/mailjet", &open),
        401,
        "credentials",
    );
    assert_refused(
        &daemon,
        &setup,
        Request::post("/hooks/mailjet", &open).basic_auth(MAILJET_USER, "wrong"),
        401,
        "credentials",
    );

    assert_refused(
        &daemon,
        &setup,
        authed(&open).header("Content-Type", "text/plain"),
        415,
        "Content-Type \"text/plain\" is not supported",
    );
    let mut no_type = authed(&open);
    no_type.headers.retain(|(name, _)| name != "Content-Type");
    assert_refused(&daemon, &setup, no_type, 415, "missing Content-Type");

    let big = format!(
        "[{}]",
        vec![String::from_utf8(open.clone()).unwrap(); 5].join(",")
    );
    assert!(big.len() > 2000);
    assert_refused(
        &daemon,
        &setup,
        authed(big.as_bytes()),
        413,
        "larger than the limit of 2000 bytes",
    );

    assert_refused(
        &daemon,
        &setup,
        authed(b"{\"event\": \"open\","),
        400,
        "body is not valid JSON: EOF while parsing",
    );
    assert_refused(
        &daemon,
        &setup,
        authed(b"\"open\""),
        422,
        "must be a JSON object or an array",
    );
    assert_refused(
        &daemon,
        &setup,
        authed(br#"{"time": 1433103519}"#),
        422,
        "invalid event: missing field `event`",
    );

    // JSON with a charset parameter is JSON.
    let ok =
        daemon.request(&authed(&open).header("Content-Type", "application/json; charset=utf-8"));
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[test]
fn a_batch_stores_its_valid_items_and_quarantines_the_others_with_reasons() {
    let setup = Setup::standard();
    let daemon = setup.start();
    let body = json!([
        {"event": "open", "time": 1433103519, "MessageID": 1, "email": "a@x"},
        {"time": 1433103519, "email": "b@x"},
        {"event": "click", "time": "last tuesday"},
        {"event": "click", "time": 1433103520, "MessageID": 2, "email": "c@x"},
        "not an object"
    ]);
    let response = daemon.post_mailjet(&serde_json::to_vec(&body).unwrap());
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.json(),
        json!({"stored": 2, "duplicates": 0, "quarantined": 3})
    );

    let events = setup.events(&[]);
    let emails: Vec<_> = events.iter().map(|e| e["keys"]["email"].clone()).collect();
    assert_eq!(emails, [json!("a@x"), json!("c@x")]);

    let quarantined = setup.quarantine();
    let listed: Vec<_> = quarantined
        .iter()
        .map(|q| (q["reason"].clone(), q["item"].clone()))
        .collect();
    assert_eq!(
        listed,
        [
            (json!("missing field `event`"), body[1].clone()),
            (
                json!(
                    "field `time`: time \"last tuesday\" is not an ISO 8601 date-time nor a Unix time"
                ),
                body[2].clone()
            ),
            (
                json!("item must be a JSON object, found a string"),
                body[4].clone()
            ),
        ]
    );
    assert!(quarantined.iter().all(|q| q["source"] == "mailjet"));

    // The table form names the reason too.
    let out = setup.command(&["quarantine"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("missing field `event`"));
}

#[test]
fn hostile_bodies_do_not_crash_the_daemon() {
    let setup = Setup::standard();
    let daemon = setup.start();
    let deep = "[".repeat(100_000);
    let cases: Vec<Vec<u8>> = vec![
        deep.into_bytes(),
        vec![0xff, 0xfe, 0x00],
        b"".to_vec(),
        br#"{"event": "open", "time": 1e400}"#.to_vec(),
        br#"{"event": "open", "time": -99999999999999999999}"#.to_vec(),
        br#"{"event": "open", "time": 1, "email": {"nested": true}}"#.to_vec(),
        br#"[[], {}, null, 1, "x"]"#.to_vec(),
    ];
    for body in cases {
        let response = daemon.post_mailjet(&body);
        assert!(
            response.status == 200 || (400..500).contains(&response.status),
            "{} for {:?}",
            response.status,
            String::from_utf8_lossy(&body[..body.len().min(40)])
        );
    }
    assert_eq!(daemon.request(&Request::get("/healthz")).status, 200);
}

#[test]
fn an_event_time_in_milliseconds_is_read_as_such_and_one_far_in_the_future_is_refused() {
    let setup = Setup::standard();
    let daemon = setup.start();
    let ms = br#"{"id":"m1","kind":"withdrawal","at":1764460000000,"account":"ES01"}"#;
    assert_eq!(daemon.post("bank", ms).status, 200);
    let events = setup.events(&[]);
    assert_eq!(events[0]["time"], "2025-11-29T23:46:40Z", "{events:?}");

    let far = br#"{"id":"f1","kind":"withdrawal","at":99999999999,"account":"ES01"}"#;
    let refused = daemon.post("bank", far);
    assert_eq!(refused.status, 422, "{}", refused.body);
    let reason = refused.json()["error"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("event time at /at is 99999999999") && reason.contains("max_future"),
        "{reason}"
    );
    assert_eq!(setup.events(&[]).len(), 1, "nothing of it is stored");
    assert!(setup.quarantine().is_empty());
}
