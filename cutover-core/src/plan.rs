//! The plan file, `cutover.toml`: a checked contract.
//!
//! Reading it happens in two passes. serde reads the structure (`deny_unknown_fields`, so a
//! misspelt key is an error, not a silently ignored setting) and stops at the first
//! structural problem, with its line and column. Then [`RawPlan::validate`] checks every value
//! (URLs, `${ENV}` references, modes, names) and reports *all* problems at once, each with the
//! position of the value in the file, so a user fixes the file in one go.
//!
//! Secrets are written by reference: `url = "${SOURCE_DATABASE_URL}"`. A password written
//! inline in the file is refused.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::connstr::ConnString;

/// How changes are followed after the copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `CREATE PUBLICATION` / `CREATE SUBSCRIPTION`; the source needs `wal_level = logical`.
    Native,
    /// Row triggers and a change log on the source, for sources without logical replication.
    Trigger,
}

// ---------------------------------------------------------------------------------------
// The file as written.

/// The plan file as written. Every field has a default except the two URLs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    /// The database being moved away from.
    pub source: RawEndpoint,
    /// The database being moved to. Must be empty of the tables being moved.
    pub target: RawEndpoint,
    /// How the data is copied and followed.
    #[serde(default)]
    pub sync: RawSync,
    /// How `db verify` compares the two sides.
    #[serde(default)]
    pub verify: RawVerify,
    /// Thresholds used by `db status`.
    #[serde(default)]
    pub status: RawStatus,
    /// The PG proxy the applications connect through. Needed by `proxy`, `db switchover`
    /// and `db rollback`.
    #[serde(default)]
    pub proxy: Option<RawProxy>,
    /// Limits of `db switchover` and `db rollback`.
    #[serde(default)]
    pub switchover: RawSwitchover,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    /// Where applications connect. Default: "127.0.0.1:6432".
    #[serde(default = "default_listen")]
    pub listen: Spanned<String>,
    /// The admin API (HTTP/JSON); loopback only. Default: "127.0.0.1:6433".
    #[serde(default = "default_admin_listen")]
    pub admin_listen: Spanned<String>,
    /// Bearer token of the admin API, by reference: "${CUTOVER_ADMIN_TOKEN}".
    pub admin_token: Spanned<String>,
    /// Certificate chain (PEM) offered to clients that ask for TLS. With `tls_key`.
    #[serde(default)]
    pub tls_cert: Option<Spanned<String>>,
    /// Private key (PEM) of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<Spanned<String>>,
    /// The roles applications log in as. The proxy checks their password and logs in to
    /// the database with the same name and password.
    #[serde(default)]
    pub users: Vec<RawProxyUser>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyUser {
    pub name: Spanned<String>,
    /// By reference: "${APP_DATABASE_PASSWORD}". Required unless auth = "trust".
    #[serde(default)]
    pub password: Option<Spanned<String>>,
    /// How the proxy checks the client: "scram-sha-256", "md5" or "trust". Default: "scram-sha-256".
    #[serde(default = "default_auth")]
    pub auth: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSwitchover {
    /// Replication lag above which a switchover refuses to start, in MiB. Default: 16.
    #[serde(default = "default_max_lag")]
    pub max_lag_mib: Spanned<i64>,
    /// How long running transactions may take to finish once new ones are paused. Default: "30s".
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long the new primary may take to apply everything up to the fence. Default: "30s".
    #[serde(default = "default_catch_up", with = "humantime_serde")]
    pub catch_up_timeout: Duration,
}

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

fn spanned<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}
fn default_mode() -> Spanned<String> {
    spanned("native".into())
}
fn default_name() -> Spanned<String> {
    spanned("cutover".into())
}
fn default_copy() -> Spanned<String> {
    spanned("parallel".into())
}
fn default_copy_jobs() -> Spanned<i64> {
    spanned(4)
}
fn yes() -> bool {
    true
}
fn default_ready_timeout() -> Duration {
    Duration::from_secs(6 * 3600)
}
fn default_chunk_rows() -> Spanned<i64> {
    spanned(10_000)
}
fn default_parallel() -> Spanned<i64> {
    spanned(2)
}
fn default_catch_up() -> Duration {
    Duration::from_secs(30)
}
fn default_retained_warn() -> Spanned<i64> {
    spanned(1024)
}
fn default_refresh() -> Duration {
    Duration::from_secs(2)
}
fn default_listen() -> Spanned<String> {
    spanned("127.0.0.1:6432".into())
}
fn default_admin_listen() -> Spanned<String> {
    spanned("127.0.0.1:6433".into())
}
fn default_auth() -> Spanned<String> {
    spanned("scram-sha-256".into())
}
fn default_max_lag() -> Spanned<i64> {
    spanned(16)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for RawSwitchover {
    fn default() -> Self {
        RawSwitchover {
            max_lag_mib: default_max_lag(),
            drain_timeout: default_drain_timeout(),
            catch_up_timeout: default_catch_up(),
        }
    }
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

// ---------------------------------------------------------------------------------------
// The checked plan.

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

/// How clients prove who they are to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    ScramSha256,
    Md5,
    Trust,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ProxyUser {
    pub name: String,
    pub password: Option<crate::secret::Secret>,
    pub auth: ClientAuth,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ProxySettings {
    pub listen: std::net::SocketAddr,
    pub admin_listen: std::net::SocketAddr,
    pub admin_token: crate::secret::Secret,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub users: Vec<ProxyUser>,
}

impl ProxySettings {
    pub fn user(&self, name: &str) -> Option<&ProxyUser> {
        self.users.iter().find(|u| u.name == name)
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SwitchoverSettings {
    pub max_lag_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub catch_up_timeout: Duration,
}

/// A validated plan: everything in it has been checked.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    /// The file it was read from.
    pub path: PathBuf,
    pub source: Endpoint,
    pub target: Endpoint,
    pub sync: SyncSettings,
    pub verify: VerifySettings,
    pub status: StatusSettings,
    /// Absent when the plan has no [proxy] section.
    pub proxy: Option<ProxySettings>,
    pub switchover: SwitchoverSettings,
}

impl Plan {
    /// Where the proxy keeps its active backend, beside the plan: `cutover.proxy.json`.
    pub fn proxy_state_path(&self) -> PathBuf {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cutover".into());
        self.path.with_file_name(format!("{stem}.proxy.json"))
    }

    /// The [proxy] section, or an error saying how to add one.
    pub fn proxy(&self) -> Result<&ProxySettings, String> {
        self.proxy.as_ref().ok_or_else(|| {
            format!(
                "{} has no [proxy] section; add one with admin_token = \"${{CUTOVER_ADMIN_TOKEN}}\" and a [[proxy.users]] entry per application role (see `cutover init`)",
                self.path.display()
            )
        })
    }

    /// Where the journal of this plan lives: beside the plan file.
    pub fn journal_path(&self) -> PathBuf {
        journal_path_for(&self.path)
    }

    /// Every password this plan knows, for scrubbing text we did not write.
    pub fn secrets(&self) -> Vec<crate::secret::Secret> {
        [
            &self.source.url,
            &self.source.replication_url,
            &self.target.url,
            &self.target.replication_url,
        ]
        .iter()
        .filter_map(|c| c.password().cloned())
        .chain(self.proxy.iter().flat_map(|p| {
            std::iter::once(p.admin_token.clone())
                .chain(p.users.iter().filter_map(|u| u.password.clone()))
        }))
        .collect()
    }
}

/// `cutover.toml` → `cutover.journal.db`, in the same folder.
pub fn journal_path_for(plan: &Path) -> PathBuf {
    let stem = plan
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("cutover");
    plan.with_file_name(format!("{stem}.journal.db"))
}

// ---------------------------------------------------------------------------------------
// Errors.

/// One thing wrong with the plan file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

/// Everything wrong with the plan file.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read plan file {path}: {reason}; run `cutover init` to write one")]
    Read { path: String, reason: String },
    #[error("{}", render(.path, .problems))]
    Invalid {
        path: String,
        problems: Vec<Problem>,
    },
}

fn render(path: &str, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if p.line > 0 {
            out.push_str(&format!("{path}:{}:{}: ", p.line, p.column));
        } else {
            out.push_str(&format!("{path}: "));
        }
        if !p.field.is_empty() {
            out.push_str(&format!("{}: ", p.field));
        }
        out.push_str(&p.message);
    }
    out
}

impl PlanError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            PlanError::Invalid { problems, .. } => problems,
            PlanError::Read { .. } => &[],
        }
    }
}

