//! The long sync window as a team lives it: a Rails-style migration on the source while
//! the databases are in sync under pgbench load and the application's own writes, in both
//! modes. The additive changes (a column with a default, a new table filled at once, an
//! index made concurrently) reach the target on their own and `db verify` ends equal; then a
//! column rename is held: `db status` names it, `db switchover` refuses, and after
//! `cutover db schema apply` verify is equal and the switchover goes through.

mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{start_proxy, Env, Running};
use cutover_pg::{connect, pgbench, Side};
use cutover_testkit::Pair;

/// The application's own writes until `stop`: orders, and once the migration ran, orders
/// with a status and their invoices.
async fn app_writes(
    url: cutover_core::ConnString,
    migrated: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let app = connect(&url, Side::Source).await.unwrap();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        if migrated.load(Ordering::Relaxed) {
            app.batch_execute(&format!(
                "WITH o AS (INSERT INTO orders (note, total, status) VALUES ('paid {n}', {n}, 'paid') RETURNING id, total)
                 INSERT INTO invoices (order_id, total) SELECT id, total FROM o"
            ))
            .await
            .expect("the application's write after the migration");
        } else {
            app.batch_execute(&format!(
                "INSERT INTO orders (note, total) VALUES ('order {n}', {n})"
            ))
            .await
            .expect("the application's write");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n
}

async fn status(env: &Env) -> serde_json::Value {
    let run = env.run(&["--json", "db", "status"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    env.assert_no_secret(&run.stdout);
    serde_json::from_str(&run.stdout).unwrap()
}

/// Polls `db status` until `done` holds for its JSON (at most a minute).
async fn wait_status(
    env: &Env,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..120 {
        last = status(env).await;
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{what}: never happened; last status: {last:#}");
}

fn kinds(status: &serde_json::Value) -> Vec<String> {
    status["schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect()
}

async fn schema_changes_during_the_sync(trigger: bool) {
    let pair = if trigger {
        Pair::heroku_like().await
    } else {
        Pair::native().await
    };
    let mut env = Env::from_pair(pair);
    if trigger {
        let plan = std::fs::read_to_string(env.plan()).unwrap();
        std::fs::write(
            env.plan(),
            plan.replace("mode = \"native\"", "mode = \"trigger\""),
        )
        .unwrap();
    }
    let pw = env.pair.app_role("app").await;
    let app_source = env
        .pair
        .source
        .cluster
        .url_as("app", Some(pw.clone()), &env.pair.source.db);
    pgbench::init(&app_source, 1).await.unwrap();
    env.pair
        .source
        .exec(
            "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY;
             CREATE TABLE public.orders (id bigserial PRIMARY KEY, note text, total int NOT NULL);
             ALTER TABLE public.orders OWNER TO app;
             INSERT INTO public.orders (note, total) SELECT 'order ' || g, g FROM generate_series(1, 500) g;",
        )
        .await;
    // The platform's grants, as a team sets them up on the new database (pg_dump's copy
    // carries none): tables made later by the schema's follower are the application's too.
    env.pair
        .target
        .exec(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO app;
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO app;",
        )
        .await;
    let (port, _) = common::with_proxy(&mut env, pw.expose(), "");
    let sync = env.run(&["db", "sync", "--no-follow"]);
    assert_eq!(sync.code, 0, "{}{}", sync.stdout, sync.stderr);

    // The follower: trigger mode's applier, and in both modes the schema's.
    let follow_log = env.dir.path().join("follow.log");
    let follower = Running(
        env.command(&["db", "follow"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&follow_log).unwrap())
            .spawn()
            .unwrap(),
    );

    // pgbench and the application write; the migration runs in the middle.
    let load = pgbench::start(&app_source, &["-n", "-c", "4", "-j", "2", "-T", "8"]).unwrap();
    let (migrated, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let writer = tokio::spawn(app_writes(
        app_source.clone(),
        migrated.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let app = connect(&app_source, Side::Source).await.unwrap();
    app.batch_execute(
        "ALTER TABLE orders ADD COLUMN status text NOT NULL DEFAULT 'new';
         CREATE TABLE invoices (id bigserial PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders (id), total int NOT NULL);
         INSERT INTO invoices (order_id, total) SELECT id, total FROM orders;",
    )
    .await
    .unwrap();
    migrated.store(true, Ordering::Relaxed);
    app.batch_execute("CREATE INDEX CONCURRENTLY orders_status ON orders (status)")
        .await
        .unwrap();
    let verdict = pgbench::finish(load).await.unwrap();
    assert!(verdict.clean() && verdict.processed > 0, "{verdict:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    assert!(writer.await.unwrap() > 10);

    // Every additive change reached the target on its own, and the data is equal.
    wait_status(&env, "the additive changes applied", |s| {
        s["schema"].as_array().is_some_and(|a| a.is_empty())
    })
    .await;
    let verify = env.run(&["db", "verify"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    assert!(
        verify.stdout.contains("all 6 tables equal"),
        "{}",
        verify.stdout
    );
    let target = &env.pair.target;
    assert_eq!(
        target
            .value("SELECT column_default FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'status'")
            .await
            .as_deref(),
        Some("'new'::text")
    );
    assert_eq!(
        target
            .value("SELECT count(*) FROM orders WHERE status = 'paid'")
            .await,
        env.pair
            .source
            .value("SELECT count(*) FROM orders WHERE status = 'paid'")
            .await
    );
    assert_ne!(
        target
            .value("SELECT count(*) FROM invoices")
            .await
            .as_deref(),
        Some("0")
    );
    assert_eq!(
        target
            .value("SELECT indexdef FROM pg_indexes WHERE indexname = 'orders_status'")
            .await
            .as_deref(),
        Some("CREATE INDEX orders_status ON public.orders USING btree (status)")
    );
    // The new table's foreign key too (trigger mode adds it once the follower caught up).
    assert_eq!(
        target
            .value("SELECT count(*) FROM pg_constraint WHERE conrelid = 'invoices'::regclass AND contype = 'f'")
            .await
            .as_deref(),
        Some("1")
    );

    // A rename is held: named by status, and switchover refuses.
    app.batch_execute(
        "ALTER TABLE orders RENAME COLUMN note TO notes;
         INSERT INTO orders (notes, total) VALUES ('after the rename', 1);",
    )
    .await
    .unwrap();
    let held = wait_status(&env, "the rename held", |s| {
        kinds(s).contains(&"renamed_column".to_string())
    })
    .await;
    assert_eq!(held["schema"][0]["additive"], false, "{held:#}");
    let warnings = held["warnings"].to_string();
    assert!(
        warnings.contains("column public.orders.note was renamed to notes")
            && warnings.contains("cutover db schema apply"),
        "{warnings}"
    );
    let text = env.run(&["db", "status"]);
    assert!(
        text.stdout.contains("HELD")
            && text
                .stdout
                .contains("column public.orders.note was renamed to notes"),
        "{}",
        text.stdout
    );
    // Where the role could create event triggers (a superuser here), the statement as run.
    let show = env.run(&["db", "schema", "show"]);
    assert_eq!(show.code, 0, "{}{}", show.stdout, show.stderr);
    assert!(
        show.stdout
            .contains("HELD      column public.orders.note was renamed to notes")
            && show
                .stdout
                .contains("ALTER TABLE \"public\".\"orders\" RENAME COLUMN \"note\" TO \"notes\"")
            && show
                .stdout
                .contains("ALTER TABLE orders RENAME COLUMN note TO notes"),
        "{}",
        show.stdout
    );
    let proxy = start_proxy(&env, port).await;
    let refused = env.run(&["db", "switchover"]);
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("renamed to notes")
            && refused.stderr.contains("cutover db schema apply"),
        "{}",
        refused.stderr
    );
    // Without a terminal `schema apply` asks for --yes and changes nothing.
    let asked = env.run(&["db", "schema", "apply"]);
    assert_eq!(asked.code, 1, "{}{}", asked.stdout, asked.stderr);
    assert!(asked.stderr.contains("--yes"), "{}", asked.stderr);
    assert!(kinds(&status(&env).await).contains(&"renamed_column".to_string()));

    let applied = env.run(&["db", "schema", "apply", "--yes"]);
    assert_eq!(applied.code, 0, "{}{}", applied.stdout, applied.stderr);
    assert!(
        applied
            .stdout
            .contains("applied  column public.orders.note was renamed to notes"),
        "{}",
        applied.stdout
    );
    wait_status(&env, "the schema equal again", |s| {
        s["schema"].as_array().is_some_and(|a| a.is_empty())
    })
    .await;
    let verify = env.run(&["db", "verify"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    assert_eq!(
        target
            .value("SELECT count(*) FROM orders WHERE notes = 'after the rename'")
            .await
            .as_deref(),
        Some("1")
    );
    let switched = env.run(&["db", "switchover"]);
    assert_eq!(switched.code, 0, "{}{}", switched.stdout, switched.stderr);

    drop(proxy);
    drop(follower);
    let log = std::fs::read_to_string(&follow_log).unwrap();
    env.assert_no_secret(&log);
    assert!(log.contains("schema: applied"), "{log}");
    assert!(log.contains("renamed to notes"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_mode_follows_a_migration_and_holds_a_rename() {
    schema_changes_during_the_sync(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_mode_follows_a_migration_and_holds_a_rename() {
    schema_changes_during_the_sync(true).await;
}
