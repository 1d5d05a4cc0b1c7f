//! Vercel: `vercel.json` and the env API payload.
//!
//! Vercel runs the web process as functions, so each request may open a new database
//! connection: at runtime the app must use the provider's *pooled* URL (Neon's `-pooler`
//! host, Supabase's pooler on port 6543). Migrations need a session the pooler does not give
//! (advisory locks, DDL in transactions), so the release phase runs in the build against the
//! *direct* URL (`DATABASE_URL_UNPOOLED`, the name Neon's integration uses), only for
//! production builds: a preview build must never migrate the production database.
//!
//! While the move runs, both variables hold the cutover proxy's URL instead: with the old app
//! still writing to the old database, a new app pointed straight at the new one would make two
//! writable primaries, and a migration run there would land on the database that is not the
//! primary yet. The pooled and direct URLs are written after `cutover finish`
//! (`--after-move`).
//!
//! Only Node.js and Python apps have a Vercel runtime that serves a web process; for the
//! others we refuse and point at the ECS output instead of writing config that cannot work.

use cutover_core::Secret;
use serde_json::{json, Value};

use crate::export::{self, Target, DIRECT_URL_VAR};
use crate::files::Artifact;
use crate::inspect::{self, Inspection};
use crate::language::Language;
use crate::AppError;

/// Database URLs for Vercel; any may be unknown (then the payload has a placeholder).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The new database's URLs, written only after the move (`after_move`).
    pub pooled_url: Option<Secret>,
    pub direct_url: Option<Secret>,
    /// The cutover proxy's URL, which the app uses while the move runs.
    pub proxy_url: Option<Secret>,
    /// Write the new database's own URLs: the move is finished (`cutover finish`).
    pub after_move: bool,
}

/// Neon's pooled URL for a direct one: the endpoint's host with `-pooler` after its id.
pub fn neon_pooled(direct: &str) -> Option<String> {
    let (scheme, rest) = direct.split_once("://")?;
    let (userinfo, hostpart) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (endpoint, domain) = hostpart.split_once('.')?;
    if !hostpart.contains(".neon.tech") || endpoint.ends_with("-pooler") {
        return None;
    }
    let host = format!("{endpoint}-pooler.{domain}");
    Some(match userinfo {
        Some(u) => format!("{scheme}://{u}@{host}"),
        None => format!("{scheme}://{host}"),
    })
}

/// The WSGI module of a gunicorn/uwsgi web command (`gettingstarted.wsgi`).
fn wsgi_module(command: &str) -> Option<String> {
    command
        .split_whitespace()
        .map(|w| w.split(':').next().unwrap_or(w))
        .find(|w| w.ends_with(".wsgi") && !w.starts_with('-'))
        .map(str::to_string)
}

