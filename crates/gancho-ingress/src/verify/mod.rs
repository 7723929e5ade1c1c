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
    /// SendGrid's Event Webhook: ECDSA P-256 over `timestamp || body`, the signature base64
    /// DER in `X-Twilio-Email-Event-Webhook-Signature`, the timestamp in `…-Timestamp`.
    Sendgrid {
        /// The public key's uncompressed point (from the base64 DER SubjectPublicKeyInfo
        /// SendGrid shows).
        point: Vec<u8>,
        tolerance: Duration,
    },
    /// A generic HMAC in a header of the source's choosing (`hmac = { … }`): over the body, or
    /// over `timestamp.body` with a timestamp header.
    Hmac {
        keys: Vec<HmacKey>,
        /// Lowercase.
        header: String,
        encoding: Encoding,
        /// Text before the signature in the header (`sha256=`).
        prefix: Option<String>,
        /// Lowercase; the timestamp is then signed too, and checked against `tolerance`.
        timestamp_header: Option<String>,
        tolerance: Duration,
    },
    /// Twilio: `X-Twilio-Signature`, base64 HMAC-SHA1 of the public URL followed by each form
    /// field's name and value, sorted by name.
    Twilio { key: HmacKey, public_url: String },
    /// Mailgun: the body's `signature` block, HMAC-SHA256 (hex) of `timestamp + token` with the
    /// signing key; a token is accepted once within the tolerance.
    Mailgun {
        keys: Vec<HmacKey>,
        tolerance: Duration,
        seen: std::sync::Arc<std::sync::Mutex<Tokens>>,
    },
}

/// How a generic HMAC signature is written in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Hex,
    Base64,
}

/// Mailgun tokens seen, with their timestamps: kept for the tolerance window, so a captured
/// request cannot be replayed while its timestamp would still pass.
#[derive(Debug, Default)]
pub struct Tokens {
    seen: std::collections::HashMap<String, i64>,
    /// When the old tokens were last dropped (Unix seconds): at most once a second.
    pruned: i64,
}

impl Tokens {
    /// Records `token` (its request signed at `timestamp`); `false` if it was already there.
    /// Tokens older than `now - tolerance` are forgotten first.
    fn first_sight(&mut self, token: &str, timestamp: i64, now: i64, tolerance: i64) -> bool {
        if now != self.pruned {
            self.seen
                .retain(|_, at| *at >= now.saturating_sub(tolerance));
            self.pruned = now;
        }
        self.seen.insert(token.to_owned(), timestamp).is_none()
    }
}

/// The DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1, then the bit
/// string of an uncompressed point): what SendGrid's key is, before its 65 point bytes.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The uncompressed point of a P-256 public key given as base64 DER (SubjectPublicKeyInfo),
/// as SendGrid shows it.
pub fn p256_point(base64_der: &str) -> Result<Vec<u8>, &'static str> {
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(base64_der.trim())
        .map_err(|_| "not base64")?;
    match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
        Some(point) if point.len() == 65 && point[0] == 4 => Ok(point.to_vec()),
        _ => Err("not a P-256 public key (base64 DER, as SendGrid shows it)"),
    }
}

/// Mailgun's `signature` block; the rest of the body is not read here.
#[derive(serde::Deserialize)]
struct MailgunBody {
    signature: Option<MailgunSignature>,
}

