//! Each table's indexes, keys, foreign keys and planner statistics built on the target as soon
//! as its last part lands, while the other tables still copy.
//!
//! After a bulk copy, building the indexes is most of the remaining work, and done one after
//! the other in a single restore it leaves a core idle. Here it is a set of jobs on a few
//! target connections of their own, each started as soon as what it needs is there:
//!
//! - **an index** (every index of the table, those of its primary key and unique constraints
//!   too, as `CREATE [UNIQUE] INDEX`): once the table has landed. Several indexes of one table
//!   build at once: `CREATE INDEX` takes a SHARE lock, which does not conflict with itself.
//! - **the keys**: once every index of the table is built, in one transaction, its primary key
//!   and unique constraints are made on those indexes (`ADD CONSTRAINT ... USING INDEX`, a
//!   catalog change), exclusion and deferrable constraints built whole, and the replica
//!   identity set.
//! - **ANALYZE**: once the keys are there.
//! - **a foreign key**: once the keys of both its tables are there, added `NOT VALID` (a
//!   moment's lock on both tables, one such at a time, so two can never wait on each other)
//!   and then validated (`VALIDATE CONSTRAINT` reads both tables under locks that let the
//!   other validations run).
//!
//! Every object is made only when the target does not have it yet, so a run after one that
//! died half-way finishes the work (a foreign key left `NOT VALID` is validated). What is not
//! made here (triggers, rules, comments, a foreign key to a table outside the sync) is left to
//! the post-data restore, which skips what is already there ([`crate::schema::remaining`]).

use std::sync::Arc;
use std::time::Duration;

use cutover_core::ConnString;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use tokio_postgres::Client;

use crate::connect::{connect, ident};
use crate::error::{PgError, Side, SqlContext};
use crate::inspect::Table;

/// What was built on the target as the tables landed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Built {
    pub indexes: usize,
    pub constraints: usize,
    pub foreign_keys: usize,
    /// Tables analyzed, `"schema"."name"`.
    pub analyzed: Vec<String>,
}

impl Built {
    /// For the copy's line in the journal.
    pub fn summary(&self) -> String {
        format!(
            "as the tables landed: {} indexes, {} keys and {} foreign keys built, {} tables analyzed",
            self.indexes,
            self.constraints,
            self.foreign_keys,
            self.analyzed.len()
        )
    }
}

/// A constraint of one table made on its indexes in the keys' transaction.
struct Constraint {
    name: String,
    /// `ALTER TABLE ... ADD CONSTRAINT ...`.
    add: String,
}

/// A foreign key between two tables of the sync.
struct ForeignKey {
    name: String,
    table: usize,
    references: usize,
    definition: String,
    /// Valid on the source: validated here too.
    validated: bool,
}

