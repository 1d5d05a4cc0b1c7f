//! `db status --watch` refreshes until interrupted; `cutover status --json` is the journal.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_refreshes_and_the_journal_reads_as_json() {
    let env = Env::native().await;
    env.pair
        .source
        .exec("CREATE TABLE public.t (id int PRIMARY KEY, v text); INSERT INTO public.t SELECT g, 'x' FROM generate_series(1, 100) g;")
        .await;
    // Before any sync, status says so instead of failing.
    let before = env.run(&["db", "status"]);
    assert_eq!(before.code, 0, "{}", before.stderr);
    assert!(
        before
            .stdout
            .contains("warning: no sync in place; run `cutover db sync`"),
        "{}",
        before.stdout
    );

    assert_eq!(env.run(&["db", "sync"]).code, 0);
    std::fs::write(
        env.plan(),
        std::fs::read_to_string(env.plan())
            .unwrap()
            .replace("refresh = \"2s\"", "refresh = \"200ms\""),
    )
    .unwrap();
    let mut child = env
        .command(&["db", "status", "--watch", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader stays open until the watch has ended: Ctrl-C is what ends it here.
    let mut reader = BufReader::new(child.stdout.take().unwrap()).lines();
    let lines: Vec<serde_json::Value> = reader
        .by_ref()
        .take(3)
        .map(|l| {
            let l = l.unwrap();
            env.assert_no_secret(&l);
            serde_json::from_str(&l).unwrap()
        })
        .collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = wait_at_most(child, std::time::Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0));
    drop(reader);
    assert_eq!(lines.len(), 3);

    // A reader that goes away, as `| head -1` does, ends the watch quietly with success.
    let mut child = env
        .command(&["db", "status", "--watch", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("cutover_slot"), "{first}");
    let out = wait_at_most(child, std::time::Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in &lines {
        assert_eq!(s["slot"]["name"], "cutover_slot");
        assert_eq!(s["subscription"]["enabled"], true);
        assert_eq!(s["tables"][0]["table"], "public.t");
        assert_eq!(s["tables"][0]["state"], "ready");
        assert!(s["slot"]["lag_bytes"].as_i64().unwrap() >= 0);
        assert!(s["slot"]["retained_bytes"].as_i64().unwrap() >= 0);
    }

    let journal = env.run(&["status", "--json"]);
    assert_eq!(journal.code, 0);
    let status: serde_json::Value = serde_json::from_str(&journal.stdout).unwrap();
    // `db sync` alone is no migration: there is nothing of one to show.
    assert_eq!(status["migration"], serde_json::Value::Null);
    let run = &status["runs"].as_array().unwrap()[0];
    assert_eq!(run["command"], "db sync");
    assert_eq!(run["outcome"], "ok");
    let steps: Vec<&str> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "schema.watch",
            "schema.dump",
            "schema.pre_data",
            "publication",
            "copy",
            "schema.keys",
            "subscription",
            "stream",
            "schema.post_data",
            "large_objects",
            "target.ready"
        ]
    );
    assert!(run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["status"] == "ok" || s["status"] == "skipped"));
}

/// Waits for a child that should end by itself; one that does not is killed and fails the test
/// instead of hanging it.
fn wait_at_most(
    mut child: std::process::Child,
    limit: std::time::Duration,
) -> std::process::Output {
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("the watch still ran {limit:?} after it was told to end");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}
