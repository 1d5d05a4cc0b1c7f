//! Heroku-isms: code that behaves differently once the app no longer runs on a dyno.
//!
//! The classic case is the Heroku Django template: `IS_HEROKU_APP = "DYNO" in os.environ`,
//! then `ALLOWED_HOSTS = ["*"]` on Heroku and localhost-only elsewhere. On ECS `DYNO` is
//! unset, so the app takes the "local" branch: `DEBUG` turns on and every request gets a 400.
//! Nothing fails at build time, which is why we look for it before the move. Each finding
//! names file and line and says what to write instead.
//!
//! This is a line scanner, not a parser: it knows identifiers and Python's indented blocks,
//! which covers how these checks are written in practice. Comment-only lines are skipped.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use crate::AppError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Path relative to the app directory, with `/` separators.
    pub file: String,
    pub line: usize,
    pub rule: &'static str,
    pub message: String,
    pub fix: String,
}

const SKIP_DIRS: &[&str] = &[
    ".git",
    "node_modules",
    "vendor",
    "venv",
    ".venv",
    "__pycache__",
    "tmp",
    "log",
    "dist",
    "build",
    "target",
    ".heroku",
    "coverage",
    "staticfiles",
];

const EXTENSIONS: &[&str] = &[
    "py", "rb", "erb", "rake", "ru", "js", "mjs", "cjs", "ts", "tsx", "jsx", "go", "java", "kt",
    "php", "yml", "yaml", "toml", "cfg", "ini", "conf",
];

/// Files larger than this are generated or vendored, not the app's own code.
const MAX_FILE: u64 = 1 << 20;

