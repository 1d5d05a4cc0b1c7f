//! The switchover's database steps against real clusters: the fence and its exact undo, ending
//! other sessions, copying sequences, and turning logical replication around.

use std::time::{Duration, Instant};

use cutover_core::plan::SyncSettings;
use cutover_core::ConnString;
use cutover_pg::fence::{
    apply_fence, other_sessions, plan_fence, terminate, unfence, wal_position, Fence,
};
use cutover_pg::inspect::{Sequence, Table};
use cutover_pg::replication::{can_subscribe, start_replication, stop_subscription, wait_applied};
use cutover_pg::sequences::copy_sequences;
use cutover_pg::{connect, PgError, Side};
use cutover_testkit::local::ClusterOptions;
use cutover_testkit::{Pair, Pg};
use tokio_postgres::Client;

fn settings() -> SyncSettings {
    SyncSettings {
        ready_timeout: Duration::from_secs(3600),
        copy_jobs: 2,
        ..SyncSettings::default()
    }
}

async fn inventory(client: &Client) -> (Vec<Table>, Vec<Sequence>) {
    let t = cutover_pg::inspect::tables(client, Side::Source, &settings())
        .await
        .unwrap();
    let s = cutover_pg::inspect::sequences(client, Side::Source, &settings())
        .await
        .unwrap();
    (t, s)
}

async fn one_cluster() -> Pg {
    Pg::start(ClusterOptions::default(), Side::Source).await
}

async fn login(url: &ConnString) -> Client {
    connect(url, Side::Source).await.expect("connect")
}

