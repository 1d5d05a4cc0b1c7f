//! The Procfile: one `type: command` per line. `web` gets the HTTP traffic on `$PORT`,
//! `release` runs once per deploy before new processes start, anything else (`worker`,
//! `clock`, ...) is a background process.
//!
//! Heroku silently skips a line it cannot read, which is how a typo turns into a process that
//! never runs. We refuse such a line instead, naming its number.

use serde::Serialize;

use crate::AppError;

/// One process type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    pub name: String,
    pub command: String,
    /// Line in the Procfile.
    pub line: usize,
}

/// The processes of an app, in Procfile order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Procfile {
    pub processes: Vec<Process>,
}

impl Procfile {
    pub fn get(&self, name: &str) -> Option<&Process> {
        self.processes.iter().find(|p| p.name == name)
    }

    pub fn web(&self) -> Option<&Process> {
        self.get("web")
    }

    pub fn release(&self) -> Option<&Process> {
        self.get("release")
    }

    /// Long-running processes other than web (workers, clocks, ...).
    pub fn others(&self) -> impl Iterator<Item = &Process> {
        self.processes
            .iter()
            .filter(|p| p.name != "web" && p.name != "release")
    }
}

/// Parses Procfile text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Procfile, AppError> {
    let mut processes: Vec<Process> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let malformed = |message: String| AppError::Malformed {
            file: file.to_string(),
            line,
            message,
            fix: "write each process as `type: command`, e.g. `web: gunicorn app.wsgi`, with a \
                  type of letters, digits, `_` or `-`"
                .to_string(),
        };
        let Some((name, command)) = trimmed.split_once(':') else {
            return Err(malformed("no `:` after the process type".into()));
        };
        let name = name.trim_end();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(malformed("the process type is not a plain name".into()));
        }
        let command = command.trim();
        if command.is_empty() {
            return Err(malformed(format!("process type `{name}` has no command")));
        }
        if let Some(first) = processes.iter().find(|p| p.name == name) {
            return Err(AppError::Malformed {
                file: file.to_string(),
                line,
                message: format!(
                    "process type `{name}` is already defined on line {}",
                    first.line
                ),
                fix: "keep one line per process type".to_string(),
            });
        }
        processes.push(Process {
            name: name.to_string(),
            command: command.to_string(),
            line,
        });
    }
    Ok(Procfile { processes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_types_comments_and_blank_lines() {
        let p = parse(
            "Procfile",
            "# processes\nweb: gunicorn app.wsgi --bind 0.0.0.0:$PORT\n\nrelease:  ./manage.py migrate\nworker: celery -A app worker\n",
        )
        .unwrap();
        assert_eq!(
            p.web().unwrap().command,
            "gunicorn app.wsgi --bind 0.0.0.0:$PORT"
        );
        assert_eq!(p.release().unwrap().command, "./manage.py migrate");
        assert_eq!(p.release().unwrap().line, 4);
        let others: Vec<&str> = p.others().map(|p| p.name.as_str()).collect();
        assert_eq!(others, ["worker"]);
    }

    #[test]
    fn a_malformed_line_is_named() {
        let e = parse(
            "app/Procfile",
            "web: node server.js\nworker node worker.js\n",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "app/Procfile:2: no `:` after the process type; write each process as `type: command`, \
             e.g. `web: gunicorn app.wsgi`, with a type of letters, digits, `_` or `-`"
        );
        let e = parse("Procfile", "web: a\nweb: b\n").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("Procfile:2: process type `web` is already defined on line 1"));
        let e = parse("Procfile", "web:\n").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("Procfile:1: process type `web` has no command"));
    }
}