#[derive(serde::Deserialize)]
struct MailgunSignature {
    timestamp: serde_json::Value,
    token: String,
    signature: String,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, VerifyError> {
    let value = headers
        .get(name)
        .ok_or(VerifyError::MissingHeader(name.into()))?;
    value
        .to_str()
        .map_err(|_| VerifyError::MalformedHeader(name.into(), "not visible ASCII"))
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
                let malformed = |why| VerifyError::MalformedHeader("stripe-signature".into(), why);
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
                            "x-hub-signature-256".into(),
                            "no sha256= prefix",
                        ))?;
                let signature = from_hex(hex).ok_or(VerifyError::MalformedHeader(
                    "x-hub-signature-256".into(),
                    "not hex",
                ))?;
                any_matches(keys, &[body], &[signature])
            }
            Verifier::Hmac {
                keys,
                header: name,
                encoding,
                prefix,
                timestamp_header,
                tolerance,
            } => {
                use base64::Engine as _;
                let value = header(headers, name)?.trim();
                let value = match prefix {
                    Some(prefix) => value.strip_prefix(prefix.as_str()).ok_or_else(|| {
                        VerifyError::MalformedHeader(name.clone(), "the prefix is missing")
                    })?,
                    None => value,
                };
                let given = match encoding {
                    Encoding::Hex => from_hex(value),
                    Encoding::Base64 => {
                        base64::engine::general_purpose::STANDARD.decode(value).ok()
                    }
                }
                .ok_or_else(|| {
                    VerifyError::MalformedHeader(name.clone(), "not the encoding given")
                })?;
                match timestamp_header {
                    None => any_matches(keys, &[body], &[given]),
                    Some(ts_name) => {
                        let timestamp = header(headers, ts_name)?.trim();
                        let seconds: i64 = timestamp.parse().map_err(|_| {
                            VerifyError::MalformedHeader(ts_name.clone(), "not Unix seconds")
                        })?;
                        check_timestamp(seconds, now_secs, tolerance.as_secs())?;
                        any_matches(keys, &[timestamp.as_bytes(), b".", body], &[given])
                    }
                }
            }
            Verifier::Twilio { key, public_url } => {
                use base64::Engine as _;
                const SIGNATURE: &str = "x-twilio-signature";
                let given = base64::engine::general_purpose::STANDARD
                    .decode(header(headers, SIGNATURE)?.trim())
                    .map_err(|_| VerifyError::MalformedHeader(SIGNATURE.into(), "not base64"))?;
                let mut fields: Vec<(String, String)> = url::form_urlencoded::parse(body)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                fields.sort();
                let mut parts: Vec<&[u8]> = vec![public_url.as_bytes()];
                for (name, value) in &fields {
                    parts.push(name.as_bytes());
                    parts.push(value.as_bytes());
                }
                match key.verify(&parts, &given) {
                    true => Ok(()),
                    false => Err(VerifyError::BadSignature),
                }
            }
            Verifier::Sendgrid { point, tolerance } => {
                use base64::Engine as _;
                const SIGNATURE: &str = "x-twilio-email-event-webhook-signature";
                const TIMESTAMP: &str = "x-twilio-email-event-webhook-timestamp";
                let signature = header(headers, SIGNATURE)?;
                let timestamp = header(headers, TIMESTAMP)?;
                let seconds: i64 = timestamp.trim().parse().map_err(|_| {
                    VerifyError::MalformedHeader(TIMESTAMP.into(), "not Unix seconds")
                })?;
                let signature = base64::engine::general_purpose::STANDARD
                    .decode(signature.trim())
                    .map_err(|_| VerifyError::MalformedHeader(SIGNATURE.into(), "not base64"))?;
                check_timestamp(seconds, now_secs, tolerance.as_secs())?;
                let mut signed = Vec::with_capacity(timestamp.len() + body.len());
                signed.extend_from_slice(timestamp.as_bytes());
                signed.extend_from_slice(body);
                match gancho_core::signature::verify_p256(point, &signed, &signature) {
                    true => Ok(()),
                    false => Err(VerifyError::BadSignature),
                }
            }
            Verifier::Mailgun {
                keys,
                tolerance,
                seen,
            } => {
                let parsed: MailgunBody = serde_json::from_slice(body).map_err(|_| {
                    VerifyError::MalformedHeader(
                        "signature".into(),
                        "the body is not a Mailgun webhook",
                    )
                })?;
                let block = parsed
                    .signature
                    .ok_or(VerifyError::MissingHeader("signature".into()))?;
                let timestamp = match &block.timestamp {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => {
                        return Err(VerifyError::MalformedHeader(
                            "signature".into(),
                            "timestamp is not Unix seconds",
                        ));
                    }
                };
                let seconds: i64 = timestamp.parse().map_err(|_| {
                    VerifyError::MalformedHeader(
                        "signature".into(),
                        "timestamp is not Unix seconds",
                    )
                })?;
                let given = from_hex(&block.signature).ok_or(VerifyError::MalformedHeader(
                    "signature".into(),
                    "signature is not hex",
                ))?;
                check_timestamp(seconds, now_secs, tolerance.as_secs())?;
                any_matches(
                    keys,
                    &[timestamp.as_bytes(), block.token.as_bytes()],
                    &[given],
                )?;
                let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
                let first = seen.lock().unwrap_or_else(|e| e.into_inner()).first_sight(
                    &block.token,
                    seconds,
                    now_secs,
                    tolerance,
                );
                if first {
                    Ok(())
                } else {
                    Err(VerifyError::Replayed)
                }
            }
        }
    }
}

impl Verifier {
    /// Carries the memory of `old` (Mailgun's tokens seen) over to this verifier, when a reload
    /// replaces it: a rotation must not reopen the replay window.
    pub fn keep_memory_of(&mut self, old: &Verifier) {
        if let (Verifier::Mailgun { seen, .. }, Verifier::Mailgun { seen: old_seen, .. }) =
            (self, old)
        {
            *seen = old_seen.clone();
        }
    }

    /// Forgets what a check of `body` remembered (a Mailgun token): the request was refused
    /// after its check for a passing reason (the store busy or failing: 503), and the
    /// provider's retry of it must pass again. Mailgun signs only its timestamp and token, not
    /// the event data, so a token is freed for nothing else.
    pub fn forget(&self, body: &[u8]) {
        if let Verifier::Mailgun { seen, .. } = self
            && let Ok(MailgunBody {
                signature: Some(block),
            }) = serde_json::from_slice::<MailgunBody>(body)
        {
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .seen
                .remove(&block.token);
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
    /// Correlation keys read from headers: name and header.
    pub keys: &'static [(&'static str, &'static str)],
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
            keys: self
                .keys
                .iter()
                .filter_map(|(name, header)| Some(((*name).to_owned(), value(Some(header))?)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
