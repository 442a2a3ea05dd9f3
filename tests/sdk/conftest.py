"""Fixtures for the official-SDK end-to-end tests of kurral-proxy.

    KURRAL_BIN=target/release/kurral-proxy python -m pytest tests/sdk -q

Session-wide: one mock provider upstream (mock_upstream.py) and one `kurral-proxy serve` pointed
at it for all three providers, with a fresh data dir and a key made by `keys create`.

Tests parametrised with the `target` fixture (test_sdks.py) also run "direct": the same SDK calls
against the mock without the proxy. Those need no KURRAL_BIN and prove the mock speaks each
provider's wire format well enough for the SDK, so a failing "proxy" twin is the proxy's fault.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from mock_upstream import MockUpstream  # noqa: E402

# ------------------------------------------------------------------------------------------
# Test identities and secrets (fake; the mock accepts anything)
# ------------------------------------------------------------------------------------------

OPENAI_KEY = "sk-test-openai-123"
ANTHROPIC_KEY = "sk-ant-test-anthropic-456"
GOOGLE_KEY = "AIza-test-google-header-789"
GOOGLE_QUERY_KEY = "AIza-test-google-query-key-0123456789"
PROVIDER_SECRETS = [OPENAI_KEY, ANTHROPIC_KEY, GOOGLE_KEY, GOOGLE_QUERY_KEY]
AGENT = "sdk-e2e-agent"
USER = "sdk-tests"

HEALTH_TIMEOUT_S = 20.0
CALLS_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 15.0

# Environment the SDKs or the proxy would otherwise pick up and that would change what goes on
# the wire (base URLs, extra headers, keys, API version) or route 127.0.0.1 through a proxy.
_SCRUB_ENV_PREFIXES = ("OPENAI_", "ANTHROPIC_", "GEMINI_", "GOOGLE_", "KURRAL_")
_PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def _scrub_environment() -> None:
    keep = {"KURRAL_BIN"}
    for k in list(os.environ):
        if k in keep:
            continue
        if k.startswith(_SCRUB_ENV_PREFIXES) or k.lower() in _PROXY_ENV:
            del os.environ[k]
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    os.environ["no_proxy"] = "127.0.0.1,localhost"


_scrub_environment()


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


URLOPEN = _no_proxy_opener().open


# ------------------------------------------------------------------------------------------
# The binary
# ------------------------------------------------------------------------------------------


def kurral_bin_path() -> str:
    b = os.environ.get("KURRAL_BIN")
    if not b:
        pytest.fail(
            "KURRAL_BIN is not set. Point it at the kurral-proxy binary, e.g.\n"
            "    KURRAL_BIN=target/release/kurral-proxy python -m pytest tests/sdk -q",
            pytrace=False,
        )
    p = Path(b)
    if not p.is_file() or not os.access(p, os.X_OK):
        pytest.fail(f"KURRAL_BIN={b!r} is not an executable file", pytrace=False)
    return str(p.resolve())


def _child_env() -> Dict[str, str]:
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("KURRAL_") or k.lower() in _PROXY_ENV:
            del env[k]
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env["no_proxy"] = "127.0.0.1,localhost"
    env.setdefault("RUST_BACKTRACE", "1")
    return env


def run_cli(args: List[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [kurral_bin_path(), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        env=_child_env(),
    )


@pytest.fixture(scope="session")
def kurral_bin() -> str:
    return kurral_bin_path()


# ------------------------------------------------------------------------------------------
# Mock upstream
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mock_upstream():
    m = MockUpstream().start()
    yield m
    m.stop()


# ------------------------------------------------------------------------------------------
# The proxy
# ------------------------------------------------------------------------------------------


@dataclass
class Proxy:
    port: int
    base: str  # http://127.0.0.1:PORT
    data_dir: Path
    key: str  # kr_live_...
    proc: subprocess.Popen
    stdout_path: Path
    stderr_path: Path

    def logs(self) -> bytes:
        out = b""
        for p in (self.stdout_path, self.stderr_path):
            try:
                out += p.read_bytes()
            except OSError:
                pass
        return out

    def stderr_text(self, limit: int = 8000) -> str:
        try:
            t = self.stderr_path.read_text(errors="replace")
        except OSError:
            return "<no stderr>"
        return t[-limit:]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health_ok(base: str) -> bool:
    try:
        with URLOPEN(base + "/api/proxy/health", timeout=1.0) as r:
            if r.status != 200:
                return False
            return json.loads(r.read().decode()) == {"status": "ok"}
    except (urllib.error.URLError, OSError, ValueError):
        return False


def create_key(data_dir: Path) -> str:
    res = run_cli(["keys", "create", "--user", USER, "--data-dir", str(data_dir)])
    if res.returncode != 0:
        pytest.fail(
            f"`kurral-proxy keys create --user {USER} --data-dir {data_dir}` exited {res.returncode}\n"
            f"stdout: {res.stdout.decode(errors='replace')}\nstderr: {res.stderr.decode(errors='replace')}",
            pytrace=False,
        )
    key = res.stdout.decode().strip()
    if not re.fullmatch(r"kr_live_\S+", key):
        pytest.fail(
            f"`keys create` must print the new kr_live_ key alone on stdout; got {res.stdout!r}",
            pytrace=False,
        )
    return key


def start_proxy(data_dir: Path, key: str, upstream_url: str, attempts: int = 3) -> Proxy:
    last_err = ""
    for attempt in range(attempts):
        port = free_port()
        out_p = data_dir.parent / f"proxy-{attempt}.stdout"
        err_p = data_dir.parent / f"proxy-{attempt}.stderr"
        cmd = [
            kurral_bin_path(),
            "serve",
            "--listen", f"127.0.0.1:{port}",
            "--data-dir", str(data_dir),
            "--workers", "2",
            "--upstream", f"openai={upstream_url}",
            "--upstream", f"anthropic={upstream_url}",
            "--upstream", f"google={upstream_url}",
            # The suite makes a few hundred calls a minute with one key: above the default limits.
            "--requests-per-minute", "0",
            "--max-concurrent", "0",
        ]
        with open(out_p, "wb") as out_f, open(err_p, "wb") as err_f:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f, env=_child_env())
        base = f"http://127.0.0.1:{port}"
        px = Proxy(port, base, data_dir, key, proc, out_p, err_p)
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _health_ok(base):
                return px
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
            pytest.fail(
                f"kurral-proxy did not answer 200 {{\"status\":\"ok\"}} on GET {base}/api/proxy/health "
                f"within {HEALTH_TIMEOUT_S:.0f}s.\ncommand: {' '.join(cmd)}\nstderr:\n{px.stderr_text()}",
                pytrace=False,
            )
        last_err = (
            f"kurral-proxy exited with {proc.returncode} during startup (attempt {attempt + 1}).\n"
            f"command: {' '.join(cmd)}\nstderr:\n{px.stderr_text()}"
        )
        # Retry only what looks like a lost race for the port.
        if "in use" not in last_err.lower() and "addrinuse" not in last_err.lower():
            break
    pytest.fail(last_err, pytrace=False)


def stop_proxy(px: Proxy) -> int:
    if px.proc.poll() is None:
        px.proc.send_signal(signal.SIGTERM)
        try:
            px.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            px.proc.kill()
            px.proc.wait(5)
            pytest.fail(
                f"kurral-proxy did not exit within {STOP_TIMEOUT_S:.0f}s of SIGTERM.\nstderr:\n{px.stderr_text()}",
                pytrace=False,
            )
    return px.proc.returncode


@pytest.fixture(scope="session")
def proxy(kurral_bin, mock_upstream, tmp_path_factory):
    root = tmp_path_factory.mktemp("kurral")
    data_dir = root / "data"
    data_dir.mkdir()
    key = create_key(data_dir)
    px = start_proxy(data_dir, key, mock_upstream.url)
    yield px
    rc = stop_proxy(px)
    assert rc == 0, f"kurral-proxy exited with {rc} after SIGTERM (want 0).\nstderr:\n{px.stderr_text()}"


# ------------------------------------------------------------------------------------------
# Capture records
# ------------------------------------------------------------------------------------------


def _parse_records(out: str) -> List[dict]:
    out = out.strip()
    if not out:
        return []
    if out.startswith("["):  # tolerate a JSON array as well
        v = json.loads(out)
        assert isinstance(v, list), "calls list --json: expected records"
        return v
    recs = []
    for n, line in enumerate(out.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            recs.append(json.loads(line))
        except ValueError as e:
            raise AssertionError(f"`calls list --json` line {n} is not JSON ({e}): {line[:300]!r}") from None
    return recs


def calls(
    data_dir,
    ids: Iterable[str] = (),
    count: Optional[int] = None,
    timeout: float = CALLS_TIMEOUT_S,
) -> List[dict]:
    """All call records in data_dir, via `kurral-proxy calls list --data-dir DIR --json`.

    Records are written asynchronously, so this polls until every id in `ids` is present and at
    least `count` records exist (timeout seconds), then returns all records.
    """
    ids = [i for i in ids if i]
    args = ["calls", "list", "--data-dir", str(data_dir), "--json"]
    deadline = time.monotonic() + timeout
    recs: List[dict] = []
    while True:
        res = run_cli(args)
        if res.returncode != 0:
            pytest.fail(
                f"`kurral-proxy {' '.join(args)}` exited {res.returncode}. The SDK tests read capture "
                f"records through this command (one JSON Call object per line, fields as in API.md).\n"
                f"stderr: {res.stderr.decode(errors='replace')[-3000:]}",
                pytrace=False,
            )
        recs = _parse_records(res.stdout.decode())
        have = {r.get("id") for r in recs}
        missing = [i for i in ids if i not in have]
        if not missing and (count is None or len(recs) >= count):
            return recs
        if time.monotonic() > deadline:
            pytest.fail(
                f"call records not written within {timeout:.0f}s: missing ids {missing}, "
                f"{len(recs)} records present (want >= {count}). Present ids: {sorted(x for x in have if x)[:50]}",
                pytrace=False,
            )
        time.sleep(0.1)


def call_record(data_dir, call_id: str) -> dict:
    recs = calls(data_dir, ids=[call_id])
    matches = [r for r in recs if r.get("id") == call_id]
    assert len(matches) == 1, f"want exactly one record with id {call_id}, got {len(matches)}"
    return matches[0]


@pytest.fixture
def kurral_calls(proxy):
    """calls() bound to the session proxy's data dir."""

    def _calls(ids: Iterable[str] = (), count: Optional[int] = None, timeout: float = CALLS_TIMEOUT_S):
        return calls(proxy.data_dir, ids=ids, count=count, timeout=timeout)

    return _calls


def files_containing(root: Path, needle: bytes) -> List[str]:
    """Paths of files under root whose bytes contain needle."""
    hits = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            try:
                if needle in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                pass
    return hits
