//! Bad input gets one clear line that says how to fix it, and changes nothing.

mod common;

use common::{footprint, Env};
use cutover_core::Secret;

const TABLE: &str = "CREATE TABLE public.items (id int PRIMARY KEY, name text); INSERT INTO public.items SELECT g, 'n' || g FROM generate_series(1, 10) g;";

fn one_error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(lines.len(), 1, "expected exactly one error line:\n{stderr}");
    lines[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unreachable_host_change_nothing() {
    let mut env = Env::native().await;
    env.pair.source.exec(TABLE).await;
    let good_target = env.pair.target.url();
    let wrong = env
        .pair
        .source
        .url()
        .with_password(Some(Secret::new("wrong-password-123")));
    env.set_urls(&wrong, &good_target);
    env.secrets.push("wrong-password-123".into());
    for args in [
        &["db", "sync"][..],
        &["check"][..],
        &["db", "status"][..],
        &["db", "verify"][..],
        &["db", "cleanup"][..],
    ] {
        let r = env.run(args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert_eq!(
            one_error_line(&r.stderr),
            format!(
                "error: cannot connect to the source database (127.0.0.1:{}/{}): password authentication failed for user \"postgres\"; check the password in source.url",
                env.pair.source.cluster.port(),
                env.pair.source.db
            ),
            "{args:?}"
        );
    }

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = cutover_core::ConnString::parse(&format!(
        "postgres://app:pw-unreachable@127.0.0.1:{closed}/app?sslmode=disable"
    ))
    .unwrap();
    let source = env.pair.source.url();
    env.set_urls(&source, &unreachable);
    let r = env.run(&["db", "sync"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        one_error_line(&r.stderr),
        format!("error: cannot connect to the target database (127.0.0.1:{closed}/app): connection refused; check that PostgreSQL is running and listening on 127.0.0.1:{closed}")
    );
    assert_eq!(
        footprint(&env.pair).await,
        ("0/0".to_string(), "0/0".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_replication_privilege_is_refused_before_anything_is_made() {
    let mut env = Env::native().await;
    let app = env
        .pair
        .source
        .role("app", "NOSUPERUSER NOREPLICATION")
        .await;
    env.pair
        .source
        .exec("GRANT CREATE ON SCHEMA public TO app")
        .await;
    let app_client = cutover_pg::connect(&app, cutover_pg::Side::Source)
        .await
        .unwrap();
    app_client.batch_execute(TABLE).await.unwrap();
    let target = env.pair.target.url();
    env.set_urls(&app, &target);

    let r = env.run(&["db", "sync"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert!(
        errors
            .iter()
            .any(|l| l.contains("app") && l.contains("REPLICATION")),
        "the error names the role and the privilege:\n{}",
        r.stderr
    );
    assert_eq!(
        footprint(&env.pair).await,
        ("0/0".to_string(), "0/0".to_string())
    );

    let check = env.run(&["check", "--json"]);
    assert_eq!(check.code, 1);
    let report: serde_json::Value = serde_json::from_str(&check.stdout).unwrap();
    let codes: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error")
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["replication-privilege"], "{}", check.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_plans_are_refused_with_every_problem_and_its_position() {
    let env = Env::native().await;
    std::fs::write(
        env.plan(),
        "[source]\nurl = \"${SRC_URL}\"\n[target]\nurl = \"${NOT_SET_ANYWHERE}\"\n[sync]\nmode = \"magic\"\nname = \"Has Spaces\"\n",
    )
    .unwrap();
    let r = env.run(&["db", "sync"]);
    assert_eq!(r.code, 1);
    let plan = env.plan().display().to_string();
    let errors: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        errors,
        [
            format!("error: {plan}:4:7: target.url: environment variable NOT_SET_ANYWHERE is not set; export it before running cutover"),
            format!("error: {plan}:6:8: sync.mode: \"magic\" is not a mode; use \"native\" or \"trigger\""),
            format!("error: {plan}:7:8: sync.name: \"Has Spaces\" is not usable as an object name prefix; use lower-case letters, digits and _ (at most 40)"),
        ]
    );

    std::fs::write(env.plan(), "[source]\nurl = \"${SRC_URL}\"\n[target]\nurl = \"${DST_URL}\"\n[sync]\nmodee = \"native\"\n").unwrap();
    let r = env.run(&["check"]);
    assert_eq!(r.code, 1);
    assert_eq!(one_error_line(&r.stderr), format!("error: {plan}:6:1: unknown field `modee`, expected one of `mode`, `schemas`, `exclude_tables`, `whole_row_tables`, `copy_schema`, `name`, `ready_timeout`, `copy`, `copy_jobs`, `schema_changes`"));

    std::fs::write(
        env.plan(),
        "[source]\nurl = \"postgres://app:inline-secret@db/app\"\n[target]\nurl = \"${DST_URL}\"\n",
    )
    .unwrap();
    let r = env.run(&["db", "sync"]);
    assert_eq!(r.code, 1);
    assert!(!r.stderr.contains("inline-secret"));
    assert!(
        one_error_line(&r.stderr).contains("source.url: holds a password inline"),
        "{}",
        r.stderr
    );

    std::fs::remove_file(env.plan()).unwrap();
    let r = env.run(&["check"]);
    assert_eq!(r.code, 1);
    assert!(
        one_error_line(&r.stderr).ends_with("run `cutover init` to write one"),
        "{}",
        r.stderr
    );

    let r = env.run(&["db", "frobnicate"]);
    assert_eq!(r.code, 64);
    assert_eq!(
        footprint(&env.pair).await,
        ("0/0".to_string(), "0/0".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_writes_references_never_passwords() {
    let env = Env::native().await;
    env.pair.source.exec(TABLE).await;
    std::fs::remove_file(env.plan()).unwrap();
    let src = env.vars[0].1.clone();
    let dst = env.vars[1].1.clone();
    // Given as the values of variables: the plan refers to the variables.
    let r = env.run(&["init", "--source-url", &src, "--target-url", &dst]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(env.plan()).unwrap();
    assert!(text.contains("url = \"${SRC_URL}\""), "{text}");
    assert!(text.contains("url = \"${DST_URL}\""), "{text}");
    env.assert_no_secret(&text);
    // The plan it wrote works.
    let check = env.run(&["check"]);
    assert!(
        check.code == 0 || check.code == 2,
        "{}{}",
        check.stdout,
        check.stderr
    );
    // It does not overwrite without --force.
    let again = env.run(&["init", "--source-url", &src, "--target-url", &dst]);
    assert_eq!(again.code, 1);
    assert!(one_error_line(&again.stderr).ends_with("already exists; pass --force to overwrite it"));
    // A URL with a password that no variable holds is refused with the way to do it.
    std::fs::remove_file(env.plan()).unwrap();
    let r = env.run(&[
        "init",
        "--source-url",
        "postgres://u:literal-pw@h/d",
        "--target-url",
        &dst,
    ]);
    assert_eq!(r.code, 1);
    assert!(!r.stderr.contains("literal-pw"));
    assert!(
        one_error_line(&r.stderr).contains("export it first"),
        "{}",
        r.stderr
    );
    assert!(!env.plan().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_the_target_cannot_reach_is_refused_before_anything_is_made() {
    let mut env = Env::native().await;
    env.pair.source.exec(TABLE).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let plan = std::fs::read_to_string(env.plan()).unwrap();
    let plan = plan.replace(
        "# replication_url = \"${SOURCE_REPLICATION_URL}\"",
        "replication_url = \"${REPL_URL}\"",
    );
    std::fs::write(env.plan(), plan).unwrap();
    env.vars.push((
        "REPL_URL".into(),
        format!("postgres://postgres:repl-secret-9@127.0.0.1:{closed}/x?sslmode=disable"),
    ));
    env.secrets.push("repl-secret-9".into());
    let r = env.run(&["db", "sync"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let line = one_error_line(&r.stderr);
    assert!(
        line.starts_with("error: the target server cannot connect to the source for replication ("),
        "{line}"
    );
    assert!(line.contains(&closed.to_string()), "{line}");
    assert!(line.ends_with("set source.replication_url to an address, user and password the target server can use (the role needs REPLICATION)"), "{line}");
    assert_eq!(
        footprint(&env.pair).await,
        ("0/0".to_string(), "0/0".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_without_replica_identity_is_refused() {
    let env = Env::native().await;
    env.pair
        .source
        .exec(
            "CREATE TABLE public.m (at date NOT NULL, v int) PARTITION BY RANGE (at);
             CREATE TABLE public.m_1 PARTITION OF public.m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
             ALTER TABLE public.m REPLICA IDENTITY FULL;",
        )
        .await;
    let r = env.run(&["db", "sync"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        one_error_line(&r.stderr),
        "error: partition public.m_1 has no primary key and no usable replica identity, so publishing it would make its UPDATEs and DELETEs fail on the source; \
         add a primary key to the partitioned table, or run ALTER TABLE public.m_1 REPLICA IDENTITY FULL (each partition needs its own)"
    );
    assert_eq!(
        footprint(&env.pair).await,
        ("0/0".to_string(), "0/0".to_string())
    );
    let check = env.run(&["check", "--json"]);
    assert_eq!(check.code, 1);
    let report: serde_json::Value = serde_json::from_str(&check.stdout).unwrap();
    let errors: Vec<(&str, &str)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error")
        .map(|f| (f["code"].as_str().unwrap(), f["subject"].as_str().unwrap()))
        .collect();
    assert_eq!(errors, [("partition-no-replica-identity", "public.m_1")]);
    env.pair
        .source
        .exec("ALTER TABLE public.m_1 REPLICA IDENTITY FULL")
        .await;
    let r = env.run(&["db", "sync", "--dry-run"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}
