//! The key file (`keys.jsonl` in the data dir) and the in-memory table built from it.
//!
//! The file is append-only JSON lines, `create`, `revoke` and `register_agent` events, written
//! under an exclusive
//! file lock and fsynced, so `keys create` works whether or not a server holds the data dir and
//! two writers never interleave. It holds key hashes, never keys. The server's watcher thread
//! reloads the table when the file grows; workers read the current table through an `ArcSwap`
//! (no lock on the request path).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::key::{from_hex, generate_key, hash_key, random_base62, to_hex, KeyHash, KEY_PREFIX};
use super::limits::UserState;

const KEY_FILE: &str = "keys.jsonl";
/// How often the server looks for new or revoked keys.
const RELOAD_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub id: Arc<str>,
    pub user: Arc<str>,
    /// This key's own limits, where it has them; the server's defaults otherwise.
    pub overrides: KeyLimits,
    /// The user's rate and concurrency state, shared by all of the user's keys.
    pub state: Arc<UserState>,
    /// Calls with this key must name an agent registered beforehand (`agents register`).
    pub registered_agents_only: bool,
}

/// Per-key overrides (`keys create --requests-per-minute/--max-concurrent/--block-findings`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Refuse this key's requests whose prompt carries a secret or a high-severity injection
    /// marker (see `scan`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub block_findings: bool,
}

/// Listing entry for `keys list`.
#[derive(Debug, Clone, Serialize)]
pub struct KeyListing {
    pub id: String,
    pub user: String,
    pub prefix: String,
    pub created_at: String,
    pub revoked: bool,
    #[serde(flatten)]
    pub limits: KeyLimits,
    pub registered_agents_only: bool,
}

/// An agent registered ahead of its first call (`agents register`).
#[derive(Debug, Clone, Serialize)]
pub struct AgentRegistration {
    pub user: String,
    pub agent: String,
    pub at: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum KeyEvent {
    Create {
        id: String,
        user: String,
        hash: String,
        prefix: String,
        created_at: String,
        #[serde(flatten)]
        limits: KeyLimits,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        registered_agents_only: bool,
    },
    Revoke {
        id: String,
        at: String,
    },
    RegisterAgent {
        user: String,
        agent: String,
        at: String,
    },
}

/// Everything the key file says.
#[derive(Default)]
struct KeyFile {
    listing: Vec<KeyListing>,
    ids: HashMap<KeyHash, String>,
    agents: Vec<AgentRegistration>,
}

/// Active keys by hash, and the agents registered per user.
#[derive(Debug, Default)]
pub struct KeyTable {
    by_hash: HashMap<KeyHash, KeyInfo>,
    agents: HashMap<String, std::collections::HashSet<String>>,
}

impl KeyTable {
    pub fn lookup(&self, key: &[u8]) -> Option<&KeyInfo> {
        self.by_hash.get(&hash_key(key))
    }

    /// Whether `agent` was registered for `user` with `agents register`.
    pub fn agent_registered(&self, user: &str, agent: &[u8]) -> bool {
        let Ok(agent) = std::str::from_utf8(agent) else { return false };
        self.agents.get(user).is_some_and(|set| set.contains(agent))
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Takes over the rate and concurrency state of users the previous table knew, so that a
    /// reload neither resets a user's limits nor forgets calls in flight.
    pub fn adopt_states(&mut self, previous: &KeyTable) {
        let old: HashMap<&str, &Arc<UserState>> = previous.by_hash.values().map(|k| (&*k.user, &k.state)).collect();
        for info in self.by_hash.values_mut() {
            if let Some(state) = old.get(&*info.user) {
                info.state = Arc::clone(state);
            }
        }
    }
}

pub type SharedKeys = Arc<ArcSwap<KeyTable>>;

pub struct KeyStore {
    path: PathBuf,
}

impl KeyStore {
    pub fn new(data_dir: &Path) -> KeyStore {
        KeyStore { path: data_dir.join(KEY_FILE) }
    }

    /// Creates a key for `user`; returns the key (shown once) and its id.
    pub fn create(&self, user: &str) -> std::io::Result<(String, String)> {
        self.create_with_limits(user, KeyLimits::default())
    }

    pub fn create_with_limits(&self, user: &str, limits: KeyLimits) -> std::io::Result<(String, String)> {
        self.create_key(user, limits, false)
    }

