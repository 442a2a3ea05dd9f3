//! One proxied call, phase by phase:
//!
//! ```text
//! plan_call (authenticate, validate, rewrite head) ─▶ admit (rate, concurrency)
//!   ─▶ forward_request (pooled upstream; head + body relayed as they arrive)
//!   ─▶ read_response_head ─▶ relay_response_body (written to the client first, inspected after)
//!   ─▶ call_record (usage, cost, content: one record per call, to the writer thread)
//! ```
//!
//! One documented exception to relaying bytes as they came: an OpenAI chat request is read whole
//! before it goes upstream, so that a stream whose client did not ask for usage can be given
//! `stream_options.include_usage` (`usage::include_usage`); its response is then filtered back
//! to what the client would have received, and re-chunked since its length changes.
//!
//! Every way a call can end is a `CallFailure` or a completed exchange; `run_call` turns each
//! into what the client receives and the one record the call leaves.

use std::time::{Duration, Instant, SystemTime};

use monoio::buf::{IoBuf, IoBufMut};

use super::client::{ClientConn, READ_BUF};
use super::conn::Next;
use super::worker::{ConnStop, Worker};
use crate::auth::{identify, CallIdentity, LimitValues, Permit};
use crate::capture::content::{self, BodyCopy};
use crate::capture::{CallRecord, Outcome, Retention};
use crate::error::{ErrorKind, ProxyError, Side};
use crate::http::body::{BodyDecoder, BodyError};
use crate::http::head::{parse_response_head, Framing, RequestHead, ResponseHead};
use crate::http::rewrite::{
    downstream_response_head, local_response, upstream_request_head, with_content_length, BodyFraming,
    ResponseAdditions,
};
use crate::inspect::{inspect_request, RequestInfo};
use crate::provider::{Endpoint, Provider};
use crate::scan::units::response_units;
use crate::scan::CallScan;
use crate::upstream::UpstreamStream;
use crate::usage::include_usage::{add_include_usage, UsageChunkFilter};
use crate::usage::{Caps, ResponseInspector, Shape};

/// Largest upstream response head accepted; providers send about 1 KiB.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Size of each read from an upstream while relaying a response.
const UPSTREAM_READ: usize = 16 * 1024;
/// A request is kept (head and body as sent) for one resend on a fresh connection when a pooled
/// connection turns out to be dead, up to this size. Bigger requests are not retried.
const REPLAY_MAX: usize = 256 * 1024;
/// Status recorded when the client went away before any response was sent (nginx's convention).
const STATUS_CLIENT_CLOSED: u16 = 499;

/// Runs an admitted or refused call to its end and records it; says what becomes of the
/// connection.
pub(super) async fn run_call(
    w: &Worker,
    client: &mut ClientConn,
    plan: &CallPlan,
    started: Instant,
    started_at: SystemTime,
    stop: &ConnStop,
) -> Next {
    let mut call = CallState::new(started, started_at, plan);
    tracing::debug!(worker = w.id, id = %call.id, provider = plan.provider.name(), "call start");
    let result = match admit(w, plan) {
        // The permit holds the user's concurrency slot until the call is over.
        Ok(_permit) => {
            let ran = monoio::select! {
                r = proxy_call(w, client, plan, &mut call) => Some(r),
                _ = stop.stopped() => None,
            };
            // None: the shutdown grace period ran out with the call still going.
            ran.unwrap_or_else(|| {
                Err(if call.status == 0 {
                    CallFailure::Respond(ProxyError::new(ErrorKind::Unavailable, "the proxy is shutting down"))
                } else {
                    CallFailure::Truncated(Outcome::Timeout, "the proxy shut down before the call finished")
                })
            })
        }
        Err(e) => Err(CallFailure::Respond(e)),
    };
    let next = match result {
        Ok(true) => Next::KeepAlive,
        Ok(false) => Next::Close,
        Err(CallFailure::Respond(e)) => {
            call.fail_before_response(&e);
            let mut fields = vec![
                ("x-kurral-session-id", plan.identity.session_id.as_str()),
                ("x-kurral-request-id", call.id.as_str()),
            ];
            fields.extend(e.headers.iter().map(|(n, v)| (*n, v.as_str())));
            let resp = local_response(e.status(), &fields, &e.json_body(), true);
            match client.write_all(resp, w.shared.config.limits.client_write_timeout).await {
                Ok(_) => Next::Linger,
                Err(_) => Next::Close,
            }
        }
        Err(CallFailure::ClientGone(why)) => {
            call.outcome = Outcome::ClientCancelled;
            call.error = Some(why.into());
            if call.status == 0 {
                call.status = STATUS_CLIENT_CLOSED;
            }
            Next::Close
        }
        Err(CallFailure::Truncated(outcome, why)) => {
            call.outcome = outcome;
            call.error = Some(why.into());
            Next::Close
        }
    };
    tracing::debug!(worker = w.id, id = %call.id, status = call.status, outcome = ?call.outcome, "call end");
    // The record is built before the await, so the call's state is not carried across it.
    let record = call_record(w, plan, call);
    w.shared.capture.send(record).await;
    next
}

