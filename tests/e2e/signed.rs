//! Signed sources (`stripe`, `github`, `standard-webhooks`): a valid request is stored with the
//! kind's type, id and keys; a flipped body byte, a wrong secret, a stale timestamp or a missing
//! header gets 401 naming the failed check and stores nothing; two secrets are accepted during
//! a rotation.

use gancho_core::signature::{HmacHash, HmacKey, StandardWebhooks, to_hex};

use crate::support::{Daemon, Request, Setup};

fn now_secs() -> i64 {
    gancho_core::Clock::now(&gancho_core::SystemClock).timestamp()
}

fn post(daemon: &Daemon, path: &str, body: &[u8], headers: &[(&str, String)]) -> (u16, String) {
    let mut request = Request::post(path, body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let answer = daemon.request(&request);
    (answer.status, answer.body)
}

fn stripe_signature(secret: &str, t: i64, body: &[u8]) -> String {
    let tag = HmacKey::new(HmacHash::Sha256, secret.as_bytes()).tag(&[
        t.to_string().as_bytes(),
        b".",
        body,
    ]);
    format!("t={t},v1={}", to_hex(&tag))
}

/// Each refusal: 401, its reason, nothing stored.
fn refused(
    daemon: &Daemon,
    setup: &Setup,
    path: &str,
    body: &[u8],
    headers: &[(&str, String)],
    reason: &str,
) {
    let before = setup.events(&[]).len();
    let (status, answer) = post(daemon, path, body, headers);
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains(reason), "{reason:?} not in {answer}");
    assert!(
        !answer.contains("whsec_"),
        "a secret in the answer: {answer}"
    );
    assert_eq!(setup.events(&[]).len(), before, "something was stored");
}

#[test]
fn stripe_events_are_verified_typed_and_keyed() {
    let setup = Setup::new(
        "[sources.stripe]\nkind = \"stripe\"\nsecrets = [\"whsec_new_secret\", \"whsec_old_secret\"]\n",
    );
    let daemon = setup.start();
    let t = now_secs();
    let body = format!(
        r#"{{"id":"evt_1","type":"charge.succeeded","created":{t},"data":{{"object":{{"id":"ch_1","customer":"cus_9"}}}}}}"#
    );
    let body = body.as_bytes();
    for secret in ["whsec_new_secret", "whsec_old_secret"] {
        let (status, answer) = post(
            &daemon,
            "/hooks/stripe",
            body,
            &[("Stripe-Signature", stripe_signature(secret, t, body))],
        );
        assert_eq!(status, 200, "{secret}: {answer}");
    }
    let events = setup.events(&[]);
    assert_eq!(
        events.len(),
        1,
        "the second delivery is a duplicate: {events:?}"
    );
    assert_eq!(events[0]["type"], "charge.succeeded");
    assert_eq!(events[0]["id"], "p:evt_1");
    assert_eq!(events[0]["keys"]["customer"], "cus_9");
    assert_eq!(events[0]["keys"]["object"], "ch_1");

    let good = stripe_signature("whsec_new_secret", t, body);
    let mut flipped = body.to_vec();
    flipped[10] ^= 1;
    let path = "/hooks/stripe";
    refused(
        &daemon,
        &setup,
        path,
        &flipped,
        &[("Stripe-Signature", good.clone())],
        "bad signature",
    );
    let wrong = stripe_signature("whsec_wrong", t, body);
    refused(
        &daemon,
        &setup,
        path,
        body,
        &[("Stripe-Signature", wrong)],
        "bad signature",
    );
    let stale = stripe_signature("whsec_new_secret", t - 600, body);
    refused(
        &daemon,
        &setup,
        path,
        body,
        &[("Stripe-Signature", stale)],
        "stale timestamp",
    );
    refused(
        &daemon,
        &setup,
        path,
        body,
        &[],
        "missing header stripe-signature",
    );
}