    /// Creates a key; with `registered_agents_only`, its calls must name a registered agent.
    pub fn create_key(
        &self,
        user: &str,
        limits: KeyLimits,
        registered_agents_only: bool,
    ) -> std::io::Result<(String, String)> {
        if user.trim().is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "user may not be empty"));
        }
        let key = generate_key();
        let id = format!("key_{}", random_base62(12));
        let event = KeyEvent::Create {
            id: id.clone(),
            user: user.to_string(),
            hash: to_hex(&hash_key(key.as_bytes())),
            prefix: key[..KEY_PREFIX.len() + 4].to_string(),
            created_at: now_rfc3339(),
            limits,
            registered_agents_only,
        };
        self.append(&event)?;
        Ok((key, id))
    }

    /// Revokes by key id or by the key itself. Returns false when no active key matched.
    pub fn revoke(&self, id_or_key: &str) -> std::io::Result<bool> {
        let listing = self.list()?;
        let id = if id_or_key.starts_with(KEY_PREFIX) {
            let ids = self.read_events()?.ids;
            ids.get(&hash_key(id_or_key.as_bytes())).cloned()
        } else {
            Some(id_or_key.to_string())
        };
        let Some(id) = id.filter(|id| listing.iter().any(|k| &k.id == id && !k.revoked)) else {
            return Ok(false);
        };
        self.append(&KeyEvent::Revoke { id, at: now_rfc3339() })?;
        Ok(true)
    }

    pub fn list(&self) -> std::io::Result<Vec<KeyListing>> {
        Ok(self.read_events()?.listing)
    }

    /// Registers `agent` for `user`, so that keys created with `registered_agents_only` may
    /// call with it. Returns false when it was already registered.
    pub fn register_agent(&self, user: &str, agent: &str) -> std::io::Result<bool> {
        if user.trim().is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "user may not be empty"));
        }
        if self.agents()?.iter().any(|a| a.user == user && a.agent == agent) {
            return Ok(false);
        }
        let event = KeyEvent::RegisterAgent { user: user.to_string(), agent: agent.to_string(), at: now_rfc3339() };
        self.append(&event)?;
        Ok(true)
    }

    /// Agents registered with `register_agent`, in registration order.
    pub fn agents(&self) -> std::io::Result<Vec<AgentRegistration>> {
        Ok(self.read_events()?.agents)
    }

    pub fn load(&self) -> std::io::Result<KeyTable> {
        let KeyFile { listing, ids, agents: registered } = self.read_events()?;
        let keys: HashMap<&str, &KeyListing> = listing.iter().map(|k| (k.id.as_str(), k)).collect();
        let mut states: HashMap<&str, Arc<UserState>> = HashMap::new();
        let mut by_hash = HashMap::new();
        for (hash, id) in ids {
            if let Some(k) = keys.get(id.as_str()).filter(|k| !k.revoked) {
                let state = states.entry(k.user.as_str()).or_default().clone();
                let info = KeyInfo {
                    id: id.as_str().into(),
                    user: k.user.as_str().into(),
                    overrides: k.limits,
                    state,
                    registered_agents_only: k.registered_agents_only,
                };
                by_hash.insert(hash, info);
            }
        }
        let mut agents: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        for r in registered {
            agents.entry(r.user).or_default().insert(r.agent);
        }
        Ok(KeyTable { by_hash, agents })
    }

    /// Size of the key file, used by the watcher to notice changes.
    fn version(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    fn read_events(&self) -> std::io::Result<KeyFile> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(KeyFile::default()),
            Err(e) => return Err(e),
        };
        let mut listing: Vec<KeyListing> = Vec::new();
        let mut ids = HashMap::new();
        let mut agents = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line?;
            // A line cut short by a crash mid-append is skipped, not fatal: every complete line
            // before and after it is still read.
            let Ok(event) = serde_json::from_str::<KeyEvent>(&line) else { continue };
            match event {
                KeyEvent::Create { id, user, hash, prefix, created_at, limits, registered_agents_only } => {
                    let Some(hash) = from_hex(&hash) else { continue };
                    ids.insert(hash, id.clone());
                    listing.push(KeyListing {
                        id,
                        user,
                        prefix,
                        created_at,
                        revoked: false,
                        limits,
                        registered_agents_only,
                    });
                }
                KeyEvent::RegisterAgent { user, agent, at } => agents.push(AgentRegistration { user, agent, at }),
                KeyEvent::Revoke { id, .. } => {
                    for k in listing.iter_mut().filter(|k| k.id == id) {
                        k.revoked = true;
                    }
                }
            }
        }
        Ok(KeyFile { listing, ids, agents })
    }

    fn append(&self, event: &KeyEvent) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        file.lock()?;
        let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        file.write_all(&line)?;
        file.sync_data()?;
        Ok(())
    }
}

