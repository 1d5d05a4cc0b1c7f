//! `app.json`, Heroku's app manifest: declared config vars (with `generator: "secret"` for
//! values Heroku makes up), formation (how many dynos of which size), add-ons, buildpacks and
//! scripts. We read what a move needs and ignore the rest, so a manifest with fields we do
//! not know still reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::json_error;
use crate::AppError;

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct AppJson {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub stack: Option<String>,
    /// Declared config vars.
    #[serde(default)]
    pub env: BTreeMap<String, EnvSpec>,
    /// Process type → dyno count and size.
    #[serde(default)]
    pub formation: BTreeMap<String, Formation>,
    #[serde(default)]
    pub addons: Vec<Addon>,
    #[serde(default)]
    pub buildpacks: Vec<Buildpack>,
    #[serde(default)]
    pub scripts: BTreeMap<String, String>,
}

/// A declared variable: either a bare default value or an object.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum EnvSpec {
    Value(String),
    Spec {
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        value: Option<String>,
        #[serde(default)]
        required: Option<bool>,
        #[serde(default)]
        generator: Option<String>,
    },
}

impl EnvSpec {
    /// `generator: "secret"`: Heroku generates a random value, so the variable is a secret.
    pub fn generated_secret(&self) -> bool {
        matches!(self, EnvSpec::Spec { generator: Some(g), .. } if g == "secret")
    }

    pub fn description(&self) -> Option<&str> {
        match self {
            EnvSpec::Spec { description, .. } => description.as_deref(),
            EnvSpec::Value(_) => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Formation {
    #[serde(default)]
    pub quantity: Option<u32>,
    #[serde(default)]
    pub size: Option<String>,
}

/// An add-on: `"heroku-postgresql:essential-0"` or `{ "plan": ..., "as": ... }`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Addon {
    Plan(String),
    Spec {
        plan: String,
        #[serde(default, rename = "as")]
        alias: Option<String>,
    },
}

impl Addon {
    pub fn plan(&self) -> &str {
        match self {
            Addon::Plan(p) | Addon::Spec { plan: p, .. } => p,
        }
    }

    /// The service part of the plan: `heroku-postgresql` of `heroku-postgresql:essential-0`.
    pub fn service(&self) -> &str {
        self.plan().split(':').next().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Buildpack {
    pub url: String,
}

/// Parses app.json text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<AppJson, AppError> {
    serde_json::from_str(text).map_err(|e| {
        json_error(
            file,
            &e,
            "an app.json manifest (env, formation, addons, buildpacks, scripts)",
            "fix the manifest (see https://devcenter.heroku.com/articles/app-json-schema)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_parts_a_move_needs() {
        let a = parse(
            "app.json",
            r#"{
              "name": "shop",
              "env": {"SECRET_KEY": {"generator": "secret"}, "LOG_LEVEL": "info"},
              "formation": {"web": {"quantity": 2, "size": "standard-2x"}},
              "addons": ["heroku-postgresql:essential-0", {"plan": "heroku-redis:mini", "as": "CACHE"}],
              "buildpacks": [{"url": "heroku/nodejs"}, {"url": "heroku/ruby"}],
              "scripts": {"postdeploy": "bin/rails db:seed"},
              "logo": "ignored"
            }"#,
        )
        .unwrap();
        assert!(a.env["SECRET_KEY"].generated_secret());
        assert!(!a.env["LOG_LEVEL"].generated_secret());
        assert_eq!(a.formation["web"].quantity, Some(2));
        assert_eq!(a.addons[0].service(), "heroku-postgresql");
        assert_eq!(a.addons[1].service(), "heroku-redis");
        assert_eq!(a.buildpacks[1].url, "heroku/ruby");
    }

    #[test]
    fn malformed_manifest_names_file_and_line() {
        let e = parse(
            "app.json",
            "{\n  \"name\": \"x\",\n  \"env\": {\n    \"A\": \"1\",\n}\n}",
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("app.json:5: not valid JSON ("), "{text}");
        let e = parse(
            "app.json",
            "{\"formation\": {\"web\": {\"quantity\": \"two\"}}}",
        )
        .unwrap_err();
        assert!(!e.to_string().contains("two"), "{e}");
        assert!(e
            .to_string()
            .starts_with("app.json:1: valid JSON but not an app.json manifest"));
    }
}
