//! One file per command. Each returns its exit code; errors are printed once, here.

mod app;
mod check;
mod cleanup;
mod demo;
mod dns;
mod follow;
mod init;
mod journal;
mod migration;
mod proxy;
mod schema;
mod shell;
mod status;
mod switchover;
mod sync;
mod traffic;
mod verify;

use std::path::Path;

use anyhow::Context;
use cutover_core::plan::{self, ProcessEnv};
use cutover_core::{Journal, Plan};

use crate::cli::{Cli, Command, DbCommand};

pub async fn run(cli: Cli) -> i32 {
    let g = cli.global.clone();
    let result = match cli.command {
        Command::Init(args) => init::run(&g, args),
        Command::Check => check::run(&g).await,
        Command::Plan(args) => migration::plan(&g, args).await,
        Command::Apply(args) => migration::apply(&g, args).await,
        Command::Status => journal::run(&g).await,
        Command::Rollback(args) => migration::rollback(&g, args).await,
        Command::Finish(args) => migration::finish(&g, args).await,
        Command::Db(DbCommand::Sync(args)) => sync::run(&g, args).await,
        Command::Db(DbCommand::Status(args)) => status::run(&g, args).await,
        Command::Db(DbCommand::Verify(args)) => verify::run(&g, args).await,
        Command::Db(DbCommand::Cleanup(args)) => cleanup::run(&g, args).await,
        Command::Db(DbCommand::Follow(args)) => follow::run(&g, args).await,
        Command::Db(DbCommand::Schema(command)) => schema::run(&g, command).await,
        Command::Db(DbCommand::Switchover(args)) => {
            switchover::run(&g, args, cutover_runbook::Direction::Switchover).await
        }
        Command::Db(DbCommand::Rollback(args)) => {
            switchover::run(&g, args, cutover_runbook::Direction::Rollback).await
        }
        Command::Proxy(args) => proxy::run(&g, args).await,
        Command::Demo(args) => demo::run(&g, args).await,
        Command::Dns(command) => dns::run(&g, command).await,
        Command::Traffic(command) => traffic::run(&g, command).await,
        Command::App(command) => app::run(&g, command),
        Command::Completions(args) => shell::completions(args),
        Command::Man => shell::man(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            report(&g, &e);
            1
        }
    }
}

/// Prints an error: one line per problem, the cause chain only with -v.
fn report(g: &crate::cli::Global, e: &anyhow::Error) {
    let secrets = plan::load(&g.plan, &ProcessEnv)
        .map(|p| p.secrets())
        .unwrap_or_default();
    let text = if g.verbose > 0 {
        format!("{e:#}")
    } else {
        e.to_string()
    };
    let text = cutover_core::redact(&text, secrets.iter());
    if g.json {
        let _ = crate::output::json(&serde_json::json!({ "error": text }));
    }
    for line in text.lines() {
        eprintln!("error: {line}");
    }
}

/// Reads and checks the plan file.
fn load_plan(path: &Path) -> anyhow::Result<Plan> {
    let plan = plan::load(path, &ProcessEnv)?;
    crate::output::hide_in_logs(plan.secrets());
    Ok(plan)
}

/// Opens the journal beside the plan.
fn open_journal(plan: &Plan) -> anyhow::Result<Journal> {
    Journal::open(&plan.journal_path()).context("journal")
}

/// The plan's journal if there is one, without creating it (for a dry run).
fn existing_journal(plan: &Plan) -> anyhow::Result<Option<Journal>> {
    if !plan.journal_path().exists() {
        return Ok(None);
    }
    open_journal(plan).map(Some)
}
