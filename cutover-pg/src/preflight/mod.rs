//! `cutover check`: every reason the move would fail, found before anything is changed.
//!
//! Gathering and judging are apart. [`check`] reads both databases into [`Facts`]; [`rules`]
//! turns facts into [`Finding`]s without touching a server, so each rule can be tested with
//! fabricated facts as well as against real clusters. Every rule runs every time: the user
//! sees all problems at once, each with the fix, instead of fixing them one failed run at a
//! time.
//!
//! Some rules hold an invariant rather than a convenience: a table without a primary key and
//! with the default replica identity must never join a publication, because PostgreSQL then
//! refuses the *source's own* UPDATEs and DELETEs on it. And `wal_level` cannot be changed
//! per session (only in the server configuration, with a restart), so its fix never suggests
//! a client-side setting.

use cutover_core::plan::CopyMethod;
use cutover_core::plan::SyncSettings;
use cutover_core::{Mode, Plan};
use serde::Serialize;
use tokio_postgres::Client;

use crate::connect::{connect, ident};
use crate::error::{PgError, Side, SqlContext};
use crate::inspect::{self, ReplicaIdentity, Sequence, Server, Table};

mod clients;
mod servers;

pub use clients::{client_programs, parse_client_version, ClientProgram};

use servers::{
    behaviour, capacity, client_programs as client_programs_rule, extensions, heroku,
    large_objects, slot_risk, versions, wal_level, TRIGGER_MODE,
};

/// How bad a finding is. Ordered: `Info < Warning < Error`.
#[derive(Serialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nothing to do.
    Info,
    /// The move works, but something deserves a look (speed, data moved by hand).
    Warning,
    /// The move would fail or lose data; fix it first.
    Error,
}

/// One problem (or fact worth knowing), with how to fix it.
#[derive(Serialize, Clone, Debug)]
pub struct Finding {
    pub severity: Severity,
    /// Stable kebab-case id, e.g. "wal-level".
    pub code: &'static str,
    /// What it is about: "source", "target", "public.orders", "extension postgis".
    pub subject: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: Option<String>,
}

impl Finding {
    pub fn new(
        severity: Severity,
        code: &'static str,
        subject: impl Into<String>,
        message: impl Into<String>,
    ) -> Finding {
        Finding {
            severity,
            code,
            subject: subject.into(),
            message: message.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }
}

/// What `cutover check` found.
#[derive(Serialize, Debug)]
pub struct Report {
    pub source: Server,
    pub target: Server,
    pub tables: Vec<Table>,
    pub sequences: Vec<Sequence>,
    /// Errors first, then warnings, then information; in rule order within each.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Runs every rule on the facts.
    pub fn from_facts(facts: Facts) -> Report {
        let findings = rules(&facts);
        Report {
            source: facts.source,
            target: facts.target,
            tables: facts.tables,
            sequences: facts.sequences,
            findings,
        }
    }

    /// 0 when clean (information only), 1 with any error, 2 with warnings but no error.
    pub fn exit_code(&self) -> i32 {
        match self.findings.iter().map(|f| f.severity).max() {
            Some(Severity::Error) => 1,
            Some(Severity::Warning) => 2,
            _ => 0,
        }
    }

    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
    }
}

/// What the target holds under the name of a source table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetState {
    Missing,
    Empty,
    HasRows,
    /// It exists but the target role may not read it; the reason.
    Unreadable(String),
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetTable {
    pub schema: String,
    pub name: String,
    pub state: TargetState,
}

/// Objects of an earlier `cutover db sync` that are still there, by name.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Previous {
    /// Our publication on the source.
    pub publication: Option<String>,
    /// Our replication slot on the source.
    pub slot: Option<String>,
    /// Our subscription on the target.
    pub subscription: Option<String>,
}

