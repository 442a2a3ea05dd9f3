//! The life of one client connection: read a request head, route it, answer it locally or hand
//! it to `call` as a proxied call, and decide whether the connection carries another.
//!
//! ```text
//! read_request_head ─▶ route ─▶ plan_call ─▶ run_call (see `call`) ─▶ next request or close
//! ```
//!
//! Requests on one connection are served in order; a request's body is fully consumed (or the
//! connection closed) before the next head is read. Any read or write that times out closes the
//! connection.

use std::rc::Rc;
use std::time::{Instant, SystemTime};

use super::call::{plan_call, run_call};
use super::client::{ClientConn, ClientStream};
use super::worker::{ConnStop, Worker};
use crate::error::{ErrorKind, ProxyError};
use crate::http::head::{parse_request_head, HeadError, HeadLimits, RequestHead};
use crate::http::rewrite::local_response;
use crate::provider::{route, Route};

pub async fn serve_connection(w: &Rc<Worker>, stream: ClientStream, stop: &ConnStop) {
    let mut client = ClientConn::new(stream);
    loop {
        let read = monoio::select! {
            h = read_request_head(w, &mut client) => h,
            _ = stop.stopped() => HeadRead::Closed,
        };
        let head = match read {
            HeadRead::Head(h) => h,
            HeadRead::Closed => return,
            HeadRead::Error(e) => {
                let body = e.json_body();
                let resp = local_response(e.status(), &[], &body, true);
                if client.write_all(resp, w.shared.config.limits.client_write_timeout).await.is_ok() {
                    client.linger_close().await;
                }
                return;
            }
        };
        match handle_request(w, &mut client, head, stop).await {
            Next::KeepAlive if !w.shutting_down() => {}
            Next::Linger => return client.linger_close().await,
            _ => return,
        }
        client.shrink_idle();
    }
}

/// What happens to the connection after a request.
pub(super) enum Next {
    KeepAlive,
    Close,
    /// An answer was sent while the client may still be sending: drain, then close.
    Linger,
}

enum HeadRead {
    Head(RequestHead),
    Closed,
    Error(ProxyError),
}

fn head_limits(w: &Worker) -> HeadLimits {
    let l = &w.shared.config.limits;
    HeadLimits { max_head_bytes: l.max_head_bytes, max_target_bytes: l.max_target_bytes }
}

/// Waits for the next request head. The head must arrive whole within `head_timeout` of its first
/// byte (an absolute deadline, not reset per byte); an idle connection is closed after
/// `idle_timeout` or at shutdown.
async fn read_request_head(w: &Worker, client: &mut ClientConn) -> HeadRead {
    let limits = head_limits(w);
    let head_timeout = w.shared.config.limits.head_timeout;
    let mut deadline: Option<Instant> = None;
    loop {
        if !client.data().is_empty() {
            match parse_request_head(client.data(), limits) {
                Ok(Some(head)) => return HeadRead::Head(head),
                Ok(None) => {}
                Err(e) => return HeadRead::Error(head_error(e)),
            }
        }
        let read = match deadline {
            None if client.data().is_empty() => {
                if w.shutting_down() {
                    return HeadRead::Closed;
                }
                client.fill_idle(w.shared.config.limits.idle_timeout, w.shutdown.clone()).await
            }
            _ => {
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + head_timeout);
                let left = deadline.saturating_duration_since(Instant::now());
                match client.fill_within(limits.max_head_bytes, left).await {
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        return HeadRead::Error(ProxyError::new(
                            ErrorKind::RequestTimeout,
                            "request head not received in time",
                        ))
                    }
                    other => other,
                }
            }
        };
        match read {
            Ok(0) | Err(_) => return HeadRead::Closed,
            Ok(_) => {
                deadline.get_or_insert_with(|| Instant::now() + head_timeout);
            }
        }
    }
}

fn head_error(e: HeadError) -> ProxyError {
    let kind = match e {
        HeadError::TooLarge | HeadError::TooManyHeaders => ErrorKind::HeaderTooLarge,
        HeadError::TargetTooLong => ErrorKind::UriTooLong,
        HeadError::Malformed(_) => ErrorKind::BadRequest,
    };
    ProxyError::new(kind, e.message())
}

/// Serves one request; says what becomes of the connection.
async fn handle_request(w: &Rc<Worker>, client: &mut ClientConn, head: RequestHead, stop: &ConnStop) -> Next {
    let started = Instant::now();
    let started_at = SystemTime::now();
    let data = client.data();
    // A body the proxy does not read cannot be skipped safely: the connection closes after it.
    let close_unless_body_read = head.has_body() || !head.keep_alive || w.shutting_down();
    let routed = match refuse_method(head.method(data)) {
        Some(e) => Err(e),
        None => Ok(route(head.method(data), head.target(data))),
    };
    let planned = match routed {
        Ok(Route::Health) => {
            let is_head = head.method(data) == b"HEAD";
            client.consume(head.len);
            const HEALTHY: &[u8] = br#"{"status":"ok"}"#;
            let mut resp = local_response(200, &[], HEALTHY, close_unless_body_read);
            if is_head {
                // A HEAD answer has the GET answer's fields and no body (RFC 9110 9.3.2).
                resp.truncate(resp.len() - HEALTHY.len());
            }
            return answer_locally(w, client, resp, close_unless_body_read).await;
        }
        Ok(Route::NotFound) if crate::api::handles(head.target(data)) => {
            let request = crate::api::prepare(data, &head, &w.shared.keys.load());
            client.consume(head.len);
            let resp = crate::api::respond(w.shared.reads.as_ref(), request, close_unless_body_read).await;
            return answer_locally(w, client, resp, close_unless_body_read).await;
        }
        Ok(Route::NotFound) => Err(ProxyError::not_found()),
        Ok(Route::Proxy { provider, endpoint, upstream_target, path_model }) => {
            plan_call(w, data, &head, provider, endpoint, upstream_target, path_model)
        }
        Err(e) => Err(e),
    };
    let plan = match planned {
        Ok(p) => p,
        Err(e) => {
            client.consume(head.len);
            let resp = local_response(e.status(), &[], &e.json_body(), close_unless_body_read);
            return answer_locally(w, client, resp, close_unless_body_read).await;
        }
    };
    client.consume(head.len);

    run_call(w, client, &plan, started, started_at, stop).await
}

/// Methods the proxy relays. CONNECT and TRACE are refused (a tunnel or an echo of credentials
/// has no place in front of an LLM API); anything else unknown is not implemented.
fn refuse_method(method: &[u8]) -> Option<ProxyError> {
    match method {
        b"GET" | b"HEAD" | b"POST" | b"PUT" | b"PATCH" | b"DELETE" | b"OPTIONS" => None,
        b"CONNECT" | b"TRACE" => Some(ProxyError::new(ErrorKind::MethodNotAllowed, "method not allowed")),
        _ => Some(ProxyError::new(ErrorKind::NotImplemented, "method not implemented")),
    }
}

/// Writes a response the proxy made itself. `close` when the request's body was not read.
async fn answer_locally(w: &Worker, client: &mut ClientConn, resp: Vec<u8>, close: bool) -> Next {
    match client.write_all(resp, w.shared.config.limits.client_write_timeout).await {
        Ok(_) if close => Next::Linger,
        Ok(_) => Next::KeepAlive,
        Err(_) => Next::Close,
    }
}
