//! The load bench: kurral-proxy side by side with a direct connection and with nginx as a plain
//! reverse proxy, all against one mock upstream that answers like OpenAI's chat completions, with
//! one load client, in one run.
//!
//! Run: `cargo bench --bench load` (builds the release proxy binary it measures; installs nginx
//! with apt-get when missing and run as root, else skips nginx). `KURRAL_BENCH_QUICK=1` is a
//! ~20 s smoke run. Prints the tables and writes `<target dir>/load-bench/latest.json` plus a
//! timestamped copy. Settings (environment):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `KURRAL_BENCH_QUICK` | unset | `1`: short windows, 1000 idle connections, to prove the harness runs |
//! | `KURRAL_BENCH_SECS` | 4 (quick 0.4) | measured seconds per target and load (up to 46 of them) |
//! | `KURRAL_BENCH_ROUNDS` | 4 (quick 1) | slices each measurement is cut into, interleaved across targets |
//! | `KURRAL_BENCH_WARMUP_SECS` | 0.2 (quick 0.1) | unmeasured seconds before each slice |
//! | `KURRAL_BENCH_CONNS` | 64 | closed-loop connections, non-streamed |
//! | `KURRAL_BENCH_SSE_CONNS` | 128 | closed-loop connections, streams |
//! | `KURRAL_BENCH_OPEN_FRACTIONS` | 0.5,0.1 | open-loop rates, as fractions of kurral's (capture on) saturation |
//! | `KURRAL_BENCH_SSE_EVENTS` | 20 | events per stream (then a usage chunk and `data: [DONE]`) |
//! | `KURRAL_BENCH_SSE_GAP_US` | 1000 | pace of the events |
//! | `KURRAL_BENCH_SSE_INCLUDE_USAGE` | 1 | `0`: streams do not ask for usage, so the proxy rewrites the request and filters the usage chunk |
//! | `KURRAL_BENCH_IDLE_CONNS` | 10000 (quick 1000) | idle keep-alive connections for the memory figure |
//! | `KURRAL_BENCH_WORKLOADS` | json,sse | which workloads run (`json` alone suits a profile of the non-streamed path) |
//! | `KURRAL_BENCH_TLS` | 1 | `0`: skip the upstream-TLS half |
//! | `KURRAL_BENCH_NGINX` | 1 | `0`: skip nginx |
//! | `KURRAL_BENCH_PROXY` | the bench's build | another kurral-proxy binary |
//! | `KURRAL_BENCH_OUT` | `<target dir>/load-bench` | where the JSON goes |
//!
//! Pinning (2 or more cores): the server under test (kurral-proxy, all its threads; or nginx,
//! master and worker) on core 0; this process (mock upstream thread and load client thread) on
//! core 1. Direct runs therefore have client and mock sharing core 1, as they do in every run.
//! Each run reports both cores' busy time and the client's and mock's own CPU, which shows
//! whether the load side, rather than the server, was the limit.

#[path = "load/client.rs"]
mod client;
#[path = "load/mock.rs"]
mod mock;
#[path = "load/procs.rs"]
mod procs;
#[path = "load/report.rs"]
mod report;
#[path = "load/sys.rs"]
mod sys;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use client::{Edge, Mode, Spec};
use procs::{Proc, ProxyOptions};
use report::{Memory, Pcts, Report, Run, Workload};

struct Settings {
    quick: bool,
    secs: f64,
    warmup: f64,
    rounds: usize,
    json_conns: usize,
    sse_conns: usize,
    open_fractions: Vec<f64>,
    sse_events: usize,
    sse_gap: Duration,
    include_usage: bool,
    workloads: Vec<Workload>,
    idle_conns: usize,
    tls: bool,
    nginx: bool,
    proxy_bin: PathBuf,
    out_dir: PathBuf,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v}: not a valid value")),
        Err(_) => default,
    }
}

fn env_flag(name: &str, default: bool) -> bool {
    match std::env::var(name) {
        Ok(v) => !matches!(v.trim(), "" | "0" | "false" | "no" | "off"),
        Err(_) => default,
    }
}

