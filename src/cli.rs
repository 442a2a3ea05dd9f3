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
    /// Read agents and their totals.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Read sessions: an agent's, newest first, or one with its calls.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Read security findings (secrets, personal data, prompt injection, risky tool calls).
    #[command(subcommand)]
    Findings(FindingsCommand),
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
    /// Capture durability: `sync` fsyncs every written batch (a machine crash loses only
    /// records not yet written); `async` (default) writes without fsync (a process crash loses
    /// nothing written, a machine crash may lose the last seconds).
    #[arg(long, env = "KURRAL_DURABILITY", value_name = "sync|async")]
    pub durability: Option<String>,
    /// Discard records instead of encoding and storing them (usage and cost are still read):
    /// for measuring what capture costs. The read API then answers 503.
    #[arg(long, env = "KURRAL_NO_CAPTURE")]
    pub no_capture: bool,
    /// Remove captured data of calls older than N days (within a minute), while running (0: keep
    /// everything).
    #[arg(long, env = "KURRAL_RETENTION_DAYS", value_name = "N")]
    pub retention_days: Option<u32>,
    /// What --retention-days removes: `content` (request, response, tools; the default) or
    /// `records` (whole calls; session and agent totals keep counting them).
    #[arg(long, env = "KURRAL_RETENTION_REMOVES", value_name = "content|records")]
    pub retention_removes: Option<String>,
    /// Do not scan calls for secrets, personal data, prompt injection and risky tool calls.
    #[arg(long, env = "KURRAL_NO_SCAN")]
    pub no_scan: bool,
    /// Refuse (403, nothing sent upstream) every request whose prompt carries a secret or a
    /// high-severity injection marker, whatever the key; keys can also ask it one by one
    /// (`keys create --block-findings`).
    #[arg(long, env = "KURRAL_BLOCK_FINDINGS")]
    pub block_findings: bool,
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
        /// Calls with this key must name an agent registered beforehand (`agents register`);
        /// others get 403.
        #[arg(long)]
        registered_agents_only: bool,
        /// Refuse (403, nothing sent upstream) this key's requests whose prompt carries a
        /// secret or a high-severity injection marker. The request body is then read whole
        /// and scanned before the upstream is contacted.
        #[arg(long)]
        block_findings: bool,
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

/// Whose data a read command shows. The command line reads the data dir directly, as its
/// operator: every user's data unless `--user` narrows it (the HTTP read API, by contrast, shows
/// a key only its own user's data).
#[derive(Args, Debug)]
pub struct ReadScope {
    #[command(flatten)]
    pub dir: DataDirArg,
    /// Only this user's data (default: every user's).
    #[arg(long)]
    pub user: Option<String>,
    /// JSON (the read API's shapes) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum AgentsCommand {
    /// List agents (registered on their first call, or by `agents register`) with sessions,
    /// calls, errors, tokens and cost. Works while a server holds the data dir.
    List {
        #[command(flatten)]
        scope: ReadScope,
    },
    /// Register an agent for a user ahead of its first call, for keys created with
    /// --registered-agents-only. A running server sees it within a second.
    Register {
        /// The agent (the x-kurral-agent value).
        agent: String,
        /// The user the agent belongs to.
        #[arg(long)]
        user: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum FindingsCommand {
    /// List findings, newest sessions first: kind, severity, where, a masked excerpt. Works
    /// while a server holds the data dir.
    List {
        /// Only this agent's calls.
        #[arg(long)]
        agent: Option<String>,
        /// Only this session's calls.
        #[arg(long)]
        session: Option<String>,
        /// Only findings of at least this severity: low, medium or high.
        #[arg(long, default_value = "low")]
        min_severity: String,
        /// At most this many findings.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        scope: ReadScope,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// List an agent's sessions, newest started first. Works while a server holds the data dir.
    List {
        /// The agent (the x-kurral-agent value).
        #[arg(long)]
        agent: String,
        /// Only sessions of this env: production, staging or development.
        #[arg(long)]
        env: Option<String>,
        /// At most this many sessions.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        scope: ReadScope,
    },
    /// Show a session's totals and its calls, oldest first. Works while a server holds the data
    /// dir.
    Show {
        /// The session id (x-kurral-session-id).
        session_id: String,
        #[command(flatten)]
        scope: ReadScope,
    },
}
