//! `kurral-proxy`: command-line entry. Each subcommand is a few lines over the library.

use std::process::ExitCode;

use clap::Parser;
use kurral_proxy::api::json;
use kurral_proxy::auth::headers::{MAX_AGENT_LEN, MIN_AGENT_LEN};
use kurral_proxy::auth::{KeyLimits, KeyStore};
use kurral_proxy::capture::findings::FindingQuery;
use kurral_proxy::capture::layout::rfc3339_ms;
use kurral_proxy::capture::store::Store;
use kurral_proxy::capture::summary::{AgentSummary, SessionSummary};
use kurral_proxy::capture::Env;
use kurral_proxy::cli::{
    AgentsCommand, CallsCommand, Cli, Command, FindingsCommand, KeysCommand, ReadScope, ServeArgs, SessionsCommand,
};
use kurral_proxy::scan::Severity;
use kurral_proxy::{config, server};

/// jemalloc for every Rust allocation of the binary: see its entry in `Cargo.toml` for why.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KURRAL_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Keys(cmd) => keys(cmd),
        Command::Calls(cmd) => calls(cmd),
        Command::Agents(cmd) => agents(cmd),
        Command::Sessions(cmd) => sessions(cmd),
        Command::Findings(cmd) => findings(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kurral-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let config = config::resolve(args)?;
    let upstreams: Vec<String> =
        config.upstreams.iter().zip(["openai", "anthropic", "google"]).map(|(u, n)| format!("{n}={u}")).collect();
    let handle = server::start(config.clone())?;
    let keys = KeyStore::new(&config.data_dir);
    if keys.list().map_err(|e| format!("key file: {e}"))?.is_empty() {
        // First start on an empty data dir: one key, shown once, so the proxy is usable at once.
        let (key, id) = keys.create("default").map_err(|e| format!("key file: {e}"))?;
        handle.reload_keys().map_err(|e| format!("key file: {e}"))?;
        eprintln!("Created the first Kurral API key ({id}, user \"default\"). It is shown only this once:");
        println!("{key}");
    }
    tracing::info!(
        addr = %handle.addr,
        workers = config.workers,
        driver = ?handle.driver,
        data_dir = %config.data_dir.display(),
        upstreams = %upstreams.join(" "),
        "kurral-proxy listening"
    );
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
        .map_err(|e| format!("signal handler: {e}"))?;
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down: no new connections, finishing calls in flight");
    }
    let stats = handle.capture_stats().clone();
    handle.shutdown();
    let count = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        records = count(&stats.written),
        batches = count(&stats.batches),
        full_waits = count(&stats.full_waits),
        write_errors = count(&stats.write_errors),
        "captures flushed; bye"
    );
    Ok(())
}

fn keys(cmd: KeysCommand) -> Result<(), String> {
    match cmd {
        KeysCommand::Create {
            user,
            requests_per_minute,
            max_concurrent,
            registered_agents_only,
            block_findings,
            dir,
        } => {
            let limits = KeyLimits { requests_per_minute, max_concurrent, block_findings };
            let (key, id) = KeyStore::new(&dir.data_dir)
                .create_key(&user, limits, registered_agents_only)
                .map_err(|e| e.to_string())?;
            eprintln!("Created key {id} for user \"{user}\". Store it now: it is not shown again.");
            println!("{key}");
        }
        KeysCommand::List { dir, json } => {
            let list = KeyStore::new(&dir.data_dir).list().map_err(|e| e.to_string())?;
            if json {
                for k in &list {
                    println!("{}", serde_json::to_string(k).expect("serializable"));
                }
            } else {
                println!(
                    "{:<18} {:<20} {:<14} {:<26} {:<8} {:<8} {:<11} {:<6} STATUS",
                    "ID", "USER", "PREFIX", "CREATED", "RPM", "CONC", "AGENTS", "BLOCK"
                );
                let or_default = |v: Option<u32>| v.map_or_else(|| "default".to_string(), |n| n.to_string());
                for k in &list {
                    let status = if k.revoked { "revoked" } else { "active" };
                    let (rpm, conc) = (or_default(k.limits.requests_per_minute), or_default(k.limits.max_concurrent));
                    let agents = if k.registered_agents_only { "registered" } else { "any" };
                    let block = if k.limits.block_findings { "yes" } else { "no" };
                    println!(
                        "{:<18} {:<20} {:<14} {:<26} {rpm:<8} {conc:<8} {agents:<11} {block:<6} {status}",
                        k.id, k.user, k.prefix, k.created_at
                    );
                }
            }
        }
        KeysCommand::Revoke { key, dir } => {
            if !KeyStore::new(&dir.data_dir).revoke(&key).map_err(|e| e.to_string())? {
                return Err(format!(
                    "no active key matches {}",
                    if key.starts_with("kr_") { "the given key" } else { &key }
                ));
            }
            eprintln!("revoked");
        }
    }
    Ok(())
}

