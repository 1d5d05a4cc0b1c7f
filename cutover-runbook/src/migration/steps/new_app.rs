//! The new-app phase: the new app is healthy, answers the plan's synthetic requests as
//! written, and answers read-only requests as the old app does. Any failure stops the run
//! before a single user is moved.

use cutover_core::Plan;
use cutover_traffic::probe::{self, App};

use crate::migration::step::{Cx, Fut, Step};
use crate::migration::{MigrationError, Phase};

/// The new app as the probes reach it.
pub(crate) fn new_app(plan: &Plan) -> Result<App, MigrationError> {
    let url = plan.new_app_url().ok_or_else(|| {
        MigrationError::refused(
            "the plan names no new app; add [new_app] url = \"https://...\" (or [traffic.new])",
        )
    })?;
    let origin = plan.traffic.as_ref().map(|t| &t.new);
    match origin {
        Some(o) if o.url == url => App::from_origin(o),
        Some(o) => App::new(url, o.host.as_deref(), o.sni.as_deref()),
        None => App::new(url, None, None),
    }
    .map_err(MigrationError::Refused)
}

fn health_path(plan: &Plan) -> String {
    plan.new_app
        .as_ref()
        .and_then(|n| n.health_path.clone())
        .or_else(|| plan.traffic.as_ref().map(|t| t.health_path.clone()))
        .unwrap_or_else(|| "/".into())
}

pub(crate) struct Health;

impl Step for Health {
    fn phase(&self) -> Phase {
        Phase::NewApp
    }
    fn name(&self) -> &'static str {
        "health"
    }
    fn does(&self, plan: &Plan) -> String {
        format!(
            "wait up to {} for {}{} to answer 2xx",
            humantime::format_duration(plan.migration.new_app_wait),
            plan.new_app_url().unwrap_or_default(),
            health_path(plan)
        )
    }
    fn changes(&self, _plan: &Plan) -> String {
        "nothing".into()
    }
    fn act<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            let app = new_app(cx.plan)?;
            let path = health_path(cx.plan);
            let report = |m: &str| cx.progress(m.to_string());
            let status = probe::wait_healthy(&app, &path, cx.plan.migration.new_app_wait, &report)
                .await
                .map_err(MigrationError::Refused)?;
            Ok(format!("{}{path} answered {status}", app.url))
        })
    }
}

pub(crate) struct Checks;

impl Step for Checks {
    fn phase(&self) -> Phase {
        Phase::NewApp
    }
    fn name(&self) -> &'static str {
        "checks"
    }
    fn does(&self, plan: &Plan) -> String {
        let checks = plan.new_app.as_ref().map(|n| n.checks.len()).unwrap_or(0);
        format!("send {checks} synthetic request(s) to the new app and check each answer")
    }
    fn changes(&self, plan: &Plan) -> String {
        let writes = plan
            .new_app
            .iter()
            .flat_map(|n| &n.checks)
            .filter(|c| !matches!(c.method.as_str(), "GET" | "HEAD" | "OPTIONS"))
            .count();
        if writes == 0 {
            "nothing".into()
        } else {
            format!("what the new app does for {writes} writing request(s) of the checks")
        }
    }
    fn act<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            let app = new_app(cx.plan)?;
            let checks = cx
                .plan
                .new_app
                .as_ref()
                .map(|n| n.checks.clone())
                .unwrap_or_default();
            let results = probe::synthetic(&app, &checks).await;
            let failed: Vec<String> = results
                .iter()
                .filter(|r| !r.passed)
                .map(|r| format!("{}: {}", r.name, r.problems.join("; ")))
                .collect();
            if failed.is_empty() {
                Ok(format!("{} synthetic check(s) passed", results.len()))
            } else {
                Err(MigrationError::refused(format!(
                    "{} of {} synthetic check(s) failed on the new app, so no user was moved: {}",
                    failed.len(),
                    results.len(),
                    failed.join(" | ")
                )))
            }
        })
    }
}

pub(crate) struct Shadow;

impl Step for Shadow {
    fn phase(&self) -> Phase {
        Phase::NewApp
    }
    fn name(&self) -> &'static str {
        "shadow"
    }
    fn does(&self, plan: &Plan) -> String {
        match plan.new_app.as_ref().and_then(|n| n.shadow.as_ref()) {
            Some(s) => format!(
                "send {} read-only path(s) {} time(s) to both apps and compare the answers",
                s.paths.len(),
                s.samples
            ),
            None => String::new(),
        }
    }
    fn changes(&self, _plan: &Plan) -> String {
        "nothing (GET requests only)".into()
    }
    fn act<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            let new = new_app(cx.plan)?;
            let traffic = cx.plan.traffic().map_err(MigrationError::Refused)?;
            let old = App::from_origin(&traffic.old).map_err(MigrationError::Refused)?;
            let settings = cx
                .plan
                .new_app
                .as_ref()
                .and_then(|n| n.shadow.clone())
                .ok_or_else(|| MigrationError::refused("the plan has no [new_app.shadow]"))?;
            let report = probe::shadow(&old, &new, &settings).await;
            if report.differences.is_empty() {
                Ok(format!(
                    "{} pair(s) of answers compared, no difference",
                    report.compared
                ))
            } else {
                Err(MigrationError::refused(format!(
                    "the new app answers differently from the old one, so no user was moved ({} difference(s)): {}; fix the new app, or list fields that may differ in new_app.shadow.ignore",
                    report.differences.len(),
                    report.differences.join(" | ")
                )))
            }
        })
    }
}
