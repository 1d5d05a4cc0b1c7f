//! The canary moving the DNS provider's weighted records (traffic.weights_via = "dns")
//! through our Route 53 fake, which keeps every batch it applied and can refuse batches from
//! some point on. The gates read the splitter's metrics of a real local origin: the splitter
//! sends it a fixed share of a steady load, and nothing moves that share.

#![cfg(feature = "route53")]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::route53::{fake, provider, settings, Fake, Sets, SECRET_KEY, ZONE_ID};
use common::{Load, Origin, TOKEN};
use cutover_core::engine::Steps;
use cutover_core::journal::Status;
use cutover_core::plan::DnsSettings;
use cutover_core::{Journal, Secret};
use cutover_traffic::canary::gates::{SplitterGates, Thresholds};
use cutover_traffic::canary::{self, Canary, CanaryError, Control, DnsWeights, Outcome, Phase};
use cutover_traffic::dns::route53::Route53;
use cutover_traffic::dns::{ops, NEW_SET, OLD_SET};
use cutover_traffic::splitter::{self, admin::AdminClient};

const OLD: &str = "192.0.2.10";
const NEW: &str = "198.51.100.20";

/// One set at www.example.com A: (set id, weight, TTL, values); the id is empty for the
/// plain record.
type Set = (String, Option<u32>, u32, Vec<String>);

fn set(id: &str, weight: Option<u32>, value: &str) -> Set {
    (id.to_string(), weight, 60, vec![value.to_string()])
}

fn zone(sets: &Sets) -> Vec<Set> {
    sets.iter()
        .filter(|((name, kind, _), _)| name == "www.example.com." && kind == "A")
        .map(|((_, _, id), (ttl, weight, values))| (id.clone(), *weight, *ttl, values.clone()))
        .collect()
}

/// The zone after each batch applied since the TTL was lowered.
fn history(f: &Fake) -> Vec<Vec<Set>> {
    f.history.lock().unwrap()[1..].iter().map(zone).collect()
}

/// What each batch since the TTL was lowered wrote (creates and upserts): set id and weight.
fn written(f: &Fake) -> Vec<Vec<(String, Option<u32>)>> {
    f.log.lock().unwrap()[1..]
        .iter()
        .map(|batch| {
            let mut w: Vec<_> = batch
                .iter()
                .filter(|c| c.action != "DELETE")
                .map(|c| (c.set_id.clone(), c.weight))
                .collect();
            w.sort();
            w
        })
        .collect()
}

fn weighted(new: u32) -> Vec<(String, Option<u32>)> {
    vec![
        (NEW_SET.to_string(), Some(new)),
        (OLD_SET.to_string(), Some(100 - new)),
    ]
}