#[test]
fn github_webhooks_take_their_type_and_id_from_the_headers() {
    let setup =
        Setup::new("[sources.gh]\nkind = \"github\"\nsecret = \"It's a Secret to Everybody\"\n");
    let daemon = setup.start();
    let body =
        br#"{"action":"opened","repository":{"full_name":"acme/shop"},"sender":{"login":"ana"}}"#;
    let sign = |secret: &str, body: &[u8]| {
        let tag = HmacKey::new(HmacHash::Sha256, secret.as_bytes()).tag(&[body]);
        format!("sha256={}", to_hex(&tag))
    };
    let headers = |signature: String| {
        vec![
            ("X-GitHub-Event", "issues".to_owned()),
            (
                "X-GitHub-Delivery",
                "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_owned(),
            ),
            ("X-Hub-Signature-256", signature),
        ]
    };
    let (status, answer) = post(
        &daemon,
        "/hooks/gh",
        body,
        &headers(sign("It's a Secret to Everybody", body)),
    );
    assert_eq!(status, 200, "{answer}");
    let events = setup.events(&[]);
    assert_eq!(events[0]["type"], "issues");
    // The id is the body's hash: GitHub does not sign X-GitHub-Delivery.
    assert!(
        events[0]["id"].as_str().unwrap().starts_with("h:"),
        "{events:?}"
    );
    assert_eq!(
        events[0]["keys"]["delivery"],
        "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    );
    assert_eq!(events[0]["keys"]["repository"], "acme/shop");
    assert_eq!(events[0]["keys"]["sender"], "ana");
    // The same signed body replayed with other headers is the same event: stored once.
    let mut replayed = headers(sign("It's a Secret to Everybody", body));
    replayed[0].1 = "push".to_owned();
    replayed[1].1 = "another-delivery".to_owned();
    let (status, answer) = post(&daemon, "/hooks/gh", body, &replayed);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""duplicates":1"#), "{answer}");
    assert_eq!(setup.events(&[]).len(), 1);
    refused(
        &daemon,
        &setup,
        "/hooks/gh",
        b"{\"action\":\"closed\"}",
        &headers(sign("It's a Secret to Everybody", body)),
        "bad signature",
    );
    refused(
        &daemon,
        &setup,
        "/hooks/gh",
        body,
        &headers(sign("another", body)),
        "bad signature",
    );
    refused(
        &daemon,
        &setup,
        "/hooks/gh",
        body,
        &headers("sha1=00".to_owned()),
        "malformed",
    );
    refused(
        &daemon,
        &setup,
        "/hooks/gh",
        body,
        &[],
        "missing header x-hub-signature-256",
    );
}

#[test]
fn standard_webhooks_are_verified_with_either_secret_of_a_rotation() {
    let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let new = "whsec_c2Vjb25kLXNlY3JldC0xMjM0NTY3OA==";
    let setup = Setup::new(&format!(
        "[sources.sw]\nkind = \"standard-webhooks\"\nsecret = \"{new}\"\nsecrets = [\"{old}\"]\nkeys = {{ invoice = \"/data/invoice\" }}\n"
    ));
    let daemon = setup.start();
    let t = now_secs();
    let body =
        br#"{"type":"invoice.paid","timestamp":"2026-11-30T10:00:00Z","data":{"invoice":"in_7"}}"#;
    let headers = |secret: &str, id: &str, t: i64, body: &[u8]| {
        let signature = StandardWebhooks::new(&[secret]).unwrap().sign(id, t, body);
        vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", t.to_string()),
            ("webhook-signature", signature),
        ]
    };
    for (secret, id) in [(new, "msg_1"), (old, "msg_2")] {
        let (status, answer) = post(&daemon, "/hooks/sw", body, &headers(secret, id, t, body));
        assert_eq!(status, 200, "{answer}");
    }
    let events = setup.events(&[]);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["type"], "invoice.paid");
    assert_eq!(events[0]["id"], "p:msg_1");
    assert_eq!(events[0]["time"], "2026-11-30T10:00:00Z");
    assert_eq!(events[1]["keys"]["invoice"], "in_7");
    let mut flipped = body.to_vec();
    flipped[9] ^= 1;
    refused(
        &daemon,
        &setup,
        "/hooks/sw",
        &flipped,
        &headers(new, "msg_3", t, body),
        "bad signature",
    );
    let wrong = "whsec_d3JvbmctLXNlY3JldC0xMjM0NTY3OA==";
    refused(
        &daemon,
        &setup,
        "/hooks/sw",
        body,
        &headers(wrong, "msg_3", t, body),
        "bad signature",
    );
    refused(
        &daemon,
        &setup,
        "/hooks/sw",
        body,
        &headers(new, "msg_3", t - 3600, body),
        "stale timestamp",
    );
    refused(
        &daemon,
        &setup,
        "/hooks/sw",
        body,
        &[],
        "missing header webhook-id",
    );
}

