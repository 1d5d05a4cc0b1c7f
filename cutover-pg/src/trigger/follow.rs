//! Following a link: batches until stopped, reconnecting after either side goes away.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::connect::connect;
use crate::error::PgError;
use crate::inspect::Table;

use super::{position, Applier, Batch, Link};

/// Applies batches until `stop` resolves, reconnecting after either side goes away.
/// `on_batch` hears every batch that changed something, and every error it retries.
pub async fn follow(
    link: &Link,
    tables: &[Table],
    poll: Duration,
    stop: tokio_util::sync::CancellationToken,
    on_event: &(dyn Fn(FollowEvent) + Send + Sync),
) -> Result<(), PgError> {
    let mut backoff = Duration::from_millis(200);
    while !stop.is_cancelled() {
        // A switchover may retire the link while it is reconnecting.
        if let Ok(f) = connect(&link.follower, link.follower_side).await {
            if position(&f, link.follower_side, &link.name).await.ok() == Some(None) {
                on_event(FollowEvent::Retired);
                return Ok(());
            }
        }
        let mut applier = match Applier::open(link, tables).await {
            Ok(a) => a,
            Err(e) if e.retry() == crate::Retry::Transient => {
                on_event(FollowEvent::Retrying {
                    error: e.to_string(),
                });
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(e) => return Err(e),
        };
        backoff = Duration::from_millis(200);
        loop {
            let started = Instant::now();
            let r = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                r = applier.apply_once() => r,
            };
            match r {
                Ok(None) => {
                    on_event(FollowEvent::Retired);
                    return Ok(());
                }
                Ok(Some(b)) if b.changes > 0 => on_event(FollowEvent::Applied {
                    batch: b,
                    ms: started.elapsed().as_secs_f64() * 1000.0,
                }),
                Ok(Some(_)) => {
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
                Err(e) if e.retry() == crate::Retry::Transient || applier.closed() => {
                    on_event(FollowEvent::Retrying {
                        error: e.to_string(),
                    });
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// What [`follow`] reports.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FollowEvent {
    Applied {
        batch: Batch,
        ms: f64,
    },
    Retrying {
        error: String,
    },
    /// A switchover retired this link; the other direction takes over.
    Retired,
}
