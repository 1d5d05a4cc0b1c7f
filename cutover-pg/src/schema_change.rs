//! Applying schema drift ([`crate::drift`]) to the follower: the side being kept equal to
//! the primary (the target before a switchover).
//!
//! Each change is one statement on the follower, except:
//!
//! - a **new table**, created as `pg_dump --table` defines it; its rows then come with the
//!   replication (native: added to the publication and copied by the subscription's table
//!   synchronisation from a consistent point; trigger mode: the follower installs its capture
//!   and copies it from a snapshot exported after it, see `trigger::follow`);
//! - a **new column whose default the source computed row by row** (`now()`, a sequence, an
//!   identity): added with that default, then, in the same transaction, every existing row
//!   given the source's value, matched by key. Replication waits on the table meanwhile
//!   (its lock), and every change after the values were read is applied on top;
//! - a **dropped table**: native mode first lets the subscription forget it.
//!
//! A held change is applied only when asked (`cutover db schema apply`, after review).

use futures_util::{SinkExt, StreamExt};
use tokio_postgres::Client;

use cutover_core::ConnString;

use crate::connect::{connect, ident};
use crate::drift::{Change, Drift};
use crate::error::{PgError, Side, SqlContext};

/// The two sides of one direction.
pub struct Sides<'a> {
    pub origin: &'a Client,
    pub origin_side: Side,
    pub origin_url: &'a ConnString,
    pub follower: &'a Client,
    pub follower_side: Side,
    pub follower_url: &'a ConnString,
}

/// Applies one change to the follower. A new table gets its definition only (see the module
/// comment for its rows); `trigger_mode` disables its user triggers there, as `db sync` does
/// for every table it copies.
pub async fn apply_one(s: &Sides<'_>, d: &Drift, trigger_mode: bool) -> Result<String, PgError> {
    let q = d.qualified_table();
    match &d.change {
        Change::NewTable => {
            // Trigger mode copies the rows into a follower that may be behind: its foreign
            // keys come after, as drift, once the applier caught up.
            crate::schema::copy_table_definition(
                s.origin_url,
                s.follower_url,
                &d.schema,
                &d.table,
                !trigger_mode,
            )
            .await?;
            if trigger_mode {
                s.follower
                    .batch_execute(&format!("ALTER TABLE {q} DISABLE TRIGGER USER"))
                    .await
                    .ctx(s.follower_side, &format!("disable the triggers of {q}"))?;
            }
        }
        Change::DroppedTable => {
            s.follower
                .batch_execute(&format!("DROP TABLE IF EXISTS {q}"))
                .await
                .ctx(s.follower_side, &format!("drop {}", d.display_table()))?;
        }
        Change::NewColumn { .. } if !d.additive => fill_column(s, d).await?,
        _ => {
            let sql = d.target_sql().expect("every other change is one statement");
            s.follower
                .batch_execute(&sql)
                .await
                .ctx(s.follower_side, &format!("apply \"{}\"", d.describe))?;
        }
    }
    Ok(d.describe.clone())
}

/// `nextval('name'::regclass)` → the sequence's name as written.
fn sequence_of(default: &str) -> Option<&str> {
    let rest = default.strip_prefix("nextval('")?;
    let end = rest.find("'::regclass)")?;
    Some(&rest[..end])
}

