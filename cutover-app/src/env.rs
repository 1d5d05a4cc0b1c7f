//! Environment parity: every config var sorted into what the new platform must do with it.
//!
//! Copying every variable as a secret (or every one as plain text) is the mistake this module
//! exists to avoid. Four classes, each with the reason shown to the user:
//!
//! - **platform**: set by Heroku itself (`PORT`, `DYNO`, `HEROKU_*` dyno metadata). Dropped,
//!   or mapped to what the target sets (`PORT` is the container port).
//! - **add-on**: owned by an add-on (`DATABASE_URL` of heroku-postgresql, `REDIS_URL`, ...).
//!   Heroku rotates these at will, and after the move they must point at the replacement, so
//!   they are never copied: the export holds a placeholder and the to-do list names it.
//! - **secret**: a credential, by its name (`*_KEY`, `*_TOKEN`, `*PASSWORD*`, ...), by
//!   `generator: "secret"` in app.json, by a URL holding a password, or by a value that looks
//!   generated. Exported to Secrets Manager / SSM SecureString / Vercel "sensitive".
//! - **plain**: the rest, exported as plain environment, where it stays reviewable.
//!
//! The buildpack also sets variables at runtime that no config shows (`WEB_CONCURRENCY`,
//! `RAILS_ENV`, ...); without them the app runs differently, so they are listed with the
//! value to set. A value's text is held as a [`Secret`] so that no `Debug` or `Display` of
//! this module's types can print it.

use std::collections::BTreeMap;

use cutover_core::Secret;
use serde::Serialize;

use crate::appjson::AppJson;
use crate::config::{AddonInfo, Vars};
use crate::language::{Detected, Language};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Platform,
    Addon,
    Secret,
    Plain,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Platform => "platform",
            Class::Addon => "add-on",
            Class::Secret => "secret",
            Class::Plain => "plain",
        }
    }

    /// Whether a value of this class may be printed.
    pub fn printable(self) -> bool {
        matches!(self, Class::Plain | Class::Platform)
    }
}

/// One config var and what becomes of it.
#[derive(Debug, Clone, Serialize)]
pub struct EnvVar {
    pub name: String,
    pub class: Class,
    /// Why it is in its class.
    pub reason: String,
    /// What the export does with it.
    pub action: String,
    /// The add-on that owns it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addon: Option<String>,
    /// Problems with the value itself (stray quotes, whitespace), never quoting it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub value: Secret,
}

/// A variable the buildpack sets at runtime, which the target must set explicitly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildpackVar {
    pub name: String,
    /// The value to set; None when one must be generated (`SECRET_KEY_BASE`).
    pub value: Option<String>,
    pub reason: String,
}

/// The sorted environment.
#[derive(Debug, Clone, Serialize)]
pub struct EnvReport {
    pub vars: Vec<EnvVar>,
    pub buildpack: Vec<BuildpackVar>,
}

impl EnvReport {
    pub fn of(&self, class: Class) -> impl Iterator<Item = &EnvVar> {
        self.vars.iter().filter(move |v| v.class == class)
    }

    /// Every value that must never be printed.
    pub fn secrets(&self) -> Vec<Secret> {
        self.vars
            .iter()
            .filter(|v| !v.class.printable())
            .map(|v| v.value.clone())
            .collect()
    }
}

/// Heroku-set variables that are not add-on owned.
const PLATFORM: &[(&str, &str)] = &[
    ("PORT", "set by the router for each dyno"),
    ("DYNO", "the dyno's name, set by Heroku"),
    ("DYNO_RAM", "the dyno's memory, set by Heroku"),
    ("STACK", "the Heroku stack, set by Heroku"),
    (
        "SOURCE_VERSION",
        "the commit being built, set during Heroku builds",
    ),
];

