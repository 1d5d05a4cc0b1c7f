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
    /// The DNS record that moves users (`cutover dns ...`).
    #[serde(default)]
    pub dns: Option<RawDns>,
    /// The HTTP splitter and the canary (`cutover traffic ...`).
    #[serde(default)]
    pub traffic: Option<RawTraffic>,
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
    /// Absent when the plan has no [dns] section.
    pub dns: Option<DnsSettings>,
    /// Absent when the plan has no [traffic] section.
    pub traffic: Option<TrafficSettings>,
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

    /// The [dns] section, or an error saying how to add one.
    pub fn dns(&self) -> Result<&DnsSettings, String> {
        self.dns.as_ref().ok_or_else(|| {
            format!(
                "{} has no [dns] section; add one with provider, zone, name, old and new (see the README's traffic section)",
                self.path.display()
            )
        })
    }

    /// The [traffic] section, or an error saying how to add one.
    pub fn traffic(&self) -> Result<&TrafficSettings, String> {
        self.traffic.as_ref().ok_or_else(|| {
            format!(
                "{} has no [traffic] section; add one with admin_token = \"${{CUTOVER_TRAFFIC_TOKEN}}\", [traffic.old] url and [traffic.new] url (see the README's traffic section)",
                self.path.display()
            )
        })
    }

    /// Where the splitter keeps its weight, beside the plan: `cutover.traffic.json`.
    pub fn traffic_state_path(&self) -> PathBuf {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cutover".into());
        self.path.with_file_name(format!("{stem}.traffic.json"))
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
        .chain(self.dns.iter().flat_map(DnsSettings::secrets))
        .chain(self.traffic.iter().map(|t| t.admin_token.clone()))
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
            // A value of the wrong type ("invalid type: integer `5`, expected a string") is
            // reported by position only; the key tells a person which setting to fix.
            let field = e
                .span()
                .and_then(|s| key_at(text, s.start))
                .unwrap_or_default();
            return Err(PlanError::Invalid {
                path: shown,
                problems: vec![Problem {
                    line,
                    column,
                    field,
                    message,
                }],
            });
        }
    };
    raw.validate(text, path, env)
}

