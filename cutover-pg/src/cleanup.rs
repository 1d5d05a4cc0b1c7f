//! `db cleanup`: removes everything cutover made, on both sides, and says what it removed.
//!
//! The subscription is detached from its slot before it is dropped (`DISABLE`, then
//! `slot_name = NONE`), so the drop works even when the target cannot reach the source; the
//! slot (and any table-sync slot a killed copy left) is then dropped on the source directly.
//! Every step looks before it acts, so running it twice removes nothing the second time.
//! The proxies' control tables go too once no proxy renews its lease there. Tables and data
//! on the target are never touched.

use std::time::{Duration, Instant};

use cutover_core::Plan;
use serde::Serialize;
use tokio_postgres::Client;

use crate::connect::{connect, ident};
use crate::error::{PgError, Side, SqlContext};
use crate::sync::subscription_oid;

#[derive(Clone, Debug, Serialize)]
pub struct Removed {
    pub side: Side,
    pub kind: &'static str,
    pub name: String,
}

async fn drop_subscription(
    target: &Client,
    side: Side,
    name: &str,
) -> Result<Option<u32>, PgError> {
    let Some(oid) = subscription_oid(target, name).await? else {
        return Ok(None);
    };
    let q = ident(name);
    target
        .batch_execute(&format!("ALTER SUBSCRIPTION {q} DISABLE"))
        .await
        .ctx(side, "disable the subscription")?;
    target
        .batch_execute(&format!("ALTER SUBSCRIPTION {q} SET (slot_name = NONE)"))
        .await
        .ctx(side, "detach the subscription from its slot")?;
    target
        .batch_execute(&format!("DROP SUBSCRIPTION {q}"))
        .await
        .ctx(side, "drop the subscription")?;
    Ok(Some(oid))
}

/// Drops a slot on the source, ending the walsender that still holds it if need be.
pub async fn drop_slot(source: &Client, slot: &str) -> Result<bool, PgError> {
    drop_slot_on(source, Side::Source, slot).await
}

/// Drops a slot on either side, ending the walsender that still holds it if need be.
pub async fn drop_slot_on(source: &Client, side: Side, slot: &str) -> Result<bool, PgError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let row = source
            .query_opt(
                "SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .ctx(side, "look for the replication slot")?;
        let Some(row) = row else { return Ok(false) };
        let (active, pid): (bool, Option<i32>) = (row.get(0), row.get(1));
        if !active {
            return match source
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
            {
                Ok(_) => Ok(true),
                // Became active again, or vanished in between: look again.
                Err(e) if Instant::now() < deadline && e.code().is_some() => continue,
                Err(e) => Err(PgError::sql(side, "drop the replication slot", e)),
            };
        }
        if Instant::now() > deadline {
            return Err(PgError::Refused(format!(
                "replication slot {slot} on the {side} stays in use (pid {}); stop the client using it and run `cutover db cleanup` again",
                pid.unwrap_or(0)
            )));
        }
        if let Some(pid) = pid {
            let _ = source
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What [`cleanup`] would remove, changing nothing.
pub async fn find(plan: &Plan) -> Result<Vec<Removed>, PgError> {
    let source = connect(&plan.source.url, Side::Source).await?;
    let target = connect(&plan.target.url, Side::Target).await?;
    find_on(plan, &source, &target).await
}

/// Everything of cutover's on both sides, in the order it must go: subscriptions (which hold
/// slots), then slots, then publications, then the fence marker tables. Both directions: the
/// forward one `db sync` made and the reverse one a switchover made.
async fn find_on(plan: &Plan, source: &Client, target: &Client) -> Result<Vec<Removed>, PgError> {
    let mut found = vec![];
    let s = &plan.sync;
    let on = |side: Side| if side == Side::Source { source } else { target };
    // The probe: a sync killed between creating and dropping it leaves it (it has no slot).
    let subscriptions = [
        (Side::Target, s.subscription()),
        (Side::Target, crate::preflight_gate::probe_name(plan)),
        (Side::Source, s.reverse_subscription()),
    ];
    let mut sync_patterns = vec![];
    for (side, name) in subscriptions {
        if let Some(oid) = subscription_oid(on(side), &name).await? {
            // Table-sync slots are named pg_<subscription oid>_sync_<table oid>_<system id>,
            // on the other side.
            sync_patterns.push((side, format!("pg\\_{oid}\\_sync\\_%")));
            found.push(Removed {
                side,
                kind: "subscription",
                name,
            });
        }
    }
    for (side, slot) in [(Side::Source, s.slot()), (Side::Target, s.reverse_slot())] {
        let pattern = sync_patterns
            .iter()
            .find(|(sub_side, _)| *sub_side != side)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| "-".into());
        let rows = on(side)
            .query(
                "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name = $1 OR slot_name LIKE $2 ORDER BY 1",
                &[&slot, &pattern],
            )
            .await
            .ctx(side, "list replication slots")?;
        for r in rows {
            found.push(Removed {
                side,
                kind: "replication slot",
                name: r.get(0),
            });
        }
    }
    for (side, publication) in [
        (Side::Source, s.publication()),
        (Side::Target, s.reverse_publication()),
    ] {
        let exists = on(side)
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await
            .ctx(side, "look for the publication")?;
        if exists.is_some() {
            found.push(Removed {
                side,
                kind: "publication",
                name: publication,
            });
        }
    }
    for side in [Side::Source, Side::Target] {
        if crate::ddl_log::present(on(side), side).await? {
            found.push(Removed {
                side,
                kind: "event triggers",
                name: "cutover_ddl, cutover_ddl_drop and cutover.ddl_log".into(),
            });
        }
        let capture = on(side)
            .query_one(
                "SELECT to_regclass('cutover.changes') IS NOT NULL OR to_regclass('cutover.applied') IS NOT NULL
                        OR EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'cutover_capture')",
                &[],
            )
            .await
            .ctx(side, "look for the change capture")?;
        if capture.get::<_, bool>(0) {
            found.push(Removed {
                side,
                kind: "change capture",
                name: "cutover.changes, cutover.applied and the capture triggers".into(),
            });
        }
        // The proxies' control tables, once no proxy uses them: a lease renewed in the last
        // 10 s belongs to a running proxy, which would only make them again.
        let control = on(side)
            .query_one(
                "SELECT to_regclass('cutover.proxy_fleet') IS NOT NULL OR to_regclass('cutover.proxy_lease') IS NOT NULL",
                &[],
            )
            .await
            .ctx(side, "look for the proxies' control tables")?;
        if control.get::<_, bool>(0) && !proxies_running(on(side), side).await? {
            found.push(Removed {
                side,
                kind: "proxy control",
                name: "cutover.proxy_fleet and cutover.proxy_lease".into(),
            });
        }
        let queue = on(side)
            .query_one(
                "SELECT to_regclass('cutover.copy_job') IS NOT NULL OR to_regclass('cutover.copy_part') IS NOT NULL",
                &[],
            )
            .await
            .ctx(side, "look for the copy's queue")?;
        if queue.get::<_, bool>(0) {
            found.push(Removed {
                side,
                kind: "copy queue",
                name: "cutover.copy_job and cutover.copy_part".into(),
            });
        }
        let exists = on(side)
            .query_one("SELECT to_regclass('cutover.marker') IS NOT NULL", &[])
            .await
            .ctx(side, "look for the fence marker table")?;
        if exists.get::<_, bool>(0) {
            found.push(Removed {
                side,
                kind: "table",
                name: "cutover.marker".into(),
            });
        }
    }
    Ok(found)
}

