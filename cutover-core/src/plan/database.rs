//! [source], [target], [sync], [verify] and [status]: the databases and how they are copied
//! and compared.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::error::Collector;
use super::values::*;
use super::Mode;
use crate::connstr::ConnString;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    /// Connection URL, by reference: "${SOURCE_DATABASE_URL}". No default.
    pub url: Spanned<String>,
    /// URL the *other* server uses to reach this one for replication (the target's
    /// subscription connects to the source with it). Default: `url`.
    #[serde(default)]
    pub replication_url: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSync {
    /// "native" (logical replication) or "trigger". Default: "native".
    #[serde(default = "default_mode")]
    pub mode: Spanned<String>,
    /// Schemas to move. Default: every schema except the system ones.
    #[serde(default)]
    pub schemas: Vec<Spanned<String>>,
    /// Tables to leave behind, as "schema.table". Default: none.
    #[serde(default)]
    pub exclude_tables: Vec<Spanned<String>>,
    /// Trigger mode: tables without a primary key that are followed by whole-row identity
    /// (every column compared), as "schema.table". Default: none (such tables are refused).
    #[serde(default)]
    pub whole_row_tables: Vec<Spanned<String>>,
    /// Copy the schema (tables, types, indexes...) with pg_dump. Default: true.
    #[serde(default = "yes")]
    pub copy_schema: bool,
    /// Prefix of every object cutover creates (publication, subscription, slot). Default: "cutover".
    #[serde(default = "default_name")]
    pub name: Spanned<String>,
    /// How long `db sync` waits for every table to be ready. Default: "6h".
    #[serde(default = "default_ready_timeout", with = "humantime_serde")]
    pub ready_timeout: Duration,
    /// How the initial copy is made: "parallel" (cutover copies from the replication slot's
    /// snapshot, large tables split in parts, keys built after) or "subscription" (the
    /// subscription's own copy, one worker per table). Default: "parallel".
    #[serde(default = "default_copy")]
    pub copy: Spanned<String>,
    /// Parts copied at once in "parallel" copy. Default: 4.
    #[serde(default = "default_copy_jobs")]
    pub copy_jobs: Spanned<i64>,
    /// What a follower does with an additive change to the source's schema (a new table,
    /// column, index or constraint): "apply" it to the target on its own, or "hold" it for
    /// `cutover db schema apply`. Default: "apply".
    #[serde(default = "default_schema_changes")]
    pub schema_changes: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    /// Rows per checksum chunk. Default: 10000.
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: Spanned<i64>,
    /// Chunks compared at once. Default: 2.
    #[serde(default = "default_parallel")]
    pub parallel: Spanned<i64>,
    /// How long a mismatching chunk may wait for replication to catch up before it is
    /// reported. Default: "30s".
    #[serde(default = "default_catch_up", with = "humantime_serde")]
    pub catch_up_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatus {
    /// Retained WAL on the source above which `db status` warns, in MiB. Default: 1024.
    #[serde(default = "default_retained_warn")]
    pub retained_wal_warn_mib: Spanned<i64>,
    /// How often `db status --watch` refreshes. Default: "2s".
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
}

pub(super) fn default_mode() -> Spanned<String> {
    spanned("native".into())
}
pub(super) fn default_name() -> Spanned<String> {
    spanned("cutover".into())
}
pub(super) fn default_copy() -> Spanned<String> {
    spanned("parallel".into())
}
pub(super) fn default_copy_jobs() -> Spanned<i64> {
    spanned(4)
}
pub(super) fn default_schema_changes() -> Spanned<String> {
    spanned("apply".into())
}
pub(super) fn yes() -> bool {
    true
}
pub(super) fn default_ready_timeout() -> Duration {
    Duration::from_secs(6 * 3600)
}
pub(super) fn default_chunk_rows() -> Spanned<i64> {
    spanned(10_000)
}
pub(super) fn default_parallel() -> Spanned<i64> {
    spanned(2)
}
pub(super) fn default_catch_up() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_retained_warn() -> Spanned<i64> {
    spanned(1024)
}
pub(super) fn default_refresh() -> Duration {
    Duration::from_secs(2)
}

impl Default for RawSync {
    fn default() -> Self {
        RawSync {
            mode: default_mode(),
            schemas: vec![],
            exclude_tables: vec![],
            whole_row_tables: vec![],
            copy_schema: true,
            name: default_name(),
            ready_timeout: default_ready_timeout(),
            copy: default_copy(),
            copy_jobs: default_copy_jobs(),
            schema_changes: default_schema_changes(),
        }
    }
}
impl Default for RawVerify {
    fn default() -> Self {
        RawVerify {
            chunk_rows: default_chunk_rows(),
            parallel: default_parallel(),
            catch_up_timeout: default_catch_up(),
        }
    }
}
impl Default for RawStatus {
    fn default() -> Self {
        RawStatus {
            retained_wal_warn_mib: default_retained_warn(),
            refresh: default_refresh(),
        }
    }
}

/// One end of the move.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Endpoint {
    pub url: ConnString,
    /// What the other server uses to reach this one for replication.
    pub replication_url: ConnString,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SyncSettings {
    pub mode: Mode,
    pub schemas: Vec<String>,
    /// (schema, table) pairs left behind.
    pub exclude_tables: Vec<(String, String)>,
    /// Trigger mode: keyless tables followed by whole-row identity.
    pub whole_row_tables: Vec<(String, String)>,
    pub copy_schema: bool,
    pub name: String,
    #[serde(with = "humantime_serde")]
    pub ready_timeout: Duration,
    pub copy: CopyMethod,
    pub copy_jobs: usize,
    /// Additive changes to the source's schema are applied to the target by the follower
    /// (`schema_changes = "apply"`); otherwise they wait for `cutover db schema apply`.
    pub apply_schema_changes: bool,
}

/// How the initial copy is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMethod {
    /// cutover copies from the slot's exported snapshot, in parallel parts, keys built after.
    Parallel,
    /// The subscription's own initial copy (`copy_data = true`).
    Subscription,
}

