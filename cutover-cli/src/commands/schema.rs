//! `cutover db schema show|apply`: the source's schema changes made during the sync.

use std::io::{IsTerminal, Write};

use cutover_core::{Mode, Plan};
use cutover_pg::ddl_log::Statement;
use cutover_pg::drift::Drift;
use cutover_pg::schema_change::{self, Sides};
use cutover_pg::{connect, Side};

use crate::cli::{Global, SchemaApplyArgs, SchemaCommand};
use crate::output;

pub async fn run(g: &Global, command: SchemaCommand) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    match command {
        SchemaCommand::Show => show(g, &plan).await,
        SchemaCommand::Apply(args) => apply(g, &plan, args).await,
    }
}

/// The two sides, the primary first: the source, or after a trigger-mode switchover the
/// target (native mode follows the schema forward only).
async fn sides(
    plan: &Plan,
) -> anyhow::Result<(
    cutover_core::ConnString,
    Side,
    cutover_core::ConnString,
    Side,
)> {
    if plan.sync.mode == Mode::Trigger {
        let link = cutover_pg::sync::current_link(plan).await?;
        return Ok((
            link.origin,
            link.origin_side,
            link.follower,
            link.follower_side,
        ));
    }
    Ok((
        plan.source.url.clone(),
        Side::Source,
        plan.target.url.clone(),
        Side::Target,
    ))
}

/// The differences, and the DDL the primary logged (where an event trigger could log it).
async fn differences(plan: &Plan) -> anyhow::Result<(Vec<Drift>, Vec<Statement>)> {
    let (p, ps, f, fs) = sides(plan).await?;
    let (primary, follower) = (connect(&p, ps).await?, connect(&f, fs).await?);
    let drifts =
        cutover_pg::drift::drift_between((&primary, ps), (&follower, fs), &plan.sync).await?;
    let ddl = cutover_pg::ddl_log::statements(&primary, ps).await?;
    Ok((drifts, ddl))
}

fn print_ddl(ddl: &[Statement]) {
    if ddl.is_empty() {
        return;
    }
    outln!("\nthe primary ran, in order (its DDL log):");
    let mut last: Option<&str> = None;
    for s in ddl {
        let text = s.statement.as_deref().unwrap_or("").trim();
        // One statement text for every command it made (a migration sent as one string).
        if last == Some(text) {
            continue;
        }
        last = Some(text);
        outln!("  {}  {}: {}", s.at, s.tag, text);
    }
}

fn print(drifts: &[Drift]) {
    if drifts.is_empty() {
        outln!("the schema is the same on both sides");
        return;
    }
    for d in drifts {
        outln!(
            "{}  {}",
            if d.additive { "additive" } else { "HELD    " },
            d.describe
        );
        if let Some(sql) = d.target_sql() {
            outln!("          {sql}");
        }
    }
}

async fn show(g: &Global, plan: &Plan) -> anyhow::Result<i32> {
    let (drifts, ddl) = differences(plan).await?;
    if g.json {
        output::json(&serde_json::json!({"changes": drifts, "ddl": ddl}))?;
    } else {
        print(&drifts);
        print_ddl(&ddl);
    }
    Ok(0)
}

async fn apply(g: &Global, plan: &Plan, args: SchemaApplyArgs) -> anyhow::Result<i32> {
    let (drifts, ddl) = differences(plan).await?;
    if drifts.is_empty() {
        if g.json {
            output::json(&serde_json::json!({"applied": [], "held": []}))?;
        } else {
            outln!("the schema is the same on both sides; nothing to apply");
        }
        return Ok(0);
    }
    if args.dry_run {
        if g.json {
            output::json(&serde_json::json!({"dry_run": true, "changes": drifts}))?;
        } else {
            print(&drifts);
            print_ddl(&ddl);
            outln!("nothing was changed (dry run)");
        }
        return Ok(0);
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "{} schema change(s) would be applied to the follower; review them with `cutover db schema show`, then pass --yes (stdin is not a terminal, so there is nobody to ask)",
                drifts.len()
            );
        }
        print(&drifts);
        let question = format!("apply these {} change(s) to the follower?", drifts.len());
        let yes = tokio::task::spawn_blocking(move || {
            eprint!("{question} [y/N] ");
            let _ = std::io::stderr().flush();
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer).is_ok()
                && matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes")
        })
        .await?;
        if !yes {
            eprintln!("nothing was changed");
            return Ok(1);
        }
    }
    let (p, ps, f, fs) = sides(plan).await?;
    let (primary, follower) = (connect(&p, ps).await?, connect(&f, fs).await?);
    let pass = if plan.sync.mode == Mode::Native {
        schema_change::reconcile_native(plan, &primary, &follower, true).await?
    } else {
        // Trigger mode: the follower's applier holds while any of these stand; new tables
        // are copied by it (`cutover db follow`), the rest is applied here.
        let s = Sides {
            origin: &primary,
            origin_side: ps,
            origin_url: &p,
            follower: &follower,
            follower_side: fs,
            follower_url: &f,
        };
        let mut pass = schema_change::Pass::default();
        for d in &drifts {
            if d.change == cutover_pg::drift::Change::NewTable {
                pass.held.push(format!(
                    "{}: copied by `cutover db follow` (it installs the capture and copies it from a consistent point)",
                    d.describe
                ));
                continue;
            }
            pass.applied
                .push(schema_change::apply_one(&s, d, true).await?);
        }
        pass
    };
    // What the log held up to here is applied: `show` lists only what came after.
    if let Some(last) = ddl.last() {
        cutover_pg::ddl_log::forget(&primary, ps, last.id).await?;
    }
    if g.json {
        output::json(&pass)?;
    } else {
        for a in &pass.applied {
            outln!("applied  {a}");
        }
        for h in &pass.held {
            outln!("left     {h}");
        }
    }
    Ok(0)
}