/// The per-user rate and concurrency limits, shared by all workers: the key's own where set, the
/// server's defaults otherwise.
fn admit(w: &Worker, plan: &CallPlan) -> Result<Permit, ProxyError> {
    let defaults = &w.shared.config.limits;
    let own = plan.identity.key_limits;
    let limits = LimitValues {
        requests_per_minute: own.requests_per_minute.unwrap_or(defaults.requests_per_minute),
        max_concurrent: own.max_concurrent.unwrap_or(defaults.max_concurrent),
    };
    plan.identity.user_state.admit(limits).map_err(|r| ProxyError::rate_limited(&r))
}

/// Everything the call needs from the request head, taken before the head's bytes are consumed.
pub(super) struct CallPlan {
    provider: Provider,
    endpoint: Endpoint,
    /// The wire format the scanner reads.
    shape: Shape,
    /// How much content the record keeps, so how much the scanner reads.
    caps: Caps,
    /// Read the request body whole before forwarding (the include_usage rewrite may apply, or
    /// the request is scanned before it may go upstream).
    buffer_body: bool,
    /// Refuse the request when its scan finds a secret or a high-severity injection marker.
    block: bool,
    path_model: Option<String>,
    identity: CallIdentity,
    upstream_head: Vec<u8>,
    framing: Framing,
    expect_continue: bool,
    client_keep_alive: bool,
    client_http10: bool,
    head_request: bool,
}

pub(super) fn plan_call(
    w: &Worker,
    data: &[u8],
    head: &RequestHead,
    provider: Provider,
    endpoint: Endpoint,
    upstream_target: &[u8],
    path_model: Option<&[u8]>,
) -> Result<CallPlan, ProxyError> {
    let identity = identify(data, head, &w.shared.keys.load())?;
    let config = &w.shared.config;
    let url = config.upstream(provider);
    let mut target = Vec::with_capacity(url.base_path.len() + upstream_target.len());
    target.extend_from_slice(url.base_path.as_bytes());
    target.extend_from_slice(upstream_target);
    let shape = Shape::of(provider, endpoint);
    // Every call is scanned, `endpoint: "other"` ones too (embeddings, completions): their JSON
    // bodies are read generically.
    let scan = w.shared.scanner.is_some();
    let block = scan && (config.capture.block_findings || identity.key_limits.block_findings);
    Ok(CallPlan {
        provider,
        endpoint,
        shape,
        caps: content::caps(identity.retention, config.capture.max_content_bytes, scan),
        buffer_body: block || (shape == Shape::Chat && config.capture.openai_stream_usage),
        block,
        path_model: path_model.map(|m| String::from_utf8_lossy(m).into_owned()),
        identity,
        upstream_head: upstream_request_head(data, head, &target, &url.authority),
        framing: head.framing,
        expect_continue: head.expect_continue,
        client_keep_alive: head.keep_alive,
        client_http10: head.minor_version == 0,
        head_request: head.method(data) == b"HEAD",
    })
}

fn body_too_large(limit: u64) -> ProxyError {
    ProxyError::new(ErrorKind::PayloadTooLarge, format!("request body exceeds {limit} bytes"))
}

/// What the capture record needs, filled in as the call progresses.
struct CallState {
    id: String,
    started: Instant,
    started_at: SystemTime,
    model: Option<String>,
    stream: bool,
    status: u16,
    upstream_status: Option<u16>,
    outcome: Outcome,
    error: Option<String>,
    ttfb: Option<Duration>,
    first_body_write: Option<Duration>,
    request_bytes: u64,
    response_bytes: u64,
    /// Time spent connecting to the upstream (not the proxy's own time).
    connect_time: Duration,
    /// From the call's start to the request's first write upstream.
    upstream_write_at: Option<Duration>,
    /// From the upstream's response head read to the client's head written.
    head_relay: Option<Duration>,
    stream_usage_added: bool,
    request_info: RequestInfo,
    /// What scanning the request found (before the response, so its header can say so).
    request_scan: CallScan,
    /// The request body was read, inspected and scanned.
    inspected: bool,
    /// `100 Continue` was sent.
    continued: bool,
    request_copy: Option<BodyCopy>,
    response_copy: Option<BodyCopy>,
    inspector: Option<ResponseInspector>,
}

