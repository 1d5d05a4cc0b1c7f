//! Trigger mode's engine on a Heroku-like source (wal_level=replica, a role that is neither
//! superuser nor replication): capture, one snapshot for the copy, and the applier under
//! concurrent writes — hot rows, deletes, long transactions that commit after shorter later
//! ones, a TRUNCATE — killed at random points and restarted, and across server restarts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cutover_core::plan::SyncSettings;
use cutover_pg::trigger::{self, ExportedSnapshot, Link};
use cutover_pg::{connect, copy, inspect, Side};
use cutover_testkit::Pair;

const SCHEMA: &str = "
CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text);
CREATE TABLE moves (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account int NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    amount int NOT NULL,
    tags text[],
    doc jsonb
);
CREATE TABLE scratch (k text PRIMARY KEY, v numeric);
";

struct Setup {
    pair: Pair,
    owner_source: cutover_core::ConnString,
    owner_target: cutover_core::ConnString,
    link: Link,
    tables: Vec<inspect::Table>,
}

async fn setup() -> Setup {
    let pair = Pair::heroku_like().await;
    let owner_source = pair.source.role("owner", "NOSUPERUSER NOREPLICATION").await;
    let owner_target = pair.target.role("owner", "NOSUPERUSER NOREPLICATION").await;
    for pg in [&pair.source, &pair.target] {
        pg.exec("GRANT CREATE ON SCHEMA public TO owner").await;
    }
    // On the target the foreign key comes after the copy, as `db sync` adds it.
    for (url, schema) in [
        (&owner_source, SCHEMA.to_string()),
        (
            &owner_target,
            SCHEMA.replace(" REFERENCES accounts(id) ON DELETE CASCADE", ""),
        ),
    ] {
        connect(url, Side::Source)
            .await
            .unwrap()
            .batch_execute(&schema)
            .await
            .unwrap();
    }
    connect(&owner_source, Side::Source)
        .await
        .unwrap()
        .batch_execute(
            "INSERT INTO accounts SELECT g, 1000, 'n' || g FROM generate_series(1, 200) g;
             INSERT INTO moves (account, amount, tags, doc)
                 SELECT 1 + g % 200, g, ARRAY['a', 'b'], jsonb_build_object('g', g) FROM generate_series(1, 2000) g;
             INSERT INTO scratch SELECT 'k' || g, g / 3.0 FROM generate_series(1, 100) g;",
        )
        .await
        .unwrap();
    let source = connect(&owner_source, Side::Source).await.unwrap();
    let tables = inspect::tables(&source, Side::Source, &SyncSettings::default())
        .await
        .unwrap();
    let link = Link {
        name: "forward".into(),
        origin: owner_source.clone(),
        origin_side: Side::Source,
        follower: owner_target.clone(),
        follower_side: Side::Target,
        whole_row_tables: vec![],
    };
    Setup {
        pair,
        owner_source,
        owner_target,
        link,
        tables,
    }
}

/// Concurrent writers until `stop`: hot-row updates, inserts, deletes, and long
/// transactions that commit after shorter ones that started later.
fn load(
    url: &cutover_core::ConnString,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..6)
        .map(|w| {
            let url = url.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut c = connect(&url, Side::Source).await.unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let hot = 1 + (n % 5) as i32;
                    let r = match w {
                        0 | 1 => {
                            c.execute(
                                "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
                                &[&hot],
                            )
                            .await
                            .map(|_| ())
                        }
                        2 => c
                            .batch_execute(&format!(
                                "INSERT INTO moves (account, amount, doc) VALUES ({}, {n}, '{{\"w\": {n}}}')",
                                1 + n % 200
                            ))
                            .await,
                        3 => c
                            .batch_execute(&format!(
                                "DELETE FROM moves WHERE id IN (SELECT id FROM moves ORDER BY random() LIMIT 2);
                                 INSERT INTO scratch VALUES ('w{n}', {n}) ON CONFLICT (k) DO UPDATE SET v = scratch.v + 1"
                            ))
                            .await,
                        4 => {
                            // A long transaction: starts first, commits last.
                            let tx = c.transaction().await.unwrap();
                            let r = tx
                                .execute(
                                    "UPDATE accounts SET note = 'long ' || $1::text WHERE id = 150",
                                    &[&(n as i64).to_string()],
                                )
                                .await;
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            let _ = tx.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 151", &[]).await;
                            match r {
                                Ok(_) => tx.commit().await,
                                Err(e) => Err(e),
                            }
                        }
                        _ => {
                            // Key changes: a row moves to another key.
                            c.batch_execute(&format!(
                                "UPDATE scratch SET k = k || 'x' WHERE k = 'k{}'",
                                1 + n % 100
                            ))
                            .await
                        }
                    };
                    if let Err(e) = r {
                        // Serialization or deadlock errors are the load's own business.
                        if e.code().is_none() {
                            panic!("load: {e:?}");
                        }
                    }
                }
                n
            })
        })
        .collect()
}

