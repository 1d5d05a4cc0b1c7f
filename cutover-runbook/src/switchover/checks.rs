//! The checks before the pause, and the new primary made ready: the preconditions (nothing
//! changes if they fail), the sessions around the proxy, the applications' grants on the new
//! primary, its statistics, materialized views and large objects.

use std::time::Instant;

use cutover_pg::fence;
use cutover_pg::inspect::{self, Table};
use cutover_pg::PgError;

use super::{backend, fence_key, Pre, Switch, SwitchError};

impl Switch<'_> {
    pub(super) async fn preconditions(&self) -> Result<Pre, SwitchError> {
        let (from, to) = (self.c.on(self.from), self.c.on(self.to));
        let status = self.admin.status().await?;
        if status.active != backend(self.from) {
            return Err(SwitchError::Refused(format!(
                "the proxy is on the {}, not the {}",
                status.active, self.from
            )));
        }
        // The schemas are the same: a change the new primary lacks would fail the
        // applications' first statement that uses it, or lose what it holds. Checked first:
        // a held change also stops the replication, which the next check would report only
        // as that.
        let drift =
            cutover_pg::drift::drift_between((from, self.from), (to, self.to), &self.plan.sync)
                .await?;
        if !drift.is_empty() {
            let list: Vec<&str> = drift.iter().map(|d| d.describe.as_str()).collect();
            return Err(SwitchError::Refused(format!(
                "the {}'s schema differs from the {}'s: {}; review them with `cutover db schema show` and run `cutover db schema apply` (`cutover db follow` applies additive ones by itself)",
                self.to,
                self.from,
                list.join("; ")
            )));
        }
        self.old.check_ready(&self.c, self.plan).await?;
        if !self.options.no_reverse {
            self.new.check_can_start(&self.c).await?;
        }
        let others = self.around_the_proxy(from).await?;
        if !others.is_empty() && !self.options.force {
            let list: Vec<String> = others.iter().map(|s| s.describe()).collect();
            return Err(SwitchError::Refused(format!(
                "{} sessions on the {} do not go through the proxy: {}; point them at the proxy, or pass --force to end them at the fence",
                others.len(),
                self.from,
                list.join("; ")
            )));
        }
        let tables_from = inspect::tables(from, self.from, &self.plan.sync).await?;
        let tables_to = inspect::tables(to, self.to, &self.plan.sync).await?;
        let sequences = inspect::sequences(from, self.from, &self.plan.sync).await?;
        // The applications can work on the new primary (pg_dump's copy carries no grants). A
        // side fenced by an earlier switch gets its exact grants back before the switch.
        if self.steps.journal().fact(&fence_key(self.to))?.is_none() {
            self.check_grants(&status, &tables_to).await?;
        }
        let fence = fence::plan_fence(from, self.from, &tables_from, &sequences).await?;
        let large_objects = cutover_pg::large_objects::volume(from, self.from).await?.0
            + cutover_pg::large_objects::volume(to, self.to).await?.0
            > 0;
        // Sessions log in to the new primary now, so the pause only swaps connections.
        self.admin.prepare(backend(self.to)).await?;
        Ok(Pre {
            tables_from,
            tables_to,
            sequences,
            fence,
            large_objects,
        })
    }

    /// The sessions on `from` that do not come through the proxy: nobody may write there
    /// behind its back. cutover's own sessions (trigger mode's applier reads the old primary,
    /// a migration's checks come and go) are not applications; the fence's terminations only
    /// make them reconnect. A session the proxy is logging in (or has just closed) is in
    /// `pg_stat_activity` before (after) the proxy's status lists it, and a fleet's status is
    /// up to a heartbeat old: a session counts only when every look for [`SETTLE`] finds it.
    async fn around_the_proxy(
        &self,
        from: &tokio_postgres::Client,
    ) -> Result<Vec<fence::SessionInfo>, SwitchError> {
        const SETTLE: std::time::Duration = std::time::Duration::from_millis(2500);
        let started = Instant::now();
        let mut suspects: Option<Vec<fence::SessionInfo>> = None;
        loop {
            let listed = fence::other_sessions(from, self.from, &[]).await?;
            // Read after the sessions: one the proxy had logged in by then is in it.
            let pids = self.admin.status().await?.server_pids(backend(self.from));
            let seen: Vec<_> = listed
                .into_iter()
                .filter(|s| !pids.contains(&s.pid) && !fence::is_cutover_session(s))
                .filter(|s| {
                    suspects
                        .as_ref()
                        .is_none_or(|before| before.iter().any(|b| b.pid == s.pid))
                })
                .collect();
            if seen.is_empty() || started.elapsed() >= SETTLE {
                return Ok(seen);
            }
            suspects = Some(seen);
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    async fn check_grants(
        &self,
        status: &cutover_proxy::Status,
        tables_to: &[Table],
    ) -> Result<(), SwitchError> {
        let to = self.c.on(self.to);
        let mut roles: Vec<String> = self.options.app_roles.clone();
        roles.extend(status.sessions.iter().map(|s| s.user.clone()));
        roles.sort();
        roles.dedup();
        let names: Vec<String> = tables_to.iter().map(|t| t.qualified()).collect();
        let seqs: Vec<String> = inspect::sequences(to, self.to, &self.plan.sync)
            .await?
            .iter()
            .map(|s| cutover_pg::qualified(&s.schema, &s.name))
            .collect();
        let rows = cutover_pg::grants::missing(to, self.to, &roles, &names, &seqs).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = rows
            .iter()
            .map(|(role, what)| {
                if what.is_empty() {
                    format!("role {role} does not exist (CREATE ROLE {role} LOGIN PASSWORD ...)")
                } else {
                    format!("role {role} cannot read and write {what}")
                }
            })
            .collect();
        Err(SwitchError::Refused(format!(
            "the applications could not work on the {}: {}; grant it there, e.g. GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO <role>; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO <role>",
            self.to,
            list.join("; ")
        )))
    }

    /// Before the pause, the new primary made ready for the traffic: statistics for tables
    /// that have none, and the materialized views as fresh as on the old primary (their
    /// contents are not replicated; a view empty there would fail every read).
    pub(super) async fn ready(&self, pre: &Pre) -> Result<(), SwitchError> {
        let t = Instant::now();
        self.steps
            .run(
                &self.step("ready"),
                &format!(
                    "ANALYZE tables without statistics and refresh the materialized views on the {}",
                    self.to
                ),
                || async {
                    let mut ready = cutover_pg::ready::prepare(
                        (self.c.on(self.from), self.from),
                        (self.c.on(self.to), self.to),
                        &pre.tables_to,
                        &self.plan.sync.schemas,
                        false,
                    )
                    .await?;
                    if pre.large_objects {
                        // The bulk now; what changes meanwhile is copied inside the pause.
                        let lo = self.copy_large_objects().await?;
                        ready.notes.push(cutover_core::engine::Outcome::summary(&lo));
                    }
                    Ok::<_, SwitchError>(ready)
                },
            )
            .await?;
        self.time("ready", t);
        Ok(())
    }

    pub(super) async fn copy_large_objects(
        &self,
    ) -> Result<cutover_pg::large_objects::LoCopy, PgError> {
        cutover_pg::large_objects::copy(
            (self.c.on(self.from), self.from),
            (self.c.on(self.to), self.to),
        )
        .await
    }
}
