//! The lag of the replication that protects the move: forward (source → target) while the
//! source is the primary, reverse once the target is. Measured in WAL bytes (native mode:
//! the slot's confirmed position) or in change-log rows (trigger mode), never in time.

use cutover_core::{Mode, Plan};
use cutover_pg::{connect, replication, Side};
use cutover_proxy::Backend;
use serde::Serialize;

use super::MigrationError;

#[derive(Clone, Debug, Serialize)]
pub struct Lag {
    /// "source -> target" or "target -> source".
    pub direction: &'static str,
    /// Native mode: WAL bytes the follower has not confirmed; None without a slot.
    pub bytes: Option<i64>,
    /// Trigger mode: committed changes not yet applied.
    pub changes: Option<i64>,
}

impl Lag {
    /// Over the plan's limit for a switch: the same limit the switchover itself holds.
    pub fn too_far(&self, plan: &Plan) -> Option<String> {
        if let Some(b) = self.bytes {
            if b as u64 > plan.switchover.max_lag_bytes {
                return Some(format!(
                    "the replication that protects the rollback ({}) is {b} bytes behind, over switchover.max_lag_mib ({} MiB)",
                    self.direction,
                    plan.switchover.max_lag_bytes / (1024 * 1024)
                ));
            }
        }
        if let Some(c) = self.changes {
            if c > MAX_BACKLOG {
                return Some(format!(
                    "the replication that protects the rollback ({}) has {c} changes waiting, more than {MAX_BACKLOG}",
                    self.direction
                ));
            }
        }
        if self.bytes.is_none() && self.changes.is_none() {
            return Some(format!(
                "nothing follows the primary ({}): a rollback would lose writes",
                self.direction
            ));
        }
        None
    }
}

/// As the switchover refuses beyond it.
const MAX_BACKLOG: i64 = 50_000;

/// The lag of the direction that follows `primary`.
pub async fn protecting(plan: &Plan, primary: Backend) -> Result<Lag, MigrationError> {
    let forward = primary == Backend::Source;
    let direction = if forward {
        "source -> target"
    } else {
        "target -> source"
    };
    match plan.sync.mode {
        Mode::Native => {
            let (url, side, slot) = if forward {
                (&plan.source.url, Side::Source, plan.sync.slot())
            } else {
                (&plan.target.url, Side::Target, plan.sync.reverse_slot())
            };
            let client = connect(url, side).await?;
            Ok(Lag {
                direction,
                bytes: replication::slot_lag(&client, side, &slot).await?,
                changes: None,
            })
        }
        Mode::Trigger => {
            let link = if forward {
                cutover_pg::sync::forward_link(plan)
            } else {
                cutover_pg::sync::reverse_link(plan)
            };
            let origin = connect(&link.origin, link.origin_side).await?;
            let follower = connect(&link.follower, link.follower_side).await?;
            let changes = match cutover_pg::trigger::backlog(&origin, &follower, &link).await {
                Ok(b) => Some(b.changes),
                Err(cutover_pg::PgError::Refused(_)) => None,
                Err(e) => return Err(e.into()),
            };
            Ok(Lag {
                direction,
                bytes: None,
                changes,
            })
        }
    }
}
