//! The RocksDB capture store: the writer thread's sink (`StoreWriter`) and the queries of the
//! read API and the command line (`Store`).
//!
//! Layout: see `layout`. One writer thread owns every write: it reads the aggregates a record
//! changes (from its cache, else the store), updates them, and writes the record, its index
//! entries and the aggregates in one atomic `WriteBatch`. Readers share the same `Store` (RocksDB
//! reads are safe beside the writer) or open it read-only from another process.
//!
//! Durability is the writer's setting (`Durability`): `sync` fsyncs the WAL with every batch,
//! `async` writes the WAL without fsync. Closing the store always syncs the WAL.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Options, ReadOptions, WriteBatch,
    WriteOptions, DB,
};

use super::batch::SortedBatch;
use super::layout::*;
use super::record::{CallRecord, Encoded, Env};
use super::summary::{self, AgentSummary, SessionSummary};
use super::writer::{Durability, Expiry, ExpiryScope, RecordSink};

const STORE_DIR: &str = "captures";
/// Aggregates the writer keeps in memory; past this the cache starts over (a miss costs one
/// point read). Sessions are small (~200 bytes), so this bounds the cache near 20 MiB.
const CACHE_ENTRIES: usize = 100_000;
/// Calls examined per retention step, so that one step never holds the writer for long.
const EXPIRY_STEP: usize = 1000;
/// How often retention looks for expired calls once it has caught up.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);
/// Records per batch when a first-layout store is migrated.
const MIGRATE_BATCH: usize = 512;

pub struct Store {
    db: DB,
    read_only: bool,
}

fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STORE_DIR)
}

fn family_options(name: &str) -> Options {
    let mut o = Options::default();
    o.set_compression_type(DBCompressionType::Lz4);
    if name == CF_CALL || name == CF_SESSION || name == CF_AGENT {
        // Point reads: a bloom filter answers "not here" (new call ids, new sessions) from memory.
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        o.set_block_based_table_factory(&table);
    }
    if name == CF_SESSION {
        // The writer looks up each session it has not cached, and a new client-named session is
        // in no memtable: a bloom filter over the memtable's keys (2% of its size, about 1.3 MiB)
        // answers that without a search of the skiplist.
        o.set_memtable_prefix_bloom_ratio(0.02);
        o.set_memtable_whole_key_filtering(true);
    }
    o
}

fn err(e: rocksdb::Error) -> String {
    e.to_string()
}

impl Store {
    /// Opens (creating if needed) the store for writing. Only one process may hold it. A store
    /// of the first layout is migrated to this one.
    pub fn open(data_dir: &Path) -> Result<Store, String> {
        let path = store_path(data_dir);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(DBCompressionType::Lz4);
        // Flushes and compactions run at the lowest CPU priority, like the writer thread (which
        // runs niced): on a machine whose cores the workers keep busy, a flush's burst of LZ4
        // and SST writing then waits for the workers instead of delaying their relays.
        let mut env = rocksdb::Env::new().map_err(|e| format!("capture store: {e}"))?;
        env.lower_thread_pool_cpu_priority();
        env.lower_high_priority_thread_pool_cpu_priority();
        opts.set_env(&env);
        let existing = DB::list_cf(&Options::default(), &path).unwrap_or_default();
        let legacy = existing.iter().any(|n| n == CF_LEGACY_CALLS);
        let mut names: Vec<&str> = FAMILIES.to_vec();
        if legacy {
            names.push(CF_LEGACY_CALLS);
        }
        let cfs = names.iter().map(|n| ColumnFamilyDescriptor::new(*n, family_options(n)));
        let db =
            DB::open_cf_descriptors(&opts, &path, cfs).map_err(|e| format!("capture store {}: {e}", path.display()))?;
        let mut store = Store { db, read_only: false };
        if legacy {
            store.migrate_legacy().map_err(|e| format!("capture store {}: migration: {e}", path.display()))?;
        }
        Ok(store)
    }

