//! `cutover traffic serve | canary | status | promote | abort | pause | resume`.

use cutover_core::engine::Steps;
use cutover_core::plan::{GateSource, WeightsVia};
use cutover_traffic::canary::{self, Canary, Control, Phase};
use cutover_traffic::splitter::{self, admin::AdminClient};

use crate::cli::{Global, TrafficCanaryArgs, TrafficCommand, TrafficServeArgs};
use crate::output;
use crate::progress::step_printer;

pub async fn run(g: &Global, command: TrafficCommand) -> anyhow::Result<i32> {
    match command {
        TrafficCommand::Serve(args) => serve(g, args).await,
        TrafficCommand::Canary(args) => run_canary(g, args).await,
        TrafficCommand::Status => status(g).await,
        TrafficCommand::Promote => control(g, Control::Promote).await,
        TrafficCommand::Abort => control(g, Control::Abort).await,
        TrafficCommand::Pause => control(g, Control::Pause).await,
        TrafficCommand::Resume => control(g, Control::Resume).await,
    }
}

async fn serve(g: &Global, args: TrafficServeArgs) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    let mut config = splitter::Config::from_plan(&plan).map_err(anyhow::Error::msg)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let running = splitter::start(config).await.map_err(anyhow::Error::msg)?;
    let p = running.shared.new_percent();
    if g.json {
        output::json(&serde_json::json!({
            "listen": running.addr,
            "admin": running.admin_addr,
            "new_percent": p,
        }))?;
    } else {
        outln!(
            "splitter listening on {} (admin API and /metrics on {}), {p}% of new users to the new app",
            running.addr, running.admin_addr
        );
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("stopping: no new connections; requests in flight finish");
    let left = running.stop().await;
    if left > 0 {
        eprintln!("{left} request(s) were still running after traffic.drain_timeout");
    }
    Ok(0)
}

async fn run_canary(g: &Global, args: TrafficCanaryArgs) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    let t = plan.traffic().map_err(anyhow::Error::msg)?;
    let c = Canary::from_settings(t);
    if t.weights_via == WeightsVia::Dns {
        plan.dns().map_err(anyhow::Error::msg)?;
    }
    if args.dry_run {
        if g.json {
            output::json(&c)?;
        } else {
            let via = match t.weights_via {
                WeightsVia::Splitter => {
                    format!("the splitter's weight (admin API {})", t.admin_listen)
                }
                WeightsVia::Dns => "the [dns] provider's weighted records".to_string(),
            };
            let source = match &t.metrics {
                GateSource::Splitter => "the splitter's own metrics".to_string(),
                GateSource::Prometheus { url, .. } => format!("Prometheus at {url}"),
            };
            outln!("moves {via}; gates read {source}");
            for line in c.describe() {
                outln!("{line}");
            }
        }
        return Ok(0);
    }
    let gates = cutover_runbook::canary::gates(&plan)?;
    let mover = cutover_runbook::canary::Mover::of(&plan)?;
    let journal = super::open_journal(&plan)?;
    let run = journal.begin_run("traffic canary")?;
    let steps = Steps::new(&journal, run, &step_printer);
    let weights = mover.weights(&plan, &steps, args.force);
    let report = |line: &str| {
        if !g.json {
            eprintln!("{line}");
        }
    };
    let result = tokio::select! {
        r = canary::run(&c, weights.as_ref(), gates.as_ref(), &steps, &report) => r,
        _ = tokio::signal::ctrl_c() => {
            journal.end_run(run, "interrupted")?;
            eprintln!("interrupted: the weight stays where it is; `cutover traffic canary` resumes where it stopped (a rollback, abort or promotion under way is finished first), `cutover traffic abort` goes back to 0%");
            return Ok(130);
        }
    };
    journal.end_run(
        run,
        if matches!(&result, Ok(o) if o.phase == Phase::Promoted) {
            "ok"
        } else {
            "failed"
        },
    )?;
    let out = result?;
    if g.json {
        output::json(&out)?;
    }
    match out.phase {
        Phase::Promoted => {
            if !g.json {
                outln!("promoted: 100% of new users go to the new app");
            }
            Ok(0)
        }
        _ => Err(anyhow::anyhow!(
            "the canary ended at {}%: {}",
            out.new_percent,
            out.reason.unwrap_or_default()
        )),
    }
}

