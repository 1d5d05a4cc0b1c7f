//! Progress of long work: bars on a terminal, a line now and then elsewhere.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cutover_core::engine::StepEvent;
use cutover_core::journal::Status;
use cutover_pg::sync::TableProgress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output;

/// Prints each step's start and end, with its duration, on stderr.
pub fn step_printer(event: &StepEvent<'_>) {
    if output::quiet() {
        return;
    }
    match event {
        StepEvent::Started { step, intent } => eprintln!("→ {step}: {intent}"),
        StepEvent::Finished {
            step,
            status,
            duration,
            outcome,
        } => {
            let mark = match status {
                Status::Ok => "✓",
                Status::Skipped => "·",
                Status::Failed => "✗",
            };
            eprintln!(
                "{mark} {step} ({}): {outcome}",
                output::millis(duration.as_millis() as u64)
            );
        }
    }
}

/// Shows the copy per table.
pub struct CopyProgress {
    bars: Option<(MultiProgress, Mutex<HashMap<String, ProgressBar>>)>,
    last_line: Mutex<Option<Instant>>,
    /// `-q`: no progress lines either.
    quiet: bool,
}

impl CopyProgress {
    pub fn new(quiet: bool) -> CopyProgress {
        let bars = (!quiet && !output::quiet() && output::interactive()).then(|| {
            (
                MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                Mutex::new(HashMap::new()),
            )
        });
        CopyProgress {
            bars,
            last_line: Mutex::new(None),
            quiet: output::quiet(),
        }
    }

    pub fn update(&self, tables: &[TableProgress]) {
        match &self.bars {
            Some((multi, bars)) => {
                let mut bars = bars.lock().unwrap_or_else(|p| p.into_inner());
                for t in tables {
                    let bar = bars.entry(t.table.clone()).or_insert_with(|| {
                        let b = multi.add(ProgressBar::new(t.rows_estimate.max(1) as u64));
                        b.set_style(
                            ProgressStyle::with_template(
                                "{prefix:<32} [{bar:30}] {pos:>10}/{len:<10} rows {msg}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                        );
                        b.set_prefix(t.table.clone());
                        b
                    });
                    bar.set_length(t.rows_estimate.max(t.rows_done).max(1) as u64);
                    bar.set_position(t.rows_done.max(0) as u64);
                    bar.set_message(format!("{} {}", output::bytes(t.bytes_done), t.state));
                    if t.state == "ready" && !bar.is_finished() {
                        bar.finish();
                    }
                }
            }
            None if self.quiet => {}
            None => {
                let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
                let all_ready = tables.iter().all(|t| t.state == "ready");
                if last.is_some_and(|l| l.elapsed() < Duration::from_secs(5)) && !all_ready {
                    return;
                }
                *last = Some(Instant::now());
                let ready = tables.iter().filter(|t| t.state == "ready").count();
                let rows: i64 = tables.iter().map(|t| t.rows_done).sum();
                let copying: Vec<&str> = tables
                    .iter()
                    .filter(|t| t.state == "copying")
                    .map(|t| t.table.as_str())
                    .collect();
                eprintln!(
                    "  copy: {ready}/{} tables ready, {rows} rows copied{}",
                    tables.len(),
                    if copying.is_empty() {
                        String::new()
                    } else {
                        format!(", copying {}", copying.join(", "))
                    }
                );
            }
        }
    }

    pub fn finish(&self) {
        if let Some((multi, _)) = &self.bars {
            let _ = multi.clear();
        }
    }
}
