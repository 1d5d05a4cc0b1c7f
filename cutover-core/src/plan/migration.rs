//! [migration] and [new_app]: the whole move as `cutover plan` and `cutover apply` run it.
//!
//! `[migration]` says in which order the database and the users move, when the move counts as
//! done (the traffic still reaching the old origin), how long the rollback window lasts and
//! what the decommission checklist names. `[new_app]` says how the new app is judged before
//! any user reaches it: its health, synthetic requests with the answers they must get, and
//! read-only requests sent to both apps whose answers must agree.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::error::Collector;
use super::values::*;
use super::Env;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMigration {
    /// "database-first" (switch the database, then move the users) or "traffic-first".
    /// Default: "database-first".
    #[serde(default = "default_order")]
    pub order: Spanned<String>,
    /// The rollback window after the move, while the old database follows the new one.
    /// Default: "7d".
    #[serde(default = "default_hold", with = "humantime_serde")]
    pub hold: Duration,
    /// Requests per second at the old origin under which the move counts as done. Default: 0.5.
    #[serde(default = "default_done_threshold")]
    pub done_threshold: Spanned<f64>,
    /// How long the old origin's traffic must stay under `done_threshold`. Default: "10m".
    #[serde(default = "default_done_window", with = "humantime_serde")]
    pub done_window: Duration,
    /// How long `apply` waits for every application session to come through the proxy.
    /// Default: "15m".
    #[serde(default = "default_wait", with = "humantime_serde")]
    pub proxy_wait: Duration,
    /// How long `apply` waits for the new app to answer its health check. Default: "15m".
    #[serde(default = "default_wait", with = "humantime_serde")]
    pub new_app_wait: Duration,
    /// The Heroku app being moved away from, named in the decommission checklist. Default: none.
    #[serde(default)]
    pub heroku_app: Option<Spanned<String>>,
    /// Where `finish` writes the decommission checklist. Default: "decommission.md" beside
    /// the plan.
    #[serde(default)]
    pub checklist: Option<Spanned<String>>,
}

fn default_order() -> Spanned<String> {
    spanned("database-first".into())
}
fn default_hold() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_done_threshold() -> Spanned<f64> {
    spanned(0.5)
}
fn default_done_window() -> Duration {
    Duration::from_secs(600)
}
fn default_wait() -> Duration {
    Duration::from_secs(900)
}