/// The dotted key of the `key = value` line whose value holds `offset`, with its table:
/// `traffic.requests_query` for `requests_query = 5` under `[traffic]`. None when `offset`
/// is not in a value on its key's line (an unknown key, a multi-line array's later lines).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let (key, _) = text.get(start..offset)?.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with(['#', '[']) {
        return None;
    }
    let table = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .and_then(|l| l.trim_start_matches('[').split(']').next())
        .map(str::trim)
        .unwrap_or_default();
    Some(if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    })
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
        let dns = self.dns.as_ref().and_then(|d| dns_settings(&mut c, d, env));
        let traffic = self
            .traffic
            .as_ref()
            .and_then(|t| traffic_settings(&mut c, t, env));
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
            dns,
            traffic,
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
// [dns] and [traffic]: moving the users.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// Who serves the zone: "rfc2136", "route53" or "cloudflare". No default.
    pub provider: Spanned<String>,
    /// The zone, e.g. "example.com". No default.
    pub zone: Spanned<String>,
    /// The name users resolve, e.g. "www.example.com" (the zone itself for the apex). No default.
    pub name: Spanned<String>,
    /// "A", "AAAA" or "CNAME". Default: "A".
    #[serde(default = "default_record_type")]
    pub record_type: Spanned<String>,
    /// What the name answers for the old app: addresses, or one host name for a CNAME.
    pub old: Vec<Spanned<String>>,
    /// What it answers for the new app, likewise.
    pub new: Vec<Spanned<String>>,
    /// The TTL `cutover dns lower-ttl` sets ahead of the move. Default: "60s".
    #[serde(default = "default_low_ttl", with = "humantime_serde")]
    pub low_ttl: Duration,
    /// Authoritative servers `cutover dns verify` asks, as "ip:port". Default: rfc2136.server.
    #[serde(default)]
    pub authoritative: Vec<Spanned<String>>,
    /// Recursive resolvers `cutover dns verify` asks too, as "ip:port". Default: none.
    #[serde(default)]
    pub resolvers: Vec<Spanned<String>>,
    /// With provider = "rfc2136".
    #[serde(default)]
    pub rfc2136: Option<RawRfc2136>,
    /// With provider = "route53".
    #[serde(default)]
    pub route53: Option<RawRoute53>,
    /// With provider = "cloudflare".
    #[serde(default)]
    pub cloudflare: Option<RawCloudflare>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRfc2136 {
    /// The primary server that accepts updates, "ip:port". No default.
    pub server: Spanned<String>,
    /// The TSIG key's name as the server knows it. No default.
    pub key_name: Spanned<String>,
    /// "hmac-sha256", "hmac-sha384" or "hmac-sha512". Default: "hmac-sha256".
    #[serde(default = "default_tsig_algorithm")]
    pub algorithm: Spanned<String>,
    /// The key (base64), by reference: "${CUTOVER_TSIG_SECRET}".
    pub secret: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute53 {
    /// The hosted zone's id, e.g. "Z0123456789ABC". No default.
    pub hosted_zone_id: Spanned<String>,
    /// By reference: "${AWS_ACCESS_KEY_ID}".
    pub access_key_id: Spanned<String>,
    /// By reference: "${AWS_SECRET_ACCESS_KEY}".
    pub secret_access_key: Spanned<String>,
    /// By reference, for temporary credentials: "${AWS_SESSION_TOKEN}". Default: none.
    #[serde(default)]
    pub session_token: Option<Spanned<String>>,
    /// Default: "us-east-1" (Route 53 is global; this only signs requests).
    #[serde(default = "default_region")]
    pub region: Spanned<String>,
    /// Another API address (a test double, a partition's endpoint). Default: AWS's own.
    #[serde(default)]
    pub endpoint: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCloudflare {
    /// The zone's id (Overview page of the zone). No default.
    pub zone_id: Spanned<String>,
    /// An API token with DNS edit (and Load Balancing edit) rights, by reference:
    /// "${CLOUDFLARE_API_TOKEN}".
    pub api_token: Spanned<String>,
    /// With Load Balancing: the load balancer whose pool weights carry the split. Default:
    /// none (DNS records only: a one-step switch, no weights).
    #[serde(default)]
    pub load_balancer_id: Option<Spanned<String>>,
    /// The pool of the old app (with load_balancer_id).
    #[serde(default)]
    pub old_pool: Option<Spanned<String>>,
    /// The pool of the new app (with load_balancer_id).
    #[serde(default)]
    pub new_pool: Option<Spanned<String>>,
    /// Another API address (a test double). Default: "https://api.cloudflare.com/client/v4".
    #[serde(default)]
    pub endpoint: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTraffic {
    /// Where the splitter takes client requests; "${PORT}" works. Default: "0.0.0.0:8080".
    #[serde(default = "default_traffic_listen")]
    pub listen: Spanned<String>,
    /// Admin API and Prometheus `/metrics`; loopback only. Default: "127.0.0.1:8081".
    #[serde(default = "default_traffic_admin")]
    pub admin_listen: Spanned<String>,
    /// Bearer token of the admin API, by reference: "${CUTOVER_TRAFFIC_TOKEN}".
    pub admin_token: Spanned<String>,
    /// The old app. No default.
    pub old: RawOrigin,
    /// The new app. No default.
    pub new: RawOrigin,
    /// What the canary moves: "splitter" (its weights) or "dns" (the [dns] provider's
    /// weighted records). Default: "splitter".
    #[serde(default = "default_weights_via")]
    pub weights_via: Spanned<String>,
    /// Cookie that keeps a user on one side. Default: "cutover_origin".
    #[serde(default = "default_sticky_cookie")]
    pub sticky_cookie: Spanned<String>,
    /// Path of the active health check (GET, 2xx/3xx = healthy). Default: "/".
    #[serde(default = "default_health_path")]
    pub health_path: Spanned<String>,
    /// Time between health checks. Default: "2s".
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub health_interval: Duration,
    /// Failed checks in a row before an origin is marked down. Default: 2.
    #[serde(default = "default_two")]
    pub unhealthy_after: Spanned<i64>,
    /// Passed checks in a row before it is marked up again. Default: 2.
    #[serde(default = "default_two")]
    pub healthy_after: Spanned<i64>,
    /// How long requests in flight may take to finish at shutdown. Default: "30s".
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long a client connection may wait for its next request, or take to send one,
    /// before the splitter closes it: idle keep-alive connections and clients that
    /// vanished without closing do not pile up. Default: "75s" (nginx's keepalive_timeout).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Other attempts after a connection failure (idempotent requests, or any request that
    /// was provably not sent). Default: 2.
    #[serde(default = "default_two")]
    pub retries: Spanned<i64>,
    /// Canary weights of the new app, in percent. Default: [1, 5, 10, 25, 50, 100].
    #[serde(default = "default_steps")]
    pub steps: Vec<Spanned<i64>>,
    /// How long each step is watched before the next. Default: "5m".
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How often the gates are checked within a step. Default: "30s".
    #[serde(default = "default_check_every", with = "humantime_serde")]
    pub check_every: Duration,
    /// Lowest success rate (non-5xx, in percent) of the new app that passes. Default: 99.
    #[serde(default = "default_success_rate")]
    pub min_success_rate: Spanned<f64>,
    /// Highest p99 latency of the new app that passes. Default: "1s".
    #[serde(default = "default_max_p99", with = "humantime_serde")]
    pub max_p99: Duration,
    /// Failed checks in a row that roll back to 0%. Default: 1.
    #[serde(default = "default_one")]
    pub failure_threshold: Spanned<i64>,
    /// Fewer requests than this in a check is "no data", which fails the check. Default: 10.
    #[serde(default = "default_min_requests")]
    pub min_requests: Spanned<i64>,
    /// Where the gates read: "splitter" (its own metrics) or "prometheus". Default: "splitter".
    #[serde(default = "default_gate_source")]
    pub metrics: Spanned<String>,
    /// With metrics = "prometheus": the server's address, e.g. "http://127.0.0.1:9090".
    #[serde(default)]
    pub prometheus_url: Option<Spanned<String>>,
    /// With metrics = "prometheus": a query giving the new app's success rate in percent.
    #[serde(default)]
    pub success_rate_query: Option<Spanned<String>>,
    /// With metrics = "prometheus": a query giving the new app's p99 latency in seconds.
    #[serde(default)]
    pub p99_query: Option<Spanned<String>>,
    /// With metrics = "prometheus": a query giving the number of requests that reached the
    /// new app in a check's window, e.g. `sum(increase(...[30s]))`. With it, a check that
    /// counts fewer than min_requests is "no data"; without it, Prometheus gives the canary
    /// no count and min_requests does not apply. Default: none.
    #[serde(default)]
    pub requests_query: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOrigin {
    /// "http://host:port" or "https://host:port"; "${VAR}" works. No default.
    pub url: Spanned<String>,
    /// Host header sent to this origin. Default: the client's own.
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    /// TLS server name sent to this origin. Default: the URL's host.
    #[serde(default)]
    pub sni: Option<Spanned<String>>,
    /// Extra CA certificates (PEM) trusted for this origin. Default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
}

fn default_record_type() -> Spanned<String> {
    spanned("A".into())
}
fn default_low_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_tsig_algorithm() -> Spanned<String> {
    spanned("hmac-sha256".into())
}
fn default_region() -> Spanned<String> {
    spanned("us-east-1".into())
}
fn default_traffic_listen() -> Spanned<String> {
    spanned("0.0.0.0:8080".into())
}
fn default_traffic_admin() -> Spanned<String> {
    spanned("127.0.0.1:8081".into())
}
fn default_weights_via() -> Spanned<String> {
    spanned("splitter".into())
}
fn default_sticky_cookie() -> Spanned<String> {
    spanned("cutover_origin".into())
}
fn default_health_path() -> Spanned<String> {
    spanned("/".into())
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(75)
}

fn default_health_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_two() -> Spanned<i64> {
    spanned(2)
}
fn default_one() -> Spanned<i64> {
    spanned(1)
}
fn default_steps() -> Vec<Spanned<i64>> {
    [1, 5, 10, 25, 50, 100].into_iter().map(spanned).collect()
}
fn default_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_check_every() -> Duration {
    Duration::from_secs(30)
}
fn default_success_rate() -> Spanned<f64> {
    spanned(99.0)
}
fn default_max_p99() -> Duration {
    Duration::from_secs(1)
}
fn default_min_requests() -> Spanned<i64> {
    spanned(10)
}
fn default_gate_source() -> Spanned<String> {
    spanned("splitter".into())
}

/// The type of the record that moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RecordKind {
    A,
    #[serde(rename = "AAAA")]
    Aaaa,
    #[serde(rename = "CNAME")]
    Cname,
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordKind::A => "A",
            RecordKind::Aaaa => "AAAA",
            RecordKind::Cname => "CNAME",
        })
    }
}