/// Whether a proxy renewed its lease in the last 10 s on this side.
async fn proxies_running(client: &Client, side: Side) -> Result<bool, PgError> {
    if client
        .query_one("SELECT to_regclass('cutover.proxy_lease') IS NULL", &[])
        .await
        .ctx(side, "look for the proxies' leases")?
        .get::<_, bool>(0)
    {
        return Ok(false);
    }
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM cutover.proxy_lease WHERE heartbeat > now() - interval '10 seconds')",
            &[],
        )
        .await
        .ctx(side, "read the proxies' leases")?;
    Ok(row.get(0))
}

/// Removes the subscriptions, the slots, the publications and the marker tables.
/// Idempotent: what is already gone is not listed.
pub async fn cleanup(plan: &Plan) -> Result<Vec<Removed>, PgError> {
    let source = connect(&plan.source.url, Side::Source).await?;
    let target = connect(&plan.target.url, Side::Target).await?;
    let on = |side: Side| {
        if side == Side::Source {
            &source
        } else {
            &target
        }
    };
    let mut removed = vec![];
    for item in find_on(plan, &source, &target).await? {
        let client = on(item.side);
        let gone = match item.kind {
            "subscription" => drop_subscription(client, item.side, &item.name)
                .await?
                .is_some(),
            "replication slot" => drop_slot_on(client, item.side, &item.name).await?,
            "change capture" => {
                let gone = crate::trigger::remove_capture(client, item.side).await?;
                // A follower's own triggers were off while it followed; whichever side
                // lives on, its triggers work again.
                let tables = crate::inspect::tables(client, item.side, &plan.sync).await?;
                if !tables.is_empty() {
                    crate::trigger::set_user_triggers(client, item.side, &tables, true).await?;
                }
                gone
            }
            "proxy control" => {
                client
                    .batch_execute(
                        "DROP TABLE IF EXISTS cutover.proxy_lease; DROP TABLE IF EXISTS cutover.proxy_fleet",
                    )
                    .await
                    .ctx(item.side, "drop the proxies' control tables")?;
                true
            }
            "copy queue" => {
                client
                    .batch_execute(
                        "DROP TABLE IF EXISTS cutover.copy_part; DROP TABLE IF EXISTS cutover.copy_job",
                    )
                    .await
                    .ctx(item.side, "drop the copy's queue")?;
                true
            }
            "event triggers" => {
                crate::ddl_log::remove(client, item.side).await?;
                true
            }
            "publication" => {
                client
                    .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", ident(&item.name)))
                    .await
                    .ctx(item.side, "drop the publication")?;
                true
            }
            _ => {
                client
                    .batch_execute("DROP TABLE IF EXISTS cutover.marker")
                    .await
                    .ctx(item.side, "drop the fence marker table")?;
                true
            }
        };
        if gone {
            removed.push(item);
        }
    }
    // The schema goes once it is empty (it may hold what a user put there: then it stays).
    for side in [Side::Source, Side::Target] {
        let _ = on(side)
            .batch_execute("DROP SCHEMA IF EXISTS cutover RESTRICT")
            .await;
    }
    Ok(removed)
}
