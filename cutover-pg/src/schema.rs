//! Schema copy with `pg_dump`, split in three so the data copy is fast and still correct.
//!
//! `pg_dump --schema-only` writes one archive; `pg_restore -l --section=...` lists its parts
//! and we restore them in this order:
//!
//! 1. **pre-data**: types, tables, functions, sequences. Before the copy.
//! 2. **keys**: primary keys and replica identity indexes. Also before the copy, although
//!    pg_dump files them under post-data: a table's initial copy ends with a catch-up in which
//!    the subscription applies UPDATEs and DELETEs, and those need the key on the target to
//!    find their row. Without it the table never becomes ready.
//! 3. **post-data**: every other index, constraint, trigger and rule. After the copy, so rows
//!    are not indexed one by one.
//!
//! Each part is restored with `--single-transaction`: it lands whole or not at all, which is
//! what makes a killed `db sync` safe to run again. Ownership and grants are left out
//! (`--no-owner --no-privileges`): the roles of the new platform differ from the old one's.
//! The password travels to the child processes in `PGPASSWORD`, never on a command line.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use cutover_core::{ConnString, Secret};
use tokio_postgres::Client;

use crate::error::{PgError, Side, SqlContext};
use crate::inspect::{Table, OWN_SCHEMA};

/// The three parts of a dumped schema.
pub struct SchemaDump {
    _dir: tempfile::TempDir,
    archive: PathBuf,
    pub pre_data: PathBuf,
    pub keys: PathBuf,
    pub post_data: PathBuf,
    /// How many entries each part holds.
    pub counts: (usize, usize, usize),
}