/// Line and column (1-based) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, column)
}

struct Collector<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Collector<'_> {
    fn push(&mut self, span: std::ops::Range<usize>, field: &str, message: impl Into<String>) {
        let (line, column) = if span.start == 0 && span.end == 0 {
            (0, 0)
        } else {
            position(self.text, span.start)
        };
        self.problems.push(Problem {
            line,
            column,
            field: field.into(),
            message: message.into(),
        });
    }
}

// ---------------------------------------------------------------------------------------
// Reading.

/// Where `${NAME}` references are looked up. The process environment in real use; a map in tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Reads and checks a plan file.
pub fn load(path: &Path, env: &dyn Env) -> Result<Plan, PlanError> {
    let text = std::fs::read_to_string(path).map_err(|e| PlanError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse(&text, path, env)
}

/// Checks a plan file's text; `path` names it in messages.
pub fn parse(text: &str, path: &Path, env: &dyn Env) -> Result<Plan, PlanError> {
    let shown = path.display().to_string();
    let raw: RawPlan = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let (line, column) = e.span().map(|s| position(text, s.start)).unwrap_or((0, 0));
            let message = e.message().trim().replace('\n', " ");
            return Err(PlanError::Invalid {
                path: shown,
                problems: vec![Problem {
                    line,
                    column,
                    field: String::new(),
                    message,
                }],
            });
        }
    };
    raw.validate(text, path, env)
}