#[test]
fn a_signed_kind_without_its_secret_is_a_config_error() {
    let setup = Setup::new("[sources.stripe]\nkind = \"stripe\"\n");
    let out = setup.command(&["check-config"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sources.stripe.secret"), "{err}");
    let setup =
        Setup::new("[sources.sw]\nkind = \"standard-webhooks\"\nsecret = \"not base64!\"\n");
    let err = String::from_utf8_lossy(&setup.command(&["check-config"]).stderr).into_owned();
    assert!(
        err.contains("sources.sw.secret") && !err.contains("not base64!\""),
        "{err}"
    );
    let setup =
        Setup::new("[sources.bank]\nkind = \"json\"\ntype = \"/t\"\nsecret = \"xxxxxxxxxx\"\n");
    let err = String::from_utf8_lossy(&setup.command(&["check-config"]).stderr).into_owned();
    assert!(err.contains("only the signed kinds"), "{err}");
    // An empty secret in a rotation list would let anyone sign.
    let setup =
        Setup::new("[sources.gh]\nkind = \"github\"\nsecrets = [\"a-long-secret\", \"\"]\n");
    let err = String::from_utf8_lossy(&setup.command(&["check-config"]).stderr).into_owned();
    assert!(
        err.contains("sources.gh.secrets") && err.contains("at least 8 bytes"),
        "{err}"
    );
}

#[test]
fn mailgun_requests_are_verified_and_a_replayed_token_is_refused() {
    let key = "mailgun-webhook-signing-key-example";
    let setup = Setup::new(&format!(
        "[sources.mg]\nkind = \"mailgun\"\nsigning_key = \"{key}\"\n"
    ));
    let daemon = setup.start();
    let t = now_secs();
    let token = "651869375b9df3c98fc15c4889b102119add1235c38fc92824";
    let signature = to_hex(
        &HmacKey::new(HmacHash::Sha256, key.as_bytes())
            .tag(&[t.to_string().as_bytes(), token.as_bytes()]),
    );
    // The fixture's event, signed now.
    let fixture: serde_json::Value =
        serde_json::from_slice(&crate::support::fixture("mailgun/delivered.json")).unwrap();
    let mut body = fixture.clone();
    body["signature"] =
        serde_json::json!({"timestamp": t.to_string(), "token": token, "signature": signature});
    body["event-data"]["timestamp"] = serde_json::json!(t);
    let body = serde_json::to_vec(&body).unwrap();
    let (status, answer) = post(&daemon, "/hooks/mg", &body, &[]);
    assert_eq!(status, 200, "{answer}");
    let events = setup.events(&[]);
    assert_eq!(events[0]["type"], "delivered");
    assert_eq!(events[0]["keys"]["recipient"], "recipient@example.com");
    refused(&daemon, &setup, "/hooks/mg", &body, &[], "replayed token");
    // The fixture as captured: signed in 2018, far outside the tolerance.
    refused(
        &daemon,
        &setup,
        "/hooks/mg",
        &crate::support::fixture("mailgun/delivered.json"),
        &[],
        "stale timestamp",
    );
}

#[test]
fn postmark_and_sendgrid_fixtures_are_stored_with_their_types_and_keys() {
    let setup = Setup::new(
        "[sources.pm]\nkind = \"postmark\"\nbasic_auth = { user = \"pm\", password = \"pm-secret\" }\n\
         [sources.sg]\nkind = \"sendgrid\"\nbasic_auth = { user = \"sg\", password = \"sg-secret\" }\n",
    );
    let daemon = setup.start();
    for file in [
        "delivery",
        "bounce",
        "open",
        "click",
        "spam_complaint",
        "subscription_change",
    ] {
        let body = crate::support::fixture(&format!("postmark/{file}.json"));
        let answer =
            daemon.request(&Request::post("/hooks/pm", &body).basic_auth("pm", "pm-secret"));
        assert_eq!(answer.status, 200, "{file}: {}", answer.body);
    }
    let unauthenticated = daemon.request(&Request::post("/hooks/pm", b"{}"));
    assert_eq!(unauthenticated.status, 401);
    let body = crate::support::fixture("sendgrid/docs_all_events_batch.json");
    let answer = daemon.request(&Request::post("/hooks/sg", &body).basic_auth("sg", "sg-secret"));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let postmark = setup.events(&["--source", "pm"]);
    let types: Vec<&str> = postmark
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "Delivery",
            "Bounce",
            "Open",
            "Click",
            "SpamComplaint",
            "SubscriptionChange"
        ]
    );
    assert!(
        postmark
            .iter()
            .all(|e| e["keys"]["Recipient"] == "john@example.com")
    );
    let sendgrid = setup.events(&["--source", "sg"]);
    // The documentation's batch gives every event the same sg_event_id: one is stored, the
    // rest are duplicates of it, as a retried delivery would be.
    assert_eq!(sendgrid.len(), 1, "{sendgrid:?}");
    assert_eq!(
        answer.json()["duplicates"].as_u64().map(|d| d > 0),
        Some(true)
    );
    assert_eq!(sendgrid[0]["keys"]["email"], "example@test.com");
}

