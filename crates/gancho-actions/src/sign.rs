//! Standard Webhooks signatures of outgoing calls: `gancho_core::signature::StandardWebhooks`,
//! the same code the ingress verifies incoming webhooks with.

use gancho_core::signature::StandardWebhooks;

/// A signing key from a `whsec_…` secret (the part after the prefix, base64).
#[derive(Debug, Clone)]
pub(crate) struct Signer(StandardWebhooks);

impl Signer {
    pub(crate) fn new(secret: &str) -> Result<Signer, String> {
        StandardWebhooks::new(&[secret])
            .map(Signer)
            .map_err(|err| format!("the signing secret: {err}"))
    }

    /// The `webhook-signature` header value: `v1,` and the base64 HMAC-SHA256 of
    /// `id.timestamp.body`.
    pub(crate) fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        self.0.sign(id, timestamp, body)
    }
}

/// Signs `body` as Standard Webhooks does, for checking a receiver: the `webhook-signature`
/// value for this secret, id and timestamp (seconds).
pub fn sign_webhook(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    Ok(Signer::new(secret)?.sign(id, timestamp, body))
}
