//! `cutover plan`, `apply`, `rollback` and `finish`: the whole migration.

use std::io::{IsTerminal, Write};

use cutover_core::journal::Status;
use cutover_runbook::migration::{
    self, Applied, Approval, Event, FinishOptions, Line, MigrationState, RunState, Runbook,
    SavedPlan,
};
use futures_util::future::BoxFuture;

use crate::cli::{ApplyArgs, FinishArgs, Global, PlanArgs, RollbackArgs};
use crate::output;

pub async fn plan(g: &Global, args: PlanArgs) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    let saved = migration::saved_plan(&plan)?;
    if let Some(out) = &args.out {
        let text = serde_json::to_string_pretty(&saved)?;
        std::fs::write(out, text + "\n")
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    }
    if g.json {
        output::json(&saved)?;
    } else {
        print_plan(&saved);
        if let Some(out) = &args.out {
            outln!(
                "\nsaved to {}; `cutover apply {}` runs exactly this, and refuses if {} changes",
                out.display(),
                out.display(),
                g.plan.display()
            );
        }
    }
    Ok(if saved.blocking.is_empty() { 0 } else { 1 })
}

fn print_plan(p: &SavedPlan) {
    outln!(
        "migration ({}), {} steps; ? asks before it runs, ↺ is what a rollback does",
        p.order.as_str(),
        p.steps.len()
    );
    let mut phase = None;
    for s in &p.steps {
        if phase != Some(s.phase) {
            phase = Some(s.phase);
            outln!("\n{}", s.phase);
        }
        outln!(
            "  {} {}: {}",
            if s.approval.is_some() { "?" } else { "-" },
            s.step,
            s.does
        );
        outln!("      changes: {}", s.changes);
        if let Some(u) = &s.undo {
            outln!("      ↺ {u}");
        }
    }
    if !p.skipped.is_empty() {
        outln!("\nleft out:");
        for s in &p.skipped {
            outln!(
                "  {}: {}",
                s.step
                    .clone()
                    .unwrap_or_else(|| format!("{} phase", s.phase)),
                s.why
            );
        }
    }
    for b in &p.blocking {
        outln!("\ncannot run: {b}");
    }
}

/// Asks on the terminal; with no terminal there is nobody to ask.
fn approver() -> impl Fn(String) -> BoxFuture<'static, Approval> + Send + Sync {
    |question: String| -> BoxFuture<'static, Approval> {
        Box::pin(async move {
            if !std::io::stdin().is_terminal() {
                return Approval::NotAsked;
            }
            tokio::task::spawn_blocking(move || {
                eprint!("{question} [y/N] ");
                let _ = std::io::stderr().flush();
                let mut answer = String::new();
                if std::io::stdin().read_line(&mut answer).is_err() {
                    return Approval::No;
                }
                if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
                    Approval::Yes
                } else {
                    Approval::No
                }
            })
            .await
            .unwrap_or(Approval::No)
        })
    }
}

/// Prints events: one JSON line each with --json, else a line per step on stderr.
pub fn printer(json: bool, verbose: bool) -> impl Fn(Event) + Send + Sync {
    move |e: Event| {
        if json {
            if let Ok(text) = serde_json::to_string(&Line::now(&e)) {
                let _ = output::frame(&(text + "\n"));
            }
            return;
        }
        print_event(&e, verbose);
    }
}

pub fn print_event(e: &Event, verbose: bool) {
    match e {
        Event::Started {
            command,
            attempt,
            order,
            done,
        } => eprintln!(
            "{command}: attempt {attempt}, {order}{}",
            if *done > 0 {
                format!(", {done} step(s) done before")
            } else {
                String::new()
            }
        ),
        Event::StepStarted { step, intent, .. } => eprintln!("→ {step}: {intent}"),
        Event::StepFinished {
            step,
            status,
            duration_ms,
            outcome,
            ..
        } => eprintln!(
            "{} {step} ({}): {outcome}",
            mark(*status),
            output::millis(*duration_ms)
        ),
        Event::StepSkipped { step, why, .. } => eprintln!("· {step}: {why}"),
        Event::Detail {
            detail,
            status: Some(status),
            duration_ms,
            text,
            ..
        } if verbose || *status == Status::Failed || detail.starts_with("traffic.canary") => {
            eprintln!(
                "    {} {detail} ({}): {text}",
                mark(*status),
                output::millis(duration_ms.unwrap_or(0))
            )
        }
        Event::Detail { .. } => {}
        Event::Progress { message, .. } => {
            for line in message.lines() {
                eprintln!("    {line}");
            }
        }
        Event::Approval {
            question, answer, ..
        } => eprintln!("? {question}: {answer}"),
        Event::Ended {
            command,
            state,
            reason,
            ..
        } => eprintln!(
            "{command}: {}{}",
            state.as_str(),
            reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
    }
}

fn mark(s: Status) -> &'static str {
    match s {
        Status::Ok => "✓",
        Status::Skipped => "·",
        Status::Failed => "✗",
    }
}

