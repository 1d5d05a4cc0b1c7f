//! What is in a database: the server, the role we connect as, the tables to move, sequences and
//! extensions. Preflight, sync, status and verify all read the same inventory.
//!
//! Partitions are moved through their root (published with `publish_via_partition_root`), so
//! the inventory lists roots and ordinary tables, never a partition on its own. Tables that
//! belong to an extension are the extension's business and are left out.

use cutover_core::plan::SyncSettings;
use serde::Serialize;
use tokio_postgres::Client;

use crate::connect::qualified;
use crate::error::{PgError, Side, SqlContext};

/// The schema cutover keeps its own objects in; never moved.
pub const OWN_SCHEMA: &str = "cutover";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaIdentity {
    /// The primary key (if there is one).
    Default,
    /// The whole old row.
    Full,
    /// A named unique index.
    Index,
    /// None: UPDATE and DELETE cannot be published.
    Nothing,
}

#[derive(Clone, Debug, Serialize)]
pub struct Table {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub owner: String,
    pub partitioned: bool,
    pub unlogged: bool,
    /// `reltuples`; 0 when the table was never analyzed. A partitioned table's is the sum of
    /// its leaf partitions' (its own `reltuples`, and an inner partitioned table's, hold that
    /// total again from PostgreSQL 14 on).
    pub rows_estimate: i64,
    /// Table, indexes and TOAST, partitions included.
    pub bytes: i64,
    /// Primary key columns in key order; empty without one.
    pub primary_key: Vec<String>,
    pub replica_identity: ReplicaIdentity,
    /// Columns of the replica identity index, when it is `Index`.
    pub identity_index: Vec<String>,
    pub generated_columns: Vec<String>,
    /// Every column, in table order (dropped ones left out).
    pub columns: Vec<String>,
}

impl Table {
    /// `"schema"."name"`.
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }

    /// `schema.name`, for people.
    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// The columns that identify a row: the primary key, else the replica identity index.
    pub fn key(&self) -> &[String] {
        if !self.primary_key.is_empty() {
            &self.primary_key
        } else {
            &self.identity_index
        }
    }

    /// True when publishing this table for UPDATE/DELETE would break the source's own writes:
    /// no primary key and default identity, or identity NOTHING.
    pub fn cannot_publish(&self) -> bool {
        match self.replica_identity {
            ReplicaIdentity::Default => self.primary_key.is_empty(),
            ReplicaIdentity::Nothing => true,
            ReplicaIdentity::Full | ReplicaIdentity::Index => false,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Sequence {
    pub schema: String,
    pub name: String,
    /// `schema.table.column` that owns it (serial, identity), if any.
    pub owned_by: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Server {
    pub version: String,
    pub version_num: i32,
    pub wal_level: String,
    pub max_replication_slots: i32,
    pub max_wal_senders: i32,
    pub replication_slots_used: i64,
    pub role: String,
    pub superuser: bool,
    pub replication: bool,
    /// Member of a cloud provider's admin role (rds_superuser, cloudsqlsuperuser, azure_pg_admin).
    pub cloud_admin: Option<String>,
    pub database: String,
    pub database_bytes: i64,
    pub large_objects: i64,
    /// The size of `pg_largeobject`, which finding the changed large objects reads.
    pub large_object_bytes: i64,
    /// What the database's text and time behave like: a difference changes results.
    pub behaviour: Behaviour,
    /// `max_slot_wal_keep_size` in MB; -1 when a slot may keep WAL without limit.
    pub max_slot_wal_keep_mb: i64,
    /// A schema `heroku_ext` exists: Heroku Postgres installs extensions there.
    pub heroku_ext: bool,
    /// The data directory, when the role may read it (superuser or pg_read_all_settings).
    pub data_directory: Option<String>,
}

/// The settings of a database that change what the same SQL returns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Behaviour {
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
    pub timezone: String,
    pub standard_conforming_strings: String,
}

impl Server {
    pub fn major(&self) -> i32 {
        self.version_num / 10000
    }
}

pub async fn server(client: &Client, side: Side) -> Result<Server, PgError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version'),
                    current_setting('server_version_num')::int,
                    current_setting('wal_level'),
                    current_setting('max_replication_slots')::int,
                    current_setting('max_wal_senders')::int,
                    (SELECT count(*) FROM pg_replication_slots),
                    current_user::text,
                    r.rolsuper, r.rolreplication,
                    (SELECT a.rolname::text FROM pg_roles a
                      WHERE a.rolname IN ('rds_superuser', 'cloudsqlsuperuser', 'azure_pg_admin')
                        AND pg_has_role(current_user, a.oid, 'MEMBER') LIMIT 1),
                    current_database()::text,
                    pg_database_size(current_database()),
                    (SELECT count(*) FROM pg_largeobject_metadata),
                    pg_encoding_to_char(d.encoding)::text, d.datcollate::text, d.datctype::text,
                    current_setting('TimeZone'), current_setting('standard_conforming_strings'),
                    (SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size'),
                    EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'heroku_ext'),
                    (SELECT setting FROM pg_settings WHERE name = 'data_directory'),
                    pg_total_relation_size('pg_largeobject')
             FROM pg_roles r, pg_database d
            WHERE r.rolname = current_user AND d.datname = current_database()",
            &[],
        )
        .await
        .ctx(side, "read server settings")?;
    Ok(Server {
        version: row.get(0),
        version_num: row.get(1),
        wal_level: row.get(2),
        max_replication_slots: row.get(3),
        max_wal_senders: row.get(4),
        replication_slots_used: row.get(5),
        role: row.get(6),
        superuser: row.get(7),
        replication: row.get(8),
        cloud_admin: row.get(9),
        database: row.get(10),
        database_bytes: row.get(11),
        large_objects: row.get(12),
        behaviour: Behaviour {
            encoding: row.get(13),
            collate: row.get(14),
            ctype: row.get(15),
            timezone: row.get(16),
            standard_conforming_strings: row.get(17),
        },
        max_slot_wal_keep_mb: row.get::<_, Option<i64>>(18).unwrap_or(-1),
        heroku_ext: row.get(19),
        data_directory: row.get(20),
        large_object_bytes: row.get(21),
    })
}

