//! `cutover check`'s rules against real clusters (the rules on fabricated facts, for what one
//! machine cannot set up, are in preflight_rules.rs).

use std::collections::BTreeMap;
use std::path::Path;

use cutover_core::{ConnString, Plan};
use cutover_pg::preflight::{self, Report, Severity};
use cutover_testkit::Pair;

// ---------------------------------------------------------------------------------------
// Helpers.

/// The URL with its password, as a user would export it (Display redacts the password).
fn url_text(cs: &ConnString) -> String {
    format!(
        "postgres://{}:{}@{}:{}/{}?sslmode=disable",
        cs.user,
        cs.password().expect("a password").expose(),
        cs.host,
        cs.port,
        cs.dbname
    )
}

fn plan(pair: &Pair, source: &ConnString, target: &ConnString, mode: &str) -> Plan {
    let text = pair
        .plan_text("SRC_URL", "DST_URL")
        .replace("mode = \"native\"", &format!("mode = \"{mode}\""));
    let env: BTreeMap<String, String> = [
        ("SRC_URL".to_string(), url_text(source)),
        ("DST_URL".to_string(), url_text(target)),
    ]
    .into();
    cutover_core::plan::parse(&text, Path::new("cutover.toml"), &env).expect("a valid plan")
}

async fn check(pair: &Pair, mode: &str) -> Report {
    let plan = plan(pair, &pair.source.url(), &pair.target.url(), mode);
    preflight::check(&plan).await.expect("check runs")
}

/// (code, subject) of the findings of one severity, in report order.
mod findings;

use findings::{of, one, pair_of, texts};

// ---------------------------------------------------------------------------------------
// Against real clusters.

#[tokio::test]
async fn a_clean_pair_with_a_keyed_table_passes() {
    let pair = Pair::native().await;
    pair.source
        .exec("CREATE TABLE public.orders (id bigserial PRIMARY KEY, total int); INSERT INTO orders (total) VALUES (1), (2);")
        .await;
    let report = check(&pair, "native").await;
    assert_eq!(report.exit_code(), 0, "{:#?}", report.findings);
    assert!(
        report.findings.iter().all(|f| f.severity == Severity::Info),
        "{:#?}",
        report.findings
    );
    assert_eq!(report.tables.len(), 1);
    assert_eq!(report.tables[0].primary_key, ["id"]);
    assert_eq!(
        one(&report.findings, "sequences").message,
        "1 sequences (1 owned by a column, 0 not owned): their values are not replicated; cutover copies every one at switchover"
    );
    assert_eq!(
        of(&report.findings, Severity::Info)
            .iter()
            .filter(|(c, _)| *c == "size")
            .count(),
        2
    );
    let json = serde_json::to_string(&report).unwrap();
    assert!(
        !json.contains(pair.source.cluster.password().expose()),
        "no password in --json"
    );
}

#[tokio::test]
async fn a_partitioned_table_is_counted_once_and_the_slot_risk_reads_the_disk() {
    let pair = Pair::native().await;
    pair.source
        .exec(
            "CREATE TABLE public.readings (at date NOT NULL, n int NOT NULL, PRIMARY KEY (at, n)) PARTITION BY RANGE (at);
             CREATE TABLE public.readings_a PARTITION OF public.readings FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
             CREATE TABLE public.readings_b PARTITION OF public.readings FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')
                 PARTITION BY RANGE (at);
             CREATE TABLE public.readings_b1 PARTITION OF public.readings_b FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
             INSERT INTO public.readings SELECT date '2024-06-01' + (g % 400), g FROM generate_series(1, 6000) g;
             ANALYZE public.readings;",
        )
        .await;
    let report = check(&pair, "native").await;
    assert_eq!(report.tables.len(), 1);
    // PostgreSQL 14 on keeps the total on the root and on readings_b as well as on the leaves.
    assert_eq!(report.tables[0].rows_estimate, 6000);
    // The test cluster runs here and its role may read data_directory: the free disk is known.
    let risk = one(&report.findings, "slot-wal-unlimited");
    assert_eq!(risk.severity, Severity::Info);
    assert!(
        risk.message
            .contains("free under the source's data directory"),
        "{}",
        risk.message
    );
}