    /// Opens the store read-only; works while a server holds it for writing, and sees what had
    /// reached the WAL when it was opened.
    pub fn open_read_only(data_dir: &Path) -> Result<Store, String> {
        let path = store_path(data_dir);
        let existing =
            DB::list_cf(&Options::default(), &path).map_err(|e| format!("capture store {}: {e}", path.display()))?;
        let names: Vec<&String> = existing.iter().filter(|n| n.as_str() != "default").collect();
        let db = DB::open_cf_for_read_only(&Options::default(), &path, names, false)
            .map_err(|e| format!("capture store {}: {e}", path.display()))?;
        Ok(Store { db, read_only: true })
    }

    pub fn exists(data_dir: &Path) -> bool {
        store_path(data_dir).join("CURRENT").exists()
    }

    fn cf(&self, name: &str) -> Option<&ColumnFamily> {
        self.db.cf_handle(name)
    }

    /// A family of this layout (the store opens every one).
    pub(super) fn family(&self, name: &str) -> &ColumnFamily {
        self.cf(name).expect("the store opened every family")
    }

    /// Writes a batch; `Sync` fsyncs the WAL before returning.
    pub(super) fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), String> {
        let mut wo = WriteOptions::default();
        wo.set_sync(durability == Durability::Sync);
        self.db.write_opt(batch, &wo).map_err(err)
    }

    /// Makes everything written so far durable.
    pub fn sync(&self) -> Result<(), rocksdb::Error> {
        self.db.flush_wal(true)
    }

    /// Moves the records of the first layout (family `calls`, keyed by call id alone) into this
    /// one, building the aggregates, then drops the old family.
    fn migrate_legacy(&mut self) -> Result<(), String> {
        let Some(old) = self.cf(CF_LEGACY_CALLS) else { return Ok(()) };
        let mut records = Vec::new();
        for item in self.db.iterator_cf(old, rocksdb::IteratorMode::Start) {
            let (_, v) = item.map_err(err)?;
            match CallRecord::decode(&v) {
                Ok(r) => records.push(r),
                Err(e) => tracing::warn!("skipping an unreadable record while migrating: {e}"),
            }
        }
        let count = records.len();
        let records: Vec<Encoded> = records.into_iter().map(Encoded::new).collect();
        let mut state = WriteState::default();
        for chunk in records.chunks(MIGRATE_BATCH) {
            state.write(self, chunk, Durability::Sync)?;
        }
        self.db.drop_cf(CF_LEGACY_CALLS).map_err(err)?;
        tracing::info!(records = count, "capture store migrated to the per-user layout");
        Ok(())
    }

    // ----- reads ---------------------------------------------------------------------------

    /// Visits the entries of `cf` whose keys start with `prefix`, in key order, beginning after
    /// `prefix ‖ after` when given; `visit` returns false to stop.
    fn scan(
        &self,
        cf: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        mut visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), String> {
        let Some(cf) = self.cf(cf) else { return Ok(()) };
        let mut ro = ReadOptions::default();
        if let Some(end) = prefix_end(prefix) {
            ro.set_iterate_upper_bound(end);
        }
        let mut it = self.db.raw_iterator_cf_opt(cf, ro);
        match after {
            Some(position) => {
                let start = [prefix, position].concat();
                it.seek(&start);
                if it.key() == Some(start.as_slice()) {
                    it.next();
                }
            }
            None => it.seek(prefix),
        }
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(prefix) || !visit(k, v) {
                break;
            }
            it.next();
        }
        it.status().map_err(err)
    }

    fn get_many(&self, cf: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, String> {
        let Some(handle) = self.cf(cf) else { return Ok(vec![None; keys.len()]) };
        self.db.multi_get_cf(keys.iter().map(|k| (handle, k))).into_iter().map(|r| r.map_err(err)).collect()
    }

    pub(super) fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match self.cf(cf) {
            Some(handle) => self.db.get_cf(handle, key).map_err(err),
            None => Ok(None),
        }
    }

    /// Every call of every user, oldest first (by id: call ids are UUIDv7, time-ordered).
    pub fn calls(&self) -> Result<Vec<CallRecord>, String> {
        let mut out = Vec::new();
        let mut failure = None;
        for cf in [CF_CALL, CF_LEGACY_CALLS] {
            self.scan(cf, &[], None, |_, v| match CallRecord::decode(v) {
                Ok(r) => {
                    out.push(r);
                    true
                }
                Err(e) => {
                    failure = Some(e);
                    false
                }
            })?;
        }
        if let Some(e) = failure {
            return Err(e);
        }
        out.sort_by(|a, b| id_bytes(&a.id)[..].cmp(&id_bytes(&b.id)[..]));
        Ok(out)
    }

    /// One of `user`'s calls. Another user's call id is simply not found.
    pub fn call(&self, user: &str, id: &str) -> Result<Option<CallRecord>, String> {
        self.get(CF_CALL, &call_key(user, id))?.map(|v| CallRecord::decode(&v)).transpose()
    }

    pub fn session(&self, user: &str, session_id: &str) -> Result<Option<SessionSummary>, String> {
        self.get(CF_SESSION, &session_key(user, session_id))?.map(|v| summary::decode(&v)).transpose()
    }

    /// `user`'s agents, by name.
    pub fn agents(&self, user: &str) -> Result<Vec<AgentSummary>, String> {
        let mut out = Vec::new();
        let mut failure = None;
        self.scan(CF_AGENT, &user_prefix(user), None, |_, v| match summary::decode(v) {
            Ok(a) => {
                out.push(a);
                true
            }
            Err(e) => {
                failure = Some(e);
                false
            }
        })?;
        failure.map_or(Ok(out), Err)
    }

    /// Every user that has recorded calls (has an agent), by name.
    pub fn users(&self) -> Result<Vec<String>, String> {
        let mut users: Vec<String> = Vec::new();
        self.scan(CF_AGENT, &[], None, |k, _| {
            if let Some((user, _)) = split_user(k) {
                if users.last().map(String::as_str) != Some(user) {
                    users.push(user.to_string());
                }
            }
            true
        })?;
        users.sort();
        Ok(users)
    }

    /// A page of an agent's sessions, newest started first, optionally of one env. `after` is a
    /// position returned as the previous page's `next`.
    pub fn sessions(
        &self,
        user: &str,
        agent: &str,
        env: Option<Env>,
        limit: usize,
        after: Option<&[u8]>,
    ) -> Result<Page<SessionSummary>, String> {
        let prefix = agent_sessions_prefix(user, agent, env.map_or(ANY_ENV, env_tag));
        let positions = self.positions(CF_AGENT_SESSIONS, &prefix, limit, after)?;
        let user_key = user_prefix(user);
        let keys: Vec<Vec<u8>> = positions
            .items
            .iter()
            .filter_map(|p| position_session(p))
            .map(|sid| [user_key.as_slice(), sid].concat())
            .collect();
        let mut items = Vec::with_capacity(keys.len());
        for v in self.get_many(CF_SESSION, &keys)?.into_iter().flatten() {
            items.push(summary::decode(&v)?);
        }
        Ok(Page { items, next: positions.next })
    }

    /// A page of a session's calls, oldest first.
    pub fn session_calls(
        &self,
        user: &str,
        session_id: &str,
        limit: usize,
        after: Option<&[u8]>,
    ) -> Result<Page<CallRecord>, String> {
        let prefix = session_calls_prefix(user, session_id);
        let positions = self.positions(CF_SESSION_CALLS, &prefix, limit, after)?;
        let user_key = user_prefix(user);
        let keys: Vec<Vec<u8>> =
            positions.items.iter().filter(|p| p.len() > 8).map(|p| [user_key.as_slice(), &p[8..]].concat()).collect();
        let mut items = Vec::with_capacity(keys.len());
        // A call removed by retention leaves no index entry; a missing one is skipped, not an error.
        for v in self.get_many(CF_CALL, &keys)?.into_iter().flatten() {
            items.push(CallRecord::decode(&v)?);
        }
        Ok(Page { items, next: positions.next })
    }

    /// Up to `limit` index positions (keys without `prefix`) after `after`, and the position to
    /// continue from when more remain.
    fn positions(&self, cf: &str, prefix: &[u8], limit: usize, after: Option<&[u8]>) -> Result<Page<Vec<u8>>, String> {
        let mut items = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        self.scan(cf, prefix, after, |k, _| {
            if items.len() == limit {
                more = true;
                return false;
            }
            items.push(k[prefix.len()..].to_vec());
            true
        })?;
        let next = if more { items.last().cloned() } else { None };
        Ok(Page { items, next })
    }
}