/// A new column whose existing rows the source filled row by row: added on the follower and
/// given the origin's values, in one transaction.
async fn fill_column(s: &Sides<'_>, d: &Drift) -> Result<(), PgError> {
    let Change::NewColumn {
        column,
        ty,
        default,
        not_null,
        identity,
        ..
    } = &d.change
    else {
        unreachable!("fill_column is called for new columns")
    };
    let q = d.qualified_table();
    let table = crate::inspect::tables(
        s.origin,
        s.origin_side,
        &cutover_core::plan::SyncSettings {
            schemas: vec![d.schema.clone()],
            ..Default::default()
        },
    )
    .await?
    .into_iter()
    .find(|t| t.name == d.table)
    .ok_or_else(|| {
        PgError::Refused(format!(
            "{} is gone from the {}",
            d.display_table(),
            s.origin_side
        ))
    })?;
    let key = table.key().to_vec();
    if key.is_empty() {
        return Err(PgError::Refused(format!(
            "{} has no primary key, so the values the {} computed for its new column {column} cannot be matched to the {}'s rows; \
             add a primary key on both sides, or leave the table out (sync.exclude_tables) and move it by hand",
            d.display_table(),
            s.origin_side,
            s.follower_side
        )));
    }
    let col = ident(column);
    let mut add = format!("ALTER TABLE {q} ADD COLUMN {col} {ty}");
    // An identity column takes the source's values BY DEFAULT first; ALWAYS comes after.
    let mut after = String::new();
    match (identity.as_str(), default) {
        ("a", _) => {
            add.push_str(" GENERATED BY DEFAULT AS IDENTITY");
            after.push_str(&format!(
                "ALTER TABLE {q} ALTER COLUMN {col} SET GENERATED ALWAYS;"
            ));
        }
        ("d", _) => add.push_str(" GENERATED BY DEFAULT AS IDENTITY"),
        (_, Some(expr)) => add.push_str(&format!(" DEFAULT {expr}")),
        _ => {}
    }
    let mut before = String::new();
    if let Some(seq) = default.as_deref().and_then(sequence_of) {
        // A serial column brings its sequence (named as the catalog prints it): made here
        // first; its value is copied at the switch like every other sequence's.
        before = format!("CREATE SEQUENCE IF NOT EXISTS {seq};");
        after.push_str(&format!("ALTER SEQUENCE {seq} OWNED BY {q}.{col};"));
    }
    if *not_null {
        after.push_str(&format!("ALTER TABLE {q} ALTER COLUMN {col} SET NOT NULL;"));
    }
    let keys: Vec<String> = key.iter().map(|k| ident(k)).collect();
    let picked = format!("{}, {col}", keys.join(", "));
    let mut follower = connect(s.follower_url, s.follower_side).await?;
    let tx = follower.transaction().await.ctx(s.follower_side, "begin")?;
    tx.batch_execute(&format!(
        "{before}{add};
         CREATE TEMPORARY TABLE cutover_fill ON COMMIT DROP AS SELECT {picked} FROM {q} WITH NO DATA;"
    ))
    .await
    .ctx(s.follower_side, &format!("add column {column} to {}", d.display_table()))?;
    let out = s
        .origin
        .copy_out(&format!(
            "COPY (SELECT {picked} FROM ONLY {q}) TO STDOUT (FORMAT binary)"
        ))
        .await
        .ctx(
            s.origin_side,
            &format!("read {column} of {}", d.display_table()),
        )?;
    let sink = tx
        .copy_in::<_, bytes::Bytes>("COPY cutover_fill FROM STDIN (FORMAT binary)")
        .await
        .ctx(s.follower_side, "stage the values")?;
    futures_util::pin_mut!(out);
    futures_util::pin_mut!(sink);
    while let Some(chunk) = out.next().await {
        let chunk = chunk.ctx(
            s.origin_side,
            &format!("read {column} of {}", d.display_table()),
        )?;
        sink.feed(chunk)
            .await
            .ctx(s.follower_side, "stage the values")?;
    }
    sink.as_mut()
        .finish()
        .await
        .ctx(s.follower_side, "stage the values")?;
    let matched: Vec<String> = keys.iter().map(|k| format!("t.{k} = f.{k}")).collect();
    tx.batch_execute(&format!(
        "UPDATE {q} t SET {col} = f.{col} FROM cutover_fill f WHERE {};{after}",
        matched.join(" AND ")
    ))
    .await
    .ctx(
        s.follower_side,
        &format!("fill column {column} of {}", d.display_table()),
    )?;
    tx.commit().await.ctx(s.follower_side, "commit")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serial_default_names_its_sequence() {
        assert_eq!(
            sequence_of("nextval('orders_n_seq'::regclass)"),
            Some("orders_n_seq")
        );
        assert_eq!(
            sequence_of("nextval('shop.orders_n_seq'::regclass)"),
            Some("shop.orders_n_seq")
        );
        assert_eq!(sequence_of("now()"), None);
    }
}

