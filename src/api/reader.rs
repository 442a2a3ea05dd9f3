//! Reader threads: the read API's store queries run here, never on a worker thread.
//!
//! A RocksDB read can wait on the disk (a block not in cache, a long range); on a worker it
//! would stall every connection of that worker. A worker's task hands the query to a bounded
//! crossbeam channel (never blocking: a full queue answers 503 at once) and awaits a
//! `futures_channel::oneshot`, which a reader thread completes with the JSON body; monoio's
//! `sync` feature carries that wake back to the worker's thread. The response body is also
//! serialized on the reader thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};
use futures_channel::oneshot;

use super::ApiRequest;
use crate::error::{ErrorKind, ProxyError};

/// Reader threads: two let one slow query (a long session with full content) not hold up every
/// other read, without taking much from the workers.
pub const READER_THREADS: usize = 2;
/// Reads waiting for a reader thread; past this a read gets 503 rather than waiting unbounded.
pub const READ_QUEUE: usize = 1024;
/// How often an idle reader checks whether it was told to finish.
#[cfg(feature = "store")]
const FINISH_POLL: std::time::Duration = std::time::Duration::from_millis(50);

type Answer = Result<Vec<u8>, ProxyError>;

// Without the store nothing starts reader threads, so nothing reads a job.
#[cfg_attr(not(feature = "store"), allow(dead_code))]
struct ReadJob {
    request: ApiRequest,
    reply: oneshot::Sender<Answer>,
}

/// The workers' handle on the reader threads. The threads end once every handle is dropped.
#[derive(Clone)]
pub struct Readers {
    tx: Sender<ReadJob>,
}

impl Readers {
    /// Runs the request on a reader thread and awaits its answer (the JSON body).
    pub async fn ask(&self, request: ApiRequest) -> Answer {
        let (reply, answer) = oneshot::channel();
        match self.tx.try_send(ReadJob { request, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ProxyError::new(ErrorKind::Unavailable, "too many reads in progress; retry shortly"))
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ProxyError::new(ErrorKind::Unavailable, "the capture store is closed"))
            }
        }
        answer.await.unwrap_or_else(|_| Err(ProxyError::new(ErrorKind::Internal, "the read failed")))
    }
}

/// The reader threads, to be finished at shutdown. They end on `finish` rather than when the
/// last `Readers` goes, so that shutdown does not depend on every task holding one being gone;
/// a read still queued then fails, which only a connection being torn down can see.
pub struct ReaderThreads {
    handles: Vec<JoinHandle<()>>,
    finish: Arc<AtomicBool>,
}

impl ReaderThreads {
    pub fn finish(self) {
        self.finish.store(true, Ordering::Release);
        for h in self.handles {
            if h.join().is_err() {
                tracing::error!("a reader thread panicked");
            }
        }
    }
}

/// Starts `threads` reader threads over `store`.
#[cfg(feature = "store")]
pub fn start_readers(
    store: std::sync::Arc<crate::capture::store::Store>,
    threads: usize,
) -> std::io::Result<(Readers, ReaderThreads)> {
    let (tx, rx) = crossbeam_channel::bounded::<ReadJob>(READ_QUEUE);
    let finish = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads {
        let (rx, store, finish) = (rx.clone(), store.clone(), finish.clone());
        handles.push(std::thread::Builder::new().name(format!("kurral-reader-{i}")).spawn(move || loop {
            let job = match rx.recv_timeout(FINISH_POLL) {
                Ok(job) => job,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) if finish.load(Ordering::Acquire) => return,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            };
            // Nobody waits for an answer whose connection is gone.
            if job.reply.is_canceled() {
                continue;
            }
            let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&store, &job.request)))
                .unwrap_or_else(|_| Err(ProxyError::new(ErrorKind::Internal, "the read failed")));
            let _ = job.reply.send(answer);
        })?);
    }
    Ok((Readers { tx }, ReaderThreads { handles, finish }))
}

#[cfg(feature = "store")]
fn run(store: &crate::capture::store::Store, request: &ApiRequest) -> Answer {
    use super::{json, ApiQuery};

    let failed = |e: String| {
        tracing::error!("read API: capture store read failed: {e}");
        ProxyError::new(ErrorKind::Internal, "capture store read failed")
    };
    let user = &*request.user;
    let body = match &request.query {
        ApiQuery::Agents => json::agents(&store.agents(user).map_err(failed)?),
        ApiQuery::Sessions { agent, env, limit, cursor } => {
            let page = store.sessions(user, agent, *env, *limit, cursor.as_deref()).map_err(failed)?;
            json::sessions(&page.items, page.next.as_deref())
        }
        ApiQuery::Session { session_id, limit, cursor } => {
            let summary = store
                .session(user, session_id)
                .map_err(failed)?
                .ok_or_else(|| ProxyError::new(ErrorKind::NotFound, "no such session"))?;
            let page = store.session_calls(user, session_id, *limit, cursor.as_deref()).map_err(failed)?;
            json::session(&summary, &page.items, page.next.as_deref())
        }
        ApiQuery::Findings { agent, session, min_severity, limit } => {
            let q = crate::capture::findings::FindingQuery {
                user,
                agent: agent.as_deref(),
                session: session.as_deref(),
                min_severity: *min_severity,
                limit: *limit,
            };
            let rows = crate::capture::findings::list(store, &q).map_err(failed)?;
            serde_json::json!({ "findings": rows })
        }
        ApiQuery::Call { call_id } => json::call(
            &store
                .call(user, call_id)
                .map_err(failed)?
                .ok_or_else(|| ProxyError::new(ErrorKind::NotFound, "no such call"))?,
        ),
    };
    Ok(serde_json::to_vec(&body).expect("JSON values always serialize"))
}