impl CallState {
    fn new(started: Instant, started_at: SystemTime, plan: &CallPlan) -> CallState {
        CallState {
            id: uuid::Uuid::now_v7().to_string(),
            started,
            started_at,
            model: plan.path_model.clone(),
            stream: plan.endpoint.streams_by_path(),
            status: 0,
            upstream_status: None,
            outcome: Outcome::Ok,
            error: None,
            ttfb: None,
            first_body_write: None,
            request_bytes: 0,
            response_bytes: 0,
            connect_time: Duration::ZERO,
            upstream_write_at: None,
            head_relay: None,
            stream_usage_added: false,
            request_info: RequestInfo::default(),
            request_scan: CallScan::default(),
            inspected: false,
            continued: false,
            request_copy: None,
            response_copy: None,
            inspector: None,
        }
    }

    fn fail_before_response(&mut self, e: &ProxyError) {
        self.status = e.status();
        self.outcome = match (e.kind.side(), e.kind) {
            (_, ErrorKind::GatewayTimeout | ErrorKind::RequestTimeout | ErrorKind::Unavailable) => Outcome::Timeout,
            (Side::Downstream, _) => Outcome::Rejected,
            (Side::Upstream | Side::Internal, _) => Outcome::UpstreamError,
        };
        self.error = Some(e.message.to_string());
    }
}

/// How a call ended early.
enum CallFailure {
    /// Nothing was sent to the client yet: answer with this error, then close.
    Respond(ProxyError),
    /// The client closed, reset or stopped reading.
    ClientGone(&'static str),
    /// The response was cut after its head was sent; the close tells the client it is incomplete.
    Truncated(Outcome, &'static str),
}

/// Forwards the request and relays the response. Ok(keep_alive) when the exchange completed.
async fn proxy_call(
    w: &Worker,
    client: &mut ClientConn,
    plan: &CallPlan,
    call: &mut CallState,
) -> Result<bool, CallFailure> {
    let deadline = call.started + w.shared.config.limits.request_timeout;
    // Refused from the head, before one byte of the body is read or the upstream is contacted.
    let max_body = w.shared.config.limits.max_body_bytes;
    if matches!(plan.framing, Framing::Length(n) if n > max_body) {
        return Err(CallFailure::Respond(body_too_large(max_body)));
    }
    // A key that blocks on findings: the body is read and scanned before the upstream is
    // contacted, and a refused request never reaches it.
    let received = if plan.block {
        send_continue(w, client, plan, call).await?;
        let mut received = receive_body(w, client, plan, call, deadline).await.map_err(ForwardError::into_failure)?;
        // The body is whole: only inspection needs the decoded copy from here on.
        inspect_body(w, plan, call, std::mem::take(&mut received.body));
        if let Some(f) = call.request_scan.blocking() {
            let kinds = call.request_scan.header_value().unwrap_or_default();
            return Err(CallFailure::Respond(ProxyError::blocked(&f, kinds)));
        }
        Some(received)
    } else {
        None
    };
    let (mut upstream, reused) = match checkout(w, plan.provider, call, deadline).await {
        Ok(up) => up,
        Err(failure) => {
            inspect_buffered_body(w, client, plan, call);
            return Err(failure);
        }
    };
    tracing::debug!(id = %call.id, reused, "upstream ready");
    send_continue(w, client, plan, call).await?;
    let sent = forward_request(w, client, plan, call, &mut upstream, reused, deadline, received).await;
    tracing::debug!(id = %call.id, "request sent");
    let replay = match sent {
        Ok(replay) => replay,
        Err(ForwardError::Upstream(replay)) if reused && replay.is_some() => replay,
        Err(ForwardError::Upstream(_)) => {
            return Err(CallFailure::Respond(ProxyError::bad_gateway("upstream connection failed")))
        }
        Err(ForwardError::Call(f)) => return Err(f),
    };
    // The upstream must start answering within the first-byte timeout, and within the call's.
    let head_deadline = deadline.min(Instant::now() + w.shared.config.limits.first_byte_timeout);
    let (mut upstream, resp, buf) = match read_response_head(&mut upstream, plan.head_request, head_deadline).await {
        Ok((resp, buf)) => (upstream, resp, buf),
        // A pooled connection the upstream had already closed: send the request once more on a
        // fresh connection. Only when nothing came back, so the upstream cannot have acted on it.
        Err(HeadFailure::ClosedEmpty) if reused && replay.is_some() => {
            let replay = replay.expect("checked");
            let mut fresh = connect(w, plan.provider, call, deadline).await?;
            if let (Err(_), _) = fresh.write_all(replay).await {
                return Err(CallFailure::Respond(ProxyError::bad_gateway("upstream connection failed")));
            }
            let (resp, buf) = read_response_head(&mut fresh, plan.head_request, head_deadline)
                .await
                .map_err(HeadFailure::into_failure)?;
            (fresh, resp, buf)
        }
        Err(e) => return Err(e.into_failure()),
    };
    call.ttfb = Some(call.started.elapsed());
    tracing::debug!(id = %call.id, status = resp.status, "response head");
    call.upstream_status = Some(resp.status);
    call.status = resp.status;
    let relayed = relay_response_body(w, client, plan, call, &mut upstream, resp, buf, deadline).await?;
    if relayed.upstream_reusable {
        w.pool.put(plan.provider, upstream);
    }
    call.outcome = if call.status < 400 { Outcome::Ok } else { Outcome::UpstreamError };
    Ok(relayed.client_keep_alive)
}

async fn checkout(
    w: &Worker,
    provider: Provider,
    call: &mut CallState,
    deadline: Instant,
) -> Result<(UpstreamStream, bool), CallFailure> {
    match w.pool.take(provider) {
        Some(s) => Ok((s, true)),
        None => Ok((connect(w, provider, call, deadline).await?, false)),
    }
}

async fn connect(
    w: &Worker,
    provider: Provider,
    call: &mut CallState,
    deadline: Instant,
) -> Result<UpstreamStream, CallFailure> {
    let limit = w.shared.config.limits.connect_timeout.min(deadline.saturating_duration_since(Instant::now()));
    let url = w.shared.config.upstream(provider);
    let t = Instant::now();
    // Boxed: connecting (DNS, TCP, TLS handshake) is the largest state of a call, and most calls
    // take a pooled connection instead; unboxed, every call's state would carry it.
    let connected = Box::pin(w.connector.connect(provider.index(), url, limit)).await;
    call.connect_time += t.elapsed();
    connected.map_err(|e| {
        tracing::warn!(provider = provider.name(), upstream = %url, "upstream connect failed: {e}");
        match e {
            crate::upstream::connector::ConnectError::Timeout => CallFailure::Respond(ProxyError::gateway_timeout()),
            _ => CallFailure::Respond(ProxyError::bad_gateway("upstream unreachable")),
        }
    })
}

enum ForwardError {
    /// Writing to the upstream failed; carries the request as sent so far when it is complete
    /// and small enough to resend.
    Upstream(Option<Vec<u8>>),
    Call(CallFailure),
}

impl ForwardError {
    /// Before the upstream was written to, only the call's own failures can happen.
    fn into_failure(self) -> CallFailure {
        match self {
            ForwardError::Call(f) => f,
            ForwardError::Upstream(_) => CallFailure::Respond(ProxyError::bad_gateway("upstream connection failed")),
        }
    }
}

/// Answers `Expect: 100-continue` once, just before the body is first read.
async fn send_continue(
    w: &Worker,
    client: &mut ClientConn,
    plan: &CallPlan,
    call: &mut CallState,
) -> Result<(), CallFailure> {
    if plan.expect_continue && !call.continued {
        call.continued = true;
        client
            .write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..], w.shared.config.limits.client_write_timeout)
            .await
            .map_err(|_| CallFailure::ClientGone("client closed before sending its body"))?;
    }
    Ok(())
}

