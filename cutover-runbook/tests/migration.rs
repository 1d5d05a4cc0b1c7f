//! The whole migration against real servers: two clusters, the shop on each platform, the
//! proxy, the splitter, and users sending HTTP requests through them the whole time. Every
//! test ends by checking the users' side: no request failed, no acknowledged order is missing.

use std::sync::Mutex;
use std::time::Duration;

use cutover_core::journal::Status;
use cutover_core::plan::Order;
use cutover_core::Journal;
use cutover_pg::Side;
use cutover_proxy::Backend;
use cutover_runbook::demo::{whole, DemoOptions, Stage, StageOptions};
use cutover_runbook::migration::{
    self, Applied, Approval, Event, MigrationError, MigrationState, Phase, RunState,
};
use futures_util::future::BoxFuture;

/// Two moves at a time at most: each is two clusters, two apps, a proxy and a splitter, and
/// the canary's gates judge latencies.
static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

fn yes(_q: String) -> BoxFuture<'static, Approval> {
    Box::pin(async { Approval::Yes })
}

struct Move {
    stage: Stage,
    journal: Journal,
    events: Mutex<Vec<Event>>,
}

impl Move {
    async fn start(options: StageOptions) -> Move {
        let stage = Stage::start(options).await.expect("the stage starts");
        let journal = Journal::open(&stage.plan.journal_path()).unwrap();
        Move {
            stage,
            journal,
            events: Mutex::new(vec![]),
        }
    }

    /// A move stopped after its database phase, under load: the target is the primary, users
    /// are still on the old app.
    async fn database_moved() -> (Move, cutover_demo::load::Load) {
        let m = Move::start(StageOptions::default()).await;
        let load = m.stage.load(30.0);
        let a = m.apply(Some(Phase::Database)).await.unwrap();
        assert_eq!(a.state, RunState::Stopped);
        assert_eq!(m.proxy_on().await, Backend::Target);
        (m, load)
    }

