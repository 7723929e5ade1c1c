//! The cluster's secret, and each partition's. On a single node, action ids and `code()` are
//! HMACs under the store's own random secret. In a cluster, a partition's next owner must give
//! the same decision the same id (a receiver deduplicates a repeat by its `Idempotency-Key`), so
//! a partition's engine uses a secret every node derives alike: an HMAC of the cluster's secret
//! and the partition's number. That also puts the partition in every id, so two partitions'
//! decisions at the same seq never share one.
//!
//! The cluster's secret is made once, by whichever node asks first (a compare-and-set create in
//! the `gancho_cluster` bucket, key `secret`), from the system's random source, and read by
//! every other. Whoever can read that bucket can compute ids and codes: the same people who can
//! read the events.

use async_nats::jetstream;
use async_nats::jetstream::kv;

use crate::error::ClusterError;
use crate::streams::{META_BUCKET, provision_error, read_key, settled};
use gancho_core::partition::Partition;

/// The key of the cluster's secret in [`META_BUCKET`] (64 hex digits).
pub const SECRET_KEY: &str = "secret";

/// The cluster's secret, made if no node made it yet. [`crate::fix_partitions`] must have run
/// (it creates the bucket).
pub async fn cluster_secret(js: &jetstream::Context) -> Result<[u8; 32], ClusterError> {
    settled(|| cluster_secret_once(js)).await
}

async fn cluster_secret_once(js: &jetstream::Context) -> Result<[u8; 32], ClusterError> {
    let what = || format!("{META_BUCKET}.{SECRET_KEY}");
    let store = js
        .get_key_value(META_BUCKET)
        .await
        .map_err(|err| provision_error(format!("bucket {META_BUCKET}"), err))?;
    let mut fresh = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
        .map_err(|_| provision_error(what(), "no random source"))?;
    match store
        .create(SECRET_KEY, hex(&fresh).into_bytes().into())
        .await
    {
        Ok(_) => Ok(fresh),
        Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
            let value = read_key(js, META_BUCKET, SECRET_KEY)
                .await
                .map_err(|err| provision_error(what(), err))?
                .ok_or_else(|| provision_error(what(), "exists but has no value"))?;
            unhex(&value).ok_or_else(|| provision_error(what(), "not 64 hex digits"))
        }
        Err(err) => Err(provision_error(what(), err)),
    }
}

/// Partition `p`'s secret: the HMAC-SHA256 of its number under the cluster's secret.
pub fn partition_secret(cluster: &[u8; 32], p: Partition) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, cluster);
    let tag = ring::hmac::sign(&key, format!("gancho partition {p}").as_bytes());
    let mut secret = [0u8; 32];
    secret.copy_from_slice(tag.as_ref());
    secret
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &[u8]) -> Option<[u8; 32]> {
    let text = std::str::from_utf8(text).ok()?;
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_get_secrets_of_their_own_and_the_hex_round_trips() {
        let cluster = [7u8; 32];
        assert_eq!(partition_secret(&cluster, 3), partition_secret(&cluster, 3));
        assert_ne!(partition_secret(&cluster, 3), partition_secret(&cluster, 4));
        assert_ne!(
            partition_secret(&cluster, 3),
            partition_secret(&[8u8; 32], 3)
        );
        let secret = partition_secret(&cluster, 0);
        assert_eq!(unhex(hex(&secret).as_bytes()), Some(secret));
        assert_eq!(unhex(b"00"), None);
        assert_eq!(unhex(&[b'z'; 64]), None);
    }
}
