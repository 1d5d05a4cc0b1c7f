//! The applier: a batch is the transactions visible in a new snapshot and not in the
//! position; each changed key's row as of that snapshot, written to the follower in one
//! transaction with the new position (see the module above for the rule).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cutover_core::ConnString;
use tokio_postgres::Client;

use crate::connect::{connect, ident};
use crate::error::{PgError, Side, SqlContext};
use crate::inspect::Table;

use super::{position, Batch, Link, APPLIER_NAME};

/// How a table is written on the follower.
#[derive(Clone, Debug)]
struct Shape {
    display: String,
    qualified: String,
    /// (column, type) of the primary key, in key order.
    key: Vec<(String, String)>,
    /// Columns that take a value (generated ones excluded).
    columns: Vec<String>,
    /// Every column, comma-separated in name order: what the origin's rows must have, or
    /// the schema changed under the applier.
    all_columns: String,
    identity_always: bool,
}

async fn shapes(follower: &Client, side: Side, tables: &[Table]) -> Result<Vec<Shape>, PgError> {
    let mut out = vec![];
    for t in tables {
        let rows = follower
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '', a.attidentity = 'a'
                   FROM pg_attribute a
                  WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY a.attnum",
                &[&t.qualified()],
            )
            .await
            .ctx(side, "read the table's columns")?;
        if rows.is_empty() {
            return Err(PgError::Refused(format!(
                "table {} is missing on the {side}",
                t.display()
            )));
        }
        let types: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let key = t
            .primary_key
            .iter()
            .map(|c| {
                types
                    .get(c)
                    .map(|ty| (c.clone(), ty.clone()))
                    .ok_or_else(|| {
                        PgError::Refused(format!(
                            "column {c} of {} is missing on the {side}",
                            t.display()
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Shape {
            display: t.display(),
            qualified: t.qualified(),
            key,
            columns: rows
                .iter()
                .filter(|r| !r.get::<_, bool>(2))
                .map(|r| r.get(0))
                .collect(),
            identity_always: rows.iter().any(|r| r.get::<_, bool>(3)),
            all_columns: {
                let mut all: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                all.sort();
                all.join(",")
            },
        });
    }
    Ok(out)
}

/// Tables ordered parents first (by foreign keys among them); cycles keep their given order.
/// The order in which a batch writes the tables (parents before children), and each table's
/// neighbours by foreign key (its parents and its children).
async fn parents_first(
    follower: &Client,
    side: Side,
    shapes: &[Shape],
) -> Result<(Vec<usize>, Vec<BTreeSet<usize>>), PgError> {
    let names: Vec<String> = shapes.iter().map(|s| s.qualified.clone()).collect();
    // Matched by the tables' oids, not their names' text: a regclass prints its name quoted
    // only where it must (shop."Customers"), which no name of ours is spelt as.
    let rows = follower
        .query(
            "SELECT ci.i, pi.i
               FROM pg_constraint c
               JOIN unnest($1::text[]) WITH ORDINALITY ci(n, i) ON c.conrelid = ci.n::regclass
               JOIN unnest($1::text[]) WITH ORDINALITY pi(n, i) ON c.confrelid = pi.n::regclass
              WHERE c.contype = 'f' AND c.conrelid <> c.confrelid",
            &[&names],
        )
        .await
        .ctx(side, "read the foreign keys")?;
    let mut parents: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); shapes.len()];
    let mut neighbours: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); shapes.len()];
    for r in rows {
        let (c, p): (i64, i64) = (r.get(0), r.get(1));
        let (c, p) = (c as usize - 1, p as usize - 1);
        parents[c].insert(p);
        neighbours[c].insert(p);
        neighbours[p].insert(c);
    }
    let mut order = vec![];
    let mut placed = vec![false; shapes.len()];
    while order.len() < shapes.len() {
        let ready: Vec<usize> = (0..shapes.len())
            .filter(|&i| !placed[i] && parents[i].iter().all(|&p| placed[p]))
            .collect();
        let next = if ready.is_empty() {
            (0..shapes.len()).filter(|&i| !placed[i]).collect()
        } else {
            ready
        };
        for i in next {
            placed[i] = true;
            order.push(i);
        }
    }
    Ok((order, neighbours))
}