/// One table's part of the work, as the source defines it.
#[derive(Default)]
struct TableWork {
    /// (index name, `CREATE INDEX` statement).
    indexes: Vec<(String, String)>,
    constraints: Vec<Constraint>,
    /// `ALTER TABLE ... REPLICA IDENTITY USING INDEX ...`.
    replica_identity: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Job {
    Index(usize, usize),
    Keys(usize),
    Analyze(usize),
    ForeignKey(usize),
}

/// Reads every table's indexes, constraints and foreign keys from the source, with every name
/// in them schema-qualified (`search_path` empty, as pg_dump reads them).
async fn read_work(
    source: &Client,
    tables: &[Table],
) -> Result<(Vec<TableWork>, Vec<ForeignKey>), PgError> {
    source
        .batch_execute("SET search_path = ''")
        .await
        .ctx(Side::Source, "set up the schema reader")?;
    let mut work: Vec<TableWork> = tables.iter().map(|_| TableWork::default()).collect();
    let mut foreign = vec![];
    for (i, t) in tables.iter().enumerate() {
        let w = &mut work[i];
        let table = t.qualified();
        // Valid indexes (pg_dump leaves out those a failed CREATE INDEX CONCURRENTLY left),
        // those of a primary key or unique constraint that can be added on its index too.
        let rows = source
            .query(
                "SELECT i.relname::text, pg_get_indexdef(x.indexrelid)
                   FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                   LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid
                                             AND c.contype IN ('p', 'u', 'x')
                  WHERE x.indrelid = $1::oid AND x.indisvalid
                    AND (c.oid IS NULL OR (c.contype IN ('p', 'u') AND NOT c.condeferrable
                                           AND pg_get_constraintdef(c.oid) NOT LIKE '% INCLUDE %'))
                  ORDER BY pg_relation_size(x.indexrelid) DESC",
                &[&t.oid],
            )
            .await
            .ctx(Side::Source, &format!("read the indexes of {}", t.display()))?;
        w.indexes = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let rows = source
            .query(
                "SELECT c.conname::text, c.contype::text, pg_get_constraintdef(c.oid), i.relname::text,
                        c.condeferrable OR pg_get_constraintdef(c.oid) LIKE '% INCLUDE %'
                   FROM pg_constraint c LEFT JOIN pg_class i ON i.oid = c.conindid
                  WHERE c.conrelid = $1::oid AND c.contype IN ('p', 'u', 'x')
                  ORDER BY c.contype <> 'p', c.conname",
                &[&t.oid],
            )
            .await
            .ctx(Side::Source, &format!("read the keys of {}", t.display()))?;
        for r in rows {
            let (name, kind, def, index, whole): (String, String, String, Option<String>, bool) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            let add = match (kind.as_str(), index) {
                ("p", Some(index)) if !whole => format!(
                    "ALTER TABLE {table} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}",
                    ident(&name),
                    ident(&index)
                ),
                ("u", Some(index)) if !whole => format!(
                    "ALTER TABLE {table} ADD CONSTRAINT {} UNIQUE USING INDEX {}",
                    ident(&name),
                    ident(&index)
                ),
                _ => format!("ALTER TABLE {table} ADD CONSTRAINT {} {def}", ident(&name)),
            };
            w.constraints.push(Constraint { name, add });
        }
        w.replica_identity = source
            .query_opt(
                "SELECT i.relname::text FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                  WHERE x.indrelid = $1::oid AND x.indisreplident",
                &[&t.oid],
            )
            .await
            .ctx(
                Side::Source,
                &format!("read the replica identity of {}", t.display()),
            )?
            .map(|r| {
                format!(
                    "ALTER TABLE {table} REPLICA IDENTITY USING INDEX {}",
                    ident(r.get::<_, &str>(0))
                )
            });
        let rows = source
            .query(
                "SELECT c.conname::text, c.confrelid, pg_get_constraintdef(c.oid), c.convalidated
                   FROM pg_constraint c WHERE c.conrelid = $1::oid AND c.contype = 'f'
                  ORDER BY c.conname",
                &[&t.oid],
            )
            .await
            .ctx(
                Side::Source,
                &format!("read the foreign keys of {}", t.display()),
            )?;
        for r in rows {
            let parent: u32 = r.get(1);
            // A key to a table outside the sync is the post-data restore's (it fails there,
            // saying which).
            if let Some(references) = tables.iter().position(|t| t.oid == parent) {
                foreign.push(ForeignKey {
                    name: r.get(0),
                    table: i,
                    references,
                    definition: r.get(2),
                    validated: r.get(3),
                });
            }
        }
    }
    Ok((work, foreign))
}

/// Whether the target has the index `schema.name`.
async fn has_index(target: &Client, schema: &str, name: &str) -> Result<bool, PgError> {
    Ok(target
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('i', 'I'))",
            &[&schema, &name],
        )
        .await
        .ctx(Side::Target, "look for an index")?
        .get(0))
}

/// Whether the target's table has the constraint `name`, and if so whether it is validated.
async fn constraint_state(
    target: &Client,
    table: &Table,
    name: &str,
) -> Result<Option<bool>, PgError> {
    Ok(target
        .query_opt(
            "SELECT convalidated FROM pg_constraint WHERE conrelid = $1::text::regclass AND conname = $2",
            &[&table.qualified(), &name],
        )
        .await
        .ctx(Side::Target, "look for a constraint")?
        .map(|r| r.get(0)))
}

/// Runs `sql`, again when PostgreSQL ended it as one side of a deadlock (two statements of
/// the application's schema may lock the same tables in opposite orders).
async fn execute(target: &Client, sql: &str, what: &str) -> Result<(), PgError> {
    let mut tries = 0;
    loop {
        match target.batch_execute(sql).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                let _ = target.batch_execute("ROLLBACK").await;
                tries += 1;
                let deadlock = e.code().is_some_and(|c| c.code() == "40P01");
                if !deadlock || tries >= 3 {
                    return Err(PgError::sql(Side::Target, what, e));
                }
                tokio::time::sleep(Duration::from_millis(100 * tries)).await;
            }
        }
    }
}

