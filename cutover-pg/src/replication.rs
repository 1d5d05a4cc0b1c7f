//! The direction of native logical replication, for a switchover and its rollback.
//!
//! A switchover runs in terms of the side being left ("from") and the side taking over ("to"),
//! so the same functions serve source→target and, for a rollback, target→source. With the
//! writes fenced on "from" the runbook:
//! 1. waits until the subscriber has applied everything up to the fence ([`wait_applied`]);
//! 2. stops the old direction ([`stop_subscription`]): the subscription and its slot go;
//! 3. starts the reverse direction ([`start_replication`]) with no initial copy, so every write
//!    the new primary takes from then on also reaches the old one and a later rollback loses
//!    nothing.
//!
//! Invariant: the old direction is stopped before the reverse one starts. PostgreSQL 15 has no
//! `origin = none`: a publication also publishes the rows its server's own subscription
//! applied, so with both directions running every change would go round in a loop.
//! [`start_replication`] refuses while the publisher still has a subscription to any of the
//! tables.
//!
//! Waiting is measured on the publisher's slot, in bytes: `confirmed_flush_lsn` is the position
//! up to which the subscriber has applied and flushed every change, and it does not stand
//! still when nothing is written (the walsender's keepalives move it to the end of the WAL).
//!
//! Invariant: the password of the publisher's URL reaches only the subscriber's catalog (the
//! subscription's `CONNECTION`); every error that could echo it is redacted.

use std::time::{Duration, Instant};

use cutover_core::ConnString;
use tokio_postgres::Client;

use crate::connect::{ident, literal};
use crate::error::{PgError, Side, SqlContext};
use crate::inspect::Table;

/// How often [`wait_applied`] looks at the slot: the writes are paused meanwhile.
const POLL: Duration = Duration::from_millis(50);

/// The goal position, moved back to the start of its WAL page when it points just past the
/// page's header: `pg_current_wal_insert_lsn()` names that spot when the last record ended on
/// the page boundary, while the subscriber confirms the record's end, the boundary itself, and
/// would never get further until something else is written. No WAL lies in between.
const GOAL: &str = "
WITH p AS (
    SELECT $2::text::pg_lsn AS lsn,
           pg_wal_lsn_diff($2::text::pg_lsn, '0/0') AS pos,
           current_setting('wal_block_size')::numeric AS page,
           (SELECT setting::numeric FROM pg_settings WHERE name = 'wal_segment_size') AS seg
), g AS (
    SELECT CASE WHEN pos % page = CASE WHEN pos % seg < page THEN 40 ELSE 24 END
                THEN lsn - (pos % page) ELSE lsn END AS goal
      FROM p
)
SELECT s.slot_name IS NOT NULL, s.slot_type, coalesce(s.active, false),
       coalesce(s.confirmed_flush_lsn >= g.goal, false),
       pg_wal_lsn_diff(g.goal, s.confirmed_flush_lsn)::bigint
  FROM g LEFT JOIN pg_replication_slots s ON s.slot_name = $1";

