//! The command line as the user typed it (raw settings). `config` resolves `ServeArgs` into a
//! validated `Config`; nothing else reads these structs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "kurral-proxy", version, about = "LLM observability proxy for OpenAI, Anthropic and Gemini")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy.
    Serve(ServeArgs),
    /// Create, list and revoke Kurral API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Read recorded calls.
    #[command(subcommand)]
    Calls(CallsCommand),
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KURRAL_LISTEN")]
    pub listen: Option<String>,
    /// Directory for keys and the capture store.
    #[arg(long, env = "KURRAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long, env = "KURRAL_WORKERS")]
    pub workers: Option<usize>,
    /// Upstream base URL for a provider, as NAME=URL (openai, anthropic, google). Repeatable.
    /// Env: KURRAL_UPSTREAM_OPENAI, KURRAL_UPSTREAM_ANTHROPIC, KURRAL_UPSTREAM_GOOGLE.
    #[arg(long = "upstream", value_name = "NAME=URL")]
    pub upstreams: Vec<String>,
    /// A PEM file of CA certificates trusted for upstream TLS, in addition to the web roots.
    #[arg(long, env = "KURRAL_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, env = "KURRAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// I/O driver: auto (io_uring when the kernel allows it, else epoll), uring, or epoll.
    #[arg(long, env = "KURRAL_DRIVER")]
    pub driver: Option<String>,
    /// Largest request body accepted, in bytes (default 10 MiB).
    #[arg(long, env = "KURRAL_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Seconds a call may take upstream, from request to last response byte (default 120).
    #[arg(long, env = "KURRAL_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Calls per user per minute before 429 (default 60; 0 for no limit). Keys may override.
    #[arg(long, env = "KURRAL_REQUESTS_PER_MINUTE")]
    pub requests_per_minute: Option<u32>,
    /// Calls in flight per user before 429 (default 10; 0 for no limit). Keys may override.
    #[arg(long, env = "KURRAL_MAX_CONCURRENT")]
    pub max_concurrent: Option<u32>,
    /// A price file (the shape of the shipped pricing.json) to use instead of the shipped one.
    #[arg(long, env = "KURRAL_PRICING")]
    pub pricing: Option<PathBuf>,
    /// Seconds to let in-flight calls finish on SIGTERM/SIGINT (default 30).
    #[arg(long, env = "KURRAL_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
}

#[derive(Args, Debug)]
pub struct DataDirArg {
    /// Directory for keys and the capture store.
    #[arg(long, env = "KURRAL_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; prints the new kr_live_ key alone on stdout. Only its hash is stored.
    Create {
        /// The user the key belongs to.
        #[arg(long)]
        user: String,
        /// This key's calls per minute (default: the server's, 60).
        #[arg(long)]
        requests_per_minute: Option<u32>,
        /// This key's calls in flight (default: the server's, 10).
        #[arg(long)]
        max_concurrent: Option<u32>,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// List keys (id, user, prefix, created, revoked); never the key itself.
    List {
        #[command(flatten)]
        dir: DataDirArg,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id (from `keys list`) or by the key itself.
    Revoke {
        /// Key id (`key_...`) or full key (`kr_live_...`).
        key: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum CallsCommand {
    /// List recorded calls, oldest first. Works while a server holds the data dir.
    List {
        #[command(flatten)]
        dir: DataDirArg,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// At most this many calls (the newest).
        #[arg(long)]
        limit: Option<usize>,
    },
}
