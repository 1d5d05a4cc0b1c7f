//! `cutover app inspect`: everything we know about the app, read once, used by every writer.
//!
//! The source directory is read as Heroku reads it at `git push`: the Procfile, app.json,
//! the language's marker and version files, `.slugignore`. Config vars come from files the
//! user exported (`heroku config --json`, `heroku addons --json`), never from the live app,
//! so inspecting is repeatable and needs no credentials.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::appjson::{self, AppJson};
use crate::config;
use crate::env::{self, EnvReport};
use crate::language::{self, Detected, Language};
use crate::procfile::{self, Procfile};
use crate::scan::{self, Finding};
use crate::AppError;

/// The web command and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Web {
    pub command: String,
    /// "Procfile line N" or "buildpack default".
    pub source: String,
}

/// What `inspect` found.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// Resource name: app.json's name or the directory's, lowercase letters, digits and `-`.
    pub name: String,
    #[serde(skip)]
    pub dir: PathBuf,
    pub language: Detected,
    pub procfile: Option<Procfile>,
    /// The process that gets HTTP traffic, from the Procfile or the buildpack's default.
    pub web: Option<Web>,
    pub app_json: Option<AppJson>,
    /// Patterns from `.slugignore`: Heroku leaves these out of the slug.
    pub slugignore: Vec<String>,
    pub env: Option<EnvReport>,
    pub findings: Vec<Finding>,
    /// What the user should know: unpinned versions, missing pieces.
    pub notes: Vec<String>,
}

impl Inspection {
    /// The release-phase command, if any.
    pub fn release(&self) -> Option<&str> {
        self.procfile
            .as_ref()
            .and_then(|p| p.release())
            .map(|p| p.command.as_str())
    }

    /// Long-running processes other than web.
    pub fn workers(&self) -> Vec<&procfile::Process> {
        self.procfile
            .as_ref()
            .map(|p| p.others().collect())
            .unwrap_or_default()
    }

    /// The web command, or an error saying how to declare one.
    pub fn require_web(&self) -> Result<&Web, AppError> {
        self.web.as_ref().ok_or_else(|| {
            AppError::Unsupported(format!(
                "{}: no web process: add `web: <command listening on $PORT>` to the Procfile",
                self.dir.join("Procfile").display()
            ))
        })
    }

    /// Dyno count of a process type in app.json's formation.
    pub fn quantity(&self, process: &str) -> u32 {
        self.app_json
            .as_ref()
            .and_then(|a| a.formation.get(process))
            .and_then(|f| f.quantity)
            .unwrap_or(1)
    }

    /// Dyno size of a process type in app.json's formation.
    pub fn size(&self, process: &str) -> Option<&str> {
        self.app_json
            .as_ref()
            .and_then(|a| a.formation.get(process))
            .and_then(|f| f.size.as_deref())
    }
}

/// The app's name for resources: app.json's `name`, else the folder's.
fn app_name(dir: &Path, app_json: Option<&AppJson>) -> String {
    let dir_name = std::fs::canonicalize(dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "app".into());
    resource_name(
        app_json
            .and_then(|a| a.name.as_deref())
            .unwrap_or(&dir_name),
    )
}

/// Lowercase letters, digits and single dashes, at most 24 characters (room for suffixes
/// within AWS's 32-character load balancer names).
pub fn resource_name(raw: &str) -> String {
    let mut out = String::new();
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let mut out: String = out.chars().take(24).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        "app".to_string()
    } else {
        out
    }
}

fn default_web(dir: &Path, lang: &Detected) -> Option<String> {
    match lang.language {
        Language::Node => {
            if lang.traits.iter().any(|t| t == "script:start") {
                Some("npm start".into())
            } else if dir.join("server.js").is_file() {
                Some("node server.js".into())
            } else {
                None
            }
        }
        Language::Ruby if lang.traits.iter().any(|t| t == "rails") => {
            Some("bin/rails server -p ${PORT:-5000} -e ${RAILS_ENV:-production}".into())
        }
        Language::Ruby if dir.join("config.ru").is_file() => {
            Some("bundle exec rackup config.ru -p ${PORT:-5000}".into())
        }
        Language::Go => lang.go_binary.as_ref().map(|b| format!("bin/{b}")),
        Language::Php => Some("heroku-php-apache2".into()),
        _ => None,
    }
}