/// Loads the table and starts a thread that reloads it when the key file changes, until `stop`.
pub fn watch_keys(
    store: KeyStore,
    stop: Arc<AtomicBool>,
) -> std::io::Result<(SharedKeys, std::thread::JoinHandle<()>)> {
    let mut seen = store.version();
    let shared: SharedKeys = Arc::new(ArcSwap::from_pointee(store.load()?));
    let table = shared.clone();
    let handle = std::thread::Builder::new().name("kurral-keys".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(RELOAD_INTERVAL);
            let now = store.version();
            if now != seen {
                match store.load() {
                    Ok(mut t) => {
                        t.adopt_states(&table.load());
                        tracing::info!(keys = t.len(), "key table reloaded");
                        table.store(Arc::new(t));
                        seen = now;
                    }
                    Err(e) => tracing::warn!("key file unreadable, keeping the current table: {e}"),
                }
            }
        }
    })?;
    Ok((shared, handle))
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_lookup_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        assert!(store.load().unwrap().is_empty());
        let (key, id) = store.create("alice").unwrap();
        let (key2, _) = store.create("bob").unwrap();
        let table = store.load().unwrap();
        assert_eq!(&*table.lookup(key.as_bytes()).unwrap().user, "alice");
        assert_eq!(&*table.lookup(key2.as_bytes()).unwrap().user, "bob");
        assert!(table.lookup(b"kr_live_nope").is_none());

        let file = std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
        assert!(!file.contains(&key), "the key itself is never stored");

        assert!(store.revoke(&id).unwrap());
        assert!(!store.revoke(&id).unwrap(), "already revoked");
        assert!(store.load().unwrap().lookup(key.as_bytes()).is_none());
        assert!(store.revoke(&key2).unwrap(), "revoke by the key itself");
        assert!(store.load().unwrap().is_empty());
        assert_eq!(store.list().unwrap().iter().filter(|k| k.revoked).count(), 2);
    }

    #[test]
    fn limits_and_state_survive_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let limits = KeyLimits { requests_per_minute: Some(5), ..KeyLimits::default() };
        let (a, _) = store.create_with_limits("dana", limits).unwrap();
        let (b, _) = store.create("dana").unwrap();
        let first = store.load().unwrap();
        let (ka, kb) = (first.lookup(a.as_bytes()).unwrap(), first.lookup(b.as_bytes()).unwrap());
        assert_eq!(ka.overrides, limits);
        assert_eq!(kb.overrides, KeyLimits::default());
        assert!(Arc::ptr_eq(&ka.state, &kb.state), "one state per user");
        let mut second = store.load().unwrap();
        second.adopt_states(&first);
        assert!(Arc::ptr_eq(&second.lookup(a.as_bytes()).unwrap().state, &ka.state));
        assert_eq!(store.list().unwrap()[0].limits, limits);
    }

    #[test]
    fn registered_agents_per_user() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (strict, _) = store.create_key("erin", KeyLimits::default(), true).unwrap();
        let (open, _) = store.create("erin").unwrap();
        assert!(store.register_agent("erin", "billing-bot").unwrap());
        assert!(!store.register_agent("erin", "billing-bot").unwrap(), "already registered");
        let table = store.load().unwrap();
        assert!(table.lookup(strict.as_bytes()).unwrap().registered_agents_only);
        assert!(!table.lookup(open.as_bytes()).unwrap().registered_agents_only);
        assert!(table.agent_registered("erin", b"billing-bot"));
        assert!(!table.agent_registered("erin", b"other-bot"));
        assert!(!table.agent_registered("frank", b"billing-bot"), "registrations are per user");
        assert!(store.list().unwrap()[0].registered_agents_only);
        assert_eq!(store.agents().unwrap()[0].agent, "billing-bot");
    }

    #[test]
    fn a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (a, _) = store.create("a").unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(KEY_FILE))
            .unwrap()
            .write_all(b"{\"op\":\"cre")
            .unwrap();
        let table = store.load().unwrap();
        assert!(table.lookup(a.as_bytes()).is_some());
    }

    #[test]
    fn watcher_sees_new_and_revoked_keys() {
        let dir = tempfile::tempdir().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, handle) = watch_keys(KeyStore::new(dir.path()), stop.clone()).unwrap();
        let (key, id) = KeyStore::new(dir.path()).create("carol").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while shared.load().lookup(key.as_bytes()).is_none() {
            assert!(std::time::Instant::now() < deadline, "new key never seen");
            std::thread::sleep(Duration::from_millis(20));
        }
        KeyStore::new(dir.path()).revoke(&id).unwrap();
        while shared.load().lookup(key.as_bytes()).is_some() {
            assert!(std::time::Instant::now() < deadline, "revocation never seen");
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        handle.join().unwrap();
    }
}
