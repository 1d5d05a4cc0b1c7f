//! Trigger mode's applier, run by `apply` and `rollback` for as long as they run.
//!
//! In native mode the subscription follows by itself; in trigger mode cutover's own applier
//! does, so a migration run keeps one going from the end of the copy on: it follows the link
//! in force and, when a switchover retires it, the other direction. A `cutover db follow`
//! service may run beside it: the two take turns on each batch (see `cutover_pg::trigger`).

use std::sync::Mutex;
use std::time::Duration;

use cutover_core::{Mode, Plan};
use cutover_pg::trigger;
use tokio_util::sync::CancellationToken;

pub(crate) struct Follower {
    plan: Plan,
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Follower {
    pub fn new(plan: &Plan) -> Follower {
        Follower {
            plan: plan.clone(),
            stop: CancellationToken::new(),
            task: Mutex::new(None),
        }
    }

    /// Starts following (trigger mode only; once).
    pub fn start(&self) {
        if self.plan.sync.mode != Mode::Trigger {
            return;
        }
        let mut task = self.task.lock().unwrap();
        if task.is_some() {
            return;
        }
        let (plan, stop) = (self.plan.clone(), self.stop.clone());
        *task = Some(tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Err(e) = follow_once(&plan, &stop).await {
                    tracing::warn!("trigger-mode applier: {e}; trying again");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }));
    }

    /// Stops following; a batch under way commits with its position or not at all.
    pub async fn stop(&self) {
        self.stop.cancel();
        let task = self.task.lock().unwrap().take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

/// Follows the link in force until it is retired (or `stop`).
async fn follow_once(plan: &Plan, stop: &CancellationToken) -> Result<(), cutover_pg::PgError> {
    let link = cutover_pg::sync::current_link(plan).await?;
    trigger::follow(
        &link,
        &plan.sync,
        Duration::from_millis(50),
        stop.clone(),
        &|_| {},
    )
    .await
}