async fn fingerprint(url: &cutover_core::ConnString) -> Vec<String> {
    let c = connect(url, Side::Source).await.unwrap();
    let mut out = vec![];
    for (t, k) in [("accounts", "id"), ("moves", "id"), ("scratch", "k")] {
        let row = c
            .query_one(
                &format!("SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY {k})), '') FROM {t} t"),
                &[],
            )
            .await
            .unwrap();
        out.push(format!("{t} {}", row.get::<_, String>(0)));
    }
    out
}

async fn initial_copy(s: &Setup) {
    let source = connect(&s.owner_source, Side::Source).await.unwrap();
    trigger::install_capture(&source, Side::Source, &s.tables, &[])
        .await
        .unwrap();
    let snapshot = ExportedSnapshot::export(&s.owner_source, Side::Source)
        .await
        .unwrap();
    let counters = copy::TableCounters::for_tables(s.tables.len());
    let target = connect(&s.owner_target, Side::Target).await.unwrap();
    copy::copy_tables(
        &s.owner_source,
        &s.owner_target,
        &snapshot.name,
        &s.tables,
        2,
        &counters,
    )
    .await
    .unwrap();
    trigger::set_position(&target, Side::Target, &s.link.name, &snapshot.position)
        .await
        .unwrap();
    snapshot.release().await;
    target
        .batch_execute(
            "ALTER TABLE moves ADD FOREIGN KEY (account) REFERENCES accounts(id) ON DELETE CASCADE",
        )
        .await
        .unwrap();
}

