//! `cutover db cleanup`.

use crate::cli::{CleanupArgs, Global};
use crate::output;

pub async fn run(g: &Global, args: CleanupArgs) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    if args.dry_run {
        let found = cutover_pg::cleanup::find(&plan).await?;
        if g.json {
            output::json(&serde_json::json!({ "dry_run": true, "would_remove": found }))?;
        } else if found.is_empty() {
            outln!("nothing to remove");
        } else {
            for r in &found {
                outln!("would remove {} {} on the {}", r.kind, r.name, r.side);
            }
        }
        return Ok(0);
    }
    let journal = super::open_journal(&plan)?;
    let run = journal.begin_run("db cleanup")?;
    let steps = cutover_core::engine::Steps::new(&journal, run, &crate::progress::step_printer);
    let result = steps
        .run(
            "cleanup",
            "drop subscription, slots and publication",
            || async {
                let removed = cutover_pg::cleanup::cleanup(&plan).await?;
                Ok::<_, cutover_pg::PgError>(Removed(removed))
            },
        )
        .await;
    journal.end_run(run, if result.is_ok() { "ok" } else { "failed" })?;
    let removed = result?.0;
    if g.json {
        output::json(&serde_json::json!({ "removed": removed }))?;
    } else if removed.is_empty() {
        outln!("nothing to remove: no object of cutover is left on either side");
    } else {
        for r in &removed {
            outln!("removed {} {} on the {}", r.kind, r.name, r.side);
        }
    }
    Ok(0)
}

struct Removed(Vec<cutover_pg::cleanup::Removed>);

impl cutover_core::engine::Outcome for Removed {
    fn summary(&self) -> String {
        if self.0.is_empty() {
            "nothing to remove".into()
        } else {
            let names: Vec<String> = self
                .0
                .iter()
                .map(|r| format!("{} {}", r.kind, r.name))
                .collect();
            format!("removed {}", names.join(", "))
        }
    }
}