/// `FROM pg_class c JOIN pg_namespace n ... WHERE ...`: the tables the plan may select, `$1`
/// the plan's schemas (empty: all), roots and ordinary tables, no extension's, not ours.
macro_rules! selected_tables {
    () => {
        "
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p')
   AND NOT c.relispartition
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'cutover')
   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
   AND (cardinality($1::text[]) = 0 OR n.nspname = ANY($1::text[]))
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')"
    };
}
pub(crate) use selected_tables;

const TABLES: &str = concat!(
    "
SELECT c.oid, n.nspname::text, c.relname::text, pg_get_userbyid(c.relowner)::text,
       c.relkind = 'p', c.relpersistence = 'u',
       CASE WHEN c.relkind = 'p'
            THEN (SELECT coalesce(sum(greatest(p.reltuples, 0)), 0)::bigint
                    FROM pg_partition_tree(c.oid) t JOIN pg_class p ON p.oid = t.relid
                   WHERE t.isleaf)
            ELSE greatest(c.reltuples, 0)::bigint END,
       CASE WHEN c.relkind = 'p'
            THEN (SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0)::bigint FROM pg_partition_tree(c.oid) t)
            ELSE pg_total_relation_size(c.oid) END,
       c.relreplident::text,
       coalesce((SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum))
                   FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                  WHERE i.indrelid = c.oid AND i.indisprimary), '{}'),
       coalesce((SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum))
                   FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                  WHERE i.indrelid = c.oid AND i.indisreplident), '{}'),
       coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> ''), '{}'),
       coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{}')
",
    selected_tables!(),
    " ORDER BY 2, 3"
);

/// The tables to move, as the plan selects them.
pub async fn tables(
    client: &Client,
    side: Side,
    sync: &SyncSettings,
) -> Result<Vec<Table>, PgError> {
    let rows = client
        .query(TABLES, &[&sync.schemas])
        .await
        .ctx(side, "list tables")?;
    let mut out = vec![];
    for r in rows {
        let schema: String = r.get(1);
        let name: String = r.get(2);
        if sync
            .exclude_tables
            .iter()
            .any(|(s, n)| *s == schema && *n == name)
        {
            continue;
        }
        let ident: String = r.get(8);
        out.push(Table {
            oid: r.get(0),
            schema,
            name,
            owner: r.get(3),
            partitioned: r.get(4),
            unlogged: r.get(5),
            rows_estimate: r.get(6),
            bytes: r.get(7),
            replica_identity: match ident.as_str() {
                "f" => ReplicaIdentity::Full,
                "i" => ReplicaIdentity::Index,
                "n" => ReplicaIdentity::Nothing,
                _ => ReplicaIdentity::Default,
            },
            primary_key: r.get(9),
            identity_index: r.get(10),
            generated_columns: r.get(11),
            columns: r.get(12),
        });
    }
    Ok(out)
}

/// Every sequence in the selected schemas, owned or not.
pub async fn sequences(
    client: &Client,
    side: Side,
    sync: &SyncSettings,
) -> Result<Vec<Sequence>, PgError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text,
                    (SELECT tn.nspname || '.' || t.relname || '.' || a.attname
                       FROM pg_depend d
                       JOIN pg_class t ON t.oid = d.refobjid
                       JOIN pg_namespace tn ON tn.oid = t.relnamespace
                       JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
                      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                        AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') LIMIT 1)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'S'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'cutover')
                AND (cardinality($1::text[]) = 0 OR n.nspname = ANY($1::text[]))
                AND NOT EXISTS (SELECT 1 FROM pg_depend d
                                 WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
              ORDER BY 1, 2",
            &[&sync.schemas],
        )
        .await
        .ctx(side, "list sequences")?;
    Ok(rows
        .iter()
        .map(|r| Sequence {
            schema: r.get(0),
            name: r.get(1),
            owned_by: r.get(2),
        })
        .collect())
}

