//! Human and JSON output. Text goes to stdout, progress and notes to stderr; with `--json`
//! stdout holds exactly one JSON document.

use std::io::IsTerminal;

use serde::Serialize;

/// `-q`: no step lines and no progress on stderr.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

/// True under `-q`.
pub fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// Set once stdout's reader has gone (a closed pipe, as with `| head -1`).
static STDOUT_GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What `outln!` and `out!` write to stdout. Once its reader has gone, the rest of the output
/// is dropped and the command goes on to its end and its own exit code: output cut short
/// never panics, and never stops a command half-way through a change to production.
pub fn write_out(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    use std::sync::atomic::Ordering::Relaxed;
    if STDOUT_GONE.load(Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| {
        if newline {
            out.write_all(b"\n")
        } else {
            Ok(())
        }
    });
    if let Err(e) = written {
        STDOUT_GONE.store(true, Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("warning: cannot write to stdout ({e}); the rest of the output is dropped");
        }
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Writes one refresh of a watched view to stdout. `Ok(false)` means its reader has gone (a
/// closed pipe, as with `| head -3`): the watch then ends quietly with success, as a Unix
/// filter does, instead of dying on the next write.
pub fn frame(text: &str) -> anyhow::Result<bool> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => anyhow::bail!("cannot write to stdout: {e}"),
    }
}

/// True when colours may be used on stderr.
pub fn color() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

/// True when progress bars may be drawn.
pub fn interactive() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("CI").is_none()
}

/// A plain aligned table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// 1536 → "1.5 KiB".
pub fn bytes(n: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v.abs() >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Milliseconds → "1.2s", "3m04s".
pub fn millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60)
    }
}

/// Unix milliseconds → RFC 3339 in UTC.
pub fn timestamp(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Passwords the log writer scrubs. The log subscriber is process-wide by nature, so this list
/// is too; commands add a plan's passwords as soon as they load it.
static LOG_SECRETS: std::sync::RwLock<Vec<cutover_core::Secret>> =
    std::sync::RwLock::new(Vec::new());

/// Adds secrets the log writer must never print.
pub fn hide_in_logs(secrets: impl IntoIterator<Item = cutover_core::Secret>) {
    if let Ok(mut list) = LOG_SECRETS.write() {
        list.extend(secrets);
    }
}

/// Writes log lines to stderr with every known secret replaced, whatever the library that
/// logged them (a driver logging a statement at debug level, say).
pub struct RedactingStderr;

impl std::io::Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let clean = match LOG_SECRETS.read() {
            Ok(list) => cutover_core::redact(&text, list.iter()),
            Err(_) => text.into_owned(),
        };
        std::io::stderr().write_all(clean.as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingStderr;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingStderr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(millis(1234), "1.2s");
        assert_eq!(millis(184_000), "3m04s");
        assert_eq!(
            table(&["a", "bb"], &[vec!["xxx".into(), "y".into()]]),
            "a    bb\nxxx  y\n"
        );
    }
}