#[test]
fn twilio_status_callbacks_are_forms_checked_against_the_public_url() {
    let url = "https://hooks.example.com/hooks/tw";
    let setup = Setup::new(&format!(
        "[sources.tw]\nkind = \"twilio\"\nauth_token = \"twilio-auth-token-0123\"\npublic_url = \"{url}\"\n"
    ));
    let daemon = setup.start();
    let form = |status: &str| {
        format!(
            "MessageSid=SM1234&MessageStatus={status}&To=%2B34600000001&From=%2B15005550006&AccountSid=AC99&ApiVersion=2010-04-01"
        )
    };
    let sign = |token: &str, body: &str| {
        let mut fields: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        fields.sort();
        let mut signed = url.to_owned();
        for (k, v) in fields {
            signed.push_str(&k);
            signed.push_str(&v);
        }
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode(HmacKey::new(HmacHash::Sha1, token.as_bytes()).tag(&[signed.as_bytes()]))
    };
    let send = |body: &str, signature: Option<String>, content_type: &str| {
        let mut request =
            Request::post("/hooks/tw", body.as_bytes()).header("Content-Type", content_type);
        if let Some(signature) = signature {
            request = request.header("X-Twilio-Signature", &signature);
        }
        daemon.request(&request)
    };
    let form_type = "application/x-www-form-urlencoded";
    for status in ["sent", "delivered"] {
        let body = form(status);
        let answer = send(
            &body,
            Some(sign("twilio-auth-token-0123", &body)),
            form_type,
        );
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let events = setup.events(&[]);
    assert_eq!(events.len(), 2, "each status is an event of its own");
    assert_eq!(events[1]["type"], "delivered");
    assert_eq!(events[1]["id"], "p:SM1234:delivered");
    assert_eq!(events[1]["keys"]["MessageSid"], "SM1234");
    assert_eq!(events[1]["keys"]["To"], "+34600000001");
    assert_eq!(events[1]["data"]["ApiVersion"], "2010-04-01");
    let body = form("failed");
    let wrong = send(&body, Some(sign("another-token", &body)), form_type);
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.body.contains("bad signature"));
    let missing = send(&body, None, form_type);
    assert_eq!(missing.status, 401);
    assert!(missing.body.contains("missing header x-twilio-signature"));
    let json = send(
        "{}",
        Some(sign("twilio-auth-token-0123", "{}")),
        "application/json",
    );
    assert_eq!(json.status, 415, "{}", json.body);
    assert_eq!(setup.events(&[]).len(), 2);
}

