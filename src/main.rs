//! `kurral-proxy`: command-line entry. Each subcommand is a few lines over the library.

use std::process::ExitCode;

use clap::Parser;
use kurral_proxy::auth::{KeyLimits, KeyStore};
use kurral_proxy::capture::store::Store;
use kurral_proxy::cli::{CallsCommand, Cli, Command, KeysCommand, ServeArgs};
use kurral_proxy::{config, server};

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
    tracing::info!(records = stats.written.load(std::sync::atomic::Ordering::Relaxed), "captures flushed; bye");
    Ok(())
}

fn keys(cmd: KeysCommand) -> Result<(), String> {
    match cmd {
        KeysCommand::Create { user, requests_per_minute, max_concurrent, dir } => {
            let limits = KeyLimits { requests_per_minute, max_concurrent };
            let (key, id) =
                KeyStore::new(&dir.data_dir).create_with_limits(&user, limits).map_err(|e| e.to_string())?;
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
                    "{:<18} {:<20} {:<14} {:<26} {:<8} {:<8} STATUS",
                    "ID", "USER", "PREFIX", "CREATED", "RPM", "CONC"
                );
                let or_default = |v: Option<u32>| v.map_or_else(|| "default".to_string(), |n| n.to_string());
                for k in &list {
                    let status = if k.revoked { "revoked" } else { "active" };
                    let (rpm, conc) = (or_default(k.limits.requests_per_minute), or_default(k.limits.max_concurrent));
                    println!(
                        "{:<18} {:<20} {:<14} {:<26} {rpm:<8} {conc:<8} {status}",
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