#[tokio::test]
async fn a_table_without_primary_key_is_an_error_until_replica_identity_full() {
    let pair = Pair::native().await;
    pair.source
        .exec("CREATE TABLE public.events (at timestamptz, what text); INSERT INTO events VALUES (now(), 'x');")
        .await;
    let report = check(&pair, "native").await;
    assert_eq!(
        of(&report.findings, Severity::Error),
        [pair_of("no-replica-identity", "public.events")]
    );
    assert_eq!(report.exit_code(), 1);
    let fix = one(&report.findings, "no-replica-identity")
        .fix
        .clone()
        .unwrap();
    assert!(
        fix.contains("ALTER TABLE \"public\".\"events\" REPLICA IDENTITY FULL;"),
        "{fix}"
    );
    assert!(fix.contains("ADD PRIMARY KEY"), "{fix}");
    assert!(
        fix.contains("exclude_tables = [\"public.events\"]"),
        "{fix}"
    );

    pair.source
        .exec("ALTER TABLE public.events REPLICA IDENTITY FULL")
        .await;
    let report = check(&pair, "native").await;
    assert_eq!(report.errors().count(), 0, "{:#?}", report.findings);
    assert_eq!(
        of(&report.findings, Severity::Warning),
        [pair_of("replica-identity-full", "public.events")]
    );
    assert_eq!(report.exit_code(), 2);
}

#[tokio::test]
async fn a_heroku_like_source_points_to_trigger_mode_and_never_to_pgoptions() {
    let pair = Pair::heroku_like().await;
    let app = pair.source.role("app", "NOSUPERUSER NOREPLICATION").await;
    pair.source
        .exec(
            "CREATE TABLE public.orders (id bigserial PRIMARY KEY, total int); ALTER TABLE public.orders OWNER TO app;
             CREATE SCHEMA heroku_ext;",
        )
        .await;
    let native = plan(&pair, &app, &pair.target.url(), "native");
    let report = preflight::check(&native).await.unwrap();
    let mut errors = of(&report.findings, Severity::Error);
    errors.sort();
    assert_eq!(
        errors,
        [
            pair_of("replication-privilege", "source"),
            pair_of("wal-level", "source")
        ]
    );
    assert_eq!(report.source.wal_level, "replica");
    assert!(!report.source.superuser && !report.source.replication);
    for code in ["wal-level", "replication-privilege"] {
        let fix = one(&report.findings, code).fix.clone().unwrap();
        assert!(fix.contains("mode = \"trigger\""), "{code}: {fix}");
    }
    let wal = one(&report.findings, "wal-level").fix.clone().unwrap();
    assert!(
        wal.contains("ALTER SYSTEM SET wal_level = logical") && wal.contains("restart"),
        "{wal}"
    );
    assert!(wal.contains("rds.logical_replication = 1"), "{wal}");
    let replication = one(&report.findings, "replication-privilege")
        .fix
        .clone()
        .unwrap();
    assert!(
        replication.contains("ALTER ROLE \"app\" REPLICATION"),
        "{replication}"
    );
    assert!(
        !texts(&report.findings).contains("PGOPTIONS"),
        "{}",
        texts(&report.findings)
    );

    // Known as Heroku by its extension schema.
    assert_eq!(one(&report.findings, "heroku").severity, Severity::Warning);

    // Trigger mode needs neither; what is left is Heroku's credential rotation.
    let trigger = plan(&pair, &app, &pair.target.url(), "trigger");
    let report = preflight::check(&trigger).await.unwrap();
    assert_eq!(report.exit_code(), 2, "{:#?}", report.findings);
    assert_eq!(
        of(&report.findings, Severity::Warning),
        [pair_of("heroku-credentials", "source")]
    );
    assert_eq!(one(&report.findings, "heroku").severity, Severity::Info);
    assert_eq!(one(&report.findings, "wal-level").severity, Severity::Info);
    assert!(!texts(&report.findings).contains("PGOPTIONS"));
}

#[tokio::test]
async fn an_unlogged_table_is_an_error_in_native_mode() {
    let pair = Pair::native().await;
    pair.source
        .exec("CREATE UNLOGGED TABLE public.cache (k text PRIMARY KEY, v text)")
        .await;
    let report = check(&pair, "native").await;
    assert_eq!(
        of(&report.findings, Severity::Error),
        [pair_of("unlogged-table", "public.cache")]
    );
    let fix = one(&report.findings, "unlogged-table").fix.clone().unwrap();
    assert!(
        fix.contains("ALTER TABLE \"public\".\"cache\" SET LOGGED;"),
        "{fix}"
    );
    assert!(report.tables[0].unlogged);
}