/// Everything the rules judge, read from both databases by [`check`].
#[derive(Clone, Debug)]
pub struct Facts {
    pub mode: Mode,
    /// Trigger mode's keyless tables followed by whole-row identity.
    pub whole_row_tables: Vec<(String, String)>,
    /// How the initial copy is made (the subscription's copy needs more slots).
    pub copy: CopyMethod,
    pub copy_schema: bool,
    pub source: Server,
    pub target: Server,
    /// The tables the plan selects on the source.
    pub tables: Vec<Table>,
    pub sequences: Vec<Sequence>,
    /// Installed on the source: (name, version).
    pub source_extensions: Vec<(String, String)>,
    /// What the target could install (`pg_available_extensions`), with the versions.
    pub target_available: Vec<inspect::Available>,
    /// For each selected table, what the target holds under its name.
    pub target_tables: Vec<TargetTable>,
    /// Roles whose privileges the source role holds, itself included: it owns a table when the
    /// table's owner is one of them.
    pub source_roles: Vec<String>,
    /// The source role has CREATE on the source database.
    pub source_can_create: bool,
    /// WAL senders running on the source (`pg_stat_replication`).
    pub wal_senders_used: i64,
    /// The target role is a member of `pg_create_subscription` (PostgreSQL 16+; false before).
    pub target_create_subscription: bool,
    pub previous: Previous,
    /// Partitions that cannot be replicated as they are.
    pub partition_issues: Vec<inspect::PartitionIssue>,
    /// The source's host as the plan names it.
    pub source_host: String,
    /// Free bytes on the disk of the source's data directory, when this machine can see it
    /// (the source runs here and its role may read `data_directory`).
    pub source_free_disk: Option<u64>,
    /// The PostgreSQL client programs `db sync` runs, as this machine has them.
    pub client_programs: Vec<ClientProgram>,
}

/// Connects to both databases, reads everything and runs every rule.
pub async fn check(plan: &Plan) -> Result<Report, PgError> {
    let (source, target) = tokio::join!(
        connect(&plan.source.url, Side::Source),
        connect(&plan.target.url, Side::Target)
    );
    let (source, target) = (source?, target?);
    let facts = gather(&plan.sync, &plan.source.url.host, &source, &target).await?;
    Ok(Report::from_facts(facts))
}

async fn gather(sync: &SyncSettings, host: &str, s: &Client, t: &Client) -> Result<Facts, PgError> {
    let source = inspect::server(s, Side::Source).await?;
    let target = inspect::server(t, Side::Target).await?;
    let tables = inspect::tables(s, Side::Source, sync).await?;
    let partition_issues = inspect::partition_issues(s, Side::Source, &tables).await?;
    let sequences = inspect::sequences(s, Side::Source, sync).await?;
    let source_extensions = inspect::extensions(s, Side::Source).await?;
    let target_available = inspect::available_versions(t, Side::Target).await?;
    let target_tables = target_tables(t, &tables).await?;

    let row = s
        .query_one(
            "SELECT ARRAY(SELECT rolname::text FROM pg_roles WHERE pg_has_role(current_user, oid, 'USAGE')),
                    has_database_privilege(current_database(), 'CREATE'),
                    (SELECT count(*) FROM pg_stat_replication),
                    (SELECT pubname::text FROM pg_publication WHERE pubname = $1),
                    (SELECT slot_name::text FROM pg_replication_slots WHERE slot_name = $2)",
            &[&sync.publication(), &sync.slot()],
        )
        .await
        .ctx(Side::Source, "read the source role's privileges")?;
    let subscription: Option<String> = t
        .query_opt(
            "SELECT subname::text FROM pg_subscription
              WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&sync.subscription()],
        )
        .await
        .ctx(Side::Target, "look for a previous subscription")?
        .map(|r| r.get(0));
    // The role exists from PostgreSQL 16 on only.
    let target_create_subscription = target.major() >= 16
        && t.query_one(
            "SELECT pg_has_role(current_user, 'pg_create_subscription', 'USAGE')",
            &[],
        )
        .await
        .ctx(Side::Target, "read the target role's privileges")?
        .get::<_, bool>(0);

    Ok(Facts {
        mode: sync.mode,
        whole_row_tables: sync.whole_row_tables.clone(),
        copy: sync.copy,
        copy_schema: sync.copy_schema,
        target,
        tables,
        sequences,
        source_extensions,
        target_available,
        target_tables,
        source_roles: row.get(0),
        source_can_create: row.get(1),
        wal_senders_used: row.get(2),
        target_create_subscription,
        previous: Previous {
            publication: row.get(3),
            slot: row.get(4),
            subscription,
        },
        partition_issues,
        source_free_disk: free_disk(host, source.data_directory.as_deref()),
        client_programs: client_programs().await,
        source_host: host.to_string(),
        source,
    })
}