/// The Route 53 fake, a splitter in front of two origins with a fixed share for the new
/// one, a steady load, and a journal whose TTL plan says the low TTL was published two hours
/// ago (so the canary needs no --force).
struct World {
    new: Origin,
    _old: Origin,
    splitter: splitter::Running,
    _load: Load,
    fake: Arc<Fake>,
    dns: DnsSettings,
    provider: Route53,
    journal: Journal,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start(new_fails: bool) -> World {
        let (old, new) = (Origin::start("old").await, Origin::start("new").await);
        new.fail(new_fails);
        // A liveness probe that keeps passing: the gates must see the failures.
        let s = common::live_splitter(&old, &new).await;
        AdminClient::new(s.admin_addr, Secret::new(TOKEN))
            .set_new_percent(50)
            .await
            .unwrap();
        let load = Load::start(s.addr);
        let (fake, addr) = fake().await;
        let dns = settings(format!("http://{addr}"), ZONE_ID);
        let provider = provider(&dns);
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("cutover.journal.db")).unwrap();
        let run = journal.begin_run("dns lower-ttl").unwrap();
        let obs = |_: &cutover_core::engine::StepEvent<'_>| {};
        ops::lower_ttl(&provider, &dns, &Steps::new(&journal, run, &obs))
            .await
            .unwrap();
        journal.end_run(run, "ok").unwrap();
        let mut plan = ops::ttl_plan(&journal).unwrap().unwrap();
        plan.lowered_at_ms -= 2 * 3600 * 1000;
        journal
            .set_fact(
                cutover_traffic::ttl::FACT,
                Some(&serde_json::to_string(&plan).unwrap()),
            )
            .unwrap();
        assert_eq!(
            fake.history
                .lock()
                .unwrap()
                .iter()
                .map(zone)
                .collect::<Vec<_>>(),
            [vec![set("", None, OLD)]],
            "the TTL was lowered to 60s"
        );
        World {
            new,
            _old: old,
            splitter: s,
            _load: load,
            fake,
            dns,
            provider,
            journal,
            _dir: dir,
        }
    }

    /// Runs the canary as `cutover traffic canary` does with weights_via = "dns"; returns
    /// its result and the report's lines.
    async fn canary(&self) -> (Result<Outcome, CanaryError>, Vec<String>) {
        let c = Canary {
            steps: vec![10, 50, 100],
            interval: Duration::from_millis(1200),
            check_every: Duration::from_millis(600),
            failure_threshold: 1,
            thresholds: Thresholds {
                min_success_rate: 95.0,
                max_p99: Duration::from_secs(5),
                min_requests: Some(3),
            },
        };
        let run = self.journal.begin_run("traffic canary").unwrap();
        let obs = |_: &cutover_core::engine::StepEvent<'_>| {};
        let steps = Steps::new(&self.journal, run, &obs);
        let weights = DnsWeights {
            provider: &self.provider,
            settings: &self.dns,
            steps: &steps,
            force: false,
        };
        let gates = SplitterGates::new(AdminClient::new(
            self.splitter.admin_addr,
            Secret::new(TOKEN),
        ));
        let lines = std::sync::Mutex::new(vec![]);
        let report = |l: &str| lines.lock().unwrap().push(l.to_string());
        let out = canary::run(&c, &weights, &gates, &steps, &report).await;
        (out, lines.into_inner().unwrap())
    }

    /// The last run's steps: name, status and outcome.
    fn journaled(&self) -> Vec<(String, Option<Status>, String)> {
        self.journal
            .timeline()
            .unwrap()
            .last()
            .unwrap()
            .steps
            .iter()
            .map(|s| {
                (
                    s.step.clone(),
                    s.status,
                    s.outcome.clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    fn step_names(&self) -> Vec<String> {
        self.journaled().into_iter().map(|s| s.0).collect()
    }

    /// A refused batch is refused whole: the records still send 10%.
    fn still_at_10(&self) {
        assert_eq!(written(&self.fake), [weighted(10)]);
        assert_eq!(
            zone(&self.fake.sets.lock().unwrap()),
            [set(NEW_SET, Some(10), NEW), set(OLD_SET, Some(90), OLD)]
        );
    }
}

/// The error a user sees when Route 53 refused a batch: what the canary was doing, the
/// provider's reason, what to run next; and no secret. Returns it.
fn refused(e: &CanaryError, doing: &str, next: &str) -> String {
    let text = e.to_string();
    let reason =
        "cannot set the weight: Route 53 refused to change www.example.com (InvalidChangeBatch: ";
    assert!(text.starts_with(&format!("{doing}{reason}")), "{text}");
    assert!(text.ends_with(next), "{text}");
    assert!(!text.contains(SECRET_KEY), "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_canary_writes_each_steps_weights_in_order_and_promotes() {
    let w = World::start(false).await;
    let (out, lines) = w.canary().await;
    let out = out.unwrap();
    assert_eq!(
        (out.phase, out.new_percent),
        (Phase::Promoted, 100),
        "{lines:#?}"
    );
    // One batch per step, each with both weighted sets, then the new answer alone.
    assert_eq!(
        written(&w.fake),
        [weighted(10), weighted(50), vec![(String::new(), None)]]
    );
    assert_eq!(
        history(&w.fake),
        [
            vec![set(NEW_SET, Some(10), NEW), set(OLD_SET, Some(90), OLD)],
            vec![set(NEW_SET, Some(50), NEW), set(OLD_SET, Some(50), OLD)],
            // 100/0: every resolution gets the new answer; the old one is gone.
            vec![set("", None, NEW)],
        ]
    );
    // Each step journals the DNS change it made, inside it.
    assert_eq!(
        w.step_names(),
        [
            "traffic.canary.step.1",
            "dns.split.10",
            "traffic.canary.step.2",
            "dns.split.50",
            "traffic.canary.step.3",
            "dns.split.100"
        ]
    );
    assert!(w.journaled().iter().all(|s| s.1 == Some(Status::Ok)));
    assert_eq!(
        canary::state(&w.journal).unwrap().unwrap().phase,
        Phase::Promoted
    );
    w.splitter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_gate_rolls_the_dns_weights_back_to_0() {
    let w = World::start(true).await;
    let (out, lines) = w.canary().await;
    let out = out.unwrap();
    assert_eq!(
        (out.phase, out.new_percent),
        (Phase::RolledBack, 0),
        "{lines:#?}"
    );
    let reason = out.reason.unwrap();
    assert!(
        reason.contains("below traffic.min_success_rate"),
        "{reason}"
    );
    assert_eq!(
        written(&w.fake),
        [weighted(10), vec![(String::new(), None)]]
    );
    // The rollback removed the new weighted set: no resolver is given the new answer.
    let rollback = w.fake.log.lock().unwrap().last().unwrap().clone();
    assert!(
        rollback
            .iter()
            .any(|c| c.action == "DELETE" && c.set_id == NEW_SET && c.weight == Some(10)),
        "{rollback:?}"
    );
    assert_eq!(
        history(&w.fake),
        [
            vec![set(NEW_SET, Some(10), NEW), set(OLD_SET, Some(90), OLD)],
            vec![set("", None, OLD)],
        ]
    );
    assert_eq!(
        w.step_names(),
        [
            "traffic.canary.step.1",
            "dns.split.10",
            "traffic.canary.rollback",
            "dns.split.0"
        ]
    );
    let state = canary::state(&w.journal).unwrap().unwrap();
    assert_eq!(
        (state.phase, state.step, state.new_percent),
        (Phase::RolledBack, 0, 0)
    );
    w.splitter.stop().await;
}

/// The provider refuses the second step's batch: the canary stops there with an error that
/// says where and what to do, the journal and the state say the same, and started again it
/// resumes at that step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_stops_the_canary_at_its_step_and_a_restart_resumes_there() {
    let w = World::start(false).await;
    // Batch 1 lowered the TTL, batch 2 is the 10% step, batch 3 the 50% step.
    w.fake.refuse_from.store(3, Ordering::SeqCst);
    let (out, lines) = w.canary().await;
    let e = out.unwrap_err();
    assert!(
        matches!(
            e,
            CanaryError::Stopped {
                step: 2,
                percent: 50,
                ..
            }
        ),
        "{e:?}"
    );
    let text = refused(
        &e,
        "the canary stopped at step 2 (50%): ",
        "; `cutover traffic canary` tries this step again, `cutover traffic abort` goes back to 0%",
    );
    w.still_at_10();
    // The journal: step 2 and its DNS change failed, with the provider's reason.
    let journaled = w.journaled();
    let names: Vec<&str> = journaled.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "traffic.canary.step.1",
            "dns.split.10",
            "traffic.canary.step.2",
            "dns.split.50"
        ],
        "{lines:#?}"
    );
    let statuses: Vec<_> = journaled.iter().map(|s| s.1).collect();
    assert_eq!(
        statuses,
        [
            Some(Status::Ok),
            Some(Status::Ok),
            Some(Status::Failed),
            Some(Status::Failed)
        ]
    );
    assert!(
        journaled[2].2.starts_with("cannot set the weight: Route 53 refused to change www.example.com (InvalidChangeBatch: "),
        "{}",
        journaled[2].2
    );
    // The state: still running at step 2, with the reason.
    let state = canary::state(&w.journal).unwrap().unwrap();
    assert_eq!(
        (state.phase, state.step, state.new_percent),
        (Phase::Running, 1, 50)
    );
    assert_eq!(state.reason.as_deref(), Some(text.as_str()));

    // The provider accepts batches again: the canary resumes at step 2 and promotes.
    w.fake.refuse_from.store(0, Ordering::SeqCst);
    let (out, lines) = w.canary().await;
    let out = out.unwrap();
    assert_eq!(lines[0], "resuming at step 2 (50%)");
    assert_eq!(
        (out.phase, out.new_percent, out.resumed_at),
        (Phase::Promoted, 100, 1),
        "{lines:#?}"
    );
    assert_eq!(
        written(&w.fake),
        [weighted(10), weighted(50), vec![(String::new(), None)]]
    );
    assert_eq!(
        w.step_names(),
        [
            "traffic.canary.step.2",
            "dns.split.50",
            "traffic.canary.step.3",
            "dns.split.100"
        ]
    );
    let state = canary::state(&w.journal).unwrap().unwrap();
    assert_eq!((state.phase, state.reason), (Phase::Promoted, None));
    w.splitter.stop().await;
}

/// `cutover traffic abort` after such a stop: started again, the canary goes to 0% without
/// first writing the step's weight again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_left_for_a_stopped_dns_canary_goes_to_0_first() {
    let w = World::start(false).await;
    w.fake.refuse_from.store(3, Ordering::SeqCst);
    let (out, _) = w.canary().await;
    assert!(
        matches!(out, Err(CanaryError::Stopped { step: 2, .. })),
        "{out:?}"
    );
    canary::request(&w.journal, Control::Abort).unwrap();
    w.fake.refuse_from.store(0, Ordering::SeqCst);
    let (out, lines) = w.canary().await;
    let out = out.unwrap();
    assert_eq!(
        (out.phase, out.new_percent),
        (Phase::Aborted, 0),
        "{lines:#?}"
    );
    assert_eq!(
        written(&w.fake),
        [weighted(10), vec![(String::new(), None)]]
    );
    assert_eq!(zone(&w.fake.sets.lock().unwrap()), [set("", None, OLD)]);
    assert_eq!(w.step_names(), ["traffic.canary.abort", "dns.split.0"]);
    w.splitter.stop().await;
}

/// A gate fails and the provider refuses the batch that moves the weight back to 0%: the
/// canary stops saying the rollback did not complete and how to try it again, and its state
/// says it is rolling back. Started again once the provider accepts batches, its first and
/// only batch is the move to 0%: it never sends users back to the failing app first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_rollback_is_retried_first_and_never_raises_the_weight() {
    let w = World::start(true).await;
    // Batch 1 lowered the TTL, batch 2 is the 10% step, batch 3 the rollback.
    w.fake.refuse_from.store(3, Ordering::SeqCst);
    let (out, lines) = w.canary().await;
    let e = out.unwrap_err();
    assert!(
        matches!(
            e,
            CanaryError::Unfinished {
                to: 0,
                percent: 10,
                ..
            }
        ),
        "{e:?}\n{lines:#?}"
    );
    let text = refused(
        &e,
        "the rollback to 0% did not complete: ",
        "; the new app may still get 10% of new users; `cutover traffic canary` tries the move to 0% again before anything else",
    );
    w.still_at_10();
    // The state says it is rolling back, why, and why the move did not complete.
    let state = canary::state(&w.journal).unwrap().unwrap();
    assert_eq!(
        (state.phase, state.step, state.new_percent),
        (Phase::RollingBack, 0, 10)
    );
    let reason = state.reason.clone().unwrap();
    assert!(
        reason.contains("below traffic.min_success_rate"),
        "{reason}"
    );
    assert_eq!(state.error.as_deref(), Some(text.as_str()));
    assert_eq!(
        state.summary(),
        format!("rolling back to 0% from step 1 (10%), not finished: {text}; it rolls back because {reason}")
    );

    // The provider accepts batches again, and the new app passes its checks now (a flapping
    // app): the canary decided to roll back, so started again it finishes that, and does not
    // watch the step again (which could pass and raise the weight).
    w.fake.refuse_from.store(0, Ordering::SeqCst);
    w.new.fail(false);
    let received = w.fake.received.load(Ordering::SeqCst);
    let (out, lines) = w.canary().await;
    let out = out.unwrap();
    assert_eq!(
        lines,
        [
            "resuming the rollback to 0%".to_string(),
            format!("rolled back to 0%: {reason}")
        ]
    );
    assert_eq!(
        (out.phase, out.new_percent, out.reason.as_deref()),
        (Phase::RolledBack, 0, Some(reason.as_str())),
        "{lines:#?}"
    );
    // One batch was sent, the move to 0%: the step's 10% was not written again.
    assert_eq!(w.fake.received.load(Ordering::SeqCst), received + 1);
    assert_eq!(
        written(&w.fake),
        [weighted(10), vec![(String::new(), None)]]
    );
    assert_eq!(zone(&w.fake.sets.lock().unwrap()), [set("", None, OLD)]);
    assert_eq!(w.step_names(), ["traffic.canary.rollback", "dns.split.0"]);
    let state = canary::state(&w.journal).unwrap().unwrap();
    assert_eq!(
        (state.phase, state.new_percent, state.error),
        (Phase::RolledBack, 0, None)
    );
    w.splitter.stop().await;
}