/// What one read of the change log came to.
enum Applied {
    /// Applied, up to the new position.
    Batch(Batch, String),
    /// The link was retired: nothing applied.
    Retired,
    /// Another applier moved the position since it was read: nothing applied.
    Moved(String),
}

/// The applier of one link, with its connections and what it knows of the tables.
pub struct Applier {
    link: Link,
    origin: Client,
    follower: Client,
    shapes: Vec<Shape>,
    order: Vec<usize>,
    /// Per table, its neighbours by foreign key.
    neighbours: Vec<BTreeSet<usize>>,
    position: String,
    batches: u64,
}

impl Applier {
    /// Connects both sides and reads the position; `tables` as the origin lists them.
    pub async fn open(link: &Link, tables: &[Table]) -> Result<Applier, PgError> {
        let named = |c: &ConnString| {
            let mut c = c.clone();
            c.application_name = Some(APPLIER_NAME.into());
            c
        };
        let origin = connect(&named(&link.origin), link.origin_side).await?;
        let follower = connect(&named(&link.follower), link.follower_side).await?;
        for c in [&origin, &follower] {
            c.batch_execute("SET statement_timeout = 0; SET lock_timeout = '10s'")
                .await
                .ctx(link.origin_side, "set up the applier's session")?;
        }
        let Some(position) = position(&follower, link.follower_side, &link.name).await? else {
            return Err(PgError::Refused(format!(
                "the {} has no trigger-mode position {}: the initial copy has not finished; run `cutover db sync`",
                link.follower_side, link.name
            )));
        };
        let shapes = shapes(&follower, link.follower_side, tables).await?;
        let (order, neighbours) = parents_first(&follower, link.follower_side, &shapes).await?;
        Ok(Applier {
            link: link.clone(),
            origin,
            follower,
            shapes,
            order,
            neighbours,
            position,
            batches: 0,
        })
    }

    /// Applies every change committed since the position, in one follower transaction that
    /// also records the new position. `None` when the link was retired (its position row
    /// removed by a switchover): nothing is applied then.
    pub async fn apply_once(&mut self) -> Result<Option<Batch>, PgError> {
        let (os, fs) = (self.link.origin_side, self.link.follower_side);
        self.origin
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .ctx(os, "open the batch's snapshot")?;
        let result = self.apply_in_snapshot().await;
        let _ = self.origin.batch_execute("COMMIT").await;
        let (batch, next) = match result? {
            Applied::Batch(batch, next) => (batch, next),
            Applied::Retired => return Ok(None),
            Applied::Moved(position) => {
                // Another applier of this link committed a batch since this one read its
                // position: start again from where that one left off.
                self.position = position;
                return Box::pin(self.apply_once()).await;
            }
        };
        self.position = next;
        self.batches += 1;
        if self.batches.is_multiple_of(50) {
            self.prune().await?;
        }
        let _ = fs;
        Ok(Some(batch))
    }

