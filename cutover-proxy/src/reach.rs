//! Whether a proxy reaches the backend a switch goes to. While a switch is prepared or
//! paused, each proxy checks its path to that backend (the loop is in the proxy's lifecycle)
//! and reports it in its status, so that a proxy cut off from the new primary stops the
//! switch before its point of no return instead of stranding its sessions after it.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::state::Backend;

/// How often the path is checked while a switch is prepared or paused.
pub(crate) const EVERY: Duration = Duration::from_millis(500);
/// How long one check may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// A check older than this does not count: the switch needs a recent one.
pub const FRESH: Duration = Duration::from_secs(3);

/// The last check of the path to the backend a switch goes to, as a status reports it: a
/// TCP connection made, or why not.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Reach {
    pub backend: Backend,
    pub ok: bool,
    pub error: Option<String>,
    /// How long ago the check ended.
    pub age_ms: u64,
}

/// A check as the proxy keeps it.
pub(crate) struct Checked {
    backend: Backend,
    result: Result<(), String>,
    at: Instant,
}

impl Checked {
    pub(crate) fn report(&self) -> Reach {
        Reach {
            backend: self.backend,
            ok: self.result.is_ok(),
            error: self.result.as_ref().err().cloned(),
            age_ms: self.at.elapsed().as_millis() as u64,
        }
    }
}

/// Refused, saying why, unless `reach` reached `to` within [`FRESH`].
pub fn verdict(reach: Option<&Reach>, to: Backend) -> Result<(), String> {
    match reach {
        Some(r) if r.backend == to && r.ok && r.age_ms <= FRESH.as_millis() as u64 => Ok(()),
        Some(r) if r.backend == to && !r.ok => Err(format!(
            "cannot reach the {to}: {}",
            r.error.as_deref().unwrap_or("no answer")
        )),
        Some(r) if r.backend == to => Err(format!(
            "has not reached the {to} for {:.1}s",
            r.age_ms as f64 / 1000.0
        )),
        _ => Err(format!("has not checked its path to the {to} yet")),
    }
}

/// One check of the path to `backend` at `url`, opened as a session's would be (TCP, and TLS
/// as its sslmode asks), within [`TIMEOUT`], or why not.
pub(crate) async fn check(backend: Backend, url: &cutover_core::ConnString) -> Checked {
    let result = match tokio::time::timeout(TIMEOUT, crate::server::open_stream(url)).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "{}: no answer in {}s",
            url.location(),
            TIMEOUT.as_secs()
        )),
    };
    Checked {
        backend,
        result,
        at: Instant::now(),
    }
}