/// Who serves the zone, with what it needs.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
pub enum DnsProviderSettings {
    Rfc2136 {
        server: std::net::SocketAddr,
        key_name: String,
        algorithm: String,
        secret: crate::secret::Secret,
    },
    Route53 {
        hosted_zone_id: String,
        access_key_id: crate::secret::Secret,
        secret_access_key: crate::secret::Secret,
        session_token: Option<crate::secret::Secret>,
        region: String,
        endpoint: Option<String>,
    },
    Cloudflare {
        zone_id: String,
        api_token: crate::secret::Secret,
        /// (load balancer id, old pool, new pool) when the split goes through pool weights.
        load_balancer: Option<(String, String, String)>,
        endpoint: Option<String>,
    },
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DnsSettings {
    /// Lower-case, no trailing dot.
    pub zone: String,
    /// Lower-case, no trailing dot.
    pub name: String,
    pub record_type: RecordKind,
    pub old: Vec<String>,
    pub new: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub low_ttl: Duration,
    pub authoritative: Vec<std::net::SocketAddr>,
    pub resolvers: Vec<std::net::SocketAddr>,
    pub provider: DnsProviderSettings,
}

impl DnsSettings {
    /// True when the name is the zone itself.
    pub fn is_apex(&self) -> bool {
        self.name == self.zone
    }

