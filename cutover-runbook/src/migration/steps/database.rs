//! The database phase: the switchover, with the proxy holding new transactions for a moment.

use cutover_core::Plan;
use cutover_proxy::Backend;

use crate::migration::step::{Cx, Fut, OnStop, Step};
use crate::migration::{MigrationError, Phase};
use crate::{Direction, Options};

pub(crate) struct Switchover;

fn options(plan: &Plan) -> Options {
    Options {
        app_roles: plan
            .proxy
            .iter()
            .flat_map(|p| p.users.iter().map(|u| u.name.clone()))
            .collect(),
        ..Options::default()
    }
}

pub(crate) async fn switch(cx: &Cx<'_>, direction: Direction) -> Result<String, MigrationError> {
    let proxy = cx.proxy()?;
    let s = crate::switchover::run(
        cx.plan,
        cx.steps,
        &proxy,
        direction,
        &options(cx.plan),
        std::future::pending(),
    )
    .await?;
    if s.already {
        return Ok(format!("the proxy was already on the {}", s.active));
    }
    Ok(format!(
        "the proxy is on the {}: paused {:.0} ms, longest client wait {:.0} ms, {} sessions moved",
        s.active, s.pause_ms, s.longest_client_wait_ms, s.sessions_moved
    ))
}

impl Step for Switchover {
    fn phase(&self) -> Phase {
        Phase::Database
    }
    fn name(&self) -> &'static str {
        "switchover"
    }
    fn does(&self, _plan: &Plan) -> String {
        "switch the primary to the target: pause, drain, fence the source, catch up, sequences, reverse replication, move every session".into()
    }
    fn changes(&self, _plan: &Plan) -> String {
        "the primary (the target takes the writes; the source is fenced and follows it)".into()
    }
    fn approval(&self, _plan: &Plan) -> Option<String> {
        Some("switch the database to the target now? Clients through the proxy wait a moment; nothing is lost".into())
    }
    fn act<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(switch(cx, Direction::Switchover))
    }
    fn took_effect<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, ()> {
        Box::pin(async move {
            let s = cx.proxy()?.status().await?;
            if s.active == Backend::Target && !s.paused {
                Ok(())
            } else {
                Err(MigrationError::refused(format!(
                    "after the switchover the proxy is on the {}{}; `cutover db switchover` finishes it",
                    s.active,
                    if s.paused { ", paused" } else { "" }
                )))
            }
        })
    }
    fn undoes(&self, _plan: &Plan) -> Option<String> {
        Some(
            "switch back to the source, which followed the target since the switch (`db rollback`)"
                .into(),
        )
    }
    fn undo<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            // A switchover stopped before its switch (killed): what it began is undone and
            // the source never stopped being the primary. Else the database goes back.
            let proxy = cx.proxy()?;
            if crate::switchover::undo_interrupted(cx.plan, cx.steps, &proxy, Direction::Switchover)
                .await?
            {
                return Ok("the switch had not happened; what it began was undone and the source is the primary".into());
            }
            switch(cx, Direction::Rollback).await
        })
    }
    fn on_stop(&self) -> OnStop {
        OnStop::Finish
    }
}