/// Free bytes under `dir` when the server at `host` runs on this machine.
fn free_disk(host: &str, dir: Option<&str>) -> Option<u64> {
    let local = host.starts_with('/') || ["localhost", "127.0.0.1", "::1"].contains(&host);
    let stat = nix::sys::statvfs::statvfs(dir.filter(|_| local)?).ok()?;
    Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// What the target holds under each source table's name.
async fn target_tables(t: &Client, tables: &[Table]) -> Result<Vec<TargetTable>, PgError> {
    let mut out = Vec::with_capacity(tables.len());
    for table in tables {
        let state = match inspect::has_rows(t, Side::Target, &table.schema, &table.name).await {
            Ok(None) => TargetState::Missing,
            Ok(Some(false)) => TargetState::Empty,
            Ok(Some(true)) => TargetState::HasRows,
            Err(PgError::Sql {
                code: Some(code),
                message,
                ..
            }) if code == "42501" => TargetState::Unreadable(message),
            Err(e) => return Err(e),
        };
        out.push(TargetTable {
            schema: table.schema.clone(),
            name: table.name.clone(),
            state,
        });
    }
    Ok(out)
}

/// Every rule on the facts; errors first, then warnings, then information.
pub fn rules(f: &Facts) -> Vec<Finding> {
    let mut out = vec![];
    versions(f, &mut out);
    client_programs_rule(f, &mut out);
    wal_level(f, &mut out);
    capacity(f, &mut out);
    source_privileges(f, &mut out);
    ownership(f, &mut out);
    target_privileges(f, &mut out);
    if f.tables.is_empty() {
        out.push(
            Finding::new(
                Severity::Error,
                "no-tables",
                "source",
                format!("no table to move: database \"{}\" has none in the selected schemas once exclude_tables is applied", f.source.database),
            )
            .fix("check schemas and exclude_tables in [sync] of cutover.toml, and that source.url names the app's database"),
        );
    }
    for table in &f.tables {
        let whole_row = f
            .whole_row_tables
            .iter()
            .any(|(s, n)| s == &table.schema && n == &table.name);
        if f.mode == Mode::Trigger && table.primary_key.is_empty() {
            trigger_keyless(table, whole_row, &mut out);
        } else {
            table_shape(f.mode, table, &mut out);
        }
    }
    for issue in &f.partition_issues {
        for (code, message, fix) in issue.problems() {
            out.push(
                Finding::new(Severity::Error, code, issue.partition.clone(), message).fix(fix),
            );
        }
    }
    large_objects(f, &mut out);
    extensions(f, &mut out);
    behaviour(f, &mut out);
    heroku(f, &mut out);
    slot_risk(f, &mut out);
    target_contents(f, &mut out);
    sequences(f, &mut out);
    sizes(f, &mut out);
    previous(f, &mut out);
    // Stable: rule order is kept within a severity.
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

fn source_privileges(f: &Facts, out: &mut Vec<Finding>) {
    let s = &f.source;
    let role = ident(&s.role);
    if f.mode == Mode::Native && !s.superuser && !s.replication && s.cloud_admin.is_none() {
        out.push(
            Finding::new(
                Severity::Error,
                "replication-privilege",
                "source",
                format!(
                    "role \"{}\" on the source may not replicate: it is not a superuser and has no REPLICATION attribute",
                    s.role
                ),
            )
            .fix(format!(
                "as a superuser run ALTER ROLE {role} REPLICATION; (AWS RDS: GRANT rds_replication TO {role};), \
                 or connect as a role that has it in source.url. Where no superuser is at hand (Heroku Postgres), \
                 {TRIGGER_MODE}"
            )),
        );
    }
    if !s.superuser && !f.source_can_create {
        let needs = match f.mode {
            Mode::Native => "CREATE PUBLICATION needs",
            Mode::Trigger => "the change log's schema needs",
        };
        out.push(
            Finding::new(
                Severity::Error,
                "create-privilege",
                "source",
                format!(
                    "role \"{}\" may not create objects in database \"{}\" on the source; {needs} the CREATE privilege on the database",
                    s.role, s.database
                ),
            )
            .fix(format!(
                "as the database owner or a superuser run GRANT CREATE ON DATABASE {} TO {role};",
                ident(&s.database)
            )),
        );
    }
}

fn ownership(f: &Facts, out: &mut Vec<Finding>) {
    if f.source.superuser {
        return;
    }
    let role = &f.source.role;
    let needs = match f.mode {
        Mode::Native => "CREATE PUBLICATION ... FOR TABLE needs its owner",
        Mode::Trigger => "installing the change capture triggers needs its owner",
    };
    for t in f
        .tables
        .iter()
        .filter(|t| !f.source_roles.contains(&t.owner))
    {
        out.push(
            Finding::new(
                Severity::Error,
                "table-owner",
                t.display(),
                format!("{} is owned by \"{}\", not by the source role \"{role}\"; {needs}", t.display(), t.owner),
            )
            .fix(format!(
                "as \"{}\" or a superuser run ALTER TABLE {} OWNER TO {};, or connect as \"{}\" in source.url",
                t.owner,
                t.qualified(),
                ident(role),
                t.owner
            )),
        );
    }
}

fn target_privileges(f: &Facts, out: &mut Vec<Finding>) {
    let t = &f.target;
    let pg16 = t.major() >= 16;
    if f.mode != Mode::Native
        || t.superuser
        || t.cloud_admin.is_some()
        || (pg16 && f.target_create_subscription)
    {
        return;
    }
    let role = ident(&t.role);
    let (needs, fix) = if pg16 {
        (
            "a superuser or a member of pg_create_subscription",
            format!(
                "as a superuser run GRANT pg_create_subscription TO {role}; GRANT CREATE ON DATABASE {} TO {role};, \
                 or connect as a superuser (on a managed service: the admin user) in target.url",
                ident(&t.database)
            ),
        )
    } else {
        (
            "a superuser",
            "connect to the target as a superuser in target.url (on a managed service: the admin user, \
             e.g. a member of rds_superuser on AWS RDS)"
                .to_string(),
        )
    };
    out.push(
        Finding::new(
            Severity::Error,
            "subscription-privilege",
            "target",
            format!(
                "role \"{}\" on the target may not create a subscription: on PostgreSQL {} that needs {needs}",
                t.role,
                t.major()
            ),
        )
        .fix(fix),
    );
}

fn exclude_hint(t: &Table) -> String {
    format!(
        "or leave it behind with exclude_tables = [\"{}\"] in [sync] of cutover.toml",
        t.display()
    )
}

/// Trigger mode finds rows by their primary key; a keyless table needs the plan's consent
/// to whole-row identity.
fn trigger_keyless(t: &Table, whole_row: bool, out: &mut Vec<Finding>) {
    let (name, q) = (t.display(), t.qualified());
    if whole_row {
        out.push(Finding::new(
            Severity::Warning,
            "whole-row-identity",
            &name,
            format!(
                "{name} has no primary key and is followed by whole-row identity (sync.whole_row_tables): each changed row is found by all its columns, which is slow on large tables"
            ),
        ).fix(format!("if it is large, add a primary key (ALTER TABLE {q} ADD PRIMARY KEY (<key columns>);)")));
    } else {
        out.push(
            Finding::new(
                Severity::Error,
                "no-primary-key",
                &name,
                format!("{name} has no primary key, which trigger mode needs to find its rows"),
            )
            .fix(format!(
                "add a primary key (ALTER TABLE {q} ADD PRIMARY KEY (<key columns>);, or ADD COLUMN id bigserial PRIMARY KEY), or accept whole-row identity with whole_row_tables = [\"{name}\"] in [sync], {}",
                exclude_hint(t)
            )),
        );
    }
    unlogged(Mode::Trigger, t, out);
}

fn table_shape(mode: Mode, t: &Table, out: &mut Vec<Finding>) {
    let (name, q) = (t.display(), t.qualified());
    if t.replica_identity == ReplicaIdentity::Default && t.primary_key.is_empty() {
        out.push(
            Finding::new(
                Severity::Error,
                "no-replica-identity",
                &name,
                format!(
                    "{name} has no primary key and the default replica identity: its UPDATEs and DELETEs cannot be \
                     replayed on the target, and in a publication the source itself would refuse them"
                ),
            )
            .fix(format!(
                "add a primary key (ALTER TABLE {q} ADD PRIMARY KEY (<key columns>);), or use a unique index on NOT NULL \
                 columns (ALTER TABLE {q} REPLICA IDENTITY USING INDEX some_index;), or run \
                 ALTER TABLE {q} REPLICA IDENTITY FULL; (each UPDATE and DELETE on the target then scans the \
                 table), {}",
                exclude_hint(t)
            )),
        );
    }
    if t.replica_identity == ReplicaIdentity::Nothing {
        out.push(
            Finding::new(
                Severity::Error,
                "replica-identity-nothing",
                &name,
                format!(
                    "{name} has REPLICA IDENTITY NOTHING: its UPDATEs and DELETEs cannot be replayed on the target, \
                     and in a publication the source itself would refuse them"
                ),
            )
            .fix(format!(
                "run ALTER TABLE {q} REPLICA IDENTITY DEFAULT; (with a primary key) or ALTER TABLE {q} REPLICA IDENTITY FULL;, {}",
                exclude_hint(t)
            )),
        );
    }
    if t.replica_identity == ReplicaIdentity::Full && t.primary_key.is_empty() {
        out.push(
            Finding::new(
                Severity::Warning,
                "replica-identity-full",
                &name,
                format!(
                    "{name} has REPLICA IDENTITY FULL and no primary key: every UPDATE and DELETE replayed on the \
                     target scans the table (about {} rows, {})",
                    t.rows_estimate,
                    human_bytes(t.bytes)
                ),
            )
            .fix(format!("if the table is large, add a primary key (ALTER TABLE {q} ADD PRIMARY KEY (<key columns>);)")),
        );
    }
    unlogged(mode, t, out);
    if t.partitioned {
        out.push(Finding::new(
            Severity::Info,
            "partitioned-table",
            &name,
            format!("{name} is partitioned: it is moved through its root (publish_via_partition_root), its partitions with it"),
        ));
    }
    if !t.generated_columns.is_empty() {
        out.push(Finding::new(
            Severity::Info,
            "generated-columns",
            &name,
            format!(
                "{name} has generated columns ({}): they are not copied but computed again on the target",
                t.generated_columns.join(", ")
            ),
        ));
    }
}

fn unlogged(mode: Mode, t: &Table, out: &mut Vec<Finding>) {
    if !t.unlogged {
        return;
    }
    let name = t.display();
    if mode == Mode::Trigger {
        out.push(Finding::new(
            Severity::Info,
            "unlogged-table",
            &name,
            format!(
                "{name} is UNLOGGED: its triggers capture its changes, but a server crash empties it on either side"
            ),
        ));
        return;
    }
    out.push(
        Finding::new(
            Severity::Error,
            "unlogged-table",
            &name,
            format!("{name} is UNLOGGED: it writes no WAL, so logical replication does not carry its rows"),
        )
        .fix(format!(
            "run ALTER TABLE {} SET LOGGED; (it rewrites the table under an exclusive lock), {}",
            t.qualified(),
            exclude_hint(t)
        )),
    );
}

fn target_contents(f: &Facts, out: &mut Vec<Finding>) {
    let resuming = f.previous.subscription.is_some();
    let role = ident(&f.target.role);
    for t in &f.target_tables {
        let name = format!("{}.{}", t.schema, t.name);
        let q = crate::connect::qualified(&t.schema, &t.name);
        let finding = match &t.state {
            TargetState::HasRows if resuming => Finding::new(
                Severity::Info,
                "target-not-empty",
                &name,
                format!("{name} on the target holds rows copied by the previous `cutover db sync`"),
            ),
            TargetState::HasRows => Finding::new(
                Severity::Error,
                "target-not-empty",
                &name,
                format!("target is not empty: {name} already exists on the target and holds rows, which the copy would duplicate or collide with"),
            )
            .fix(format!("empty it on the target (TRUNCATE {q};), drop it (DROP TABLE {q};), or point target.url at a fresh database")),
            TargetState::Empty if f.copy_schema && !resuming => Finding::new(
                Severity::Warning,
                "target-table-exists",
                &name,
                format!("{name} already exists on the target (empty); the schema copy will fail on objects that exist"),
            )
            .fix(format!(
                "drop it on the target (DROP TABLE {q};) so the schema copy creates it, or set copy_schema = false \
                 in [sync] of cutover.toml if the target's schema is already in place"
            )),
            TargetState::Missing if !f.copy_schema => Finding::new(
                Severity::Error,
                "target-table-missing",
                &name,
                format!("{name} does not exist on the target, and copy_schema = false leaves it to you"),
            )
            .fix("create it on the target (pg_dump --schema-only --table=... from the source), or set copy_schema = true in [sync] of cutover.toml"),
            TargetState::Unreadable(why) => Finding::new(
                Severity::Warning,
                "target-table-unreadable",
                &name,
                format!("{name} exists on the target but its role cannot read it ({why}), so cutover cannot tell whether it is empty"),
            )
            .fix(format!("as its owner run GRANT SELECT ON {q} TO {role};, or connect as its owner in target.url")),
            _ => continue,
        };
        out.push(finding);
    }
}

fn sequences(f: &Facts, out: &mut Vec<Finding>) {
    if f.sequences.is_empty() {
        return;
    }
    let owned = f.sequences.iter().filter(|s| s.owned_by.is_some()).count();
    out.push(Finding::new(
        Severity::Info,
        "sequences",
        "source",
        format!(
            "{} sequences ({owned} owned by a column, {} not owned): their values are not replicated; \
             cutover copies every one at switchover",
            f.sequences.len(),
            f.sequences.len() - owned
        ),
    ));
}

fn sizes(f: &Facts, out: &mut Vec<Finding>) {
    let rows: i64 = f.tables.iter().map(|t| t.rows_estimate).sum();
    let bytes: i64 = f.tables.iter().map(|t| t.bytes).sum();
    out.push(Finding::new(
        Severity::Info,
        "size",
        "source",
        format!(
            "source database \"{}\" is {}; the {} selected tables hold about {rows} rows in {}",
            f.source.database,
            human_bytes(f.source.database_bytes),
            f.tables.len(),
            human_bytes(bytes)
        ),
    ));
    out.push(Finding::new(
        Severity::Info,
        "size",
        "target",
        format!(
            "target database \"{}\" is {}",
            f.target.database,
            human_bytes(f.target.database_bytes)
        ),
    ));
}

fn previous(f: &Facts, out: &mut Vec<Finding>) {
    let p = &f.previous;
    let mut parts = vec![];
    if let Some(name) = &p.publication {
        parts.push(format!("publication \"{name}\" on the source"));
    }
    if let Some(name) = &p.subscription {
        parts.push(format!("subscription \"{name}\" on the target"));
    }
    if !parts.is_empty() {
        out.push(Finding::new(
            Severity::Info,
            "previous-sync",
            if p.subscription.is_some() {
                "target"
            } else {
                "source"
            },
            format!(
                "a previous `cutover db sync` is in place ({}); `cutover db sync` resumes it",
                parts.join(", ")
            ),
        ));
    }
}

/// `8192 bytes`, `16 kB`, `1.5 GB`, as pg_size_pretty writes them.
fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["bytes", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 * 10.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}