/// The request as it will go upstream, and its decoded body, from what was read of it so far.
struct Received {
    decoder: BodyDecoder,
    /// Head and body bytes to write upstream.
    out: Vec<u8>,
    /// The decoded body (the proxy's copy for inspection).
    body: Vec<u8>,
}

/// Takes the body bytes already read with the head; a buffered call (`plan.buffer_body`) reads
/// the rest too and applies the include_usage rewrite.
async fn receive_body(
    w: &Worker,
    client: &mut ClientConn,
    plan: &CallPlan,
    call: &mut CallState,
    deadline: Instant,
) -> Result<Received, ForwardError> {
    let max_body = w.shared.config.limits.max_body_bytes;
    let mut decoder = BodyDecoder::new(plan.framing, max_body);
    let mut body = Vec::new();
    let mut out = plan.upstream_head.clone();
    let n = decode_request_body(&mut decoder, client.data(), &mut body, max_body)?;
    out.extend_from_slice(&client.data()[..n]);
    client.consume(n);
    if plan.buffer_body {
        while !decoder.is_done() {
            fill_request_body(client, deadline).await?;
            let n = decode_request_body(&mut decoder, client.data(), &mut body, max_body)?;
            out.extend_from_slice(&client.data()[..n]);
            client.consume(n);
        }
        let rewrite = plan.shape == Shape::Chat && w.shared.config.capture.openai_stream_usage;
        if let Some(changed) = add_include_usage(&body).filter(|_| rewrite) {
            out = with_content_length(&plan.upstream_head, changed.len());
            out.extend_from_slice(&changed);
            call.stream_usage_added = true;
        }
    }
    Ok(Received { decoder, out, body })
}

/// When the upstream cannot be reached, the record still says what was asked (model, content,
/// findings) if the whole body came with the head, as a small request's does. Nothing more is
/// read from the client: the connection closes after the error.
fn inspect_buffered_body(w: &Worker, client: &ClientConn, plan: &CallPlan, call: &mut CallState) {
    if call.inspected {
        return;
    }
    let max_body = w.shared.config.limits.max_body_bytes;
    let mut decoder = BodyDecoder::new(plan.framing, max_body);
    let mut body = Vec::new();
    if decode_request_body(&mut decoder, client.data(), &mut body, max_body).is_ok() && decoder.is_done() {
        inspect_body(w, plan, call, body);
    }
}