/// Add-on services and the variables they set, for when `heroku addons --json` is not given.
const KNOWN_ADDONS: &[(&str, &[&str])] = &[
    ("heroku-postgresql", &["DATABASE_URL", "HEROKU_POSTGRESQL_"]),
    ("heroku-redis", &["REDIS_URL", "REDIS_TLS_URL"]),
    ("rediscloud", &["REDISCLOUD_URL"]),
    ("redistogo", &["REDISTOGO_URL"]),
    ("memcachier", &["MEMCACHIER_"]),
    ("sendgrid", &["SENDGRID_"]),
    ("mailgun", &["MAILGUN_"]),
    ("papertrail", &["PAPERTRAIL_"]),
    ("cloudamqp", &["CLOUDAMQP_"]),
    ("bonsai", &["BONSAI_"]),
    ("heroku-kafka", &["KAFKA_"]),
    ("bucketeer", &["BUCKETEER_"]),
    ("newrelic", &["NEW_RELIC_"]),
    ("sentry", &["SENTRY_DSN"]),
];

/// Services whose variables are add-on owned even when no manifest lists them.
const ALWAYS_ADDON: &[&str] = &["heroku-postgresql", "heroku-redis"];

const SECRET_WORDS: &[&str] = &[
    "KEY",
    "SECRET",
    "TOKEN",
    "PASSWORD",
    "PASS",
    "PASSWD",
    "PWD",
    "CREDENTIAL",
    "CREDENTIALS",
    "PRIVATE",
    "AUTH",
    "DSN",
    "SALT",
    "SIGNING",
    "CERT",
    "PEM",
];

fn matches_prefix(name: &str, pattern: &str) -> bool {
    if pattern.ends_with('_') {
        name.starts_with(pattern)
    } else {
        name == pattern
    }
}

fn replacement(service: &str) -> &'static str {
    match service {
        "heroku-postgresql" => {
            "the cutover proxy's URL while the move runs (an app pointed straight at the new database while the other writes to the old one makes two primaries, and writes are lost); the new database's own URL only after `cutover finish`"
        }
        "heroku-redis" | "rediscloud" | "redistogo" => {
            "the new Redis's URL (ElastiCache, Upstash, ...)"
        }
        _ => "the value from your own account with the provider, or its replacement",
    }
}

/// Whether a value looks like a generated credential: long, no spaces, mixed letters and
/// digits, and not a URL, path or version.
pub fn looks_generated(value: &str) -> bool {
    let v = value.trim();
    if v.len() < 24 || v.contains(char::is_whitespace) || v.contains("://") || v.starts_with('/') {
        return false;
    }
    let letters = v.chars().filter(|c| c.is_ascii_alphabetic()).count();
    let digits = v.chars().filter(|c| c.is_ascii_digit()).count();
    let distinct = v.chars().collect::<std::collections::BTreeSet<_>>().len();
    letters > 0 && digits > 0 && distinct >= 12
}

/// The password of a URL value (`scheme://user:password@host`), if any.
pub fn url_has_password(value: &str) -> bool {
    let Some((_, rest)) = value.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => userinfo.split_once(':').is_some_and(|(_, p)| !p.is_empty()),
        None => false,
    }
}

/// Why a name or value is a secret, if it is one.
pub fn secret_reason(name: &str, value: &str) -> Option<String> {
    if let Some(word) = name
        .split('_')
        .find(|w| SECRET_WORDS.contains(&w.to_ascii_uppercase().as_str()))
    {
        return Some(format!("the name says it is a credential (`{word}`)"));
    }
    if url_has_password(value) {
        return Some("a URL holding a password".to_string());
    }
    if looks_generated(value) {
        return Some("the value looks generated (long, random-looking)".to_string());
    }
    None
}

fn value_warnings(value: &str) -> Vec<String> {
    let mut out = vec![];
    let b = value.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        out.push(
            "the value is wrapped in quotes, which are part of the value on Heroku too; \
             check that the app expects them"
                .to_string(),
        );
    }
    if value != value.trim() {
        out.push("the value starts or ends with whitespace".to_string());
    }
    if value.is_empty() {
        out.push("the value is empty".to_string());
    }
    out
}