    async fn apply_in_snapshot(&mut self) -> Result<Applied, PgError> {
        let (os, fs) = (self.link.origin_side, self.link.follower_side);
        let next: String = self
            .origin
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await
            .ctx(os, "read the batch's snapshot")?
            .get(0);
        let rows = self
            .origin
            .query(
                "SELECT tbl, op::text, key::text FROM cutover.changes
                  WHERE xid >= pg_snapshot_xmin($1::text::pg_snapshot)
                    AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot)",
                &[&self.position],
            )
            .await
            .ctx(os, "read the change log")?;
        let mut batch = Batch {
            changes: rows.len() as u64,
            ..Default::default()
        };
        if rows.is_empty() {
            // Nothing new: keep the position (writing it would cost a follower commit per
            // poll), but notice a retired link.
            if position(&self.follower, fs, &self.link.name)
                .await?
                .is_none()
            {
                return Ok(Applied::Retired);
            }
            return Ok(Applied::Batch(batch, self.position.clone()));
        }
        let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut truncated: BTreeSet<String> = BTreeSet::new();
        for r in &rows {
            let (tbl, op, key): (String, String, Option<String>) = (r.get(0), r.get(1), r.get(2));
            if op == "T" {
                truncated.insert(tbl);
            } else if let Some(k) = key {
                keys.entry(tbl).or_default().insert(k);
            }
        }
        batch.truncates = truncated.len() as u64;
        // The tables with changes, parents first, each with its keys as one JSON array.
        let mut changed: Vec<(usize, String)> = vec![];
        for &i in &self.order {
            if let Some(set) = keys.get(&self.shapes[i].display) {
                batch.keys += set.len() as u64;
                let json = format!("[{}]", set.iter().cloned().collect::<Vec<_>>().join(","));
                changed.push((i, json));
            }
        }
        // One follower transaction: truncates, upserts parents first, deletes children
        // first, the position. It runs alongside the reads of the origin: while table n's
        // rows are written to the follower, table n + 1's are read from the origin (two
        // servers, and the reads all share the batch's snapshot, so their order is free).
        let tx = self
            .follower
            .transaction()
            .await
            .ctx(fs, "begin the batch")?;
        // Two appliers of one link (a `db follow` service beside `cutover apply`'s own, or a
        // switchover's catch-up beside either) take turns: a batch holds the link's lock for
        // its transaction, and one whose position another applier moved since it was read
        // applies nothing and is read again from there. Without it the later of two batches
        // could write rows as of an older snapshot over a newer one's, and move on from a
        // position that no longer holds what it says.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('cutover.applied'), hashtext($1))",
            &[&self.link.name],
        )
        .await
        .ctx(fs, "take the link's lock")?;
        let current: Option<String> = tx
            .query_opt(
                "SELECT position FROM cutover.applied WHERE link = $1",
                &[&self.link.name],
            )
            .await
            .ctx(fs, "read the position")?
            .map(|r| r.get(0));
        match current {
            None => return Ok(Applied::Retired),
            Some(p) if p != self.position => return Ok(Applied::Moved(p)),
            Some(_) => {}
        }
        // A fenced follower (the old primary after a switchover, where the applications'
        // role, often the owner itself, lost its write privileges) is written by granting the
        // owner what it lacks inside this transaction and revoking it before the commit: no
        // other session ever sees the grant. The tables next to a written one by foreign key
        // are in it too: the key checks lock their rows (FOR KEY SHARE), which takes UPDATE
        // on them, as the owner.
        let mut touched_idx: BTreeSet<usize> = self
            .shapes
            .iter()
            .enumerate()
            .filter(|(_, s)| keys.contains_key(&s.display) || truncated.contains(&s.display))
            .map(|(i, _)| i)
            .collect();
        let adjacent: Vec<usize> = touched_idx
            .iter()
            .flat_map(|&i| self.neighbours[i].iter().copied())
            .collect();
        touched_idx.extend(adjacent);
        let touched: Vec<String> = touched_idx
            .iter()
            .map(|&i| self.shapes[i].qualified.clone())
            .collect();
        let lacking = tx
            .query(
                "SELECT t, p FROM unnest($1::text[]) t, unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) p
                  WHERE NOT has_table_privilege(t, p)",
                &[&touched],
            )
            .await
            .ctx(fs, "check the applier's privileges")?;
        let lacking: Vec<(String, String)> = lacking.iter().map(|r| (r.get(0), r.get(1))).collect();
        for (t, p) in &lacking {
            tx.batch_execute(&format!("GRANT {p} ON {t} TO CURRENT_USER"))
                .await
                .ctx(fs, "lift the fence for the applier inside its transaction")?;
        }
        if !truncated.is_empty() {
            let list: Vec<String> = truncated
                .iter()
                .filter_map(|t| self.shapes.iter().find(|s| &s.display == t))
                .map(|s| s.qualified.clone())
                .collect();
            if !list.is_empty() {
                tx.batch_execute(&format!("TRUNCATE {}", list.join(", ")))
                    .await
                    .ctx(fs, "apply a TRUNCATE")?;
            }
        }
        // `written` trails `read` by one table; the last round only writes.
        let mut deletes: Vec<(usize, String)> = vec![];
        let mut pending: Option<(usize, State)> = None;
        let shapes = &self.shapes;
        for round in 0..=changed.len() {
            let read = async {
                match changed.get(round) {
                    Some((i, json)) => read_state(&self.origin, os, &shapes[*i], json)
                        .await
                        .map(|state| Some((*i, state))),
                    None => Ok(None),
                }
            };
            let write = async {
                match &pending {
                    Some((i, state)) => write_state(&tx, fs, &shapes[*i], state).await,
                    None => Ok(()),
                }
            };
            let (read, written) = tokio::join!(read, write);
            written?;
            pending = read?;
            if let Some((
                i,
                State {
                    gone: Some(gone), ..
                },
            )) = &pending
            {
                deletes.push((*i, gone.clone()));
            }
        }
        for (i, json) in deletes.iter().rev() {
            let s = &self.shapes[*i];
            tx.execute(
                &format!(
                    "DELETE FROM {q} t WHERE ({keyed}) IN (SELECT {tuple} FROM jsonb_array_elements($1::text::jsonb) e)",
                    q = s.qualified,
                    keyed = key_cols(s),
                    tuple = key_tuple(s)
                ),
                &[json],
            )
            .await
            .ctx(fs, "apply deletes")?;
        }
        for (t, p) in &lacking {
            tx.batch_execute(&format!("REVOKE {p} ON {t} FROM CURRENT_USER"))
                .await
                .ctx(fs, "restore the fence")?;
        }
        let updated = tx
            .execute(
                "UPDATE cutover.applied SET position = $2, changes = changes + $3,
                        batches = batches + 1, updated_at = now()
                  WHERE link = $1",
                &[&self.link.name, &next, &(batch.changes as i64)],
            )
            .await
            .ctx(fs, "record the position")?;
        if updated == 0 {
            // Retired while this batch ran: roll it back, the link is over.
            drop(tx);
            return Ok(Applied::Retired);
        }
        tx.commit().await.ctx(fs, "commit the batch")?;
        Ok(Applied::Batch(batch, next))
    }

    /// Drops log rows every transaction of which the follower has.
    async fn prune(&self) -> Result<(), PgError> {
        self.origin
            .execute(
                "DELETE FROM cutover.changes WHERE xid < pg_snapshot_xmin($1::text::pg_snapshot)",
                &[&self.position],
            )
            .await
            .ctx(self.link.origin_side, "prune the change log")?;
        Ok(())
    }
}