impl Default for RawMigration {
    fn default() -> Self {
        RawMigration {
            order: default_order(),
            hold: default_hold(),
            done_threshold: default_done_threshold(),
            done_window: default_done_window(),
            proxy_wait: default_wait(),
            new_app_wait: default_wait(),
            heroku_app: None,
            checklist: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNewApp {
    /// The new app's own address (the ALB, or the Vercel deployment URL). Default:
    /// traffic.new.url.
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    /// Path that answers 2xx when the new app is healthy. Default: traffic.health_path, or "/".
    #[serde(default)]
    pub health_path: Option<Spanned<String>>,
    /// Requests the new app must answer as written before any user reaches it.
    #[serde(default)]
    pub checks: Vec<RawCheck>,
    /// Read-only requests sent to both apps, whose answers must agree.
    #[serde(default)]
    pub shadow: Option<RawShadow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    /// A name for the check in reports. Default: "METHOD path".
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// Default: "GET".
    #[serde(default = "default_method")]
    pub method: Spanned<String>,
    /// Path and query, starting with "/".
    pub path: Spanned<String>,
    /// Request body, sent as JSON (`Content-Type: application/json`). Default: none.
    #[serde(default)]
    pub body: Option<Spanned<String>>,
    /// The status the answer must have. Default: 200.
    #[serde(default = "default_status")]
    pub status: Spanned<i64>,
    /// Fields the JSON answer must hold, by dotted path ("order.id", "items.0.sku"), with
    /// their value; "*" means present with any value. Default: none.
    #[serde(default)]
    pub json: BTreeMap<String, toml::Value>,
}

fn default_method() -> Spanned<String> {
    spanned("GET".into())
}
fn default_status() -> Spanned<i64> {
    spanned(200)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    /// Paths (with query) sent as GET to both apps. No default.
    pub paths: Vec<Spanned<String>>,
    /// Response headers compared besides the status. Default: ["content-type"].
    #[serde(default = "default_headers")]
    pub headers: Vec<Spanned<String>>,
    /// JSON fields left out of the comparison, by name at any depth or by dotted path
    /// ("served_by", "meta.generated_at"). Default: none.
    #[serde(default)]
    pub ignore: Vec<Spanned<String>>,
    /// How many times each path is sent. Default: 3.
    #[serde(default = "default_samples")]
    pub samples: Spanned<i64>,
}

fn default_headers() -> Vec<Spanned<String>> {
    vec![spanned("content-type".into())]
}
fn default_samples() -> Spanned<i64> {
    spanned(3)
}

/// Which moves first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// The database switches first (every app already reaches it through the proxy, so users
    /// see a pause at most), then users move: the canary judges the new app on the database
    /// it keeps, and watches the reverse replication that makes a rollback lossless.
    DatabaseFirst,
    /// Users move first (the new app reaches the old database through the proxy), then the
    /// database.
    TrafficFirst,
}

impl Order {
    pub fn as_str(self) -> &'static str {
        match self {
            Order::DatabaseFirst => "database-first",
            Order::TrafficFirst => "traffic-first",
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct MigrationSettings {
    pub order: Order,
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    pub done_threshold: f64,
    #[serde(with = "humantime_serde")]
    pub done_window: Duration,
    #[serde(with = "humantime_serde")]
    pub proxy_wait: Duration,
    #[serde(with = "humantime_serde")]
    pub new_app_wait: Duration,
    pub heroku_app: Option<String>,
    /// Absolute or relative to the plan's folder.
    pub checklist: PathBuf,
}

/// One synthetic request and the answer it must get.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckSettings {
    pub name: String,
    pub method: String,
    pub path: String,
    pub body: Option<String>,
    pub status: u16,
    /// Dotted path → expected value ("*": present).
    pub json: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ShadowSettings {
    pub paths: Vec<String>,
    /// Lower-case header names.
    pub headers: Vec<String>,
    pub ignore: Vec<String>,
    pub samples: u32,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct NewAppSettings {
    /// None: traffic.new.url (the plan has no `[traffic]` either when both are missing).
    pub url: Option<String>,
    pub health_path: Option<String>,
    pub checks: Vec<CheckSettings>,
    pub shadow: Option<ShadowSettings>,
}

pub(super) fn migration_settings(
    c: &mut Collector<'_>,
    m: &RawMigration,
    plan_path: &std::path::Path,
) -> Option<MigrationSettings> {
    let before = c.problems.len();
    let order = match m.order.get_ref().as_str() {
        "database-first" => Order::DatabaseFirst,
        "traffic-first" => Order::TrafficFirst,
        other => {
            c.push(
                m.order.span(),
                "migration.order",
                format!("\"{other}\" is not an order; use \"database-first\" or \"traffic-first\""),
            );
            Order::DatabaseFirst
        }
    };
    let threshold = *m.done_threshold.get_ref();
    if !(threshold >= 0.0 && threshold.is_finite()) {
        c.push(
            m.done_threshold.span(),
            "migration.done_threshold",
            "is requests per second at the old origin; write 0 or more, like 0.5",
        );
    }
    for (field, d) in [
        ("migration.done_window", m.done_window),
        ("migration.proxy_wait", m.proxy_wait),
        ("migration.new_app_wait", m.new_app_wait),
    ] {
        if d < Duration::from_millis(100) {
            c.push(0..0, field, "must be at least 100ms");
        }
    }
    let heroku_app = match &m.heroku_app {
        Some(a) => {
            let name = a.get_ref().trim().to_string();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
            {
                c.push(
                    a.span(),
                    "migration.heroku_app",
                    "is not a Heroku app name; use lower-case letters, digits and -",
                );
            }
            Some(name)
        }
        None => None,
    };
    let folder = plan_path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let checklist = match &m.checklist {
        Some(p) if p.get_ref().trim().is_empty() => {
            c.push(p.span(), "migration.checklist", "is empty; name a file");
            PathBuf::new()
        }
        Some(p) => folder.join(p.get_ref()),
        None => folder.join("decommission.md"),
    };
    if c.problems.len() > before {
        return None;
    }
    Some(MigrationSettings {
        order,
        hold: m.hold,
        done_threshold: threshold,
        done_window: m.done_window,
        proxy_wait: m.proxy_wait,
        new_app_wait: m.new_app_wait,
        heroku_app,
        checklist,
    })
}

pub(super) fn new_app_settings(
    c: &mut Collector<'_>,
    n: &RawNewApp,
    env: &dyn Env,
) -> Option<NewAppSettings> {
    let before = c.problems.len();
    let url = url_setting(c, "new_app.url", &n.url, env);
    let path_ok = |c: &mut Collector<'_>, field: &str, v: &Spanned<String>| {
        if !v.get_ref().starts_with('/') {
            c.push(
                v.span(),
                field,
                format!("\"{}\" must start with /", v.get_ref()),
            );
        }
        v.get_ref().clone()
    };
    let health_path = n
        .health_path
        .as_ref()
        .map(|p| path_ok(c, "new_app.health_path", p));
    let mut checks = vec![];
    for k in &n.checks {
        let method = k.method.get_ref().to_ascii_uppercase();
        if !matches!(
            method.as_str(),
            "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS"
        ) {
            c.push(
                k.method.span(),
                "new_app.checks.method",
                format!("\"{method}\" is not an HTTP method; use GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS"),
            );
        }
        let path = path_ok(c, "new_app.checks.path", &k.path);
        let status = *k.status.get_ref();
        if !(100..=599).contains(&status) {
            c.push(
                k.status.span(),
                "new_app.checks.status",
                "is an HTTP status between 100 and 599",
            );
        }
        if let Some(b) = &k.body {
            if serde_json::from_str::<serde_json::Value>(b.get_ref()).is_err() {
                c.push(
                    b.span(),
                    "new_app.checks.body",
                    "is not JSON; write the request body as JSON text, like '{\"sku\": \"A-1\"}'",
                );
            }
        }
        let mut json = BTreeMap::new();
        for (field, v) in &k.json {
            match serde_json::to_value(v) {
                Ok(v) => {
                    json.insert(field.clone(), v);
                }
                Err(e) => c.push(
                    k.path.span(),
                    "new_app.checks.json",
                    format!("{field}: {e}"),
                ),
            }
        }
        checks.push(CheckSettings {
            name: k
                .name
                .as_ref()
                .map(|n| n.get_ref().clone())
                .unwrap_or_else(|| format!("{method} {path}")),
            method,
            path,
            body: k.body.as_ref().map(|b| b.get_ref().clone()),
            status: status.clamp(100, 599) as u16,
            json,
        });
    }
    let shadow = n.shadow.as_ref().map(|s| {
        if s.paths.is_empty() {
            c.push(
                0..0,
                "new_app.shadow.paths",
                "is empty; list read-only paths to send to both apps, like [\"/orders?limit=10\"]",
            );
        }
        let paths = s
            .paths
            .iter()
            .map(|p| path_ok(c, "new_app.shadow.paths", p))
            .collect();
        let samples = *s.samples.get_ref();
        if !(1..=1000).contains(&samples) {
            c.push(
                s.samples.span(),
                "new_app.shadow.samples",
                "must be between 1 and 1000",
            );
        }
        ShadowSettings {
            paths,
            headers: s
                .headers
                .iter()
                .map(|h| h.get_ref().to_ascii_lowercase())
                .collect(),
            ignore: s.ignore.iter().map(|i| i.get_ref().clone()).collect(),
            samples: samples.clamp(1, 1000) as u32,
        }
    });
    if c.problems.len() > before {
        return None;
    }
    Some(NewAppSettings {
        url,
        health_path,
        checks,
        shadow,
    })
}
