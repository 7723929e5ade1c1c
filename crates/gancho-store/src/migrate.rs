//! The formats of the store's two databases and their numbered migrations (the mechanism is
//! `format.rs`; the engine's database has its own, in `gancho-state`). Each step runs once,
//! when a database of the version before it is opened.
//!
//! | database | version | layout |
//! |---|---|---|
//! | log | 0 | version 1's, without its version key (never written by a release) |
//! | log | 1 | `log/codec.rs`: blocks, quarantine, commit record |
//! | log | 2 | version 1's, and retention: an empty record is a pruned event, `Mpurged` the set of pruned seqs, `S` summaries of walked stretches (`log/prune.rs`); nothing to convert, but a build of version 1 must not open it |
//! | log | 3 | version 2's, and a block over 1 KiB may be a pointer into a segment file (`log/segments.rs`); inline blocks are still read, so nothing to convert, but a build of version 2 must not open it |
//! | indexes | 0 | version 1's, without its version key (stores before versions) |
//! | indexes | 1 | `index/layout.rs`: sorted runs |
//! | indexes | 2 | version 1's; run records of version 2 (lowest seq, pruned count at write) |
//! | indexes | 3 | runs in files (`index/file.rs`, `GXR1`, one filter): `R` records as in 2, no `B` (blocks) or `F` (filter) keys |
//! | indexes | 4 | run files of two filters (`GXR2`: lookup and scan) and blocks of varints (`index/block.rs`), `R` records of version 3 |
//! | indexes | 5 | version 4's, with run files (`GXR3`) whose blocks code each entry against the previous one (`index/packed.rs`) |
//!
//! The indexes are derived from the log: one of a format this build cannot read is rebuilt
//! rather than refused (`Store::open`).

use crate::error::StoreError;
use crate::format::{Format, Step};
use crate::kv::Tree;

/// The log database's format, keyed `Mschema` in its `events` tree.
pub(crate) const LOG: Format = Format {
    name: "log",
    key: b"Mschema",
    current: 3,
    oldest: 0,
    steps: &[
        Step {
            what: "the same layout without a version key: record it",
            run: |_| Ok(()),
        },
        Step {
            what: "retention may leave pruned events: a build without it must refuse the log",
            run: |_| Ok(()),
        },
        Step {
            what: "larger blocks may live in segment files: a build without them must refuse \
                   the log",
            run: |_| Ok(()),
        },
    ],
};

/// The index database's format, keyed `Mformat` in its `index` tree.
pub(crate) const INDEX: Format = Format {
    name: "index",
    key: b"Mformat",
    current: 5,
    oldest: 0,
    steps: &[
        Step {
            what: "the same layout without a version key: record it",
            run: |_| Ok(()),
        },
        Step {
            what: "run records of version 2 (version 1 records are still read)",
            run: |_| Ok(()),
        },
        Step {
            what: "index runs move to files: the runs kept in sled are deleted, and the indexes \
                   rebuilt from the log",
            run: runs_out_of_sled,
        },
        Step {
            what: "run files with a lookup and a scan filter, and blocks of varints: the runs \
                   of format 3 are deleted, and the indexes rebuilt from the log",
            run: runs_of_format_3,
        },
        Step {
            what: "run files whose blocks code each entry against the previous one: the runs \
                   of format 4 are deleted, and the indexes rebuilt from the log",
            run: runs_of_format_3,
        },
    ],
};

/// Steps 3 → 4 and 4 → 5: deletes the run records and the watermark, so the indexer indexes the
/// whole log again into run files of the new format; the old files, without records, are
/// deleted at open. Idempotent.
fn runs_of_format_3(tree: &Tree) -> Result<(), StoreError> {
    for key in tree.scan_prefix([b'R']).keys() {
        tree.remove(key?)?;
    }
    tree.remove(crate::index::INDEXED_KEY)
}

/// Step 2 → 3: deletes the runs of format 2 (`R` records, `B` blocks and `F` filter chunks,
/// each key being the prefix byte and the run id) and the watermark, so the indexer indexes the
/// whole log again into run files. Idempotent.
fn runs_out_of_sled(tree: &Tree) -> Result<(), StoreError> {
    for prefix in [b'R', b'B', b'F'] {
        for key in tree.scan_prefix([prefix]).keys() {
            tree.remove(key?)?;
        }
    }
    tree.remove(crate::index::INDEXED_KEY)
}
