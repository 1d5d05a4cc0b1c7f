//! `db sync` killed with SIGKILL during the copy, then run again: it completes, nothing is
//! duplicated, verify reports equal, and the journal shows both runs.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_copy_killed_then_run_again() {
    killed_during_the_copy_then_run_again("parallel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_copy_killed_then_run_again() {
    killed_during_the_copy_then_run_again("subscription").await;
}

async fn killed_during_the_copy_then_run_again(method: &str) {
    let env = Env::native().await;
    let plan = std::fs::read_to_string(env.plan()).unwrap();
    std::fs::write(
        env.plan(),
        plan.replace("copy = \"parallel\"", &format!("copy = \"{method}\"")),
    )
    .unwrap();
    env.pair
        .source
        .exec(
            "CREATE TABLE public.big (id bigint PRIMARY KEY, payload text NOT NULL);
             INSERT INTO public.big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 600000) g;
             CREATE INDEX big_bucket ON public.big ((id % 100));
             CREATE TABLE public.small (id int PRIMARY KEY, v text);
             INSERT INTO public.small SELECT g, 'v' || g FROM generate_series(1, 1000) g;",
        )
        .await;

    let mut child = env
        .command(&["db", "sync"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = vec![];
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            // The first progress line: the copy (and with it the slot) is under way.
            let copying = line.starts_with("  copy:");
            seen.push(line);
            if copying {
                return (true, seen);
            }
        }
        (false, seen)
    });
    let (reached, lines) = reader.join().unwrap();
    assert!(
        reached,
        "db sync never reached the copy:\n{}",
        lines.join("\n")
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    for l in &lines {
        env.assert_no_secret(l);
    }

    // The copy was under way when the process died.
    if method == "subscription" {
        let state = env
            .pair
            .target
            .value(
                "SELECT string_agg(srsubstate::text, '' ORDER BY srrelid) FROM pg_subscription_rel",
            )
            .await;
        assert!(
            state
                .as_deref()
                .is_some_and(|s| s.chars().any(|c| c != 'r')),
            "copy already finished: {state:?}"
        );
    } else {
        // The slot is made, the subscription is not: the next run must start the copy again.
        assert_eq!(
            env.pair
                .source
                .value("SELECT count(*) FROM pg_replication_slots")
                .await
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            env.pair
                .target
                .value("SELECT count(*) FROM pg_subscription")
                .await
                .as_deref(),
            Some("0")
        );
    }

    let again = env.run(&["db", "sync"]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert!(
        again.stdout.contains("resumed an earlier run"),
        "{}",
        again.stdout
    );
    assert!(
        again.stderr.contains("· schema.pre_data"),
        "the schema step is skipped:\n{}",
        again.stderr
    );
    assert!(
        again.stderr.contains("already in place"),
        "{}",
        again.stderr
    );
    if method == "parallel" {
        assert!(
            again.stderr.contains("✓ copy"),
            "the copy is made again:\n{}",
            again.stderr
        );
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let verify = env.run(&["db", "verify"]);
        if verify.code == 0 {
            assert!(
                verify.stdout.contains("all 2 tables equal"),
                "{}",
                verify.stdout
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never equal:\n{}{}",
            verify.stdout,
            verify.stderr
        );
    }
    assert_eq!(
        env.pair
            .target
            .value("SELECT count(*) FROM public.big")
            .await
            .as_deref(),
        Some("600000")
    );
    assert_eq!(
        env.pair
            .target
            .value("SELECT count(DISTINCT id) FROM public.big")
            .await
            .as_deref(),
        Some("600000")
    );
    // The post-data index is there too.
    assert_eq!(
        env.pair
            .target
            .value("SELECT count(*) FROM pg_indexes WHERE indexname = 'big_bucket'")
            .await
            .as_deref(),
        Some("1")
    );

    let status = env.run(&["status"]);
    assert_eq!(status.code, 0);
    let runs: Vec<&str> = status
        .stdout
        .lines()
        .filter(|l| l.starts_with("run "))
        .collect();
    assert_eq!(runs.len(), 3, "{}", status.stdout); // killed sync, sync, verify
    assert!(
        runs[0].contains("db sync · interrupted"),
        "{}",
        status.stdout
    );
    assert!(runs[1].contains("db sync · ok"), "{}", status.stdout);
    assert!(
        status.stdout.contains("(stopped before it finished)"),
        "{}",
        status.stdout
    );
    env.assert_journal_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_copy_is_kept_and_a_foreign_slot_is_refused() {
    let env = Env::native().await;
    env.pair.source.exec("CREATE TABLE public.t (id int PRIMARY KEY, v text); INSERT INTO public.t SELECT g, 'v' FROM generate_series(1, 100) g;").await;
    assert_eq!(env.run(&["db", "sync"]).code, 0);
    // The subscription goes (the slot stays), a write lands on the source meanwhile.
    env.pair
        .target
        .exec("ALTER SUBSCRIPTION cutover_sub DISABLE; ALTER SUBSCRIPTION cutover_sub SET (slot_name = NONE); DROP SUBSCRIPTION cutover_sub;")
        .await;
    env.pair
        .source
        .exec("INSERT INTO public.t VALUES (101, 'late')")
        .await;
    let again = env.run(&["db", "sync"]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert!(
        again
            .stderr
            .contains("kept the copy of an earlier run: 100 rows into"),
        "{}",
        again.stderr
    );
    let verify = env.run(&["db", "verify"]);
    assert_eq!(
        verify.code, 0,
        "the write made while no subscription ran arrives: {}",
        verify.stdout
    );
    assert_eq!(
        env.pair
            .target
            .value("SELECT v FROM public.t WHERE id = 101")
            .await
            .as_deref(),
        Some("late")
    );

    // A slot of that name that this plan's journal knows nothing of is not taken over.
    let other = Env::native().await;
    other
        .pair
        .source
        .exec("CREATE TABLE public.t (id int PRIMARY KEY)")
        .await;
    other
        .pair
        .source
        .exec("SELECT pg_create_logical_replication_slot('cutover_slot', 'pgoutput')")
        .await;
    let r = other.run(&["db", "sync"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("replication slot cutover_slot exists on the source, but this plan's journal shows no copy into"), "{}", r.stderr);
    assert_eq!(
        common::footprint(&other.pair).await,
        ("0/1".to_string(), "0/0".to_string())
    );
}