/// Scans every source file under `dir`, in path order.
pub fn scan(dir: &Path) -> Result<Vec<Finding>, AppError> {
    let mut files = vec![];
    walk(dir, dir, &mut files)?;
    files.sort();
    let mut findings = vec![];
    for rel in files {
        let path = dir.join(&rel);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // not UTF-8: not source we can reason about
        };
        findings.extend(scan_text(&rel, &text));
    }
    Ok(findings)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), AppError> {
    let entries = std::fs::read_dir(dir).map_err(|source| AppError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if !SKIP_DIRS.contains(&name.as_str()) {
                walk(root, &path, out)?;
            }
        } else if kind.is_file() {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let small = entry
                .metadata()
                .map(|m| m.len() <= MAX_FILE)
                .unwrap_or(false);
            if EXTENSIONS.contains(&ext) && small {
                if let Ok(rel) = path.strip_prefix(root) {
                    let parts: Vec<String> = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    out.push(parts.join("/"));
                }
            }
        }
    }
    Ok(())
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Occurrences of `word` in `line` not inside a longer identifier.
fn has_word(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// `HEROKU_*` identifiers on the line.
fn heroku_vars(line: &str) -> Vec<String> {
    let mut out = vec![];
    for (i, _) in line.match_indices("HEROKU_") {
        if line[..i].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let name: String = line[i..].chars().take_while(|c| is_ident(*c)).collect();
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

fn is_comment(trimmed: &str) -> bool {
    ["#", "//", "/*", "*", "--", "<%#"]
        .iter()
        .any(|p| trimmed.starts_with(p))
}

/// The name a line assigns, if it is `NAME = ...` (optionally after const/let/var).
fn assigned_name(trimmed: &str) -> Option<&str> {
    let rest = ["const ", "let ", "var "]
        .iter()
        .find_map(|k| trimmed.strip_prefix(k))
        .unwrap_or(trimmed);
    let end = rest.find(|c: char| !is_ident(c))?;
    let (name, tail) = rest.split_at(end);
    let tail = tail.trim_start();
    let tail = tail.strip_prefix(':').map_or(tail, |t| {
        // `name: type = value` in Go/TS; keep it simple: skip to the `=`
        t.find('=').map_or("", |i| &t[i..])
    });
    (!name.is_empty() && tail.starts_with('=') && !tail.starts_with("==")).then_some(name)
}

fn mentions_heroku(line: &str, derived: &BTreeSet<String>) -> bool {
    has_word(line, "DYNO")
        || !heroku_vars(line).is_empty()
        || line.to_ascii_lowercase().contains("herokuapp.com")
        || derived.iter().any(|d| has_word(line, d))
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// For a Python line, the conditions of the `if`/`elif`/`else` blocks enclosing it.
fn enclosing_conditions<'a>(lines: &[&'a str], at: usize) -> Vec<&'a str> {
    let mut out = vec![];
    let mut level = indent(lines[at]);
    let mut i = at;
    while i > 0 && level > 0 {
        i -= 1;
        let l = lines[i];
        let t = l.trim();
        if t.is_empty() || t.starts_with('#') || indent(l) >= level {
            continue;
        }
        level = indent(l);
        if t.starts_with("if ") || t.starts_with("elif ") {
            out.push(t);
        } else if t.starts_with("else") {
            // the branch taken when the `if` above it is false: find that `if`
            let mut j = i;
            while j > 0 {
                j -= 1;
                let u = lines[j].trim();
                if indent(lines[j]) == level && (u.starts_with("if ") || u.starts_with("elif ")) {
                    out.push(u);
                    break;
                }
                if indent(lines[j]) < level && !u.is_empty() {
                    break;
                }
            }
        }
    }
    out
}

/// Scans one file's text; `file` is its relative path.
pub fn scan_text(file: &str, text: &str) -> Vec<Finding> {
    let lines: Vec<&str> = text.lines().collect();
    let python = file.ends_with(".py");
    // names computed from Heroku's variables (`IS_HEROKU_APP = "DYNO" in os.environ`)
    let mut derived = BTreeSet::new();
    for l in &lines {
        let t = l.trim();
        if !is_comment(t) && mentions_heroku(t, &derived) {
            if let Some(name) = assigned_name(t) {
                derived.insert(name.to_string());
            }
        }
    }
    let mut out = vec![];
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim();
        if t.is_empty() || is_comment(t) {
            continue;
        }
        let mut push = |rule: &'static str, message: String, fix: &str| {
            out.push(Finding {
                file: file.to_string(),
                line: i + 1,
                rule,
                message,
                fix: fix.to_string(),
            })
        };
        if has_word(t, "DYNO") {
            push(
                "dyno-check",
                "checks `DYNO`, which only Heroku sets: elsewhere this takes the not-on-Heroku branch".into(),
                "test a variable you set on the new platform (e.g. IS_PRODUCTION=1 in the task definition)",
            );
        }
        for var in heroku_vars(t) {
            if var.starts_with("HEROKU_POSTGRESQL_") {
                push(
                    "heroku-var",
                    format!("reads `{var}`, an add-on variable that will not exist after the move"),
                    "read DATABASE_URL, which points at the cutover proxy while the move runs and at the new database after it",
                );
            } else {
                push(
                    "heroku-var",
                    format!("reads `{var}`, which only Heroku sets (dyno metadata)"),
                    "set it explicitly on the new platform, or stop depending on it",
                );
            }
        }
        if t.to_ascii_lowercase().contains("herokuapp.com") {
            push(
                "herokuapp-host",
                "hard-codes a *.herokuapp.com host, which stops being the app's address".into(),
                "read the host from an environment variable (e.g. APP_HOST) and set it to the new domain",
            );
        }
        let Some(name) = assigned_name(t) else {
            continue;
        };
        // a setting chosen by a Heroku-derived flag; the flag itself is reported above
        let setting = name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !setting || derived.contains(name) {
            continue;
        }
        let mut via = mentions_heroku(t, &derived);
        if python && !via {
            via = enclosing_conditions(&lines, i)
                .iter()
                .any(|c| mentions_heroku(c, &derived));
        }
        if !via {
            continue;
        }
        match name {
            "ALLOWED_HOSTS" => push(
                "allowed-hosts",
                "ALLOWED_HOSTS is chosen by Heroku variables: off Heroku it gets the other value and \
                 Django answers 400 Bad Request (a wildcard is safe only behind Heroku's router)"
                    .into(),
                "list the new hosts from the environment: ALLOWED_HOSTS = os.environ[\"ALLOWED_HOSTS\"].split(\",\")",
            ),
            "DEBUG" => push(
                "debug-flag",
                "DEBUG is chosen by Heroku variables: off Heroku it turns on in production".into(),
                "set it from an explicit variable: DEBUG = os.environ.get(\"DEBUG\") == \"1\"",
            ),
            "DATABASES" => push(
                "database-branch",
                "DATABASES is chosen by Heroku variables: off Heroku the app uses the other database (SQLite in the template)".into(),
                "configure the database from DATABASE_URL unconditionally (dj_database_url.config(env=\"DATABASE_URL\"))",
            ),
            _ => push(
                "heroku-branch",
                format!("{name} is chosen by Heroku variables: off Heroku it gets the other branch's value"),
                "set it from a variable of its own on the new platform",
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"import os

# The `DYNO` env var is set on Heroku CI, but it's not a real Heroku app
IS_HEROKU_APP = "DYNO" in os.environ and not "CI" in os.environ

if not IS_HEROKU_APP:
    DEBUG = True

if IS_HEROKU_APP:
    ALLOWED_HOSTS = ["*"]
else:
    ALLOWED_HOSTS = [".localhost", "127.0.0.1", "[::1]"]
if IS_HEROKU_APP:
    DATABASES = {"default": dj_database_url.config()}
DYNOMITE = 1
"#;

    #[test]
    fn the_heroku_django_template_is_caught() {
        let f = scan_text("app/settings.py", TEMPLATE);
        let got: Vec<(usize, &str)> = f.iter().map(|f| (f.line, f.rule)).collect();
        assert_eq!(
            got,
            [
                (4, "dyno-check"),
                (7, "debug-flag"),
                (10, "allowed-hosts"),
                (12, "allowed-hosts"),
                (14, "database-branch")
            ]
        );
    }

    #[test]
    fn hosts_vars_and_other_languages() {
        let js = "const origin = 'https://shop.herokuapp.com';\nif (process.env.DYNO) { trustProxy() }\nconst name = process.env.HEROKU_APP_NAME;\n// DYNO in a comment\n";
        let f = scan_text("server.js", js);
        let got: Vec<(usize, &str)> = f.iter().map(|f| (f.line, f.rule)).collect();
        assert_eq!(
            got,
            [(1, "herokuapp-host"), (2, "dyno-check"), (3, "heroku-var")]
        );
        assert!(f[2].message.contains("HEROKU_APP_NAME"));
    }
}