async fn run_child(
    name: &str,
    args: &[String],
    conn: Option<&ConnString>,
) -> Result<String, PgError> {
    let mut cmd = crate::connect::client_program(name, conn);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = cmd
        .output()
        .await
        .map_err(|e| crate::connect::cannot_run(name, e))?;
    let secrets: Vec<&Secret> = conn.and_then(|c| c.password()).into_iter().collect();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(PgError::Child {
            program: name.into(),
            message: cutover_core::redact(&child_error(&stderr), secrets),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The line of a failed pg_dump or pg_restore that says what went wrong, with the server's
/// DETAIL line when one follows it: that one says which row or object ("Key (id)=(7) is not
/// present in table ...").
fn child_error(stderr: &str) -> String {
    let mut lines = stderr.lines().skip_while(|l| !l.contains("error"));
    let first = lines.next().unwrap_or(stderr.trim()).trim();
    match lines.next().map(str::trim) {
        Some(d) if d.starts_with("DETAIL:") => format!("{first} ({d})"),
        _ => first.to_string(),
    }
}

/// OIDs of the source's primary key constraints and replica identity indexes, and the
/// (schema, name) of their indexes, which `INDEX ATTACH` entries name.
async fn key_objects(source: &Client) -> Result<(HashSet<u32>, Vec<(String, String)>), PgError> {
    let rows = source
        .query(
            "SELECT c.oid, n.nspname::text, i.relname::text
               FROM pg_constraint c JOIN pg_class i ON i.oid = c.conindid
               JOIN pg_namespace n ON n.oid = i.relnamespace
              WHERE c.contype = 'p' OR c.conindid IN (SELECT indexrelid FROM pg_index WHERE indisreplident)
             UNION ALL
             SELECT x.indexrelid, n.nspname::text, i.relname::text
               FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
               JOIN pg_namespace n ON n.oid = i.relnamespace
              WHERE x.indisreplident",
            &[],
        )
        .await
        .ctx(Side::Source, "list primary keys")?;
    let oids = rows.iter().map(|r| r.get::<_, u32>(0)).collect();
    let names = rows.iter().map(|r| (r.get(1), r.get(2))).collect();
    Ok((oids, names))
}

/// Is this TOC line (from `pg_restore -l`) a key we restore before the copy?
fn is_key_entry(line: &str, oids: &HashSet<u32>, index_names: &[(String, String)]) -> bool {
    // "<dump id>; <catalog oid> <object oid> <TYPE> <schema> <tag> <owner>"
    let Some((_, rest)) = line.split_once("; ") else {
        return false;
    };
    let mut it = rest.splitn(3, ' ');
    let (_catalog, object, tail) = (it.next(), it.next(), it.next().unwrap_or(""));
    if tail.starts_with("CONSTRAINT ")
        || tail.starts_with("INDEX ") && !tail.starts_with("INDEX ATTACH ")
    {
        return object
            .and_then(|o| o.parse::<u32>().ok())
            .is_some_and(|o| oids.contains(&o));
    }
    if let Some(attach) = tail.strip_prefix("INDEX ATTACH ") {
        return index_names
            .iter()
            .any(|(s, n)| attach.starts_with(&format!("{s} {n} ")));
    }
    false
}

/// Dumps the source's schema for the selected tables and splits it.
pub async fn dump(
    source_url: &ConnString,
    source: &Client,
    sync: &cutover_core::plan::SyncSettings,
) -> Result<SchemaDump, PgError> {
    let dir = tempfile::Builder::new()
        .prefix("cutover-schema-")
        .tempdir()
        .map_err(|e| PgError::Io(format!("cannot make a temporary folder: {e}")))?;
    let archive = dir.path().join("schema.dump");
    let mut args: Vec<String> = vec![
        "--schema-only".into(),
        "--format=custom".into(),
        "--no-publications".into(),
        "--no-subscriptions".into(),
        format!("--exclude-schema={OWN_SCHEMA}"),
        format!("--file={}", archive.display()),
    ];
    for s in &sync.schemas {
        args.push(format!("--schema={}", pattern(s)));
    }
    for (s, t) in &sync.exclude_tables {
        args.push(format!("--exclude-table={}.{}", pattern(s), pattern(t)));
    }
    run_child("pg_dump", &args, Some(source_url)).await?;
    let list = |section: &str| {
        vec![
            "--list".to_string(),
            format!("--section={section}"),
            archive.display().to_string(),
        ]
    };
    let pre = run_child("pg_restore", &list("pre-data"), None).await?;
    let post = run_child("pg_restore", &list("post-data"), None).await?;
    let (oids, names) = key_objects(source).await?;
    let entries = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    };
    // Comments on extensions need the extension's owner, which a managed target's admin is not.
    let pre_entries: Vec<String> = entries(&pre)
        .into_iter()
        .filter(|l| !l.contains(" COMMENT - EXTENSION "))
        .collect();
    // Trigger mode's own capture triggers stay on the side they capture.
    let (keys, rest): (Vec<String>, Vec<String>) = entries(&post)
        .into_iter()
        .filter(|l| !is_capture_trigger(l))
        .partition(|l| is_key_entry(l, &oids, &names));
    let write = |name: &str, lines: &[String]| -> Result<PathBuf, PgError> {
        let path = dir.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n")
            .map_err(|e| PgError::Io(format!("cannot write {}: {e}", path.display())))?;
        Ok(path)
    };
    Ok(SchemaDump {
        pre_data: write("pre-data.list", &pre_entries)?,
        keys: write("keys.list", &keys)?,
        post_data: write("post-data.list", &rest)?,
        counts: (pre_entries.len(), keys.len(), rest.len()),
        archive,
        _dir: dir,
    })
}

/// A pg_dump name pattern that matches exactly this name (quoted, so case and dots are literal).
fn pattern(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl cutover_core::engine::Outcome for SchemaDump {
    fn summary(&self) -> String {
        format!(
            "{} pre-data, {} key, {} post-data entries",
            self.counts.0, self.counts.1, self.counts.2
        )
    }
}

/// Restores one part into the target, in one transaction.
pub async fn restore(dump: &SchemaDump, part: &Path, target: &ConnString) -> Result<(), PgError> {
    let args = vec![
        "--no-owner".to_string(),
        "--no-privileges".to_string(),
        "--single-transaction".to_string(),
        "--exit-on-error".to_string(),
        format!("--use-list={}", part.display()),
        format!("--dbname={}", target.dbname),
        dump.archive.display().to_string(),
    ];
    run_child("pg_restore", &args, Some(target))
        .await
        .map(|_| ())
}

/// The post-data entries of `dump` whose object the target does not have yet, written to a list
/// of their own, and how many: indexes, constraints and triggers are looked up by name on the
/// target (the copy may have built them as the tables landed, or an earlier run made them);
/// every other entry is kept.
pub async fn remaining(
    dump: &SchemaDump,
    source: &Client,
    target: &Client,
) -> Result<(PathBuf, usize), PgError> {
    let listed = std::fs::read_to_string(&dump.post_data)
        .map_err(|e| PgError::Io(format!("cannot read {}: {e}", dump.post_data.display())))?;
    let mut keep = vec![];
    for line in listed.lines().filter(|l| !l.trim().is_empty()) {
        if !present(line, source, target).await? {
            keep.push(line.to_string());
        }
    }
    let path = dump.post_data.with_file_name("post-data-remaining.list");
    std::fs::write(&path, keep.join("\n") + "\n")
        .map_err(|e| PgError::Io(format!("cannot write {}: {e}", path.display())))?;
    Ok((path, keep.len()))
}

/// Whether the target has the index, constraint or trigger of this TOC line already; false for
/// any other kind of entry. The line names the source's object by catalog and OID.
async fn present(line: &str, source: &Client, target: &Client) -> Result<bool, PgError> {
    let Some((_, rest)) = line.split_once("; ") else {
        return Ok(false);
    };
    let mut it = rest.splitn(3, ' ');
    let (Some(catalog), Some(object), Some(tail)) = (it.next(), it.next(), it.next()) else {
        return Ok(false);
    };
    let (Ok(catalog), Ok(object)) = (catalog.parse::<u32>(), object.parse::<u32>()) else {
        return Ok(false);
    };
    // The source's name of the object: (schema, table or index, constraint or trigger).
    let query = match catalog {
        1259 if tail.starts_with("INDEX ") && !tail.starts_with("INDEX ATTACH ") => {
            "SELECT n.nspname::text, c.relname::text, NULL::text FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1"
        }
        2606 => {
            "SELECT n.nspname::text, t.relname::text, k.conname::text FROM pg_constraint k
               JOIN pg_class t ON t.oid = k.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
              WHERE k.oid = $1"
        }
        2620 => {
            "SELECT n.nspname::text, t.relname::text, g.tgname::text FROM pg_trigger g
               JOIN pg_class t ON t.oid = g.tgrelid JOIN pg_namespace n ON n.oid = t.relnamespace
              WHERE g.oid = $1"
        }
        _ => return Ok(false),
    };
    let Some(row) = source
        .query_opt(query, &[&object])
        .await
        .ctx(Side::Source, "name a schema object")?
    else {
        return Ok(false);
    };
    let (schema, relation, name): (String, String, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    let there = match catalog {
        1259 => {
            "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('i', 'I') AND $3::text IS NULL)"
        }
        2606 => {
            "SELECT EXISTS (SELECT 1 FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid
                              JOIN pg_namespace n ON n.oid = t.relnamespace
                             WHERE n.nspname = $1 AND t.relname = $2 AND k.conname = $3)"
        }
        _ => {
            "SELECT EXISTS (SELECT 1 FROM pg_trigger g JOIN pg_class t ON t.oid = g.tgrelid
                              JOIN pg_namespace n ON n.oid = t.relnamespace
                             WHERE n.nspname = $1 AND t.relname = $2 AND g.tgname = $3)"
        }
    };
    Ok(target
        .query_one(there, &[&schema, &relation, &name])
        .await
        .ctx(Side::Target, "look for a schema object")?
        .get(0))
}

/// Creates one table of `origin` on `follower` as `pg_dump --table` defines it (with its
/// owned sequences, indexes, constraints and triggers, cutover's capture left out), in one
/// transaction: a table created on the source while the databases are in sync. Without
/// `foreign_keys` its foreign keys are left out: a copy into a follower that is behind could
/// hold rows whose parents it does not have yet (they come as schema drift once it caught up).
pub async fn copy_table_definition(
    origin: &ConnString,
    follower: &ConnString,
    schema: &str,
    name: &str,
    foreign_keys: bool,
) -> Result<(), PgError> {
    let dir = tempfile::Builder::new()
        .prefix("cutover-table-")
        .tempdir()
        .map_err(|e| PgError::Io(format!("cannot make a temporary folder: {e}")))?;
    let archive = dir.path().join("table.dump");
    let args: Vec<String> = vec![
        "--schema-only".into(),
        "--format=custom".into(),
        "--no-publications".into(),
        "--no-subscriptions".into(),
        format!("--table={}.{}", pattern(schema), pattern(name)),
        format!("--file={}", archive.display()),
    ];
    run_child("pg_dump", &args, Some(origin)).await?;
    let listed = run_child(
        "pg_restore",
        &["--list".to_string(), archive.display().to_string()],
        None,
    )
    .await?;
    let entries: Vec<&str> = listed
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty() && !is_capture_trigger(l))
        .filter(|l| foreign_keys || !l.contains(" FK CONSTRAINT "))
        .collect();
    let list = dir.path().join("table.list");
    std::fs::write(&list, entries.join("\n") + "\n")
        .map_err(|e| PgError::Io(format!("cannot write {}: {e}", list.display())))?;
    let args = vec![
        "--no-owner".to_string(),
        "--no-privileges".to_string(),
        "--single-transaction".to_string(),
        "--exit-on-error".to_string(),
        format!("--use-list={}", list.display()),
        format!("--dbname={}", follower.dbname),
        archive.display().to_string(),
    ];
    run_child("pg_restore", &args, Some(follower))
        .await
        .map(|_| ())
}

/// How many of `tables` exist on the target.
pub async fn tables_present(target: &Client, tables: &[Table]) -> Result<usize, PgError> {
    let names: Vec<String> = tables.iter().map(|t| t.display()).collect();
    let row = target
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND n.nspname || '.' || c.relname = ANY($1)",
            &[&names],
        )
        .await
        .ctx(Side::Target, "look for tables")?;
    Ok(row.get::<_, i64>(0) as usize)
}

