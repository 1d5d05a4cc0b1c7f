//! Switchover and rollback under real pgbench load through the proxy: pgbench must end
//! with zero failed transactions and no aborted client, every transaction it reports must
//! be on the new primary, and its sequences must be ahead of every value used.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use cutover_core::engine::{StepEvent, Steps};
use cutover_core::{Journal, Plan};
use cutover_pg::{connect, pgbench, Side};
use cutover_proxy::{AdminClient, Backend, Proxies, Running};
use cutover_runbook::{Direction, Options};
use cutover_testkit::{scram_user, via_proxy, Pair};

struct Fixture {
    pair: Pair,
    _dir: tempfile::TempDir,
    plan: Plan,
    proxy: Running,
    admin: Proxies,
    proxy_url: cutover_core::ConnString,
}

async fn fixture() -> Fixture {
    fixture_with("").await
}

/// The pgbench tables, `setup` run on the source as its superuser, then `db sync`.
async fn fixture_with(setup: &str) -> Fixture {
    let pair = Pair::native().await;
    let pw = pair.app_role("app").await;
    let app_source = pair
        .source
        .cluster
        .url_as("app", Some(pw.clone()), &pair.source.db);
    cutover_pg::pgbench::init(&app_source, 1).await.unwrap();
    pair.source
        .exec("ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY")
        .await;
    if !setup.is_empty() {
        pair.source.exec(setup).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let mut env = BTreeMap::new();
    env.insert(
        "SRC".to_string(),
        cutover_testkit::url_text(&pair.source.url()),
    );
    env.insert(
        "DST".to_string(),
        cutover_testkit::url_text(&pair.target.url()),
    );
    let text = cutover_core::plan::template("${SRC}", "${DST}");
    let plan = cutover_core::plan::parse(&text, &dir.path().join("cutover.toml"), &env).unwrap();
    let journal = Journal::open(&plan.journal_path()).unwrap();
    let run = journal.begin_run("db sync").unwrap();
    let steps = Steps::new(&journal, run, &|_| {});
    cutover_runbook::sync::sync(&plan, &steps, &|_| {})
        .await
        .unwrap();
    // pg_dump's copy carries no grants: the platform's roles are set up by hand.
    pair.target
        .exec("GRANT ALL ON ALL TABLES IN SCHEMA public TO app; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app")
        .await;

    let config = pair.proxy_config(vec![scram_user("app", &pw)], dir.path());
    let admin_token = config.admin_token.clone();
    let proxy = cutover_proxy::start(config).await.unwrap();
    let admin = Proxies::One(AdminClient::new(proxy.admin_addr, admin_token));
    let proxy_url = via_proxy(proxy.addr, "app", &pw, &pair.source.db);
    Fixture {
        pair,
        _dir: dir,
        plan,
        proxy,
        admin,
        proxy_url,
    }
}

impl Fixture {
    async fn switch(&self, direction: Direction) -> Result<cutover_runbook::SwitchSummary, String> {
        self.switch_watching(direction, &|_| {}).await
    }

    async fn switch_watching(
        &self,
        direction: Direction,
        observer: &(dyn Fn(&StepEvent<'_>) + Send + Sync),
    ) -> Result<cutover_runbook::SwitchSummary, String> {
        let journal = Journal::open(&self.plan.journal_path()).unwrap();
        let run = journal.begin_run(direction.name()).unwrap();
        let steps = Steps::new(&journal, run, observer);
        let options = Options {
            app_roles: vec!["app".into()],
            ..Default::default()
        };
        cutover_runbook::run(
            &self.plan,
            &steps,
            &self.admin,
            direction,
            &options,
            std::future::pending(),
        )
        .await
        .map_err(|e| e.to_string())
    }

    fn load(&self, mode: &str, seconds: u32) -> tokio::process::Child {
        let t = seconds.to_string();
        pgbench::start(
            &self.proxy_url,
            &["-n", "-c", "16", "-j", "16", "-T", &t, "-M", mode],
        )
        .unwrap()
    }
}

async fn count(pg: &cutover_testkit::Pg, sql: &str) -> i64 {
    pg.value(sql).await.unwrap().parse().unwrap()
}

async fn switch_and_roll_back_under(mode: &str) {
    let f = fixture().await;

    // Switchover in the middle of the load.
    let load = f.load(mode, 8);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let summary = f.switch(Direction::Switchover).await.unwrap();
    eprintln!("switchover under -M {mode}: {summary:?}");
    assert_eq!(summary.active, Backend::Target);
    let verdict = pgbench::finish(load).await.unwrap();
    assert!(verdict.clean(), "{verdict:?}");
    assert!(verdict.processed > 0);
    let on_target = count(&f.pair.target, "SELECT count(*) FROM pgbench_history").await;
    assert_eq!(
        on_target as u64, verdict.processed,
        "every reported transaction is on the target"
    );
    let seq = count(
        &f.pair.target,
        "SELECT last_value FROM pgbench_history_id_seq",
    )
    .await;
    let max = count(
        &f.pair.target,
        "SELECT coalesce(max(id), 0) FROM pgbench_history",
    )
    .await;
    assert!(
        seq >= max,
        "the sequence ({seq}) is ahead of every id used ({max})"
    );
    // The source is fenced: the application role cannot write there.
    let app = connect(
        &f.pair
            .source
            .cluster
            .url_as("app", f.proxy_url.password().cloned(), &f.pair.source.db),
        Side::Source,
    )
    .await
    .unwrap();
    let e = app
        .batch_execute(
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 1, now())",
        )
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e:?}");

    // Rollback in the middle of a second load: nothing written on the target is lost.
    let load = f.load(mode, 8);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let summary = f.switch(Direction::Rollback).await.unwrap();
    eprintln!("rollback under -M {mode}: {summary:?}");
    assert_eq!(summary.active, Backend::Source);
    let second = pgbench::finish(load).await.unwrap();
    assert!(second.clean(), "{second:?}");
    let on_source = count(&f.pair.source, "SELECT count(*) FROM pgbench_history").await;
    assert_eq!(on_source as u64, verdict.processed + second.processed);
    let seq = count(
        &f.pair.source,
        "SELECT last_value FROM pgbench_history_id_seq",
    )
    .await;
    let max = count(&f.pair.source, "SELECT max(id) FROM pgbench_history").await;
    assert!(
        seq >= max,
        "the source's sequence ({seq}) is ahead of every id used ({max})"
    );
    // And the source takes the application's writes again.
    app.batch_execute(
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 1, now())",
    )
    .await
    .unwrap();
    f.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_and_rollback_with_prepared_statements() {
    switch_and_roll_back_under("prepared").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_and_rollback_with_the_extended_protocol() {
    switch_and_roll_back_under("extended").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_and_rollback_with_simple_queries() {
    switch_and_roll_back_under("simple").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_stops_before_the_switch_leaves_the_source_serving() {
    let f = fixture().await;
    let load = f.load("prepared", 6);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let halted = Mutex::new(false);
    let target = &f.pair.target.cluster;
    let observer = |ev: &StepEvent<'_>| {
        if let StepEvent::Started { step, .. } = ev {
            if *step == "switchover.fence" && !*halted.lock().unwrap() {
                target.halt().unwrap();
                *halted.lock().unwrap() = true;
            }
        }
    };
    let e = f
        .switch_watching(Direction::Switchover, &observer)
        .await
        .unwrap_err();
    assert!(e.contains("target"), "{e}");
    let verdict = pgbench::finish(load).await.unwrap();
    assert!(verdict.clean(), "{verdict:?}");
    let status = f.admin.status().await.unwrap();
    assert_eq!(status.active, Backend::Source);
    assert!(!status.paused);
    // The source is unfenced: the application writes there directly too.
    let app = connect(
        &f.pair
            .source
            .cluster
            .url_as("app", f.proxy_url.password().cloned(), &f.pair.source.db),
        Side::Source,
    )
    .await
    .unwrap();
    app.batch_execute(
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 1, now())",
    )
    .await
    .unwrap();
    let journal = Journal::open(&f.plan.journal_path()).unwrap();
    assert_eq!(journal.fact("fence.source").unwrap(), None);
    f.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_replication_that_cannot_be_prepared_leaves_nothing_behind() {
    // The reverse subscription's slot name is taken on the target by a slot it cannot use,
    // so the reverse subscription cannot be made before the pause: the run must fail with
    // the reason, leave neither the reverse publication nor a subscription behind, and a
    // later run must go through.
    let f = fixture().await;
    let s = &f.plan.sync;
    f.pair
        .target
        .exec(&format!(
            "SELECT pg_create_physical_replication_slot('{}')",
            s.reverse_slot()
        ))
        .await;
    let load = f.load("prepared", 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let e = f.switch(Direction::Switchover).await.unwrap_err();
    assert!(e.contains(&s.reverse_slot()), "{e}");
    let verdict = pgbench::finish(load).await.unwrap();
    assert!(verdict.clean(), "{verdict:?}");
    let status = f.admin.status().await.unwrap();
    assert_eq!((status.active, status.paused), (Backend::Source, false));
    let publications = count(
        &f.pair.target,
        &format!(
            "SELECT count(*) FROM pg_publication WHERE pubname = '{}'",
            s.reverse_publication()
        ),
    )
    .await;
    let subscriptions = count(
        &f.pair.source,
        &format!(
            "SELECT count(*) FROM pg_subscription WHERE subname = '{}'",
            s.reverse_subscription()
        ),
    )
    .await;
    assert_eq!((publications, subscriptions), (0, 0), "left behind: {e}");
    f.pair
        .target
        .exec(&format!(
            "SELECT pg_drop_replication_slot('{}')",
            s.reverse_slot()
        ))
        .await;
    f.switch(Direction::Switchover).await.unwrap();
    assert_eq!(f.admin.status().await.unwrap().active, Backend::Target);
    f.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_never_ends_times_the_drain_out_and_changes_nothing() {
    let mut f = fixture().await;
    f.plan.switchover.drain_timeout = Duration::from_secs(1);
    let stuck = connect(&f.proxy_url, Side::Source).await.unwrap();
    stuck.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let load = f.load("extended", 5);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let e = f.switch(Direction::Switchover).await.unwrap_err();
    assert!(e.contains("transaction in progress"), "{e}");
    let verdict = pgbench::finish(load).await.unwrap();
    assert!(verdict.clean(), "{verdict:?}");
    let status = f.admin.status().await.unwrap();
    assert_eq!(status.active, Backend::Source);
    assert!(!status.paused);
    // The stuck transaction was never cut: it commits.
    stuck.batch_execute("COMMIT").await.unwrap();
    f.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_panics_after_the_fence_is_undone_by_its_guard() {
    use futures_util::FutureExt;
    let f = fixture().await;
    let load = f.load("prepared", 6);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let observer = |ev: &StepEvent<'_>| {
        if let StepEvent::Started { step, .. } = ev {
            if *step == "switchover.catch_up" {
                panic!("a bug in the middle of the switch");
            }
        }
    };
    let panicked =
        std::panic::AssertUnwindSafe(f.switch_watching(Direction::Switchover, &observer))
            .catch_unwind()
            .await;
    assert!(panicked.is_err());
    let status = f.admin.status().await.unwrap();
    assert_eq!(status.active, Backend::Source);
    assert!(!status.paused, "the guard resumed the proxy");
    let journal = Journal::open(&f.plan.journal_path()).unwrap();
    assert_eq!(
        journal.fact("fence.source").unwrap(),
        None,
        "the guard unfenced the source"
    );
    let verdict = pgbench::finish(load).await.unwrap();
    assert!(verdict.clean(), "{verdict:?}");
    // And a new run goes through.
    let load = f.load("prepared", 5);
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.switch(Direction::Switchover).await.unwrap();
    assert!(pgbench::finish(load).await.unwrap().clean());
    f.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_after_the_fence_is_recovered_by_the_next_one() {
    let f = fixture().await;
    let load = f.load("extended", 8);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // What a run killed (SIGKILL) right after its fence leaves: the proxy paused, the
    // source fenced (and the fence in the journal), the forward subscription disabled.
    f.admin.pause().await.unwrap();
    f.admin.drain(Duration::from_secs(10)).await.unwrap();
    let source = f.pair.source.client().await;
    let tables = cutover_pg::inspect::tables(&source, Side::Source, &f.plan.sync)
        .await
        .unwrap();
    let seqs = cutover_pg::inspect::sequences(&source, Side::Source, &f.plan.sync)
        .await
        .unwrap();
    let fence = cutover_pg::fence::plan_fence(&source, Side::Source, &tables, &seqs)
        .await
        .unwrap();
    let journal = Journal::open(&f.plan.journal_path()).unwrap();
    journal
        .set_fact(
            "fence.source",
            Some(&serde_json::to_string(&fence).unwrap()),
        )
        .unwrap();
    cutover_pg::fence::apply_fence(&source, Side::Source, &fence)
        .await
        .unwrap();
    f.pair
        .target
        .exec(&format!(
            "ALTER SUBSCRIPTION {} DISABLE",
            f.plan.sync.subscription()
        ))
        .await;
    drop(source);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The next run undoes that first, then switches.
    let summary = f.switch(Direction::Switchover).await.unwrap();
    assert_eq!(summary.active, Backend::Target);
    let verdict = pgbench::finish(load).await.unwrap();
    assert!(verdict.clean(), "{verdict:?}");
    let on_target = count(&f.pair.target, "SELECT count(*) FROM pgbench_history").await;
    assert_eq!(on_target as u64, verdict.processed);
    let steps: Vec<String> = journal
        .timeline()
        .unwrap()
        .into_iter()
        .flat_map(|r| r.steps.into_iter().map(|s| s.step))
        .collect();
    assert!(
        steps.contains(&"switchover.recover".to_string()),
        "{steps:?}"
    );
    f.proxy.stop().await;
}

/// The application appends one 8-byte counter after another to its large object through the
/// proxy, without pause, until told to stop; returns every value acknowledged.
async fn append_to_large_object(
    url: cutover_core::ConnString,
    oid: u32,
    first: i64,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<i64> {
    let app = connect(&url, Side::Source).await.unwrap();
    let mut done = vec![];
    let mut i = first;
    while !stop.is_cancelled() {
        app.execute(
            "SELECT lo_put($1, $2, $3)",
            &[&oid, &(i * 8), &i.to_be_bytes().to_vec()],
        )
        .await
        .expect("every append is acknowledged, across the switch too");
        done.push(i);
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    done
}

async fn counters_in(pg: &cutover_testkit::Pg, oid: u32) -> Vec<i64> {
    let c = pg.client().await;
    let bytes: Vec<u8> = c
        .query_one("SELECT lo_get($1)", &[&oid])
        .await
        .unwrap()
        .get(0);
    bytes
        .chunks(8)
        .map(|b| i64::from_be_bytes(b.try_into().unwrap()))
        .collect()
}

async fn large_object_digests(pg: &cutover_testkit::Pg) -> String {
    pg.value("SELECT string_agg(oid::text || ':' || md5(lo_get(oid)) || ':' || pg_get_userbyid(lomowner), ',' ORDER BY oid) FROM pg_largeobject_metadata")
        .await
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_and_materialized_views_are_ready_on_each_new_primary() {
    const LOG: u32 = 424_240;
    let f = fixture_with(
        "SELECT lo_from_bytea(424240, ''); ALTER LARGE OBJECT 424240 OWNER TO app;
         SELECT lo_from_bytea(424241, 'removed before the switch'); ALTER LARGE OBJECT 424241 OWNER TO app;
         CREATE MATERIALIZED VIEW branch_totals AS SELECT bid, sum(abalance) AS total FROM pgbench_accounts GROUP BY bid;",
    )
    .await;
    // `db sync` copied the large objects with their owner, and populated the view.
    assert_eq!(
        large_object_digests(&f.pair.target).await,
        large_object_digests(&f.pair.source).await
    );
    assert!(large_object_digests(&f.pair.target)
        .await
        .contains("424241:"));
    assert_eq!(
        count(&f.pair.target, "SELECT count(*) FROM branch_totals").await,
        1
    );

    // During the sync the application imports a file bigger than one copy chunk (psql's
    // \lo_import, through the proxy) and removes a large object.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload.bin");
    let data: Vec<u8> = (0..(9u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &data).unwrap();
    let out = cutover_pg::connect::client_program("psql", Some(&f.proxy_url))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!("\\lo_import {}", file.display()))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let imported: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("lo_import ")
        .unwrap()
        .parse()
        .unwrap();
    let app = connect(&f.proxy_url, Side::Source).await.unwrap();
    app.batch_execute("SELECT lo_unlink(424241)").await.unwrap();
    // A row changed on the source, so the view there is stale until refreshed; the switch
    // refreshes the target's from its own data.
    app.batch_execute("UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid = 1")
        .await
        .unwrap();

    // The switchover while the application appends to its large object.
    let stop = tokio_util::sync::CancellationToken::new();
    let appender = tokio::spawn(append_to_large_object(
        f.proxy_url.clone(),
        LOG,
        0,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let summary = f.switch(Direction::Switchover).await.unwrap();
    assert_eq!(summary.active, Backend::Target);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let acknowledged = appender.await.unwrap();
    // Every append is on the new primary: those before the pause copied inside it, those
    // after it written there, with no hole between.
    assert_eq!(counters_in(&f.pair.target, LOG).await, acknowledged);
    let target = large_object_digests(&f.pair.target).await;
    assert!(
        !target.contains("424241:"),
        "removed on the source, removed on the target: {target}"
    );
    let source = f.pair.source.client().await;
    let md5: String = source
        .query_one("SELECT md5($1::bytea)", &[&data])
        .await
        .unwrap()
        .get(0);
    assert!(
        target.contains(&format!("{imported}:{md5}:app")),
        "{target}"
    );
    assert_eq!(
        count(&f.pair.target, "SELECT total FROM branch_totals").await,
        count(&f.pair.target, "SELECT sum(abalance) FROM pgbench_accounts").await
    );
    assert_eq!(
        count(&f.pair.target, "SELECT total FROM branch_totals").await,
        7
    );

    // And back: what the application appended on the target is on the source after the rollback.
    let stop = tokio_util::sync::CancellationToken::new();
    let next = *acknowledged.last().unwrap() + 1;
    let appender = tokio::spawn(append_to_large_object(
        f.proxy_url.clone(),
        LOG,
        next,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let summary = f.switch(Direction::Rollback).await.unwrap();
    assert_eq!(summary.active, Backend::Source);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let more = appender.await.unwrap();
    let all: Vec<i64> = acknowledged.iter().chain(more.iter()).copied().collect();
    assert_eq!(counters_in(&f.pair.source, LOG).await, all);
    // The target kept what it had at the rollback: everything up to there.
    let on_target = counters_in(&f.pair.target, LOG).await;
    assert!(on_target.len() > acknowledged.len() && all.starts_with(&on_target));
    f.proxy.stop().await;
}