/// Reads what the request body says (model, stream, content, tools) and scans it, from the
/// proxy's copy: after the body went upstream, or before when the key blocks on findings.
fn inspect_body(w: &Worker, plan: &CallPlan, call: &mut CallState, mut body: Vec<u8>) {
    call.inspected = true;
    call.request_bytes = body.len() as u64;
    if plan.identity.retention == Retention::Full {
        let mut copy = BodyCopy::new(w.shared.config.capture.max_content_bytes);
        copy.push(&body);
        call.request_copy = Some(copy);
    }
    let mut info = inspect_request(&mut body, plan.shape, plan.caps);
    if call.model.is_none() {
        call.model = info.model.clone();
    }
    call.stream |= info.stream;
    if let Some(scanner) = &w.shared.scanner {
        let mut units = std::mem::take(&mut info.units);
        // Earlier turns are scanned for what they could leave in the record (their secrets are
        // replaced in kept content) and for blocking; under retention `none` without blocking
        // neither applies, and a long conversation is not rescanned on every call.
        if plan.identity.retention == Retention::None && !plan.block {
            units.retain(|u| u.new);
        }
        scanner.scan(&units, &mut call.request_scan);
    }
    call.request_info = info;
}

/// Sends the rewritten head, then the body as it arrives from the client, raw bytes relayed as
/// received (chunked framing included); an OpenAI chat body is read whole first (see the module
/// doc). The body is copied aside for inspection; what it says (model, stream, tools, content)
/// is read from that copy once the body has gone upstream.
#[allow(clippy::too_many_arguments)]
async fn forward_request(
    w: &Worker,
    client: &mut ClientConn,
    plan: &CallPlan,
    call: &mut CallState,
    upstream: &mut UpstreamStream,
    reused: bool,
    deadline: Instant,
    received: Option<Received>,
) -> Result<Option<Vec<u8>>, ForwardError> {
    let max_body = w.shared.config.limits.max_body_bytes;
    let received = match received {
        Some(r) => r,
        None => receive_body(w, client, plan, call, deadline).await?,
    };
    let Received { mut decoder, out, mut body } = received;
    call.upstream_write_at = Some(call.started.elapsed());
    // Only a pooled connection can turn out dead and need the request resent; on a fresh one
    // nothing is kept. The write hands the buffer back, so the first part is kept, not copied.
    let (written, out) = upstream.write_all(out).await;
    let mut replay = (reused && out.len() <= REPLAY_MAX).then_some(out);
    if written.is_err() {
        // The call may go out again on a fresh connection (`replay`) or end here; either way
        // its record says what was asked when the whole body is in hand.
        if decoder.is_done() && !call.inspected {
            inspect_body(w, plan, call, body);
        }
        return Err(ForwardError::Upstream(replay.filter(|_| decoder.is_done())));
    }
    while !decoder.is_done() {
        fill_request_body(client, deadline).await?;
        let n = decode_request_body(&mut decoder, client.data(), &mut body, max_body)?;
        if let Some(r) = replay.as_mut() {
            if r.len() + n <= REPLAY_MAX {
                r.extend_from_slice(&client.data()[..n]);
            } else {
                replay = None;
            }
        }
        // Relay straight from the read buffer: lend it to the write and take it back.
        let (buf, start) = client.take_buf();
        let (res, slice) = upstream.write_all(buf.slice(start..start + n)).await;
        client.restore_buf(slice.into_inner());
        client.consume(n);
        if res.is_err() {
            return Err(ForwardError::Upstream(replay.filter(|_| decoder.is_done())));
        }
    }
    if !call.inspected {
        inspect_body(w, plan, call, body);
    }
    Ok(replay)
}

/// Waits for more of the request body, within the call's deadline.
async fn fill_request_body(client: &mut ClientConn, deadline: Instant) -> Result<(), ForwardError> {
    let left = deadline.saturating_duration_since(Instant::now());
    match client.fill_within(READ_BUF, left).await {
        Ok(0) => Err(ForwardError::Call(CallFailure::ClientGone("client closed during the request body"))),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(ForwardError::Call(CallFailure::Respond(
            ProxyError::new(ErrorKind::RequestTimeout, "request body not received in time"),
        ))),
        Err(_) => Err(ForwardError::Call(CallFailure::ClientGone("client connection failed"))),
    }
}