fn calls(cmd: CallsCommand) -> Result<(), String> {
    match cmd {
        CallsCommand::List { dir, json, limit } => {
            if !Store::exists(&dir.data_dir) {
                return Ok(());
            }
            let mut calls = Store::open_read_only(&dir.data_dir)?.calls()?;
            if let Some(limit) = limit {
                calls.drain(..calls.len().saturating_sub(limit));
            }
            if json {
                for c in &calls {
                    println!("{}", serde_json::to_string(c).expect("serializable"));
                }
            } else {
                println!(
                    "{:<36} {:<24} {:<10} {:<22} {:<24} {:>6} {:>10}",
                    "ID", "STARTED", "PROVIDER", "ENDPOINT", "MODEL", "STATUS", "LATENCY"
                );
                for c in &calls {
                    println!(
                        "{:<36} {:<24} {:<10} {:<22} {:<24} {:>6} {:>8.1}ms",
                        c.id,
                        c.started_at,
                        c.provider,
                        c.endpoint,
                        c.model.as_deref().unwrap_or("-"),
                        c.status,
                        c.latency_ms
                    );
                }
            }
        }
    }
    Ok(())
}

/// Opens the store read-only (a running server may hold it), or `None` when nothing was ever
/// recorded in this data dir.
fn read_store(scope: &ReadScope) -> Result<Option<Store>, String> {
    if !Store::exists(&scope.dir.data_dir) {
        return Ok(None);
    }
    Store::open_read_only(&scope.dir.data_dir).map(Some)
}

/// The users a read command covers: the one given, or every user with recorded calls.
fn scope_users(store: &Store, scope: &ReadScope) -> Result<Vec<String>, String> {
    match &scope.user {
        Some(u) => Ok(vec![u.clone()]),
        None => store.users(),
    }
}