/// One page of a listing; `next` is where the following page starts (none: this is the last).
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Vec<u8>>,
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

/// The writer thread's side of the store: the aggregate cache and the batch builder.
pub struct StoreWriter {
    store: Arc<Store>,
    durability: Durability,
    state: WriteState,
    expiry: Option<Expiry>,
    next_expiry: Instant,
    /// The last `by_time` key retention handled: the next step starts after it rather than
    /// stepping again over the tombstones of the entries it deleted.
    expired_to: Option<Vec<u8>>,
}

impl StoreWriter {
    pub fn new(store: Arc<Store>, durability: Durability) -> StoreWriter {
        StoreWriter {
            store,
            durability,
            state: WriteState::default(),
            expiry: None,
            next_expiry: Instant::now(),
            expired_to: None,
        }
    }

    /// Removes content, or whole calls, older than `expiry.after`, a step at a time between batches.
    pub fn with_expiry(mut self, expiry: Option<Expiry>) -> StoreWriter {
        self.expiry = expiry;
        self
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// One retention step: the `by_time` entries older than the cutoff, whole, until they hold
    /// `EXPIRY_STEP` calls. Returns how many calls it changed or removed.
    pub fn expire_step(&mut self, expiry: Expiry, now_ms: u64) -> Result<usize, String> {
        let cutoff = now_ms.saturating_sub(expiry.after.as_millis() as u64);
        let mut expired: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let (mut calls, mut failure) = (0, None);
        self.store.scan(CF_BY_TIME, &[], self.expired_to.as_deref(), |k, v| match by_time_calls(k, v) {
            Some(_) if calls >= EXPIRY_STEP => false,
            Some(listed) if split_by_time(k).is_some_and(|(latest, _)| latest < cutoff) => {
                calls += listed.len();
                expired.push((k.to_vec(), v.to_vec()));
                true
            }
            Some(_) => false,
            None => {
                failure = Some("bad by_time entry".to_string());
                false
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        let db = &self.store.db;
        let handle = |name| self.store.cf(name).expect("the store opened every family");
        let mut batch = WriteBatch::default();
        let mut changed = 0;
        for (key, value) in &expired {
            batch.delete_cf(handle(CF_BY_TIME), key);
            for (ms, call_key) in by_time_calls(key, value).unwrap_or_default() {
                let Some(bytes) = db.get_cf(handle(CF_CALL), call_key).map_err(err)? else { continue };
                let mut record = CallRecord::decode(&bytes)?;
                match expiry.scope {
                    ExpiryScope::Content => {
                        if record.request.is_none() && record.response.is_none() && record.tools.is_none() {
                            continue;
                        }
                        record.request = None;
                        record.response = None;
                        record.tools = None;
                        batch.put_cf(handle(CF_CALL), call_key, record.encode());
                    }
                    ExpiryScope::Records => {
                        // The session and agent totals keep counting it: they are history, not a
                        // view of what is still stored.
                        batch.delete_cf(handle(CF_CALL), call_key);
                        let index =
                            session_calls_key(&record.user, &id_bytes(&record.session_id), ms, &id_bytes(&record.id));
                        batch.delete_cf(handle(CF_SESSION_CALLS), index);
                    }
                }
                changed += 1;
            }
        }
        if let Some((last, _)) = expired.last() {
            self.store.write(batch, self.durability)?;
            self.expired_to = Some(last.clone());
        }
        // Caught up: look again later. Behind: continue at the next tick.
        self.next_expiry = Instant::now() + if calls < EXPIRY_STEP { EXPIRY_INTERVAL } else { Duration::ZERO };
        Ok(changed)
    }
}

impl RecordSink for StoreWriter {
    fn write_batch(&mut self, records: &[Encoded]) -> std::io::Result<()> {
        let written = self.state.write(&self.store, records, self.durability);
        self.state.retrying = written.is_err();
        written.map_err(std::io::Error::other)
    }

    fn tick(&mut self) {
        let Some(expiry) = self.expiry else { return };
        if Instant::now() < self.next_expiry {
            return;
        }
        match self.expire_step(expiry, now_ms()) {
            Ok(0) => {}
            Ok(n) => tracing::info!(calls = n, scope = ?expiry.scope, "retention removed expired capture data"),
            Err(e) => {
                tracing::warn!("retention step failed: {e}");
                self.next_expiry = Instant::now() + EXPIRY_INTERVAL;
            }
        }
    }
}

/// The calls of a batch that started in one minute: one `by_time` entry.
struct TimeGroup {
    minute: u64,
    latest: u64,
    latest_call: Vec<u8>,
    calls: Vec<u8>,
}

impl TimeGroup {
    fn new(minute: u64, ms: u64, call_key: &[u8]) -> TimeGroup {
        let mut g = TimeGroup { minute, latest: ms, latest_call: call_key.to_vec(), calls: Vec::new() };
        push_by_time_call(&mut g.calls, ms, call_key);
        g
    }

    fn add(&mut self, ms: u64, call_key: &[u8]) {
        if ms >= self.latest {
            self.latest = ms;
            self.latest_call.clear();
            self.latest_call.extend_from_slice(call_key);
        }
        push_by_time_call(&mut self.calls, ms, call_key);
    }
}

/// The writer's maps hash with a randomly seeded AHash: session ids come from clients, so the
/// hash must resist chosen collisions, and std's SipHash was a visible share of the writer's time.
type Map<V> = HashMap<Vec<u8>, V, ahash::RandomState>;

/// The aggregates as last written, by key. Only the writer thread touches it.
#[derive(Default)]
struct WriteState {
    sessions: Map<SessionSummary>,
    agents: Map<AgentSummary>,
    /// The last write failed: the writer is resending that batch, part of which RocksDB may have
    /// applied, so each record is looked up before it counts.
    retrying: bool,
}

impl WriteState {
    fn session(&self, store: &Store, key: &[u8]) -> Result<Option<SessionSummary>, String> {
        if let Some(s) = self.sessions.get(key) {
            return Ok(Some(s.clone()));
        }
        Ok(store.get(CF_SESSION, key)?.and_then(|v| {
            // A summary that cannot be read must not stop every later write: start it anew.
            summary::decode(&v).map_err(|e| tracing::warn!("unreadable session summary, restarting it: {e}")).ok()
        }))
    }

    fn agent(&self, store: &Store, key: &[u8]) -> Result<Option<AgentSummary>, String> {
        if let Some(a) = self.agents.get(key) {
            return Ok(Some(a.clone()));
        }
        Ok(store.get(CF_AGENT, key)?.and_then(|v| {
            summary::decode(&v).map_err(|e| tracing::warn!("unreadable agent summary, restarting it: {e}")).ok()
        }))
    }

    fn recorded(store: &Store, key: &[u8]) -> Result<bool, String> {
        let cf = store.cf(CF_CALL).expect("the store opened every family");
        Ok(store.db.key_may_exist_cf(cf, key) && store.db.get_pinned_cf(cf, key).map_err(err)?.is_some())
    }

    /// Writes `records` and everything they change in one batch. The cache is updated only
    /// once the batch is written, so a failed write (retried by the writer) counts nothing twice.
    fn write(&mut self, store: &Store, records: &[Encoded], durability: Durability) -> Result<(), String> {
        let mut batch = SortedBatch::with_capacity(records.len());
        // Each session of the batch, and whether to keep it in the cache afterwards.
        let mut sessions: Map<(SessionSummary, bool)> = Map::default();
        let mut agents: Map<AgentSummary> = Map::default();
        // The calls of this batch, by user and id.
        let mut seen: HashSet<(&str, &str), ahash::RandomState> = HashSet::default();
        let mut by_time: Vec<TimeGroup> = Vec::new();
        for r in records {
            // Ids as keys hold them (UUIDs as 16 bytes), parsed once for the record's keys.
            let (call_id, session_id) = (id_bytes(&r.id), id_bytes(&r.session_id));
            let call_key = id_key(&r.user, &call_id);
            // Ids are the proxy's own and unique: a record can be in the store already only if
            // an earlier attempt at this batch failed after RocksDB applied it.
            if !seen.insert((&r.user, &r.id)) || (self.retrying && Self::recorded(store, &call_key)?) {
                // Only a resent record can get here; counting it again would double the sums.
                tracing::warn!(id = %r.id, "a call already recorded was sent again; kept once");
                continue;
            }
            let (ms, c) = (r.started_ms, &r.contribution);

            let session_key = id_key(&r.user, &session_id);
            let (previous, cache) = match sessions.remove(&session_key) {
                Some((s, cache)) => (Some(s), cache),
                // A session id the proxy made for this call cannot be stored yet: no lookup.
                // Nor is it cached: the client did not name a session, so it seldom sends that
                // id again, and when it does the summary is read back from the store.
                None if r.session_generated => (None, false),
                None => (self.session(store, &session_key)?, true),
            };
            let new_session = previous.is_none();
            let mut session = previous.unwrap_or_else(|| SessionSummary::new(&r.session_id, &r.agent, r.env, ms));
            if new_session || ms < session.started_ms {
                // The session's place in its agent's lists is its start: (re)index it.
                for tag in [ANY_ENV, env_tag(session.env)] {
                    let entry = |started| agent_sessions_key(&r.user, &session.agent, tag, started, &session_id);
                    if !new_session {
                        batch.delete(CF_AGENT_SESSIONS, entry(session.started_ms));
                    }
                    batch.put(CF_AGENT_SESSIONS, entry(ms.min(session.started_ms)), &[][..]);
                }
            }
            session.add(ms, c);
            sessions.insert(session_key, (session, cache));

            let agent_key = agent_key(&r.user, &r.agent);
            let agent = match agents.remove(&agent_key) {
                Some(a) => Some(a),
                None => self.agent(store, &agent_key)?,
            };
            let mut agent = agent.unwrap_or_else(|| AgentSummary::new(&r.agent, ms));
            agent.add(ms, new_session, c);
            agents.insert(agent_key, agent);

            batch.put(CF_SESSION_CALLS, session_calls_key(&r.user, &session_id, ms, &call_id), &[][..]);
            let minute = ms / BY_TIME_GROUP_MS;
            match by_time.iter_mut().find(|g| g.minute == minute) {
                Some(group) => group.add(ms, &call_key),
                None => by_time.push(TimeGroup::new(minute, ms, &call_key)),
            }
            batch.put(CF_CALL, call_key, &r.bytes[..]);
        }
        for g in by_time {
            batch.put(CF_BY_TIME, by_time_key(g.latest, &g.latest_call), g.calls);
        }
        for (k, (s, _)) in &sessions {
            batch.put(CF_SESSION, k.clone(), summary::encode(s));
        }
        for (k, a) in &agents {
            batch.put(CF_AGENT, k.clone(), summary::encode(a));
        }
        store.write(batch.into_write_batch(store), durability)?;
        if self.sessions.len() + sessions.len() > CACHE_ENTRIES {
            self.sessions.clear();
        }
        if self.agents.len() + agents.len() > CACHE_ENTRIES {
            self.agents.clear();
        }
        self.sessions.extend(sessions.into_iter().filter_map(|(k, (s, cache))| cache.then_some((k, s))));
        self.agents.extend(agents);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::record::sample;

    fn put(w: &mut StoreWriter, records: &[CallRecord]) {
        w.write_batch(&records.iter().cloned().map(Encoded::new).collect::<Vec<_>>()).unwrap();
    }

    fn record(user: &str, session: &str, started_at: &str) -> CallRecord {
        let mut r = sample(&uuid::Uuid::now_v7().to_string());
        r.user = user.into();
        r.session_id = session.into();
        r.started_at = started_at.into();
        r
    }

    #[test]
    fn a_session_the_proxy_named_adds_up_when_the_client_sends_its_id_later() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut w = StoreWriter::new(store.clone(), Durability::Async);
        let mut first = record("u", "made-by-proxy", "2026-11-26T00:00:00.000Z");
        first.session_generated = true;
        put(&mut w, &[first]);
        // Later batches: the summary is not in the writer's cache, so it is read back.
        for started in ["2026-11-26T00:00:01.000Z", "2026-11-26T00:00:02.000Z"] {
            put(&mut w, &[record("u", "made-by-proxy", started)]);
        }
        let s = store.session("u", "made-by-proxy").unwrap().expect("the session is stored");
        assert_eq!(s.totals.calls, 3);
        assert_eq!(rfc3339_ms(s.started_ms), "2026-11-26T00:00:00.000Z");
        assert_eq!(rfc3339_ms(s.last_ms), "2026-11-26T00:00:02.000Z");
        let agent = &store.agents("u").unwrap()[0];
        assert_eq!((agent.sessions, agent.totals.calls), (1, 3), "one session, counted once");
    }

    #[test]
    fn records_come_back_oldest_first_and_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<CallRecord> = (0..5).map(|_| record("u", "s", "2026-11-26T00:00:00.000Z")).collect();
        {
            let store = Arc::new(Store::open(dir.path()).unwrap());
            let mut w = StoreWriter::new(store.clone(), Durability::Async);
            let mut reversed = records.clone();
            reversed.reverse();
            put(&mut w, &reversed[..2]);
            put(&mut w, &reversed[2..]);
            let ro = Store::open_read_only(dir.path()).unwrap();
            assert_eq!(ro.calls().unwrap().len(), 5, "a reader sees what the writer wrote while it runs");
        }
        let store = Store::open(dir.path()).unwrap();
        let got: Vec<String> = store.calls().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(got, records.iter().map(|r| r.id.clone()).collect::<Vec<_>>());
        assert_eq!(store.call("u", &records[3].id).unwrap().unwrap().id, records[3].id);
        assert!(store.call("other", &records[3].id).unwrap().is_none(), "another user's call is not found");
        assert_eq!(store.session("u", "s").unwrap().unwrap().totals.calls, 5);
    }

    #[test]
    fn a_resent_record_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut w = StoreWriter::new(store.clone(), Durability::Sync);
        let r = record("u", "s", "2026-11-26T00:00:00.000Z");
        put(&mut w, &[r.clone(), r.clone()]);
        // The writer resends a batch whose write failed, after RocksDB may have applied it.
        w.state.retrying = true;
        put(&mut w, std::slice::from_ref(&r));
        // A fresh writer (empty cache) resending still sees it in the store.
        let mut fresh = StoreWriter::new(store.clone(), Durability::Sync);
        fresh.state.retrying = true;
        put(&mut fresh, &[r]);
        assert_eq!(store.calls().unwrap().len(), 1);
        assert_eq!(store.session("u", "s").unwrap().unwrap().totals.calls, 1);
        assert_eq!(store.agents("u").unwrap()[0].totals.calls, 1);
    }

    #[test]
    fn first_layout_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path());
        let r = record("u", "s", "2026-11-26T00:00:00.000Z");
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let db = DB::open_cf(&opts, &path, [CF_LEGACY_CALLS]).unwrap();
            let cf = db.cf_handle(CF_LEGACY_CALLS).unwrap();
            db.put_cf(cf, uuid::Uuid::parse_str(&r.id).unwrap().as_bytes(), r.encode()).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(store.cf(CF_LEGACY_CALLS).is_none());
        assert_eq!(store.call("u", &r.id).unwrap().unwrap(), r);
        assert_eq!(store.agents("u").unwrap()[0].sessions, 1);
    }