/// Waits until the slot `slot` on `publisher` has `confirmed_flush_lsn >= lsn`: its subscriber
/// has applied everything up to `lsn` (a [`crate::fence::wal_position`] read after the fence).
/// Looks every 50 ms. Fails at once when the slot does not exist, and after `timeout` with the
/// lag in bytes.
pub async fn wait_applied(
    publisher: &Client,
    side: Side,
    slot: &str,
    lsn: &str,
    timeout: Duration,
) -> Result<(), PgError> {
    let deadline = Instant::now() + timeout;
    loop {
        let row = publisher
            .query_one(GOAL, &[&slot, &lsn])
            .await
            .ctx(side, "read the replication slot")?;
        let (exists, kind, active, reached, lag): (bool, Option<String>, bool, bool, Option<i64>) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        if !exists {
            return Err(PgError::Refused(format!(
                "the {side} has no replication slot {slot}, so nothing applies its changes elsewhere; start the replication first (or check the slot's name)"
            )));
        }
        if kind.as_deref() != Some("logical") {
            return Err(PgError::Refused(format!(
                "replication slot {slot} on the {side} is not a logical slot; give the slot of the subscription that follows the {side}"
            )));
        }
        if reached {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let lag = lag.map_or("an unknown number of".to_string(), |l| l.to_string());
            return Err(PgError::Refused(format!(
                "the subscriber of slot {slot} has not applied everything up to {lsn} within {:.1}s: it is {lag} bytes behind{}; \
                 read the subscriber's server log and `cutover db status`, then try again",
                timeout.as_secs_f64(),
                if active {
                    ""
                } else {
                    ", and no subscriber is connected to the slot"
                }
            )));
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// The subscription `name` in the current database: (oid, slot name).
async fn find_subscription(
    client: &Client,
    side: Side,
    name: &str,
) -> Result<Option<(u32, Option<String>)>, PgError> {
    let row = client
        .query_opt(
            "SELECT oid, subslotname::text FROM pg_subscription WHERE subname = $1
                AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&name],
        )
        .await
        .ctx(side, "look for the subscription")?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Whether a failed `DROP SUBSCRIPTION` failed on the publisher's side (unreachable, or the
/// slot gone), so that detaching the slot and dropping again is the way out.
fn publisher_failed(e: &tokio_postgres::Error) -> Option<bool> {
    let db = e.as_db_error()?;
    let message = db.message();
    if message.contains("could not connect to publisher") || db.code().code().starts_with("08") {
        // Unreachable: the slot stays behind on the publisher.
        Some(true)
    } else if message.contains("on publisher") && message.contains("does not exist") {
        // The slot is already gone.
        Some(false)
    } else {
        None
    }
}

/// Drops the subscription `name` on `subscriber` and its slot on the publisher: `DISABLE`, then
/// `DROP SUBSCRIPTION`, which drops the slot over its own connection to the publisher. When the
/// publisher cannot be reached, the subscription is detached from the slot (`slot_name =
/// NONE`) and dropped all the same; the slot left behind is logged (it retains WAL on the
/// publisher until `cutover db cleanup` drops it). Idempotent: Ok(false) when there is no such
/// subscription.
pub async fn stop_subscription(
    subscriber: &Client,
    side: Side,
    name: &str,
) -> Result<bool, PgError> {
    let Some((_, slot)) = find_subscription(subscriber, side, name).await? else {
        return Ok(false);
    };
    let q = ident(name);
    subscriber
        .batch_execute(&format!("ALTER SUBSCRIPTION {q} DISABLE"))
        .await
        .ctx(side, "disable the subscription")?;
    let dropped = subscriber
        .batch_execute(&format!("DROP SUBSCRIPTION {q}"))
        .await;
    let Err(e) = dropped else { return Ok(true) };
    let Some(left_behind) = publisher_failed(&e) else {
        return Err(PgError::sql(side, "drop the subscription", e));
    };
    subscriber
        .batch_execute(&format!("ALTER SUBSCRIPTION {q} SET (slot_name = NONE)"))
        .await
        .ctx(side, "detach the subscription from its slot")?;
    subscriber
        .batch_execute(&format!("DROP SUBSCRIPTION {q}"))
        .await
        .ctx(side, "drop the subscription")?;
    if left_behind {
        tracing::warn!(
            subscription = name,
            slot = slot.as_deref().unwrap_or(""),
            "the publisher of subscription {name} could not be reached, so its replication slot {} stays there and retains WAL; \
             drop it with `cutover db cleanup` or SELECT pg_drop_replication_slot('{}') on the publisher",
            slot.as_deref().unwrap_or(""),
            slot.as_deref().unwrap_or("")
        );
    }
    Ok(true)
}

/// The tables of publication `name`, as `schema.name`, sorted; None when it does not exist.
/// The tables a publication covers, as schema.name, sorted; cutover's own (the switchover's
/// marker table, which a switch publishes beside the moved tables) left out. None when it
/// does not exist.
pub(crate) async fn publication_tables(
    client: &Client,
    side: Side,
    name: &str,
) -> Result<Option<Vec<String>>, PgError> {
    let exists = client
        .query_opt(
            "SELECT oid FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .ctx(side, "look for the publication")?;
    let Some(row) = exists else { return Ok(None) };
    let oid: u32 = row.get(0);
    let rows = client
        .query(
            "SELECT n.nspname || '.' || c.relname FROM pg_publication_rel r
               JOIN pg_class c ON c.oid = r.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE r.prpubid = $1 AND n.nspname <> $2 ORDER BY 1",
            &[&oid, &crate::inspect::OWN_SCHEMA],
        )
        .await
        .ctx(side, "list the publication's tables")?;
    Ok(Some(rows.iter().map(|r| r.get(0)).collect()))
}

/// Creates publication `name` on `client` for exactly `tables`
/// (`FOR TABLE ONLY ... WITH (publish_via_partition_root = true)`), or checks that the one there
/// covers the same tables. Returns what it did, for the journal.
///
/// `ONLY`: an inheritance child is a table of its own, published only when selected itself (a
/// partitioned table always brings its partitions, published through the root).
pub async fn ensure_publication(
    client: &Client,
    side: Side,
    name: &str,
    tables: &[Table],
) -> Result<String, PgError> {
    let mut wanted: Vec<String> = tables
        .iter()
        .filter(|t| t.schema != crate::inspect::OWN_SCHEMA)
        .map(Table::display)
        .collect();
    wanted.sort();
    match publication_tables(client, side, name).await? {
        Some(have) if have == wanted => Ok(format!("publication {name} already in place")),
        Some(_) => Err(PgError::Refused(format!(
            "publication {name} on the {side} covers other tables than the ones to replicate; \
             drop it (DROP PUBLICATION {}) if cutover made it, or choose another name",
            ident(name)
        ))),
        None => {
            let list: Vec<String> = tables
                .iter()
                .map(|t| {
                    if t.partitioned {
                        t.qualified()
                    } else {
                        format!("ONLY {}", t.qualified())
                    }
                })
                .collect();
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
                ident(name),
                list.join(", ")
            );
            client
                .batch_execute(&sql)
                .await
                .ctx(side, "create the publication")?;
            Ok(format!(
                "publication {name} created for {} tables",
                tables.len()
            ))
        }
    }
}

/// Enabled subscriptions on `client` that replicate into any of `tables` (or their
/// partitions). A disabled one applies nothing, so nothing can loop through it; the
/// switchover disables the old direction inside its pause and drops it after.
async fn subscriptions_into(
    client: &Client,
    side: Side,
    tables: &[Table],
) -> Result<Vec<String>, PgError> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let rows = client
        .query(
            "WITH named AS (
                 SELECT c.oid, c.relkind FROM unnest($1::text[], $2::text[]) w(s, n)
                   JOIN pg_namespace ns ON ns.nspname = w.s
                   JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = w.n
             ), rels AS (
                 SELECT oid FROM named
                 UNION SELECT t.relid FROM named, pg_partition_tree(named.oid) t WHERE named.relkind = 'p'
             )
             SELECT DISTINCT s.subname::text FROM pg_subscription s
               JOIN pg_subscription_rel r ON r.srsubid = s.oid
              WHERE r.srrelid IN (SELECT oid FROM rels) AND s.subenabled
                AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
              ORDER BY 1",
            &[&schemas, &names],
        )
        .await
        .ctx(side, "look for subscriptions into the tables")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Starts replication `publisher` → `subscriber` for `tables`, with no initial copy: the
/// publication on the publisher (if missing, see [`ensure_publication`]), then on the subscriber
/// `CREATE SUBSCRIPTION subscription CONNECTION '<publisher_url>' PUBLICATION publication WITH
/// (copy_data = false, create_slot = true, slot_name = slot, enabled = true)` (if missing; an
/// existing one is enabled).
///
/// Idempotent, and nothing is lost when an earlier call died half-way: an idle logical slot
/// `slot` already on the publisher (a `CREATE SUBSCRIPTION` killed after it made the slot) is
/// taken over with `create_slot = false`, so the changes it holds are applied.
///
/// Refuses while the publisher still has a subscription into any of the tables (PostgreSQL 15:
/// the changes would loop; stop the old direction first), and when the subscriber's role may
/// not create a subscription ([`can_subscribe`]).
#[allow(clippy::too_many_arguments)]
pub async fn start_replication(
    publisher: &Client,
    publisher_side: Side,
    publisher_url: &ConnString,
    subscriber: &Client,
    subscriber_side: Side,
    publication: &str,
    subscription: &str,
    slot: &str,
    tables: &[Table],
) -> Result<(), PgError> {
    let looping = subscriptions_into(publisher, publisher_side, tables).await?;
    if !looping.is_empty() {
        return Err(PgError::Refused(format!(
            "the {publisher_side} still has subscription {} into the tables to publish; stop it first \
             (PostgreSQL 15 would publish the changes it applies too, and they would go round in a loop)",
            looping.join(", ")
        )));
    }
    ensure_publication(publisher, publisher_side, publication, tables).await?;
    if find_subscription(subscriber, subscriber_side, subscription)
        .await?
        .is_some()
    {
        subscriber
            .batch_execute(&format!(
                "ALTER SUBSCRIPTION {} ENABLE",
                ident(subscription)
            ))
            .await
            .ctx(subscriber_side, "enable the subscription")?;
        return Ok(());
    }
    create_subscription(
        publisher,
        publisher_side,
        publisher_url,
        subscriber,
        subscriber_side,
        publication,
        subscription,
        slot,
        true,
    )
    .await
}

/// Makes replication `publisher` → `subscriber` ready to start without starting it: the
/// publication, and a *disabled* subscription whose slot is created now. The slot's creation
/// (a walsender login and a wait for a consistent snapshot on the publisher) is the slow part
/// of starting replication; done here, [`set_start`] and enabling the subscription later only
/// move a position and flip a flag.
///
/// The slot records everything the publisher commits from now on, including what another
/// subscription still applies there. None of that is ever sent: [`set_start`] starts
/// the subscription at a position given by the caller, and PostgreSQL's logical decoding
/// skips every transaction that committed before the position a subscriber asks for. So,
/// unlike [`start_replication`], this needs no other direction to be stopped first.
///
/// Idempotent: a disabled subscription of that name is kept (its start position is set
/// anew by [`set_start`]); an enabled one is refused.
#[allow(clippy::too_many_arguments)]
pub async fn prepare_replication(
    publisher: &Client,
    publisher_side: Side,
    publisher_url: &ConnString,
    subscriber: &Client,
    subscriber_side: Side,
    publication: &str,
    subscription: &str,
    slot: &str,
    tables: &[Table],
) -> Result<(), PgError> {
    if let Some(enabled) = subscription_enabled(subscriber, subscriber_side, subscription).await? {
        if enabled {
            return Err(PgError::Refused(format!(
                "subscription {subscription} on the {subscriber_side} is already running; drop it (`cutover db cleanup`) or let the switch that started it finish"
            )));
        }
        ensure_publication(publisher, publisher_side, publication, tables).await?;
        return Ok(());
    }
    let existed = publication_tables(publisher, publisher_side, publication)
        .await?
        .is_some();
    ensure_publication(publisher, publisher_side, publication, tables).await?;
    let made = create_subscription(
        publisher,
        publisher_side,
        publisher_url,
        subscriber,
        subscriber_side,
        publication,
        subscription,
        slot,
        false,
    )
    .await;
    if made.is_err() && !existed {
        // Nothing half-made is left: the publication made for it goes with the failure. If
        // even this fails, `cutover db cleanup` drops it.
        let _ = publisher
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                ident(publication)
            ))
            .await;
    }
    made
}