    fn secrets(&self) -> Vec<crate::secret::Secret> {
        match &self.provider {
            DnsProviderSettings::Rfc2136 { secret, .. } => vec![secret.clone()],
            DnsProviderSettings::Route53 {
                access_key_id,
                secret_access_key,
                session_token,
                ..
            } => [access_key_id, secret_access_key]
                .into_iter()
                .cloned()
                .chain(session_token.clone())
                .collect(),
            DnsProviderSettings::Cloudflare { api_token, .. } => vec![api_token.clone()],
        }
    }
}

/// One side of the split.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OriginSettings {
    /// "http(s)://host:port", without a path.
    pub url: String,
    pub host: Option<String>,
    pub sni: Option<String>,
    pub ca_file: Option<PathBuf>,
}

/// What the canary moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightsVia {
    Splitter,
    Dns,
}

/// Where the canary's gates read.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum GateSource {
    Splitter,
    Prometheus {
        url: String,
        success_rate_query: String,
        p99_query: String,
        /// None: no request count, so `min_requests` does not apply.
        requests_query: Option<String>,
    },
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TrafficSettings {
    pub listen: std::net::SocketAddr,
    pub admin_listen: std::net::SocketAddr,
    pub admin_token: crate::secret::Secret,
    pub old: OriginSettings,
    pub new: OriginSettings,
    pub weights_via: WeightsVia,
    pub sticky_cookie: String,
    pub health_path: String,
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    pub retries: u32,
    pub steps: Vec<u8>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub check_every: Duration,
    pub min_success_rate: f64,
    #[serde(with = "humantime_serde")]
    pub max_p99: Duration,
    pub failure_threshold: u32,
    pub min_requests: u64,
    pub metrics: GateSource,
}

/// A DNS name as written: lower-case, no trailing dot, labels of letters, digits, - and _.
fn dns_name(c: &mut Collector<'_>, field: &str, v: &Spanned<String>) -> Option<String> {
    let name = v
        .get_ref()
        .trim()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        });
    if ok {
        Some(name)
    } else {
        c.push(
            v.span(),
            field,
            format!(
                "\"{}\" is not a DNS name; write it like \"www.example.com\"",
                v.get_ref()
            ),
        );
        None
    }
}

fn socket_addr(
    c: &mut Collector<'_>,
    field: &str,
    v: &Spanned<String>,
    env: &dyn Env,
) -> Option<std::net::SocketAddr> {
    let text = match interpolate(v.get_ref(), env) {
        Ok(t) => t,
        Err(missing) => {
            for name in missing {
                c.push(
                    v.span(),
                    field,
                    format!(
                        "environment variable {name} is not set; export it before running cutover"
                    ),
                );
            }
            return None;
        }
    };
    match text.parse::<std::net::SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            c.push(
                v.span(),
                field,
                format!("\"{text}\" is not an address; write it as \"127.0.0.1:8080\""),
            );
            None
        }
    }
}

fn plain(v: &Option<Spanned<String>>) -> Option<String> {
    v.as_ref().map(|s| s.get_ref().clone())
}