#[tokio::test]
async fn a_target_that_holds_the_tables_is_refused_and_large_objects_are_flagged() {
    let pair = Pair::native().await;
    let ddl = "CREATE TABLE public.full_one (id int PRIMARY KEY); CREATE TABLE public.empty_one (id int PRIMARY KEY);";
    pair.source.exec(ddl).await;
    pair.source
        .exec("SELECT lo_create(0); SELECT lo_create(0);")
        .await;
    pair.target.exec(ddl).await;
    pair.target
        .exec("INSERT INTO public.full_one VALUES (1)")
        .await;
    let report = check(&pair, "native").await;
    assert_eq!(
        of(&report.findings, Severity::Error),
        [pair_of("target-not-empty", "public.full_one")]
    );
    assert_eq!(
        of(&report.findings, Severity::Warning),
        [pair_of("target-table-exists", "public.empty_one")]
    );
    assert_eq!(
        one(&report.findings, "large-objects").severity,
        Severity::Info
    );
    assert!(one(&report.findings, "target-not-empty")
        .message
        .starts_with("target is not empty"));
    assert!(one(&report.findings, "target-table-exists")
        .fix
        .as_deref()
        .unwrap()
        .contains("copy_schema = false"));
    assert!(one(&report.findings, "large-objects")
        .message
        .contains("2 large objects"));
    assert_eq!(report.source.large_objects, 2);
}

#[tokio::test]
async fn a_previous_sync_is_reported_and_its_rows_are_not_an_error() {
    let pair = Pair::native().await;
    pair.source
        .exec("CREATE TABLE public.t (id int PRIMARY KEY); CREATE PUBLICATION cutover_pub FOR TABLE public.t;")
        .await;
    pair.target
        .exec("CREATE TABLE public.t (id int PRIMARY KEY); INSERT INTO public.t VALUES (1);")
        .await;
    pair.target
        .exec(
            "CREATE SUBSCRIPTION cutover_sub CONNECTION 'host=127.0.0.1 port=1 dbname=x' PUBLICATION cutover_pub \
             WITH (connect = false)",
        )
        .await;
    let report = check(&pair, "native").await;
    assert_eq!(report.exit_code(), 0, "{:#?}", report.findings);
    let previous = one(&report.findings, "previous-sync");
    assert_eq!(previous.severity, Severity::Info);
    assert!(
        previous
            .message
            .contains("publication \"cutover_pub\" on the source"),
        "{}",
        previous.message
    );
    assert!(
        previous
            .message
            .contains("subscription \"cutover_sub\" on the target"),
        "{}",
        previous.message
    );
    assert_eq!(
        one(&report.findings, "target-not-empty").severity,
        Severity::Info
    );
}

#[tokio::test]
async fn tables_the_source_role_does_not_own_and_a_target_role_that_cannot_subscribe() {
    let pair = Pair::native().await;
    let app = pair.source.role("app", "NOSUPERUSER REPLICATION").await;
    let loader = pair.target.role("loader", "NOSUPERUSER").await;
    pair.source
        .exec(
            "CREATE ROLE owners NOLOGIN; GRANT owners TO app;
             CREATE TABLE public.mine (id int PRIMARY KEY); ALTER TABLE public.mine OWNER TO app;
             CREATE TABLE public.shared (id int PRIMARY KEY); ALTER TABLE public.shared OWNER TO owners;
             CREATE TABLE public.audit (id int PRIMARY KEY);
             CREATE TABLE public.billing (id int PRIMARY KEY);",
        )
        .await;
    let report = preflight::check(&plan(&pair, &app, &loader, "native"))
        .await
        .unwrap();
    assert_eq!(
        of(&report.findings, Severity::Error),
        [
            pair_of("table-owner", "public.audit"),
            pair_of("table-owner", "public.billing"),
            pair_of("subscription-privilege", "target")
        ]
    );
    let audit = report
        .findings
        .iter()
        .find(|f| f.subject == "public.audit")
        .unwrap();
    assert_eq!(
        audit.message,
        "public.audit is owned by \"postgres\", not by the source role \"app\"; CREATE PUBLICATION ... FOR TABLE needs its owner"
    );
    assert!(audit
        .fix
        .as_deref()
        .unwrap()
        .contains("ALTER TABLE \"public\".\"audit\" OWNER TO \"app\";"));
    let sub = one(&report.findings, "subscription-privilege");
    assert!(sub.message.contains("role \"loader\""), "{}", sub.message);
}