    #[test]
    fn retention_removes_old_content_or_old_calls() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut w = StoreWriter::new(store.clone(), Durability::Async);
        let mut old = record("u", "s", "2026-01-01T00:00:00.000Z");
        old.request = Some(serde_json::json!({"messages": []}));
        let mut new = record("u", "s", "2026-11-26T00:00:00.000Z");
        new.request = Some(serde_json::json!({"messages": []}));
        put(&mut w, &[old.clone(), new.clone()]);
        let now = started_ms(&new) + 1000;
        let day = Duration::from_secs(86_400);

        let content = Expiry { after: day, scope: ExpiryScope::Content };
        assert_eq!(w.expire_step(content, now).unwrap(), 1);
        assert!(store.call("u", &old.id).unwrap().unwrap().request.is_none(), "old content removed");
        assert!(store.call("u", &new.id).unwrap().unwrap().request.is_some(), "recent content kept");
        assert_eq!(w.expire_step(content, now).unwrap(), 0, "nothing left to do");

        put(&mut w, &[record("u", "s2", "2026-01-02T00:00:00.000Z")]);
        let records = Expiry { after: day, scope: ExpiryScope::Records };
        assert_eq!(w.expire_step(records, now).unwrap(), 1);
        assert_eq!(store.calls().unwrap().len(), 2);
        assert!(store.session_calls("u", "s2", 10, None).unwrap().items.is_empty());
        assert_eq!(store.session("u", "s2").unwrap().unwrap().totals.calls, 1, "totals are history");
    }

    #[test]
    fn retention_takes_a_minute_of_calls_per_entry_and_reads_single_call_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut w = StoreWriter::new(store.clone(), Durability::Async);
        let minute: Vec<CallRecord> = ["00.100", "10.000", "59.900"]
            .iter()
            .map(|s| record("u", "s", &format!("2026-01-01T00:00:{s}Z")))
            .collect();
        let next_minute = record("u", "s", "2026-01-01T00:01:00.000Z");
        put(&mut w, &[minute[1].clone(), next_minute.clone(), minute[2].clone(), minute[0].clone()]);
        let by_time = |store: &Store| {
            let mut n = 0;
            store
                .scan(CF_BY_TIME, &[], None, |_, _| {
                    n += 1;
                    true
                })
                .unwrap();
            n
        };
        assert_eq!(by_time(&store), 2, "one entry per minute of start times, not one per call");

        // An entry as stores written before hold: one call, named by its key, empty value.
        let mut legacy = record("u", "s", "2026-01-01T00:00:30.000Z");
        legacy.id = uuid::Uuid::now_v7().to_string();
        put(&mut w, std::slice::from_ref(&legacy));
        let cf = store.cf(CF_BY_TIME).unwrap();
        let mut entries = Vec::new();
        store
            .scan(CF_BY_TIME, &[], None, |k, v| {
                entries.push((k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
        for (k, v) in &entries {
            if by_time_calls(k, v).unwrap().iter().any(|(_, c)| *c == call_key("u", &legacy.id)) {
                store.db.delete_cf(cf, k).unwrap();
            }
        }
        let ms = started_ms(&legacy);
        store.db.put_cf(cf, by_time_key(ms, &call_key("u", &legacy.id)), []).unwrap();

        // The expiry falls inside the second minute: the first minute's calls and the single-call
        // entry go, the second minute's call stays.
        let now = started_ms(&next_minute) + 86_400_000;
        let expiry = Expiry { after: Duration::from_secs(86_400), scope: ExpiryScope::Records };
        assert_eq!(w.expire_step(expiry, now).unwrap(), 4);
        let left: Vec<String> = store.calls().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(left, vec![next_minute.id.clone()]);
        assert_eq!(by_time(&store), 1);
        assert_eq!(w.expire_step(expiry, now).unwrap(), 0);
        assert_eq!(w.expire_step(expiry, now + 60_000).unwrap(), 1, "its minute over, the last call goes too");
    }
}