fn dns_settings(c: &mut Collector<'_>, d: &RawDns, env: &dyn Env) -> Option<DnsSettings> {
    let before = c.problems.len();
    let zone = dns_name(c, "dns.zone", &d.zone);
    let name = dns_name(c, "dns.name", &d.name);
    if let (Some(z), Some(n)) = (&zone, &name) {
        if n != z && !n.ends_with(&format!(".{z}")) {
            c.push(
                d.name.span(),
                "dns.name",
                format!("{n} is not in the zone {z}; set dns.zone to the zone that holds it"),
            );
        }
    }
    let kind = match d.record_type.get_ref().to_ascii_uppercase().as_str() {
        "A" => Some(RecordKind::A),
        "AAAA" => Some(RecordKind::Aaaa),
        "CNAME" => Some(RecordKind::Cname),
        other => {
            c.push(
                d.record_type.span(),
                "dns.record_type",
                format!("\"{other}\" is not supported; use \"A\", \"AAAA\" or \"CNAME\""),
            );
            None
        }
    };
    let answers = |c: &mut Collector<'_>, field: &str, list: &[Spanned<String>]| {
        let mut out = vec![];
        if list.is_empty() {
            c.push(
                d.name.span(),
                field,
                "is empty; list what the name answers (addresses, or one host name for CNAME)",
            );
        }
        for v in list {
            let text = v.get_ref().trim().trim_end_matches('.').to_string();
            let ok = match kind {
                Some(RecordKind::A) => text.parse::<std::net::Ipv4Addr>().is_ok(),
                Some(RecordKind::Aaaa) => text.parse::<std::net::Ipv6Addr>().is_ok(),
                Some(RecordKind::Cname) => dns_name(c, field, v).is_some() && list.len() == 1,
                None => true,
            };
            if !ok {
                c.push(
                    v.span(),
                    field,
                    format!(
                        "\"{}\" does not fit record_type {}; write addresses for A/AAAA, one host name for CNAME",
                        v.get_ref(),
                        kind.map(|k| k.to_string()).unwrap_or_default()
                    ),
                );
            }
            out.push(text.to_ascii_lowercase());
        }
        out
    };
    let old = answers(c, "dns.old", &d.old);
    let new = answers(c, "dns.new", &d.new);
    if kind == Some(RecordKind::Cname) && zone.is_some() && zone == name {
        c.push(
            d.record_type.span(),
            "dns.record_type",
            "a zone apex cannot be a CNAME; use A/AAAA records, or the splitter (`cutover traffic serve`) in front of the old app",
        );
    }
    if d.low_ttl < Duration::from_secs(1) || d.low_ttl > Duration::from_secs(86400) {
        c.push(
            0..0,
            "dns.low_ttl",
            "must be between 1s and 1d; 60s is usual",
        );
    }
    let authoritative: Vec<_> = d
        .authoritative
        .iter()
        .filter_map(|a| socket_addr(c, "dns.authoritative", a, env))
        .collect();
    let resolvers: Vec<_> = d
        .resolvers
        .iter()
        .filter_map(|a| socket_addr(c, "dns.resolvers", a, env))
        .collect();
    let sections = [
        ("rfc2136", d.rfc2136.is_some()),
        ("route53", d.route53.is_some()),
        ("cloudflare", d.cloudflare.is_some()),
    ];
    let chosen = d.provider.get_ref().as_str();
    for (name, present) in sections {
        if present && name != chosen {
            c.push(
                d.provider.span(),
                &format!("dns.{name}"),
                format!("[dns.{name}] is set but provider is \"{chosen}\"; remove one of them"),
            );
        }
    }
    let missing = |c: &mut Collector<'_>, section: &str| {
        c.push(
            d.provider.span(),
            "dns.provider",
            format!("provider \"{section}\" needs a [dns.{section}] section"),
        );
    };
    let provider = match chosen {
        "rfc2136" => match &d.rfc2136 {
            None => {
                missing(c, "rfc2136");
                None
            }
            Some(r) => {
                let server = socket_addr(c, "dns.rfc2136.server", &r.server, env);
                let algorithm = r.algorithm.get_ref().to_ascii_lowercase();
                if !["hmac-sha256", "hmac-sha384", "hmac-sha512"].contains(&algorithm.as_str()) {
                    c.push(
                        r.algorithm.span(),
                        "dns.rfc2136.algorithm",
                        format!("\"{algorithm}\" is not supported; use \"hmac-sha256\", \"hmac-sha384\" or \"hmac-sha512\""),
                    );
                }
                let secret = RawPlan::secret(c, "dns.rfc2136.secret", &r.secret, env);
                let key_name = r.key_name.get_ref().trim_end_matches('.').to_string();
                if key_name.is_empty() {
                    c.push(
                        r.key_name.span(),
                        "dns.rfc2136.key_name",
                        "is empty; write the key's name as the server knows it",
                    );
                }
                Some(DnsProviderSettings::Rfc2136 {
                    server: server?,
                    key_name,
                    algorithm,
                    secret: secret?,
                })
            }
        },
        "route53" => match &d.route53 {
            None => {
                missing(c, "route53");
                None
            }
            Some(r) => {
                let id = r
                    .hosted_zone_id
                    .get_ref()
                    .trim_start_matches("/hostedzone/");
                if id.is_empty() || !id.chars().all(|ch| ch.is_ascii_alphanumeric()) {
                    c.push(
                        r.hosted_zone_id.span(),
                        "dns.route53.hosted_zone_id",
                        "is not a hosted zone id; copy it from the Route 53 console (like \"Z0123456789ABC\")",
                    );
                }
                let key = RawPlan::secret(c, "dns.route53.access_key_id", &r.access_key_id, env);
                let secret = RawPlan::secret(
                    c,
                    "dns.route53.secret_access_key",
                    &r.secret_access_key,
                    env,
                );
                let token = r
                    .session_token
                    .as_ref()
                    .map(|t| RawPlan::secret(c, "dns.route53.session_token", t, env));
                Some(DnsProviderSettings::Route53 {
                    hosted_zone_id: id.to_string(),
                    access_key_id: key?,
                    secret_access_key: secret?,
                    session_token: match token {
                        Some(t) => Some(t?),
                        None => None,
                    },
                    region: r.region.get_ref().clone(),
                    endpoint: url_setting(c, "dns.route53.endpoint", &r.endpoint, env),
                })
            }
        },
        "cloudflare" => match &d.cloudflare {
            None => {
                missing(c, "cloudflare");
                None
            }
            Some(r) => {
                let token = RawPlan::secret(c, "dns.cloudflare.api_token", &r.api_token, env);
                let lb = match (&r.load_balancer_id, &r.old_pool, &r.new_pool) {
                    (None, None, None) => None,
                    (Some(lb), Some(o), Some(n)) => Some((
                        lb.get_ref().clone(),
                        o.get_ref().clone(),
                        n.get_ref().clone(),
                    )),
                    _ => {
                        c.push(
                            r.zone_id.span(),
                            "dns.cloudflare.load_balancer_id",
                            "load_balancer_id, old_pool and new_pool go together; set all three or none",
                        );
                        None
                    }
                };
                Some(DnsProviderSettings::Cloudflare {
                    zone_id: r.zone_id.get_ref().clone(),
                    api_token: token?,
                    load_balancer: lb,
                    endpoint: url_setting(c, "dns.cloudflare.endpoint", &r.endpoint, env),
                })
            }
        },
        other => {
            c.push(
                d.provider.span(),
                "dns.provider",
                format!(
                    "\"{other}\" is not a provider; use \"rfc2136\", \"route53\" or \"cloudflare\""
                ),
            );
            None
        }
    };
    if c.problems.len() > before {
        return None;
    }
    let mut authoritative = authoritative;
    if authoritative.is_empty() {
        if let Some(DnsProviderSettings::Rfc2136 { server, .. }) = &provider {
            authoritative.push(*server);
        }
    }
    Some(DnsSettings {
        zone: zone?,
        name: name?,
        record_type: kind?,
        old,
        new,
        low_ttl: d.low_ttl,
        authoritative,
        resolvers,
        provider: provider?,
    })
}