/// Installed extensions: (name, version).
pub async fn extensions(client: &Client, side: Side) -> Result<Vec<(String, String)>, PgError> {
    let rows = client
        .query(
            "SELECT extname::text, extversion FROM pg_extension ORDER BY 1",
            &[],
        )
        .await
        .ctx(side, "list extensions")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// An extension the server could install, with the versions it has.
#[derive(Clone, Debug, Serialize)]
pub struct Available {
    pub name: String,
    /// What `CREATE EXTENSION` without a version installs (what `pg_dump`'s copy does).
    pub default_version: Option<String>,
    pub versions: Vec<String>,
}

/// The extensions the server could install, each with its versions.
pub async fn available_versions(client: &Client, side: Side) -> Result<Vec<Available>, PgError> {
    let rows = client
        .query(
            "SELECT e.name::text, e.default_version,
                    ARRAY(SELECT v.version FROM pg_available_extension_versions v WHERE v.name = e.name)
               FROM pg_available_extensions e ORDER BY 1",
            &[],
        )
        .await
        .ctx(side, "list available extension versions")?;
    Ok(rows
        .iter()
        .map(|r| Available {
            name: r.get(0),
            default_version: r.get(1),
            versions: r.get(2),
        })
        .collect())
}

/// Whether a table with this schema and name exists, and whether it holds any row.
/// `None` when it does not exist.
pub async fn has_rows(
    client: &Client,
    side: Side,
    schema: &str,
    name: &str,
) -> Result<Option<bool>, PgError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &name],
        )
        .await
        .ctx(side, "look for a table")?;
    if exists.is_none() {
        return Ok(None);
    }
    let row = client
        .query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM {})", qualified(schema, name)),
            &[],
        )
        .await
        .ctx(side, &format!("look into {schema}.{name}"))?;
    Ok(Some(row.get(0)))
}

/// A partition that cannot be replicated as it is, under a partitioned table being moved.
/// Identity and persistence are per partition: ALTER TABLE on the root does not reach them,
/// and UPDATEs run on the partitions.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionIssue {
    /// `schema.name`, for people.
    pub partition: String,
    /// Quoted for SQL.
    pub quoted: String,
    pub unlogged: bool,
    /// No primary key and default identity, or identity NOTHING.
    pub no_identity: bool,
}

impl PartitionIssue {
    /// (code, message and fix) of each problem, for `check` and `db sync` alike.
    pub fn problems(&self) -> Vec<(&'static str, String, String)> {
        let mut out = vec![];
        if self.unlogged {
            out.push((
                "unlogged-partition",
                format!(
                    "partition {} is UNLOGGED and cannot be replicated",
                    self.partition
                ),
                format!("run ALTER TABLE {} SET LOGGED", self.quoted),
            ));
        }
        if self.no_identity {
            out.push((
                "partition-no-replica-identity",
                format!(
                    "partition {} has no primary key and no usable replica identity, so publishing it would make its UPDATEs and DELETEs fail on the source",
                    self.partition
                ),
                format!(
                    "add a primary key to the partitioned table, or run ALTER TABLE {} REPLICA IDENTITY FULL (each partition needs its own)",
                    self.quoted
                ),
            ));
        }
        out
    }
}

/// Partitions of the selected partitioned tables that cannot be replicated as they are.
pub async fn partition_issues(
    client: &Client,
    side: Side,
    tables: &[Table],
) -> Result<Vec<PartitionIssue>, PgError> {
    let roots: Vec<u32> = tables
        .iter()
        .filter(|t| t.partitioned)
        .map(|t| t.oid)
        .collect();
    if roots.is_empty() {
        return Ok(vec![]);
    }
    let rows = client
        .query(
            "SELECT n.nspname || '.' || c.relname, quote_ident(n.nspname) || '.' || quote_ident(c.relname),
                    c.relpersistence = 'u',
                    c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS
                        (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
               FROM unnest($1::oid[]) r(oid), pg_partition_tree(r.oid) p
               JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE p.isleaf ORDER BY 1",
            &[&roots],
        )
        .await
        .ctx(side, "list partitions")?;
    Ok(rows
        .iter()
        .map(|r| PartitionIssue {
            partition: r.get(0),
            quoted: r.get(1),
            unlogged: r.get(2),
            no_identity: r.get(3),
        })
        .filter(|p| p.unlogged || p.no_identity)
        .collect())
}
