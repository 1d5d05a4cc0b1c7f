//! The proxy's active backend, kept on disk.
//!
//! A switch writes the new backend here (to a temporary file, flushed, then renamed over the
//! old one, then the folder flushed) *before* any session moves. A proxy that restarts reads
//! it back, so it never returns to the old database on its own: after a switchover the old
//! database is fenced and stale, and sending traffic there would lose writes.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Which database the proxy sends sessions to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Source,
    Target,
}

impl Backend {
    pub fn other(self) -> Backend {
        match self {
            Backend::Source => Backend::Target,
            Backend::Target => Backend::Source,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Source => "source",
            Backend::Target => "target",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    pub active: Backend,
    /// Bumped by every switch.
    pub epoch: u64,
}

impl Default for Durable {
    fn default() -> Self {
        Durable {
            active: Backend::Source,
            epoch: 0,
        }
    }
}

/// Reads the state; a missing file means a proxy that never switched: the source.
pub fn load(path: &Path) -> Result<Durable, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            format!(
                "{} is not a proxy state file ({e}); restore it, or write {{\"active\": \"source\", \"epoch\": 0}} if you know the source is the live database",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Durable::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes the state so that a crash leaves either the old file or the new one, whole.
pub fn store(path: &Path, state: &Durable) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut tmp = tempfile_in(dir, path).map_err(fail)?;
    let text = serde_json::to_string_pretty(state).expect("state serializes");
    tmp.1.write_all(text.as_bytes()).map_err(fail)?;
    tmp.1.sync_all().map_err(fail)?;
    drop(tmp.1);
    std::fs::rename(&tmp.0, path).map_err(fail)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn tempfile_in(dir: &Path, path: &Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let name = format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("proxy"),
        std::process::id()
    );
    let tmp = dir.join(name);
    let file = std::fs::File::create(&tmp)?;
    Ok((tmp, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("cutover-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cutover.proxy.json");
        assert_eq!(load(&path).unwrap(), Durable::default());
        let s = Durable {
            active: Backend::Target,
            epoch: 3,
        };
        store(&path, &s).unwrap();
        assert_eq!(load(&path).unwrap(), s);
        std::fs::write(&path, "{").unwrap();
        assert!(load(&path).unwrap_err().contains("not a proxy state file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
