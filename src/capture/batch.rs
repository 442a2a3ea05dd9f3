//! A write batch built in any order and handed to RocksDB in key order within each family.
//!
//! RocksDB applies a batch entry by entry, each one a skiplist insert into its family's memtable,
//! and an insert starts its search from where the previous insert into that memtable ended. Keys
//! that come in order are therefore cheap to insert, and keys that jump about each search from
//! the top of a skiplist of up to a million entries. Left in the order the writer finds them,
//! they jump: a new session's two `agent_sessions` entries go to two ranges, the aggregates come
//! out of hash maps, and the calls of many sessions interleave in `session_calls`.
//!
//! `SortedBatch` keeps the puts and deletes of each family as they are added and writes them
//! sorted by key, family by family. The sort is stable, so entries on one key keep the order they
//! were added in, and the batch ends in the same state as one written in that order. Apart, each
//! family's entries mostly come in long sorted runs (call ids are time-ordered), which the sort
//! finds and merges instead of sorting them anew.

use std::borrow::Cow;

use rocksdb::WriteBatch;

use super::layout::FAMILIES;
use super::store::Store;

pub struct SortedBatch<'a> {
    /// The entries of each family of `FAMILIES`, in the order they were added.
    families: [Vec<Entry<'a>>; FAMILIES.len()],
    /// Bytes of keys and values so far, to size the `WriteBatch` once.
    bytes: usize,
}

struct Entry<'a> {
    key: Vec<u8>,
    /// `None`: a delete.
    value: Option<Cow<'a, [u8]>>,
}

/// A batch's framing per entry (type byte, family id, two lengths), rounded up.
const ENTRY_OVERHEAD: usize = 16;

impl<'a> SortedBatch<'a> {
    /// A batch for about `entries` entries per family.
    pub fn with_capacity(entries: usize) -> SortedBatch<'a> {
        SortedBatch { families: std::array::from_fn(|_| Vec::with_capacity(entries)), bytes: 0 }
    }

    fn entries(&mut self, family: &str) -> &mut Vec<Entry<'a>> {
        let i = FAMILIES.iter().position(|f| *f == family).expect("a family of this layout");
        &mut self.families[i]
    }

    pub fn put(&mut self, family: &str, key: Vec<u8>, value: impl Into<Cow<'a, [u8]>>) {
        let value = value.into();
        self.bytes += key.len() + value.len() + ENTRY_OVERHEAD;
        self.entries(family).push(Entry { key, value: Some(value) });
    }

    pub fn delete(&mut self, family: &str, key: Vec<u8>) {
        self.bytes += key.len() + ENTRY_OVERHEAD;
        self.entries(family).push(Entry { key, value: None });
    }

    /// The RocksDB batch: each family's entries sorted by key.
    pub fn into_write_batch(mut self, store: &Store) -> WriteBatch {
        let mut batch = WriteBatch::with_capacity_bytes(self.bytes + 64);
        for (name, entries) in FAMILIES.iter().zip(&mut self.families) {
            if entries.is_empty() {
                continue;
            }
            // Stable: a key's entries stay in the order they were added.
            entries.sort_by(|a, b| a.key.cmp(&b.key));
            let cf = store.family(name);
            for e in entries.iter() {
                match &e.value {
                    Some(v) => batch.put_cf(cf, &e.key, v),
                    None => batch.delete_cf(cf, &e.key),
                }
            }
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::capture::layout::{CF_AGENT_SESSIONS, CF_CALL};

    #[test]
    fn entries_on_one_key_keep_their_order_and_others_are_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut b = SortedBatch::with_capacity(8);
        b.put(CF_CALL, b"k2".to_vec(), &b"two"[..]);
        b.put(CF_AGENT_SESSIONS, b"p".to_vec(), &[][..]);
        b.delete(CF_AGENT_SESSIONS, b"p".to_vec());
        b.put(CF_CALL, b"k1".to_vec(), vec![1u8]);
        b.delete(CF_CALL, b"k1".to_vec());
        b.put(CF_CALL, b"k1".to_vec(), &b"one"[..]);
        b.delete(CF_CALL, b"k3".to_vec());
        b.put(CF_CALL, b"k3".to_vec(), &b"three"[..]);
        store.write(b.into_write_batch(&store), crate::capture::Durability::Async).unwrap();
        let get = |cf, k: &[u8]| store.get(cf, k).unwrap();
        assert_eq!(get(CF_CALL, b"k1").as_deref(), Some(&b"one"[..]), "put, delete, put: the last put stays");
        assert_eq!(get(CF_CALL, b"k2").as_deref(), Some(&b"two"[..]));
        assert_eq!(get(CF_CALL, b"k3").as_deref(), Some(&b"three"[..]), "delete then put: it stays");
        assert_eq!(get(CF_AGENT_SESSIONS, b"p"), None, "put then delete: it is gone");
    }
}