/// A read API object with the user it belongs to (the local operator sees every user's data).
fn with_user(mut v: serde_json::Value, user: &str) -> serde_json::Value {
    v["user"] = user.into();
    v
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

/// `12.3456` for a table: cents are not enough for per-call LLM costs.
fn usd(t: &kurral_proxy::capture::summary::Totals) -> String {
    let mut s = format!("{:.6}", t.cost.to_f64());
    if t.unpriced_calls > 0 {
        s.push('+');
    }
    s
}

fn agents(cmd: AgentsCommand) -> Result<(), String> {
    let scope = match cmd {
        AgentsCommand::List { scope } => scope,
        AgentsCommand::Register { agent, user, dir } => {
            let valid = agent.len() >= MIN_AGENT_LEN
                && agent.len() <= MAX_AGENT_LEN
                && agent.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
            if !valid || agent.trim() != agent {
                return Err(format!(
                    "an agent is {MIN_AGENT_LEN} to {MAX_AGENT_LEN} printable ASCII characters, not {agent:?}"
                ));
            }
            let added = KeyStore::new(&dir.data_dir).register_agent(&user, &agent).map_err(|e| e.to_string())?;
            eprintln!("{}", if added { "registered" } else { "already registered" });
            return Ok(());
        }
    };
    let store = read_store(&scope)?;
    let mut rows: Vec<(String, AgentSummary)> = Vec::new();
    if let Some(store) = &store {
        for user in scope_users(store, &scope)? {
            rows.extend(store.agents(&user)?.into_iter().map(|a| (user.clone(), a)));
        }
    }
    // Registered agents that have not called yet: listed with nothing counted.
    let registrations = KeyStore::new(&scope.dir.data_dir).agents().map_err(|e| format!("key file: {e}"))?;
    for r in registrations {
        let in_scope = scope.user.as_ref().is_none_or(|u| *u == r.user);
        if in_scope && !rows.iter().any(|(u, a)| *u == r.user && a.agent == r.agent) {
            let ms = humantime::parse_rfc3339_weak(&r.at)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            rows.push((r.user, AgentSummary::new(&r.agent, ms)));
        }
    }
    rows.sort_by(|a, b| (&a.0, &a.1.agent).cmp(&(&b.0, &b.1.agent)));
    if scope.json {
        let list: Vec<serde_json::Value> = rows.iter().map(|(user, a)| with_user(a.to_json(), user)).collect();
        print_json(&serde_json::json!({ "agents": list }));
        return Ok(());
    }
    println!(
        "{:<16} {:<28} {:>8} {:>8} {:>6} {:>12} {:>12} {:>12}  {:<24} LAST SEEN",
        "USER", "AGENT", "SESSIONS", "CALLS", "ERRORS", "INPUT TOK", "OUTPUT TOK", "COST USD", "FIRST SEEN"
    );
    for (user, a) in &rows {
        let t = &a.totals;
        println!(
            "{:<16} {:<28} {:>8} {:>8} {:>6} {:>12} {:>12} {:>12}  {:<24} {}",
            user,
            a.agent,
            a.sessions,
            t.calls,
            t.errors,
            t.input_tokens,
            t.output_tokens,
            usd(t),
            rfc3339_ms(a.first_ms),
            rfc3339_ms(a.last_ms)
        );
    }
    if rows.iter().any(|(_, a)| a.totals.unpriced_calls > 0) {
        eprintln!("+: some calls used a model the price table does not know; their cost is not included");
    }
    Ok(())
}

fn session_row(user: &str, s: &SessionSummary) {
    let t = &s.totals;
    println!(
        "{:<16} {:<36} {:<12} {:<24} {:<24} {:>6} {:>6} {:>10} {:>10} {:>12}",
        user,
        s.session_id,
        serde_json::to_value(s.env).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
        rfc3339_ms(s.started_ms),
        rfc3339_ms(s.last_ms),
        t.calls,
        t.errors,
        t.input_tokens,
        t.output_tokens,
        usd(t)
    );
}

fn session_header() {
    println!(
        "{:<16} {:<36} {:<12} {:<24} {:<24} {:>6} {:>6} {:>10} {:>10} {:>12}",
        "USER", "SESSION", "ENV", "STARTED", "LAST", "CALLS", "ERRORS", "INPUT", "OUTPUT", "COST USD"
    );
}

fn sessions(cmd: SessionsCommand) -> Result<(), String> {
    match cmd {
        SessionsCommand::List { agent, env, limit, scope } => {
            let env = match env.as_deref() {
                None => None,
                Some(e) => Some(
                    Env::parse(e.as_bytes())
                        .ok_or_else(|| format!("--env must be production, staging or development, got {e}"))?,
                ),
            };
            let store = read_store(&scope)?;
            let mut rows: Vec<(String, SessionSummary)> = Vec::new();
            if let Some(store) = &store {
                // Each user's list is newest first; merge them and keep the newest `limit`.
                for user in scope_users(store, &scope)? {
                    let page = store.sessions(&user, &agent, env, limit, None)?;
                    rows.extend(page.items.into_iter().map(|s| (user.clone(), s)));
                }
            }
            rows.sort_by_key(|(_, s)| std::cmp::Reverse(s.started_ms));
            rows.truncate(limit);
            if scope.json {
                let list: Vec<serde_json::Value> = rows.iter().map(|(user, s)| with_user(s.to_json(), user)).collect();
                print_json(&serde_json::json!({ "sessions": list }));
                return Ok(());
            }
            session_header();
            for (user, s) in &rows {
                session_row(user, s);
            }
        }
        SessionsCommand::Show { session_id, scope } => {
            let store = read_store(&scope)?;
            let mut found = Vec::new();
            if let Some(store) = &store {
                for user in scope_users(store, &scope)? {
                    if let Some(s) = store.session(&user, &session_id)? {
                        let mut calls = Vec::new();
                        let mut after = None;
                        loop {
                            let page = store.session_calls(&user, &session_id, 1000, after.as_deref())?;
                            calls.extend(page.items);
                            match page.next {
                                Some(n) => after = Some(n),
                                None => break,
                            }
                        }
                        found.push((user, s, calls));
                    }
                }
            }
            if found.is_empty() {
                return Err(format!("no session {session_id}"));
            }
            for (user, s, calls) in &found {
                if scope.json {
                    let mut v = with_user(json::session(s, calls, None), user);
                    v.as_object_mut().map(|o| o.remove("next_cursor"));
                    print_json(&v);
                    continue;
                }
                session_header();
                session_row(user, s);
                println!();
                println!(
                    "{:<36} {:<24} {:<20} {:<10} {:<22} {:<24} {:>6} {:<15} {:>10} {:>8} {:>8} {:>12}",
                    "CALL",
                    "STARTED",
                    "AGENT",
                    "PROVIDER",
                    "ENDPOINT",
                    "MODEL",
                    "STATUS",
                    "OUTCOME",
                    "LATENCY",
                    "INPUT",
                    "OUTPUT",
                    "COST USD"
                );
                for c in calls {
                    let usage = c.usage.unwrap_or_default();
                    let tokens = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |n| n.to_string());
                    println!(
                        "{:<36} {:<24} {:<20} {:<10} {:<22} {:<24} {:>6} {:<15} {:>8.1}ms {:>8} {:>8} {:>12}",
                        c.id,
                        c.started_at,
                        c.agent,
                        c.provider,
                        c.endpoint,
                        c.model.as_deref().unwrap_or("-"),
                        c.status,
                        serde_json::to_value(c.outcome)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        c.latency_ms,
                        tokens(usage.input_tokens),
                        tokens(usage.output_tokens),
                        c.cost_usd.map_or_else(|| "-".to_string(), |v| format!("{v:.6}"))
                    );
                }
            }
        }
    }
    Ok(())
}

