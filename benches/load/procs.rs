//! The processes under test: kurral-proxy and nginx, each started as a child pinned to its core,
//! with a parent-death signal so that nothing outlives the bench, and a registry the panic hook
//! and the guard in `main` use to kill whatever is still running.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client;
use crate::sys;

static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Kills every child still registered (SIGKILL); used by the panic hook and the exit guard.
pub fn kill_all() {
    let pids: Vec<u32> = LIVE.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default();
    for pid in pids {
        for child in sys::children_of(pid) {
            unsafe { libc::kill(child as libc::pid_t, libc::SIGKILL) };
        }
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// Runs `kill_all` when dropped: on normal exit and while unwinding from a panic.
pub struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        kill_all();
    }
}

pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        kill_all();
        previous(info);
    }));
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// One running child under test.
pub struct Proc {
    pub name: String,
    /// VmRSS once it answered its first health check, before any load.
    pub rss_start_kib: u64,
    child: Child,
    /// Signal that asks it to stop cleanly.
    stop_signal: libc::c_int,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process and its direct children (nginx's workers).
    pub fn pids(&self) -> Vec<u32> {
        let mut v = vec![self.pid()];
        v.extend(sys::children_of(self.pid()));
        v
    }

    pub fn rss_kib(&self) -> u64 {
        self.pids().into_iter().filter_map(|p| sys::status_kib(p, "VmRSS")).sum()
    }

    pub fn hwm_kib(&self) -> u64 {
        self.pids().into_iter().filter_map(|p| sys::status_kib(p, "VmHWM")).sum()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops it: its stop signal, up to 5 s, then SIGKILL for it and its children.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let pid = self.pid();
        let children = sys::children_of(pid);
        unsafe { libc::kill(pid as libc::pid_t, self.stop_signal) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for c in children {
            unsafe { libc::kill(c as libc::pid_t, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(mut l) = LIVE.lock() {
            l.retain(|&p| p != pid);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.halt();
        }
    }
}

/// Spawns `cmd` on `core` (when given) with `death` sent to it if this process dies.
fn spawn(mut cmd: Command, name: &str, core: Option<usize>, death: libc::c_int, stop: libc::c_int) -> Proc {
    unsafe {
        cmd.pre_exec(move || {
            if let Some(c) = core {
                sys::set_affinity(0, &[c])?;
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, death as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
    LIVE.lock().unwrap().push(child.id());
    Proc { name: name.to_string(), rss_start_kib: 0, child, stop_signal: stop }
}

/// Waits until `GET /api/proxy/health` answers 200, or the deadline.
fn wait_healthy(addr: SocketAddr, proc_: &mut Proc, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let req = health_request(addr);
    while Instant::now() < deadline {
        if !proc_.alive() {
            return Err(format!("{} exited", proc_.name));
        }
        let (socks, err) = client::open_idle(addr, 1, &req, deadline);
        if err.is_none() && socks.len() == 1 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{} did not answer on {addr} within {within:?}", proc_.name))
}

pub fn health_request(addr: SocketAddr) -> Vec<u8> {
    format!("GET /api/proxy/health HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes()
}

fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// kurral-proxy

pub struct Proxy {
    pub proc_: Proc,
    pub addr: SocketAddr,
    pub key: String,
}

/// Whether this build of the proxy has `serve --no-capture`.
pub fn has_no_capture(bin: &Path) -> bool {
    Command::new(bin)
        .args(["serve", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--no-capture"))
        .unwrap_or(false)
}

pub struct ProxyOptions<'a> {
    pub bin: &'a Path,
    pub dir: &'a Path,
    pub upstream: String,
    pub ca: Option<&'a Path>,
    pub capture: bool,
    pub core: Option<usize>,
}

pub fn start_proxy(o: &ProxyOptions) -> Result<Proxy, String> {
    std::fs::create_dir_all(o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;
    let data = o.dir.join("data");
    let log = o.dir.join("proxy.log");
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut cmd = Command::new(o.bin);
    // Settings come from these flags alone, never from the caller's environment.
    for (k, _) in std::env::vars() {
        if k.starts_with("KURRAL_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["serve", "--listen", &addr.to_string(), "--workers", "1"])
        .arg("--data-dir")
        .arg(&data)
        .args(["--upstream", &format!("openai={}", o.upstream)])
        .args(["--requests-per-minute", "0", "--max-concurrent", "0"]);
    if let Some(ca) = o.ca {
        cmd.arg("--upstream-ca").arg(ca);
    }
    if !o.capture {
        cmd.arg("--no-capture");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?);
    let name = format!("kurral-proxy ({})", if o.capture { "capture on" } else { "capture off" });
    let mut proc_ = spawn(cmd, &name, o.core, libc::SIGKILL, libc::SIGTERM);
    // The first start on an empty data dir prints the new key alone on stdout.
    let stdout = proc_.child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        for _ in 0..1000 {
            line.clear();
            if !matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                return;
            }
            if line.trim().starts_with("kr_") {
                let _ = tx.send(line.trim().to_string());
                break;
            }
        }
        // Keep draining so the child never blocks on a full pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let key = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| format!("{name} printed no key within 60 s; log:\n{}", tail(&log)))?;
    wait_healthy(addr, &mut proc_, Duration::from_secs(30)).map_err(|e| format!("{e}; log:\n{}", tail(&log)))?;
    proc_.rss_start_kib = proc_.rss_kib();
    Ok(Proxy { proc_, addr, key })
}

// ---------------------------------------------------------------------------------------------
// nginx

pub struct Nginx {
    pub proc_: Proc,
    /// Listener whose upstream is the mock's plain port, and the one whose upstream is TLS.
    pub plain: SocketAddr,
    pub tls: SocketAddr,
    pub version: String,
}

/// Finds nginx, installing it with apt-get as root when it is missing. Err says why not.
pub fn find_or_install_nginx() -> Result<PathBuf, String> {
    let find = || {
        ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx", "/usr/local/nginx/sbin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    if unsafe { libc::geteuid() } != 0 {
        return Err("nginx is not installed and this is not root (apt-get install -y nginx needs root)".into());
    }
    eprintln!("nginx not found: apt-get install -y nginx ...");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "nginx"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !install() {
        // A fresh machine may have no package lists yet.
        let _ = Command::new("apt-get").arg("update").stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !install() {
            return Err("apt-get install -y nginx failed".into());
        }
    }
    find().ok_or_else(|| "nginx installed but not found in /usr/sbin".into())
}

pub fn nginx_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().trim_start_matches("nginx version: ").to_string())
        .unwrap_or_default()
}

pub fn start_nginx(
    bin: &Path,
    dir: &Path,
    mock_plain: SocketAddr,
    mock_tls: SocketAddr,
    ca: &Path,
    nofile: u64,
    core: Option<usize>,
) -> Result<Nginx, String> {
    std::fs::create_dir_all(dir.join("logs")).map_err(|e| e.to_string())?;
    let plain = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let tls = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let d = dir.display();
    let user = if unsafe { libc::geteuid() } == 0 { "user root;\n" } else { "" };
    // A plain reverse proxy: keep-alive to the upstream, nothing buffered (streams pass as they
    // come), no access log (the proxy's counterpart, capture, is measured on and off).
    let location = |upstream: &str, tls: bool| {
        let mut s = format!(
            "        location /api/proxy/openai/ {{\n\
             \x20           proxy_pass {}://{upstream}/;\n\
             \x20           proxy_http_version 1.1;\n\
             \x20           proxy_set_header Connection \"\";\n\
             \x20           proxy_buffering off;\n",
            if tls { "https" } else { "http" }
        );
        if tls {
            s.push_str(&format!(
                "            proxy_ssl_trusted_certificate {};\n\
                 \x20           proxy_ssl_verify on;\n\
                 \x20           proxy_ssl_name localhost;\n\
                 \x20           proxy_ssl_server_name on;\n\
                 \x20           proxy_ssl_session_reuse on;\n",
                ca.display()
            ));
        }
        s.push_str("        }\n");
        s
    };
    let health = "        location = /api/proxy/health {\n            default_type application/json;\n            return 200 '{\"status\":\"ok\"}';\n        }\n";
    let conf = format!(
        "{user}daemon off;\nmaster_process on;\nworker_processes 1;\nworker_rlimit_nofile {nofile};\n\
         error_log {d}/logs/error.log warn;\npid {d}/nginx.pid;\n\
         events {{\n    worker_connections {conns};\n}}\n\
         http {{\n    access_log off;\n    keepalive_timeout 75s;\n    keepalive_requests 1000000;\n\
         \x20   client_body_temp_path {d}/client_body;\n    proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
         \x20   upstream mock_plain {{\n        server {mock_plain};\n        keepalive 1024;\n        keepalive_requests 1000000;\n    }}\n\
         \x20   upstream mock_tls {{\n        server {mock_tls};\n        keepalive 1024;\n        keepalive_requests 1000000;\n    }}\n\
         \x20   server {{\n        listen {plain} backlog=1024;\n{health}{}    }}\n\
         \x20   server {{\n        listen {tls} backlog=1024;\n{health}{}    }}\n}}\n",
        location("mock_plain", false),
        location("mock_tls", true),
        conns = nofile.saturating_sub(64).clamp(1024, 65536),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::File::create(&conf_path).and_then(|mut f| f.write_all(conf.as_bytes())).map_err(|e| e.to_string())?;
    let check =
        Command::new(bin).arg("-t").arg("-p").arg(dir).arg("-c").arg(&conf_path).output().map_err(|e| e.to_string())?;
    if !check.status.success() {
        return Err(format!("nginx -t failed:\n{}", String::from_utf8_lossy(&check.stderr)));
    }
    let mut cmd = Command::new(bin);
    cmd.arg("-p").arg(dir).arg("-c").arg(&conf_path);
    let stderr_log = dir.join("logs/stderr.log");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_log).map_err(|e| e.to_string())?);
    // SIGTERM on the bench's death lets the master take its worker down with it.
    let mut proc_ = spawn(cmd, "nginx", core, libc::SIGTERM, libc::SIGTERM);
    for addr in [plain, tls] {
        wait_healthy(addr, &mut proc_, Duration::from_secs(15))
            .map_err(|e| format!("{e}; error log:\n{}", tail(&dir.join("logs/error.log"))))?;
    }
    // The worker must be up (and counted) before the first measurement.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sys::children_of(proc_.pid()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    proc_.rss_start_kib = proc_.rss_kib();
    Ok(Nginx { proc_, plain, tls, version: nginx_version(bin) })
}

/// Reads a small file fully (machine facts for the report).
pub fn read_small(path: &str) -> String {
    let mut s = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(1 << 20).read_to_string(&mut s);
    }
    s
}