/// An http(s) URL without a path, "${VAR}" allowed (not a secret).
fn url_setting(
    c: &mut Collector<'_>,
    field: &str,
    v: &Option<Spanned<String>>,
    env: &dyn Env,
) -> Option<String> {
    let v = v.as_ref()?;
    let text = match interpolate(v.get_ref(), env) {
        Ok(t) => t,
        Err(missing) => {
            for name in missing {
                c.push(
                    v.span(),
                    field,
                    format!(
                        "environment variable {name} is not set; export it before running cutover"
                    ),
                );
            }
            return None;
        }
    };
    match url::Url::parse(&text) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some() => {
            if u.password().is_some() {
                c.push(
                    v.span(),
                    field,
                    "holds a password; give credentials in their own settings, by reference",
                );
                return None;
            }
            Some(text.trim_end_matches('/').to_string())
        }
        _ => {
            c.push(
                v.span(),
                field,
                format!("\"{text}\" is not an http(s) URL; write it like \"https://host:443\""),
            );
            None
        }
    }
}

fn origin_settings(
    c: &mut Collector<'_>,
    field: &str,
    o: &RawOrigin,
    env: &dyn Env,
) -> Option<OriginSettings> {
    let url = url_setting(c, &format!("{field}.url"), &Some(o.url.clone()), env)?;
    let parsed = url::Url::parse(&url).ok()?;
    if parsed.path() != "/" || parsed.query().is_some() {
        c.push(
            o.url.span(),
            &format!("{field}.url"),
            "must not have a path or query; write only \"scheme://host:port\"",
        );
        return None;
    }
    Some(OriginSettings {
        url,
        host: plain(&o.host),
        sni: plain(&o.sni),
        ca_file: o.ca_file.as_ref().map(|s| PathBuf::from(s.get_ref())),
    })
}

