//! Writing generated files: show first, never clobber, nothing at all in a dry run.
//!
//! Every command of `cutover app` produces a list of [`Artifact`]s before touching the disk.
//! The caller prints them (the `preview`, in which secret values are masked), and
//! [`write()`] then checks *every* destination before writing *any*: one existing file without
//! `force` refuses the whole set, so a refused run leaves the directory as it was.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::AppError;

/// One file to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifact {
    /// Relative to the output directory.
    pub path: PathBuf,
    /// What is written. Not serialized: it may hold secret values.
    #[serde(skip)]
    pub contents: String,
    /// What is shown: the contents with secret values masked.
    #[serde(skip)]
    pub preview: String,
    /// Holds secret values: written with mode 0600 and shown only masked.
    pub sensitive: bool,
}

impl Artifact {
    /// A file with no secret in it: shown as written.
    pub fn plain(path: impl Into<PathBuf>, contents: String) -> Artifact {
        Artifact {
            path: path.into(),
            preview: contents.clone(),
            contents,
            sensitive: false,
        }
    }

    /// A file holding secrets, with its masked preview.
    pub fn sensitive(path: impl Into<PathBuf>, contents: String, preview: String) -> Artifact {
        Artifact {
            path: path.into(),
            contents,
            preview,
            sensitive: true,
        }
    }
}

/// What happened (or would happen) to one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    pub path: PathBuf,
    /// "create", "overwrite", "unchanged".
    pub action: &'static str,
    pub bytes: usize,
    pub sensitive: bool,
}

/// Checks every destination, then writes every file unless `dry_run`. Returns what was (or
/// would be) done, in input order.
pub fn write(
    out: &Path,
    artifacts: &[Artifact],
    force: bool,
    dry_run: bool,
) -> Result<Vec<Planned>, AppError> {
    let mut planned = vec![];
    let mut existing = vec![];
    for a in artifacts {
        let path = out.join(&a.path);
        let action = match std::fs::read(&path) {
            Ok(old) if old == a.contents.as_bytes() => "unchanged",
            Ok(_) => {
                existing.push(path.clone());
                "overwrite"
            }
            Err(_) if path.is_dir() => {
                return Err(AppError::Unsupported(format!(
                    "{} is a directory; remove it or pass --out to write elsewhere",
                    path.display()
                )))
            }
            Err(_) => "create",
        };
        planned.push(Planned {
            path,
            action,
            bytes: a.contents.len(),
            sensitive: a.sensitive,
        });
    }
    if !existing.is_empty() && !force {
        return Err(AppError::Exists(existing));
    }
    if dry_run {
        return Ok(planned);
    }
    for (a, p) in artifacts.iter().zip(&planned) {
        if p.action == "unchanged" {
            continue;
        }
        write_one(&p.path, &a.contents, a.sensitive)?;
    }
    Ok(planned)
}

fn write_one(path: &Path, contents: &str, sensitive: bool) -> Result<(), AppError> {
    let err = |source| AppError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if sensitive {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(err)?;
    #[cfg(unix)]
    if sensitive {
        // an existing file keeps its mode through open(); make sure it is private now
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(err)?;
    }
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_writes_nothing_and_existing_files_need_force() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            Artifact::plain("a/one.txt", "1\n".into()),
            Artifact::sensitive("two.env", "X=secret\n".into(), "X=********\n".into()),
        ];
        let p = write(dir.path(), &files, false, true).unwrap();
        assert_eq!(
            p.iter().map(|p| p.action).collect::<Vec<_>>(),
            ["create", "create"]
        );
        assert!(!dir.path().join("a").exists() && !dir.path().join("two.env").exists());

        write(dir.path(), &files, false, false).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a/one.txt")).unwrap(),
            "1\n"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("two.env"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let changed = [
            Artifact::plain("a/one.txt", "changed\n".into()),
            Artifact::plain("three.txt", "3\n".into()),
        ];
        let e = write(dir.path(), &changed, false, false).unwrap_err();
        assert!(
            e.to_string().ends_with(
                "one.txt already exists; pass --force to overwrite, or --out to write elsewhere"
            ),
            "{e}"
        );
        assert!(
            !dir.path().join("three.txt").exists(),
            "a refused set writes nothing"
        );
        let p = write(dir.path(), &changed, true, false).unwrap();
        assert_eq!(p[0].action, "overwrite");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a/one.txt")).unwrap(),
            "changed\n"
        );
        let p = write(dir.path(), &changed, false, false).unwrap();
        assert_eq!(p[0].action, "unchanged");
    }
}