async fn status(g: &Global) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    let t = plan.traffic().map_err(anyhow::Error::msg)?;
    let journal = super::open_journal(&plan)?;
    let state = canary::state(&journal)?;
    let admin = AdminClient::new(t.admin_listen, t.admin_token.clone());
    let splitter = admin.status().await;
    if g.json {
        output::json(&serde_json::json!({
            "canary": state,
            "splitter": splitter.as_ref().ok(),
            "splitter_error": splitter.as_ref().err(),
        }))?;
        return Ok(0);
    }
    match &state {
        Some(s) => outln!("canary: {}", s.summary()),
        None => outln!("canary: never run"),
    }
    match splitter {
        Ok(st) => {
            outln!("splitter: {}% of new users to the new app", st.new_percent);
            let rows: Vec<Vec<String>> = st
                .origins
                .iter()
                .map(|o| {
                    let m = &o.metrics;
                    vec![
                        o.side.as_str().to_string(),
                        o.url.clone(),
                        if o.up { "up" } else { "down" }.to_string(),
                        format!("{}%", o.weight),
                        format!(
                            "{}{}",
                            o.in_flight,
                            if o.draining { " (draining)" } else { "" }
                        ),
                        m.requests.to_string(),
                        (m.classes[4] + m.classes[5]).to_string(),
                    ]
                })
                .collect();
            out!(
                "{}",
                output::table(
                    &[
                        "ORIGIN",
                        "URL",
                        "HEALTH",
                        "WEIGHT",
                        "IN FLIGHT",
                        "REQUESTS",
                        "FAILED"
                    ],
                    &rows
                )
            );
            // Why an origin is down (or failing its checks while still up), one line each:
            // the first thing to read when users are not where they should be.
            for o in &st.origins {
                if let Some(e) = &o.last_error {
                    let health = if o.up { "up" } else { "down" };
                    outln!("{}: {health} ({e})", o.side.as_str());
                }
            }
        }
        Err(e) => outln!("splitter: {e}"),
    }
    Ok(0)
}

async fn control(g: &Global, c: Control) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    let t = plan.traffic().map_err(anyhow::Error::msg)?;
    let journal = super::open_journal(&plan)?;
    let running = canary::state(&journal)?.filter(|s| !s.phase.finished());
    if let Some(s) = &running {
        // A canary moving to 0% or 100% makes that move and nothing else (started again, it
        // tries it first): a request it would drop is refused here, where it is asked.
        let to_zero = matches!(s.phase, Phase::RollingBack | Phase::Aborting);
        let moving = to_zero || s.phase == Phase::Promoting;
        if (c == Control::Promote && to_zero)
            || (matches!(c, Control::Pause | Control::Resume) && moving)
        {
            anyhow::bail!(
                "the canary is {} to {}%, so it cannot {} now; `cutover traffic canary` finishes that move first (`cutover traffic status` says why it stopped)",
                s.phase.as_str(),
                if to_zero { 0 } else { 100 },
                c.as_str()
            );
        }
    }
    if running.is_some() {
        canary::request(&journal, c)?;
        if g.json {
            output::json(&serde_json::json!({ "requested": c.as_str() }))?;
        } else {
            outln!(
                "asked the canary to {}; it acts within a second (a stopped canary acts on it when started again)",
                c.as_str()
            );
        }
        return Ok(0);
    }
    let p = match c {
        Control::Promote => 100,
        Control::Abort => 0,
        Control::Pause | Control::Resume => {
            anyhow::bail!("no canary is running; start one with `cutover traffic canary`")
        }
    };
    if t.weights_via == WeightsVia::Dns {
        anyhow::bail!(
            "no canary is running; move the DNS weight with `cutover dns switch --percent {p}`"
        );
    }
    let admin = AdminClient::new(t.admin_listen, t.admin_token.clone());
    let st = admin.set_new_percent(p).await.map_err(anyhow::Error::msg)?;
    if g.json {
        output::json(&st)?;
    } else {
        outln!("splitter: {}% of new users to the new app", st.new_percent);
    }
    Ok(0)
}