/// Sets where a subscription made by [`prepare_replication`] starts: `from_lsn`, a WAL
/// position of its publisher. Every transaction the publisher committed before it is
/// skipped, everything committed after is applied, whenever the subscription is enabled
/// (its slot keeps all of it until then). The position goes to the subscription's
/// replication origin (`pg_replication_origin_advance`, which PostgreSQL 15 allows the
/// superusers that may create subscriptions); the apply worker asks the publisher to start
/// there. The subscription must be disabled.
pub async fn set_start(
    subscriber: &Client,
    subscriber_side: Side,
    subscription: &str,
    from_lsn: &str,
) -> Result<(), PgError> {
    let row = subscriber
        .query_opt(
            "SELECT pg_catalog.pg_replication_origin_advance('pg_' || s.oid, $2::text::pg_lsn), s.subenabled
               FROM pg_catalog.pg_subscription s
              WHERE s.subname = $1
                AND s.subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())",
            &[&subscription, &from_lsn],
        )
        .await
        .ctx(subscriber_side, "set where the prepared subscription starts")?;
    match row {
        None => Err(PgError::Refused(format!(
            "subscription {subscription} is not on the {subscriber_side}; it should have been prepared before the pause"
        ))),
        Some(r) if r.get::<_, bool>(1) => Err(PgError::Refused(format!(
            "subscription {subscription} on the {subscriber_side} is already running, so its start cannot be set"
        ))),
        Some(_) => Ok(()),
    }
}

