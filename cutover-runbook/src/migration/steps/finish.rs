//! The finish phase: replication cut, cutover's objects removed from both sides, and the
//! decommission checklist written. cutover never destroys anything on the old platform: the
//! checklist names the commands, a person runs them.

use cutover_core::journal::now_ms;
use cutover_core::{Mode, Plan};

use crate::migration::step::{Cx, Fut, OnStop, Step};
use crate::migration::{MigrationError, Phase};

pub(crate) struct Cleanup;

impl Step for Cleanup {
    fn phase(&self) -> Phase {
        Phase::Finish
    }
    fn name(&self) -> &'static str {
        "cleanup"
    }
    fn does(&self, plan: &Plan) -> String {
        match plan.sync.mode {
            Mode::Native => "cut the replication back to the old database and remove cutover's subscriptions, slots, publications and marker tables on both sides".into(),
            Mode::Trigger => "cut the replication back to the old database and remove cutover's schema, change log and triggers on both sides".into(),
        }
    }
    fn changes(&self, _plan: &Plan) -> String {
        "replication stops for good: no rollback after this".into()
    }
    fn approval(&self, _plan: &Plan) -> Option<String> {
        Some("cut the replication back to the old database? A rollback is no longer possible after this".into())
    }
    fn act<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            cx.follower.stop().await;
            let removed = cutover_pg::cleanup::cleanup(cx.plan).await?;
            if removed.is_empty() {
                return Ok("nothing was left to remove".into());
            }
            Ok(format!(
                "removed {}",
                removed
                    .iter()
                    .map(|r| format!("{} {} ({})", r.kind, r.name, r.side))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
    fn on_stop(&self) -> OnStop {
        OnStop::Finish
    }
}

pub(crate) struct Checklist;

impl Step for Checklist {
    fn phase(&self) -> Phase {
        Phase::Finish
    }
    fn name(&self) -> &'static str {
        "checklist"
    }
    fn does(&self, plan: &Plan) -> String {
        format!(
            "write the decommission checklist to {}",
            plan.migration.checklist.display()
        )
    }
    fn changes(&self, plan: &Plan) -> String {
        format!("the file {}", plan.migration.checklist.display())
    }
    fn act<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            let text = checklist(cx.plan);
            let path = &cx.plan.migration.checklist;
            std::fs::write(path, &text).map_err(|e| {
                MigrationError::refused(format!("cannot write {}: {e}", path.display()))
            })?;
            cx.progress(text);
            Ok(format!("wrote {}", path.display()))
        })
    }
}

/// The decommission checklist: what a person does on the old platform, in order.
pub fn checklist(plan: &Plan) -> String {
    let app = plan.migration.heroku_app.as_deref();
    let a = app.unwrap_or("<app>");
    let mut out = String::new();
    let at = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms().max(0) as u64),
    );
    out.push_str(&format!(
        "# Decommission checklist{}\n\nThe move finished at {at}. cutover cut the replication and removed what it made on both\ndatabases; it destroyed nothing on the old platform. The old database ({}) is fenced:\nthe applications' roles cannot write to it. Do the following by hand, in order.\n\n",
        app.map(|a| format!(": {a}")).unwrap_or_default(),
        plan.source.url.location()
    ));
    if app.is_none() {
        out.push_str(
            "(Set migration.heroku_app in the plan to have the app's name filled in below.)\n\n",
        );
    }
    let mut n = 0;
    let mut item = |title: &str, body: &str| {
        n += 1;
        out.push_str(&format!("{n}. {title}\n{body}\n"));
    };
    item(
        "Take a last backup of the old database and keep it:",
        &format!("       heroku pg:backups:capture --app {a}\n       heroku pg:backups:download --app {a}\n"),
    );
    item(
        "Stop the old app's processes (the splitter runs as its web process: `cutover status` shows the traffic still reaching it):",
        &format!("       heroku ps:scale web=0 worker=0 --app {a}\n       heroku ps --app {a}        # nothing runs\n"),
    );
    item(
        "Remove the old database's add-on (find its name in the list):",
        &format!("       heroku addons --app {a}\n       heroku addons:destroy <heroku-postgresql add-on> --app {a} --confirm {a}\n"),
    );
    match &plan.dns {
        Some(d) => item(
            "Remove what DNS still holds for the old platform:",
            &format!(
                "       {} {} {} now answers {}; remove any record or weighted set still pointing at {}\n       heroku domains:remove {} --app {a}\n",
                d.name,
                d.record_type,
                d.name,
                d.new.join(", "),
                d.old.join(", "),
                d.name
            ),
        ),
        None => item(
            "Remove the old platform's custom domain once DNS points at the new one:",
            &format!("       heroku domains --app {a}\n       heroku domains:remove <domain> --app {a}\n"),
        ),
    }
    if plan.traffic.is_some() {
        item(
            "The splitter went with the old app's web process; remove [traffic] from the plan.",
            "",
        );
    }
    item(
        "The new app still reaches its database through the cutover proxy. When nothing else uses it, point the new app's DATABASE_URL at the new database directly, restart it, and stop the proxy:",
        "       cutover status    # the proxy's sessions: none left from the old platform\n",
    );
    item(
        "Revoke what the old platform could use: rotate the new database's passwords the old app knew, and delete the old app when nothing is left:",
        &format!("       heroku apps:destroy --app {a} --confirm {a}\n"),
    );
    out
}
