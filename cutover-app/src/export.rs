//! Exports of the sorted environment, one per target platform.
//!
//! Each export keeps the classes apart the way its platform does: secrets go where secrets
//! live (Secrets Manager, SSM SecureString, Vercel "sensitive"), plain values into plain
//! environment, platform variables are dropped or mapped, and add-on variables become a
//! `REPLACE_ME` placeholder named in the to-do list, because their value must be the
//! replacement's, not a copy of the add-on's. The file itself holds secret values (that is
//! what it is for) and is written with mode 0600; what is shown is a preview with every
//! secret masked.

use cutover_core::secret::MASK;
use cutover_core::Secret;
use serde::Serialize;
use serde_json::{json, Value};

use crate::env::{Class, EnvReport};
use crate::files::Artifact;
use crate::AppError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    SecretsManager,
    Ssm,
    Ecs,
    Vercel,
    Dotenv,
}

impl Target {
    pub const ALL: [Target; 5] = [
        Target::SecretsManager,
        Target::Ssm,
        Target::Ecs,
        Target::Vercel,
        Target::Dotenv,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::SecretsManager => "secrets-manager",
            Target::Ssm => "ssm",
            Target::Ecs => "ecs",
            Target::Vercel => "vercel",
            Target::Dotenv => "dotenv",
        }
    }

    pub fn parse(s: &str) -> Result<Target, AppError> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                AppError::Unsupported(format!(
                    "unknown target `{s}`; use one of secrets-manager, ssm, ecs, vercel, dotenv"
                ))
            })
    }

    /// The file written when no `--out` is given.
    pub fn default_file(self) -> &'static str {
        match self {
            Target::SecretsManager => "secrets-manager.json",
            Target::Ssm => "ssm-parameters.json",
            Target::Ecs => "ecs-container-env.json",
            Target::Vercel => "vercel-env.json",
            Target::Dotenv => ".env",
        }
    }
}

/// What the export needs besides the environment.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The app's resource name: SSM path prefix and Secrets Manager secret name.
    pub app: String,
    /// The Secrets Manager secret's ARN, for ECS `valueFrom`.
    pub secret_arn: Option<String>,
    /// The container port (ECS, .env).
    pub port: u16,
    /// Vercel: the pooled database URL (runtime) and the direct one (migrations).
    /// The new database's pooled and direct URLs, for after `cutover finish`.
    pub pooled_url: Option<Secret>,
    pub direct_url: Option<Secret>,
    /// The cutover proxy's URL, which both variables hold while the move runs.
    pub proxy_url: Option<Secret>,
}

/// An entry's value: known, or to be filled in.
#[derive(Debug, Clone)]
pub enum Val {
    Known(Secret),
    Placeholder(String),
}

/// One variable as exported.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub secret: bool,
    /// Owned by an add-on: the value is the replacement's.
    pub addon: bool,
    pub value: Val,
}

impl Entry {
    fn text(&self, reveal: bool) -> String {
        match &self.value {
            Val::Known(v) if reveal || !self.secret => v.expose().to_string(),
            Val::Known(_) => MASK.to_string(),
            Val::Placeholder(p) => p.clone(),
        }
    }
}

/// The written file and what is left for the user to do.
#[derive(Debug, Clone)]
pub struct Export {
    pub artifact: Artifact,
    pub todo: Vec<String>,
}

/// The name Vercel (and Neon's integration) gives the direct, unpooled URL.
pub const DIRECT_URL_VAR: &str = "DATABASE_URL_UNPOOLED";