fn decode_request_body(
    decoder: &mut BodyDecoder,
    input: &[u8],
    body: &mut Vec<u8>,
    max_body: u64,
) -> Result<usize, ForwardError> {
    decoder.decode(input, &mut |d| body.extend_from_slice(d)).map_err(|e| {
        let err = match e {
            crate::http::body::BodyError::Chunked(crate::http::chunked::ChunkedError::BodyTooLarge) => {
                body_too_large(max_body)
            }
            other => ProxyError::bad_request(format!("invalid request body: {other}")),
        };
        ForwardError::Call(CallFailure::Respond(err))
    })
}

enum HeadFailure {
    /// The upstream closed or reset without sending a byte.
    ClosedEmpty,
    Timeout,
    Malformed(&'static str),
}

impl HeadFailure {
    fn into_failure(self) -> CallFailure {
        CallFailure::Respond(match self {
            HeadFailure::ClosedEmpty => ProxyError::bad_gateway("upstream closed the connection without answering"),
            HeadFailure::Timeout => ProxyError::gateway_timeout(),
            HeadFailure::Malformed(why) => ProxyError::bad_gateway(format!("invalid response from upstream: {why}")),
        })
    }
}

/// Reads the upstream's response head, skipping interim 1xx responses. Returns the head and the
/// buffer it was parsed from (which may hold the first body bytes after `head.len`).
async fn read_response_head(
    upstream: &mut UpstreamStream,
    head_request: bool,
    deadline: Instant,
) -> Result<(ResponseHead, Vec<u8>), HeadFailure> {
    let mut buf = Vec::with_capacity(UPSTREAM_READ);
    let mut received_any = false;
    loop {
        if !buf.is_empty() {
            match parse_response_head(&buf, MAX_RESPONSE_HEAD, head_request) {
                Ok(Some(h)) if h.status == 101 => return Err(HeadFailure::Malformed("protocol upgrade")),
                Ok(Some(h)) if (100..200).contains(&h.status) => {
                    buf.drain(..h.len);
                    continue;
                }
                Ok(Some(h)) => return Ok((h, buf)),
                Ok(None) => {}
                Err(e) => return Err(HeadFailure::Malformed(e.message())),
            }
        }
        if buf.len() == buf.capacity() {
            buf.reserve(UPSTREAM_READ);
        }
        let len = buf.len();
        let left = deadline.saturating_duration_since(Instant::now());
        let (res, slice) = match monoio::time::timeout(left, upstream.read(buf.slice_mut(len..))).await {
            Ok(r) => r,
            Err(_) => return Err(HeadFailure::Timeout),
        };
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) if !received_any => return Err(HeadFailure::ClosedEmpty),
            Ok(0) | Err(_) => return Err(HeadFailure::Malformed("connection closed inside the head")),
            Ok(_) => received_any = true,
        }
    }
}

struct Relayed {
    client_keep_alive: bool,
    upstream_reusable: bool,
}

