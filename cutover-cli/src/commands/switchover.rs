//! `cutover db switchover` and `cutover db rollback`.

use cutover_core::engine::Steps;
use cutover_runbook::{Direction, Options, SwitchSummary};

use crate::cli::{Global, SwitchArgs};
use crate::output;
use crate::progress::step_printer;

pub async fn run(g: &Global, args: SwitchArgs, direction: Direction) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    let proxy = plan.proxy().map_err(anyhow::Error::msg)?;
    let admin = cutover_proxy::Proxies::from_plan(&plan).map_err(anyhow::Error::msg)?;
    let journal = super::open_journal(&plan)?;
    let run = journal.begin_run(&format!("db {}", direction.name()))?;
    let steps = Steps::new(&journal, run, &step_printer);
    let options = Options {
        force: args.force,
        no_reverse: args.no_reverse,
        app_roles: proxy.users.iter().map(|u| u.name.clone()).collect(),
    };
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let result = cutover_runbook::run(&plan, &steps, &admin, direction, &options, interrupt).await;
    journal.end_run(run, if result.is_ok() { "ok" } else { "failed" })?;
    match result {
        Ok(summary) => {
            print(g, &summary)?;
            Ok(0)
        }
        Err(cutover_runbook::SwitchError::Interrupted) => {
            eprintln!("interrupted before the switch: everything was undone and the proxy resumed on the old primary");
            Ok(130)
        }
        Err(e) => Err(e.into()),
    }
}

fn print(g: &Global, s: &SwitchSummary) -> anyhow::Result<()> {
    if g.json {
        return output::json(s);
    }
    if s.already {
        outln!("the proxy is already on the {}; nothing to do", s.active);
        return Ok(());
    }
    outln!(
        "{}: the proxy is on the {} ({} sessions moved); paused {:.0} ms, longest client wait {:.0} ms",
        s.direction.name(),
        s.active,
        s.sessions_moved,
        s.pause_ms,
        s.longest_client_wait_ms
    );
    let times: Vec<String> = s
        .steps
        .iter()
        .map(|t| format!("{} {:.0} ms", t.step, t.ms))
        .collect();
    outln!("  {}", times.join(", "));
    if s.reverse_replication {
        outln!(
            "  the old primary is fenced and follows the new one: `cutover db {}` goes back without losing a write",
            match s.direction {
                Direction::Switchover => "rollback",
                Direction::Rollback => "switchover",
            }
        );
    } else {
        outln!("  no replication back (--no-reverse): the old primary does not receive new writes");
    }
    Ok(())
}