/// Counts of (primary keys, other indexes, other constraints, triggers) on the given tables of
/// one side: comparing the two sides tells whether a part of the schema is already in place.
pub async fn object_counts(
    client: &Client,
    side: Side,
    tables: &[Table],
) -> Result<(i64, i64, i64, i64), PgError> {
    let names: Vec<String> = tables.iter().map(|t| t.display()).collect();
    let row = client
        .query_one(
            "WITH t AS (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname || '.' || c.relname = ANY($1))
             SELECT (SELECT count(*) FROM pg_constraint WHERE contype = 'p' AND conrelid IN (SELECT oid FROM t)),
                    (SELECT count(*) FROM pg_index WHERE indrelid IN (SELECT oid FROM t) AND NOT indisprimary),
                    (SELECT count(*) FROM pg_constraint WHERE contype <> 'p' AND conrelid IN (SELECT oid FROM t)),
                    (SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgrelid IN (SELECT oid FROM t))",
            &[&names],
        )
        .await
        .ctx(side, "count indexes and constraints")?;
    Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
}

/// A `pg_restore -l` line of one of cutover's own triggers on the side it watches: trigger
/// mode's capture triggers, and the DDL log's event triggers (`crate::ddl_log`).
fn is_capture_trigger(line: &str) -> bool {
    line.contains(" TRIGGER ")
        && line.split_whitespace().any(|w| {
            [
                "cutover_capture",
                "cutover_capture_truncate",
                "cutover_ddl",
                "cutover_ddl_drop",
            ]
            .contains(&w)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_the_capture_triggers_out() {
        assert!(super::is_capture_trigger(
            "3351; 2620 16600 TRIGGER public accounts cutover_capture owner"
        ));
        assert!(super::is_capture_trigger(
            "3466; 3466 16420 EVENT TRIGGER - cutover_ddl postgres"
        ));
        assert!(!super::is_capture_trigger(
            "3351; 2620 16600 TRIGGER public accounts audit owner"
        ));
    }

    #[test]
    fn a_child_error_keeps_the_servers_detail() {
        let stderr = "pg_restore: while PROCESSING TOC:\n\
            pg_restore: error: could not execute query: ERROR:  insert or update on table \"line_items\" violates foreign key constraint \"line_items_invoice\"\n\
            DETAIL:  Key (invoice_id)=(3) is not present in table \"invoices\".\n\
            Command was: ALTER TABLE ONLY billing.line_items ADD CONSTRAINT line_items_invoice ...\n";
        assert_eq!(
            child_error(stderr),
            "pg_restore: error: could not execute query: ERROR:  insert or update on table \"line_items\" violates foreign key constraint \"line_items_invoice\" (DETAIL:  Key (invoice_id)=(3) is not present in table \"invoices\".)"
        );
        assert_eq!(
            child_error("pg_dump: error: connection failed\n"),
            "pg_dump: error: connection failed"
        );
    }

    #[test]
    fn picks_keys_out_of_post_data() {
        let oids: HashSet<u32> = [16400, 16500].into_iter().collect();
        let names = vec![("public".to_string(), "part_1_pkey".to_string())];
        assert!(is_key_entry(
            "3345; 2606 16400 CONSTRAINT public accounts accounts_pkey postgres",
            &oids,
            &names
        ));
        assert!(!is_key_entry(
            "3346; 2606 16401 FK CONSTRAINT public a a_b_fkey postgres",
            &oids,
            &names
        ));
        assert!(is_key_entry(
            "3347; 1259 16500 INDEX public t_ident postgres",
            &oids,
            &names
        ));
        assert!(!is_key_entry(
            "3348; 1259 16501 INDEX public t_other postgres",
            &oids,
            &names
        ));
        assert!(is_key_entry(
            "3349; 0 0 INDEX ATTACH public part_1_pkey postgres",
            &oids,
            &names
        ));
        assert!(!is_key_entry(
            "3350; 0 0 INDEX ATTACH public part_1_idx postgres",
            &oids,
            &names
        ));
        assert!(!is_key_entry(
            "3351; 2620 16600 TRIGGER public t trg postgres",
            &oids,
            &names
        ));
    }
}