pub async fn apply(g: &Global, args: ApplyArgs) -> anyhow::Result<i32> {
    let (plan, saved) = match &args.saved {
        Some(path) => {
            let saved = SavedPlan::read(path)?;
            let plan = super::load_plan(&saved.plan_file)?;
            saved.check(&plan)?;
            (plan, Some(saved))
        }
        None => (super::load_plan(&g.plan)?, None),
    };
    if args.dry_run {
        let p = match saved {
            Some(s) => s,
            None => migration::saved_plan(&plan)?,
        };
        if g.json {
            output::json(&p)?;
        } else {
            print_plan(&p);
            outln!("\nnothing was changed (dry run)");
        }
        return Ok(if p.blocking.is_empty() { 0 } else { 1 });
    }
    let journal = super::open_journal(&plan)?;
    let events = printer(g.json, g.verbose > 0);
    let ask = approver();
    let options = migration::Options {
        yes: args.yes,
        until: args.until,
    };
    let result = tokio::select! {
        r = migration::apply(&plan, &journal, &options, &events, &ask) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted: `cutover apply` goes on where it stopped (the step under way runs again); `cutover status` shows where");
            return Ok(130);
        }
    };
    let applied = result?;
    Ok(exit_code(&applied))
}

fn exit_code(a: &Applied) -> i32 {
    if a.waiting_for_approval {
        3
    } else {
        0
    }
}

pub async fn rollback(g: &Global, args: RollbackArgs) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    let journal = super::existing_journal(&plan)?;
    let state = match &journal {
        Some(j) => MigrationState::load(j)?,
        None => None,
    };
    let runbook = Runbook::of(&plan);
    let undo: Vec<String> = state
        .as_ref()
        .map(|s| {
            s.touched()
                .into_iter()
                .rev()
                .filter(|n| !s.undone.contains(n))
                .filter_map(|n| {
                    runbook
                        .describe(&plan)
                        .into_iter()
                        .find(|d| d.step == n)
                        .and_then(|d| d.undo.map(|u| format!("{n}: {u}")))
                })
                .collect()
        })
        .unwrap_or_default();
    if args.dry_run {
        if g.json {
            output::json(&serde_json::json!({ "dry_run": true, "would_undo": undo }))?;
        } else if undo.is_empty() {
            outln!("nothing to roll back");
        } else {
            outln!("rollback would, in order:");
            for u in &undo {
                outln!("  {u}");
            }
            outln!("nothing was changed (dry run)");
        }
        return Ok(0);
    }
    if !args.yes && !undo.is_empty() {
        let question = format!(
            "roll back ({}) ?",
            undo.iter()
                .map(|u| u.split(':').next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", then ")
        );
        match approver()(question).await {
            Approval::Yes => {}
            Approval::No => anyhow::bail!("not rolled back: the answer was no"),
            Approval::NotAsked => anyhow::bail!(
                "rollback changes production and stdin is not a terminal; pass --yes to go on"
            ),
        }
    }
    let journal = match journal {
        Some(j) => j,
        None => super::open_journal(&plan)?,
    };
    let events = printer(g.json, g.verbose > 0);
    let done = migration::rollback(&plan, &journal, &events).await?;
    if !g.json {
        outln!(
            "rolled back ({} step(s) undone): users and writes are on the old platform; `cutover apply` moves again",
            done.undone.len()
        );
    }
    Ok(0)
}

pub async fn finish(g: &Global, args: FinishArgs) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    let journal = super::existing_journal(&plan)?;
    if args.dry_run {
        let steps: Vec<_> = Runbook::of(&plan)
            .describe(&plan)
            .into_iter()
            .filter(|s| s.phase == migration::Phase::Finish)
            .collect();
        let state = match &journal {
            Some(j) => MigrationState::load(j)?,
            None => None,
        };
        let window = state.as_ref().and_then(|s| s.done_ms).map(|done| {
            let ends = done + plan.migration.hold.as_millis() as i64;
            (
                output::timestamp(ends),
                ends <= cutover_core::journal::now_ms(),
            )
        });
        if g.json {
            output::json(&serde_json::json!({
                "dry_run": true,
                "steps": steps,
                "rollback_window_ends": window.as_ref().map(|w| &w.0),
                "window_over": window.as_ref().map(|w| w.1),
            }))?;
        } else {
            outln!("finish would:");
            for s in &steps {
                outln!("  {}: {} (changes: {})", s.step, s.does, s.changes);
            }
            match window {
                Some((end, true)) => outln!("the rollback window ended at {end}"),
                Some((end, false)) => {
                    outln!("the rollback window ends at {end}: finish refuses before then without --force")
                }
                None => outln!("the move is not done yet: finish refuses until it is"),
            }
            outln!("nothing was changed (dry run)");
        }
        return Ok(0);
    }
    let journal = match journal {
        Some(j) => j,
        None => super::open_journal(&plan)?,
    };
    let events = printer(g.json, g.verbose > 0);
    let ask = approver();
    let applied = migration::finish(
        &plan,
        &journal,
        &FinishOptions {
            force: args.force,
            yes: args.yes,
        },
        &events,
        &ask,
    )
    .await?;
    if applied.state == RunState::Finished && !g.json {
        outln!(
            "finished: the decommission checklist is in {}",
            plan.migration.checklist.display()
        );
    }
    Ok(exit_code(&applied))
}