/// Replaces each `${NAME}` with the variable's value; names every missing one.
fn interpolate(value: &str, env: &dyn Env) -> Result<String, Vec<String>> {
    let mut out = String::new();
    let mut missing = vec![];
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                match env.var(name) {
                    Some(v) => out.push_str(&v),
                    None => missing.push(name.to_string()),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

/// True when the URL as written (before interpolation) carries a literal password.
fn has_inline_password(raw: &str) -> bool {
    match url::Url::parse(raw.trim()) {
        Ok(u) => match u.password() {
            Some(p) => {
                let decoded = p.replace("%7B", "{").replace("%7D", "}");
                !decoded.contains("${") && !p.is_empty()
            }
            None => false,
        },
        Err(_) => false,
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 40
}

impl RawPlan {
    fn url(
        c: &mut Collector<'_>,
        field: &str,
        value: &Spanned<String>,
        env: &dyn Env,
    ) -> Option<ConnString> {
        let span = value.span();
        let raw = value.get_ref();
        if has_inline_password(raw) {
            c.push(
                span,
                field,
                "holds a password inline; keep secrets out of the plan: put the URL in an \
                 environment variable and write url = \"${SOURCE_DATABASE_URL}\"",
            );
            return None;
        }
        let text = match interpolate(raw, env) {
            Ok(t) => t,
            Err(missing) => {
                for name in missing {
                    c.push(
                        span.clone(),
                        field,
                        format!("environment variable {name} is not set; export it before running cutover"),
                    );
                }
                return None;
            }
        };
        if text.trim().is_empty() {
            c.push(span, field, "is empty; set it to a postgres:// URL");
            return None;
        }
        match ConnString::parse(&text) {
            Ok(cs) => Some(cs),
            Err(e) => {
                c.push(span, field, e.to_string());
                None
            }
        }
    }

    /// Checks every value and reports every problem at once.
    pub fn validate(self, text: &str, path: &Path, env: &dyn Env) -> Result<Plan, PlanError> {
        let mut c = Collector {
            text,
            problems: vec![],
        };

        let source_url = Self::url(&mut c, "source.url", &self.source.url, env);
        let source_repl = match &self.source.replication_url {
            Some(u) => Self::url(&mut c, "source.replication_url", u, env),
            None => source_url.clone(),
        };
        let target_url = Self::url(&mut c, "target.url", &self.target.url, env);
        let target_repl = match &self.target.replication_url {
            Some(u) => Self::url(&mut c, "target.replication_url", u, env),
            None => target_url.clone(),
        };
        if let (Some(s), Some(t)) = (&source_url, &target_url) {
            if s.location() == t.location() {
                c.push(
                    self.target.url.span(),
                    "target.url",
                    format!("points at the same database as source.url ({}); the target must be another database", t.location()),
                );
            }
        }

        let mode = match self.sync.mode.get_ref().as_str() {
            "native" => Some(Mode::Native),
            "trigger" => Some(Mode::Trigger),
            other => {
                c.push(
                    self.sync.mode.span(),
                    "sync.mode",
                    format!("\"{other}\" is not a mode; use \"native\" or \"trigger\""),
                );
                None
            }
        };
        let name = self.sync.name.get_ref().clone();
        if !is_identifier(&name) {
            c.push(
                self.sync.name.span(),
                "sync.name",
                format!("\"{name}\" is not usable as an object name prefix; use lower-case letters, digits and _ (at most 40)"),
            );
        }
        let mut exclude = vec![];
        for t in &self.sync.exclude_tables {
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
        for t in &self.sync.whole_row_tables {
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
        for s in &self.sync.schemas {
            if s.get_ref().is_empty() {
                c.push(s.span(), "sync.schemas", "an empty schema name");
            } else {
                schemas.push(s.get_ref().clone());
            }
        }
        let copy = match self.sync.copy.get_ref().as_str() {
            "parallel" => CopyMethod::Parallel,
            "subscription" => CopyMethod::Subscription,
            other => {
                c.push(
                    self.sync.copy.span(),
                    "sync.copy",
                    format!(
                        "\"{other}\" is not a copy method; use \"parallel\" or \"subscription\""
                    ),
                );
                CopyMethod::Parallel
            }
        };
        let copy_jobs = *self.sync.copy_jobs.get_ref();
        if !(1..=64).contains(&copy_jobs) {
            c.push(
                self.sync.copy_jobs.span(),
                "sync.copy_jobs",
                "must be between 1 and 64",
            );
        }
        let chunk_rows = *self.verify.chunk_rows.get_ref();
        if chunk_rows < 1 {
            c.push(
                self.verify.chunk_rows.span(),
                "verify.chunk_rows",
                "must be at least 1",
            );
        }
        let parallel = *self.verify.parallel.get_ref();
        if !(1..=64).contains(&parallel) {
            c.push(
                self.verify.parallel.span(),
                "verify.parallel",
                "must be between 1 and 64",
            );
        }
        let warn = *self.status.retained_wal_warn_mib.get_ref();
        if warn < 1 {
            c.push(
                self.status.retained_wal_warn_mib.span(),
                "status.retained_wal_warn_mib",
                "must be at least 1",
            );
        }
        if self.status.refresh < Duration::from_millis(100) {
            c.push(0..0, "status.refresh", "must be at least 100ms");
        }

        let proxy = self
            .proxy
            .as_ref()
            .and_then(|p| Self::proxy(&mut c, p, env));
        let max_lag = *self.switchover.max_lag_mib.get_ref();
        if max_lag < 0 {
            c.push(
                self.switchover.max_lag_mib.span(),
                "switchover.max_lag_mib",
                "must be 0 or more",
            );
        }

        if !c.problems.is_empty() {
            return Err(PlanError::Invalid {
                path: path.display().to_string(),
                problems: c.problems,
            });
        }
        let (source_url, source_repl, target_url, target_repl, mode) =
            match (source_url, source_repl, target_url, target_repl, mode) {
                (Some(a), Some(b), Some(c), Some(d), Some(m)) => (a, b, c, d, m),
                _ => unreachable!("every None above pushed a problem"),
            };
        Ok(Plan {
            path: path.to_path_buf(),
            source: Endpoint {
                url: source_url,
                replication_url: source_repl,
            },
            target: Endpoint {
                url: target_url,
                replication_url: target_repl,
            },
            sync: SyncSettings {
                mode,
                schemas,
                exclude_tables: exclude,
                whole_row_tables: whole_row,
                copy_schema: self.sync.copy_schema,
                name,
                ready_timeout: self.sync.ready_timeout,
                copy,
                copy_jobs: copy_jobs.max(1) as usize,
            },
            verify: VerifySettings {
                chunk_rows: chunk_rows as u64,
                parallel: parallel as usize,
                catch_up_timeout: self.verify.catch_up_timeout,
            },
            status: StatusSettings {
                retained_wal_warn_bytes: warn as u64 * 1024 * 1024,
                refresh: self.status.refresh,
            },
            proxy,
            switchover: SwitchoverSettings {
                max_lag_bytes: max_lag.max(0) as u64 * 1024 * 1024,
                drain_timeout: self.switchover.drain_timeout,
                catch_up_timeout: self.switchover.catch_up_timeout,
            },
        })
    }

    /// A secret written by reference; an inline value is refused.
    fn secret(
        c: &mut Collector<'_>,
        field: &str,
        value: &Spanned<String>,
        env: &dyn Env,
    ) -> Option<crate::secret::Secret> {
        let raw = value.get_ref();
        if !raw.contains("${") {
            c.push(
                value.span(),
                field,
                "is written inline; keep secrets out of the plan: put it in an environment variable and write \"${NAME}\"",
            );
            return None;
        }
        match interpolate(raw, env) {
            Ok(v) if v.is_empty() => {
                c.push(
                    value.span(),
                    field,
                    "is empty; set the environment variable it names",
                );
                None
            }
            Ok(v) => Some(crate::secret::Secret::new(v)),
            Err(missing) => {
                for name in missing {
                    c.push(
                        value.span(),
                        field,
                        format!("environment variable {name} is not set; export it before running cutover"),
                    );
                }
                None
            }
        }
    }

    fn proxy(c: &mut Collector<'_>, p: &RawProxy, env: &dyn Env) -> Option<ProxySettings> {
        let before = c.problems.len();
        let addr =
            |c: &mut Collector<'_>, field: &str, v: &Spanned<String>| match v
                .get_ref()
                .parse::<std::net::SocketAddr>(
            ) {
                Ok(a) => Some(a),
                Err(_) => {
                    c.push(
                        v.span(),
                        field,
                        format!(
                            "\"{}\" is not an address; write it as \"127.0.0.1:6432\"",
                            v.get_ref()
                        ),
                    );
                    None
                }
            };
        let listen = addr(c, "proxy.listen", &p.listen);
        let admin_listen = addr(c, "proxy.admin_listen", &p.admin_listen);
        if let Some(a) = admin_listen {
            if !a.ip().is_loopback() {
                c.push(
                    p.admin_listen.span(),
                    "proxy.admin_listen",
                    "must be a loopback address (127.0.0.1 or ::1): the admin API can switch the database",
                );
            }
        }
        let admin_token = Self::secret(c, "proxy.admin_token", &p.admin_token, env);
        let path = |v: &Option<Spanned<String>>| v.as_ref().map(|s| PathBuf::from(s.get_ref()));
        if p.tls_cert.is_some() != p.tls_key.is_some() {
            let span = p
                .tls_cert
                .as_ref()
                .or(p.tls_key.as_ref())
                .map(|s| s.span())
                .unwrap_or(0..0);
            c.push(
                span,
                "proxy.tls_cert",
                "tls_cert and tls_key go together; set both or neither",
            );
        }
        if p.users.is_empty() {
            c.push(
                p.listen.span(),
                "proxy.users",
                "no [[proxy.users]]; add one per application role: name = \"app\", password = \"${APP_DATABASE_PASSWORD}\"",
            );
        }
        let mut users = vec![];
        for u in &p.users {
            let auth = match u.auth.get_ref().as_str() {
                "scram-sha-256" => ClientAuth::ScramSha256,
                "md5" => ClientAuth::Md5,
                "trust" => ClientAuth::Trust,
                other => {
                    c.push(
                        u.auth.span(),
                        "proxy.users.auth",
                        format!("\"{other}\" is not a method; use \"scram-sha-256\", \"md5\" or \"trust\""),
                    );
                    ClientAuth::ScramSha256
                }
            };
            let password = match &u.password {
                Some(pw) => Self::secret(c, "proxy.users.password", pw, env),
                None => {
                    if auth != ClientAuth::Trust {
                        c.push(
                            u.name.span(),
                            "proxy.users.password",
                            format!("user {} has no password; add password = \"${{NAME}}\" (the proxy also logs in to the database with it)", u.name.get_ref()),
                        );
                    }
                    None
                }
            };
            if users
                .iter()
                .any(|x: &ProxyUser| &x.name == u.name.get_ref())
            {
                c.push(
                    u.name.span(),
                    "proxy.users.name",
                    format!("user {} is listed twice", u.name.get_ref()),
                );
            }
            users.push(ProxyUser {
                name: u.name.get_ref().clone(),
                password,
                auth,
            });
        }
        if c.problems.len() > before {
            return None;
        }
        Some(ProxySettings {
            listen: listen?,
            admin_listen: admin_listen?,
            admin_token: admin_token?,
            tls_cert: path(&p.tls_cert),
            tls_key: path(&p.tls_key),
            users,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Writing.

/// The commented plan `cutover init` writes. `source_url` and `target_url` are written as
/// given: references like "${SOURCE_DATABASE_URL}" (or URLs without a password).
pub fn template(source_url: &str, target_url: &str) -> String {
    format!(
        r#"# cutover plan. Every setting but the two URLs has the default shown.
# Secrets are written by reference: "${{NAME}}" is read from the environment when cutover runs.

[source]
# The database being moved away from.
url = "{source_url}"
# URL the target server uses to reach the source for replication. Default: url.
# replication_url = "${{SOURCE_REPLICATION_URL}}"

[target]
# The database being moved to; it must not hold the tables being moved.
url = "{target_url}"

[sync]
# "native": logical replication (the source needs wal_level = logical).
# "trigger": row triggers and a change log, for sources without it (Heroku Postgres).
mode = "native"
# Schemas to move. Default: every schema except the system ones.
schemas = []
# Tables to leave behind, as "schema.table".
exclude_tables = []
# Trigger mode: tables without a primary key to follow by whole-row identity (every column
# compared; slower), as "schema.table". Other keyless tables are refused.
whole_row_tables = []
# Copy the schema (tables, types, indexes, constraints) with pg_dump.
copy_schema = true
# Prefix of every object cutover creates: <name>_pub, <name>_sub, <name>_slot.
name = "cutover"
# How long `cutover db sync` waits for every table to be ready.
ready_timeout = "6h"
# How the initial copy is made. "parallel": cutover copies from the replication slot's
# snapshot, large tables split in parts, primary keys built after the copy. "subscription":
# the subscription's own copy, one worker per table, keys built before it.
copy = "parallel"
# Parts copied at once with copy = "parallel".
copy_jobs = 4

[verify]
# Rows per checksum chunk.
chunk_rows = 10000
# Chunks compared at once.
parallel = 2
# How long a mismatching chunk may wait for replication to catch up before it is reported.
catch_up_timeout = "30s"

[status]
# Retained WAL on the source (held by the replication slot) above which `db status` warns, in MiB.
retained_wal_warn_mib = 1024
# How often `cutover db status --watch` refreshes.
refresh = "2s"

[switchover]
# Replication lag above which `cutover db switchover` refuses to start, in MiB.
max_lag_mib = 16
# How long running transactions may take to finish once new ones are paused.
drain_timeout = "30s"
# How long the new primary may take to apply everything up to the fence.
catch_up_timeout = "30s"

# The PG proxy applications connect through (`cutover proxy`); point DATABASE_URL at it.
# [proxy]
# listen = "127.0.0.1:6432"
# admin_listen = "127.0.0.1:6433"
# admin_token = "${{CUTOVER_ADMIN_TOKEN}}"
# tls_cert = "proxy.crt"
# tls_key = "proxy.key"
#
# [[proxy.users]]
# name = "app"
# password = "${{APP_DATABASE_PASSWORD}}"
# auth = "scram-sha-256"
"#
    )
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Native => "native",
            Mode::Trigger => "trigger",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert(
            "SRC".into(),
            "postgres://app:pw1@src.example:5432/app".into(),
        );
        m.insert(
            "DST".into(),
            "postgres://app:pw2@dst.example:5432/app".into(),
        );
        m
    }

    #[test]
    fn the_template_is_a_valid_plan_with_defaults() {
        let text = template("${SRC}", "${DST}");
        let plan = parse(&text, Path::new("cutover.toml"), &env()).unwrap();
        assert_eq!(plan.sync.mode, Mode::Native);
        assert_eq!(plan.sync.publication(), "cutover_pub");
        assert_eq!(plan.verify.chunk_rows, 10_000);
        assert_eq!(plan.status.refresh, Duration::from_secs(2));
        assert_eq!(plan.source.url.host, "src.example");
        assert_eq!(plan.source.replication_url, plan.source.url);
        let json = serde_json::to_string(&plan).unwrap();
        assert!(!json.contains("pw1") && !json.contains("pw2"), "{json}");
    }

    #[test]
    fn a_minimal_plan_takes_every_default() {
        let text = "[source]\nurl = \"${SRC}\"\n[target]\nurl = \"${DST}\"\n";
        let plan = parse(text, Path::new("p.toml"), &env()).unwrap();
        assert!(plan.sync.copy_schema);
        assert_eq!(plan.sync.ready_timeout, Duration::from_secs(6 * 3600));
        assert_eq!(plan.journal_path(), PathBuf::from("p.journal.db"));
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_position() {
        let text = "[source]\nurl = \"${NOPE}\"\n[target]\nurl = \"postgres://u:inline@h/d\"\n\
                    [sync]\nmode = \"magic\"\nname = \"Bad-Name\"\nexclude_tables = [\"nodot\"]\n\
                    [verify]\nparallel = 0\n";
        let err = parse(text, Path::new("cutover.toml"), &env()).unwrap_err();
        let p = err.problems();
        let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "source.url",
                "target.url",
                "sync.mode",
                "sync.name",
                "sync.exclude_tables",
                "verify.parallel"
            ]
        );
        assert_eq!((p[0].line, p[0].column), (2, 7));
        assert_eq!((p[2].line, p[2].column), (6, 8));
        let shown = err.to_string();
        assert!(
            shown.starts_with("cutover.toml:2:7: source.url: environment variable NOPE is not set"),
            "{shown}"
        );
        assert!(
            !shown.contains("inline@"),
            "the inline password must not be echoed: {shown}"
        );
        assert_eq!(shown.lines().count(), 6);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_position() {
        let text =
            "[source]\nurl = \"${SRC}\"\n[target]\nurl = \"${DST}\"\n[sync]\nmodee = \"native\"\n";
        let err = parse(text, Path::new("cutover.toml"), &env()).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with("cutover.toml:6:1: unknown field `modee`"),
            "{shown}"
        );
    }

    #[test]
    fn durations_are_typed() {
        let text = "[source]\nurl = \"${SRC}\"\n[target]\nurl = \"${DST}\"\n[sync]\nready_timeout = \"soon\"\n";
        let err = parse(text, Path::new("c.toml"), &env()).unwrap_err();
        assert!(err.to_string().starts_with("c.toml:6:17:"), "{err}");
    }

    #[test]
    fn same_database_on_both_sides_is_refused() {
        let text = "[source]\nurl = \"${SRC}\"\n[target]\nurl = \"${SRC}\"\n";
        let err = parse(text, Path::new("c.toml"), &env()).unwrap_err();
        assert!(
            err.to_string().contains("points at the same database"),
            "{err}"
        );
    }

    #[test]
    fn a_proxy_section_is_checked_whole() {
        let mut e = env();
        e.insert("TOKEN".into(), "s3cret-token".into());
        e.insert("APP_PW".into(), "app-pw".into());
        let good = "[source]\nurl = \"${SRC}\"\n[target]\nurl = \"${DST}\"\n\
                    [proxy]\nadmin_token = \"${TOKEN}\"\n[[proxy.users]]\nname = \"app\"\npassword = \"${APP_PW}\"\n";
        let plan = parse(good, Path::new("p.toml"), &e).unwrap();
        let p = plan.proxy().unwrap();
        assert_eq!(p.listen.port(), 6432);
        assert_eq!(p.user("app").unwrap().auth, ClientAuth::ScramSha256);
        assert_eq!(plan.proxy_state_path(), Path::new("p.proxy.json"));
        let json = serde_json::to_string(&plan).unwrap();
        assert!(
            !json.contains("s3cret-token") && !json.contains("app-pw"),
            "{json}"
        );
        assert!(plan.secrets().iter().any(|s| s.expose() == "s3cret-token"));

        let bad = "[source]\nurl = \"${SRC}\"\n[target]\nurl = \"${DST}\"\n\
                   [proxy]\nadmin_listen = \"0.0.0.0:6433\"\nadmin_token = \"inline\"\n\
                   [[proxy.users]]\nname = \"app\"\nauth = \"kerberos\"\n";
        let err = parse(bad, Path::new("p.toml"), &e).unwrap_err();
        let text = err.to_string();
        for want in ["loopback", "inline", "kerberos", "no password"] {
            assert!(text.contains(want), "{want}: {text}");
        }
        let none = parse(
            "[source]\nurl = \"${SRC}\"\n[target]\nurl = \"${DST}\"\n",
            Path::new("p.toml"),
            &e,
        )
        .unwrap();
        assert!(none.proxy().unwrap_err().contains("no [proxy] section"));
    }
}
