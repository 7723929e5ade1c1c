//! A source's signature check: a step of its own, run after the body is read and before it is
//! parsed, over the raw body bytes. One type, a variant per scheme; the HMACs themselves, and
//! the constant-time comparisons, are `gancho_core::signature`'s. A failed check is a 401 whose
//! reason says which check failed (missing header, malformed header, bad signature, stale
//! timestamp), never a secret or the value expected.

use std::time::Duration;

use actix_web::http::header::HeaderMap;
use chrono::{DateTime, Utc};
use gancho_core::signature::{HmacKey, StandardWebhooks, VerifyError, check_timestamp, from_hex};

/// How a source's requests are signed.
#[derive(Debug, Clone)]
pub enum Verifier {
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature` (Standard Webhooks).
    StandardWebhooks {
        scheme: StandardWebhooks,
        tolerance: Duration,
    },
    /// `Stripe-Signature: t=…,v1=…[,v1=…]`: HMAC-SHA256 of `t.body` with each secret.
    Stripe {
        keys: Vec<HmacKey>,
        tolerance: Duration,
    },
    /// `X-Hub-Signature-256: sha256=HEX`: HMAC-SHA256 of the body.
    GitHub { keys: Vec<HmacKey> },
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, VerifyError> {
    let value = headers.get(name).ok_or(VerifyError::MissingHeader(name))?;
    value
        .to_str()
        .map_err(|_| VerifyError::MalformedHeader(name, "not visible ASCII"))
}

impl Verifier {
    /// Whether the request with these headers and this body passes the check, at `now`.
    pub fn check(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), VerifyError> {
        let now_secs = now.timestamp();
        match self {
            Verifier::StandardWebhooks { scheme, tolerance } => scheme.verify(
                Some(header(headers, "webhook-id")?),
                Some(header(headers, "webhook-timestamp")?),
                Some(header(headers, "webhook-signature")?),
                body,
                now_secs,
                tolerance.as_secs(),
            ),
            Verifier::Stripe { keys, tolerance } => {
                let value = header(headers, "stripe-signature")?;
                let mut timestamp = None;
                let mut signatures = Vec::new();
                for item in value.split(',') {
                    match item.trim().split_once('=') {
                        Some(("t", t)) => timestamp = Some(t),
                        Some(("v1", hex)) => signatures.extend(from_hex(hex)),
                        _ => {}
                    }
                }
                let malformed = |why| VerifyError::MalformedHeader("stripe-signature", why);
                let timestamp = timestamp.ok_or(malformed("no t="))?;
                let seconds: i64 = timestamp
                    .parse()
                    .map_err(|_| malformed("t= is not Unix seconds"))?;
                if signatures.is_empty() {
                    return Err(malformed("no v1= signature"));
                }
                check_timestamp(seconds, now_secs, tolerance.as_secs())?;
                let signed = [timestamp.as_bytes(), b".", body];
                any_matches(keys, &signed, &signatures)
            }
            Verifier::GitHub { keys } => {
                let value = header(headers, "x-hub-signature-256")?;
                let hex =
                    value
                        .trim()
                        .strip_prefix("sha256=")
                        .ok_or(VerifyError::MalformedHeader(
                            "x-hub-signature-256",
                            "no sha256= prefix",
                        ))?;
                let signature = from_hex(hex).ok_or(VerifyError::MalformedHeader(
                    "x-hub-signature-256",
                    "not hex",
                ))?;
                any_matches(keys, &[body], &[signature])
            }
        }
    }
}

/// Whether any of `signatures` is the tag of `parts` under any of `keys`.
fn any_matches(
    keys: &[HmacKey],
    parts: &[&[u8]],
    signatures: &[Vec<u8>],
) -> Result<(), VerifyError> {
    for key in keys {
        let tag = key.tag(parts);
        if signatures
            .iter()
            .any(|s| gancho_core::signature::constant_time_eq(&tag, s))
        {
            return Ok(());
        }
    }
    Err(VerifyError::BadSignature)
}

/// Where a kind reads an event's type and id from headers rather than the body (GitHub's
/// `X-GitHub-Event`, a Standard Webhooks `webhook-id`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderFields {
    pub kind: Option<&'static str>,
    pub id: Option<&'static str>,
}

impl HeaderFields {
    /// The values of these headers in `headers`.
    pub fn read(&self, headers: &HeaderMap) -> crate::adapter::Envelope {
        let value = |name: Option<&'static str>| {
            name.and_then(|n| headers.get(n))
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        crate::adapter::Envelope {
            kind: value(self.kind),
            id: value(self.id),
        }
    }
}

#[cfg(test)]
mod tests {
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
            Err(VerifyError::MissingHeader("stripe-signature"))
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
                "x-hub-signature-256",
                "no sha256= prefix"
            ))
        );
        assert_eq!(
            v.check(&headers(&[]), body, now()),
            Err(VerifyError::MissingHeader("x-hub-signature-256"))
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
            Err(VerifyError::MissingHeader("webhook-id"))
        );
    }
}
