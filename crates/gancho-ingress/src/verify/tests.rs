//! The verifiers' tests: each scheme's documented vectors and real signatures, tampering,
//! stale timestamps, rotation and replays.

#![allow(clippy::unwrap_used)]

use actix_web::http::header::{HeaderName, HeaderValue};
use chrono::TimeZone;
use gancho_core::signature::{HmacHash, to_hex};

use super::*;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn now() -> DateTime<Utc> {
    Utc.timestamp_opt(1_764_460_000, 0).unwrap()
}

const BODY: &[u8] = br#"{"id":"evt_1","type":"charge.succeeded","created":1764460000}"#;

fn stripe(secrets: &[&str]) -> Verifier {
    Verifier::Stripe {
        keys: secrets
            .iter()
            .map(|s| HmacKey::new(HmacHash::Sha256, s.as_bytes()))
            .collect(),
        tolerance: Duration::from_secs(300),
    }
}

fn stripe_header(secret: &str, t: i64, body: &[u8]) -> String {
    let tag = HmacKey::new(HmacHash::Sha256, secret.as_bytes()).tag(&[
        t.to_string().as_bytes(),
        b".",
        body,
    ]);
    format!("t={t},v1={},v0=deadbeef", to_hex(&tag))
}

#[test]
fn stripe_signatures_pass_fail_and_rotate() {
    let t = now().timestamp();
    let good = stripe_header("whsec_one", t, BODY);
    let v = stripe(&["whsec_one"]);
    assert_eq!(
        v.check(&headers(&[("stripe-signature", &good)]), BODY, now()),
        Ok(())
    );
    let mut flipped = BODY.to_vec();
    flipped[5] ^= 1;
    assert_eq!(
        v.check(&headers(&[("stripe-signature", &good)]), &flipped, now()),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        stripe(&["whsec_two"]).check(&headers(&[("stripe-signature", &good)]), BODY, now()),
        Err(VerifyError::BadSignature)
    );
    let stale = stripe_header("whsec_one", t - 301, BODY);
    assert!(matches!(
        v.check(&headers(&[("stripe-signature", &stale)]), BODY, now()),
        Err(VerifyError::StaleTimestamp { .. })
    ));
    assert_eq!(
        v.check(&headers(&[]), BODY, now()),
        Err(VerifyError::MissingHeader("stripe-signature".into()))
    );
    // Rotation: two secrets held; a header with two v1 values (Stripe's own rotation).
    let both = stripe(&["whsec_two", "whsec_one"]);
    assert_eq!(
        both.check(&headers(&[("stripe-signature", &good)]), BODY, now()),
        Ok(())
    );
    let two_v1 = format!(
        "{},v1={}",
        stripe_header("whsec_new", t, BODY),
        good.split("v1=").nth(1).unwrap().split(',').next().unwrap()
    );
    assert_eq!(
        v.check(&headers(&[("stripe-signature", &two_v1)]), BODY, now()),
        Ok(())
    );
}

#[test]
fn github_signatures_pass_and_fail() {
    let key = HmacKey::new(HmacHash::Sha256, b"It's a Secret to Everybody");
    let v = Verifier::GitHub {
        keys: vec![key.clone()],
    };
    // GitHub's documented example: this body and secret give this signature.
    let body = b"Hello, World!";
    let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert_eq!(
        v.check(&headers(&[("x-hub-signature-256", sig)]), body, now()),
        Ok(())
    );
    assert_eq!(
        v.check(
            &headers(&[("x-hub-signature-256", sig)]),
            b"Hello, World?",
            now()
        ),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        v.check(&headers(&[("x-hub-signature-256", "md5=00")]), body, now()),
        Err(VerifyError::MalformedHeader(
            "x-hub-signature-256".into(),
            "no sha256= prefix"
        ))
    );
    assert_eq!(
        v.check(&headers(&[]), body, now()),
        Err(VerifyError::MissingHeader("x-hub-signature-256".into()))
    );
}

