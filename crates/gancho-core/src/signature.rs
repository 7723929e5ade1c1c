//! Webhook signatures, both ways: the Standard Webhooks HMAC that actions sign outgoing calls
//! with and that ingress verifies incoming ones with lives here once, beside the other HMAC
//! schemes providers use (Stripe's, GitHub's). Every check runs over the raw body bytes and
//! compares in constant time ([`constant_time_eq`]); an error says which check failed, never a
//! secret or the value expected.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

/// Why a signature check failed: what a 401 says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(String),
    #[error("header {0} is malformed: {1}")]
    MalformedHeader(String, &'static str),
    #[error("bad signature")]
    BadSignature,
    #[error(
        "stale timestamp: {skew_secs} s from now, more than the tolerance of {tolerance_secs} s"
    )]
    StaleTimestamp { skew_secs: i64, tolerance_secs: u64 },
    #[error("replayed token: this request was already received")]
    Replayed,
}

/// A secret that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SecretError(pub String);

/// Whether `timestamp` (Unix seconds) is within `tolerance_secs` of `now_secs`, either way.
pub fn check_timestamp(
    timestamp: i64,
    now_secs: i64,
    tolerance_secs: u64,
) -> Result<(), VerifyError> {
    let skew = timestamp.saturating_sub(now_secs);
    if skew.unsigned_abs() > tolerance_secs {
        return Err(VerifyError::StaleTimestamp {
            skew_secs: skew,
            tolerance_secs,
        });
    }
    Ok(())
}

/// Standard Webhooks (<https://www.standardwebhooks.com>): HMAC-SHA256 of `id.timestamp.body`
/// with a `whsec_` secret, sent as `webhook-signature: v1,BASE64 [v1,BASE64 …]`. Several secrets
/// may be held at once, for rotation: signing uses the first, a check accepts any.
#[derive(Clone)]
pub struct StandardWebhooks {
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for StandardWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StandardWebhooks({} secret(s))", self.keys.len())
    }
}

impl StandardWebhooks {
    /// The secrets as written (`whsec_` and base64; the prefix may be left out).
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Result<StandardWebhooks, SecretError> {
        if secrets.is_empty() {
            return Err(SecretError("no secret given".to_owned()));
        }
        let keys = secrets
            .iter()
            .map(|secret| {
                let encoded = secret
                    .as_ref()
                    .strip_prefix("whsec_")
                    .unwrap_or(secret.as_ref());
                // base64's own error would quote a character of the secret.
                let bytes = STANDARD.decode(encoded).map_err(|_| {
                    SecretError("the secret is not base64 after `whsec_`".to_owned())
                })?;
                if bytes.len() < 16 {
                    return Err(SecretError(
                        "the secret is shorter than 16 bytes".to_owned(),
                    ));
                }
                Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
            })
            .collect::<Result<_, _>>()?;
        Ok(StandardWebhooks { keys })
    }

    fn tag(key: &hmac::Key, id: &str, timestamp: &str, body: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.as_bytes());
        ctx.update(b".");
        ctx.update(body);
        ctx.sign()
    }

    /// The `webhook-signature` value for this id, timestamp (Unix seconds) and body, with the
    /// first secret.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let key = &self.keys[0];
        let tag = Self::tag(key, id, &timestamp.to_string(), body);
        format!("v1,{}", STANDARD.encode(tag.as_ref()))
    }

    /// Checks the three headers' values against `body`: the timestamp within
    /// `tolerance_secs` of `now_secs`, then any `v1` signature made with any secret.
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        body: &[u8],
        now_secs: i64,
        tolerance_secs: u64,
    ) -> Result<(), VerifyError> {
        let id = id.ok_or(VerifyError::MissingHeader("webhook-id".into()))?;
        let timestamp_text =
            timestamp.ok_or(VerifyError::MissingHeader("webhook-timestamp".into()))?;
        let signatures =
            signatures.ok_or(VerifyError::MissingHeader("webhook-signature".into()))?;
        let timestamp: i64 = timestamp_text.trim().parse().map_err(|_| {
            VerifyError::MalformedHeader("webhook-timestamp".into(), "not Unix seconds")
        })?;
        check_timestamp(timestamp, now_secs, tolerance_secs)?;
        let given: Vec<Vec<u8>> = signatures
            .split_whitespace()
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|b64| STANDARD.decode(b64).ok())
            .collect();
        if given.is_empty() {
            return Err(VerifyError::MalformedHeader(
                "webhook-signature".into(),
                "no v1 signature",
            ));
        }
        for key in &self.keys {
            let mut ctx = hmac::Context::with_key(key);
            for part in [
                id.as_bytes(),
                b".",
                timestamp_text.trim().as_bytes(),
                b".",
                body,
            ] {
                ctx.update(part);
            }
            let tag = ctx.sign();
            // Each signature is compared in constant time against the tag.
            if given.iter().any(|sig| constant_time_eq(tag.as_ref(), sig)) {
                return Ok(());
            }
        }
        Err(VerifyError::BadSignature)
    }
}

/// An HMAC key over raw secret bytes (GitHub's, Stripe's `whsec_…` taken as written, Mailgun's
/// signing key), checking hex or base64 tags in constant time.
#[derive(Clone)]
pub struct HmacKey {
    key: hmac::Key,
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey(..)")
    }
}

/// The hash an HMAC uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacHash {
    Sha256,
    Sha1,
}

impl HmacKey {
    pub fn new(hash: HmacHash, secret: &[u8]) -> HmacKey {
        let algorithm = match hash {
            HmacHash::Sha256 => hmac::HMAC_SHA256,
            HmacHash::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        };
        HmacKey {
            key: hmac::Key::new(algorithm, secret),
        }
    }

