//! Trigger mode from the command line on a Heroku-like source (wal_level=replica, a role
//! that is neither superuser nor replication): db sync copies, db follow applies under
//! writes and reports health, db status shows the backlog, db verify finds them equal, a
//! SIGTERM stops it cleanly, and db cleanup removes the capture.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::Env;
use cutover_pg::{connect, Side};
use cutover_testkit::Pair;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_follow_verify_and_cleanup_without_replication_privileges() {
    let pair = Pair::heroku_like().await;
    let owner = pair.source.role("owner", "NOSUPERUSER NOREPLICATION").await;
    pair.source
        .exec("GRANT CREATE ON SCHEMA public TO owner")
        .await;
    let source = connect(&owner, Side::Source).await.unwrap();
    source
        .batch_execute(
            "CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL, price numeric(10,2));
             CREATE TABLE lines (item bigint REFERENCES items(id) ON DELETE CASCADE, n int, qty int, PRIMARY KEY (item, n));
             CREATE TABLE audit (id bigserial PRIMARY KEY, item bigint NOT NULL);
             CREATE FUNCTION audit_item() RETURNS trigger LANGUAGE plpgsql AS
                 $$BEGIN INSERT INTO audit (item) VALUES (NEW.id); RETURN NULL; END$$;
             CREATE TRIGGER items_audit AFTER UPDATE ON items FOR EACH ROW EXECUTE FUNCTION audit_item();
             CREATE TABLE notes (body text, n int);
             INSERT INTO notes VALUES ('a', 1), ('a', 1), ('b', 2), ('c', 3);
             INSERT INTO items (name, price) SELECT 'item ' || g, g * 1.5 FROM generate_series(1, 3000) g;
             INSERT INTO lines SELECT i, n, n FROM generate_series(1, 3000) i, generate_series(1, 3) n;
             CREATE MATERIALIZED VIEW item_count AS SELECT count(*) AS n FROM items;",
        )
        .await
        .unwrap();
    let mut env = Env::from_pair(pair);
    let target = env.pair.target.url();
    env.set_urls(&owner, &target);
    let plan = std::fs::read_to_string(env.plan()).unwrap();
    std::fs::write(
        env.plan(),
        plan.replace("mode = \"native\"", "mode = \"trigger\""),
    )
    .unwrap();

    // A keyless table is refused, with the fix, until the plan accepts whole-row identity.
    let run = env.run(&["db", "sync", "--no-follow"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("whole_row_tables"), "{}", run.stderr);
    let plan = std::fs::read_to_string(env.plan()).unwrap();
    std::fs::write(
        env.plan(),
        plan.replace(
            "whole_row_tables = []",
            "whole_row_tables = [\"public.notes\"]",
        ),
    )
    .unwrap();
    let run = env.run(&["db", "sync", "--no-follow"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("capture"), "{}", run.stderr);
    // Ready for production: the materialized view populated (pg_dump made it empty) and
    // planner statistics for the copied tables.
    assert_eq!(
        env.pair
            .target
            .value("SELECT n FROM item_count")
            .await
            .as_deref(),
        Some("3000")
    );
    for table in ["items", "lines", "notes"] {
        let stats = env
            .pair
            .target
            .value(&format!(
                "SELECT count(*) FROM pg_stats WHERE schemaname = 'public' AND tablename = '{table}'"
            ))
            .await;
        assert_ne!(stats.as_deref(), Some("0"), "statistics for {table}");
    }

    let health_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{health_port}");
    let mut follow = env
        .command(&["db", "follow", "--health", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    source
        .batch_execute(
            "UPDATE items SET price = price + 1 WHERE id % 7 = 0;
             DELETE FROM items WHERE id % 11 = 0;
             INSERT INTO items (name, price) SELECT 'new ' || g, g FROM generate_series(1, 200) g;
             UPDATE lines SET qty = qty * 10 WHERE n = 2;
             UPDATE notes SET n = n + 10 WHERE body = 'a';
             DELETE FROM notes WHERE body = 'b';
             INSERT INTO notes VALUES ('c', 3), ('d', NULL);",
        )
        .await
        .unwrap();
    let mut caught_up = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let run = env.run(&["--json", "db", "status"]);
        let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_default();
        if v["backlog"]["changes"] == 0 && v["backlog"]["applied_changes"].as_i64().unwrap_or(0) > 0
        {
            caught_up = true;
            break;
        }
    }
    assert!(caught_up, "the follower applied the backlog");
    let health = reqwest_get(&addr).await;
    assert!(health.contains("\"changes\""), "{health}");
    let run = env.run(&["db", "verify"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    // The keyless table, duplicates and NULLs included, row for row.
    let rows = "SELECT string_agg(body || ':' || coalesce(n::text, 'null'), ',' ORDER BY body, n) FROM notes";
    let on_source = env.pair.source.value(rows).await;
    assert_eq!(on_source.as_deref(), Some("a:11,a:11,c:3,c:3,d:null"));
    assert_eq!(env.pair.target.value(rows).await, on_source);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(follow.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = follow.wait().unwrap();
    assert!(status.success(), "db follow stops cleanly on SIGTERM");
    let mut err = String::new();
    use std::io::Read;
    follow
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    env.assert_no_secret(&err);

    let run = env.run(&["db", "cleanup"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("change capture"), "{}", run.stdout);
    let left = env
        .pair
        .source
        .value("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'cutover%'")
        .await;
    assert_eq!(left.as_deref(), Some("0"));
    // The target's own trigger, off while it followed (else the audit rows would be there
    // twice and verify would have failed), is on again.
    let state = env
        .pair
        .target
        .value("SELECT tgenabled::text FROM pg_trigger WHERE tgname = 'items_audit'")
        .await;
    assert_eq!(state.as_deref(), Some("O"));
    // The source's writes still work with the capture gone.
    source
        .batch_execute("INSERT INTO items (name) VALUES ('after cleanup')")
        .await
        .unwrap();
}

/// GET /health over a plain socket.
async fn reqwest_get(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_follow_killed_with_sigkill_under_load_resumes_exactly() {
    let pair = Pair::heroku_like().await;
    let owner = pair.source.role("owner", "NOSUPERUSER NOREPLICATION").await;
    pair.source
        .exec("GRANT CREATE ON SCHEMA public TO owner")
        .await;
    connect(&owner, Side::Source)
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL);
             INSERT INTO counters SELECT g, 0 FROM generate_series(1, 50) g;
             CREATE TABLE events (id bigserial PRIMARY KEY, counter int NOT NULL, at timestamptz DEFAULT now());",
        )
        .await
        .unwrap();
    let mut env = Env::from_pair(pair);
    let target = env.pair.target.url();
    env.set_urls(&owner, &target);
    let plan = std::fs::read_to_string(env.plan()).unwrap();
    std::fs::write(
        env.plan(),
        plan.replace("mode = \"native\"", "mode = \"trigger\""),
    )
    .unwrap();
    assert_eq!(env.run(&["db", "sync", "--no-follow"]).code, 0);

    // A load of hot-row updates, inserts and deletes while the applier is killed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (owner, stop) = (owner.clone(), stop.clone());
            tokio::spawn(async move {
                let c = connect(&owner, Side::Source).await.unwrap();
                let mut i = 0i64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let id = (1 + (i + w) % 5) as i32;
                    let _ = c
                        .batch_execute(&format!(
                            "BEGIN; UPDATE counters SET n = n + 1 WHERE id = {id};
                             INSERT INTO events (counter) VALUES ({id});
                             DELETE FROM events WHERE id = (SELECT min(id) FROM events WHERE counter = {id}) AND {i} % 3 = 0;
                             COMMIT;"
                        ))
                        .await;
                }
            })
        })
        .collect();
    for round in 0..5u64 {
        let mut follow = env
            .command(&["db", "follow"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400 + 173 * round)).await;
        follow.kill().unwrap(); // SIGKILL
        follow.wait().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // Restarted once more, it catches up; the two sides are equal.
    let mut follow = env
        .command(&["db", "follow"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // No waiting for the backlog here: verify itself waits, for each range it finds
    // different, until the follower's position covers what the source had committed.
    let verified = env.run(&["db", "verify"]);
    let equal = verified.code == 0;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(follow.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    follow.wait().unwrap();
    assert!(
        equal,
        "after five SIGKILLs the target equals the source: {}{}",
        verified.stdout, verified.stderr
    );
}
