//! The RocksDB capture store: the writer thread's sink and the read side.
//!
//! Layout: column family `calls`, key = the call id's 16 UUIDv7 bytes (time-ordered, so a scan is
//! oldest first), value = `CallRecord::encode`. Writes go through the WAL without fsync per
//! batch (a crash of the machine can lose the last batch; a crash of the process cannot);
//! shutdown flushes the WAL with a sync.

use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};

use super::record::CallRecord;
use super::writer::RecordSink;

const CF_CALLS: &str = "calls";
const STORE_DIR: &str = "captures";

pub struct Store {
    db: DB,
    read_only: bool,
}

fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STORE_DIR)
}

fn key_of(id: &str) -> Vec<u8> {
    match uuid::Uuid::parse_str(id) {
        Ok(u) => u.as_bytes().to_vec(),
        Err(_) => id.as_bytes().to_vec(),
    }
}

impl Store {
    /// Opens (creating if needed) the store for writing. Only one process may hold it.
    pub fn open(data_dir: &Path) -> Result<Store, String> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = vec![ColumnFamilyDescriptor::new(CF_CALLS, Options::default())];
        let path = store_path(data_dir);
        let db =
            DB::open_cf_descriptors(&opts, &path, cfs).map_err(|e| format!("capture store {}: {e}", path.display()))?;
        Ok(Store { db, read_only: false })
    }

    /// Opens the store read-only; works while a server holds it for writing, and sees what had
    /// reached the WAL when it was opened.
    pub fn open_read_only(data_dir: &Path) -> Result<Store, String> {
        let path = store_path(data_dir);
        let db = DB::open_cf_for_read_only(&Options::default(), &path, [CF_CALLS], false)
            .map_err(|e| format!("capture store {}: {e}", path.display()))?;
        Ok(Store { db, read_only: true })
    }

    pub fn exists(data_dir: &Path) -> bool {
        store_path(data_dir).join("CURRENT").exists()
    }

    pub fn write(&self, records: &[CallRecord]) -> Result<(), rocksdb::Error> {
        let cf = self.db.cf_handle(CF_CALLS).expect("calls column family exists");
        let mut batch = WriteBatch::default();
        for r in records {
            batch.put_cf(cf, key_of(&r.id), r.encode());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.db.write_opt(batch, &wo)
    }

    /// All calls, oldest first.
    pub fn calls(&self) -> Result<Vec<CallRecord>, String> {
        let cf = self.db.cf_handle(CF_CALLS).expect("calls column family exists");
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (_, v) = item.map_err(|e| e.to_string())?;
            out.push(CallRecord::decode(&v)?);
        }
        Ok(out)
    }

    pub fn call(&self, id: &str) -> Result<Option<CallRecord>, String> {
        let cf = self.db.cf_handle(CF_CALLS).expect("calls column family exists");
        match self.db.get_cf(cf, key_of(id)).map_err(|e| e.to_string())? {
            Some(v) => CallRecord::decode(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Makes everything written so far durable.
    pub fn sync(&self) -> Result<(), rocksdb::Error> {
        self.db.flush_wal(true)
    }
}

impl RecordSink for Store {
    fn write_batch(&mut self, records: &[CallRecord]) -> std::io::Result<()> {
        self.write(records).map_err(std::io::Error::other)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.read_only {
            return;
        }
        if let Err(e) = self.sync() {
            tracing::warn!("capture store sync at close failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::record::sample;

    #[test]
    fn records_come_back_oldest_first_and_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..5).map(|_| uuid::Uuid::now_v7().to_string()).collect();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut records: Vec<CallRecord> = ids.iter().map(|id| sample(id)).collect();
            records.reverse();
            store.write(&records[..2]).unwrap();
            store.write(&records[2..]).unwrap();
            let ro = Store::open_read_only(dir.path()).unwrap();
            assert_eq!(ro.calls().unwrap().len(), 5, "a reader sees what the writer wrote while it runs");
        }
        let store = Store::open(dir.path()).unwrap();
        let got: Vec<String> = store.calls().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(got, ids);
        assert_eq!(store.call(&ids[3]).unwrap().unwrap().id, ids[3]);
        assert!(store.call(&uuid::Uuid::now_v7().to_string()).unwrap().is_none());
    }
}
