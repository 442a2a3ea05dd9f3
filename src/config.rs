//! Raw settings (flags, env, config file) resolved once into a validated `Config`.
//!
//! Precedence: flags beat env (clap resolves those two), env beats the file, the file beats the
//! defaults. Every limit is a named constant here with the reason for its default.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::capture::{Durability, Expiry, ExpiryScope};
use crate::cli::ServeArgs;
use crate::provider::Provider;
use crate::upstream::UpstreamUrl;

/// Largest request head (request line and fields). SDK heads are under 2 KiB; 32 KiB leaves room
/// for long cookies or tracing headers and bounds the memory a slow client can pin.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Longest request-target; the seed's paths are under 120 bytes, a Gemini `?key=` adds ~50.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;
/// The seed's documented request body limit (10 MB).
pub const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// The seed's documented request timeout: request start to last response byte from upstream.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// TCP connect plus TLS handshake to an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A request head must arrive completely within this time of its first byte (absolute, so a
/// client trickling bytes cannot hold a connection: slowloris).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// An idle keep-alive connection is closed after this long without a new request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// A client that accepts no bytes for this long is dropped, so it cannot pin an upstream stream.
pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time given to in-flight calls on SIGTERM/SIGINT before the process exits anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// The seed's documented per-user rate limit.
pub const REQUESTS_PER_MINUTE: u32 = 60;
/// The seed's documented per-user concurrency limit.
pub const MAX_CONCURRENT: u32 = 10;
/// An upstream must start answering (send its response head) within this time of the request
/// having been sent; the request timeout still bounds the whole call.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(120);
/// Records waiting for the writer thread; past this a connection waits (it never drops one).
pub const CAPTURE_CHANNEL_CAPACITY: usize = 16 * 1024;
/// Under retention `full`, each of the request and response bodies is kept up to this size (and
/// marked truncated past it): 1 MiB holds any ordinary conversation and bounds a record's size.
pub const MAX_CONTENT_BYTES: usize = 1024 * 1024;

/// What the capture path keeps and how it prices.
#[derive(Debug, Clone)]
pub struct CaptureSettings {
    /// Cap on each body kept under retention `full`.
    pub max_content_bytes: usize,
    /// Ask OpenAI for stream usage the client did not ask for, and hide it from the client.
    pub openai_stream_usage: bool,
    /// A price file to use instead of the shipped `pricing.json`.
    pub pricing_file: Option<PathBuf>,
    /// Whether each written batch is fsynced (see `capture::writer`).
    pub durability: Durability,
    /// Retention in time: content or whole calls older than this are removed while running.
    pub expiry: Option<Expiry>,
    /// Write records to the store (false: discard them, `--no-capture`).
    pub store: bool,
    /// Scan every call for security findings (`--no-scan`, `[security] scan = false`: off).
    pub scan: bool,
    /// Block requests with findings for every key (`--block-findings`, `[security] block`).
    pub block_findings: bool,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        CaptureSettings {
            max_content_bytes: MAX_CONTENT_BYTES,
            openai_stream_usage: true,
            pricing_file: None,
            durability: Durability::default(),
            expiry: None,
            store: true,
            scan: true,
            block_findings: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverChoice {
    Auto,
    Uring,
    Epoll,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_target_bytes: usize,
    pub max_body_bytes: u64,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub head_timeout: Duration,
    pub idle_timeout: Duration,
    pub client_write_timeout: Duration,
    pub first_byte_timeout: Duration,
    /// Calls per user per minute (0: unlimited); a key may set its own.
    pub requests_per_minute: u32,
    /// Calls in flight per user (0: unlimited); a key may set its own.
    pub max_concurrent: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: MAX_HEAD_BYTES,
            max_target_bytes: MAX_TARGET_BYTES,
            max_body_bytes: MAX_BODY_BYTES,
            request_timeout: REQUEST_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
            head_timeout: HEAD_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            client_write_timeout: CLIENT_WRITE_TIMEOUT,
            first_byte_timeout: FIRST_BYTE_TIMEOUT,
            requests_per_minute: REQUESTS_PER_MINUTE,
            max_concurrent: MAX_CONCURRENT,
        }
    }
}

/// The resolved configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub workers: usize,
    /// Indexed by `Provider::index()`.
    pub upstreams: [UpstreamUrl; 3],
    pub upstream_ca: Option<PathBuf>,
    pub driver: DriverChoice,
    pub limits: Limits,
    pub shutdown_grace: Duration,
    pub capture_channel_capacity: usize,
    pub capture: CaptureSettings,
}

impl Config {
    pub fn upstream(&self, p: Provider) -> &UpstreamUrl {
        &self.upstreams[p.index()]
    }

    /// A configuration for tests and embedding: defaults, the given data dir, loopback port 0.
    pub fn for_data_dir(data_dir: &Path) -> Config {
        resolve_with_env(
            ServeArgs { listen: Some("127.0.0.1:0".into()), data_dir: Some(data_dir.into()), ..Default::default() },
            &|_| None,
        )
        .expect("defaults are valid")
    }
}