fn findings(cmd: FindingsCommand) -> Result<(), String> {
    let FindingsCommand::List { agent, session, min_severity, limit, scope } = cmd;
    let min_severity = match min_severity.as_str() {
        "low" => Severity::Low,
        "medium" => Severity::Medium,
        "high" => Severity::High,
        other => return Err(format!("--min-severity must be low, medium or high, got {other}")),
    };
    let store = read_store(&scope)?;
    let mut rows = Vec::new();
    if let Some(store) = &store {
        for user in scope_users(store, &scope)? {
            let q =
                FindingQuery { user: &user, agent: agent.as_deref(), session: session.as_deref(), min_severity, limit };
            rows.extend(kurral_proxy::capture::findings::list(store, &q)?);
        }
    }
    rows.sort_by(|a, b| b.started_at.cmp(&a.started_at));
    rows.truncate(limit);
    if scope.json {
        print_json(&serde_json::json!({ "findings": rows }));
        return Ok(());
    }
    println!(
        "{:<24} {:<20} {:<36} {:<8} {:<22} {:<18} EXCERPT",
        "STARTED", "AGENT", "CALL", "SEVERITY", "KIND", "WHERE"
    );
    for r in &rows {
        let f = &r.finding;
        let at = match f.index {
            Some(i) => format!("{} {i}", f.location.name()),
            None => f.location.name().to_string(),
        };
        println!(
            "{:<24} {:<20} {:<36} {:<8} {:<22} {:<18} {}",
            r.started_at,
            r.agent,
            r.call_id,
            f.severity.name(),
            f.kind.name(),
            at,
            f.excerpt
        );
    }
    Ok(())
}