/// The state of a table's changed keys as of the batch's snapshot.
struct State {
    /// Keyed tables: the rows there now (JSON array), to upsert.
    present: Option<String>,
    /// Keyed tables: the keys with no row now, to delete.
    gone: Option<String>,
    /// Whole-row identity: each logged row with how many equal rows there are now.
    replace: Option<String>,
}

/// The origin's columns of `q` as its rows are read now: the row type's, from the
/// relation as the statement opened it (a query of `pg_attribute` would see the catalog as
/// of the batch's snapshot instead, older than the rows' shape).
fn columns_now(q: &str) -> String {
    format!(
        "(SELECT string_agg(c, ',' ORDER BY c COLLATE \"C\")
            FROM jsonb_object_keys(to_jsonb(jsonb_populate_record(NULL::{q}, '{{}}'))) c)"
    )
}

/// The origin's rows have the columns the follower's table has, or the schema changed: a
/// row written without its new column's value would lose it, so nothing of this batch is.
fn same_columns(s: &Shape, os: Side, now: String) -> Result<(), PgError> {
    if now == s.all_columns {
        return Ok(());
    }
    Err(PgError::SchemaChanged(format!(
        "{} has columns ({now}) on the {os}, and ({}) where it is applied",
        s.display, s.all_columns
    )))
}