/// Runs one job on `target`; returns how many objects it made.
async fn run_job(
    target: &Client,
    job: Job,
    tables: &[Table],
    work: &[TableWork],
    foreign: &[ForeignKey],
    fk_lock: &tokio::sync::Mutex<()>,
) -> Result<usize, PgError> {
    match job {
        Job::Index(t, i) => {
            let (name, sql) = &work[t].indexes[i];
            if has_index(target, &tables[t].schema, name).await? {
                return Ok(0);
            }
            execute(target, sql, &format!("build index {name}")).await?;
            Ok(1)
        }
        Job::Keys(t) => {
            let mut statements = vec![];
            for c in &work[t].constraints {
                if constraint_state(target, &tables[t], &c.name)
                    .await?
                    .is_none()
                {
                    statements.push(c.add.clone());
                }
            }
            let made = statements.len();
            statements.extend(work[t].replica_identity.clone());
            if !statements.is_empty() {
                execute(
                    target,
                    &format!("BEGIN; {}; COMMIT", statements.join("; ")),
                    &format!("make the keys of {}", tables[t].display()),
                )
                .await?;
            }
            Ok(made)
        }
        Job::Analyze(t) => {
            execute(
                target,
                &format!("ANALYZE {}", tables[t].qualified()),
                &format!("analyze {}", tables[t].display()),
            )
            .await?;
            Ok(1)
        }
        Job::ForeignKey(k) => {
            let fk = &foreign[k];
            let table = &tables[fk.table];
            let mut made = 0;
            let valid = match constraint_state(target, table, &fk.name).await? {
                Some(valid) => valid,
                None => {
                    // NOT VALID unless the definition says so already (not valid on the source).
                    let not_valid = if fk.definition.ends_with(" NOT VALID") {
                        ""
                    } else {
                        " NOT VALID"
                    };
                    let _one_at_a_time = fk_lock.lock().await;
                    execute(
                        target,
                        &format!(
                            "ALTER TABLE {} ADD CONSTRAINT {} {}{not_valid}",
                            table.qualified(),
                            ident(&fk.name),
                            fk.definition
                        ),
                        &format!("add foreign key {} of {}", fk.name, table.display()),
                    )
                    .await?;
                    made = 1;
                    false
                }
            };
            if fk.validated && !valid {
                execute(
                    target,
                    &format!(
                        "ALTER TABLE {} VALIDATE CONSTRAINT {}",
                        table.qualified(),
                        ident(&fk.name)
                    ),
                    &format!("validate foreign key {} of {}", fk.name, table.display()),
                )
                .await?;
            }
            Ok(made)
        }
    }
}

/// The tables of `job` whose every part is done.
async fn landed(target: &Client, job: &str, tables: usize) -> Result<Vec<bool>, PgError> {
    let mut out = vec![false; tables];
    for r in target
        .query(
            "SELECT tbl FROM cutover.copy_part WHERE job = $1 GROUP BY tbl HAVING bool_and(done)",
            &[&job],
        )
        .await
        .ctx(Side::Target, "read the tables copied")?
    {
        if let Some(l) = out.get_mut(r.get::<_, i32>(0) as usize) {
            *l = true;
        }
    }
    Ok(out)
}

