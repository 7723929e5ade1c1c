//! Fuzzing as a property test: every adapter, verifier and the form parser get many generated
//! and mutated inputs (the providers' real payloads, cut, flipped, spliced, nested, or noise),
//! and none may panic or hang; each answers with events, a refusal, or a failed check.
//!
//! The suite runs `GANCHO_FUZZ_CASES` cases per target (default 3,000) from a fixed seed, so a
//! failure is reproducible; `GANCHO_FUZZ_SEED` picks another. For a longer run:
//! `GANCHO_FUZZ_CASES=1000000 cargo test --release -p gancho-ingress --test fuzz`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use chrono::{TimeZone, Utc};
use gancho_core::signature::{HmacHash, HmacKey, StandardWebhooks};
use gancho_ingress::{
    Envelope, JsonSpec, MAILGUN, POSTMARK, SENDGRID, SourceKind, TWILIO, TimePolicy, Verifier,
    form_to_json, submission_with, xml_to_json,
};

fn cases() -> usize {
    std::env::var("GANCHO_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3_000)
}

fn rng() -> fastrand::Rng {
    let seed = std::env::var("GANCHO_FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0x006a_6e63_686f);
    eprintln!("fuzz seed {seed} (GANCHO_FUZZ_SEED), {} cases", cases());
    fastrand::Rng::with_seed(seed)
}

fn seeds() -> Vec<Vec<u8>> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
    let mut seeds = Vec::new();
    for folder in ["mailjet", "postmark", "sendgrid", "mailgun"] {
        let dir = std::path::Path::new(root).join(folder);
        for entry in std::fs::read_dir(&dir).unwrap() {
            seeds.push(std::fs::read(entry.unwrap().path()).unwrap());
        }
    }
    seeds.push(
        br#"{"id":"w1","kind":"withdrawal","at":1764320000000,"account":"A","amount":20}"#.to_vec(),
    );
    seeds.push(
        b"MessageSid=SM1&MessageStatus=delivered&To=%2B34600000001&From=%2B1500&a=1&a=2".to_vec(),
    );
    seeds.push(
        br#"{"type":"invoice.paid","timestamp":"2026-11-30T10:00:00.123+01:00","data":{}}"#
            .to_vec(),
    );
    seeds.push(
        br#"<?xml version="1.0"?><order id="o-1" status="paid"><item sku="a">2</item><item>3</item><n><![CDATA[x]]></n>&amp;&#65;</order>"#
            .to_vec(),
    );
    seeds
}

/// JSON-ish fragments a mutation splices in: deep nesting, huge numbers, odd strings.
const FRAGMENTS: &[&[u8]] = &[
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{",
    b"99999999999999999999999999999999",
    b"-1e400",
    b"1e-400",
    b"\"\\ud800\"",
    b"\"\\u0000\"",
    b"null",
    b"%",
    b"%ZZ",
    b"&&&==&",
    b"\xff\xfe\x00",
    b"\"time\":\"9999-99-99T99:99:99Z\"",
    b"\"time\":-9223372036854775808",
    b"\"timestamp\":1e308",
    b"\"event\":[]",
    b"\"RecordType\":{}",
    b"<a><a><a><a><a><a><a><a><a><a><a><a><a><a><a><a>",
    b"<!DOCTYPE x [<!ENTITY e \"e\">]>",
    b"&#xFFFFFFFF;",
    b"<![CDATA[",
];

fn mutate(rng: &mut fastrand::Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut input: Vec<u8> = match rng.u8(0..10) {
        0 => (0..rng.usize(0..512)).map(|_| rng.u8(..)).collect(),
        _ => seeds[rng.usize(0..seeds.len())].clone(),
    };
    for _ in 0..rng.usize(0..6) {
        let at = rng.usize(0..=input.len());
        match rng.u8(0..6) {
            0 if !input.is_empty() => {
                let i = rng.usize(0..input.len());
                input[i] ^= 1 << rng.u8(0..8);
            }
            1 => input.truncate(at),
            2 => {
                let fragment = FRAGMENTS[rng.usize(0..FRAGMENTS.len())];
                input.splice(at..at, fragment.iter().copied());
            }
            3 if !input.is_empty() => {
                let end = rng.usize(at..=input.len());
                let chunk = input[at..end].to_vec();
                let to = rng.usize(0..=input.len());
                input.splice(to..to, chunk);
            }
            4 => {
                let end = rng.usize(at..=input.len());
                input.drain(at..end);
            }
            _ => input.insert(at.min(input.len()), rng.u8(..)),
        }
    }
    // Bounded as the server bounds a body (1 MiB): a mutation never grows past it.
    input.truncate(1 << 20);
    input
}

fn kinds() -> Vec<SourceKind> {
    vec![
        SourceKind::Mailjet,
        SourceKind::Preset(&POSTMARK),
        SourceKind::Preset(&SENDGRID),
        SourceKind::Preset(&MAILGUN),
        SourceKind::Preset(&TWILIO),
        SourceKind::Json(JsonSpec {
            kind: "/kind".into(),
            time: Some("/at".into()),
            id: Some("/id".into()),
            keys: vec![("account".into(), "/account".into())],
        }),
    ]
}

#[test]
fn no_adapter_or_form_parser_panics_on_any_input() {
    let mut rng = rng();
    let seeds = seeds();
    let kinds = kinds();
    let received = Utc.timestamp_opt(1_764_460_000, 0).unwrap();
    let policies = [
        TimePolicy::default(),
        TimePolicy {
            unit: gancho_core::TimeUnit::Ms,
            max_future: Duration::ZERO,
        },
    ];
    let envelopes = [
        Envelope::default(),
        Envelope {
            kind: Some("push".into()),
            id: Some("d-1".into()),
            keys: vec![("delivery".into(), "d-1".into())],
        },
    ];
    let mut accepted = 0usize;
    for case in 0..cases() {
        let input = mutate(&mut rng, &seeds);
        let as_json = form_to_json(&input);
        assert!(
            serde_json::from_str::<serde_json::Value>(&as_json).is_ok(),
            "case {case}"
        );
        let text = String::from_utf8_lossy(&input);
        if let Ok(from_xml) = xml_to_json(&text) {
            assert!(serde_json::from_str::<serde_json::Value>(&from_xml).is_ok());
        }
        for kind in &kinds {
            for body in [text.as_ref(), as_json.as_str()] {
                let policy = &policies[case % 2];
                let envelope = &envelopes[(case / 2) % 2];
                if let Ok(submission) =
                    submission_with("fuzz", kind, policy, envelope, body, received)
                {
                    accepted += submission.events.len();
                    for event in &submission.events {
                        assert!(!event.kind.is_empty(), "case {case}: an empty type");
                    }
                }
            }
        }
    }
    // The generator is not all noise: real payloads survive some mutations.
    assert!(
        accepted > 0,
        "no input was ever accepted: the fuzzer is not reaching the adapters"
    );
}

fn headers(rng: &mut fastrand::Rng) -> HeaderMap {
    const NAMES: &[&str] = &[
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "stripe-signature",
        "x-hub-signature-256",
        "x-twilio-signature",
        "x-twilio-email-event-webhook-signature",
        "x-twilio-email-event-webhook-timestamp",
    ];
    const VALUES: &[&str] = &[
        "1764460000",
        "-99999999999999999999",
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        "v1, v1,, v2,x",
        "t=1764460000,v1=00,v1=zz,t=,=",
        "t=99999999999999999999,v1=abcd",
        "sha256=",
        "sha256=0",
        "MEUCIQ==",
        "not base64 !",
        "",
        "msg_1",
    ];
    let mut map = HeaderMap::new();
    for name in NAMES {
        if rng.bool() {
            let value = VALUES[rng.usize(0..VALUES.len())];
            map.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
    }
    map
}

#[test]
fn no_verifier_panics_on_any_request() {
    let mut rng = rng();
    let seeds = seeds();
    let now = Utc.timestamp_opt(1_764_460_000, 0).unwrap();
    let hmac = |s: &str| HmacKey::new(HmacHash::Sha256, s.as_bytes());
    // A valid P-256 public key (the curve's generator point), as SendGrid shows a key.
    let spki = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEaxfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpZP40Li/hp/m47n60p8D54WK84zV2sxXs7LtkBoN79R9Q==";
    let point = gancho_ingress::p256_point(spki).unwrap();
    let verifiers = vec![
        Verifier::StandardWebhooks {
            scheme: StandardWebhooks::new(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).unwrap(),
            tolerance: Duration::from_secs(300),
        },
        Verifier::Stripe {
            keys: vec![hmac("whsec_one"), hmac("whsec_two")],
            tolerance: Duration::from_secs(300),
        },
        Verifier::GitHub {
            keys: vec![hmac("secret")],
        },
        Verifier::Twilio {
            key: HmacKey::new(HmacHash::Sha1, b"token"),
            public_url: "https://hooks.example.com/hooks/tw".into(),
        },
        Verifier::Sendgrid {
            point,
            tolerance: Duration::from_secs(300),
        },
        Verifier::Hmac {
            keys: vec![hmac("secret")],
            header: "x-hub-signature-256".into(),
            encoding: gancho_ingress::Encoding::Hex,
            prefix: Some("sha256=".into()),
            timestamp_header: Some("webhook-timestamp".into()),
            tolerance: Duration::from_secs(300),
        },
        Verifier::Mailgun {
            keys: vec![hmac("mailgun-webhook-signing-key-example")],
            tolerance: Duration::from_secs(300),
            seen: Default::default(),
        },
    ];
    for _ in 0..cases() {
        let body = mutate(&mut rng, &seeds);
        let headers = headers(&mut rng);
        for verifier in &verifiers {
            // Random inputs never carry a valid signature: every check fails, cleanly.
            assert!(verifier.check(&headers, &body, now).is_err());
            verifier.forget(&body);
        }
    }
}
