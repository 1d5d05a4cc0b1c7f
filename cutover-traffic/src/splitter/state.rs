//! The splitter's weight on disk (`cutover.traffic.json` beside the plan): written, flushed
//! and renamed before the weight is used, so a restarted splitter goes on where it was.

use std::io::Write;
use std::path::Path;

#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    new_percent: u8,
}

pub fn load(path: &Path) -> Result<Option<u8>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str::<State>(&text)
            .map(|s| Some(s.new_percent.min(100)))
            .map_err(|e| {
                format!(
                    "{} is damaged ({e}); remove it and set the weight again with `cutover traffic promote`/`abort`",
                    path.display()
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

pub fn save(path: &Path, new_percent: u8) -> Result<(), String> {
    let tmp = path.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(
            serde_json::to_string(&State { new_percent })
                .unwrap_or_default()
                .as_bytes(),
        )?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        format!(
            "cannot write {}: {e}; check that its folder is writable",
            path.display()
        )
    })
}
