//! The copy shared out: `db sync` puts its parts in a queue on the target, and two
//! `db sync --worker` processes (as on other hosts) import the same snapshot and take parts
//! with `SKIP LOCKED`; each one copies some, every table's key is built as its last part
//! lands, and the result is verified equal. A worker with
//! nothing to help, or pointed at another source, says so in one line and changes nothing.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_and_the_sync_share_the_copy() {
    let mut env = Env::native().await;
    let mut ddl = String::new();
    for i in 1..=8 {
        ddl.push_str(&format!(
            "CREATE TABLE public.big_{i} (id bigint PRIMARY KEY, pad text);
             INSERT INTO public.big_{i} SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 40000) g;"
        ));
    }
    env.pair.source.exec(&ddl).await;
    let plan = std::fs::read_to_string(env.plan()).unwrap();
    std::fs::write(env.plan(), plan.replace("copy_jobs = 4", "copy_jobs = 1")).unwrap();

    // No sync yet: the worker has nothing to help with, and makes nothing.
    let run = env.run(&["db", "sync", "--worker"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("start `cutover db sync` first"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert_eq!(
        env.pair
            .target
            .value("SELECT (to_regclass('cutover.copy_job') IS NULL)::text")
            .await
            .as_deref(),
        Some("true")
    );

    let sync = env
        .command(&["db", "sync"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let target = env.pair.target.client().await;
    let mut published = false;
    for _ in 0..500 {
        let row = target
            .query_opt(
                "SELECT 1 FROM cutover.copy_job WHERE state = 'copying'",
                &[],
            )
            .await;
        if matches!(row, Ok(Some(_))) {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(published, "the sync published its queue");
    let workers: Vec<std::process::Child> = (0..2)
        .map(|_| {
            let mut c: Command = env.command(&["--json", "db", "sync", "--worker"]);
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let sync = common::to_run(sync.wait_with_output().unwrap());
    assert_eq!(sync.code, 0, "{}{}", sync.stdout, sync.stderr);
    env.assert_no_secret(&sync.stderr);
    // Each table's key was built as its last part landed: the keys step found them.
    assert!(
        sync.stderr.contains("primary keys already in place"),
        "{}",
        sync.stderr
    );
    for w in workers {
        let out = common::to_run(w.wait_with_output().unwrap());
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        env.assert_no_secret(&out.stdout);
        env.assert_no_secret(&out.stderr);
        let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert!(
            report["parts"].as_u64().unwrap() >= 1,
            "each worker copied some: {report}"
        );
        assert!(report["rows"].as_i64().unwrap() > 0, "{report}");
    }
    let shared = env
        .pair
        .target
        .value("SELECT count(DISTINCT worker) FROM cutover.copy_part WHERE done")
        .await;
    assert_eq!(
        shared.as_deref(),
        Some("3"),
        "the sync and both workers took parts"
    );
    let verify = env.run(&["db", "verify"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    assert!(
        verify.stdout.contains("all 8 tables equal"),
        "{}",
        verify.stdout
    );

    // The copy is finished: a worker now has nothing to take.
    let run = env.run(&["db", "sync", "--worker"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("is finished"), "{}", run.stderr);

    // A worker whose plan names another source is refused, even while a copy runs.
    env.pair
        .target
        .exec("UPDATE cutover.copy_job SET state = 'copying'")
        .await;
    let (other, t) = (
        env.pair.source.cluster.url("postgres"),
        env.pair.target.url(),
    );
    env.set_urls(&other, &t);
    let run = env.run(&["db", "sync", "--worker"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("but the copy cutover in progress reads"),
        "{}",
        run.stderr
    );
    assert_eq!(
        env.pair
            .target
            .value("SELECT count(*) FROM cutover.copy_part WHERE NOT done")
            .await
            .as_deref(),
        Some("0")
    );
}
