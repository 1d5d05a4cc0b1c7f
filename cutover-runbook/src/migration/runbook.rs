//! The runbook a plan file makes: the steps in order, the ones left out and what would bring
//! them in, and what the plan lacks for the migration to run at all. `cutover plan` prints
//! it and can save it with a fingerprint of the plan, which `cutover apply` checks.

use std::path::PathBuf;

use cutover_core::plan::{Order, WeightsVia};
use cutover_core::Plan;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::step::Step;
use super::steps::{database, done, finish, hold, new_app, prepare, proxy, traffic};
use super::{MigrationError, Phase};

/// A phase or step left out, and what the plan needs for it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Skipped {
    pub phase: Phase,
    /// The step, or None for the whole phase.
    pub step: Option<String>,
    pub why: String,
}

/// One step as `cutover plan` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepPlan {
    pub phase: Phase,
    pub step: String,
    pub does: String,
    pub changes: String,
    /// The question a person answers before it runs.
    pub approval: Option<String>,
    /// What `cutover rollback` does for it.
    pub undo: Option<String>,
}

pub struct Runbook {
    pub order: Order,
    pub(crate) steps: Vec<Box<dyn Step>>,
    pub skipped: Vec<Skipped>,
    /// What keeps the migration from running at all.
    pub blocking: Vec<String>,
}

impl Runbook {
    pub fn of(plan: &Plan) -> Runbook {
        let mut steps: Vec<Box<dyn Step>> = vec![];
        let mut skipped = vec![];
        let mut blocking = vec![];
        let skip = |skipped: &mut Vec<Skipped>, phase, step: Option<&str>, why: &str| {
            skipped.push(Skipped {
                phase,
                step: step.map(|s| format!("{phase}.{s}")),
                why: why.into(),
            })
        };
        if plan.proxy.is_none() {
            blocking.push(format!(
                "{} has no [proxy]: every app must reach the database through the cutover proxy before anything moves; add [proxy] with admin_token = \"${{CUTOVER_ADMIN_TOKEN}}\" and a [[proxy.users]] per application role (see `cutover init`)",
                plan.path.display()
            ));
        }
        // prepare
        steps.push(Box::new(prepare::Check));
        if plan.dns.is_some() {
            steps.push(Box::new(prepare::LowerTtl));
        } else {
            skip(&mut skipped, Phase::Prepare, Some("lower_ttl"), "no [dns]: cutover does not change the DNS record; add [dns] (provider, zone, name, old, new) to lower its TTL ahead of the move and switch it after the canary");
        }
        steps.push(Box::new(prepare::Sync));
        steps.push(Box::new(prepare::Verify));
        // new app
        let checks = plan.new_app.as_ref().is_some_and(|n| !n.checks.is_empty());
        let shadow = plan.new_app.as_ref().is_some_and(|n| n.shadow.is_some());
        if plan.new_app_url().is_some() {
            steps.push(Box::new(new_app::Health));
            if checks {
                steps.push(Box::new(new_app::Checks));
            } else {
                skip(&mut skipped, Phase::NewApp, Some("checks"), "no [[new_app.checks]]: add requests the new app must answer before users reach it (method, path, body, status, json fields)");
            }
            if shadow && plan.traffic.is_some() {
                steps.push(Box::new(new_app::Shadow));
            } else if shadow {
                skip(
                    &mut skipped,
                    Phase::NewApp,
                    Some("shadow"),
                    "[new_app.shadow] needs [traffic.old] to reach the old app",
                );
            } else {
                skip(&mut skipped, Phase::NewApp, Some("shadow"), "no [new_app.shadow]: add read-only paths to send to both apps and compare (paths = [\"/orders?limit=10\"])");
            }
        } else {
            skip(&mut skipped, Phase::NewApp, None, "the plan names no new app: add [new_app] url = \"https://...\" (or [traffic] with [traffic.new]) so it is judged before users reach it");
        }
        // all apps through the proxy
        steps.push(Box::new(proxy::Sessions));
        // database and traffic, in the plan's order
        let mut moves: Vec<Box<dyn Step>> = vec![Box::new(database::Switchover)];
        let mut users: Vec<Box<dyn Step>> = vec![];
        match &plan.traffic {
            Some(t) => {
                users.push(Box::new(traffic::CanaryStep));
                match (t.weights_via, plan.dns.is_some()) {
                    (WeightsVia::Splitter, true) => users.push(Box::new(traffic::DnsSwitch)),
                    (WeightsVia::Splitter, false) => skip(&mut skipped, Phase::Traffic, Some("dns"), "no [dns]: after the canary, point the name at the new app yourself; the splitter keeps sending stale clients to it meanwhile"),
                    (WeightsVia::Dns, _) => skip(&mut skipped, Phase::Traffic, Some("dns"), "the canary moves the DNS weights itself (traffic.weights_via = \"dns\")"),
                }
            }
            None => skip(&mut skipped, Phase::Traffic, None, "no [traffic]: cutover does not move users; add [traffic] with the splitter in front of the old app ([traffic.old], [traffic.new]) to move them in gated steps"),
        }
        match plan.migration.order {
            Order::DatabaseFirst => {
                steps.append(&mut moves);
                steps.append(&mut users);
            }
            Order::TrafficFirst => {
                steps.append(&mut users);
                steps.append(&mut moves);
            }
        }
        if plan.traffic.is_some() {
            steps.push(Box::new(done::Residual));
        } else {
            skip(&mut skipped, Phase::Done, None, "no [traffic]: the traffic left at the old origin is measured at the splitter in front of it; without one the move is done when the database is");
        }
        steps.push(Box::new(hold::Window));
        steps.push(Box::new(finish::Cleanup));
        steps.push(Box::new(finish::Checklist));
        Runbook {
            order: plan.migration.order,
            steps,
            skipped,
            blocking,
        }
    }

