//! The canary with two local origins behind the splitter and a steady load.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{get, live_splitter, splitter, Load, Origin, Recording, TOKEN};
use cutover_core::engine::Steps;
use cutover_core::{Journal, Secret};
use cutover_traffic::canary::gates::{SplitterGates, Thresholds};
use cutover_traffic::canary::{self, Canary, Control, Phase, Weights};
use cutover_traffic::splitter::admin::AdminClient;
use cutover_traffic::splitter::Side;
use futures_util::future::BoxFuture;

fn canary(interval_ms: u64) -> Canary {
    Canary {
        steps: vec![10, 50, 100],
        interval: Duration::from_millis(interval_ms),
        check_every: Duration::from_millis(interval_ms / 2),
        failure_threshold: 1,
        thresholds: Thresholds {
            min_success_rate: 95.0,
            max_p99: Duration::from_secs(5),
            min_requests: Some(3),
        },
    }
}

/// The splitter's admin client, remembering every weight it was asked to set.
/// Moves the weight, and breaks the new origin once the weight reaches `at` percent: an app
/// that works for its first users and fails under its share of real traffic.
struct BreaksAt {
    weights: Recording,
    at: u8,
    failing: Arc<AtomicBool>,
}
impl Weights for BreaksAt {
    fn set(&self, p: u8) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.weights.set(p).await?;
            if p >= self.at {
                self.failing.store(true, Ordering::SeqCst);
            }
            Ok(())
        })
    }
}