/// Reads, in the origin's open snapshot, the state of the keys in `json`.
async fn read_state(origin: &Client, os: Side, s: &Shape, json: &str) -> Result<State, PgError> {
    if s.key.is_empty() {
        // Whole-row identity: how many rows equal to each logged row there are now.
        let row = origin
            .query_one(
                &format!(
                    "WITH k AS (SELECT e AS key, jsonb_populate_record(NULL::{q}, e) AS r
                                  FROM jsonb_array_elements($1::text::jsonb) e)
                     SELECT coalesce(jsonb_agg(jsonb_build_array(k.key,
                                (SELECT count(*) FROM {q} t WHERE t::text = k.r::text))), '[]')::text,
                            {cols}
                       FROM k",
                    q = s.qualified,
                    cols = columns_now(&s.qualified)
                ),
                &[&json],
            )
            .await
            .ctx(os, "read the changed rows")?;
        same_columns(s, os, row.get(1))?;
        return Ok(State {
            present: None,
            gone: None,
            replace: Some(row.get(0)),
        });
    }
    let tuple = key_tuple(s);
    let keyed = key_cols(s);
    let row = origin
        .query_one(
            &format!(
                "WITH k AS (SELECT {tuple} FROM jsonb_array_elements($1::text::jsonb) e)
                 SELECT (SELECT coalesce(jsonb_agg(to_jsonb(t)), '[]')::text FROM {q} t WHERE ({keyed}) IN (SELECT * FROM k)),
                        (SELECT coalesce(jsonb_agg(jsonb_build_array({kk})), '[]')::text FROM k
                          WHERE NOT EXISTS (SELECT 1 FROM {q} t WHERE ({keyed}) = ({kk}))),
                        {cols}",
                q = s.qualified,
                cols = columns_now(&s.qualified),
                kk = (0..s.key.len()).map(|n| format!("k.k{n}")).collect::<Vec<_>>().join(", ")
            ),
            &[&json],
        )
        .await
        .ctx(os, "read the changed rows")?;
    let (present, gone): (String, String) = (row.get(0), row.get(1));
    same_columns(s, os, row.get(2))?;
    Ok(State {
        present: (present != "[]").then_some(present),
        gone: (gone != "[]").then_some(gone),
        replace: None,
    })
}

/// Writes a table's inserts and updates (or whole-row replacements) in the follower's batch.
async fn write_state(
    tx: &tokio_postgres::Transaction<'_>,
    fs: Side,
    s: &Shape,
    state: &State,
) -> Result<(), PgError> {
    if let Some(json) = &state.present {
        tx.execute(&upsert_sql(s), &[json])
            .await
            .ctx(fs, "apply inserts and updates")?;
    }
    if let Some(json) = &state.replace {
        tx.execute(&replace_sql(s), &[json])
            .await
            .ctx(fs, "apply whole-row changes")?;
    }
    Ok(())
}

fn key_cols(s: &Shape) -> String {
    s.key
        .iter()
        .map(|(c, _)| format!("t.{}", ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `(e->>0)::type AS k0, ...` for a key array `e`.
fn key_tuple(s: &Shape) -> String {
    s.key
        .iter()
        .enumerate()
        .map(|(n, (_, ty))| format!("(e->>{n})::{ty} AS k{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whole-row identity: every row equal to a logged one goes, and as many as the origin
/// has now come back.
fn replace_sql(s: &Shape) -> String {
    let cols: Vec<String> = s.columns.iter().map(|c| ident(c)).collect();
    let picked: Vec<String> = cols.iter().map(|c| format!("(k.r).{c}")).collect();
    format!(
        "WITH k AS (SELECT jsonb_populate_record(NULL::{q}, e->0) AS r, (e->>1)::int AS n
                      FROM jsonb_array_elements($1::text::jsonb) e),
              gone AS (DELETE FROM {q} t USING k WHERE t::text = k.r::text)
         INSERT INTO {q} ({list}) {overriding} SELECT {picked} FROM k, generate_series(1, k.n)",
        q = s.qualified,
        list = cols.join(", "),
        overriding = if s.identity_always {
            "OVERRIDING SYSTEM VALUE"
        } else {
            ""
        },
        picked = picked.join(", ")
    )
}

fn upsert_sql(s: &Shape) -> String {
    let cols: Vec<String> = s.columns.iter().map(|c| ident(c)).collect();
    let key: Vec<String> = s.key.iter().map(|(c, _)| ident(c)).collect();
    let rest: Vec<String> = cols
        .iter()
        .filter(|c| !key.contains(c))
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    let conflict = if rest.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", rest.join(", "))
    };
    format!(
        "INSERT INTO {q} AS t ({list}) {overriding} SELECT {list} FROM jsonb_populate_recordset(NULL::{q}, $1::text::jsonb)
         ON CONFLICT ({key}) {conflict}",
        q = s.qualified,
        list = cols.join(", "),
        overriding = if s.identity_always { "OVERRIDING SYSTEM VALUE" } else { "" },
        key = key.join(", ")
    )
}

impl Applier {
    pub(super) fn closed(&self) -> bool {
        self.origin.is_closed() || self.follower.is_closed()
    }
}