/// Sorts `config` into classes.
pub fn classify(
    config: &Vars,
    addons: Option<&[AddonInfo]>,
    app: Option<&AppJson>,
    lang: Option<&Detected>,
) -> EnvReport {
    let manifest_services: Vec<&str> = app
        .map(|a| a.addons.iter().map(|x| x.service()).collect())
        .unwrap_or_default();
    let owner = |name: &str| -> Option<(String, String)> {
        match addons {
            Some(list) => list.iter().find_map(|a| {
                a.config_vars.iter().any(|v| v == name).then(|| {
                    (
                        a.addon_service.name.clone(),
                        format!("set by add-on {} ({})", a.addon_service.name, a.name),
                    )
                })
            }),
            None => KNOWN_ADDONS.iter().find_map(|(service, patterns)| {
                let listed = manifest_services.contains(service) || ALWAYS_ADDON.contains(service);
                (listed && patterns.iter().any(|p| matches_prefix(name, p))).then(|| {
                    let how = if manifest_services.contains(service) {
                        "listed in app.json"
                    } else {
                        "by its name"
                    };
                    (
                        service.to_string(),
                        format!("set by add-on {service} ({how}; pass --addons for certainty)"),
                    )
                })
            }),
        }
    };
    let generated = |name: &str| {
        app.and_then(|a| a.env.get(name))
            .is_some_and(|s| s.generated_secret())
    };
    let mut vars = vec![];
    for (name, value) in config {
        let warnings = value_warnings(value);
        let (class, reason, action, addon) = if let Some((service, why)) = owner(name) {
            let action = format!("not copied: point it at {}", replacement(&service));
            (Class::Addon, why, action, Some(service))
        } else if let Some((_, why)) = PLATFORM.iter().find(|(n, _)| n == name) {
            let action = if name == "PORT" {
                "mapped: the target sets it (ECS: the container port)".to_string()
            } else {
                "dropped".to_string()
            };
            (Class::Platform, why.to_string(), action, None)
        } else if name.starts_with("HEROKU_") {
            (
                Class::Platform,
                "Heroku dyno metadata".to_string(),
                "dropped; set it explicitly if the code reads it".to_string(),
                None,
            )
        } else if generated(name) {
            (
                Class::Secret,
                "app.json generates it (generator: secret)".to_string(),
                "copied as a secret".to_string(),
                None,
            )
        } else if let Some(why) = secret_reason(name, value) {
            (Class::Secret, why, "copied as a secret".to_string(), None)
        } else {
            (
                Class::Plain,
                "neither its name nor its value looks like a credential".to_string(),
                "copied as plain environment".to_string(),
                None,
            )
        };
        vars.push(EnvVar {
            name: name.clone(),
            class,
            reason,
            action,
            addon,
            warnings,
            value: Secret::new(value.clone()),
        });
    }
    let buildpack = lang
        .map(buildpack_vars)
        .unwrap_or_default()
        .into_iter()
        .filter(|b| !config.contains_key(&b.name))
        .collect();
    EnvReport { vars, buildpack }
}

fn bp(name: &str, value: Option<&str>, reason: &str) -> BuildpackVar {
    BuildpackVar {
        name: name.to_string(),
        value: value.map(str::to_string),
        reason: reason.to_string(),
    }
}

/// What the language's buildpack sets at runtime.
pub fn buildpack_vars(lang: &Detected) -> Vec<BuildpackVar> {
    let concurrency = "the buildpack sizes it from the dyno's memory; set it for the task size";
    match lang.language {
        Language::Node => vec![
            bp("NODE_ENV", Some("production"), "the Node.js buildpack sets it"),
            bp("WEB_CONCURRENCY", Some("1"), concurrency),
        ],
        Language::Python => vec![
            bp("WEB_CONCURRENCY", Some("2"), concurrency),
            bp("PYTHONUNBUFFERED", Some("1"), "the Python buildpack sets it so logs are not held back"),
            bp(
                "FORWARDED_ALLOW_IPS",
                Some("*"),
                "the Python buildpack sets it so gunicorn trusts the load balancer's X-Forwarded-* headers",
            ),
        ],
        Language::Ruby => {
            let mut v = vec![
                bp("RACK_ENV", Some("production"), "the Ruby buildpack sets it"),
                bp("MALLOC_ARENA_MAX", Some("2"), "the Ruby buildpack sets it to keep memory flat"),
            ];
            if lang.traits.iter().any(|t| t == "rails") {
                v.extend([
                    bp("RAILS_ENV", Some("production"), "the Ruby buildpack sets it"),
                    bp("RAILS_LOG_TO_STDOUT", Some("enabled"), "the Ruby buildpack sets it, so logs reach the log group"),
                    bp("RAILS_SERVE_STATIC_FILES", Some("enabled"), "the Ruby buildpack sets it; without a CDN the app serves its assets"),
                    bp("SECRET_KEY_BASE", None, "the Ruby buildpack generates one when unset; generate it with `bin/rails secret` and store it as a secret"),
                ]);
            }
            v
        }
        Language::Java => vec![bp(
            "JAVA_TOOL_OPTIONS",
            Some("-XX:MaxRAMPercentage=80.0"),
            "the Java buildpack sets the heap from the dyno's memory",
        )],
        Language::Php => vec![bp("WEB_CONCURRENCY", Some("4"), concurrency)],
        Language::Go => vec![],
    }
}