/// The variables to export for `target`, in name order, and the to-do list.
pub fn entries(env: &EnvReport, target: Target, opts: &Options) -> (Vec<Entry>, Vec<String>) {
    let mut out = vec![];
    let mut todo = vec![];
    for v in &env.vars {
        match v.class {
            Class::Platform => {
                if v.name == "PORT" && matches!(target, Target::Ecs | Target::Dotenv) {
                    out.push(Entry {
                        name: "PORT".into(),
                        secret: false,
                        addon: false,
                        value: Val::Known(Secret::new(opts.port.to_string())),
                    });
                }
            }
            Class::Addon => {
                if target == Target::Vercel && v.name == "DATABASE_URL" {
                    // While the move runs both variables are the proxy's URL: migrations too
                    // reach whichever database is the primary, through it. After `cutover
                    // finish` they become the new database's pooled and direct URLs.
                    let after = opts.pooled_url.is_some() || opts.direct_url.is_some();
                    for (name, given, what) in [
                        (
                            "DATABASE_URL",
                            if after {
                                &opts.pooled_url
                            } else {
                                &opts.proxy_url
                            },
                            "runtime",
                        ),
                        (
                            DIRECT_URL_VAR,
                            if after {
                                &opts.direct_url
                            } else {
                                &opts.proxy_url
                            },
                            "migrations",
                        ),
                    ] {
                        let value = match (given, after) {
                            (Some(s), _) => Val::Known(s.clone()),
                            (None, false) => {
                                todo.push(format!("set {name} ({what}) to the cutover proxy's URL for the move; after `cutover finish`, to the new database's {} URL (`cutover app vercel --after-move`)", if what == "runtime" { "pooled" } else { "direct" }));
                                Val::Placeholder("REPLACE_ME: the cutover proxy's URL".into())
                            }
                            (None, true) => {
                                todo.push(format!(
                                    "set {name} to the new database's {} URL ({what})",
                                    if what == "runtime" {
                                        "pooled"
                                    } else {
                                        "direct"
                                    }
                                ));
                                Val::Placeholder(format!(
                                    "REPLACE_ME: the new database's {} URL",
                                    if what == "runtime" {
                                        "pooled"
                                    } else {
                                        "direct"
                                    }
                                ))
                            }
                        };
                        out.push(Entry {
                            name: name.into(),
                            secret: true,
                            addon: true,
                            value,
                        });
                    }
                    continue;
                }
                let service = v.addon.as_deref().unwrap_or("an add-on");
                todo.push(format!(
                    "set {} to the replacement of {service} ({})",
                    v.name, v.action
                ));
                out.push(Entry {
                    name: v.name.clone(),
                    secret: true,
                    addon: true,
                    value: Val::Placeholder(format!("REPLACE_ME: replacement of {service}")),
                });
            }
            Class::Secret | Class::Plain => out.push(Entry {
                name: v.name.clone(),
                secret: v.class == Class::Secret,
                addon: false,
                value: Val::Known(v.value.clone()),
            }),
        }
    }
    for b in &env.buildpack {
        if target == Target::Vercel && b.name == "NODE_ENV" {
            continue; // Vercel sets it
        }
        let (secret, value) = match &b.value {
            Some(v) => (false, Val::Known(Secret::new(v.clone()))),
            None => {
                todo.push(format!("generate {}: {}", b.name, b.reason));
                (true, Val::Placeholder("REPLACE_ME: generate it".into()))
            }
        };
        out.push(Entry {
            name: b.name.clone(),
            secret,
            addon: false,
            value,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    (out, todo)
}

/// The ECS `valueFrom` of a key in the app's Secrets Manager secret.
pub fn value_from(arn: &str, name: &str) -> String {
    format!("{arn}:{name}::")
}

/// The Secrets Manager ARN placeholder when none is given.
pub fn arn_placeholder(app: &str) -> String {
    format!("arn:aws:secretsmanager:REGION:ACCOUNT_ID:secret:{app}")
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("JSON values serialize");
    s.push('\n');
    s
}

/// dotenv quoting: bare when safe, else double quotes with `\`, `"`, `$` and newlines escaped.
pub fn dotenv_value(v: &str) -> String {
    let safe = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:@%+,-".contains(c));
    if safe {
        return v.to_string();
    }
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn render(entries: &[Entry], target: Target, opts: &Options, reveal: bool) -> String {
    match target {
        Target::SecretsManager => {
            let map: serde_json::Map<String, Value> = entries
                .iter()
                .filter(|e| e.secret)
                .map(|e| (e.name.clone(), Value::String(e.text(reveal))))
                .collect();
            pretty(&Value::Object(map))
        }
        Target::Ssm => {
            let list: Vec<Value> = entries
                .iter()
                .map(|e| {
                    json!({
                        "Name": format!("/{}/{}", opts.app, e.name),
                        "Value": e.text(reveal),
                        "Type": if e.secret { "SecureString" } else { "String" },
                    })
                })
                .collect();
            pretty(&Value::Array(list))
        }
        Target::Ecs => {
            let arn = opts
                .secret_arn
                .clone()
                .unwrap_or_else(|| arn_placeholder(&opts.app));
            let environment: Vec<Value> = entries
                .iter()
                .filter(|e| !e.secret)
                .map(|e| json!({ "name": e.name, "value": e.text(reveal) }))
                .collect();
            let secrets: Vec<Value> = entries
                .iter()
                .filter(|e| e.secret)
                .map(|e| json!({ "name": e.name, "valueFrom": value_from(&arn, &e.name) }))
                .collect();
            pretty(&json!({ "environment": environment, "secrets": secrets }))
        }
        Target::Vercel => {
            let list: Vec<Value> = entries
                .iter()
                .map(|e| {
                    json!({
                        "key": e.name,
                        "value": e.text(reveal),
                        "type": if e.secret { "sensitive" } else { "plain" },
                        // preview builds must not reach (or migrate) the production database
                        "target": if e.addon { json!(["production"]) } else { json!(["production", "preview"]) },
                    })
                })
                .collect();
            pretty(&Value::Array(list))
        }
        Target::Dotenv => {
            let mut s = String::from(
                "# Holds secrets: keep it out of version control and out of images.\n",
            );
            for e in entries {
                s.push_str(&format!("{}={}\n", e.name, dotenv_value(&e.text(reveal))));
            }
            s
        }
    }
}

/// The export of `env` for `target`, written to `path`.
pub fn export(env: &EnvReport, target: Target, opts: &Options, path: &str) -> Export {
    let (entries, mut todo) = entries(env, target, opts);
    let contents = render(&entries, target, opts, true);
    let preview = render(&entries, target, opts, false);
    match target {
        Target::SecretsManager => todo.push(format!(
            "upload: aws secretsmanager create-secret --name {} --secret-string file://{path}",
            opts.app
        )),
        Target::Ssm => todo.push(format!(
            "upload: jq -c '.[]' {path} | while read -r p; do aws ssm put-parameter --overwrite --cli-input-json \"$p\"; done"
        )),
        Target::Ecs if opts.secret_arn.is_none() => todo.push(format!(
            "replace {} with the ARN of the Secrets Manager secret (see --secret-arn)",
            arn_placeholder(&opts.app)
        )),
        Target::Vercel => todo.push(format!(
            "upload: POST each entry of {path} to https://api.vercel.com/v10/projects/PROJECT/env"
        )),
        _ => {}
    }
    let sensitive = entries
        .iter()
        .any(|e| e.secret && matches!(e.value, Val::Known(_)))
        && target != Target::Ecs;
    let artifact = if sensitive {
        Artifact::sensitive(path, contents, preview)
    } else {
        Artifact::plain(path, contents)
    };
    Export { artifact, todo }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Vars;

    fn report() -> EnvReport {
        let vars: Vars = [
            (
                "DATABASE_URL",
                "postgres://u:pw-db-777@ec2-1.compute-1.amazonaws.com:5432/d",
            ),
            ("PORT", "31337"),
            ("DYNO", "web.1"),
            ("API_TOKEN", "tok-secret-888"),
            ("LOG_LEVEL", "info"),
            ("GREETING", "hello \"world\" $HOME"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        crate::env::classify(&vars, None, None, None)
    }

    fn opts() -> Options {
        Options {
            app: "shop".into(),
            port: 8080,
            ..Default::default()
        }
    }

    #[test]
    fn each_target_keeps_the_classes_apart() {
        let r = report();
        let sm = export(&r, Target::SecretsManager, &opts(), "sm.json");
        let v: Value = serde_json::from_str(&sm.artifact.contents).unwrap();
        assert_eq!(v["API_TOKEN"], "tok-secret-888");
        assert!(v["DATABASE_URL"]
            .as_str()
            .unwrap()
            .starts_with("REPLACE_ME"));
        assert!(v.get("LOG_LEVEL").is_none() && v.get("PORT").is_none());
        assert!(sm.artifact.sensitive);
        assert!(!sm.artifact.preview.contains("tok-secret-888"));

        let ecs = export(&r, Target::Ecs, &opts(), "ecs.json");
        let v: Value = serde_json::from_str(&ecs.artifact.contents).unwrap();
        assert_eq!(
            v["environment"][0],
            json!({"name": "GREETING", "value": "hello \"world\" $HOME"})
        );
        assert_eq!(
            v["environment"][2],
            json!({"name": "PORT", "value": "8080"})
        );
        assert_eq!(
            v["secrets"][0]["valueFrom"],
            "arn:aws:secretsmanager:REGION:ACCOUNT_ID:secret:shop:API_TOKEN::"
        );
        assert!(!ecs.artifact.contents.contains("tok-secret-888") && !ecs.artifact.sensitive);

        let ssm = export(&r, Target::Ssm, &opts(), "ssm.json");
        let v: Value = serde_json::from_str(&ssm.artifact.contents).unwrap();
        assert_eq!(
            v[0],
            json!({"Name": "/shop/API_TOKEN", "Value": "tok-secret-888", "Type": "SecureString"})
        );

        let vercel = export(&r, Target::Vercel, &opts(), "v.json");
        let v: Value = serde_json::from_str(&vercel.artifact.contents).unwrap();
        let keys: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["key"].as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "API_TOKEN",
                "DATABASE_URL",
                "DATABASE_URL_UNPOOLED",
                "GREETING",
                "LOG_LEVEL"
            ]
        );
        assert_eq!(v[0]["type"], "sensitive");

        let env = export(&r, Target::Dotenv, &opts(), ".env");
        assert!(env
            .artifact
            .contents
            .contains("GREETING=\"hello \\\"world\\\" \\$HOME\"\n"));
        let back = crate::config::parse_dotenv(".env", &env.artifact.contents).unwrap();
        assert_eq!(back["GREETING"], "hello \"world\" $HOME");
        assert_eq!(back["API_TOKEN"], "tok-secret-888");
        for e in [&sm, &ecs, &ssm, &vercel, &env] {
            assert!(!e.artifact.preview.contains("tok-secret-888"));
            assert!(!e.artifact.preview.contains("pw-db-777"));
            assert!(
                !e.artifact.contents.contains("pw-db-777"),
                "add-on values are never copied"
            );
            assert!(
                !e.artifact.contents.contains("31337"),
                "the dyno's port is not copied"
            );
        }
    }

    #[test]
    fn unknown_target_says_which_exist() {
        assert_eq!(
            Target::parse("heroku").unwrap_err().to_string(),
            "unknown target `heroku`; use one of secrets-manager, ssm, ecs, vercel, dotenv"
        );
    }
}
