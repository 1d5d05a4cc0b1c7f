//! Reading config vars: `heroku config --json`, `heroku addons --json`, and the sets
//! `env diff` compares.
//!
//! Only the JSON form of `heroku config` is accepted. The shell form (`--shell`) quotes values
//! for a shell, and copying that text is how values end up with stray quotes on the new
//! platform; we say so and ask for `--json` instead. No error here ever quotes a value.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{json_error, read};
use crate::AppError;

/// Config vars by name, in name order.
pub type Vars = BTreeMap<String, String>;

const CONFIG_FIX: &str =
    "pass the output of `heroku config --json --app APP` (an object of name → string)";

/// Reads `heroku config --json` output.
pub fn read_config(path: &Path) -> Result<Vars, AppError> {
    let text = read(path)?;
    parse_config(&path.display().to_string(), &text)
}

/// Parses `heroku config --json` output; `file` names it in errors.
pub fn parse_config(file: &str, text: &str) -> Result<Vars, AppError> {
    let first = text.trim_start().chars().next();
    if first != Some('{') {
        let line = text.lines().position(|l| !l.trim().is_empty()).unwrap_or(0) + 1;
        let looks_shell = text
            .lines()
            .any(|l| l.contains("='") || l.starts_with("export ") || l.contains(": "));
        let message = if looks_shell {
            "this is the text or shell-quoted form of `heroku config`, whose quoting changes values"
        } else {
            "not a JSON object"
        };
        return Err(AppError::Malformed {
            file: file.to_string(),
            line,
            message: message.to_string(),
            fix: CONFIG_FIX.to_string(),
        });
    }
    serde_json::from_str(text)
        .map_err(|e| json_error(file, &e, "an object of name → string", CONFIG_FIX))
}

/// One add-on as `heroku addons --json` prints it (the fields we use).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct AddonInfo {
    /// The add-on's own name (`postgresql-curved-12345`).
    pub name: String,
    pub addon_service: Service,
    #[serde(default)]
    pub plan: Option<Plan>,
    /// The config vars the add-on sets and may rotate.
    #[serde(default)]
    pub config_vars: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Service {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
}

/// Reads `heroku addons --json` output.
pub fn read_addons(path: &Path) -> Result<Vec<AddonInfo>, AppError> {
    let text = read(path)?;
    serde_json::from_str(&text).map_err(|e| {
        json_error(
            &path.display().to_string(),
            &e,
            "a list of add-ons with addon_service and config_vars",
            "pass the output of `heroku addons --json --app APP`",
        )
    })
}

/// Reads a set of variables for `env diff`: `heroku config --json` or a Secrets Manager
/// JSON object, a list of `{name|Name|key, value|Value}` (ECS environment, SSM parameters,
/// the Vercel env payload), or a `.env` file.
pub fn read_env_set(path: &Path) -> Result<Vars, AppError> {
    let text = read(path)?;
    parse_env_set(&path.display().to_string(), &text)
}

const SET_FIX: &str = "pass `heroku config --json` output, a JSON object of name → string, a JSON list of {name, value} entries, or a .env file";

pub fn parse_env_set(file: &str, text: &str) -> Result<Vars, AppError> {
    match text.trim_start().chars().next() {
        Some('{') => serde_json::from_str(text)
            .map_err(|e| json_error(file, &e, "an object of name → string", SET_FIX)),
        Some('[') => {
            let entries: Vec<BTreeMap<String, serde_json::Value>> = serde_json::from_str(text)
                .map_err(|e| json_error(file, &e, "a list of {name, value} objects", SET_FIX))?;
            let mut vars = Vars::new();
            for (i, e) in entries.iter().enumerate() {
                let field = |keys: &[&str]| {
                    keys.iter()
                        .find_map(|k| e.get(*k).and_then(|v| v.as_str()))
                        .map(str::to_string)
                };
                let (Some(name), Some(value)) =
                    (field(&["name", "Name", "key"]), field(&["value", "Value"]))
                else {
                    return Err(AppError::Malformed {
                        file: file.to_string(),
                        line: 1,
                        message: format!("entry {} has no name and string value", i + 1),
                        fix: SET_FIX.to_string(),
                    });
                };
                // SSM parameter names are paths: /app/NAME → NAME
                let name = name.rsplit('/').next().unwrap_or(&name).to_string();
                vars.insert(name, value);
            }
            Ok(vars)
        }
        _ => parse_dotenv(file, text),
    }
}

/// Parses a `.env` file: `NAME=value`, optional `export `, `#` comments, values bare,
/// 'single-quoted' (literal) or "double-quoted" (with \n \" \\ \$ escapes).
pub fn parse_dotenv(file: &str, text: &str) -> Result<Vars, AppError> {
    let mut vars = Vars::new();
    for (i, raw) in text.lines().enumerate() {
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let t = t.strip_prefix("export ").unwrap_or(t);
        let bad = |message: &str| AppError::Malformed {
            file: file.to_string(),
            line: i + 1,
            message: message.to_string(),
            fix: "write NAME=value, one per line".to_string(),
        };
        let Some((name, value)) = t.split_once('=') else {
            return Err(bad("not a NAME=value line"));
        };
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad("the name is not letters, digits and `_`"));
        }
        let value = value.trim();
        let value = if let Some(inner) = value.strip_prefix('"') {
            let Some(inner) = inner.strip_suffix('"') else {
                return Err(bad("a double-quoted value is not closed on its line"));
            };
            unescape(inner)
        } else if let Some(inner) = value.strip_prefix('\'') {
            let Some(inner) = inner.strip_suffix('\'') else {
                return Err(bad("a single-quoted value is not closed on its line"));
            };
            inner.to_string()
        } else {
            value.to_string()
        };
        vars.insert(name.to_string(), value);
    }
    Ok(vars)
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_config_reads_and_shell_form_is_refused() {
        let v = parse_config("c.json", r#"{"A": "1", "B": "x y"}"#).unwrap();
        assert_eq!(v["B"], "x y");
        let e = parse_config("c.json", "DATABASE_URL='postgres://u:hunter2@h/db'\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("c.json:1: this is the text or shell-quoted form"),
            "{text}"
        );
        assert!(!text.contains("hunter2"));
        let e = parse_config("c.json", "{\n  \"A\": \"hunter2\",\n  \"B\": 5\n}").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("c.json:3: valid JSON but not an object of name → string"),
            "{text}"
        );
        assert!(!text.contains("hunter2"));
        let e = parse_config("c.json", "{\n  \"A\": \"hunter2\"\n  \"B\": \"x\"\n}").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("c.json:3: not valid JSON (expected `,` or `}`)"),
            "{e}"
        );
    }

    #[test]
    fn env_sets_in_every_format() {
        let a = parse_env_set("a", r#"[{"name": "A", "value": "1"}, {"Name": "/app/B", "Value": "2", "Type": "String"}, {"key": "C", "value": "3", "type": "plain"}]"#).unwrap();
        assert_eq!(
            a.into_iter().collect::<Vec<_>>(),
            [
                ("A".into(), "1".into()),
                ("B".into(), "2".into()),
                ("C".into(), "3".into())
            ]
        );
        let d = parse_dotenv(".env", "# c\nexport A=1\nB=\"x\\ny \\$z\"\nC='a\"b'\n").unwrap();
        assert_eq!(d["B"], "x\ny $z");
        assert_eq!(d["C"], "a\"b");
        let e = parse_dotenv(".env", "A=1\nB=\"open\n").unwrap_err();
        assert!(e
            .to_string()
            .starts_with(".env:2: a double-quoted value is not closed"));
    }
}
