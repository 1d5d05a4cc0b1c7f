//! `db status` says how far the target is behind and when it will have caught up, in both
//! modes: no ETA while nothing applies (a stopped subscription, no trigger-mode applier),
//! one while the follower works a backlog off (native: positive; trigger mode, whose batches
//! land at once: every sample's ETA is its backlog over what the follower gains in it), and
//! "caught up" after.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::Env;
use cutover_testkit::Pair;

fn status(env: &Env) -> serde_json::Value {
    let run = env.run(&["--json", "db", "status"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_mode_has_no_eta_while_nothing_applies_and_one_while_catching_up() {
    let env = Env::native().await;
    env.pair
        .source
        .exec("CREATE TABLE public.t (id bigserial PRIMARY KEY, v text)")
        .await;
    assert_eq!(env.run(&["db", "sync"]).code, 0);
    // The target applies at a known pace, whatever this machine's speed: 25 ms every 2000
    // rows (the trigger fires for the subscription's writes only), so catching up below takes
    // over ten seconds and the rate is seen (the target confirms in steps, every second or two).
    env.pair
        .target
        .exec(
            "ALTER SUBSCRIPTION cutover_sub DISABLE;
             CREATE FUNCTION public.pace() RETURNS trigger LANGUAGE plpgsql AS
                 $$BEGIN IF NEW.id % 2000 = 0 THEN PERFORM pg_sleep(0.025); END IF; RETURN NEW; END$$;
             CREATE TRIGGER pace BEFORE INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION public.pace();
             ALTER TABLE public.t ENABLE REPLICA TRIGGER pace;",
        )
        .await;
    let writer = env.pair.source.client().await;
    for _ in 0..400 {
        writer
            .batch_execute(
                "INSERT INTO t (v) SELECT repeat('x', 100) FROM generate_series(1, 2000)",
            )
            .await
            .unwrap();
    }
    let stopped = status(&env);
    assert!(
        stopped["slot"]["lag_bytes"].as_i64().unwrap() > 50 << 20,
        "{stopped:#}"
    );
    assert!(stopped["eta_seconds"].is_null(), "not gaining: {stopped:#}");

    env.pair
        .target
        .exec("ALTER SUBSCRIPTION cutover_sub ENABLE")
        .await;
    let mut seen = None;
    let mut samples = vec![];
    for _ in 0..120 {
        let s = status(&env);
        samples.push(format!(
            "lag {} eta {} apply {}",
            s["slot"]["lag_bytes"], s["eta_seconds"], s["apply_rate_bps"]
        ));
        let lag = s["slot"]["lag_bytes"].as_i64().unwrap();
        if lag == 0 {
            assert_eq!(s["eta_seconds"], 0.0, "{s:#}");
            let text = env.run(&["db", "status"]);
            assert!(text.stdout.contains("ETA caught up"), "{}", text.stdout);
            break;
        }
        if let Some(eta) = s["eta_seconds"].as_f64() {
            assert!(
                eta > 0.0 && s["apply_rate_bps"].as_f64().unwrap() > 0.0,
                "{s:#}"
            );
            seen.get_or_insert(eta);
        }
    }
    assert!(
        seen.is_some(),
        "an ETA while the target caught up: {samples:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_mode_reports_rates_an_eta_and_each_table() {
    let env = Env::from_pair(Pair::heroku_like().await);
    let plan = std::fs::read_to_string(env.plan()).unwrap();
    std::fs::write(
        env.plan(),
        plan.replace("mode = \"native\"", "mode = \"trigger\""),
    )
    .unwrap();
    env.pair
        .source
        .exec(
            "CREATE TABLE public.t (id bigserial PRIMARY KEY, v text);
             CREATE TABLE public.quiet (id int PRIMARY KEY);",
        )
        .await;
    assert_eq!(env.run(&["db", "sync", "--no-follow"]).code, 0);

    // Changes captured and nobody applying them: a backlog, no ETA, and a warning.
    let writer = env.pair.source.client().await;
    for _ in 0..100 {
        writer
            .batch_execute("INSERT INTO t (v) SELECT 'x' FROM generate_series(1, 1000)")
            .await
            .unwrap();
    }
    let stopped = status(&env);
    assert_eq!(stopped["backlog"]["changes"], 100_000, "{stopped:#}");
    assert!(stopped["eta_seconds"].is_null(), "{stopped:#}");
    assert_eq!(stopped["applier_running"], false);
    assert!(stopped["warnings"]
        .to_string()
        .contains("start `cutover db follow`"));
    let tables = stopped["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 2);
    assert_eq!(tables[1]["table"], "public.t");
    assert_eq!(tables[1]["backlog"], 100_000);
    assert_eq!(tables[1]["state"], "following");
    assert_eq!(tables[0]["backlog"], 0);

    // An applier and the application writing on: the follower works the backlog off.
    let follow = common::Running::new(
        env.command(&["db", "follow"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let load = tokio::spawn(async move {
        for _ in 0..400 {
            writer
                .batch_execute("INSERT INTO t (v) SELECT 'y' FROM generate_series(1, 20)")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    // Every sample's ETA is the backlog over what the follower gains in it (none while not
    // gaining, 0 once caught up), and the follower is seen applying.
    let mut applying = false;
    for _ in 0..60 {
        let s = status(&env);
        assert_eq!(s["applier_running"], true, "{s:#}");
        let (backlog, apply, capture) = (
            s["backlog"]["changes"].as_i64().unwrap() as f64,
            s["apply_rate"].as_f64().unwrap(),
            s["capture_rate"].as_f64().unwrap(),
        );
        let expected = cutover_pg::status::eta(backlog, Some(apply), capture);
        match (s["eta_seconds"].as_f64(), expected) {
            (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-6 * b.max(1.0), "{s:#}"),
            (a, b) => assert_eq!(a, b, "{s:#}"),
        }
        applying |= apply > 0.0;
        if load.is_finished() && backlog == 0.0 {
            assert_eq!(s["eta_seconds"], 0.0, "{s:#}");
            let text = env.run(&["db", "status"]);
            assert!(text.stdout.contains("ETA caught up"), "{}", text.stdout);
            assert!(text.stdout.contains("public.t"), "{}", text.stdout);
            break;
        }
    }
    load.await.unwrap();
    assert!(applying, "the follower was seen applying");
    drop(follow);
}