/// `vercel.json`, the env payload (`vercel-env.json`), for Python the WSGI entry, and notes.
pub fn render(ins: &Inspection, opts: &Options) -> Result<(Vec<Artifact>, Vec<String>), AppError> {
    let lang = ins.language.language;
    if !matches!(lang, Language::Node | Language::Python) {
        return Err(AppError::Unsupported(format!(
            "Vercel has no runtime for a long-running {} web process; use `cutover app terraform` (ECS) for this app",
            lang.name()
        )));
    }
    let web = ins.require_web()?;
    let mut notes = vec![];
    let mut files = vec![];
    let mut config = serde_json::Map::new();
    config.insert(
        "$schema".into(),
        json!("https://openapi.vercel.sh/vercel.json"),
    );
    let traits = &ins.language.traits;
    let mut build = vec![];
    if let Some(release) = ins.release() {
        build.push(format!(
            "if [ \"$VERCEL_ENV\" = production ]; then DATABASE_URL=\"${DIRECT_URL_VAR}\" {release}; fi"
        ));
        notes.push(format!(
            "the release phase `{release}` runs in production builds against {DIRECT_URL_VAR} (the cutover proxy's URL while the move runs, the new database's direct URL after it); preview builds skip it"
        ));
    }
    match lang {
        Language::Node => {
            if traits.iter().any(|t| t == "next") {
                config.insert("framework".into(), json!("nextjs"));
            } else if traits.iter().any(|t| t == "express") {
                notes.push(format!(
                    "Vercel runs the Express app of `{}` as a function: state kept in memory between requests, timers and websockets do not survive",
                    web.command
                ));
            }
            if traits.iter().any(|t| t == "script:build") {
                build.push("npm run build".into());
            }
        }
        Language::Python => {
            if traits.iter().any(|t| t == "django") {
                build.push("python manage.py collectstatic --noinput".into());
            }
            match wsgi_module(&web.command) {
                Some(module) => {
                    files.push(Artifact::plain(
                        "api/index.py",
                        format!(
                            "# Vercel's Python runtime serves the WSGI callable `app` of this file;\n# it is the application the Procfile's web process ran.\nfrom {module} import application as app  # noqa: F401\n"
                        ),
                    ));
                    config.insert(
                        "rewrites".into(),
                        json!([{ "source": "/(.*)", "destination": "/api/index" }]),
                    );
                }
                None => notes.push(format!(
                    "the web command `{}` names no WSGI module: add api/index.py exposing the WSGI callable as `app`",
                    web.command
                )),
            }
        }
        _ => unreachable!("refused above"),
    }
    if !build.is_empty() {
        config.insert("buildCommand".into(), json!(build.join(" && ")));
    }
    for p in ins.workers() {
        notes.push(format!(
            "process `{}` has no equivalent on Vercel (functions end with their request): run it elsewhere, e.g. on ECS with `cutover app terraform`, or as a Vercel Cron job if it is periodic",
            p.name
        ));
    }
    let env = inspect::env_or_manifest(ins);
    if !opts.after_move && (opts.pooled_url.is_some() || opts.direct_url.is_some()) {
        return Err(AppError::Unsupported(
            "the pooled and direct URLs point the new app straight at the new database, which is safe only after `cutover finish` (until then the old app still writes to the old one): pass --after-move for that, or --proxy-url-env for the move".into(),
        ));
    }
    let mut pooled = opts.pooled_url.clone();
    if opts.after_move && pooled.is_none() {
        if let Some(derived) = opts
            .direct_url
            .as_ref()
            .and_then(|d| neon_pooled(d.expose()))
        {
            notes.push("the pooled URL is the direct Neon URL with its -pooler host".into());
            pooled = Some(Secret::new(derived));
        }
    }
    let payload = export::export(
        &env,
        Target::Vercel,
        &export::Options {
            app: ins.name.clone(),
            pooled_url: if opts.after_move { pooled } else { None },
            direct_url: if opts.after_move {
                opts.direct_url.clone()
            } else {
                None
            },
            proxy_url: if opts.after_move {
                None
            } else {
                opts.proxy_url.clone()
            },
            ..Default::default()
        },
        "vercel-env.json",
    );
    notes.extend(payload.todo);
    let mut text = serde_json::to_string_pretty(&Value::Object(config)).expect("JSON serializes");
    text.push('\n');
    files.insert(0, Artifact::plain("vercel.json", text));
    files.push(payload.artifact);
    Ok((files, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neon_pooled_host() {
        assert_eq!(
            neon_pooled(
                "postgres://u:p@ep-cool-rain-123.us-east-2.aws.neon.tech/db?sslmode=require"
            )
            .as_deref(),
            Some(
                "postgres://u:p@ep-cool-rain-123-pooler.us-east-2.aws.neon.tech/db?sslmode=require"
            )
        );
        assert_eq!(
            neon_pooled("postgres://u:p@ep-x-pooler.us-east-2.aws.neon.tech/db"),
            None
        );
        assert_eq!(
            neon_pooled("postgres://u:p@db.abc.supabase.co:5432/postgres"),
            None
        );
    }

    #[test]
    fn wsgi_from_gunicorn() {
        assert_eq!(
            wsgi_module("gunicorn --config gunicorn.conf.py gettingstarted.wsgi").as_deref(),
            Some("gettingstarted.wsgi")
        );
        assert_eq!(
            wsgi_module("gunicorn shop.wsgi:application -b :$PORT").as_deref(),
            Some("shop.wsgi")
        );
        assert_eq!(wsgi_module("python app.py"), None);
    }
}
