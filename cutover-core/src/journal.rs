//! The journal: an embedded SQLite file beside the plan.
//!
//! Every run of a command is a *run*; every step of it writes an *intent* before it acts and an
//! *outcome* after. A run killed half-way leaves an intent without an outcome, which is how the
//! next run (and `cutover status`) knows where it stopped. Later procedures (switchover,
//! traffic) write into the same two tables.
//!
//! Durability: write-ahead log with `synchronous = NORMAL`. A record is in the log file when
//! the write returns, so a killed cutover (Ctrl-C, SIGKILL, a crash of its own) loses
//! nothing; only a crash of the whole machine may lose the last records. Full syncs would
//! put two disk flushes into every step of the switchover's pause, where each millisecond is
//! a millisecond the applications wait.
//!
//! Invariant: nothing written here contains a secret. Callers hand over text that was built
//! from redacting types; [`Journal`] does not try to guess.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the journal {path}: {reason}; check that its folder is writable")]
    Open { path: String, reason: String },
    #[error("journal write failed: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// What became of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
    Skipped,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
    fn parse(s: &str) -> Status {
        match s {
            "ok" => Status::Ok,
            "skipped" => Status::Skipped,
            _ => Status::Failed,
        }
    }
}

pub type RunId = i64;

/// One step as the journal saw it.
#[derive(Clone, Debug, Serialize)]
pub struct StepRecord {
    pub step: String,
    /// Unix milliseconds of the intent.
    pub started_ms: i64,
    pub intent: String,
    /// None when the run stopped before the step finished.
    pub status: Option<Status>,
    pub duration_ms: Option<i64>,
    pub outcome: Option<String>,
}

/// One run of a command.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    pub id: RunId,
    pub command: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    /// "ok", "failed", or None for a run that was killed or is still going.
    pub outcome: Option<String>,
    pub steps: Vec<StepRecord>,
}

pub struct Journal {
    conn: Mutex<Connection>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    command TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    outcome TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    intent TEXT NOT NULL,
    status TEXT,
    duration_ms INTEGER,
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS steps_by_name ON steps(step, id);
CREATE TABLE IF NOT EXISTS facts (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
";

impl Journal {
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let open = || -> Result<Connection, rusqlite::Error> {
            let conn = Connection::open(path)?;
            conn.busy_timeout(Duration::from_secs(10))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.execute_batch(SCHEMA)?;
            Ok(conn)
        };
        let conn = open().map_err(|e| JournalError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Journal {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn begin_run(&self, command: &str) -> Result<RunId, JournalError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO runs (command, started_ms) VALUES (?1, ?2)",
            params![command, now_ms()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub fn end_run(&self, run: RunId, outcome: &str) -> Result<(), JournalError> {
        self.conn().execute(
            "UPDATE runs SET ended_ms = ?1, outcome = ?2 WHERE id = ?3",
            params![now_ms(), outcome, run],
        )?;
        Ok(())
    }

    /// Records that `step` is about to act. Returns the record's id for [`Journal::outcome`].
    pub fn intent(&self, run: RunId, step: &str, intent: &str) -> Result<i64, JournalError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO steps (run_id, step, started_ms, intent) VALUES (?1, ?2, ?3, ?4)",
            params![run, step, now_ms(), intent],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Records what became of a step.
    pub fn outcome(
        &self,
        record: i64,
        status: Status,
        duration: Duration,
        outcome: &str,
    ) -> Result<(), JournalError> {
        self.conn().execute(
            "UPDATE steps SET status = ?1, duration_ms = ?2, outcome = ?3 WHERE id = ?4",
            params![
                status.as_str(),
                duration.as_millis() as i64,
                outcome,
                record
            ],
        )?;
        Ok(())
    }

    /// Remembers a fact that outlives the run that made it, such as what a fence revoked
    /// (so any later run can undo it); `None` forgets it.
    pub fn set_fact(&self, key: &str, value: Option<&str>) -> Result<(), JournalError> {
        let conn = self.conn();
        match value {
            Some(v) => conn.execute(
                "INSERT INTO facts (key, value, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms",
                params![key, v, now_ms()],
            )?,
            None => conn.execute("DELETE FROM facts WHERE key = ?1", params![key])?,
        };
        Ok(())
    }

    pub fn fact(&self, key: &str) -> Result<Option<String>, JournalError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT value FROM facts WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The latest record of `step` across every run, if any.
    pub fn last(&self, step: &str) -> Result<Option<StepRecord>, JournalError> {
        let conn = self.conn();
        let rec = conn
            .query_row(
                "SELECT step, started_ms, intent, status, duration_ms, outcome FROM steps
                 WHERE step = ?1 ORDER BY id DESC LIMIT 1",
                params![step],
                step_record,
            )
            .optional()?;
        Ok(rec)
    }

    /// Every run, oldest first, with its steps.
    pub fn timeline(&self) -> Result<Vec<RunRecord>, JournalError> {
        let conn = self.conn();
        let mut runs_stmt = conn
            .prepare("SELECT id, command, started_ms, ended_ms, outcome FROM runs ORDER BY id")?;
        let mut runs: Vec<RunRecord> = runs_stmt
            .query_map([], |r| {
                Ok(RunRecord {
                    id: r.get(0)?,
                    command: r.get(1)?,
                    started_ms: r.get(2)?,
                    ended_ms: r.get(3)?,
                    outcome: r.get(4)?,
                    steps: vec![],
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut steps_stmt = conn.prepare(
            "SELECT step, started_ms, intent, status, duration_ms, outcome FROM steps
             WHERE run_id = ?1 ORDER BY id",
        )?;
        for run in &mut runs {
            run.steps = steps_stmt
                .query_map(params![run.id], step_record)?
                .collect::<Result<_, _>>()?;
        }
        Ok(runs)
    }
}

fn step_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<StepRecord> {
    let status: Option<String> = r.get(3)?;
    Ok(StepRecord {
        step: r.get(0)?,
        started_ms: r.get(1)?,
        intent: r.get(2)?,
        status: status.as_deref().map(Status::parse),
        duration_ms: r.get(4)?,
        outcome: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intent_then_outcome_and_an_interrupted_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        {
            let j = Journal::open(&path).unwrap();
            let run = j.begin_run("db sync").unwrap();
            let rec = j.intent(run, "schema.pre_data", "copy tables").unwrap();
            j.outcome(rec, Status::Ok, Duration::from_millis(12), "3 tables")
                .unwrap();
            j.intent(run, "copy", "wait for tables").unwrap();
            // killed here: no outcome, no end
        }
        let j = Journal::open(&path).unwrap();
        let run = j.begin_run("db sync").unwrap();
        let last = j.last("copy").unwrap().unwrap();
        assert_eq!(last.status, None);
        let rec = j.intent(run, "copy", "wait for tables").unwrap();
        j.outcome(rec, Status::Ok, Duration::from_secs(1), "ready")
            .unwrap();
        j.end_run(run, "ok").unwrap();
        let t = j.timeline().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].outcome, None);
        assert_eq!(t[0].steps.len(), 2);
        assert_eq!(t[0].steps[1].status, None);
        assert_eq!(t[1].outcome.as_deref(), Some("ok"));
        assert_eq!(j.last("copy").unwrap().unwrap().status, Some(Status::Ok));
    }
}
