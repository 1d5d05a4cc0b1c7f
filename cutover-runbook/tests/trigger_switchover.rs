//! Switchover and rollback in trigger mode, from a Heroku-like source (wal_level=replica,
//! one role that owns everything and is neither superuser nor replication), under pgbench
//! load through the proxy: zero failed transactions, every transaction on the new primary,
//! and a rollback that loses nothing written on the target.

use std::collections::BTreeMap;
use std::time::Duration;

use cutover_core::engine::Steps;
use cutover_core::{Journal, Plan, Secret};
use cutover_pg::{pgbench, trigger};
use cutover_proxy::{AdminClient, Backend, Proxies};
use cutover_runbook::{Direction, Options};
use cutover_testkit::{scram_user, via_proxy, Pair};

async fn count(pg: &cutover_testkit::Pg, sql: &str) -> i64 {
    pg.value(sql).await.unwrap().parse().unwrap()
}

/// What `cutover db follow` does: follow the link in force, and the next one when a
/// switchover retires it.
fn follower(plan: Plan, stop: tokio_util::sync::CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let link = cutover_pg::sync::current_link(&plan).await.unwrap();
            trigger::follow(
                &link,
                &plan.sync,
                Duration::from_millis(50),
                stop.clone(),
                &|_| {},
            )
            .await
            .unwrap();
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_mode_switchover_and_lossless_rollback_from_a_heroku_like_source() {
    let pair = Pair::heroku_like().await;
    let owner = pair.source.role("owner", "NOSUPERUSER NOREPLICATION").await;
    let pw: Secret = owner.password().cloned().unwrap();
    pair.source
        .exec("GRANT CREATE ON SCHEMA public TO owner")
        .await;
    pair.target
        .exec(&format!(
            "CREATE ROLE owner LOGIN PASSWORD '{}'; GRANT ALL ON DATABASE {} TO owner; GRANT ALL ON SCHEMA public TO owner;",
            pw.expose(),
            pair.target.db
        ))
        .await;
    cutover_pg::pgbench::init(&owner, 1).await.unwrap();
    cutover_pg::connect(&owner, cutover_pg::Side::Source)
        .await
        .unwrap()
        .batch_execute("ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY")
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut env = BTreeMap::new();
    env.insert("SRC".to_string(), cutover_testkit::url_text(&owner));
    env.insert(
        "DST".to_string(),
        cutover_testkit::url_text(&pair.target.url()),
    );
    let text = cutover_core::plan::template("${SRC}", "${DST}")
        .replace("mode = \"native\"", "mode = \"trigger\"");
    let plan = cutover_core::plan::parse(&text, &dir.path().join("cutover.toml"), &env).unwrap();
    let journal = Journal::open(&plan.journal_path()).unwrap();
    let run = journal.begin_run("db sync").unwrap();
    cutover_runbook::sync::sync(&plan, &Steps::new(&journal, run, &|_| {}), &|_| {})
        .await
        .unwrap();
    pair.target
        .exec("GRANT ALL ON ALL TABLES IN SCHEMA public TO owner; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO owner")
        .await;
    let stop = tokio_util::sync::CancellationToken::new();
    let follow = follower(plan.clone(), stop.clone());

    let config = pair.proxy_config(vec![scram_user("owner", &pw)], dir.path());
    let token = config.admin_token.clone();
    let proxy = cutover_proxy::start(config).await.unwrap();
    let admin = Proxies::One(AdminClient::new(proxy.admin_addr, token));
    let url = via_proxy(proxy.addr, "owner", &pw, &pair.source.db);
    let switch = |direction: Direction| {
        let (plan, admin) = (plan.clone(), admin.clone());
        async move {
            let journal = Journal::open(&plan.journal_path()).unwrap();
            let run = journal.begin_run(direction.name()).unwrap();
            let options = Options {
                app_roles: vec!["owner".into()],
                ..Default::default()
            };
            cutover_runbook::run(
                &plan,
                &Steps::new(&journal, run, &|_| {}),
                &admin,
                direction,
                &options,
                std::future::pending(),
            )
            .await
        }
    };
    let load = || {
        pgbench::start(
            &url,
            &["-n", "-c", "8", "-j", "8", "-T", "8", "-M", "prepared"],
        )
        .unwrap()
    };

    let first = load();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let summary = switch(Direction::Switchover).await.unwrap();
    eprintln!("trigger-mode switchover: {summary:?}");
    assert_eq!(summary.active, Backend::Target);
    let v1 = pgbench::finish(first).await.unwrap();
    assert!(v1.clean(), "{v1:?}");
    assert_eq!(
        count(&pair.target, "SELECT count(*) FROM pgbench_history").await as u64,
        v1.processed
    );

    let second = load();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let summary = switch(Direction::Rollback).await.unwrap();
    eprintln!("trigger-mode rollback: {summary:?}");
    assert_eq!(summary.active, Backend::Source);
    let v2 = pgbench::finish(second).await.unwrap();
    assert!(v2.clean(), "{v2:?}");
    assert_eq!(
        count(&pair.source, "SELECT count(*) FROM pgbench_history").await as u64,
        v1.processed + v2.processed,
        "nothing written on the target was lost"
    );
    let seq = count(
        &pair.source,
        "SELECT last_value FROM pgbench_history_id_seq",
    )
    .await;
    let max = count(&pair.source, "SELECT max(id) FROM pgbench_history").await;
    assert!(seq >= max, "{seq} >= {max}");
    stop.cancel();
    follow.await.unwrap();
    proxy.stop().await;
}
