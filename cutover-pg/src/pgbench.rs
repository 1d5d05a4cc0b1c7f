//! pgbench as a load generator: start it, let it run, read its verdict.
//!
//! The verdict is pgbench's own summary: transactions processed, failed transactions, and
//! any "aborted" client. A client that hits an error it does not retry aborts, so "zero
//! failed, none aborted, exit 0" is what "no client saw an error" means.

use cutover_core::ConnString;
use tokio::process::Child;

use crate::connect::client_program;
use crate::error::PgError;

/// What pgbench reported at the end.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Verdict {
    pub exit_code: i32,
    pub processed: u64,
    pub failed: u64,
    /// Lines that say a client aborted.
    pub aborted: Vec<String>,
    pub tps: f64,
    /// The longest transaction latency pgbench saw, in ms, when it was asked to log (-l).
    pub max_latency_ms: Option<f64>,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        self.exit_code == 0 && self.failed == 0 && self.aborted.is_empty()
    }
}

/// `pgbench -i -q -s scale`: the four pgbench tables with their data (the demo's and the
/// tests' application). Its error output, trimmed, is the error.
pub async fn init(url: &ConnString, scale: u32) -> Result<(), PgError> {
    let out = client_program("pgbench", Some(url))
        .args(["-i", "-q", "-s", &scale.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| crate::connect::cannot_run("pgbench", e))?;
    if !out.status.success() {
        return Err(PgError::Io(format!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Starts `pgbench` against `url` with `args` (e.g. `-c 16 -j 16 -T 10 -M prepared -n`).
pub fn start(url: &ConnString, args: &[&str]) -> Result<Child, PgError> {
    let mut cmd = client_program("pgbench", Some(url));
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd.spawn()
        .map_err(|e| crate::connect::cannot_run("pgbench", e))
}

/// Waits for pgbench to end and reads its summary.
pub async fn finish(child: Child) -> Result<Verdict, PgError> {
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| PgError::Io(format!("pgbench: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    Ok(parse(out.status.code().unwrap_or(-1), &stdout, &stderr))
}

/// Reads pgbench's summary lines.
pub fn parse(exit_code: i32, stdout: &str, stderr: &str) -> Verdict {
    let number = |line: &str| -> Option<f64> {
        line.split(':')
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let mut v = Verdict {
        exit_code,
        ..Default::default()
    };
    for line in stdout.lines().chain(stderr.lines()) {
        let l = line.trim();
        if l.starts_with("number of transactions actually processed") {
            v.processed = number(l).unwrap_or(0.0) as u64;
        } else if l.starts_with("number of failed transactions") {
            v.failed = number(l).unwrap_or(0.0) as u64;
        } else if let Some(rest) = l.strip_prefix("tps = ") {
            v.tps = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
        } else if l.contains("aborted") && !l.starts_with("number of transactions") {
            v.aborted.push(l.to_string());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_summary() {
        let out = "transaction type: <builtin: TPC-B (sort of)>
number of clients: 16
number of transactions actually processed: 12345
number of failed transactions: 0 (0.000%)
latency average = 12.9 ms
tps = 1234.567890 (without initial connection time)";
        let v = parse(0, out, "");
        assert_eq!(v.processed, 12345);
        assert_eq!(v.failed, 0);
        assert!((v.tps - 1234.56789).abs() < 1e-6);
        assert!(v.clean());
        let bad = parse(2, out, "pgbench: error: client 3 aborted in command 5 (SQL) of script 0; ERROR:  permission denied");
        assert!(!bad.clean());
        assert_eq!(bad.aborted.len(), 1);
    }
}