/// The config file's shape. Every field optional; unknown fields are an error so typos show.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    workers: Option<usize>,
    upstream_ca: Option<PathBuf>,
    driver: Option<String>,
    #[serde(default)]
    upstream: FileUpstreams,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    capture: FileCapture,
    #[serde(default)]
    security: FileSecurity,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSecurity {
    scan: Option<bool>,
    block_findings: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCapture {
    max_content_bytes: Option<usize>,
    openai_stream_usage: Option<bool>,
    pricing_file: Option<PathBuf>,
    durability: Option<String>,
    retention_days: Option<u32>,
    retention_removes: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstreams {
    openai: Option<String>,
    anthropic: Option<String>,
    google: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_head_bytes: Option<usize>,
    max_target_bytes: Option<usize>,
    max_body_bytes: Option<u64>,
    request_timeout_secs: Option<u64>,
    connect_timeout_secs: Option<u64>,
    head_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    client_write_timeout_secs: Option<u64>,
    first_byte_timeout_secs: Option<u64>,
    requests_per_minute: Option<u32>,
    max_concurrent: Option<u32>,
    shutdown_grace_secs: Option<u64>,
}

pub fn resolve(args: ServeArgs) -> Result<Config, String> {
    resolve_with_env(args, &|name| std::env::var(name).ok())
}

fn resolve_with_env(args: ServeArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("config file {}: {e}", path.display()))?;
            toml::from_str::<FileConfig>(&text).map_err(|e| format!("config file {}: {e}", path.display()))?
        }
        None => FileConfig::default(),
    };

    let listen_text = args.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:8080".into());
    let listen = listen_text
        .to_socket_addrs()
        .map_err(|e| format!("--listen {listen_text}: {e}"))?
        .next()
        .ok_or_else(|| format!("--listen {listen_text}: no address"))?;

    let workers =
        args.workers.or(file.workers).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if workers == 0 || workers > 1024 {
        return Err(format!("--workers must be between 1 and 1024, got {workers}"));
    }

    // Upstreams: flag, then env, then file, then the provider's real API.
    let mut from_flags: [Option<String>; 3] = Default::default();
    for spec in &args.upstreams {
        let (name, url) = spec.split_once('=').ok_or_else(|| format!("--upstream expects NAME=URL, got {spec}"))?;
        let p = Provider::from_name(name)
            .ok_or_else(|| format!("--upstream: unknown provider {name} (openai, anthropic, google)"))?;
        from_flags[p.index()] = Some(url.to_string());
    }
    let from_file = [file.upstream.openai, file.upstream.anthropic, file.upstream.google];
    let mut upstreams = Vec::with_capacity(3);
    for p in Provider::ALL {
        let env_name = format!("KURRAL_UPSTREAM_{}", p.name().to_ascii_uppercase());
        let url = from_flags[p.index()]
            .clone()
            .or_else(|| env(&env_name))
            .or_else(|| from_file[p.index()].clone())
            .unwrap_or_else(|| p.default_upstream().to_string());
        upstreams.push(UpstreamUrl::parse(&url).map_err(|e| format!("{} upstream: {e}", p.name()))?);
    }
    let upstreams: [UpstreamUrl; 3] = upstreams.try_into().expect("three providers");

    let driver = match args.driver.or(file.driver).as_deref() {
        None | Some("auto") => DriverChoice::Auto,
        Some("uring") | Some("io_uring") => DriverChoice::Uring,
        Some("epoll") | Some("legacy") => DriverChoice::Epoll,
        Some(other) => return Err(format!("--driver must be auto, uring or epoll, got {other}")),
    };

    let d = Limits::default();
    let fl = file.limits;
    let secs = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_secs);
    let limits = Limits {
        max_head_bytes: fl.max_head_bytes.unwrap_or(d.max_head_bytes),
        max_target_bytes: fl.max_target_bytes.unwrap_or(d.max_target_bytes),
        max_body_bytes: args.max_body_bytes.or(fl.max_body_bytes).unwrap_or(d.max_body_bytes),
        request_timeout: secs(args.request_timeout_secs.or(fl.request_timeout_secs), d.request_timeout),
        connect_timeout: secs(fl.connect_timeout_secs, d.connect_timeout),
        head_timeout: secs(fl.head_timeout_secs, d.head_timeout),
        idle_timeout: secs(fl.idle_timeout_secs, d.idle_timeout),
        client_write_timeout: secs(fl.client_write_timeout_secs, d.client_write_timeout),
        first_byte_timeout: secs(fl.first_byte_timeout_secs, d.first_byte_timeout),
        requests_per_minute: args.requests_per_minute.or(fl.requests_per_minute).unwrap_or(d.requests_per_minute),
        max_concurrent: args.max_concurrent.or(fl.max_concurrent).unwrap_or(d.max_concurrent),
    };
    if limits.max_head_bytes < 1024 {
        return Err("max_head_bytes must be at least 1024".into());
    }
    if limits.request_timeout.is_zero() {
        return Err("request timeout must be at least one second".into());
    }

    let durability_text = args.durability.or(file.capture.durability);
    let durability = match durability_text.as_deref() {
        None => Durability::default(),
        Some(d) => Durability::parse(d).ok_or_else(|| format!("--durability must be sync or async, got {d}"))?,
    };
    let scope = match args.retention_removes.or(file.capture.retention_removes).as_deref() {
        None => ExpiryScope::Content,
        Some(s) => {
            ExpiryScope::parse(s).ok_or_else(|| format!("--retention-removes must be content or records, got {s}"))?
        }
    };
    let expiry = match args.retention_days.or(file.capture.retention_days) {
        None | Some(0) => None,
        Some(days) => Some(Expiry { after: Duration::from_secs(u64::from(days) * 86_400), scope }),
    };

    Ok(Config {
        listen,
        data_dir: args.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("./data")),
        workers,
        upstreams,
        upstream_ca: args.upstream_ca.or(file.upstream_ca),
        driver,
        limits,
        shutdown_grace: secs(args.shutdown_grace_secs.or(fl.shutdown_grace_secs), SHUTDOWN_GRACE),
        capture_channel_capacity: CAPTURE_CHANNEL_CAPACITY,
        capture: CaptureSettings {
            max_content_bytes: file.capture.max_content_bytes.unwrap_or(MAX_CONTENT_BYTES),
            openai_stream_usage: file.capture.openai_stream_usage.unwrap_or(true),
            pricing_file: args.pricing.or(file.capture.pricing_file),
            durability,
            expiry,
            store: !args.no_capture,
            scan: !args.no_scan && file.security.scan.unwrap_or(true),
            block_findings: args.block_findings || file.security.block_findings.unwrap_or(false),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs::default()
    }

    #[test]
    fn defaults_are_the_real_providers() {
        let c = resolve_with_env(args(), &|_| None).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.upstream(Provider::OpenAi).to_string(), "https://api.openai.com");
        assert_eq!(c.upstream(Provider::Google).authority, "generativelanguage.googleapis.com");
        assert_eq!(c.limits.max_body_bytes, MAX_BODY_BYTES);
        assert_eq!(c.limits.request_timeout, Duration::from_secs(120));
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.toml");
        std::fs::write(
            &file,
            "workers = 3\n[upstream]\nopenai = \"http://file:1\"\nanthropic = \"http://file:2\"\ngoogle = \"http://file:3\"\n",
        )
        .unwrap();
        let a = ServeArgs { config: Some(file), upstreams: vec!["openai=http://flag:9".into()], ..args() };
        let env = |n: &str| (n == "KURRAL_UPSTREAM_ANTHROPIC").then(|| "http://env:8".to_string());
        let c = resolve_with_env(a, &env).unwrap();
        assert_eq!(c.workers, 3);
        assert_eq!(c.upstream(Provider::OpenAi).to_string(), "http://flag:9");
        assert_eq!(c.upstream(Provider::Anthropic).to_string(), "http://env:8");
        assert_eq!(c.upstream(Provider::Google).to_string(), "http://file:3");
    }

    #[test]
    fn durability_and_retention() {
        let c = resolve_with_env(args(), &|_| None).unwrap();
        assert_eq!((c.capture.durability, c.capture.expiry), (Durability::Async, None));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.toml");
        std::fs::write(&file, "[capture]\ndurability = \"sync\"\nretention_days = 30\n").unwrap();
        let c = resolve_with_env(ServeArgs { config: Some(file.clone()), ..args() }, &|_| None).unwrap();
        assert_eq!(c.capture.durability, Durability::Sync);
        let month = Duration::from_secs(30 * 86_400);
        assert_eq!(c.capture.expiry, Some(Expiry { after: month, scope: ExpiryScope::Content }));
        let a = ServeArgs {
            config: Some(file),
            durability: Some("async".into()),
            retention_removes: Some("records".into()),
            ..args()
        };
        let c = resolve_with_env(a, &|_| None).unwrap();
        assert_eq!(c.capture.durability, Durability::Async, "the flag beats the file");
        assert_eq!(c.capture.expiry.unwrap().scope, ExpiryScope::Records);
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = [
            ServeArgs { upstreams: vec!["azure=http://x".into()], ..args() },
            ServeArgs { upstreams: vec!["openai".into()], ..args() },
            ServeArgs { workers: Some(0), ..args() },
            ServeArgs { driver: Some("kqueue".into()), ..args() },
            ServeArgs { listen: Some("nowhere".into()), ..args() },
            ServeArgs { durability: Some("fsync".into()), ..args() },
            ServeArgs { retention_days: Some(3), retention_removes: Some("all".into()), ..args() },
        ];
        for a in bad {
            assert!(resolve_with_env(a, &|_| None).is_err());
        }
    }
}
