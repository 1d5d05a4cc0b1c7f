//! A step of the migration: what it does and changes, its precondition, its action, the
//! check that it took effect, and its undo; and what every step may use while it runs.

use std::sync::Mutex;

use cutover_core::engine::Steps;
use cutover_core::{Journal, Plan};
use futures_util::future::LocalBoxFuture;

use super::events::Event;
use super::follower::Follower;
use super::state::MigrationState;
use super::{MigrationError, Phase};

/// Not `Send`: a migration runs on the task that started it (the procedures it calls hold
/// borrowed closures the compiler cannot prove `Send` across every lifetime).
pub(crate) type Fut<'a, T> = LocalBoxFuture<'a, Result<T, MigrationError>>;

/// What a stop request (a rollback) does to a step under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnStop {
    /// Dropped where it is: it waits or reads, or is idempotent and runs again later.
    Drop,
    /// Let it end first: it is short and must not be cut (the switchover has its own undo).
    Finish,
    /// It watches for the request itself (the canary moves users back first).
    Own,
}

pub(crate) trait Step: Send + Sync {
    fn phase(&self) -> Phase;
    /// Its name within the phase: "sync" in "prepare.sync".
    fn name(&self) -> &'static str;
    /// What it does, one line: the journal's intent.
    fn does(&self, plan: &Plan) -> String;
    /// What it changes, for `cutover plan`: "nothing" for a step that only reads.
    fn changes(&self, plan: &Plan) -> String;
    /// A question for a person before it runs, for a step that changes production.
    fn approval(&self, _plan: &Plan) -> Option<String> {
        None
    }
    /// What must hold before it acts (it changes nothing when this fails).
    fn precondition<'a>(&'a self, _cx: &'a Cx<'a>) -> Fut<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    fn act<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String>;
    /// Checks, after the action, that what it was for is so.
    fn took_effect<'a>(&'a self, _cx: &'a Cx<'a>) -> Fut<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    /// What `rollback` does for it, for `cutover plan`; None when there is nothing to undo.
    fn undoes(&self, _plan: &Plan) -> Option<String> {
        None
    }
    /// Undoes it (idempotent); called only when [`Step::undoes`] says something.
    fn undo<'a>(&'a self, _cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(async { Ok("nothing to undo".to_string()) })
    }
    fn on_stop(&self) -> OnStop {
        OnStop::Drop
    }

    fn full_name(&self) -> String {
        format!("{}.{}", self.phase().as_str(), self.name())
    }
}

/// What a step works with.
pub(crate) struct Cx<'a> {
    pub plan: &'a Plan,
    pub steps: &'a Steps<'a>,
    pub events: &'a (dyn Fn(Event) + Send + Sync),
    pub state: &'a Mutex<MigrationState>,
    pub follower: &'a Follower,
    /// The step under way, for progress events.
    pub current: &'a Mutex<(Phase, String)>,
}

impl Cx<'_> {
    pub fn journal(&self) -> &Journal {
        self.steps.journal()
    }

    pub fn progress(&self, message: impl Into<String>) {
        let (phase, step) = self.current.lock().unwrap().clone();
        (self.events)(Event::Progress {
            phase,
            step,
            message: message.into(),
        });
    }

    /// True once a rollback asked this run to stop.
    pub fn stop_requested(&self) -> bool {
        super::state::stop_requested(self.journal()).unwrap_or(false)
    }

    /// The plan's proxies; the plan has a [proxy] (the runbook refuses one without).
    pub fn proxy(&self) -> Result<cutover_proxy::Proxies, MigrationError> {
        cutover_proxy::Proxies::from_plan(self.plan).map_err(MigrationError::Refused)
    }

    /// The splitter's admin client, when the plan has [traffic].
    pub fn splitter(&self) -> Option<cutover_traffic::splitter::admin::AdminClient> {
        self.plan.traffic.as_ref().map(|t| {
            cutover_traffic::splitter::admin::AdminClient::new(
                t.admin_listen,
                t.admin_token.clone(),
            )
        })
    }
}
