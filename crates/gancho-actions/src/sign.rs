//! Standard Webhooks signatures of outgoing calls.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A signing key from a `whsec_…` secret (the part after the prefix, base64).
#[derive(Clone)]
pub(crate) struct Signer {
    key: ring::hmac::Key,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    pub(crate) fn new(secret: &str) -> Result<Signer, String> {
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|err| format!("the signing secret is not base64 after `whsec_`: {err}"))?;
        if bytes.len() < 16 {
            return Err("the signing secret is shorter than 16 bytes".to_owned());
        }
        Ok(Signer {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes),
        })
    }

    /// The `webhook-signature` header value: `v1,` and the base64 HMAC-SHA256 of
    /// `id.timestamp.body`.
    pub(crate) fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        format!("v1,{}", STANDARD.encode(ctx.sign().as_ref()))
    }
}

/// Signs `body` as Standard Webhooks does, for checking a receiver: the `webhook-signature`
/// value for this secret, id and timestamp (seconds).
pub fn sign_webhook(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    Ok(Signer::new(secret)?.sign(id, timestamp, body))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The vector of the standard-webhooks reference libraries (fixtures/standard_webhooks_vector.json).
    #[test]
    fn signs_the_reference_vector() {
        let signature = sign_webhook(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_bad_secret_is_refused() {
        assert!(Signer::new("whsec_not base64!").is_err());
        assert!(Signer::new("whsec_c2hvcnQ=").is_err());
    }
}