fn traffic_settings(
    c: &mut Collector<'_>,
    t: &RawTraffic,
    env: &dyn Env,
) -> Option<TrafficSettings> {
    let before = c.problems.len();
    let listen = socket_addr(c, "traffic.listen", &t.listen, env);
    let admin_listen = socket_addr(c, "traffic.admin_listen", &t.admin_listen, env);
    if let Some(a) = admin_listen {
        if !a.ip().is_loopback() {
            c.push(
                t.admin_listen.span(),
                "traffic.admin_listen",
                "must be a loopback address (127.0.0.1 or ::1): the admin API moves users",
            );
        }
    }
    let admin_token = RawPlan::secret(c, "traffic.admin_token", &t.admin_token, env);
    let old = origin_settings(c, "traffic.old", &t.old, env);
    let new = origin_settings(c, "traffic.new", &t.new, env);
    let weights_via = match t.weights_via.get_ref().as_str() {
        "splitter" => WeightsVia::Splitter,
        "dns" => WeightsVia::Dns,
        other => {
            c.push(
                t.weights_via.span(),
                "traffic.weights_via",
                format!("\"{other}\" is not a choice; use \"splitter\" or \"dns\""),
            );
            WeightsVia::Splitter
        }
    };
    let cookie = t.sticky_cookie.get_ref().clone();
    if cookie.is_empty()
        || !cookie
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
    {
        c.push(
            t.sticky_cookie.span(),
            "traffic.sticky_cookie",
            "use letters, digits, _ and - only",
        );
    }
    if !t.health_path.get_ref().starts_with('/') {
        c.push(
            t.health_path.span(),
            "traffic.health_path",
            "must start with /",
        );
    }
    let count = |c: &mut Collector<'_>, field: &str, v: &Spanned<i64>, min: i64, max: i64| {
        let n = *v.get_ref();
        if !(min..=max).contains(&n) {
            c.push(v.span(), field, format!("must be between {min} and {max}"));
        }
        n.clamp(min, max)
    };
    let unhealthy_after = count(c, "traffic.unhealthy_after", &t.unhealthy_after, 1, 100) as u32;
    let healthy_after = count(c, "traffic.healthy_after", &t.healthy_after, 1, 100) as u32;
    let retries = count(c, "traffic.retries", &t.retries, 0, 10) as u32;
    let failure_threshold = count(
        c,
        "traffic.failure_threshold",
        &t.failure_threshold,
        1,
        1000,
    ) as u32;
    let min_requests = count(c, "traffic.min_requests", &t.min_requests, 1, i64::MAX) as u64;
    let mut steps = vec![];
    for s in &t.steps {
        let n = *s.get_ref();
        if !(1..=100).contains(&n) || steps.last().is_some_and(|&l: &u8| l as i64 >= n) {
            c.push(
                s.span(),
                "traffic.steps",
                "steps are percentages from 1 to 100 in increasing order, like [1, 5, 10, 25, 50, 100]",
            );
        }
        steps.push(n.clamp(0, 100) as u8);
    }
    if steps.last() != Some(&100) {
        c.push(
            0..0,
            "traffic.steps",
            "the last step must be 100 (everyone on the new app)",
        );
    }
    let rate = *t.min_success_rate.get_ref();
    if !(0.0..=100.0).contains(&rate) {
        c.push(
            t.min_success_rate.span(),
            "traffic.min_success_rate",
            "is a percentage between 0 and 100",
        );
    }
    for (field, d) in [
        ("traffic.health_interval", t.health_interval),
        ("traffic.idle_timeout", t.idle_timeout),
        ("traffic.interval", t.interval),
        ("traffic.check_every", t.check_every),
    ] {
        if d < Duration::from_millis(100) {
            c.push(0..0, field, "must be at least 100ms");
        }
    }
    if t.check_every > t.interval {
        c.push(
            0..0,
            "traffic.check_every",
            "must not be longer than traffic.interval",
        );
    }
    let metrics = match t.metrics.get_ref().as_str() {
        "splitter" => Some(GateSource::Splitter),
        "prometheus" => {
            let url = url_setting(c, "traffic.prometheus_url", &t.prometheus_url, env);
            let q = |c: &mut Collector<'_>, field: &str, v: &Option<Spanned<String>>| {
                let v = plain(v);
                if v.as_deref().is_none_or(str::is_empty) {
                    c.push(
                        t.metrics.span(),
                        field,
                        "is needed with metrics = \"prometheus\"; write a PromQL query giving one number",
                    );
                }
                v
            };
            let success = q(c, "traffic.success_rate_query", &t.success_rate_query);
            let p99 = q(c, "traffic.p99_query", &t.p99_query);
            // Optional, but when written it must be a query: an empty one would be a count
            // nobody meant to skip.
            let requests = t.requests_query.as_ref().and_then(|v| {
                if v.get_ref().trim().is_empty() {
                    c.push(
                        v.span(),
                        "traffic.requests_query",
                        "is empty; write a PromQL query giving the new app's request count in a check's window, like 'sum(increase(http_requests_total{app=\"new\"}[30s]))', or remove the line",
                    );
                    None
                } else {
                    Some(v.get_ref().clone())
                }
            });
            if url.is_none() && t.prometheus_url.is_none() {
                c.push(
                    t.metrics.span(),
                    "traffic.prometheus_url",
                    "is needed with metrics = \"prometheus\"; write it like \"http://127.0.0.1:9090\"",
                );
            }
            match (url, success, p99) {
                (Some(url), Some(s), Some(p)) => Some(GateSource::Prometheus {
                    url,
                    success_rate_query: s,
                    p99_query: p,
                    requests_query: requests,
                }),
                _ => None,
            }
        }
        other => {
            c.push(
                t.metrics.span(),
                "traffic.metrics",
                format!("\"{other}\" is not a source; use \"splitter\" or \"prometheus\""),
            );
            None
        }
    };
    if c.problems.len() > before {
        return None;
    }
    Some(TrafficSettings {
        listen: listen?,
        admin_listen: admin_listen?,
        admin_token: admin_token?,
        old: old?,
        new: new?,
        weights_via,
        sticky_cookie: cookie,
        health_path: t.health_path.get_ref().clone(),
        health_interval: t.health_interval,
        unhealthy_after,
        healthy_after,
        drain_timeout: t.drain_timeout,
        idle_timeout: t.idle_timeout,
        retries,
        steps,
        interval: t.interval,
        check_every: t.check_every,
        min_success_rate: rate,
        max_p99: t.max_p99,
        failure_threshold,
        min_requests,
        metrics: metrics?,
    })
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
        assert!(
            err.to_string()
                .starts_with("c.toml:6:17: sync.ready_timeout: "),
            "{err}"
        );
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

    #[test]
    fn dns_and_traffic_sections_are_checked_and_hide_their_secrets() {
        let mut e = env();
        e.insert("TSIG".into(), "dHNpZy1zZWNyZXQ=".into());
        e.insert("TT".into(), "traffic-token-1".into());
        e.insert("PORT".into(), "5000".into());
        let text = "[source]\nurl = \"${SRC}\"\n[target]\nurl = \"${DST}\"\n\
                    [dns]\nprovider = \"rfc2136\"\nzone = \"Example.com.\"\nname = \"www.example.com\"\n\
                    old = [\"192.0.2.1\"]\nnew = [\"192.0.2.2\"]\n\
                    [dns.rfc2136]\nserver = \"127.0.0.1:53\"\nkey_name = \"k\"\nsecret = \"${TSIG}\"\n\
                    [traffic]\nlisten = \"0.0.0.0:${PORT}\"\nadmin_token = \"${TT}\"\n\
                    [traffic.old]\nurl = \"http://127.0.0.1:5001\"\n[traffic.new]\nurl = \"https://new.example.com\"\n";
        let plan = parse(text, Path::new("p.toml"), &e).unwrap();
        let dns = plan.dns().unwrap();
        assert_eq!(
            (dns.zone.as_str(), dns.low_ttl),
            ("example.com", Duration::from_secs(60))
        );
        assert_eq!(dns.authoritative, ["127.0.0.1:53".parse().unwrap()]);
        let t = plan.traffic().unwrap();
        assert_eq!(t.listen.port(), 5000);
        assert_eq!(t.steps, [1, 5, 10, 25, 50, 100]);
        assert_eq!(t.idle_timeout, Duration::from_secs(75));
        assert_eq!(plan.traffic_state_path(), Path::new("p.traffic.json"));
        let err = parse(
            &text.replace("[traffic.old]", "idle_timeout = \"10ms\"\n[traffic.old]"),
            Path::new("p.toml"),
            &e,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("traffic.idle_timeout: must be at least 100ms"),
            "{err}"
        );
        let json = serde_json::to_string(&plan).unwrap();
        assert!(
            !json.contains("dHNpZy1zZWNyZXQ=") && !json.contains("traffic-token-1"),
            "{json}"
        );
        let secrets = plan.secrets();
        assert!(secrets.iter().any(|s| s.expose() == "traffic-token-1"));
        assert!(secrets.iter().any(|s| s.expose() == "dHNpZy1zZWNyZXQ="));
        let none = parse(
            "[source]\nurl = \"${SRC}\"\n[target]\nurl = \"${DST}\"\n",
            Path::new("p.toml"),
            &e,
        )
        .unwrap();
        assert!(none.dns().unwrap_err().contains("no [dns] section"));
        assert!(none.traffic().unwrap_err().contains("no [traffic] section"));
    }

    #[test]
    fn prometheus_gates_take_an_optional_requests_query() {
        let mut e = env();
        e.insert("TT".into(), "traffic-token-1".into());
        let plan = |extra: &str| {
            format!(
                "[source]\nurl = \"${{SRC}}\"\n[target]\nurl = \"${{DST}}\"\n\
                 [traffic]\nadmin_token = \"${{TT}}\"\nmetrics = \"prometheus\"\n\
                 prometheus_url = \"http://127.0.0.1:9090\"\nsuccess_rate_query = \"100\"\n\
                 p99_query = \"0.1\"\n{extra}\
                 [traffic.old]\nurl = \"http://127.0.0.1:5001\"\n[traffic.new]\nurl = \"http://127.0.0.1:5002\"\n"
            )
        };
        let requests = |text: &str| match &parse(text, Path::new("p.toml"), &e)
            .unwrap()
            .traffic()
            .unwrap()
            .metrics
        {
            GateSource::Prometheus { requests_query, .. } => requests_query.clone(),
            GateSource::Splitter => panic!("prometheus expected"),
        };
        assert_eq!(requests(&plan("")), None);
        assert_eq!(
            requests(&plan("requests_query = 'sum(increase(x[30s]))'\n")),
            Some("sum(increase(x[30s]))".to_string())
        );
        // Written but empty: one line naming the key, where it is and what to write.
        let err = parse(&plan("requests_query = \" \"\n"), Path::new("p.toml"), &e).unwrap_err();
        let shown = err.to_string();
        assert_eq!(shown.lines().count(), 1, "{shown}");
        assert!(
            shown.starts_with("p.toml:11:18: traffic.requests_query: is empty; write a PromQL query giving the new app's request count in a check's window, like "),
            "{shown}"
        );
        // Not a string: the parser names the key and what it expected.
        let err = parse(&plan("requests_query = 5\n"), Path::new("p.toml"), &e).unwrap_err();
        let shown = err.to_string();
        assert_eq!(shown.lines().count(), 1, "{shown}");
        assert_eq!(
            shown,
            "p.toml:11:18: traffic.requests_query: invalid type: integer `5`, expected a string"
        );
    }
}