/// What one pass over the drift did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Pass {
    pub applied: Vec<String>,
    /// Still different, each with why.
    pub held: Vec<String>,
}

impl cutover_core::engine::Outcome for Pass {
    fn summary(&self) -> String {
        format!(
            "{} schema change(s) applied{}",
            self.applied.len(),
            if self.held.is_empty() {
                String::new()
            } else {
                format!("; held: {}", self.held.join("; "))
            }
        )
    }
}

/// Native mode, the target following the source: applies the drift that is additive (when
/// the plan allows it on its own, or `all`: every change, after review). A new table joins
/// the publication and the subscription copies it from a consistent point (its table
/// synchronisation); a dropped one leaves the subscription before it is dropped here.
pub async fn reconcile_native(
    plan: &cutover_core::Plan,
    source: &Client,
    target: &Client,
    all: bool,
) -> Result<Pass, PgError> {
    let sub = plan.sync.subscription();
    if crate::sync::subscription_oid(target, &sub).await?.is_none() {
        return Err(PgError::Refused(format!(
            "the target has no subscription {sub}; after a switchover the target is the primary (change its schema there and the source's by hand), else run `cutover db sync` first"
        )));
    }
    let drifts = crate::drift::drift(source, target, &plan.sync).await?;
    let sides = Sides {
        origin: source,
        origin_side: Side::Source,
        origin_url: &plan.source.url,
        follower: target,
        follower_side: Side::Target,
        follower_url: &plan.target.url,
    };
    let tables = crate::inspect::tables(source, Side::Source, &plan.sync).await?;
    let mut pass = Pass::default();
    let wanted = |d: &Drift| all || (d.additive && plan.sync.apply_schema_changes);
    let refresh = |copy: bool| {
        format!(
            "ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = {copy})",
            ident(&sub)
        )
    };
    if drifts
        .iter()
        .any(|d| d.change == Change::DroppedTable && wanted(d))
    {
        // Gone from the publication with the table: the subscription forgets it first.
        target
            .batch_execute(&refresh(false))
            .await
            .ctx(Side::Target, "refresh the subscription")?;
    }
    let mut new_tables = 0;
    for d in &drifts {
        if !wanted(d) {
            pass.held.push(d.describe.clone());
            continue;
        }
        if d.change == Change::NewTable {
            let Some(t) = tables
                .iter()
                .find(|t| t.schema == d.schema && t.name == d.table)
            else {
                continue;
            };
            if let Err(e) = crate::sync::refuse_unsafe(std::slice::from_ref(t)) {
                pass.held.push(format!("{}: {e}", d.describe));
                continue;
            }
            apply_one(&sides, d, false).await?;
            let only = if t.partitioned { "" } else { "ONLY " };
            source
                .batch_execute(&format!(
                    "ALTER PUBLICATION {} ADD TABLE {only}{}",
                    ident(&plan.sync.publication()),
                    t.qualified()
                ))
                .await
                .ctx(
                    Side::Source,
                    &format!("add {} to the publication", t.display()),
                )?;
            new_tables += 1;
            pass.applied.push(d.describe.clone());
            continue;
        }
        pass.applied.push(apply_one(&sides, d, false).await?);
    }
    if new_tables > 0 {
        target.batch_execute(&refresh(true)).await.ctx(
            Side::Target,
            "refresh the subscription (copies the new tables)",
        )?;
    }
    Ok(pass)
}