    /// The tag of the concatenation of `parts`.
    pub fn tag(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in parts {
            ctx.update(part);
        }
        ctx.sign().as_ref().to_vec()
    }

    /// Whether `given` is the tag of the concatenation of `parts`, in constant time.
    pub fn verify(&self, parts: &[&[u8]], given: &[u8]) -> bool {
        constant_time_eq(&self.tag(parts), given)
    }
}

/// Whether `signature` (ASN.1 DER) is an ECDSA P-256 SHA-256 signature of `message` by the
/// public key whose uncompressed point is `point` (SendGrid's scheme).
pub fn verify_p256(point: &[u8], message: &[u8], signature: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(message, signature)
        .is_ok()
}

/// Compares two byte strings in time that depends only on their lengths (credentials,
/// tokens, signatures).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// A digest of secrets that tells whether they changed (a SIGHUP's rotation) and nothing else:
/// an HMAC under a key drawn at random once per process, so it cannot be checked offline
/// against guesses. Its `Debug` shows nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<u8>);

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fingerprint(..)")
    }
}

impl Fingerprint {
    pub fn of(parts: &[&[u8]]) -> Fingerprint {
        use ring::rand::SecureRandom as _;
        static KEY: std::sync::OnceLock<hmac::Key> = std::sync::OnceLock::new();
        let key = KEY.get_or_init(|| {
            let mut bytes = [0u8; 32];
            // Without randomness the key is fixed: the digest still tells changes apart.
            let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
            hmac::Key::new(hmac::HMAC_SHA256, &bytes)
        });
        let mut ctx = hmac::Context::with_key(key);
        for part in parts {
            // Length-prefixed: ("ab", "c") and ("a", "bc") differ.
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        Fingerprint(ctx.sign().as_ref().to_vec())
    }
}

/// Lowercase or uppercase hex to bytes; `None` if it is not hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Bytes as lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector of the standard-webhooks reference libraries (shared fixtures,
    /// `standard_webhooks_vector.json`).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_and_verifies_the_reference_vector() {
        let scheme = StandardWebhooks::new(&[SECRET]).unwrap();
        assert_eq!(scheme.sign(ID, TIMESTAMP, BODY), SIGNATURE);
        let ts = TIMESTAMP.to_string();
        let check = |id, ts: Option<&str>, sig, body: &[u8], now| {
            scheme.verify(id, ts, sig, body, now, 300)
        };
        assert_eq!(
            check(Some(ID), Some(&ts), Some(SIGNATURE), BODY, TIMESTAMP),
            Ok(())
        );
        // Several signatures in the header: any may match.
        let both = format!("v1,AAAA {SIGNATURE}");
        assert_eq!(
            check(Some(ID), Some(&ts), Some(&both), BODY, TIMESTAMP),
            Ok(())
        );
        let mut flipped = BODY.to_vec();
        flipped[3] ^= 1;
        assert_eq!(
            check(Some(ID), Some(&ts), Some(SIGNATURE), &flipped, TIMESTAMP),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            check(Some(ID), Some(&ts), Some(SIGNATURE), BODY, TIMESTAMP + 301),
            Err(VerifyError::StaleTimestamp {
                skew_secs: -301,
                tolerance_secs: 300
            })
        );
        assert_eq!(
            check(None, Some(&ts), Some(SIGNATURE), BODY, TIMESTAMP),
            Err(VerifyError::MissingHeader("webhook-id".into()))
        );
        assert_eq!(
            check(Some(ID), Some(&ts), None, BODY, TIMESTAMP),
            Err(VerifyError::MissingHeader("webhook-signature".into()))
        );
        let other = StandardWebhooks::new(&["whsec_c2Vjb25kLXNlY3JldC0xMjM0NTY3OA=="]).unwrap();
        assert_eq!(
            other.verify(Some(ID), Some(&ts), Some(SIGNATURE), BODY, TIMESTAMP, 300),
            Err(VerifyError::BadSignature)
        );
        // Rotation: both secrets held, either signature passes.
        let rotating =
            StandardWebhooks::new(&["whsec_c2Vjb25kLXNlY3JldC0xMjM0NTY3OA==", SECRET]).unwrap();
        assert_eq!(
            rotating.verify(Some(ID), Some(&ts), Some(SIGNATURE), BODY, TIMESTAMP, 300),
            Ok(())
        );
        let signed_by_new = rotating.sign(ID, TIMESTAMP, BODY);
        assert_eq!(
            rotating.verify(
                Some(ID),
                Some(&ts),
                Some(&signed_by_new),
                BODY,
                TIMESTAMP,
                300
            ),
            Ok(())
        );
    }

    #[test]
    fn a_bad_secret_is_refused() {
        assert!(StandardWebhooks::new(&["whsec_not base64!"]).is_err());
        assert!(StandardWebhooks::new(&["whsec_c2hvcnQ="]).is_err());
        assert!(StandardWebhooks::new::<&str>(&[]).is_err());
    }

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_hex() {
        assert_eq!(from_hex("00ffA0"), Some(vec![0, 255, 160]));
        assert_eq!(to_hex(&[0, 255, 160]), "00ffa0");
        assert_eq!(from_hex("0"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex("é1"), None);
        assert_eq!(from_hex("+f"), None);
        assert_ne!(
            Fingerprint::of(&[b"ab", b"c"]),
            Fingerprint::of(&[b"a", b"bc"])
        );
        assert_eq!(Fingerprint::of(&[b"x"]), Fingerprint::of(&[b"x"]));
        assert_eq!(format!("{:?}", Fingerprint::of(&[b"x"])), "Fingerprint(..)");
    }
}