#[test]
fn standard_webhooks_reads_its_three_headers() {
    let scheme = StandardWebhooks::new(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).unwrap();
    let v = Verifier::StandardWebhooks {
        scheme,
        tolerance: Duration::from_secs(300),
    };
    let at = Utc.timestamp_opt(1614265330, 0).unwrap();
    let h = headers(&[
        ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
        ("webhook-timestamp", "1614265330"),
        (
            "webhook-signature",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
    ]);
    assert_eq!(v.check(&h, br#"{"test": 2432232314}"#, at), Ok(()));
    assert_eq!(
        v.check(&h, br#"{"test": 2432232315}"#, at),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        v.check(&headers(&[]), b"{}", at),
        Err(VerifyError::MissingHeader("webhook-id".into()))
    );
}

fn fixture(path: &str) -> Vec<u8> {
    let file = format!("{}/../../tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&file).unwrap_or_else(|err| panic!("{file}: {err}"))
}

#[test]
fn mailgun_signatures_pass_once_and_forgotten_tokens_pass_again() {
    let body = fixture("mailgun/delivered.json");
    let v = Verifier::Mailgun {
        keys: vec![HmacKey::new(
            HmacHash::Sha256,
            b"mailgun-webhook-signing-key-example",
        )],
        tolerance: Duration::from_secs(300),
        seen: Default::default(),
    };
    let at = Utc.timestamp_opt(1_534_108_637, 0).unwrap();
    assert_eq!(v.check(&headers(&[]), &body, at), Ok(()));
    assert_eq!(
        v.check(&headers(&[]), &body, at),
        Err(VerifyError::Replayed)
    );
    v.forget(&body);
    assert_eq!(v.check(&headers(&[]), &body, at), Ok(()));
    let later = Utc.timestamp_opt(1_534_108_637 + 301, 0).unwrap();
    assert!(matches!(
        v.check(&headers(&[]), &body, later),
        Err(VerifyError::StaleTimestamp { .. })
    ));
    let wrong = Verifier::Mailgun {
        keys: vec![HmacKey::new(HmacHash::Sha256, b"another key")],
        tolerance: Duration::from_secs(300),
        seen: Default::default(),
    };
    assert_eq!(
        wrong.check(&headers(&[]), &body, at),
        Err(VerifyError::BadSignature)
    );
    let text = String::from_utf8(body).unwrap();
    let flipped = text.replace("1534108637\"", "1534108638\"");
    assert_ne!(flipped, text);
    assert_eq!(
        v.check(&headers(&[]), flipped.as_bytes(), at),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        v.check(&headers(&[]), b"{}", at),
        Err(VerifyError::MissingHeader("signature".into()))
    );
}

#[test]
fn sendgrid_ecdsa_signatures_pass_and_fail() {
    use base64::Engine as _;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    // The key as SendGrid shows it: base64 of the DER SubjectPublicKeyInfo.
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref());
    let b64 = base64::engine::general_purpose::STANDARD;
    let point = p256_point(&b64.encode(&spki)).unwrap();
    let v = Verifier::Sendgrid {
        point,
        tolerance: Duration::from_secs(300),
    };
    let body = fixture("sendgrid/docs_all_events_batch.json");
    let t = now().timestamp().to_string();
    let sign = |t: &str, body: &[u8]| {
        let mut signed = t.as_bytes().to_vec();
        signed.extend_from_slice(body);
        b64.encode(pair.sign(&rng, &signed).unwrap().as_ref())
    };
    let h = |sig: &str, t: &str| {
        headers(&[
            ("x-twilio-email-event-webhook-signature", sig),
            ("x-twilio-email-event-webhook-timestamp", t),
        ])
    };
    assert_eq!(v.check(&h(&sign(&t, &body), &t), &body, now()), Ok(()));
    let mut flipped = body.clone();
    flipped[20] ^= 1;
    assert_eq!(
        v.check(&h(&sign(&t, &body), &t), &flipped, now()),
        Err(VerifyError::BadSignature)
    );
    let old = (now().timestamp() - 600).to_string();
    assert!(matches!(
        v.check(&h(&sign(&old, &body), &old), &body, now()),
        Err(VerifyError::StaleTimestamp { .. })
    ));
    assert_eq!(
        v.check(&headers(&[]), &body, now()),
        Err(VerifyError::MissingHeader(
            "x-twilio-email-event-webhook-signature".into()
        ))
    );
    assert!(p256_point("bm90IGEga2V5").is_err());
}

#[test]
fn twilio_signatures_follow_the_documented_vector() {
    // Twilio's documentation: this token, URL and form give this signature.
    let v = Verifier::Twilio {
        key: HmacKey::new(HmacHash::Sha1, b"12345"),
        public_url: "https://mycompany.com/myapp.php?foo=1&bar=2".to_owned(),
    };
    let body = b"To=%2B18005551212&CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030";
    let h = |sig: &str| headers(&[("x-twilio-signature", sig)]);
    assert_eq!(
        v.check(&h("0/KCTR6DLpKmkAf8muzZqo1nDgQ="), body, now()),
        Ok(())
    );
    let changed = b"To=%2B18005551212&CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1235&From=%2B12349013030";
    assert_eq!(
        v.check(&h("0/KCTR6DLpKmkAf8muzZqo1nDgQ="), changed, now()),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        v.check(&headers(&[]), body, now()),
        Err(VerifyError::MissingHeader("x-twilio-signature".into()))
    );
    let elsewhere = Verifier::Twilio {
        key: HmacKey::new(HmacHash::Sha1, b"12345"),
        public_url: "https://proxy.internal/myapp.php?foo=1&bar=2".to_owned(),
    };
    assert_eq!(
        elsewhere.check(&h("0/KCTR6DLpKmkAf8muzZqo1nDgQ="), body, now()),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn github_and_the_generic_hmac_accept_either_secret_of_a_rotation() {
    let keys = vec![
        HmacKey::new(HmacHash::Sha256, b"new-secret"),
        HmacKey::new(HmacHash::Sha256, b"old-secret"),
    ];
    let body = b"{}";
    let sign = |secret: &[u8]| to_hex(&HmacKey::new(HmacHash::Sha256, secret).tag(&[body]));
    let github = Verifier::GitHub { keys: keys.clone() };
    let generic = Verifier::Hmac {
        keys,
        header: "x-sig".into(),
        encoding: Encoding::Hex,
        prefix: None,
        timestamp_header: None,
        tolerance: Duration::from_secs(300),
    };
    for secret in [&b"new-secret"[..], b"old-secret"] {
        let sig = sign(secret);
        let hub = format!("sha256={sig}");
        assert_eq!(
            github.check(&headers(&[("x-hub-signature-256", &hub)]), body, now()),
            Ok(())
        );
        assert_eq!(
            generic.check(&headers(&[("x-sig", &sig)]), body, now()),
            Ok(())
        );
    }
    let other = sign(b"third");
    assert_eq!(
        generic.check(&headers(&[("x-sig", &other)]), body, now()),
        Err(VerifyError::BadSignature)
    );
}
