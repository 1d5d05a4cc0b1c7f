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

mod database;
mod dns;
mod error;
mod migration;
mod proxy;
mod template;
#[cfg(test)]
mod tests;
mod traffic;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use database::*;
pub use dns::*;
pub use error::{PlanError, Problem};
pub use migration::*;
pub use proxy::*;
pub use template::template;
pub use traffic::*;

use error::{position, Collector};
use values::*;

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
    /// The whole move as `cutover plan` and `cutover apply` run it.
    #[serde(default)]
    pub migration: RawMigration,
    /// How the new app is judged before users reach it (`cutover apply`'s new-app phase).
    #[serde(default)]
    pub new_app: Option<RawNewApp>,
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
    /// Absent when the plan has no `[proxy]` section.
    pub proxy: Option<ProxySettings>,
    pub switchover: SwitchoverSettings,
    /// Absent when the plan has no `[dns]` section.
    pub dns: Option<DnsSettings>,
    /// Absent when the plan has no `[traffic]` section.
    pub traffic: Option<TrafficSettings>,
    pub migration: MigrationSettings,
    /// Absent when the plan has no `[new_app]` section.
    pub new_app: Option<NewAppSettings>,
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

    /// The control database of the proxies (see [`Control`]), as the proxies and a switch
    /// connect to it; None for a single proxy with its state on local disk.
    pub fn proxy_control(&self) -> Option<crate::ConnString> {
        let mut url = match &self.proxy.as_ref()?.control {
            Control::Target => self.target.url.clone(),
            Control::Url(u) => u.clone(),
            Control::None => return None,
        };
        url.application_name = Some(CONTROL_APPLICATION_NAME.into());
        Some(url)
    }

    /// The `[proxy]` section, or an error saying how to add one.
    pub fn proxy(&self) -> Result<&ProxySettings, String> {
        self.proxy.as_ref().ok_or_else(|| {
            format!(
                "{} has no [proxy] section; add one with admin_token = \"${{CUTOVER_ADMIN_TOKEN}}\" and a [[proxy.users]] entry per application role (see `cutover init`)",
                self.path.display()
            )
        })
    }

    /// The `[dns]` section, or an error saying how to add one.
    pub fn dns(&self) -> Result<&DnsSettings, String> {
        self.dns.as_ref().ok_or_else(|| {
            format!(
                "{} has no [dns] section; add one with provider, zone, name, old and new (see the README's traffic section)",
                self.path.display()
            )
        })
    }

    /// The `[traffic]` section, or an error saying how to add one.
    pub fn traffic(&self) -> Result<&TrafficSettings, String> {
        self.traffic.as_ref().ok_or_else(|| {
            format!(
                "{} has no [traffic] section; add one with admin_token = \"${{CUTOVER_TRAFFIC_TOKEN}}\", [traffic.old] url and [traffic.new] url (see the README's traffic section)",
                self.path.display()
            )
        })
    }

    /// The new app's own address: new_app.url, else traffic.new.url.
    pub fn new_app_url(&self) -> Option<&str> {
        self.new_app
            .as_ref()
            .and_then(|n| n.url.as_deref())
            .or(self.traffic.as_ref().map(|t| t.new.url.as_str()))
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

impl RawPlan {
    /// Checks every value and reports every problem at once.
    pub fn validate(self, text: &str, path: &Path, env: &dyn Env) -> Result<Plan, PlanError> {
        let mut c = Collector {
            text,
            problems: vec![],
        };

        let source_url = url(&mut c, "source.url", &self.source.url, env);
        let source_repl = match &self.source.replication_url {
            Some(u) => url(&mut c, "source.replication_url", u, env),
            None => source_url.clone(),
        };
        let target_url = url(&mut c, "target.url", &self.target.url, env);
        let target_repl = match &self.target.replication_url {
            Some(u) => url(&mut c, "target.replication_url", u, env),
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

        let sync = sync_settings(&mut c, &self.sync);
        let verify = verify_settings(&mut c, &self.verify);
        let status = status_settings(&mut c, &self.status);
        let proxy = self
            .proxy
            .as_ref()
            .and_then(|p| proxy_settings(&mut c, p, env));
        let dns = self.dns.as_ref().and_then(|d| dns_settings(&mut c, d, env));
        let traffic = self
            .traffic
            .as_ref()
            .and_then(|t| traffic_settings(&mut c, t, env));
        let switchover = switchover_settings(&mut c, &self.switchover);
        let migration = migration_settings(&mut c, &self.migration, path);
        let new_app = self
            .new_app
            .as_ref()
            .and_then(|n| new_app_settings(&mut c, n, env));
        if let Some(n) = &new_app {
            if n.url.is_none() && self.traffic.is_none() {
                c.push(
                    0..0,
                    "new_app.url",
                    "is needed when the plan has no [traffic] section; write the new app's address, like \"https://shop-alb-123.eu-west-1.elb.amazonaws.com\"",
                );
            }
        }

        if !c.problems.is_empty() {
            return Err(PlanError::Invalid {
                path: path.display().to_string(),
                problems: c.problems,
            });
        }
        match (
            source_url,
            source_repl,
            target_url,
            target_repl,
            sync,
            verify,
            status,
            switchover,
            migration,
        ) {
            (
                Some(s),
                Some(sr),
                Some(t),
                Some(tr),
                Some(sync),
                Some(verify),
                Some(status),
                Some(switchover),
                Some(migration),
            ) => Ok(Plan {
                path: path.to_path_buf(),
                source: Endpoint {
                    url: s,
                    replication_url: sr,
                },
                target: Endpoint {
                    url: t,
                    replication_url: tr,
                },
                sync,
                verify,
                status,
                proxy,
                switchover,
                dns,
                traffic,
                migration,
                new_app,
            }),
            _ => unreachable!("every None above pushed a problem"),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Native => "native",
            Mode::Trigger => "trigger",
        })
    }
}
