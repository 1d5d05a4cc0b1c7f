//! Errors of the app commands. Each says what is wrong, where (file and line when there is
//! one), and how to fix it, in one line, and never quotes a config value.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A file the user gave us does not parse.
    #[error("{file}:{line}: {message}; {fix}")]
    Malformed {
        file: String,
        line: usize,
        message: String,
        fix: String,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0} is not a directory; pass the app's source directory (the one holding the Procfile)"
    )]
    NotADirectory(PathBuf),
    #[error("{0} does not exist; pass the app's source directory (the one holding the Procfile)")]
    MissingDirectory(PathBuf),
    #[error("no language Heroku would build found in {0}: none of Gemfile, package.json, requirements.txt, Pipfile, pyproject.toml, pom.xml, build.gradle, composer.json, go.mod; run the command in the app's source directory")]
    NoLanguage(PathBuf),
    #[error("{} already exist{}; pass --force to overwrite, or --out to write elsewhere", list(.0), if .0.len() == 1 { "s" } else { "" })]
    Exists(Vec<PathBuf>),
    /// The app cannot be expressed on the requested target.
    #[error("{0}")]
    Unsupported(String),
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Turns a serde_json error into a [`AppError::Malformed`] that names the file and line but
/// never repeats input: data errors ("invalid type: string \"...\"") can quote a value, so
/// only syntax errors keep serde's own wording.
pub fn json_error(file: &str, e: &serde_json::Error, expected: &str, fix: &str) -> AppError {
    let message = match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            let text = e.to_string();
            let text = match text.rfind(" at line ") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            format!("not valid JSON ({text})")
        }
        serde_json::error::Category::Data => format!("valid JSON but not {expected}"),
        serde_json::error::Category::Io => "cannot be read".to_string(),
    };
    AppError::Malformed {
        file: file.to_string(),
        line: e.line(),
        message,
        fix: fix.to_string(),
    }
}

/// Reads a text file, naming it in the error.
pub fn read(path: &std::path::Path) -> Result<String, AppError> {
    std::fs::read_to_string(path).map_err(|source| AppError::Read {
        path: path.to_path_buf(),
        source,
    })
}