/// Whether subscription `name` exists in this database, and if so whether it is enabled.
pub async fn subscription_enabled(
    client: &Client,
    side: Side,
    name: &str,
) -> Result<Option<bool>, PgError> {
    let row = client
        .query_opt(
            "SELECT subenabled FROM pg_catalog.pg_subscription
              WHERE subname = $1
                AND subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())",
            &[&name],
        )
        .await
        .ctx(side, "look for the subscription")?;
    Ok(row.map(|r| r.get(0)))
}

/// `CREATE SUBSCRIPTION` with no initial copy, creating the slot unless an idle one of ours
/// is already there (see [`start_replication`]).
#[allow(clippy::too_many_arguments)]
async fn create_subscription(
    publisher: &Client,
    publisher_side: Side,
    publisher_url: &ConnString,
    subscriber: &Client,
    subscriber_side: Side,
    publication: &str,
    subscription: &str,
    slot: &str,
    enabled: bool,
) -> Result<(), PgError> {
    can_subscribe(subscriber, subscriber_side).await?;
    let existing = publisher
        .query_opt(
            "SELECT slot_type, coalesce(plugin, ''), coalesce(database = current_database(), false),
                    active, current_database()::text
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .ctx(publisher_side, "look for the replication slot")?;
    let create_slot = match existing {
        None => true,
        Some(r) => {
            let (kind, plugin, ours, active, database): (String, String, bool, bool, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            if active {
                return Err(PgError::Refused(format!(
                    "replication slot {slot} on the {publisher_side} is in use by another client; stop it, or choose another slot name"
                )));
            }
            if kind != "logical" || plugin != "pgoutput" || !ours {
                return Err(PgError::Refused(format!(
                    "replication slot {slot} on the {publisher_side} exists and is not a pgoutput slot of database {database}; drop it or choose another slot name"
                )));
            }
            false
        }
    };
    let conninfo = publisher_url.conninfo_with_password();
    let sql = format!(
        "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} \
         WITH (copy_data = false, create_slot = {create_slot}, slot_name = {}, enabled = {enabled})",
        ident(subscription),
        literal(conninfo.expose()),
        ident(publication),
        literal(slot)
    );
    subscriber.batch_execute(&sql).await.map_err(|e| {
        let mut err = PgError::sql(subscriber_side, "create the subscription", e);
        if let PgError::Sql { message, .. } = &mut err {
            *message = cutover_core::redact(message, publisher_url.password());
        }
        err
    })?;
    Ok(())
}

/// Whether the role of `subscriber` may create a subscription: PostgreSQL 15 allows it to
/// superusers only, 16 and later to members of `pg_create_subscription` with CREATE on the
/// database. Refuses otherwise, saying that replication into this side then needs trigger mode.
pub async fn can_subscribe(subscriber: &Client, side: Side) -> Result<(), PgError> {
    let row = subscriber
        .query_one(
            "SELECT current_setting('server_version_num')::int, r.rolsuper, current_user::text,
                    current_database()::text,
                    EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = 'pg_create_subscription'
                             AND pg_has_role(current_user, g.oid, 'USAGE')),
                    has_database_privilege(current_database(), 'CREATE')
               FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .ctx(side, "read the role's privileges")?;
    let (version, superuser, role, database, member, create): (
        i32,
        bool,
        String,
        String,
        bool,
        bool,
    ) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    if superuser || (version >= 160000 && member && create) {
        return Ok(());
    }
    let how = if version >= 160000 {
        format!(
            "it needs GRANT pg_create_subscription TO {0} and GRANT CREATE ON DATABASE {1} TO {0}",
            ident(&role),
            ident(&database)
        )
    } else {
        "PostgreSQL 15 lets only superusers create subscriptions".to_string()
    };
    Err(PgError::Refused(format!(
        "role \"{role}\" on the {side} cannot create a subscription ({how}), so native replication into the {side} is not possible; \
         connect to the {side} as a role that can, or use trigger mode (sync.mode = \"trigger\")"
    )))
}

/// What a subscription is doing, for the switchover's preconditions.
#[derive(Clone, Debug)]
pub struct SubscriptionInfo {
    pub enabled: bool,
    /// Tables not yet in state `r` (ready).
    pub not_ready: i64,
}

/// The subscription `name` in this database, if any.
pub async fn subscription_info(
    client: &Client,
    side: Side,
    name: &str,
) -> Result<Option<SubscriptionInfo>, PgError> {
    let row = client
        .query_opt(
            "SELECT s.subenabled,
                    (SELECT count(*) FROM pg_subscription_rel r WHERE r.srsubid = s.oid AND r.srsubstate <> 'r')
               FROM pg_subscription s
              WHERE s.subname = $1 AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&name],
        )
        .await
        .ctx(side, "read the subscription")?;
    Ok(row.map(|r| SubscriptionInfo {
        enabled: r.get(0),
        not_ready: r.get(1),
    }))
}

/// True when the subscription's apply worker runs. A subscription just enabled has none for
/// up to `wal_retrieve_retry_interval` (5 s by default), until the launcher starts one.
pub async fn apply_worker_running(
    client: &Client,
    side: Side,
    name: &str,
) -> Result<bool, PgError> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_stat_subscription w JOIN pg_subscription s ON s.oid = w.subid
              WHERE s.subname = $1 AND w.relid IS NULL AND w.pid IS NOT NULL",
            &[&name],
        )
        .await
        .ctx(side, "look for the apply worker")?
        .is_some())
}

/// Bytes between the server's WAL position and what the slot's subscriber confirmed; `None`
/// when there is no such slot.
pub async fn slot_lag(client: &Client, side: Side, slot: &str) -> Result<Option<i64>, PgError> {
    let row = client
        .query_opt(
            "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .ctx(side, "read the replication slot")?;
    Ok(row.map(|r| r.get(0)))
}

/// Enables or disables a subscription. Disabling is how the switchover stops the old
/// direction inside its pause: instant, and undone by enabling it again.
pub async fn set_enabled(
    client: &Client,
    side: Side,
    name: &str,
    enabled: bool,
) -> Result<(), PgError> {
    let verb = if enabled { "ENABLE" } else { "DISABLE" };
    client
        .batch_execute(&format!("ALTER SUBSCRIPTION {} {verb}", ident(name)))
        .await
        .ctx(
            side,
            if enabled {
                "enable the subscription"
            } else {
                "disable the subscription"
            },
        )
}
