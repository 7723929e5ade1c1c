//! Which partition an event belongs to: a hash of its partition key's value, modulo the
//! partition count, computed by gancho (not by NATS subject mapping: an e-mail address's dots
//! would split a subject into tokens).
//!
//! It lives here, not in the cluster crate, because two crates decide with it: ingress in
//! cluster mode places each event with it, and a partition's engine refuses a query whose
//! partition-key value is placed elsewhere.
//!
//! The hash is part of the cluster's stored format: every node must place a value in the same
//! partition, today and after an upgrade. It is xxh3-64 with seed 0 over the value's UTF-8 bytes
//! as the source extracted them; the golden values in the tests pin it.

use xxhash_rust::xxh3::xxh3_64;

/// A partition's number, from 0 to the partition count less one.
pub type Partition = u16;

/// The global lane: the rules of the global scope (`const SCOPE = "global";`, every `EVERY`
/// rule) run there, over the events of every partition. It is owned, fenced, taken over and
/// handed over like a partition, under this number, which no partition count reaches
/// (at most 1024 partitions); its stream and journal have names of their own.
pub const GLOBAL: Partition = u16::MAX;

/// How logs and `gancho cluster status` name partition `p`: its number, or `global`.
pub fn lane_name(p: Partition) -> String {
    if p == GLOBAL {
        "global".to_owned()
    } else {
        p.to_string()
    }
}

/// The partition of a partition key's value among `partitions` (at least 1).
pub fn partition_of(value: &str, partitions: u16) -> Partition {
    let partitions = u64::from(partitions.max(1));
    // The remainder is below `partitions`, which fits in a u16.
    u16::try_from(xxh3_64(value.as_bytes()) % partitions).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: [(&str, u16); 4] = [
        ("alice@example.com", 15),
        ("bob@example.com", 10),
        ("19", 0),
        ("", 2),
    ];

    /// Changing these breaks every existing cluster: its events would be looked for in the
    /// wrong partition.
    #[test]
    fn the_hash_is_pinned() {
        assert_eq!(xxh3_64(b""), 0x2d06_8005_38d3_94c2);
        let golden: Vec<(&str, u16)> = ["alice@example.com", "bob@example.com", "19", ""]
            .iter()
            .map(|v| (*v, partition_of(v, 16)))
            .collect();
        assert_eq!(golden, GOLDEN);
    }

    #[test]
    fn values_spread_over_every_partition_and_one_partition_takes_all() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[usize::from(partition_of(&format!("user{i}@example.com"), 16))] += 1;
        }
        for (p, n) in counts.iter().enumerate() {
            assert!((800..1200).contains(n), "partition {p}: {n} of 16000");
        }
        assert_eq!(partition_of("anything", 1), 0);
        assert_eq!(partition_of("anything", 0), 0);
    }
}