async fn drain(s: &Setup) {
    let mut applier = trigger::Applier::open(&s.link, &s.tables).await.unwrap();
    for _ in 0..200 {
        let b = applier
            .apply_once()
            .await
            .unwrap()
            .expect("the link is live");
        if b.changes == 0 {
            return;
        }
    }
    panic!("the applier never caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_killed_applier_and_a_truncate_end_equal() {
    let s = setup().await;
    let stop = Arc::new(AtomicBool::new(false));
    // Writes run before, during and after the copy's snapshot.
    let writers = load(&s.owner_source, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    initial_copy(&s).await;
    // The applier is killed (its future dropped: connections gone mid-batch) at random points.
    let sync = SyncSettings::default();
    for round in 0..6u64 {
        let token = tokio_util::sync::CancellationToken::new();
        let follow = trigger::follow(
            &s.link,
            &sync,
            Duration::from_millis(50),
            token.clone(),
            &|_| {},
        );
        let _ = tokio::time::timeout(Duration::from_millis(300 + 137 * round), follow).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in writers {
        total += w.await.unwrap();
    }
    assert!(total > 50, "the load ran ({total} statements)");
    drain(&s).await;
    assert_eq!(
        fingerprint(&s.owner_source).await,
        fingerprint(&s.owner_target).await
    );

    // A TRUNCATE between inserts, and a backlog that reads zero once applied.
    connect(&s.owner_source, Side::Source)
        .await
        .unwrap()
        .batch_execute(
            "INSERT INTO scratch VALUES ('before', 1); TRUNCATE scratch; INSERT INTO scratch VALUES ('after', 2);",
        )
        .await
        .unwrap();
    let origin = connect(&s.owner_source, Side::Source).await.unwrap();
    let follower = connect(&s.owner_target, Side::Target).await.unwrap();
    let b = trigger::backlog(&origin, &follower, &s.link).await.unwrap();
    assert!(b.changes >= 3, "{b:?}");
    assert!(b.oldest_age_seconds.is_some());
    drain(&s).await;
    assert_eq!(
        fingerprint(&s.owner_source).await,
        fingerprint(&s.owner_target).await
    );
    let b = trigger::backlog(&origin, &follower, &s.link).await.unwrap();
    assert_eq!(b.changes, 0, "{b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_applier_recovers_from_source_and_target_restarts() {
    let s = setup().await;
    initial_copy(&s).await;
    let token = tokio_util::sync::CancellationToken::new();
    let retries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = retries.clone();
    let link = s.link.clone();
    let t2 = token.clone();
    let follower = tokio::spawn(async move {
        trigger::follow(
            &link,
            &SyncSettings::default(),
            Duration::from_millis(50),
            t2,
            &move |e| {
                if let trigger::FollowEvent::Retrying { .. } = e {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            },
        )
        .await
    });
    let write = |sql: &'static str| {
        let url = s.owner_source.clone();
        async move {
            connect(&url, Side::Source)
                .await
                .unwrap()
                .batch_execute(sql)
                .await
                .unwrap()
        }
    };
    write("UPDATE accounts SET balance = 7 WHERE id = 1").await;
    s.pair.source.cluster.restart().unwrap();
    write("UPDATE accounts SET balance = 8 WHERE id = 2").await;
    s.pair.target.cluster.restart().unwrap();
    write("DELETE FROM moves WHERE account = 3").await;
    let mut equal = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if fingerprint(&s.owner_source).await == fingerprint(&s.owner_target).await {
            equal = true;
            break;
        }
    }
    token.cancel();
    follower.await.unwrap().unwrap();
    assert!(equal, "the follower caught up after both restarts");
    assert!(
        retries.load(Ordering::Relaxed) > 0,
        "it noticed the restarts"
    );
}

/// The capture is installed on a database in production, and installed again when a move
/// starts over after a rollback, while the application's writes already go through it: it
/// never waits for an application transaction (a lock on the log held while it waits for a
/// table is how the two deadlock), and a table whose triggers are missing gets them once
/// the transaction that holds it lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installing_the_capture_again_under_application_writes_waits_for_nothing() {
    let s = setup().await;
    initial_copy(&s).await;
    let app = connect(&s.owner_source, Side::Source).await.unwrap();
    app.batch_execute("BEGIN; INSERT INTO scratch VALUES ('open', 1)")
        .await
        .unwrap();
    let installer = connect(&s.owner_source, Side::Source).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        trigger::install_capture(&installer, Side::Source, &s.tables, &[]),
    )
    .await
    .expect("a second install waits for no application transaction")
    .unwrap();
    // The same transaction goes on writing through the capture, and commits.
    app.batch_execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1; COMMIT")
        .await
        .unwrap();

    // A table without its triggers, written by an open transaction: the install waits for
    // it, without holding the log or any other table meanwhile.
    s.pair
        .source
        .exec("DROP TRIGGER cutover_capture ON scratch; DROP TRIGGER cutover_capture_truncate ON scratch")
        .await;
    app.batch_execute("BEGIN; INSERT INTO accounts VALUES (100001, 5, 'held')")
        .await
        .unwrap();
    app.batch_execute("UPDATE scratch SET v = v + 1 WHERE k = 'k1'")
        .await
        .unwrap();
    let tables = s.tables.clone();
    let owner = s.owner_source.clone();
    let install = tokio::spawn(async move {
        let c = connect(&owner, Side::Source).await.unwrap();
        trigger::install_capture(&c, Side::Source, &tables, &[]).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Other writers pass while it waits, on every table but the one it waits for.
    let other = connect(&s.owner_source, Side::Source).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        other.batch_execute("INSERT INTO moves (account, amount) VALUES (2, 7)"),
    )
    .await
    .expect("writes to other tables are not held up")
    .unwrap();
    app.batch_execute("COMMIT").await.unwrap();
    install.await.unwrap().unwrap();
    let armed = s
        .pair
        .source
        .value("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'scratch'::regclass AND tgname LIKE 'cutover_capture%'")
        .await
        .unwrap();
    assert_eq!(armed, "2");
}
