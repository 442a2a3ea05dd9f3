//! The security findings of a user's calls, newest sessions first (`kurral-proxy findings list`).
//!
//! Sessions and agents count their findings, so only the sessions that have some are opened:
//! a store of a million clean calls and ten findings reads ten sessions, not a million calls.

use serde::Serialize;

use super::store::Store;
use super::CallRecord;
use crate::scan::{Finding, Severity};

/// What to list.
#[derive(Debug, Clone)]
pub struct FindingQuery<'a> {
    pub user: &'a str,
    pub agent: Option<&'a str>,
    pub session: Option<&'a str>,
    pub min_severity: Severity,
    pub limit: usize,
}

/// One finding with the call it was made on.
#[derive(Debug, Clone, Serialize)]
pub struct FindingRow {
    pub user: String,
    pub agent: String,
    pub session_id: String,
    pub call_id: String,
    pub started_at: String,
    #[serde(flatten)]
    pub finding: Finding,
}

/// Sessions read per page while looking for findings.
const PAGE: usize = 200;

pub fn list(store: &Store, q: &FindingQuery<'_>) -> Result<Vec<FindingRow>, String> {
    let mut rows = Vec::new();
    if let Some(session) = q.session {
        if store.session(q.user, session)?.is_some_and(|s| s.totals.findings.total() > 0) {
            session_findings(store, q, session, &mut rows)?;
        }
        return Ok(rows);
    }
    let mut agents = store.agents(q.user)?;
    agents.retain(|a| a.totals.findings.total() > 0 && q.agent.is_none_or(|x| x == a.agent));
    agents.sort_by_key(|a| std::cmp::Reverse(a.last_ms));
    for agent in agents {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = store.sessions(q.user, &agent.agent, None, PAGE, after.as_deref())?;
            for s in page.items.iter().filter(|s| s.totals.findings.total() > 0) {
                session_findings(store, q, &s.session_id, &mut rows)?;
                if rows.len() >= q.limit {
                    rows.truncate(q.limit);
                    return Ok(rows);
                }
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
    }
    Ok(rows)
}

/// The session's findings, newest call first.
fn session_findings(
    store: &Store,
    q: &FindingQuery<'_>,
    session: &str,
    rows: &mut Vec<FindingRow>,
) -> Result<(), String> {
    let mut calls: Vec<CallRecord> = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.session_calls(q.user, session, 1000, after.as_deref())?;
        calls.extend(page.items.into_iter().filter(|c| !c.findings.is_empty()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    for c in calls.iter().rev() {
        for f in c.findings.iter().filter(|f| f.severity >= q.min_severity) {
            rows.push(FindingRow {
                user: c.user.clone(),
                agent: c.agent.clone(),
                session_id: c.session_id.clone(),
                call_id: c.id.clone(),
                started_at: c.started_at.clone(),
                finding: f.clone(),
            });
        }
    }
    Ok(())
}