/// Builds every table's indexes, keys, foreign keys and statistics as its parts of the copy
/// `job` land, on `jobs` target connections, largest tables first. Returns once all are built.
pub(super) async fn build_as_tables_land(
    source_url: &ConnString,
    target_url: &ConnString,
    job: &str,
    tables: &[Table],
    jobs: usize,
) -> Result<Built, PgError> {
    let (work, foreign) = {
        let source = connect(source_url, Side::Source).await?;
        read_work(&source, tables).await?
    };
    let mut idle = vec![];
    for _ in 0..jobs.max(1) {
        let c = connect(target_url, Side::Target).await?;
        c.batch_execute(
            "SET statement_timeout = 0; SET lock_timeout = 0; SET maintenance_work_mem = '256MB'; SET search_path = ''",
        )
        .await
        .ctx(Side::Target, "set up an index builder")?;
        idle.push(c);
    }
    let watcher = connect(target_url, Side::Target).await?;

    // Every job, in the order they are started when several are ready: largest table first.
    let mut order: Vec<usize> = (0..tables.len()).collect();
    order.sort_by_key(|&t| std::cmp::Reverse(tables[t].bytes));
    let mut pending: Vec<Job> = vec![];
    for &t in &order {
        pending.extend((0..work[t].indexes.len()).map(|i| Job::Index(t, i)));
        pending.push(Job::Keys(t));
        pending.push(Job::Analyze(t));
    }
    let mut fks: Vec<usize> = (0..foreign.len()).collect();
    fks.sort_by_key(|&k| std::cmp::Reverse(tables[foreign[k].table].bytes));
    pending.extend(fks.into_iter().map(Job::ForeignKey));

    let fk_lock = Arc::new(tokio::sync::Mutex::new(()));
    let mut running_jobs: Vec<Job> = vec![];
    let mut keys_done = vec![false; tables.len()];
    let mut analyzed = vec![false; tables.len()];
    let mut is_landed = vec![false; tables.len()];
    let mut built = Built::default();
    let mut running = FuturesUnordered::new();
    let (work, foreign) = (&work, &foreign);
    loop {
        if is_landed.iter().any(|l| !l) {
            is_landed = landed(&watcher, job, tables.len()).await?;
        }
        // Start every ready job there is a connection for.
        let mut i = 0;
        while i < pending.len() && !idle.is_empty() {
            let job = pending[i];
            let blocked = |t: usize| {
                running_jobs
                    .iter()
                    .chain(&pending)
                    .any(|j| matches!(j, Job::Index(u, _) if *u == t))
            };
            let ready = match job {
                Job::Index(t, _) => is_landed[t],
                Job::Keys(t) => is_landed[t] && !blocked(t),
                Job::Analyze(t) => keys_done[t],
                // After both tables' ANALYZE: the validation's join is planned with statistics.
                Job::ForeignKey(k) => analyzed[foreign[k].table] && analyzed[foreign[k].references],
            };
            if !ready {
                i += 1;
                continue;
            }
            pending.remove(i);
            running_jobs.push(job);
            let client = idle.pop().expect("a connection is idle");
            let fk_lock = fk_lock.clone();
            running.push(async move {
                let started = std::time::Instant::now();
                let r = run_job(&client, job, tables, work, foreign, &fk_lock).await;
                tracing::debug!(?job, ms = started.elapsed().as_millis() as u64, "built");
                (client, job, r)
            });
        }
        if pending.is_empty() && running.is_empty() {
            return Ok(built);
        }
        if running.is_empty() && is_landed.iter().all(|l| *l) {
            return Err(PgError::Refused(
                "the index builder has work left that can never start (a bug): run `cutover db sync` again".into(),
            ));
        }
        tokio::select! {
            Some((client, job, r)) = running.next(), if !running.is_empty() => {
                idle.push(client);
                running_jobs.retain(|j| *j != job);
                let made = r?;
                match job {
                    Job::Index(..) => built.indexes += made,
                    Job::Keys(t) => {
                        keys_done[t] = true;
                        built.constraints += made;
                    }
                    Job::Analyze(t) => {
                        analyzed[t] = true;
                        built.analyzed.push(tables[t].qualified());
                    }
                    Job::ForeignKey(_) => built.foreign_keys += made,
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(200)), if is_landed.iter().any(|l| !l) => {}
        }
    }
}

/// Validates the foreign keys of `tables` that the target holds `NOT VALID` while the source's
/// are valid: those a run that died between adding and validating them left. Returns how many.
pub async fn validate_left(
    source: &Client,
    target: &Client,
    tables: &[Table],
) -> Result<usize, PgError> {
    let names: Vec<String> = tables.iter().map(Table::qualified).collect();
    let left: Vec<(String, String)> = target
        .query(
            "SELECT c.conrelid::regclass::text, c.conname::text FROM pg_constraint c
              WHERE c.contype = 'f' AND NOT c.convalidated
                AND c.conrelid IN (SELECT q::regclass FROM unnest($1::text[]) q)",
            &[&names],
        )
        .await
        .ctx(Side::Target, "look for foreign keys not validated")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut validated = 0;
    for (table, name) in left {
        let valid_there: bool = source
            .query_opt(
                "SELECT convalidated FROM pg_constraint WHERE conrelid = $1::text::regclass AND conname = $2",
                &[&table, &name],
            )
            .await
            .ctx(Side::Source, "look at a foreign key")?
            .is_some_and(|r| r.get(0));
        if valid_there {
            execute(
                target,
                &format!("ALTER TABLE {table} VALIDATE CONSTRAINT {}", ident(&name)),
                &format!("validate foreign key {name} of {table}"),
            )
            .await?;
            validated += 1;
        }
    }
    Ok(validated)
}