/// Writes the response head and then each piece of body to the client as it arrives. A piece is
/// written before anything else is done with it (inspection, the content copy); the upstream is
/// read again only once the client has taken the previous piece, so a slow client slows the
/// upstream instead of growing memory.
#[allow(clippy::too_many_arguments)]
async fn relay_response_body(
    w: &Worker,
    client: &mut ClientConn,
    plan: &CallPlan,
    call: &mut CallState,
    upstream: &mut UpstreamStream,
    resp: ResponseHead,
    mut buf: Vec<u8>,
    deadline: Instant,
) -> Result<Relayed, CallFailure> {
    let head_read = Instant::now();
    let request_findings = call.request_scan.header_value();
    let write_timeout = w.shared.config.limits.client_write_timeout;
    let event_stream = resp.header(&buf, "content-type").is_some_and(|v| v.starts_with(b"text/event-stream"));
    call.stream |= event_stream;
    call.inspector = Some(ResponseInspector::new(plan.shape, event_stream, plan.caps));
    if plan.identity.retention == Retention::Full {
        call.response_copy = Some(BodyCopy::new(w.shared.config.capture.max_content_bytes));
    }
    let has_body = resp.framing != Framing::Empty;
    let filter = (call.stream_usage_added && event_stream && has_body && (200..300).contains(&resp.status))
        .then(UsageChunkFilter::default);
    // An HTTP/1.0 client cannot read chunked framing: it gets the payload, ended by close.
    let framing = match (plan.client_http10, resp.framing == Framing::Chunked || filter.is_some()) {
        (true, true) => BodyFraming::Decoded,
        (false, true) if filter.is_some() => BodyFraming::Rechunked,
        _ => BodyFraming::AsUpstream,
    };
    let client_keep_alive = plan.client_keep_alive
        && framing != BodyFraming::Decoded
        && (resp.framing != Framing::Close || framing == BodyFraming::Rechunked)
        && !w.shutting_down();
    let add = ResponseAdditions {
        session_id: &plan.identity.session_id,
        request_id: &call.id,
        close: !client_keep_alive,
        body: framing,
        findings: request_findings.as_deref(),
    };
    // Room for the body bytes that came with the head (and re-chunking's framing of them).
    let mut out = downstream_response_head(&buf, &resp, &add, buf.len() - resp.len + 32);
    buf.drain(..resp.len);
    let mut decoder = BodyDecoder::new(resp.framing, u64::MAX);
    let mut relay = Relay { framing, filter, payload: Vec::new(), client_payload: Vec::new(), ended: false };

    // The first body bytes go out with the head, in one write.
    let n = relay
        .decode(&mut decoder, &buf)
        .map_err(|_| CallFailure::Respond(ProxyError::bad_gateway("invalid response body framing from upstream")))?;
    let mut overrun = n < buf.len();
    relay.encode(&buf, n, decoder.is_done(), &mut out);
    let mut out = client
        .write_all(out, write_timeout)
        .await
        .map_err(|_| CallFailure::ClientGone("client closed during the response"))?;
    call.head_relay = Some(head_read.elapsed());
    relay.written(&buf, call);

    while !decoder.is_done() {
        buf.clear();
        let left = deadline.saturating_duration_since(Instant::now());
        let (res, b) = match monoio::time::timeout(left, upstream.read(buf)).await {
            Ok(r) => r,
            Err(_) => {
                return Err(CallFailure::Truncated(Outcome::Timeout, "upstream response exceeded the request timeout"))
            }
        };
        buf = b;
        match res {
            Ok(0) => {
                decoder.finish_at_eof().map_err(|_| {
                    CallFailure::Truncated(Outcome::UpstreamError, "upstream closed before the response was complete")
                })?;
                break;
            }
            Ok(_) => {}
            Err(_) => {
                return Err(CallFailure::Truncated(Outcome::UpstreamError, "upstream connection failed mid-response"))
            }
        }
        let n = relay.decode(&mut decoder, &buf).map_err(|_| {
            CallFailure::Truncated(Outcome::UpstreamError, "invalid response body framing from upstream")
        })?;
        overrun |= n < buf.len();
        let written = if framing == BodyFraming::AsUpstream {
            // Relayed as it came: write straight from the read buffer and take it back.
            let b = std::mem::take(&mut buf);
            client.write_all(b.slice(..n), write_timeout).await.map(|s| buf = s.into_inner())
        } else {
            out.clear();
            relay.encode(&buf, n, decoder.is_done(), &mut out);
            write_some(client, &mut out, write_timeout).await
        };
        written.map_err(|_| CallFailure::ClientGone("client closed during the response"))?;
        relay.written(&buf, call);
    }
    if !relay.ended && framing != BodyFraming::AsUpstream {
        // A close-delimited upstream body ended: the filter's remainder and the last chunk.
        out.clear();
        relay.payload.clear();
        relay.encode(&[], 0, true, &mut out);
        write_some(client, &mut out, write_timeout)
            .await
            .map_err(|_| CallFailure::ClientGone("client closed during the response"))?;
    }
    Ok(Relayed { client_keep_alive, upstream_reusable: !resp.close && !overrun && resp.framing != Framing::Close })
}

/// Writes `out` unless it is empty, and gives the buffer back for the next piece.
async fn write_some(client: &mut ClientConn, out: &mut Vec<u8>, timeout: Duration) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let written = client.write_all(std::mem::take(out), timeout).await?;
    *out = written;
    Ok(())
}

/// The relay of one response body: what each piece of upstream bytes becomes for the client, and
/// what is handed to inspection once it was written.
struct Relay {
    framing: BodyFraming,
    filter: Option<UsageChunkFilter>,
    /// Where the current piece's payload lies in the upstream bytes (chunk framing excluded).
    payload: Vec<std::ops::Range<usize>>,
    /// Decoded or re-chunked relay: the payload the client gets for the current piece.
    client_payload: Vec<u8>,
    /// The body's end has been encoded for the client.
    ended: bool,
}

impl Relay {
    /// Consumes the framing-complete prefix of `input`; returns its length.
    fn decode(&mut self, decoder: &mut BodyDecoder, input: &[u8]) -> Result<usize, BodyError> {
        self.payload.clear();
        let base = input.as_ptr() as usize;
        let payload = &mut self.payload;
        // The decoder hands out slices of `input`: keep their offsets, not copies.
        decoder.decode(input, &mut |d| {
            let at = d.as_ptr() as usize - base;
            payload.push(at..at + d.len());
        })
    }

