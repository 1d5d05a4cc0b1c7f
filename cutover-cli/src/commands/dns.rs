//! `cutover dns lower-ttl | verify | switch`.

use cutover_core::engine::Steps;
use cutover_traffic::dns::{self, ops, query};

use crate::cli::{DnsCommand, DnsSwitchArgs, DnsVerifyArgs, Global};
use crate::output;
use crate::progress::step_printer;

pub async fn run(g: &Global, command: DnsCommand) -> anyhow::Result<i32> {
    match command {
        DnsCommand::LowerTtl => lower_ttl(g).await,
        DnsCommand::Verify(args) => verify(g, args).await,
        DnsCommand::Switch(args) => switch(g, args).await,
    }
}

async fn lower_ttl(g: &Global) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    let settings = plan.dns().map_err(anyhow::Error::msg)?;
    let provider = dns::provider(settings)?;
    let journal = super::open_journal(&plan)?;
    let run = journal.begin_run("dns lower-ttl")?;
    let steps = Steps::new(&journal, run, &step_printer);
    let result = ops::lower_ttl(provider.as_ref(), settings, &steps).await;
    journal.end_run(run, if result.is_ok() { "ok" } else { "failed" })?;
    let lowered = result?;
    if g.json {
        output::json(&lowered)?;
    } else {
        let low = settings.low_ttl.as_secs();
        if lowered.changed {
            outln!(
                "lowered the TTL of {} {} from {}s to {low}s",
                settings.name,
                settings.record_type,
                lowered.plan.old_ttl_s
            );
        } else if lowered.before.is_empty() {
            outln!(
                "{} has no {} record yet; resolvers cache its absence for {}s",
                settings.name,
                settings.record_type,
                lowered.plan.negative_ttl_s.unwrap_or(0)
            );
        } else {
            outln!(
                "the TTL of {} is already {low}s or less; nothing changed",
                settings.name
            );
        }
        outln!("earliest safe cutover: {}", lowered.earliest_safe);
    }
    for w in &lowered.warnings {
        eprintln!("warning: {w}");
    }
    Ok(0)
}

async fn verify(g: &Global, args: DnsVerifyArgs) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    let settings = plan.dns().map_err(anyhow::Error::msg)?;
    if settings.authoritative.is_empty() && settings.resolvers.is_empty() {
        anyhow::bail!(
            "no server to ask; list them in dns.authoritative and dns.resolvers as \"ip:port\""
        );
    }
    let answers = query::verify(settings).await;
    let mismatch = args
        .expect
        .as_deref()
        .is_some_and(|want| answers.iter().any(|a| a.verdict != want));
    if g.json {
        output::json(&answers)?;
    } else {
        let rows: Vec<Vec<String>> = answers
            .iter()
            .map(|a| {
                vec![
                    a.server.to_string(),
                    a.role.to_string(),
                    a.verdict.to_string(),
                    a.ttl.map(|t| format!("{t}s")).unwrap_or_else(|| "-".into()),
                    a.error.clone().unwrap_or_else(|| a.values.join(",")),
                ]
            })
            .collect();
        out!(
            "{}",
            output::table(&["SERVER", "ROLE", "SIDE", "TTL", "ANSWER"], &rows)
        );
    }
    Ok(if mismatch { 1 } else { 0 })
}

async fn switch(g: &Global, args: DnsSwitchArgs) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    let settings = plan.dns().map_err(anyhow::Error::msg)?;
    let provider = dns::provider(settings)?;
    let journal = super::open_journal(&plan)?;
    let run = journal.begin_run("dns switch")?;
    let steps = Steps::new(&journal, run, &step_printer);
    let result = ops::set_split(
        provider.as_ref(),
        settings,
        args.percent,
        args.force,
        &steps,
    )
    .await;
    journal.end_run(run, if result.is_ok() { "ok" } else { "failed" })?;
    let sets = result?;
    if g.json {
        output::json(&sets)?;
    } else {
        for s in &sets {
            outln!("{s}");
        }
    }
    Ok(0)
}