/// Counts of each class, for summaries.
pub fn counts(report: &EnvReport) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for v in &report.vars {
        *m.entry(v.class.name()).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn classes_with_reasons() {
        let config = vars(&[
            (
                "DATABASE_URL",
                "postgres://u:pw-db-123@ec2.compute.amazonaws.com:5432/d1",
            ),
            (
                "HEROKU_POSTGRESQL_ROSE_URL",
                "postgres://u:pw-db-123@ec2.compute.amazonaws.com:5432/d1",
            ),
            ("PORT", "5000"),
            ("HEROKU_APP_NAME", "shop"),
            ("STRIPE_API_KEY", "sk_live_abc"),
            ("SMTP_URL", "smtp://mailer:pw-mail@smtp.example.com"),
            ("SESSION_COOKIE_SEED", "Zx8kQ2mP9vT4wL7nR1sY6bH3"),
            ("LOG_LEVEL", "'info'"),
            ("FEATURE_FLAGS", "a,b"),
        ]);
        let r = classify(&config, None, None, None);
        let by: BTreeMap<&str, Class> = r.vars.iter().map(|v| (v.name.as_str(), v.class)).collect();
        assert_eq!(by["DATABASE_URL"], Class::Addon);
        assert_eq!(by["HEROKU_POSTGRESQL_ROSE_URL"], Class::Addon);
        assert_eq!(by["PORT"], Class::Platform);
        assert_eq!(by["HEROKU_APP_NAME"], Class::Platform);
        assert_eq!(by["STRIPE_API_KEY"], Class::Secret);
        assert_eq!(by["SMTP_URL"], Class::Secret);
        assert_eq!(by["SESSION_COOKIE_SEED"], Class::Secret);
        assert_eq!(by["LOG_LEVEL"], Class::Plain);
        assert_eq!(by["FEATURE_FLAGS"], Class::Plain);
        let log = r.vars.iter().find(|v| v.name == "LOG_LEVEL").unwrap();
        assert!(log.warnings[0].contains("wrapped in quotes"));
        let debug = format!("{r:?}");
        let json = serde_json::to_string(&r).unwrap();
        for s in [
            "pw-db-123",
            "sk_live_abc",
            "pw-mail",
            "Zx8kQ2mP9vT4wL7nR1sY6bH3",
        ] {
            assert!(!debug.contains(s) && !json.contains(s), "{s} leaked");
        }
    }

    #[test]
    fn addons_json_is_authoritative() {
        let addons: Vec<AddonInfo> = serde_json::from_str(
            r#"[{"name": "redis-round-1", "addon_service": {"name": "heroku-redis"}, "config_vars": ["CACHE_URL"]}]"#,
        )
        .unwrap();
        let config = vars(&[
            ("CACHE_URL", "redis://h:6379"),
            ("DATABASE_URL", "postgres://h/d"),
        ]);
        let r = classify(&config, Some(&addons), None, None);
        assert_eq!(r.vars[0].class, Class::Addon);
        assert_eq!(
            r.vars[0].reason,
            "set by add-on heroku-redis (redis-round-1)"
        );
        assert_eq!(r.vars[1].class, Class::Plain);
    }
}