    /// The phases in the order this runbook runs them.
    pub fn phases(&self) -> Vec<Phase> {
        let mut out: Vec<Phase> = vec![];
        for s in &self.steps {
            if out.last() != Some(&s.phase()) {
                out.push(s.phase());
            }
        }
        out
    }

    pub fn describe(&self, plan: &Plan) -> Vec<StepPlan> {
        self.steps
            .iter()
            .map(|s| StepPlan {
                phase: s.phase(),
                step: s.full_name(),
                does: s.does(plan),
                changes: s.changes(plan),
                approval: s.approval(plan),
                undo: s.undoes(plan),
            })
            .collect()
    }

    pub(crate) fn step(&self, name: &str) -> Option<&dyn Step> {
        self.steps
            .iter()
            .find(|s| s.full_name() == name)
            .map(|s| s.as_ref())
    }
}

/// `cutover plan -o FILE`: the runbook with the plan file it came from and its fingerprint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedPlan {
    /// The format of this file.
    pub cutover_plan: u32,
    pub plan_file: PathBuf,
    /// SHA-256 of the plan file's text and of the settings it resolved to (secrets left out).
    pub fingerprint: String,
    pub order: Order,
    pub steps: Vec<StepPlan>,
    pub skipped: Vec<Skipped>,
    pub blocking: Vec<String>,
}

/// The fingerprint of a plan as it is now: its file's text and the settings its references
/// resolved to (an environment variable pointing elsewhere changes it too).
pub fn fingerprint(plan: &Plan) -> Result<String, MigrationError> {
    let text = std::fs::read(&plan.path).map_err(|e| {
        MigrationError::refused(format!("cannot read {}: {e}", plan.path.display()))
    })?;
    let resolved = serde_json::to_vec(plan).expect("a plan serializes");
    let mut h = Sha256::new();
    h.update(&text);
    h.update([0u8]);
    h.update(&resolved);
    Ok(format!("sha256:{}", hex(&h.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn saved_plan(plan: &Plan) -> Result<SavedPlan, MigrationError> {
    let r = Runbook::of(plan);
    Ok(SavedPlan {
        cutover_plan: 1,
        plan_file: std::path::absolute(&plan.path).unwrap_or_else(|_| plan.path.clone()),
        fingerprint: fingerprint(plan)?,
        order: r.order,
        steps: r.describe(plan),
        skipped: r.skipped.clone(),
        blocking: r.blocking.clone(),
    })
}

impl SavedPlan {
    pub fn read(path: &std::path::Path) -> Result<SavedPlan, MigrationError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            MigrationError::refused(format!(
                "cannot read the saved plan {}: {e}; write one with `cutover plan -o {}`",
                path.display(),
                path.display()
            ))
        })?;
        serde_json::from_str(&text).map_err(|e| {
            MigrationError::refused(format!(
                "{} is not a plan saved by `cutover plan -o` ({e})",
                path.display()
            ))
        })
    }

    /// Refuses when the plan file (or what it resolves to) changed since this was saved.
    pub fn check(&self, plan: &Plan) -> Result<(), MigrationError> {
        let now = fingerprint(plan)?;
        if now != self.fingerprint {
            return Err(MigrationError::refused(format!(
                "{} changed since this plan was saved (fingerprint {} then, {} now); review it again with `cutover plan -o <file>` and apply that",
                self.plan_file.display(),
                short(&self.fingerprint),
                short(&now)
            )));
        }
        Ok(())
    }
}

fn short(f: &str) -> &str {
    &f[..f.len().min(19)]
}