/// Reads the app in `dir`, with `heroku config --json` and `heroku addons --json` output when
/// given.
pub fn inspect(
    dir: &Path,
    config_path: Option<&Path>,
    addons_path: Option<&Path>,
) -> Result<Inspection, AppError> {
    if !dir.exists() {
        return Err(AppError::MissingDirectory(dir.to_path_buf()));
    }
    if !dir.is_dir() {
        return Err(AppError::NotADirectory(dir.to_path_buf()));
    }
    let file = |name: &str| dir.join(name);
    let procfile = if file("Procfile").is_file() {
        let text = crate::error::read(&file("Procfile"))?;
        Some(procfile::parse(
            &file("Procfile").display().to_string(),
            &text,
        )?)
    } else {
        None
    };
    let app_json = if file("app.json").is_file() {
        let text = crate::error::read(&file("app.json"))?;
        Some(appjson::parse(
            &file("app.json").display().to_string(),
            &text,
        )?)
    } else {
        None
    };
    let language = language::detect(dir, app_json.as_ref())?;
    let name = app_name(dir, app_json.as_ref());
    let mut notes = language.notes.clone();
    let web = match procfile.as_ref().and_then(|p| p.web()) {
        Some(p) => Some(Web {
            command: p.command.clone(),
            source: format!("Procfile line {}", p.line),
        }),
        None => default_web(dir, &language).map(|command| Web {
            command,
            source: "buildpack default".into(),
        }),
    };
    if procfile.is_none() {
        notes.push("no Procfile: only the buildpack's default web process is known; write a Procfile to be explicit".into());
    }
    if web.is_none() {
        notes
            .push("no web process: add `web: <command listening on $PORT>` to the Procfile".into());
    }
    let slugignore = if file(".slugignore").is_file() {
        crate::error::read(&file(".slugignore"))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    } else {
        vec![]
    };
    let addons = addons_path.map(config::read_addons).transpose()?;
    let env = match config_path {
        Some(p) => {
            let vars = config::read_config(p)?;
            Some(env::classify(
                &vars,
                addons.as_deref(),
                app_json.as_ref(),
                Some(&language),
            ))
        }
        None => None,
    };
    let findings = scan::scan(dir)?;
    Ok(Inspection {
        name,
        dir: dir.to_path_buf(),
        language,
        procfile,
        web,
        app_json,
        slugignore,
        env,
        findings,
        notes,
    })
}

/// The variables a generated config declares when no config was given: app.json's `env`
/// (classified on name alone) and the buildpack's runtime variables.
pub fn env_or_manifest(ins: &Inspection) -> EnvReport {
    if let Some(env) = &ins.env {
        return env.clone();
    }
    let mut vars = config::Vars::new();
    if let Some(app) = &ins.app_json {
        for (name, spec) in &app.env {
            let value = match spec {
                appjson::EnvSpec::Value(v) => v.clone(),
                appjson::EnvSpec::Spec { value, .. } => value.clone().unwrap_or_default(),
            };
            vars.insert(name.clone(), value);
        }
    }
    env::classify(&vars, None, ins.app_json.as_ref(), Some(&ins.language))
}

/// The sorted environment alone, for `env` exports: the app directory supplies app.json and
/// the language (for the buildpack's runtime variables) when it has them, and is not required
/// to be an app at all.
pub fn environment(
    dir: &Path,
    config_path: &Path,
    addons_path: Option<&Path>,
) -> Result<(String, EnvReport), AppError> {
    if !dir.is_dir() {
        return Err(AppError::MissingDirectory(dir.to_path_buf()));
    }
    let app_json = if dir.join("app.json").is_file() {
        let path = dir.join("app.json");
        Some(appjson::parse(
            &path.display().to_string(),
            &crate::error::read(&path)?,
        )?)
    } else {
        None
    };
    let language = language::detect(dir, app_json.as_ref()).ok();
    let vars = config::read_config(config_path)?;
    let addons = addons_path.map(config::read_addons).transpose()?;
    let name = app_name(dir, app_json.as_ref());
    let report = env::classify(
        &vars,
        addons.as_deref(),
        app_json.as_ref(),
        language.as_ref(),
    );
    Ok((name, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_aws_limits() {
        assert_eq!(resource_name("My Shop_App!"), "my-shop-app");
        assert_eq!(resource_name("--"), "app");
        assert_eq!(
            resource_name("a-very-long-application-name-indeed"),
            "a-very-long-application"
        );
    }

    #[test]
    fn missing_and_non_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = inspect(&missing, None, None).unwrap_err();
        assert!(e.to_string().ends_with(
            "nope does not exist; pass the app's source directory (the one holding the Procfile)"
        ));
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let e = inspect(&file, None, None).unwrap_err();
        assert!(e.to_string().ends_with(
            "f is not a directory; pass the app's source directory (the one holding the Procfile)"
        ));
    }
}
