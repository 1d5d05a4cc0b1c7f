//! `db cleanup`: removes everything cutover made, on both sides, and says what it removed.
//!
//! The subscription is detached from its slot before it is dropped (`DISABLE`, then
//! `slot_name = NONE`), so the drop works even when the target cannot reach the source; the
//! slot (and any table-sync slot a killed copy left) is then dropped on the source directly.
//! Every step looks before it acts, so running it twice removes nothing the second time.
//! Tables and data on the target are never touched.

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

async fn drop_subscription(target: &Client, name: &str) -> Result<Option<u32>, PgError> {
    let Some(oid) = subscription_oid(target, name).await? else {
        return Ok(None);
    };
    let q = ident(name);
    target
        .batch_execute(&format!("ALTER SUBSCRIPTION {q} DISABLE"))
        .await
        .ctx(Side::Target, "disable the subscription")?;
    target
        .batch_execute(&format!("ALTER SUBSCRIPTION {q} SET (slot_name = NONE)"))
        .await
        .ctx(Side::Target, "detach the subscription from its slot")?;
    target
        .batch_execute(&format!("DROP SUBSCRIPTION {q}"))
        .await
        .ctx(Side::Target, "drop the subscription")?;
    Ok(Some(oid))
}

/// Drops a slot on the source, ending the walsender that still holds it if need be.
pub async fn drop_slot(source: &Client, slot: &str) -> Result<bool, PgError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let row = source
            .query_opt(
                "SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .ctx(Side::Source, "look for the replication slot")?;
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
                Err(e) => Err(PgError::sql(Side::Source, "drop the replication slot", e)),
            };
        }
        if Instant::now() > deadline {
            return Err(PgError::Refused(format!(
                "replication slot {slot} on the source stays in use (pid {}); stop the client using it and run `cutover db cleanup` again",
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
/// slots), then slots, then the publication.
async fn find_on(plan: &Plan, source: &Client, target: &Client) -> Result<Vec<Removed>, PgError> {
    let mut found = vec![];
    let sub = plan.sync.subscription();
    let sub_oid = subscription_oid(target, &sub).await?;
    // The probe: a sync killed between creating and dropping it leaves it (it has no slot).
    for name in [sub, crate::preflight_gate::probe_name(plan)] {
        if subscription_oid(target, &name).await?.is_some() {
            found.push(Removed {
                side: Side::Target,
                kind: "subscription",
                name,
            });
        }
    }
    // Table-sync slots are named pg_<subscription oid>_sync_<table oid>_<system id>.
    let pattern = match sub_oid {
        Some(oid) => format!("pg\\_{oid}\\_sync\\_%"),
        None => String::from("-"),
    };
    let rows = source
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name = $1 OR slot_name LIKE $2 ORDER BY 1",
            &[&plan.sync.slot(), &pattern],
        )
        .await
        .ctx(Side::Source, "list replication slots")?;
    for r in rows {
        found.push(Removed {
            side: Side::Source,
            kind: "replication slot",
            name: r.get(0),
        });
    }
    let publication = plan.sync.publication();
    let exists = source
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .ctx(Side::Source, "look for the publication")?;
    if exists.is_some() {
        found.push(Removed {
            side: Side::Source,
            kind: "publication",
            name: publication,
        });
    }
    Ok(found)
}

/// Removes the subscriptions, the slots and the publication. Idempotent: what is already gone
/// is not listed.
pub async fn cleanup(plan: &Plan) -> Result<Vec<Removed>, PgError> {
    let source = connect(&plan.source.url, Side::Source).await?;
    let target = connect(&plan.target.url, Side::Target).await?;
    let mut removed = vec![];
    for item in find_on(plan, &source, &target).await? {
        let gone = match item.kind {
            "subscription" => drop_subscription(&target, &item.name).await?.is_some(),
            "replication slot" => drop_slot(&source, &item.name).await?,
            _ => {
                source
                    .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", ident(&item.name)))
                    .await
                    .ctx(Side::Source, "drop the publication")?;
                true
            }
        };
        if gone {
            removed.push(item);
        }
    }
    Ok(removed)
}