    fn record(&self) -> impl Fn(Event) + Send + Sync + '_ {
        |e| self.events.lock().unwrap().push(e)
    }

    /// `apply`, with users moving to the new app's address once the canary has promoted (as
    /// DNS caches expire).
    async fn apply(&self, until: Option<Phase>) -> Result<Applied, MigrationError> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let record = |e: Event| {
            self.events.lock().unwrap().push(e.clone());
            let _ = tx.send(e);
        };
        let new_url = self.stage.new_app_url();
        let options = migration::Options { yes: true, until };
        let apply = migration::apply(&self.stage.plan, &self.journal, &options, &record, &yes);
        tokio::pin!(apply);
        loop {
            tokio::select! {
                a = &mut apply => return a,
                Some(e) = rx.recv() => {
                    if matches!(&e, Event::StepFinished { step, status: Status::Ok, .. } if step == "traffic.canary") {
                        self.stage.resolver.set(&new_url);
                    }
                }
            }
        }
    }

    async fn rollback(&self) -> Result<migration::RolledBack, MigrationError> {
        let r = migration::rollback(&self.stage.plan, &self.journal, &self.record()).await;
        // Users' DNS answers the old platform again.
        self.stage.resolver.set(&format!(
            "http://{}",
            self.stage.splitter.as_ref().unwrap().addr
        ));
        r
    }

    fn state(&self) -> MigrationState {
        MigrationState::load(&self.journal).unwrap().unwrap()
    }

    /// The step the migration is at, if it has started.
    fn step(&self) -> Option<String> {
        MigrationState::load(&self.journal)
            .unwrap()
            .and_then(|s| s.step)
    }

    async fn proxy_on(&self) -> Backend {
        self.stage.proxy.as_ref().unwrap().shared.status().active
    }

    fn new_percent(&self) -> u8 {
        self.stage.splitter.as_ref().unwrap().shared.new_percent()
    }

    /// The old platform serves: its app takes an order, straight, now.
    async fn old_app_takes_an_order(&self) {
        let addr = self.stage.old_app.as_ref().unwrap().addr;
        let (status, _) = cutover_traffic::http::request(
            hyper::Method::POST,
            &format!("http://{addr}/orders"),
            &[("content-type", "application/json".into())],
            Some(br#"{"customer": 7, "total": "1.00"}"#.to_vec()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(status.as_u16(), 201);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_first_moves_everything_under_load_losing_nothing() {
    let _slot = SLOTS.acquire().await.unwrap();
    let s = whole::run(
        &DemoOptions {
            heroku: false,
            order: Order::TrafficFirst,
            rate: 40.0,
        },
        &|_| {},
        &|_| {},
    )
    .await
    .unwrap();
    assert!(s.clean(), "{s:#?}");
    assert_eq!(s.requests_failed, 0, "{:?}", s.failures);
    assert_eq!(s.writes_lost, 0);
    let phases: Vec<Phase> = s.phases.iter().map(|p| p.phase).collect();
    assert_eq!(
        phases,
        [
            Phase::Prepare,
            Phase::NewApp,
            Phase::Proxy,
            Phase::Traffic,
            Phase::Database,
            Phase::Done,
            Phase::Hold,
            Phase::Finish
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_from_every_phase_puts_users_and_writes_back_losing_nothing() {
    let _slot = SLOTS.acquire().await.unwrap();
    let m = Move::start(StageOptions::default()).await;
    let load = m.stage.load(30.0);

    // Nothing has moved after the prepare phase: there is nothing to roll back.
    let a = m.apply(Some(Phase::Prepare)).await.unwrap();
    assert_eq!(a.state, RunState::Stopped);
    let err = m.rollback().await.unwrap_err().to_string();
    assert!(err.starts_with("nothing to roll back"), "{err}");
    assert_eq!(m.state().state, RunState::Stopped);

    let mut attempts = 1;
    for until in [
        Phase::NewApp,
        Phase::Database,
        Phase::Traffic,
        Phase::Done,
        Phase::Hold,
    ] {
        let a = m.apply(Some(until)).await.unwrap();
        assert_eq!(a.attempt, attempts, "{until}");
        assert_eq!(a.state, RunState::Stopped, "{until}: {a:?}");
        let moved = !matches!(until, Phase::NewApp);
        match m.rollback().await {
            Ok(r) => {
                assert!(moved, "{until}: {r:?}");
                assert_eq!(m.state().state, RunState::RolledBack);
                attempts += 1;
            }
            Err(e) => {
                assert!(!moved, "{until}: {e}");
                assert!(e.to_string().starts_with("nothing to roll back"), "{e}");
            }
        }
        assert_eq!(m.proxy_on().await, Backend::Source, "{until}");
        assert_eq!(m.new_percent(), 0, "{until}");
        m.old_app_takes_an_order().await;
    }
    // Undone in the order that puts users back first (database-first: traffic, then the
    // database).
    let undone: Vec<String> = m
        .events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::StepFinished { step, .. } if step.starts_with("rollback.") => Some(step.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        &undone[..3],
        [
            "rollback.database.switchover",
            "rollback.traffic.canary",
            "rollback.database.switchover"
        ]
    );

    // And finally the whole move; after `finish` there is nothing to roll back to.
    let a = m.apply(None).await.unwrap();
    assert_eq!(a.state, RunState::Finished);
    let err = m.rollback().await.unwrap_err().to_string();
    assert!(err.contains("nothing to roll back to"), "{err}");

    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    let present = m
        .stage
        .orders_present(Side::Target, &report.acknowledged)
        .await
        .unwrap();
    assert_eq!(present, report.acknowledged.len() as i64);
    for secret in m.stage.secrets() {
        let journal = std::fs::read(m.stage.plan.journal_path()).unwrap();
        assert!(!String::from_utf8_lossy(&journal).contains(&secret));
    }
}

/// Traffic first: a rollback after the traffic phase sends users back and leaves the database
/// alone; one asked for while `apply` holds the rollback window stops that run and undoes the
/// database and then the users, and every order acknowledged so far is on the old database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_first_rolls_back_after_the_users_and_inside_a_running_hold() {
    let _slot = SLOTS.acquire().await.unwrap();
    let m = Move::start(StageOptions {
        order: Order::TrafficFirst,
        hold: "1h",
        ..StageOptions::default()
    })
    .await;
    let load = m.stage.load(30.0);

    let a = m.apply(Some(Phase::Traffic)).await.unwrap();
    assert_eq!(a.state, RunState::Stopped);
    assert_eq!(m.proxy_on().await, Backend::Source, "traffic first");
    let r = m.rollback().await.unwrap();
    assert_eq!(r.undone, ["traffic.canary"]);
    assert_eq!(m.new_percent(), 0);
    assert_eq!(m.proxy_on().await, Backend::Source);
    m.old_app_takes_an_order().await;

    // The whole move again, rolled back from the outside while it holds the window.
    let apply = m.apply(None);
    let rollback = async {
        while m.step().as_deref() != Some("hold.window") {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(m.proxy_on().await, Backend::Target);
        m.rollback().await
    };
    let (a, r) = tokio::join!(apply, rollback);
    let a = a.unwrap();
    assert_eq!(a.attempt, 2);
    assert_ne!(a.state, RunState::Finished, "{a:?}");
    let r = r.unwrap();
    assert_eq!(r.attempt, 2);
    assert_eq!(r.undone, ["database.switchover", "traffic.canary"]);
    assert_eq!(m.state().state, RunState::RolledBack);
    assert_eq!(m.proxy_on().await, Backend::Source);
    assert_eq!(m.new_percent(), 0);
    m.old_app_takes_an_order().await;

    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    let present = m
        .stage
        .orders_present(Side::Source, &report.acknowledged)
        .await
        .unwrap();
    assert_eq!(
        present,
        report.acknowledged.len() as i64,
        "acknowledged orders missing on the old database after the rollback"
    );
}

/// The move is done when users stop reaching the old origin, not when a timer says so: while
/// their DNS still answers the splitter in front of the old app, the done phase waits (well
/// past its window) and `status` says how much traffic is left there; once their DNS follows
/// the new app, it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_move_is_done_only_once_users_stop_reaching_the_old_origin() {
    let _slot = SLOTS.acquire().await.unwrap();
    let m = Move::start(StageOptions::default()).await;
    let load = m.stage.load(30.0);
    let record = m.record();
    let options = migration::Options {
        yes: true,
        until: Some(Phase::Done),
    };
    let apply = migration::apply(&m.stage.plan, &m.journal, &options, &record, &yes);
    tokio::pin!(apply);
    let waiting = async {
        // The run has written no state yet when this first looks.
        while m.step().as_deref() != Some("done.residual") {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Five times the 2 s window, every user still on the old address.
        tokio::time::sleep(Duration::from_secs(10)).await;
    };
    tokio::select! {
        a = &mut apply => panic!("done while users still reach the old origin: {a:?}"),
        () = waiting => {}
    }
    let s = m.state();
    assert_eq!(s.step.as_deref(), Some("done.residual"));
    assert!(s.done_ms.is_none(), "{s:?}");
    let progress: Vec<String> = m
        .events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Progress { step, message, .. } if step == "done.residual" => {
                Some(message.clone())
            }
            _ => None,
        })
        .collect();
    assert!(
        progress
            .last()
            .is_some_and(|t| t.contains("requests/s at the old origin")),
        "{progress:?}"
    );

    let status = migration::status(&m.stage.plan, &m.journal)
        .await
        .unwrap()
        .unwrap();
    let rps = status.traffic.as_ref().unwrap().old_origin_rps;
    assert!(
        rps > 0.5,
        "status shows the traffic left at the old origin: {rps}"
    );

    m.stage.resolver.set(&m.stage.new_app_url());
    let a = apply.await.unwrap();
    assert_eq!(a.state, RunState::Stopped, "{a:?}");
    assert!(m.state().done_ms.is_some());
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
}

/// Runs `apply` expecting it to stop at `step` with `expect` in its reason, the users and
/// the database where they were.
async fn refused_at(m: &Move, step: &str, expect: &str) -> String {
    let err = m.apply(None).await.unwrap_err().to_string();
    assert!(err.contains(expect), "{err}");
    let s = m.state();
    assert_eq!(s.state, RunState::Failed);
    assert_eq!(s.step.as_deref(), Some(step));
    assert!(s.reason.as_deref().unwrap().contains(expect));
    let status = migration::status(&m.stage.plan, &m.journal)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.step.as_deref(), Some(step));
    assert!(status.reason.unwrap().contains(expect));
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_synthetic_check_stops_the_run_before_any_user_moves() {
    let _slot = SLOTS.acquire().await.unwrap();
    let m = Move::start(StageOptions {
        extra: r#"
[[new_app.checks]]
name = "the order total is kept"
method = "POST"
path = "/orders"
body = '{"customer": 2, "total": "5.00"}'
status = 201
json = { total = "5.50" }
"#
        .into(),
        ..StageOptions::default()
    })
    .await;
    let err = refused_at(&m, "new_app.checks", "the order total is kept").await;
    assert!(
        err.contains("total is \"5.00\" (expected \"5.50\")"),
        "{err}"
    );
    assert!(err.contains("no user was moved"), "{err}");
    assert_eq!(m.proxy_on().await, Backend::Source);
    assert_eq!(m.new_percent(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_difference_stops_the_run_before_any_user_moves() {
    let _slot = SLOTS.acquire().await.unwrap();
    let m = Move::start(StageOptions {
        shadow_ignore: vec![],
        ..StageOptions::default()
    })
    .await;
    let err = refused_at(&m, "new_app.shadow", "answers differently").await;
    assert!(
        err.contains("GET /orders/1: served_by is \"old\" on the old app, \"new\" on the new"),
        "{err}"
    );
    assert_eq!(m.proxy_on().await, Backend::Source);
    assert_eq!(m.new_percent(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_gate_sends_users_back_and_stops_the_run() {
    let _slot = SLOTS.acquire().await.unwrap();
    let m = Move::start(StageOptions {
        // No answer is that fast: every check fails.
        traffic_extra: "max_p99 = \"1us\"".into(),
        ..StageOptions::default()
    })
    .await;
    let load = m.stage.load(30.0);
    let err = refused_at(&m, "traffic.canary", "the canary rolled back to 0%").await;
    assert!(err.contains("above traffic.max_p99"), "{err}");
    assert_eq!(m.new_percent(), 0);
    // Database-first: the database had moved, and the users are back on the old app.
    assert_eq!(m.proxy_on().await, Backend::Target);
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
}

/// The replication that protects the rollback is lost after the switch (its slot dropped,
/// as an invalidated slot is): the canary's database gate fails its first window, users go
/// back to the old app, and the run stops saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_gate_fails_when_nothing_protects_the_rollback_any_more() {
    let _slot = SLOTS.acquire().await.unwrap();
    let (m, load) = Move::database_moved().await;

    let sync = &m.stage.plan.sync;
    let source = cutover_pg::connect(&m.stage.plan.source.url, Side::Source)
        .await
        .unwrap();
    let sub = sync.reverse_subscription();
    source
        .batch_execute(&format!(
            "ALTER SUBSCRIPTION {sub} DISABLE; ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)"
        ))
        .await
        .unwrap();
    let target = cutover_pg::connect(&m.stage.plan.target.url, Side::Target)
        .await
        .unwrap();
    // The walsender of the disabled subscription takes a moment to go.
    let mut tries = 0;
    while let Err(e) = target
        .execute(
            "SELECT pg_drop_replication_slot($1)",
            &[&sync.reverse_slot()],
        )
        .await
    {
        tries += 1;
        assert!(tries < 100, "the reverse slot stays active: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let err = refused_at(&m, "traffic.canary", "the canary rolled back to 0%").await;
    assert!(
        err.contains(
            "nothing follows the primary (target -> source): a rollback would lose writes"
        ),
        "{err}"
    );
    assert_eq!(m.new_percent(), 0);
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
}

/// The new primary keeps ending the proxy's sessions in the middle of the canary (a server
/// that restarts, again and again): the canary's database gate counts the sessions that lost
/// their database, its windows fail, and users go back to the old app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_gate_fails_when_the_proxy_loses_its_sessions_to_the_database() {
    let _slot = SLOTS.acquire().await.unwrap();
    let (m, load) = Move::database_moved().await;

    let target = cutover_pg::connect(&m.stage.plan.target.url, Side::Target)
        .await
        .unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let cut = async {
        // Once users are on the new app, inside the canary's first window, until it stops.
        while m.new_percent() == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut ended = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let proxy = m.stage.proxy.as_ref().unwrap();
            for pid in proxy.shared.status().server_pids(Backend::Target) {
                let r = target
                    .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .unwrap();
                ended += u32::from(r.get::<_, bool>(0));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        ended
    };
    let refused = async {
        let err = refused_at(&m, "traffic.canary", "the canary rolled back to 0%").await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        err
    };
    let (err, ended) = tokio::join!(refused, cut);
    assert!(ended > 0, "no session of the proxy was ended");
    assert!(
        err.contains("server error(s) in the window (sessions that lost their database)"),
        "{err}"
    );
    assert_eq!(m.new_percent(), 0);
    assert_eq!(m.proxy_on().await, Backend::Target);
    // Requests that were inside the sessions ended may fail; every acknowledged order is kept.
    let report = load.stop().await;
    let present = m
        .stage
        .orders_present(Side::Target, &report.acknowledged)
        .await
        .unwrap();
    assert_eq!(present, report.acknowledged.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_around_the_proxy_blocks_the_database_phase_and_is_named() {
    let _slot = SLOTS.acquire().await.unwrap();
    let m = Move::start(StageOptions {
        proxy_wait: "1s",
        ..StageOptions::default()
    })
    .await;
    let mut direct = m.stage.source.url_as(
        cutover_runbook::demo::stage::ROLE,
        Some(m.stage.app_password.clone()),
        cutover_runbook::demo::stage::DB,
    );
    direct.application_name = Some("nightly-report".into());
    let _rogue = cutover_pg::connect(&direct, Side::Source).await.unwrap();
    let err = refused_at(&m, "proxy.sessions", "do not come through the proxy").await;
    assert!(
        err.contains("user app") && err.contains("(nightly-report)"),
        "{err}"
    );
    assert!(
        err.contains("point every app's DATABASE_URL at the proxy"),
        "{err}"
    );
    assert_eq!(m.proxy_on().await, Backend::Source);
}

/// With [dns] the move lowers the TTL first, waits out the old one, switches the record after
/// the canary, and a rollback points it back: against a real BIND, by RFC 2136 with TSIG.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_is_lowered_first_switched_after_the_canary_and_rolled_back_on_bind() {
    use cutover_core::plan::RecordKind;
    use cutover_testkit::bind::{Bind, KEY_NAME, KEY_SECRET, ZONE};
    let _slot = SLOTS.acquire().await.unwrap();
    let bind = Bind::start_with_ttl(2).await;
    let name = format!("www.{ZONE}");
    let m = Move::start(StageOptions {
        extra: format!(
            r#"
[dns]
provider = "rfc2136"
zone = "{ZONE}"
name = "{name}"
record_type = "A"
old = ["192.0.2.10"]
new = ["198.51.100.20"]
low_ttl = "1s"

[dns.rfc2136]
server = "{}"
key_name = "{KEY_NAME}"
secret = "${{CUTOVER_TEST_TSIG}}"
"#,
            bind.addr
        ),
        extra_env: vec![("CUTOVER_TEST_TSIG".into(), KEY_SECRET.into())],
        ..StageOptions::default()
    })
    .await;
    let answer = || async {
        cutover_traffic::dns::query::ask(bind.addr, &name, RecordKind::A)
            .await
            .unwrap()
            .unwrap()
    };
    let load = m.stage.load(20.0);
    let a = m.apply(Some(Phase::Traffic)).await.unwrap();
    assert_eq!(a.state, RunState::Stopped, "{a:?}");
    let now = answer().await;
    assert_eq!(
        (now.values, now.ttl),
        (vec!["198.51.100.20".to_string()], 1)
    );
    let steps: Vec<String> = m
        .events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::StepFinished { step, .. } => Some(step.clone()),
            _ => None,
        })
        .collect();
    let at = |s: &str| steps.iter().position(|x| x == s).unwrap();
    assert!(at("prepare.lower_ttl") < at("prepare.sync"));
    assert!(at("traffic.canary") < at("traffic.dns"));

    m.rollback().await.unwrap();
    assert_eq!(answer().await.values, vec!["192.0.2.10".to_string()]);
    assert_eq!(m.proxy_on().await, Backend::Source);
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
}
