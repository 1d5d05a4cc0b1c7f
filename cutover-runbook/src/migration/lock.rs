//! One command drives a migration at a time: `apply`, `rollback` and `finish` hold an
//! exclusive lock on a file beside the plan (`<plan>.lock`) for as long as they run. The
//! kernel releases it when the process ends however it ends (a SIGKILL included), so a
//! killed run never leaves a stale lock. The journal beside it is local too: the lock guards
//! the commands of one place, the databases are guarded by their own fence.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use super::MigrationError;

pub struct Lock {
    _file: Flock<File>,
}

pub fn path(plan: &Path) -> PathBuf {
    let stem = plan
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("cutover");
    plan.with_file_name(format!("{stem}.lock"))
}

impl Lock {
    /// The lock, or None when another command holds it.
    pub fn try_take(plan: &Path, command: &str) -> Result<Option<Lock>, MigrationError> {
        let p = path(plan);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(|e| {
                MigrationError::refused(format!(
                    "cannot open {}: {e}; check that the plan's folder is writable",
                    p.display()
                ))
            })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut f) => {
                let _ = f.set_len(0);
                let _ = f.rewind();
                let _ = write!(f, "{} {command}", std::process::id());
                let _ = f.flush();
                Ok(Some(Lock { _file: f }))
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(MigrationError::refused(format!(
                "cannot lock {}: {e}",
                p.display()
            ))),
        }
    }

    /// Waits for the lock, at most `wait`.
    pub async fn take(plan: &Path, command: &str, wait: Duration) -> Result<Lock, MigrationError> {
        let started = Instant::now();
        loop {
            if let Some(l) = Lock::try_take(plan, command)? {
                return Ok(l);
            }
            if started.elapsed() >= wait {
                return Err(MigrationError::Busy(format!(
                    "{} still drives this migration after {}s; stop it, then run this again",
                    holder(plan),
                    wait.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The lock, or an error naming who holds it.
    pub fn take_now(plan: &Path, command: &str) -> Result<Lock, MigrationError> {
        Lock::try_take(plan, command)?.ok_or_else(|| {
            MigrationError::Busy(format!(
                "{} drives this migration now; wait for it to end (`cutover rollback` stops it)",
                holder(plan)
            ))
        })
    }

    /// True when a command holds the lock now.
    pub fn held(plan: &Path) -> bool {
        matches!(Lock::try_take(plan, "status"), Ok(None))
    }
}

/// "cutover apply (pid 123)", as the lock file says.
pub fn holder(plan: &Path) -> String {
    let mut text = String::new();
    let _ = File::open(path(plan)).and_then(|mut f| f.read_to_string(&mut text));
    match text.split_once(' ') {
        Some((pid, command)) => format!("cutover {command} (pid {pid})"),
        None => "another cutover command".to_string(),
    }
}