impl Default for SyncSettings {
    /// The settings of a plan that sets none.
    fn default() -> Self {
        SyncSettings {
            mode: Mode::Native,
            schemas: vec![],
            exclude_tables: vec![],
            whole_row_tables: vec![],
            copy_schema: true,
            name: "cutover".into(),
            ready_timeout: default_ready_timeout(),
            copy: CopyMethod::Parallel,
            copy_jobs: 4,
            apply_schema_changes: true,
        }
    }
}

impl SyncSettings {
    pub fn publication(&self) -> String {
        format!("{}_pub", self.name)
    }
    pub fn subscription(&self) -> String {
        format!("{}_sub", self.name)
    }
    pub fn slot(&self) -> String {
        format!("{}_slot", self.name)
    }
    /// The publication on the target that carries writes back to the source after a switchover.
    pub fn reverse_publication(&self) -> String {
        format!("{}_rev_pub", self.name)
    }
    /// The subscription on the source that follows the target after a switchover.
    pub fn reverse_subscription(&self) -> String {
        format!("{}_rev_sub", self.name)
    }
    /// The slot on the target that the reverse subscription reads.
    pub fn reverse_slot(&self) -> String {
        format!("{}_rev_slot", self.name)
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct VerifySettings {
    pub chunk_rows: u64,
    pub parallel: usize,
    #[serde(with = "humantime_serde")]
    pub catch_up_timeout: Duration,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct StatusSettings {
    pub retained_wal_warn_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
}

pub(super) fn sync_settings(c: &mut Collector<'_>, s: &RawSync) -> Option<SyncSettings> {
    let before = c.problems.len();
    let mode = match s.mode.get_ref().as_str() {
        "native" => Some(Mode::Native),
        "trigger" => Some(Mode::Trigger),
        other => {
            c.push(
                s.mode.span(),
                "sync.mode",
                format!("\"{other}\" is not a mode; use \"native\" or \"trigger\""),
            );
            None
        }
    };
    let name = s.name.get_ref().clone();
    if !is_identifier(&name) {
        c.push(
            s.name.span(),
            "sync.name",
            format!("\"{name}\" is not usable as an object name prefix; use lower-case letters, digits and _ (at most 40)"),
        );
    }
    let mut exclude = vec![];
    for t in &s.exclude_tables {
        match t.get_ref().split_once('.') {
            Some((s, n)) if !s.is_empty() && !n.is_empty() => {
                exclude.push((s.to_string(), n.to_string()))
            }
            _ => c.push(
                t.span(),
                "sync.exclude_tables",
                format!("\"{}\" must be written schema.table", t.get_ref()),
            ),
        }
    }
    let mut whole_row = vec![];
    for t in &s.whole_row_tables {
        match t.get_ref().split_once('.') {
            Some((s, n)) if !s.is_empty() && !n.is_empty() => {
                whole_row.push((s.to_string(), n.to_string()))
            }
            _ => c.push(
                t.span(),
                "sync.whole_row_tables",
                format!("\"{}\" must be written schema.table", t.get_ref()),
            ),
        }
    }
    let mut schemas = vec![];
    for s in &s.schemas {
        if s.get_ref().is_empty() {
            c.push(s.span(), "sync.schemas", "an empty schema name");
        } else {
            schemas.push(s.get_ref().clone());
        }
    }
    let copy = match s.copy.get_ref().as_str() {
        "parallel" => CopyMethod::Parallel,
        "subscription" => CopyMethod::Subscription,
        other => {
            c.push(
                s.copy.span(),
                "sync.copy",
                format!("\"{other}\" is not a copy method; use \"parallel\" or \"subscription\""),
            );
            CopyMethod::Parallel
        }
    };
    let copy_jobs = *s.copy_jobs.get_ref();
    if !(1..=64).contains(&copy_jobs) {
        c.push(
            s.copy_jobs.span(),
            "sync.copy_jobs",
            "must be between 1 and 64",
        );
    }
    let apply_schema_changes = match s.schema_changes.get_ref().as_str() {
        "apply" => true,
        "hold" => false,
        other => {
            c.push(
                s.schema_changes.span(),
                "sync.schema_changes",
                format!("\"{other}\" is not a choice; use \"apply\" or \"hold\""),
            );
            true
        }
    };
    if c.problems.len() > before {
        return None;
    }
    Some(SyncSettings {
        mode: mode?,
        schemas,
        exclude_tables: exclude,
        whole_row_tables: whole_row,
        copy_schema: s.copy_schema,
        name,
        ready_timeout: s.ready_timeout,
        copy,
        copy_jobs: copy_jobs.max(1) as usize,
        apply_schema_changes,
    })
}

pub(super) fn verify_settings(c: &mut Collector<'_>, v: &RawVerify) -> Option<VerifySettings> {
    let before = c.problems.len();
    let chunk_rows = *v.chunk_rows.get_ref();
    if chunk_rows < 1 {
        c.push(
            v.chunk_rows.span(),
            "verify.chunk_rows",
            "must be at least 1",
        );
    }
    let parallel = *v.parallel.get_ref();
    if !(1..=64).contains(&parallel) {
        c.push(
            v.parallel.span(),
            "verify.parallel",
            "must be between 1 and 64",
        );
    }
    if c.problems.len() > before {
        return None;
    }
    Some(VerifySettings {
        chunk_rows: chunk_rows as u64,
        parallel: parallel as usize,
        catch_up_timeout: v.catch_up_timeout,
    })
}

pub(super) fn status_settings(c: &mut Collector<'_>, st: &RawStatus) -> Option<StatusSettings> {
    let before = c.problems.len();
    let warn = *st.retained_wal_warn_mib.get_ref();
    if warn < 1 {
        c.push(
            st.retained_wal_warn_mib.span(),
            "status.retained_wal_warn_mib",
            "must be at least 1",
        );
    }
    if st.refresh < Duration::from_millis(100) {
        c.push(0..0, "status.refresh", "must be at least 100ms");
    }

    if c.problems.len() > before {
        return None;
    }
    Some(StatusSettings {
        retained_wal_warn_bytes: warn as u64 * 1024 * 1024,
        refresh: st.refresh,
    })
}