/// The SQLSTATE of a statement run on `client`, None when it succeeds. A transaction the
/// statement left aborted is rolled back.
async fn sqlstate(client: &Client, sql: &str) -> Option<String> {
    match client.batch_execute(sql).await {
        Ok(()) => None,
        Err(e) => Some({
            let _ = client.batch_execute("ROLLBACK").await;
            e.code()
                .map(|c| c.code().to_string())
                .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
        }),
    }
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

fn refused(r: Result<impl std::fmt::Debug, PgError>) -> String {
    match r {
        Err(PgError::Refused(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Every ACL item of every relation and column in the public schema, as a set: the owner's
/// defaults written out when `relacl` is NULL, items sorted. That is what the server enforces;
/// the order of items and NULL-versus-defaults are not.
const ACLS: &str = "
SELECT string_agg(c.relname || ' ' ||
           array(SELECT x::text FROM unnest(coalesce(c.relacl,
                 acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner))) x ORDER BY 1)::text ||
           coalesce((SELECT string_agg(' ' || a.attname || '=' ||
                            array(SELECT x::text FROM unnest(a.attacl) x ORDER BY 1)::text, '' ORDER BY a.attnum)
                       FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL), ''),
           E'\\n' ORDER BY c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S')";

async fn acls(client: &Client) -> String {
    client.query_one(ACLS, &[]).await.unwrap().get(0)
}

/// Tables owned by the app's role and by postgres, a partitioned table, sequences, grants to
/// PUBLIC, column grants, and a grant `app` made itself WITH GRANT OPTION.
async fn fence_fixture(pg: &Pg) -> (ConnString, ConnString) {
    let app = pg.role("app", "NOSUPERUSER").await;
    let bob = pg.role("bob", "NOSUPERUSER").await;
    pg.exec(
        "CREATE TABLE app_owned (id int PRIMARY KEY, v text);
         ALTER TABLE app_owned OWNER TO app;
         INSERT INTO app_owned VALUES (1, 'one');
         CREATE TABLE shared (id serial PRIMARY KEY, v text, note text);
         INSERT INTO shared (v) VALUES ('first');
         GRANT SELECT, INSERT, DELETE ON shared TO app;
         GRANT UPDATE ON shared TO app WITH GRANT OPTION;
         GRANT USAGE ON SEQUENCE shared_id_seq TO app;
         GRANT UPDATE (note) ON shared TO bob;
         GRANT SELECT, INSERT ON shared TO PUBLIC;
         CREATE SEQUENCE counter;
         GRANT USAGE, SELECT, UPDATE ON SEQUENCE counter TO app;
         CREATE TABLE events (day date, id int, PRIMARY KEY (day, id)) PARTITION BY RANGE (day);
         CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         GRANT SELECT, INSERT ON events TO app;
         GRANT INSERT ON events_2024 TO app;",
    )
    .await;
    // Grants made by app, not by the owner: a superuser's REVOKE does not reach them.
    login(&app)
        .await
        .batch_execute("GRANT UPDATE ON shared TO bob; GRANT UPDATE (v) ON shared TO bob;")
        .await
        .unwrap();
    (app, bob)
}

/// Every way `app` and `bob` could write, each with its SQLSTATE (None = it worked).
async fn writes(app: &Client, bob: &Client) -> Vec<(&'static str, Option<String>)> {
    let mut out = vec![];
    for (client, sql) in [
        (
            app,
            "INSERT INTO app_owned VALUES (100 + (random() * 1e6)::int, 'x')",
        ),
        (app, "UPDATE app_owned SET v = 'y'"),
        (app, "DELETE FROM app_owned WHERE id < 0"),
        (app, "BEGIN; TRUNCATE app_owned; ROLLBACK"),
        (app, "INSERT INTO shared (v) VALUES ('x')"),
        (app, "UPDATE shared SET v = 'y'"),
        (app, "DELETE FROM shared WHERE id < 0"),
        (app, "SELECT nextval('counter')"),
        (
            app,
            "INSERT INTO events VALUES ('2024-02-02', (random() * 1e6)::int)",
        ),
        (
            app,
            "INSERT INTO events_2024 VALUES ('2024-02-03', (random() * 1e6)::int)",
        ),
        (bob, "UPDATE shared SET note = 'n'"),
        (bob, "UPDATE shared SET v = 'b'"),
        (
            bob,
            "INSERT INTO shared (id, v) VALUES (-1 - (random() * 1e6)::int, 'public')",
        ),
    ] {
        out.push((sql, sqlstate(client, sql).await));
    }
    out
}

/// Rows in the fixture's tables, as the app reads them.
async fn rows(app: &Client) -> Vec<i64> {
    let mut out = vec![];
    for table in ["app_owned", "shared", "events"] {
        out.push(count(app, &format!("SELECT count(*) FROM {table}")).await);
    }
    out
}

#[tokio::test]
async fn fence_stops_every_write_keeps_reads_and_unfence_restores_the_exact_acls() {
    let pg = one_cluster().await;
    let (app_url, bob_url) = fence_fixture(&pg).await;
    let admin = pg.client().await;
    let (app, bob) = (login(&app_url).await, login(&bob_url).await);
    let (tables, sequences) = inventory(&admin).await;
    let before = acls(&admin).await;
    for (sql, state) in writes(&app, &bob).await {
        assert_eq!(state, None, "{sql} must work before the fence");
    }
    let rows_before = rows(&app).await;

    let fence = plan_fence(&admin, Side::Source, &tables, &sequences)
        .await
        .unwrap();
    // The plan changes nothing and records the owner's implicit privileges and app's grants.
    assert_eq!(acls(&admin).await, before);
    assert!(fence
        .revoked
        .iter()
        .any(|r| r.name == "app_owned" && r.grantee == "app" && r.privilege == "TRUNCATE"));
    assert!(fence
        .revoked
        .iter()
        .any(|r| r.name == "shared" && r.column.as_deref() == Some("v") && r.grantor == "app"));
    assert!(fence
        .revoked
        .iter()
        .any(|r| r.name == "shared" && r.grantee == "PUBLIC" && r.privilege == "INSERT"));
    assert!(fence
        .revoked
        .iter()
        .any(|r| r.name == "events_2024" && r.grantee == "app"));
    // It survives the journal.
    let json = serde_json::to_string(&fence).unwrap();
    assert_eq!(serde_json::from_str::<Fence>(&json).unwrap(), fence);

    apply_fence(&admin, Side::Source, &fence).await.unwrap();
    apply_fence(&admin, Side::Source, &fence).await.unwrap();
    for (sql, state) in writes(&app, &bob).await {
        assert_eq!(
            state.as_deref(),
            Some("42501"),
            "{sql} must be refused by the fence"
        );
    }
    // Reads still work, and see exactly what was there before the fence.
    assert_eq!(rows(&app).await, rows_before);

    unfence(&admin, Side::Source, &fence).await.unwrap();
    unfence(&admin, Side::Source, &fence).await.unwrap();
    assert_eq!(acls(&admin).await, before);
    for (sql, state) in writes(&app, &bob).await {
        assert_eq!(state, None, "{sql} must work again after unfence");
    }
}

#[tokio::test]
async fn fence_is_refused_without_ownership_and_names_the_table() {
    let pg = one_cluster().await;
    let (_, bob_url) = fence_fixture(&pg).await;
    let bob = login(&bob_url).await;
    let (tables, sequences) = inventory(&bob).await;
    let message = refused(plan_fence(&bob, Side::Source, &tables, &sequences).await);
    assert!(!message.contains('\n'), "one line: {message}");
    assert!(message.contains("public.app_owned"), "{message}");
    assert!(message.contains("superuser"), "{message}");
}

#[tokio::test]
async fn apply_fence_refuses_a_grant_made_after_planning_and_changes_nothing() {
    let pg = one_cluster().await;
    let (app_url, bob_url) = fence_fixture(&pg).await;
    let admin = pg.client().await;
    let (tables, sequences) = inventory(&admin).await;
    let fence = plan_fence(&admin, Side::Source, &tables, &sequences)
        .await
        .unwrap();
    pg.exec("GRANT DELETE ON shared TO bob").await;
    let before = acls(&admin).await;
    let message = refused(apply_fence(&admin, Side::Source, &fence).await);
    assert!(
        message.contains("DELETE on public.shared for bob"),
        "{message}"
    );
    assert!(message.contains("plan the fence again"), "{message}");
    assert_eq!(acls(&admin).await, before);
    let (app, bob) = (login(&app_url).await, login(&bob_url).await);
    for (sql, state) in writes(&app, &bob).await {
        assert_eq!(state, None, "{sql} must still work");
    }
}

#[tokio::test]
async fn other_sessions_lists_the_app_and_terminate_ends_it() {
    let pg = one_cluster().await;
    let app_url = pg.role("app", "NOSUPERUSER").await;
    let admin = pg.client().await;
    let app = login(&app_url).await;
    let app_pid: i32 = app
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let own_pid: i32 = admin
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    let sessions = other_sessions(&admin, Side::Source, &[]).await.unwrap();
    let listed = sessions
        .iter()
        .find(|s| s.pid == app_pid)
        .expect("the app's session is listed");
    assert_eq!(listed.user, "app");
    assert_eq!(listed.client_addr.as_deref(), Some("127.0.0.1"));
    assert!(sessions.iter().all(|s| s.pid != own_pid));
    let allowed = other_sessions(&admin, Side::Source, &[app_pid])
        .await
        .unwrap();
    assert!(allowed.iter().all(|s| s.pid != app_pid));

    // Our own pid is never ended, even when asked.
    assert_eq!(
        terminate(&admin, Side::Source, &[app_pid, own_pid])
            .await
            .unwrap(),
        1
    );
    assert!(app.simple_query("SELECT 1").await.is_err());
    let after = other_sessions(&admin, Side::Source, &[]).await.unwrap();
    assert!(after.iter().all(|s| s.pid != app_pid));
    assert_eq!(
        terminate(&admin, Side::Source, &[app_pid]).await.unwrap(),
        0
    );
}

const SEQUENCES: &str = r#"
CREATE TABLE items (id serial PRIMARY KEY, v text);
CREATE TABLE things (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
CREATE SEQUENCE free_called;
CREATE SEQUENCE free_fresh START 7;
CREATE SEQUENCE free_set;
CREATE SEQUENCE "Odd Name" INCREMENT -1 MINVALUE -1000 MAXVALUE -1 START -1;
"#;

async fn sequence_state(client: &Client, name: &str) -> (i64, bool) {
    let r = client
        .query_one(
            &format!(
                "SELECT last_value, is_called FROM {}",
                cutover_pg::qualified("public", name)
            ),
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

#[tokio::test]
async fn copy_sequences_copies_values_and_is_called_exactly() {
    let pair = Pair::native().await;
    tokio::join!(pair.source.exec(SEQUENCES), pair.target.exec(SEQUENCES));
    pair.source
        .exec(
            "INSERT INTO items (v) SELECT 'i' FROM generate_series(1, 5);
             INSERT INTO things (v) SELECT 't' FROM generate_series(1, 3);
             SELECT setval('free_called', 42, true);
             SELECT setval('free_set', 100, false);
             SELECT nextval('\"Odd Name\"'), nextval('\"Odd Name\"'), nextval('\"Odd Name\"');",
        )
        .await;
    let (source, target) = (pair.source.client().await, pair.target.client().await);
    let (_, sequences) = inventory(&source).await;
    assert_eq!(sequences.len(), 6);

    let copied = copy_sequences(&source, Side::Source, &target, Side::Target, &sequences)
        .await
        .unwrap();
    assert_eq!(copied.len(), 6);
    for s in &sequences {
        assert_eq!(
            sequence_state(&target, &s.name).await,
            sequence_state(&source, &s.name).await,
            "{}",
            s.name
        );
    }
    let value = |name: &str| copied.iter().find(|v| v.name == name).unwrap().clone();
    assert_eq!(
        (value("free_set").last_value, value("free_set").is_called),
        (100, false)
    );
    assert_eq!(
        (
            value("free_fresh").last_value,
            value("free_fresh").is_called
        ),
        (7, false)
    );
    assert_eq!(
        (value("Odd Name").last_value, value("Odd Name").is_called),
        (-3, true)
    );
    assert_eq!(value("items_id_seq").last_value, 5);
    // The target hands out what the source would have handed out next.
    for (name, next) in [
        ("items_id_seq", 6),
        ("things_id_seq", 4),
        ("free_called", 43),
        ("free_fresh", 7),
        ("free_set", 100),
        ("Odd Name", -4),
    ] {
        let sql = format!(
            "SELECT nextval('{}')",
            cutover_pg::qualified("public", name).replace('\'', "''")
        );
        assert_eq!(count(&target, &sql).await, next, "{name}");
    }

    pair.target.exec("DROP SEQUENCE free_set").await;
    let message =
        refused(copy_sequences(&source, Side::Source, &target, Side::Target, &sequences).await);
    assert!(
        message.contains("sequence public.free_set does not exist on the target"),
        "{message}"
    );
}

const ACCOUNTS: &str = "CREATE TABLE accounts (id int PRIMARY KEY, v text);
CREATE TABLE ledger (day date NOT NULL, id int NOT NULL, amount int, PRIMARY KEY (day, id)) PARTITION BY RANGE (day);
CREATE TABLE ledger_2024 PARTITION OF ledger FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');";

async fn slots(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT slot_name::text FROM pg_replication_slots ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn pids(client: &Client, sql: &str) -> Vec<i32> {
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn replication_turns_around_without_losing_a_row_and_leaves_no_slot() {
    let pair = Pair::native().await;
    tokio::join!(pair.source.exec(ACCOUNTS), pair.target.exec(ACCOUNTS));
    let (source, target) = (pair.source.client().await, pair.target.client().await);
    let (tables, _) = inventory(&source).await;
    let (source_url, target_url) = (pair.source.url(), pair.target.url());
    let forward = || {
        start_replication(
            &source,
            Side::Source,
            &source_url,
            &target,
            Side::Target,
            "fwd_pub",
            "fwd_sub",
            "fwd_slot",
            &tables,
        )
    };
    forward().await.unwrap();
    forward().await.unwrap();

    source
        .batch_execute(
            "INSERT INTO accounts SELECT i, 'src' FROM generate_series(1, 100) i;
             INSERT INTO ledger SELECT '2024-03-01', i, i FROM generate_series(1, 10) i;",
        )
        .await
        .unwrap();
    let lsn = wal_position(&source, Side::Source).await.unwrap();
    let started = Instant::now();
    wait_applied(
        &source,
        Side::Source,
        "fwd_slot",
        &lsn,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    eprintln!("forward: applied up to {lsn} after {:?}", started.elapsed());
    assert_eq!(count(&target, "SELECT count(*) FROM accounts").await, 100);
    assert_eq!(count(&target, "SELECT count(*) FROM ledger").await, 10);
    for i in 0..5 {
        source
            .batch_execute(&format!(
                "INSERT INTO accounts VALUES ({}, 'steady')",
                1000 + i
            ))
            .await
            .unwrap();
        let lsn = wal_position(&source, Side::Source).await.unwrap();
        let started = Instant::now();
        wait_applied(
            &source,
            Side::Source,
            "fwd_slot",
            &lsn,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        eprintln!("steady: applied up to {lsn} after {:?}", started.elapsed());
    }
    assert_eq!(count(&target, "SELECT count(*) FROM accounts").await, 105);
    // Nothing written since: the position is reached at once.
    let started = Instant::now();
    let lsn = wal_position(&source, Side::Source).await.unwrap();
    wait_applied(
        &source,
        Side::Source,
        "fwd_slot",
        &lsn,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));

    // Replication's own processes are not sessions to end.
    let walsenders = pids(&source, "SELECT pid FROM pg_stat_replication").await;
    let workers = pids(
        &target,
        "SELECT pid FROM pg_stat_subscription WHERE pid IS NOT NULL",
    )
    .await;
    assert!(!walsenders.is_empty() && !workers.is_empty());
    let on_source = other_sessions(&source, Side::Source, &[]).await.unwrap();
    let on_target = other_sessions(&target, Side::Target, &[]).await.unwrap();
    assert!(on_source.iter().all(|s| !walsenders.contains(&s.pid)));
    assert!(on_target.iter().all(|s| !workers.contains(&s.pid)));

    // Both directions at once would loop: refused while the forward subscription exists.
    let reverse = || {
        start_replication(
            &target,
            Side::Target,
            &target_url,
            &source,
            Side::Source,
            "rev_pub",
            "rev_sub",
            "rev_slot",
            &tables,
        )
    };
    let message = refused(reverse().await);
    assert!(
        message.contains("fwd_sub") && message.contains("loop"),
        "{message}"
    );
    assert_eq!(slots(&target).await, Vec::<String>::new());

    assert!(stop_subscription(&target, Side::Target, "fwd_sub")
        .await
        .unwrap());
    assert_eq!(slots(&source).await, Vec::<String>::new());
    reverse().await.unwrap();
    reverse().await.unwrap();

    target
        .batch_execute(
            "INSERT INTO accounts SELECT i, 'tgt' FROM generate_series(101, 150) i;
             UPDATE accounts SET v = 'changed' WHERE id <= 10;
             DELETE FROM ledger WHERE id <= 3;",
        )
        .await
        .unwrap();
    let lsn = wal_position(&target, Side::Target).await.unwrap();
    let started = Instant::now();
    wait_applied(
        &target,
        Side::Target,
        "rev_slot",
        &lsn,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    eprintln!("reverse: applied up to {lsn} after {:?}", started.elapsed());
    assert_eq!(count(&source, "SELECT count(*) FROM accounts").await, 155);
    assert_eq!(
        count(&source, "SELECT count(*) FROM accounts WHERE v = 'changed'").await,
        10
    );
    assert_eq!(count(&source, "SELECT count(*) FROM ledger").await, 7);

    assert!(stop_subscription(&source, Side::Source, "rev_sub")
        .await
        .unwrap());
    assert!(!stop_subscription(&source, Side::Source, "rev_sub")
        .await
        .unwrap());
    assert!(!stop_subscription(&target, Side::Target, "fwd_sub")
        .await
        .unwrap());
    assert_eq!(slots(&source).await, Vec::<String>::new());
    assert_eq!(slots(&target).await, Vec::<String>::new());
}

#[tokio::test]
async fn wait_applied_fails_fast_without_a_slot_and_names_the_lag_on_timeout() {
    let pair = Pair::native().await;
    tokio::join!(pair.source.exec(ACCOUNTS), pair.target.exec(ACCOUNTS));
    let (source, target) = (pair.source.client().await, pair.target.client().await);
    let (tables, _) = inventory(&source).await;
    let lsn = wal_position(&source, Side::Source).await.unwrap();
    let started = Instant::now();
    let message =
        refused(wait_applied(&source, Side::Source, "nope", &lsn, Duration::from_secs(30)).await);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(message.contains("no replication slot nope"), "{message}");

    start_replication(
        &source,
        Side::Source,
        &pair.source.url(),
        &target,
        Side::Target,
        "fwd_pub",
        "fwd_sub",
        "fwd_slot",
        &tables,
    )
    .await
    .unwrap();
    target
        .batch_execute("ALTER SUBSCRIPTION fwd_sub DISABLE")
        .await
        .unwrap();
    source
        .batch_execute("INSERT INTO accounts SELECT i, 'x' FROM generate_series(1, 1000) i")
        .await
        .unwrap();
    let lsn = wal_position(&source, Side::Source).await.unwrap();
    let started = Instant::now();
    let message = refused(
        wait_applied(
            &source,
            Side::Source,
            "fwd_slot",
            &lsn,
            Duration::from_millis(500),
        )
        .await,
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(message.contains("bytes behind"), "{message}");
    assert!(!message.contains("unknown"), "{message}");

    // Enabled again, it catches up: nothing was lost meanwhile.
    start_replication(
        &source,
        Side::Source,
        &pair.source.url(),
        &target,
        Side::Target,
        "fwd_pub",
        "fwd_sub",
        "fwd_slot",
        &tables,
    )
    .await
    .unwrap();
    wait_applied(
        &source,
        Side::Source,
        "fwd_slot",
        &lsn,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(count(&target, "SELECT count(*) FROM accounts").await, 1000);
    assert!(stop_subscription(&target, Side::Target, "fwd_sub")
        .await
        .unwrap());
}

/// A `CREATE SUBSCRIPTION` killed after it made the slot leaves the slot behind; the next call
/// takes it over, and the rows written meanwhile arrive.
#[tokio::test]
async fn start_replication_takes_over_a_slot_left_by_an_interrupted_call() {
    let pair = Pair::native().await;
    tokio::join!(pair.source.exec(ACCOUNTS), pair.target.exec(ACCOUNTS));
    let (source, target) = (pair.source.client().await, pair.target.client().await);
    let (tables, _) = inventory(&source).await;
    cutover_pg::replication::ensure_publication(&source, Side::Source, "fwd_pub", &tables)
        .await
        .unwrap();
    source
        .execute(
            "SELECT pg_create_logical_replication_slot('fwd_slot', 'pgoutput')",
            &[],
        )
        .await
        .unwrap();
    source
        .batch_execute("INSERT INTO accounts SELECT i, 'meanwhile' FROM generate_series(1, 20) i")
        .await
        .unwrap();
    start_replication(
        &source,
        Side::Source,
        &pair.source.url(),
        &target,
        Side::Target,
        "fwd_pub",
        "fwd_sub",
        "fwd_slot",
        &tables,
    )
    .await
    .unwrap();
    let lsn = wal_position(&source, Side::Source).await.unwrap();
    wait_applied(
        &source,
        Side::Source,
        "fwd_slot",
        &lsn,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(count(&target, "SELECT count(*) FROM accounts").await, 20);
    assert_eq!(slots(&source).await, vec!["fwd_slot".to_string()]);
    assert!(stop_subscription(&target, Side::Target, "fwd_sub")
        .await
        .unwrap());
    assert_eq!(slots(&source).await, Vec::<String>::new());
}

/// `pg_current_wal_insert_lsn()` points past the page header when the last record ended on a
/// page boundary, while a caught-up subscriber confirms the boundary itself.
#[tokio::test]
async fn wait_applied_reaches_a_goal_just_past_a_page_header() {
    let pg = one_cluster().await;
    let client = pg.client().await;
    client
        .execute(
            "SELECT pg_create_logical_replication_slot('probe', 'pgoutput')",
            &[],
        )
        .await
        .unwrap();
    client
        .batch_execute("SET synchronous_commit = on; CREATE TABLE filler (v text)")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO filler SELECT repeat('x', 100) FROM generate_series(1, 2000)")
        .await
        .unwrap();
    // A page boundary behind the WAL's end and ahead of the slot, not a segment's first page
    // (whose header is longer).
    let row = client
        .query_one(
            "WITH p AS (SELECT pg_current_wal_flush_lsn() AS lsn,
                               current_setting('wal_block_size')::numeric AS page)
             SELECT (lsn - (pg_wal_lsn_diff(lsn, '0/0') % page) - page * 2)::text,
                    pg_wal_lsn_diff(lsn - (pg_wal_lsn_diff(lsn, '0/0') % page) - page * 2, '0/0')::bigint
                      % (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size') = 0
               FROM p",
            &[],
        )
        .await
        .unwrap();
    let (boundary, segment_start): (String, bool) = (row.get(0), row.get(1));
    let header: i32 = if segment_start { 40 } else { 24 };
    client
        .execute(
            "SELECT pg_replication_slot_advance('probe', $1::text::pg_lsn)",
            &[&boundary],
        )
        .await
        .unwrap();
    let confirmed: String = client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'probe'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(confirmed, boundary);
    let past_header: String = client
        .query_one(
            "SELECT ($1::text::pg_lsn + $2::int::numeric)::text",
            &[&boundary, &header],
        )
        .await
        .unwrap()
        .get(0);
    let started = Instant::now();
    wait_applied(
        &client,
        Side::Source,
        "probe",
        &past_header,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    // One byte further is WAL the slot has not confirmed.
    let further: String = client
        .query_one(
            "SELECT ($1::text::pg_lsn + $2::int::numeric)::text",
            &[&boundary, &(header + 8)],
        )
        .await
        .unwrap()
        .get(0);
    let message = refused(
        wait_applied(
            &client,
            Side::Source,
            "probe",
            &further,
            Duration::from_millis(200),
        )
        .await,
    );
    assert!(
        message.contains(&format!("{} bytes behind", header + 8)),
        "{message}"
    );
}

#[tokio::test]
async fn stop_subscription_detaches_when_the_publisher_is_gone() {
    let mut pair = Pair::native().await;
    tokio::join!(pair.source.exec(ACCOUNTS), pair.target.exec(ACCOUNTS));
    let target = pair.target.client().await;
    {
        let source = pair.source.client().await;
        let (tables, _) = inventory(&source).await;
        start_replication(
            &source,
            Side::Source,
            &pair.source.url(),
            &target,
            Side::Target,
            "fwd_pub",
            "fwd_sub",
            "fwd_slot",
            &tables,
        )
        .await
        .unwrap();
    }
    pair.source.cluster.stop();
    let started = Instant::now();
    assert!(stop_subscription(&target, Side::Target, "fwd_sub")
        .await
        .unwrap());
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        count(&target, "SELECT count(*) FROM pg_subscription").await,
        0
    );
    assert!(!stop_subscription(&target, Side::Target, "fwd_sub")
        .await
        .unwrap());
}

#[tokio::test]
async fn start_replication_never_shows_the_password() {
    let pair = Pair::native().await;
    tokio::join!(pair.source.exec(ACCOUNTS), pair.target.exec(ACCOUNTS));
    let (source, target) = (pair.source.client().await, pair.target.client().await);
    let (tables, _) = inventory(&source).await;
    let secret = "wrong-Secret-4711";
    let url = pair
        .source
        .url()
        .with_password(Some(cutover_core::Secret::new(secret)));
    let err = start_replication(
        &source,
        Side::Source,
        &url,
        &target,
        Side::Target,
        "fwd_pub",
        "fwd_sub",
        "fwd_slot",
        &tables,
    )
    .await
    .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains(secret), "{text}");
    assert_eq!(slots(&source).await, Vec::<String>::new());
}

#[tokio::test]
async fn can_subscribe_needs_a_superuser_on_postgres_15() {
    let pg = one_cluster().await;
    can_subscribe(&pg.client().await, Side::Target)
        .await
        .unwrap();
    let app = login(&pg.role("app", "NOSUPERUSER").await).await;
    let version: i32 = app
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    let message = refused(can_subscribe(&app, Side::Target).await);
    assert!(message.contains("sync.mode = \"trigger\""), "{message}");
    assert!(message.contains("\"app\" on the target"), "{message}");
    if version < 160000 {
        assert!(message.contains("only superusers"), "{message}");
    }
}