/// `KURRAL_BENCH_WORKLOADS`: a comma-separated subset of `json,sse`, in the bench's order.
fn workloads() -> Vec<Workload> {
    let Ok(list) = std::env::var("KURRAL_BENCH_WORKLOADS") else {
        return vec![Workload::Json, Workload::Sse];
    };
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    if let Some(bad) = names.iter().find(|n| !["json", "sse"].contains(n)) {
        panic!("KURRAL_BENCH_WORKLOADS={list}: unknown workload {bad:?} (json, sse)");
    }
    [Workload::Json, Workload::Sse].into_iter().filter(|w| names.contains(&w.name())).collect()
}

/// The cargo target dir: this binary is `<target>/<profile>/deps/load-<hash>`.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
}

impl Settings {
    fn from_env() -> Settings {
        let quick = env_flag("KURRAL_BENCH_QUICK", false) || std::env::args().any(|a| a == "--quick");
        Settings {
            quick,
            secs: env_or("KURRAL_BENCH_SECS", if quick { 0.4 } else { 4.0 }),
            warmup: env_or("KURRAL_BENCH_WARMUP_SECS", if quick { 0.1 } else { 0.2 }),
            rounds: env_or("KURRAL_BENCH_ROUNDS", if quick { 1usize } else { 4 }).max(1),
            json_conns: env_or("KURRAL_BENCH_CONNS", 64usize).max(1),
            sse_conns: env_or("KURRAL_BENCH_SSE_CONNS", 128usize).max(1),
            open_fractions: std::env::var("KURRAL_BENCH_OPEN_FRACTIONS")
                .unwrap_or_else(|_| "0.5,0.1".into())
                .split(',')
                .map(|f| f.trim().parse::<f64>().expect("KURRAL_BENCH_OPEN_FRACTIONS: numbers like 0.5,0.1"))
                .map(|f| f.clamp(0.01, 1.0))
                .collect(),
            sse_events: env_or("KURRAL_BENCH_SSE_EVENTS", 20usize).clamp(1, 10_000),
            sse_gap: Duration::from_micros(env_or("KURRAL_BENCH_SSE_GAP_US", 1000u64)),
            include_usage: env_flag("KURRAL_BENCH_SSE_INCLUDE_USAGE", true),
            workloads: workloads(),
            idle_conns: env_or("KURRAL_BENCH_IDLE_CONNS", if quick { 1000usize } else { 10_000 }),
            tls: env_flag("KURRAL_BENCH_TLS", true),
            nginx: env_flag("KURRAL_BENCH_NGINX", true),
            proxy_bin: std::env::var_os("KURRAL_BENCH_PROXY")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kurral-proxy"))),
            out_dir: std::env::var_os("KURRAL_BENCH_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|| target_dir().join("load-bench")),
        }
    }
}

/// The same request for every target; only the path (and Host) differ by where it goes.
fn request(addr: SocketAddr, path: &str, key: &str, w: Workload, include_usage: bool) -> Vec<u8> {
    let messages = r#"[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}]"#;
    let body = match w {
        Workload::Json => format!(r#"{{"model":"gpt-4o-mini","messages":{messages},"max_tokens":64}}"#),
        Workload::Sse if include_usage => format!(
            r#"{{"model":"gpt-4o-mini","messages":{messages},"max_tokens":64,"stream":true,"stream_options":{{"include_usage":true}}}}"#
        ),
        Workload::Sse => format!(r#"{{"model":"gpt-4o-mini","messages":{messages},"max_tokens":64,"stream":true}}"#),
    };
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: OpenAI/Python 1.54.0\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nAuthorization: Bearer sk-bench\r\nX-Kurral-API-Key: {key}\r\n\
         x-kurral-agent: bench-agent\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const PROXY_PATH: &str = "/api/proxy/openai/v1/chat/completions";
const DIRECT_PATH: &str = "/v1/chat/completions";

/// One thing the client sends to: where, what path, and the process whose CPU it costs.
struct Target<'a> {
    name: &'static str,
    addr: SocketAddr,
    path: &'static str,
    key: &'a str,
    server: Option<&'a Proc>,
}

/// One target's slices at one load, added up.
#[derive(Default)]
struct Tally {
    out: Option<client::Outcome>,
    server_ticks: u64,
    /// Per core: busy and total jiffies over the windows.
    busy: Vec<(u64, u64)>,
    mock_ns: u64,
    window: f64,
    /// Server threads by name: ticks over the windows.
    threads: Vec<(String, u64)>,
    failed: Option<String>,
}

struct Bench {
    s: Settings,
    mock_tid: i32,
    ticks: f64,
    report: Report,
}

impl Bench {
    fn sse_secs(&self) -> f64 {
        self.s.sse_gap.as_secs_f64() * self.s.sse_events as f64 + 0.001
    }

    fn conns(&self, w: Workload, rate: Option<f64>) -> usize {
        match (rate, w) {
            (None, Workload::Json) => self.s.json_conns,
            (None, Workload::Sse) => self.s.sse_conns,
            (Some(_), Workload::Json) => self.s.json_conns,
            // Enough connections that a stream never waits for one at the open-loop rate.
            (Some(r), Workload::Sse) => ((r * self.sse_secs() * 2.0) as usize + 16).clamp(64, 4096),
        }
    }

    /// One slice: warm-up, then a measured window with CPU sampled at its edges, added to `tally`.
    fn slice(&self, t: &Target, w: Workload, rate: Option<f64>, tally: &mut Tally) {
        let req = request(t.addr, t.path, t.key, w, self.s.include_usage);
        let spec = Spec {
            addr: t.addr,
            request: &req,
            conns: self.conns(w, rate),
            mode: rate.map_or(Mode::Closed, |rate| Mode::Open { rate }),
            warmup: Duration::from_secs_f64(self.s.warmup),
            measure: Duration::from_secs_f64(self.s.secs / self.s.rounds as f64),
            drain: Duration::from_secs(2) + self.s.sse_gap * self.s.sse_events as u32 * 4,
        };
        let (mut cpu0, mut cpu1, mut mock0, mut mock1) = (0u64, 0u64, 0u64, 0u64);
        let (mut cores0, mut cores1) = (Vec::new(), Vec::new());
        let (mut t0, mut t1) = (Instant::now(), Instant::now());
        let mock_tid = self.mock_tid;
        // Found once: scanning /proc for nginx's workers inside the window would stall the client.
        let pids = t.server.map(|p| p.pids()).unwrap_or_default();
        let (mut threads0, mut threads1) = (Vec::new(), Vec::new());
        let result = client::run(&spec, |edge| {
            let cpu: u64 = pids.iter().filter_map(|&p| sys::process_cpu_ticks(p)).sum();
            let mock = sys::thread_cpu_ns(mock_tid).unwrap_or(0);
            let threads: Vec<_> = pids.iter().flat_map(|&p| sys::thread_ticks(p)).collect();
            match edge {
                Edge::Start => {
                    (cpu0, cores0, mock0, t0, threads0) = (cpu, sys::core_times(), mock, Instant::now(), threads)
                }
                Edge::End => {
                    (cpu1, cores1, mock1, t1, threads1) = (cpu, sys::core_times(), mock, Instant::now(), threads)
                }
            }
        });
        let out = match result {
            Ok(o) => o,
            Err(e) => {
                tally.failed = Some(format!("client failed: {e}"));
                return;
            }
        };
        tally.window += (t1 - t0).as_secs_f64();
        tally.server_ticks += cpu1.saturating_sub(cpu0);
        tally.mock_ns += mock1.saturating_sub(mock0);
        tally.busy.resize(cores1.len().min(cores0.len()), (0, 0));
        for (acc, (a, b)) in tally.busy.iter_mut().zip(cores0.iter().zip(&cores1)) {
            acc.0 += b.0.saturating_sub(a.0);
            acc.1 += b.1.saturating_sub(a.1);
        }
        for (tid, name, ticks) in &threads1 {
            let before = threads0.iter().find(|(t, _, _)| t == tid).map_or(0, |x| x.2);
            let d = ticks.saturating_sub(before);
            match tally.threads.iter_mut().find(|(n, _)| n == name) {
                Some(e) => e.1 += d,
                None => tally.threads.push((name.clone(), d)),
            }
        }
        match tally.out.as_mut() {
            Some(acc) => acc.merge(out),
            None => tally.out = Some(out),
        }
    }

    /// Measures every target at the same load, in `rounds` interleaved slices (so that noise from
    /// other work on the machine falls on all of them alike); returns each target's throughput.
    fn compare(
        &mut self,
        upstream: &'static str,
        targets: &[&Target],
        w: Workload,
        open: Option<(f64, f64)>,
    ) -> Vec<f64> {
        let rate = open.map(|(r, _)| r);
        let mut tallies: Vec<Tally> = targets.iter().map(|_| Tally::default()).collect();
        for round in 0..self.s.rounds {
            for k in 0..targets.len() {
                let i = (k + round) % targets.len();
                if tallies[i].failed.is_none() {
                    self.slice(targets[i], w, rate, &mut tallies[i]);
                }
            }
        }
        let mut throughputs = Vec::new();
        for (t, tally) in targets.iter().zip(tallies) {
            let Some(out) = tally.out.filter(|_| tally.failed.is_none()) else {
                let msg =
                    format!("{upstream} {} {} ({rate:?}): {}", w.name(), t.name, tally.failed.unwrap_or_default());
                eprintln!("  {msg}");
                self.report.notes.push(msg);
                throughputs.push(0.0);
                continue;
            };
            let window = tally.window.max(1e-6);
            let server_cpu_s = tally.server_ticks as f64 / self.ticks;
            let mut threads: Vec<(String, f64)> =
                tally.threads.iter().map(|(n, d)| (n.clone(), *d as f64 / self.ticks / window)).collect();
            threads.retain(|(_, c)| *c >= 0.005);
            threads.sort_by(|a, b| b.1.total_cmp(&a.1));
            let run = Run {
                upstream,
                workload: w,
                target: t.name.to_string(),
                rate,
                fraction: open.map(|(_, f)| f),
                conns: self.conns(w, rate),
                throughput: out.throughput(),
                completed: out.completed,
                errors: out.errors,
                unfinished: out.unfinished,
                max_backlog: out.max_backlog,
                latency: Pcts::of(&out.latency),
                first_byte: Pcts::of(&out.first_byte),
                cpu_us_per_req: t
                    .server
                    .filter(|_| out.completed > 0)
                    .map(|_| server_cpu_s * 1e6 / out.completed as f64),
                server_cpu: t.server.map(|_| server_cpu_s / window),
                core_busy: tally.busy.iter().map(|&(b, total)| b as f64 / total.max(1) as f64).collect(),
                client_cpu: out.client_cpu_ns as f64 / 1e9 / window,
                mock_cpu: tally.mock_ns as f64 / 1e9 / window,
                threads,
            };
            let l = run.latency.unwrap_or_default();
            eprintln!(
                "  {:<5} {:<4} {:<17} {:>7} {:>9.0} req/s  p50 {:>8.1} µs  p99 {:>8.1} µs  cpu {:>6} µs/req  cores {}  errors {}  [{}]",
                upstream,
                w.name(),
                t.name,
                rate.map_or("closed".to_string(), |r| format!("@{r:.0}")),
                run.throughput,
                l.p50,
                l.p99,
                run.cpu_us_per_req.map_or("-".into(), |c| format!("{c:.1}")),
                run.core_busy.iter().map(|b| format!("{:.0}%", b * 100.0)).collect::<Vec<_>>().join("/"),
                run.errors + run.unfinished,
                run.threads.iter().take(4).map(|(n, c)| format!("{n} {:.0}%", c * 100.0)).collect::<Vec<_>>().join(", "),
            );
            throughputs.push(run.throughput);
            self.report.runs.push(run);
        }
        throughputs
    }

    /// RSS after load, then with `idle_conns` idle keep-alive connections held open.
    fn memory(&mut self, name: &str, p: &Proc, addr: SocketAddr, nofile: u64) {
        let n = self.s.idle_conns.min(nofile.saturating_sub(256) as usize);
        let rss_after_load_kib = p.rss_kib();
        let peak_kib = p.hwm_kib();
        let before = p.rss_kib();
        let req = procs::health_request(addr);
        let (socks, err) = client::open_idle(addr, n, &req, Instant::now() + Duration::from_secs(90));
        std::thread::sleep(Duration::from_millis(300));
        let after = p.rss_kib();
        eprintln!(
            "  memory {name}: {rss_after_load_kib} KiB after load; {} idle connections: {before} -> {after} KiB{}",
            socks.len(),
            err.as_ref().map_or(String::new(), |e| format!(" ({e})"))
        );
        self.report.memory.push(Memory {
            target: name.to_string(),
            rss_start_kib: p.rss_start_kib,
            rss_after_load_kib,
            peak_kib,
            idle_conns: socks.len(),
            idle_rss_before_kib: before,
            idle_rss_after_kib: after,
            idle_error: err,
        });
        drop(socks);
        // Let the server close its side before anything else is measured.
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn main() {
    let _guard = procs::Guard;
    procs::install_panic_hook();
    let s = Settings::from_env();
    client::self_check();
    let wall = Instant::now();
    let nofile = sys::raise_nofile();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (server_core, load_core) = if cores >= 2 { (Some(0), Some(1)) } else { (None, None) };
    let pinning = match load_core {
        Some(l) => {
            // Threads started from here on (the mock, stdout readers) inherit this.
            sys::set_affinity(0, &[l]).expect("pin the bench to its core");
            format!(
                "core 0: server under test (kurral-proxy: worker, capture writer and every other thread; nginx: master + worker); \
                 core {l}: this process (load client thread + mock upstream thread); {} other core(s) unused",
                cores - 2
            )
        }
        None => "1 core: nothing pinned (client, mock and server share it)".to_string(),
    };
    eprintln!("kurral-proxy load bench{}", if s.quick { " (quick)" } else { "" });
    eprintln!("pinning: {pinning}");
    eprintln!("open files: {nofile}; proxy binary: {}", s.proxy_bin.display());
    if !s.proxy_bin.exists() {
        panic!("{} not found (cargo bench --bench load builds it)", s.proxy_bin.display());
    }

    let tmp = tempfile::Builder::new().prefix("kurral-load-").tempdir().expect("temp dir");
    // A private copy: another build into the shared target dir must not swap the binary between
    // the proxy's starts in this run.
    let proxy_bin = tmp.path().join("kurral-proxy");
    std::fs::copy(&s.proxy_bin, &proxy_bin).expect("copy the proxy binary");
    let material = mock::tls_material();
    let ca_path = tmp.path().join("ca.pem");
    std::fs::write(&ca_path, &material.ca_pem).expect("write CA");
    let responses = mock::Responses::new(s.sse_events);
    let (json_body, sse_body) = (responses.json_body_bytes, responses.sse_body_bytes);
    let mock = mock::Mock::start(responses, s.sse_gap, material.config.clone());
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.tid.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "mock upstream: http://{} and https://{} (json body {json_body} B; sse {} events {:?} apart, {sse_body} B)",
        mock.plain, mock.tls, s.sse_events, s.sse_gap
    );

    // How busy the machine is before anything is measured: others' work shows here, and in every
    // run's "other" column.
    let before = sys::core_times();
    std::thread::sleep(Duration::from_millis(if s.quick { 300 } else { 1000 }));
    let idle_busy = sys::core_busy(&before, &sys::core_times());
    let idle_busy_text = idle_busy.iter().map(|b| format!("{:.0}%", b * 100.0)).collect::<Vec<_>>().join("/");
    eprintln!("machine busy before the runs (per core): {idle_busy_text}");
    let mut bench = Bench {
        mock_tid: mock.tid.load(Ordering::SeqCst),
        ticks: sys::clock_ticks_per_sec(),
        report: Report { runs: Vec::new(), memory: Vec::new(), notes: Vec::new() },
        s,
    };
    bench.report.notes.push(format!("pinning: {pinning}"));

    let no_capture = procs::has_no_capture(&proxy_bin);
    if !no_capture {
        let msg = "capture off: skipped (no --no-capture flag in this build)";
        eprintln!("{msg}");
        bench.report.notes.push(msg.into());
    }
    let mut nginx_version = String::new();
    let nginx = if bench.s.nginx {
        match procs::find_or_install_nginx().and_then(|bin| {
            procs::start_nginx(&bin, &tmp.path().join("nginx"), mock.plain, mock.tls, &ca_path, nofile, server_core)
        }) {
            Ok(n) => {
                nginx_version = n.version.clone();
                eprintln!("nginx {}: {} -> mock plain, {} -> mock TLS", n.version, n.plain, n.tls);
                Some(n)
            }
            Err(e) => {
                let msg = format!("nginx: skipped ({e})");
                eprintln!("{msg}");
                bench.report.notes.push(msg);
                None
            }
        }
    } else {
        bench.report.notes.push("nginx: skipped (KURRAL_BENCH_NGINX=0)".into());
        None
    };

    let direct = Target { name: "direct", addr: mock.plain, path: DIRECT_PATH, key: "kr_direct", server: None };
    let upstreams: &[&'static str] = if bench.s.tls { &["plain", "tls"] } else { &["plain"] };
    if !bench.s.tls {
        bench.report.notes.push("upstream TLS: skipped (KURRAL_BENCH_TLS=0)".into());
    }
    bench.report.notes.push(
        "added latency for the tls rows is measured against direct plain HTTP to the mock (the client speaks plain \
         HTTP to every target), so it includes the cost of the upstream TLS leg"
            .into(),
    );
    for &up in upstreams {
        let upstream_url = match up {
            "plain" => format!("http://{}", mock.plain),
            _ => format!("https://{}", mock.tls),
        };
        let ca = (up == "tls").then_some(ca_path.as_path());
        eprintln!("\n== upstream {up} ({upstream_url}) ==");
        let start = |capture: bool| {
            let dir = tmp.path().join(format!("proxy-{up}-{}", if capture { "capture" } else { "nocapture" }));
            let opts = ProxyOptions {
                bin: &proxy_bin,
                dir: &dir,
                upstream: upstream_url.clone(),
                ca,
                capture,
                core: server_core,
            };
            procs::start_proxy(&opts).map_err(|e| {
                format!("kurral-proxy{} (upstream {up}) did not start: {e}", if capture { "" } else { " --no-capture" })
            })
        };
        let proxy = match start(true) {
            Ok(p) => p,
            Err(msg) => {
                eprintln!("{msg}");
                bench.report.notes.push(msg);
                continue;
            }
        };
        // Both proxies run side by side (the idle one costs next to nothing) so that every target
        // can be measured in interleaved slices.
        let proxy_off = if no_capture {
            match start(false) {
                Ok(p) => Some(p),
                Err(msg) => {
                    eprintln!("{msg}");
                    bench.report.notes.push(msg);
                    None
                }
            }
        } else {
            None
        };
        let kurral =
            Target { name: "kurral", addr: proxy.addr, path: PROXY_PATH, key: &proxy.key, server: Some(&proxy.proc_) };
        let kurral_off = proxy_off.as_ref().map(|p| Target {
            name: "kurral-nocapture",
            addr: p.addr,
            path: PROXY_PATH,
            key: &p.key,
            server: Some(&p.proc_),
        });
        let nginx_t = nginx.as_ref().map(|n| Target {
            name: "nginx",
            addr: if up == "plain" { n.plain } else { n.tls },
            path: PROXY_PATH,
            key: "kr_unused",
            server: Some(&n.proc_),
        });
        let mut servers: Vec<&Target> = vec![&kurral];
        servers.extend(kurral_off.as_ref());
        servers.extend(nginx_t.as_ref());
        let mut closed = servers.clone();
        if up == "plain" {
            // Direct does not depend on the proxies' upstream, so its saturation is measured once.
            closed.push(&direct);
        }
        let workloads = bench.s.workloads.clone();
        let sat: Vec<f64> = workloads.iter().map(|&w| bench.compare(up, &closed, w, None)[0]).collect();
        let mut open = servers.clone();
        open.push(&direct);
        for f in bench.s.open_fractions.clone() {
            for (&w, &sat) in workloads.iter().zip(&sat) {
                let rate = (sat * f).round();
                if rate >= 1.0 {
                    bench.compare(up, &open, w, Some((rate, f)));
                }
            }
        }
        if up == "plain" {
            bench.memory("kurral", &proxy.proc_, proxy.addr, nofile);
        }
        proxy.proc_.stop();
        if let Some(p) = proxy_off {
            p.proc_.stop();
        }
    }
    if let Some(n) = nginx {
        bench.memory("nginx", &n.proc_, n.plain, nofile);
        n.proc_.stop();
    }
    drop(mock);

    let table = bench.report.table();
    println!("\n{table}");
    println!("Targets (issue 6):");
    for (what, ok, figure) in bench.report.verdicts() {
        let mark = match ok {
            Some(true) => "met   ",
            Some(false) => "MISSED",
            None => "(ref) ",
        };
        println!("  {mark} {what}: {figure}");
    }
    for n in &bench.report.notes {
        println!("note: {n}");
    }

    let now = SystemTime::now();
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let cpu_model = procs::read_small("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let git = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let s = &bench.s;
    let meta = json!({
        "time": stamp,
        "command": "cargo bench --bench load",
        "git": git,
        "machine": {
            "cores": cores,
            "cpu": cpu_model,
            "kernel": procs::read_small("/proc/sys/kernel/osrelease").trim(),
        },
        "pinning": pinning,
        "core_busy_before_runs": idle_busy.iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
        "nginx": nginx_version,
        "settings": {
            "quick": s.quick,
            "measure_secs": s.secs,
            "warmup_secs_per_slice": s.warmup,
            "rounds": s.rounds,
            "closed_conns_json": s.json_conns,
            "closed_conns_sse": s.sse_conns,
            "open_fractions": s.open_fractions,
            "sse_events": s.sse_events,
            "sse_gap_us": s.sse_gap.as_micros() as u64,
            "sse_include_usage": s.include_usage,
            "idle_conns": s.idle_conns,
            "json_body_bytes": json_body,
            "sse_body_bytes": sse_body,
            "capture_off_measured": no_capture,
        },
        "wall_secs": (wall.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    let doc = serde_json::to_string_pretty(&bench.report.to_json(meta)).expect("json");
    if let Err(e) = std::fs::create_dir_all(&s.out_dir) {
        eprintln!("cannot create {}: {e}", s.out_dir.display());
        return;
    }
    let latest = s.out_dir.join("latest.json");
    let stamped = s.out_dir.join(format!("load-{}.json", stamp.replace(':', "")));
    for p in [&latest, &stamped] {
        if let Err(e) = std::fs::write(p, &doc) {
            eprintln!("write {}: {e}", p.display());
        }
    }
    println!("\nJSON: {} (and {})", latest.display(), stamped.display());
    println!("wall time: {:.0} s", wall.elapsed().as_secs_f64());
    // For CI: the harness failed if kurral-proxy could not be measured or answered wrongly.
    let kurral_runs = bench.report.runs.iter().filter(|r| r.target == "kurral").count();
    let broken: Vec<String> = bench
        .report
        .runs
        .iter()
        .filter(|r| r.errors > 0 || (r.rate.is_none() && r.completed == 0))
        .map(|r| {
            format!(
                "{} {} {} ({} errors, {} completed)",
                r.upstream,
                r.workload.name(),
                r.target,
                r.errors,
                r.completed
            )
        })
        .collect();
    if kurral_runs == 0 || !broken.is_empty() {
        eprintln!("load bench FAILED: {kurral_runs} kurral runs; broken runs: {}", broken.join("; "));
        drop(tmp);
        drop(_guard);
        std::process::exit(1);
    }
}