fn journal(dir: &tempfile::TempDir) -> Journal {
    Journal::open(&dir.path().join("cutover.journal.db")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_new_origin_is_promoted_to_100() {
    let (old, new) = (Origin::start("old").await, Origin::start("new").await);
    let s = splitter(&old, &new).await;
    let _load = Load::start(s.addr);
    let admin = AdminClient::new(s.admin_addr, Secret::new(TOKEN));
    let dir = tempfile::tempdir().unwrap();
    let j = journal(&dir);
    let run = j.begin_run("traffic canary").unwrap();
    let obs = |_: &cutover_core::engine::StepEvent<'_>| {};
    let steps = Steps::new(&j, run, &obs);
    let weights = Recording::new(&admin);
    let out = canary::run(
        &canary(1200),
        &weights,
        &SplitterGates::new(admin.clone()),
        &steps,
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!((out.phase, out.new_percent), (Phase::Promoted, 100));
    assert_eq!(*weights.1.lock().unwrap(), [10, 50, 100]);
    assert_eq!(admin.status().await.unwrap().new_percent, 100);
    let names: Vec<String> = j.timeline().unwrap()[0]
        .steps
        .iter()
        .map(|s| s.step.clone())
        .collect();
    assert_eq!(
        names,
        [
            "traffic.canary.step.1",
            "traffic.canary.step.2",
            "traffic.canary.step.3"
        ]
    );
    assert_eq!(canary::state(&j).unwrap().unwrap().phase, Phase::Promoted);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_new_origin_is_rolled_back_to_0_within_one_interval() {
    let (old, new) = (Origin::start("old").await, Origin::start("new").await);
    new.fail(true);
    let s = splitter(&old, &new).await;
    let _load = Load::start(s.addr);
    let admin = AdminClient::new(s.admin_addr, Secret::new(TOKEN));
    let dir = tempfile::tempdir().unwrap();
    let j = journal(&dir);
    let run = j.begin_run("traffic canary").unwrap();
    let obs = |_: &cutover_core::engine::StepEvent<'_>| {};
    let steps = Steps::new(&j, run, &obs);
    let weights = Recording::new(&admin);
    let out = canary::run(
        &canary(1200),
        &weights,
        &SplitterGates::new(admin.clone()),
        &steps,
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(out.phase, Phase::RolledBack);
    // The first check at 10% failed and the next weight set was 0: within one interval.
    assert_eq!(*weights.1.lock().unwrap(), [10, 0]);
    let reason = out.reason.unwrap();
    assert!(
        reason.contains("below traffic.min_success_rate"),
        "{reason}"
    );
    assert_eq!(admin.status().await.unwrap().new_percent, 0);
    let names: Vec<String> = j.timeline().unwrap()[0]
        .steps
        .iter()
        .map(|s| s.step.clone())
        .collect();
    assert_eq!(names, ["traffic.canary.step.1", "traffic.canary.rollback"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_starts_failing_at_10_is_rolled_back_to_0_within_one_interval() {
    let (old, new) = (Origin::start("old").await, Origin::start("new").await);
    // Its liveness probe keeps passing: the splitter does not mark it down, the gates must
    // see the failures.
    let s = live_splitter(&old, &new).await;
    // New users, and users already on the new side (their cookie keeps them there while it
    // has a share): at 1% new users alone would leave a short check window nearly empty,
    // which is "no data" and would fail the 1% step for the wrong reason.
    let _load = Load::start(s.addr);
    let _pinned = Load::users(s.addr, 1, Some("cutover_origin=new"));
    let admin = AdminClient::new(s.admin_addr, Secret::new(TOKEN));
    let dir = tempfile::tempdir().unwrap();
    let j = journal(&dir);
    let run = j.begin_run("traffic canary").unwrap();
    let obs = |_: &cutover_core::engine::StepEvent<'_>| {};
    let steps = Steps::new(&j, run, &obs);
    let weights = BreaksAt {
        weights: Recording::new(&admin),
        at: 10,
        failing: new.failing.clone(),
    };
    let c = Canary {
        steps: vec![1, 10, 25, 100],
        ..canary(1200)
    };
    let checks_per_step = (c.interval.as_millis() / c.check_every.as_millis()) as usize;
    let lines = Mutex::new(vec![]);
    let report = |l: &str| lines.lock().unwrap().push(l.to_string());
    let out = canary::run(
        &c,
        &weights,
        &SplitterGates::new(admin.clone()),
        &steps,
        &report,
    )
    .await
    .unwrap();
    let lines = lines.into_inner().unwrap();
    assert_eq!(
        (out.phase, out.new_percent),
        (Phase::RolledBack, 0),
        "{lines:#?}"
    );
    // 25% was never set: the rollback came before the 10% step's interval was over.
    assert_eq!(*weights.weights.1.lock().unwrap(), [1, 10, 0], "{lines:#?}");
    let reason = out.reason.unwrap();
    assert!(
        reason.contains("below traffic.min_success_rate"),
        "the gate saw the failures, not an empty window: {reason}"
    );
    // Healthy at 1%: every check of the step passed.
    let checks_at = |p: u8| -> Vec<&str> {
        lines
            .iter()
            .map(|l| l.trim_start())
            .filter(|l| {
                ["check passed at", "check failed at"]
                    .iter()
                    .any(|k| l.starts_with(&format!("{k} {p}%")))
            })
            .collect()
    };
    let at_1 = checks_at(1);
    assert_eq!(at_1.len(), checks_per_step, "{lines:#?}");
    assert!(
        at_1.iter().all(|l| l.starts_with("check passed")),
        "{lines:#?}"
    );
    // At 10%: no check passed, and the rollback came within the step's checks.
    let at_10 = checks_at(10);
    assert!(
        !at_10.is_empty() && at_10.len() <= checks_per_step,
        "{lines:#?}"
    );
    assert!(
        at_10.iter().all(|l| l.starts_with("check failed")),
        "{lines:#?}"
    );
    assert_eq!(
        lines.last().unwrap(),
        &format!("rolled back to 0%: {reason}")
    );

    // The journal: both steps, then the rollback with its reason, each done.
    let journaled: Vec<(String, String)> = j.timeline().unwrap()[0]
        .steps
        .iter()
        .map(|s| {
            assert_eq!(s.status, Some(cutover_core::journal::Status::Ok), "{s:?}");
            (s.step.clone(), s.intent.clone())
        })
        .collect();
    assert_eq!(
        journaled,
        [
            (
                "traffic.canary.step.1".to_string(),
                "send 1% of new users to the new app".to_string()
            ),
            (
                "traffic.canary.step.2".to_string(),
                "send 10% of new users to the new app".to_string()
            ),
            (
                "traffic.canary.rollback".to_string(),
                format!("set the new app to 0%: {reason}")
            ),
        ]
    );
    let state = canary::state(&j).unwrap().unwrap();
    assert_eq!(
        (state.phase, state.step, state.new_percent),
        (Phase::RolledBack, 1, 0),
        "rolled back from the second step (10%)"
    );

    // The splitter: the new origin answered 2xx at 1% and 5xx at 10%; nobody is sent to it
    // any more, not even the users whose cookie names it.
    let status = admin.status().await.unwrap();
    assert_eq!(status.new_percent, 0);
    let m = &status.origins[Side::New.index()].metrics;
    assert!(m.classes[1] > 0 && m.classes[4] > 0, "{m:?}");
    assert_eq!(
        get(s.addr, "GET", "/", Some("cutover_origin=new"), b"")
            .await
            .origin,
        "old"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_data_counts_as_a_failed_check() {
    let (old, new) = (Origin::start("old").await, Origin::start("new").await);
    let s = splitter(&old, &new).await;
    // No load at all.
    let admin = AdminClient::new(s.admin_addr, Secret::new(TOKEN));
    let dir = tempfile::tempdir().unwrap();
    let j = journal(&dir);
    let run = j.begin_run("traffic canary").unwrap();
    let obs = |_: &cutover_core::engine::StepEvent<'_>| {};
    let steps = Steps::new(&j, run, &obs);
    let out = canary::run(
        &canary(600),
        &admin,
        &SplitterGates::new(admin.clone()),
        &steps,
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(out.phase, Phase::RolledBack);
    assert!(out.reason.unwrap().starts_with("no data: 0 requests"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_canary_resumes_at_the_same_step_and_obeys_abort() {
    let (old, new) = (Origin::start("old").await, Origin::start("new").await);
    let s = splitter(&old, &new).await;
    let _load = Load::start(s.addr);
    let admin = AdminClient::new(s.admin_addr, Secret::new(TOKEN));
    let dir = tempfile::tempdir().unwrap();
    let c = canary(60_000);
    {
        let j = journal(&dir);
        let run = j.begin_run("traffic canary").unwrap();
        let obs = |_: &cutover_core::engine::StepEvent<'_>| {};
        let steps = Steps::new(&j, run, &obs);
        let quick = Canary {
            interval: Duration::from_millis(800),
            check_every: Duration::from_millis(400),
            ..c.clone()
        };
        let gates = SplitterGates::new(admin.clone());
        let running = canary::run(&quick, &admin, &gates, &steps, &|_| {});
        tokio::pin!(running);
        // Killed while watching step 2 (50%).
        loop {
            tokio::select! {
                r = &mut running => panic!("the canary ended early: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            if canary::state(&j).unwrap().is_some_and(|s| s.step == 1) {
                break;
            }
        }
    }
    let j = journal(&dir);
    assert_eq!(canary::state(&j).unwrap().unwrap().phase, Phase::Running);
    let run = j.begin_run("traffic canary").unwrap();
    let obs = |_: &cutover_core::engine::StepEvent<'_>| {};
    let steps = Steps::new(&j, run, &obs);
    let weights = Recording::new(&admin);
    let gates = SplitterGates::new(admin.clone());
    let lines = Mutex::new(vec![]);
    let report = |l: &str| lines.lock().unwrap().push(l.to_string());
    let running = canary::run(&c, &weights, &gates, &steps, &report);
    tokio::pin!(running);
    let out = loop {
        tokio::select! {
            r = &mut running => break r.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if weights.1.lock().unwrap().len() == 1 && j.fact(canary::CONTROL_FACT).unwrap().is_none() {
                    canary::request(&j, Control::Abort).unwrap();
                }
            }
        }
    };
    assert_eq!(out.resumed_at, 1);
    assert_eq!(
        *weights.1.lock().unwrap(),
        [50, 0],
        "resumed at 50%, then aborted to 0%"
    );
    assert_eq!((out.phase, out.new_percent), (Phase::Aborted, 0));
    assert_eq!(lines.lock().unwrap()[0], "resuming at step 2 (50%)");
    assert_eq!(admin.status().await.unwrap().new_percent, 0);
    s.stop().await;
}

/// Refuses to set 100% while `refuse` holds, as a splitter that cannot be reached would;
/// remembers every weight it was asked to set.
struct RefusesPromotion {
    weights: Recording,
    refuse: AtomicBool,
}
impl Weights for RefusesPromotion {
    fn set(&self, p: u8) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if p == 100 && self.refuse.load(Ordering::SeqCst) {
                self.weights.1.lock().unwrap().push(p);
                return Err("the splitter refused 100%".to_string());
            }
            self.weights.set(p).await
        })
    }
}

/// A promotion whose move to 100% fails stops the canary as promoting; started again, the
/// canary makes that move first and only, and never lowers the weight to the step's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_promotion_resumes_as_promoting_and_never_lowers() {
    let (old, new) = (Origin::start("old").await, Origin::start("new").await);
    let s = splitter(&old, &new).await;
    let _load = Load::start(s.addr);
    let admin = AdminClient::new(s.admin_addr, Secret::new(TOKEN));
    let dir = tempfile::tempdir().unwrap();
    let j = journal(&dir);
    let c = canary(60_000);
    let weights = RefusesPromotion {
        weights: Recording::new(&admin),
        refuse: AtomicBool::new(true),
    };
    let gates = SplitterGates::new(admin.clone());
    let obs = |_: &cutover_core::engine::StepEvent<'_>| {};
    let run = j.begin_run("traffic canary").unwrap();
    let steps = Steps::new(&j, run, &obs);
    let running = canary::run(&c, &weights, &gates, &steps, &|_| {});
    tokio::pin!(running);
    let out = loop {
        tokio::select! {
            r = &mut running => break r,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if weights.weights.1.lock().unwrap().len() == 1 && j.fact(canary::CONTROL_FACT).unwrap().is_none() {
                    canary::request(&j, Control::Promote).unwrap();
                }
            }
        }
    };
    let e = out.unwrap_err();
    assert_eq!(
        e.to_string(),
        "the promotion to 100% did not complete: cannot set the weight: the splitter refused 100%; the new app may still get 10% of new users; `cutover traffic canary` tries the move to 100% again before anything else, `cutover traffic abort` goes back to 0% instead"
    );
    assert_eq!(*weights.weights.1.lock().unwrap(), [10, 100]);
    assert_eq!(admin.status().await.unwrap().new_percent, 10);
    let state = canary::state(&j).unwrap().unwrap();
    assert_eq!(
        (state.phase, state.step, state.new_percent),
        (Phase::Promoting, 0, 10)
    );
    assert_eq!(
        state.summary(),
        format!("promoting to 100% from step 1 (10%), not finished: {e}")
    );

    weights.refuse.store(false, Ordering::SeqCst);
    weights.weights.1.lock().unwrap().clear();
    let run = j.begin_run("traffic canary").unwrap();
    let steps = Steps::new(&j, run, &obs);
    let lines = Mutex::new(vec![]);
    let report = |l: &str| lines.lock().unwrap().push(l.to_string());
    let out = canary::run(&c, &weights, &gates, &steps, &report)
        .await
        .unwrap();
    assert_eq!(
        (out.phase, out.new_percent, out.resumed_at),
        (Phase::Promoted, 100, 0)
    );
    assert_eq!(*lines.lock().unwrap(), ["resuming the promotion to 100%"]);
    // 100% and nothing else: the step's 10% was not set again.
    assert_eq!(*weights.weights.1.lock().unwrap(), [100]);
    assert_eq!(admin.status().await.unwrap().new_percent, 100);
    let names: Vec<String> = j.timeline().unwrap()[1]
        .steps
        .iter()
        .map(|s| s.step.clone())
        .collect();
    assert_eq!(names, ["traffic.canary.promote"]);
    let state = canary::state(&j).unwrap().unwrap();
    assert_eq!((state.phase, state.error), (Phase::Promoted, None));
    s.stop().await;
}