#[test]
fn a_generic_form_source_reads_its_fields_with_pointers() {
    let setup = Setup::new(
        "[sources.shop]\nkind = \"form\"\nbasic_auth = { user = \"shop\", password = \"shop-secret\" }\ntype = \"/event\"\nid = \"/order\"\nkeys = { customer = \"/customer\" }\n",
    );
    let daemon = setup.start();
    let answer = daemon.request(
        &Request::post(
            "/hooks/shop",
            b"event=order.paid&order=o-1&customer=c%2F9&tag=a&tag=b",
        )
        .header("Content-Type", "application/x-www-form-urlencoded")
        .basic_auth("shop", "shop-secret"),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let events = setup.events(&[]);
    assert_eq!(events[0]["type"], "order.paid");
    assert_eq!(events[0]["id"], "p:o-1");
    assert_eq!(events[0]["keys"]["customer"], "c/9");
    assert_eq!(events[0]["data"]["tag"], serde_json::json!(["a", "b"]));
}

#[test]
fn a_json_source_can_take_a_generic_hmac_with_a_timestamp() {
    let setup = Setup::new(
        "[sources.shop]\nkind = \"json\"\ntype = \"/event\"\nid = \"/id\"\nsecret = \"shop-shared-secret\"\n\
         hmac = { header = \"X-Shop-Signature\", algorithm = \"sha1\", encoding = \"base64\", prefix = \"v1=\", timestamp_header = \"X-Shop-Time\" }\n",
    );
    let daemon = setup.start();
    let body = br#"{"id":"o-1","event":"order.paid"}"#;
    let sign = |secret: &str, t: i64, body: &[u8]| {
        use base64::Engine as _;
        let tag = HmacKey::new(HmacHash::Sha1, secret.as_bytes()).tag(&[
            t.to_string().as_bytes(),
            b".",
            body,
        ]);
        vec![
            (
                "X-Shop-Signature",
                format!(
                    "v1={}",
                    base64::engine::general_purpose::STANDARD.encode(tag)
                ),
            ),
            ("X-Shop-Time", t.to_string()),
        ]
    };
    let t = now_secs();
    let (status, answer) = post(
        &daemon,
        "/hooks/shop",
        body,
        &sign("shop-shared-secret", t, body),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(setup.events(&[])[0]["id"], "p:o-1");
    let path = "/hooks/shop";
    refused(
        &daemon,
        &setup,
        path,
        br#"{"id":"o-2","event":"order.paid"}"#,
        &sign("shop-shared-secret", t, body),
        "bad signature",
    );
    refused(
        &daemon,
        &setup,
        path,
        body,
        &sign("other", t, body),
        "bad signature",
    );
    refused(
        &daemon,
        &setup,
        path,
        body,
        &sign("shop-shared-secret", t - 3600, body),
        "stale timestamp",
    );
    refused(
        &daemon,
        &setup,
        path,
        body,
        &[],
        "missing header x-shop-signature",
    );
    let unprefixed = vec![
        ("X-Shop-Signature", "AAAA".to_owned()),
        ("X-Shop-Time", t.to_string()),
    ];
    refused(
        &daemon,
        &setup,
        path,
        body,
        &unprefixed,
        "header x-shop-signature is malformed: the prefix is missing",
    );
}

#[test]
fn an_xml_source_reads_elements_and_attributes_with_pointers() {
    let setup = Setup::new(
        "[sources.erp]\nkind = \"xml\"\nbasic_auth = { user = \"erp\", password = \"erp-secret\" }\ntype = \"/@status\"\nid = \"/@id\"\ntime = \"/at\"\nkeys = { customer = \"/customer\" }\n",
    );
    let daemon = setup.start();
    let xml = br#"<?xml version="1.0"?><order id="o-7" status="shipped"><customer>c-9</customer><at>2025-11-28T08:00:00Z</at><item sku="a"/><item sku="b"/></order>"#;
    let send = |body: &[u8], content_type: &str| {
        daemon.request(
            &Request::post("/hooks/erp", body)
                .header("Content-Type", content_type)
                .basic_auth("erp", "erp-secret"),
        )
    };
    let answer = send(xml, "application/xml");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let events = setup.events(&[]);
    assert_eq!(events[0]["type"], "shipped");
    assert_eq!(events[0]["id"], "p:o-7");
    assert_eq!(events[0]["keys"]["customer"], "c-9");
    assert_eq!(events[0]["data"]["item"][1]["@sku"], "b");
    let bad = send(b"<order><customer></order>", "text/xml");
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("not valid XML"), "{}", bad.body);
    let doctype = send(
        b"<!DOCTYPE order [<!ENTITY x \"y\">]><order>&x;</order>",
        "application/xml",
    );
    assert_eq!(doctype.status, 400, "{}", doctype.body);
    assert_eq!(send(xml, "application/json").status, 415);
    assert_eq!(setup.events(&[]).len(), 1);
}
