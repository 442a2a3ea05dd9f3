//! What one measured run found, the side-by-side tables, and the JSON written for comparing runs.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Json,
    Sse,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Json => "json",
            Workload::Sse => "sse",
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pcts {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Pcts {
    pub fn of(h: &Histogram<u64>) -> Option<Pcts> {
        if h.is_empty() {
            return None;
        }
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Some(Pcts { p50: us(0.5), p99: us(0.99), p999: us(0.999), max: h.max() as f64 / 1000.0 })
    }

    fn minus(&self, base: &Pcts) -> Pcts {
        Pcts {
            p50: self.p50 - base.p50,
            p99: self.p99 - base.p99,
            p999: self.p999 - base.p999,
            max: self.max - base.max,
        }
    }

    fn to_json(self) -> Value {
        json!({"p50_us": r1(self.p50), "p99_us": r1(self.p99), "p999_us": r1(self.p999), "max_us": r1(self.max)})
    }
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub struct Run {
    /// "plain" or "tls": how the proxy under test reaches the mock.
    pub upstream: &'static str,
    pub workload: Workload,
    pub target: String,
    /// None: closed loop.
    pub rate: Option<f64>,
    /// Open loop: the rate as a fraction of kurral's (capture on) saturation.
    pub fraction: Option<f64>,
    pub conns: usize,
    pub throughput: f64,
    pub completed: u64,
    pub errors: u64,
    pub unfinished: u64,
    pub max_backlog: u64,
    pub latency: Option<Pcts>,
    pub first_byte: Option<Pcts>,
    /// CPU seconds of the process under test (all its threads and processes) per request.
    pub cpu_us_per_req: Option<f64>,
    /// Its CPU time over the window, as a fraction of one core.
    pub server_cpu: Option<f64>,
    pub core_busy: Vec<f64>,
    pub client_cpu: f64,
    pub mock_cpu: f64,
    /// CPU of the server's threads by thread name, as fractions of a core, busiest first.
    pub threads: Vec<(String, f64)>,
}

impl Run {
    /// CPU on the machine that is neither the server, the client nor the mock (other tenants,
    /// softirq work accounted to no task), in cores.
    pub fn other_cpu(&self) -> f64 {
        let busy: f64 = self.core_busy.iter().sum();
        (busy - self.server_cpu.unwrap_or(0.0) - self.client_cpu - self.mock_cpu).max(0.0)
    }

    /// Marks for a figure to read with care: L = the load core was nearly full, so a closed-loop
    /// figure may be the load side's limit; N = other work took a quarter core or more.
    pub fn flags(&self) -> String {
        let mut f = String::new();
        if self.rate.is_none() && self.core_busy.get(1).is_some_and(|&b| b >= 0.90) {
            f.push('L');
        }
        if self.other_cpu() >= 0.25 {
            f.push('N');
        }
        f
    }
}

pub struct Memory {
    pub target: String,
    pub rss_start_kib: u64,
    pub rss_after_load_kib: u64,
    pub peak_kib: u64,
    pub idle_conns: usize,
    pub idle_rss_before_kib: u64,
    pub idle_rss_after_kib: u64,
    pub idle_error: Option<String>,
}

impl Memory {
    pub fn per_conn_bytes(&self) -> Option<f64> {
        (self.idle_conns > 0).then(|| {
            (self.idle_rss_after_kib as f64 - self.idle_rss_before_kib as f64) * 1024.0 / self.idle_conns as f64
        })
    }
}

pub struct Report {
    pub runs: Vec<Run>,
    pub memory: Vec<Memory>,
    pub notes: Vec<String>,
}

fn opt(x: Option<f64>, prec: usize) -> String {
    x.map_or("-".into(), |v| format!("{v:.prec$}"))
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

impl Report {
    fn direct_open(&self, upstream: &str, w: Workload, fraction: Option<f64>) -> Option<&Run> {
        self.open(upstream, w, "direct", fraction?)
    }

    pub fn closed(&self, upstream: &str, w: Workload, target: &str) -> Option<&Run> {
        self.runs.iter().find(|r| r.rate.is_none() && r.upstream == upstream && r.workload == w && r.target == target)
    }

    pub fn open(&self, upstream: &str, w: Workload, target: &str, fraction: f64) -> Option<&Run> {
        self.runs
            .iter()
            .find(|r| r.fraction == Some(fraction) && r.upstream == upstream && r.workload == w && r.target == target)
    }

    /// Added latency and added first byte of an open-loop run, against direct at the same rate.
    pub fn added(&self, r: &Run) -> (Option<Pcts>, Option<Pcts>) {
        let Some(d) = self.direct_open(r.upstream, r.workload, r.fraction) else { return (None, None) };
        let lat = r.latency.zip(d.latency).map(|(a, b)| a.minus(&b));
        let fb = match r.workload {
            Workload::Sse => r.first_byte.zip(d.first_byte).map(|(a, b)| a.minus(&b)),
            Workload::Json => None,
        };
        (lat, fb)
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str("Saturation (closed loop; cpu = utime+stime of the server process(es) per request)\n");
        s.push_str(&format!(
            "{:<6} {:<5} {:<18} {:>6} {:>10} {:>8} {:>8} {:>7} {:>6} {:>6} {:>7} {:>6} {:>6} {:>7} {:>5}\n",
            "up",
            "load",
            "target",
            "conns",
            "req/s",
            "vs nginx",
            "cpu µs",
            "server",
            "core0",
            "core1",
            "client",
            "mock",
            "other",
            "errors",
            "flags"
        ));
        for r in self.runs.iter().filter(|r| r.rate.is_none()) {
            let vs = self.closed(r.upstream, r.workload, "nginx").map(|n| r.throughput / n.throughput.max(1e-9));
            s.push_str(&format!(
                "{:<6} {:<5} {:<18} {:>6} {:>10.0} {:>8} {:>8} {:>7} {:>6} {:>6} {:>7} {:>6} {:>6} {:>7} {:>5}\n",
                r.upstream,
                r.workload.name(),
                r.target,
                r.conns,
                r.throughput,
                opt(vs, 2),
                opt(r.cpu_us_per_req, 1),
                r.server_cpu.map_or("-".into(), pct),
                r.core_busy.first().map_or("-".into(), |&x| pct(x)),
                r.core_busy.get(1).map_or("-".into(), |&x| pct(x)),
                pct(r.client_cpu),
                pct(r.mock_cpu),
                pct(r.other_cpu()),
                r.errors + r.unfinished,
                r.flags(),
            ));
        }
        s.push_str("flags: L = load core (client + mock) at 90% or more: the figure may be the load side's limit; N = other work on the machine took 25% of a core or more\n");
        s.push_str(
            "\nOpen loop (fixed rate; latency from the intended send time, corrected for coordinated omission; µs;\n\
             added = this target's percentile minus direct's at the same rate; fb = first body byte, the SSE time to first token)\n",
        );
        s.push_str(&format!(
            "{:<6} {:<5} {:<18} {:>4} {:>7} {:>7} {:>8} {:>8} {:>8} | {:>7} {:>7} {:>7} | {:>7} {:>7} | {:>7} {:>7} {:>7} | {:>7} {:>6} {:>5}\n",
            "up",
            "load",
            "target",
            "frac",
            "rate",
            "got/s",
            "p50",
            "p99",
            "p99.9",
            "+p50",
            "+p99",
            "+p99.9",
            "fb p50",
            "fb p99",
            "+fb p50",
            "+fb p99",
            "+fb 99.9",
            "cpu µs",
            "errors",
            "flags"
        ));
        for r in self.runs.iter().filter(|r| r.rate.is_some()) {
            let (added, added_fb) = self.added(r);
            let l = r.latency.unwrap_or_default();
            let fb = r.first_byte.filter(|_| r.workload == Workload::Sse);
            s.push_str(&format!(
                "{:<6} {:<5} {:<18} {:>4} {:>7.0} {:>7.0} {:>8.1} {:>8.1} {:>8.1} | {:>7} {:>7} {:>7} | {:>7} {:>7} | {:>7} {:>7} {:>7} | {:>7} {:>6} {:>5}\n",
                r.upstream,
                r.workload.name(),
                r.target,
                r.fraction.map_or("-".into(), |f| format!("{f}")),
                r.rate.unwrap_or(0.0),
                r.throughput,
                l.p50,
                l.p99,
                l.p999,
                opt(added.map(|a| a.p50).filter(|_| r.target != "direct"), 1),
                opt(added.map(|a| a.p99).filter(|_| r.target != "direct"), 1),
                opt(added.map(|a| a.p999).filter(|_| r.target != "direct"), 1),
                opt(fb.map(|f| f.p50), 1),
                opt(fb.map(|f| f.p99), 1),
                opt(added_fb.map(|a| a.p50).filter(|_| r.target != "direct"), 1),
                opt(added_fb.map(|a| a.p99).filter(|_| r.target != "direct"), 1),
                opt(added_fb.map(|a| a.p999).filter(|_| r.target != "direct"), 1),
                opt(r.cpu_us_per_req, 1),
                r.errors + r.unfinished,
                r.flags(),
            ));
        }
        s.push_str("\nWhere kurral-proxy's CPU goes (threads, share of a core over the window)\n");
        for r in self.runs.iter().filter(|r| r.target.starts_with("kurral")) {
            s.push_str(&format!(
                "{:<6} {:<5} {:<18} {:>7}  {}\n",
                r.upstream,
                r.workload.name(),
                r.target,
                r.rate.map_or("closed".into(), |x| format!("@{x:.0}")),
                r.threads.iter().map(|(n, c)| format!("{n} {:.0}%", c * 100.0)).collect::<Vec<_>>().join(", ")
            ));
        }
        s.push_str(
            "\nMemory (VmRSS; idle = keep-alive connections that each made one GET /api/proxy/health and stay open)\n",
        );
        s.push_str(&format!(
            "{:<18} {:>12} {:>12} {:>10} {:>8} {:>12} {:>12} {:>14}\n",
            "target", "at start", "after load", "peak", "idle", "RSS before", "RSS with", "per idle conn"
        ));
        for m in &self.memory {
            s.push_str(&format!(
                "{:<18} {:>8} KiB {:>8} KiB {:>6} KiB {:>8} {:>8} KiB {:>8} KiB {:>14}\n",
                m.target,
                m.rss_start_kib,
                m.rss_after_load_kib,
                m.peak_kib,
                m.idle_conns,
                m.idle_rss_before_kib,
                m.idle_rss_after_kib,
                m.per_conn_bytes().map_or("-".into(), |b| format!("{:.1} KiB", b / 1024.0)),
            ));
            if let Some(e) = &m.idle_error {
                s.push_str(&format!("  ({}: {e})\n", m.target));
            }
        }
        s
    }

    /// The targets against this run's figures.
    pub fn verdicts(&self) -> Vec<(String, Option<bool>, String)> {
        let mut out = Vec::new();
        for up in ["plain", "tls"] {
            for w in [Workload::Json, Workload::Sse] {
                if let (Some(k), Some(n)) = (self.closed(up, w, "kurral"), self.closed(up, w, "nginx")) {
                    let ratio = k.throughput / n.throughput.max(1e-9);
                    out.push((
                        format!("throughput >= nginx, capture on ({up}, {})", w.name()),
                        Some(ratio >= 1.0),
                        format!("{:.0} vs {:.0} req/s = {:.2}x", k.throughput, n.throughput, ratio),
                    ));
                }
                if let (Some(on), Some(off)) = (self.closed(up, w, "kurral"), self.closed(up, w, "kurral-nocapture")) {
                    let cost = 1.0 - on.throughput / off.throughput.max(1e-9);
                    out.push((
                        format!("capture costs <= 10% throughput ({up}, {})", w.name()),
                        Some(cost <= 0.10),
                        format!(
                            "{:.0} on vs {:.0} off req/s = {:.1}% less",
                            on.throughput,
                            off.throughput,
                            cost * 100.0
                        ),
                    ));
                }
                if let Some(k) = self.open(up, w, "kurral", 0.5) {
                    let (added, added_fb) = self.added(k);
                    // nginx at the same rate pays the same cross-core hops that direct does not, so
                    // its added latency is the floor this machine puts under any proxy.
                    let n = self.open(up, w, "nginx", 0.5);
                    let (n_added, n_added_fb) = n.map_or((None, None), |n| self.added(n));
                    let vs_nginx = |b: Option<f64>| b.map_or(String::new(), |b| format!(" (nginx {b:.1} µs)"));
                    if let Some(a) = added.filter(|_| w == Workload::Json) {
                        out.push((
                            format!("added p99 <= 100 µs at half saturation ({up}, {})", w.name()),
                            Some(a.p99 <= 100.0),
                            format!(
                                "{:.1} µs at {:.0} req/s{}",
                                a.p99,
                                k.rate.unwrap_or(0.0),
                                vs_nginx(n_added.map(|x| x.p99))
                            ),
                        ));
                    }
                    if let Some(a) = added_fb {
                        out.push((
                            format!("added TTFT p99 <= 50 µs ({up}, sse)"),
                            Some(a.p99 <= 50.0),
                            format!(
                                "{:.1} µs at {:.0} req/s{}",
                                a.p99,
                                k.rate.unwrap_or(0.0),
                                vs_nginx(n_added_fb.map(|x| x.p99))
                            ),
                        ));
                    }
                }
            }
        }
        for m in self.memory.iter() {
            if let Some(b) = m.per_conn_bytes() {
                out.push((
                    format!("<= 16 KiB per idle keep-alive connection ({})", m.target),
                    if m.target.starts_with("kurral") { Some(b <= 16.0 * 1024.0) } else { None },
                    format!("{:.1} KiB over {} connections", b / 1024.0, m.idle_conns),
                ));
            }
        }
        out
    }

    pub fn to_json(&self, meta: Value) -> Value {
        let runs: Vec<Value> = self
            .runs
            .iter()
            .map(|r| {
                let (added, added_fb) = self.added(r);
                json!({
                    "upstream": r.upstream,
                    "workload": r.workload.name(),
                    "target": r.target,
                    "loop": if r.rate.is_some() { "open" } else { "closed" },
                    "rate": r.rate.map(|x| x.round()),
                    "fraction_of_kurral_saturation": r.fraction,
                    "connections": r.conns,
                    "throughput_rps": r1(r.throughput),
                    "completed": r.completed,
                    "errors": r.errors,
                    "unfinished": r.unfinished,
                    "max_backlog": r.max_backlog,
                    "latency": r.latency.map(Pcts::to_json),
                    "first_byte": r.first_byte.filter(|_| r.workload == Workload::Sse).map(Pcts::to_json),
                    "added_latency": added.filter(|_| r.target != "direct").map(Pcts::to_json),
                    "added_first_byte": added_fb.filter(|_| r.target != "direct").map(Pcts::to_json),
                    "server_cpu_us_per_request": r.cpu_us_per_req.map(r1),
                    "server_cpu_cores": r.server_cpu.map(|x| (x * 1000.0).round() / 1000.0),
                    "core_busy": r.core_busy.iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
                    "client_thread_cpu": (r.client_cpu * 1000.0).round() / 1000.0,
                    "mock_thread_cpu": (r.mock_cpu * 1000.0).round() / 1000.0,
                    "other_cpu": (r.other_cpu() * 1000.0).round() / 1000.0,
                    "flags": r.flags(),
                    "server_threads_cpu": r.threads.iter().map(|(n, c)| json!({"thread": n, "cores": (c * 1000.0).round() / 1000.0})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let memory: Vec<Value> = self
            .memory
            .iter()
            .map(|m| {
                json!({
                    "target": m.target,
                    "rss_start_kib": m.rss_start_kib,
                    "rss_after_load_kib": m.rss_after_load_kib,
                    "peak_rss_kib": m.peak_kib,
                    "idle_connections": m.idle_conns,
                    "idle_rss_before_kib": m.idle_rss_before_kib,
                    "idle_rss_with_kib": m.idle_rss_after_kib,
                    "bytes_per_idle_connection": m.per_conn_bytes().map(|b| b.round()),
                    "idle_error": m.idle_error,
                })
            })
            .collect();
        let verdicts: Vec<Value> = self
            .verdicts()
            .into_iter()
            .map(|(what, ok, figure)| json!({"target": what, "met": ok, "figure": figure}))
            .collect();
        json!({"meta": meta, "runs": runs, "memory": memory, "targets": verdicts, "notes": self.notes})
    }
}