    /// Appends to `out` what the client gets for `input[..n]`; `done`: the body ends there.
    fn encode(&mut self, input: &[u8], n: usize, done: bool, out: &mut Vec<u8>) {
        if self.framing == BodyFraming::AsUpstream {
            out.extend_from_slice(&input[..n]);
            return;
        }
        self.client_payload.clear();
        for r in &self.payload {
            match &mut self.filter {
                Some(f) => f.feed(&input[r.clone()], &mut self.client_payload),
                None => self.client_payload.extend_from_slice(&input[r.clone()]),
            }
        }
        if done {
            if let Some(f) = &mut self.filter {
                f.finish(&mut self.client_payload);
            }
        }
        if self.framing == BodyFraming::Rechunked {
            if !self.client_payload.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", self.client_payload.len()).as_bytes());
                out.extend_from_slice(&self.client_payload);
                out.extend_from_slice(b"\r\n");
            }
            if done {
                out.extend_from_slice(b"0\r\n\r\n");
            }
        } else {
            out.extend_from_slice(&self.client_payload);
        }
        self.ended |= done;
    }

    /// After the piece was written: counts it and hands it to the inspector and the content copy
    /// (the inspector sees the upstream's payload, usage chunk included; the copy keeps what the
    /// client received).
    fn written(&self, input: &[u8], call: &mut CallState) {
        let client_bytes = if self.framing == BodyFraming::AsUpstream {
            self.payload.iter().map(|r| r.len() as u64).sum()
        } else {
            self.client_payload.len() as u64
        };
        if client_bytes > 0 && call.first_body_write.is_none() {
            call.first_body_write = Some(call.started.elapsed());
        }
        call.response_bytes += client_bytes;
        if let Some(inspector) = &mut call.inspector {
            self.payload.iter().for_each(|r| inspector.feed(&input[r.clone()]));
        }
        if let Some(copy) = &mut call.response_copy {
            if self.framing == BodyFraming::AsUpstream {
                self.payload.iter().for_each(|r| copy.push(&input[r.clone()]));
            } else {
                copy.push(&self.client_payload);
            }
        }
    }
}

/// Builds the call's record: usage, cost, the response's scan, content by retention. Runs after
/// the last byte was relayed, so none of it delays the client.
fn call_record(w: &Worker, plan: &CallPlan, mut call: CallState) -> CallRecord {
    let ms = |d: Duration| (d.as_micros() as f64) / 1000.0;
    let id = &plan.identity;
    let facts = call.inspector.take().map(ResponseInspector::finish).unwrap_or_default();
    let usage = facts.usage_raw.as_ref().and_then(|raw| plan.shape.normalize(raw));
    // The answering model is the most precise name (a dated snapshot); the asked one otherwise.
    let cost = usage.and_then(|u| {
        [facts.model.as_deref(), call.model.as_deref()]
            .into_iter()
            .flatten()
            .find_map(|m| w.shared.pricing.cost(plan.provider, m, &u))
    });
    // The answer and tool calls are scanned here, after the last byte was relayed.
    let mut scan = std::mem::take(&mut call.request_scan);
    let mut response_scan = CallScan::default();
    if let Some(scanner) = &w.shared.scanner {
        scanner.scan(&response_units(&facts), &mut response_scan);
    }
    let mut all = scan.redactor.clone();
    all.extend(&response_scan.redactor);
    let secrets = content::Secrets {
        all: &all,
        in_request: scan.redactor.secrets().collect(),
        in_response: response_scan.redactor.secrets().collect(),
    };
    let content = content::build(
        id.retention,
        &call.request_info,
        call.request_copy.as_ref(),
        &facts,
        call.response_copy.as_ref(),
        &secrets,
    );
    scan.merge(response_scan);
    let overhead =
        call.upstream_write_at.map(|t| ms(t.saturating_sub(call.connect_time) + call.head_relay.unwrap_or_default()));
    CallRecord {
        id: call.id,
        session_id: id.session_id.clone(),
        user: id.user.to_string(),
        key_id: id.key_id.to_string(),
        agent: id.agent.clone(),
        env: id.env,
        provider: plan.provider.name().to_string(),
        endpoint: plan.endpoint.name().to_string(),
        model: call.model,
        stream: call.stream,
        status: call.status,
        upstream_status: call.upstream_status,
        outcome: call.outcome,
        error: call.error,
        started_at: humantime::format_rfc3339_millis(call.started_at).to_string(),
        latency_ms: ms(call.started.elapsed()),
        ttfb_ms: call.ttfb.map(ms),
        ttft_ms: if call.stream { call.first_body_write.map(ms) } else { None },
        retention: id.retention,
        request_bytes: call.request_bytes,
        response_bytes: call.response_bytes,
        response_model: facts.model,
        usage,
        usage_raw: facts.usage_raw,
        cost_usd: cost.as_ref().map(|c| c.total.to_f64()),
        unpriced_model: usage.is_some() && cost.is_none(),
        cost,
        proxy_overhead_ms: overhead,
        stream_usage_added: call.stream_usage_added,
        session_generated: id.session_generated,
        request: content.request,
        response: content.response,
        tools: content.tools,
        findings: scan.findings,
        findings_dropped: scan.dropped,
        scan_incomplete: scan.incomplete,
    }
}
