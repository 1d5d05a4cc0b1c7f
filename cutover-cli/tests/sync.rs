//! The whole native path through the binary: check, sync under concurrent writes, status,
//! verify (equal, then one changed row found), cleanup twice.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::Env;

const SCHEMA: &str = r#"
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE SCHEMA billing;
CREATE SCHEMA "Mixed Case";
CREATE TYPE billing.state AS ENUM ('open', 'paid', 'void');
CREATE TABLE billing.invoices (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    state billing.state NOT NULL DEFAULT 'open',
    doc jsonb,
    pdf bytea,
    lines int[] NOT NULL DEFAULT '{}',
    total numeric(12,2)
);
CREATE TABLE billing.line_items (
    invoice_id bigint NOT NULL,
    n int NOT NULL,
    sku text NOT NULL,
    PRIMARY KEY (invoice_id, n)
);
CREATE TABLE "Mixed Case"."Users" (
    "Id" uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    "Email" text UNIQUE NOT NULL,
    total_x2 numeric GENERATED ALWAYS AS (length("Email") * 2) STORED
);
CREATE TABLE public.codes (code text PRIMARY KEY, label text);
CREATE TABLE public.empty_one (id int PRIMARY KEY);
CREATE TABLE public.audit_log (at timestamptz NOT NULL DEFAULT now(), message text);
CREATE TABLE public.measurements (at date NOT NULL, sensor int NOT NULL, value float8, PRIMARY KEY (at, sensor))
    PARTITION BY RANGE (at);
CREATE TABLE public.measurements_a PARTITION OF public.measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE public.measurements_b PARTITION OF public.measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE INDEX invoices_state ON billing.invoices (state);
ALTER TABLE billing.line_items ADD CONSTRAINT line_items_invoice FOREIGN KEY (invoice_id) REFERENCES billing.invoices (id);
INSERT INTO billing.invoices (state, doc, pdf, lines, total)
    SELECT (ARRAY['open','paid','void'])[1 + g % 3]::billing.state, jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g)),
           decode(md5(g::text), 'hex'), ARRAY[g, g + 1], g * 1.5
      FROM generate_series(1, 3000) g;
INSERT INTO billing.line_items SELECT i, n, 'sku-' || (i * n) FROM generate_series(1, 3000) i, generate_series(1, 3) n;
INSERT INTO "Mixed Case"."Users" ("Email") SELECT 'user' || g || '@example.com' FROM generate_series(1, 2000) g;
INSERT INTO public.codes SELECT 'c' || g, 'label ' || g FROM generate_series(1, 500) g;
INSERT INTO public.audit_log (message) SELECT 'boot ' || g FROM generate_series(1, 100) g;
INSERT INTO public.measurements SELECT date '2024-06-01' + (g % 400), g, g * 0.5 FROM generate_series(1, 4000) g;
CREATE MATERIALIZED VIEW billing.invoice_totals AS
    SELECT state, count(*) AS n, sum(total) AS total FROM billing.invoices GROUP BY state;
CREATE MATERIALIZED VIEW billing.void_count AS SELECT n FROM billing.invoice_totals WHERE state = 'void';
CREATE MATERIALIZED VIEW public.never_filled AS SELECT 1 AS one WITH NO DATA;
SELECT lo_from_bytea(777001, 'a scanned invoice');
"#;

/// Writes on the source until told to stop: inserts, updates of hot rows, deletes.
async fn write_load(pg: tokio_postgres::Client, stop: Arc<AtomicBool>) -> u64 {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let sql = format!(
            "BEGIN;
             INSERT INTO billing.invoices (state, doc, total) VALUES ('open', '{{\"load\": {n}}}', {n});
             UPDATE billing.invoices SET total = total + 1 WHERE id = {hot};
             UPDATE public.codes SET label = 'hot {n}' WHERE code = 'c1';
             DELETE FROM billing.line_items WHERE invoice_id = {del} AND n = 3;
             INSERT INTO \"Mixed Case\".\"Users\" (\"Email\") VALUES ('load{n}@example.com');
             INSERT INTO public.measurements VALUES (date '2025-02-01' + ({n} % 300), 100000 + {n}, {n});
             COMMIT;",
            hot = 1 + n % 5,
            del = 1 + n % 3000,
        );
        pg.batch_execute(&sql).await.expect("load transaction");
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_under_writes_then_verify_finds_one_changed_row() {
    let env = Env::native().await;
    env.pair.source.exec(SCHEMA).await;

    // A table with no primary key is refused, with both fixes, and nothing is created.
    let check = env.run(&["check"]);
    assert_eq!(check.code, 1, "{}{}", check.stdout, check.stderr);
    assert!(
        check.stdout.contains("public.audit_log"),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains("REPLICA IDENTITY FULL"),
        "{}",
        check.stdout
    );
    let refused = env.run(&["db", "sync"]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("audit_log"), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("REPLICA IDENTITY FULL"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        common::footprint(&env.pair).await,
        ("0/0".to_string(), "0/0".to_string())
    );

    env.pair
        .source
        .exec("ALTER TABLE public.audit_log REPLICA IDENTITY FULL")
        .await;
    let check = env.run(&["check"]);
    assert_eq!(check.code, 2, "warnings only now: {}", check.stdout);
    let dry = env.run(&["db", "sync", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    assert!(
        dry.stdout.contains("nothing was changed (dry run)"),
        "{}",
        dry.stdout
    );
    assert_eq!(
        common::footprint(&env.pair).await,
        ("0/0".to_string(), "0/0".to_string())
    );

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(write_load(env.pair.source.client().await, stop.clone()));
    let sync = tokio::task::spawn_blocking({
        // -vvv (every library at debug level): the log lines are checked for passwords too.
        let cmd = env.command(&["-vvv", "db", "sync"]);
        move || {
            common::to_run({
                let mut c = cmd;
                c.output().unwrap()
            })
        }
    })
    .await
    .unwrap();
    env.assert_no_secret(&sync.stdout);
    env.assert_no_secret(&sync.stderr);
    assert_eq!(sync.code, 0, "{}{}", sync.stdout, sync.stderr);
    assert!(sync.stdout.contains("synced: 7 tables"), "{}", sync.stdout);

    // Ready for production: every table with rows has planner statistics on the target, and
    // the materialized views populated on the source are populated there, in dependency order
    // (void_count reads invoice_totals); the one never populated stays so.
    for (schema, table) in [
        ("billing", "invoices"),
        ("billing", "line_items"),
        ("Mixed Case", "Users"),
        ("public", "codes"),
        ("public", "audit_log"),
        ("public", "measurements"),
    ] {
        let stats = env
            .pair
            .target
            .value(&format!(
                "SELECT count(*) FROM pg_stats WHERE schemaname = '{schema}' AND tablename = '{table}'"
            ))
            .await;
        assert_ne!(
            stats.as_deref(),
            Some("0"),
            "statistics for {schema}.{table}"
        );
    }
    assert_eq!(
        env.pair
            .target
            .value("SELECT n FROM billing.void_count")
            .await
            .as_deref(),
        Some("1000")
    );
    // Large objects are not replicated: copied with the data.
    assert_eq!(
        env.pair
            .target
            .value("SELECT convert_from(lo_get(777001), 'UTF8')")
            .await
            .as_deref(),
        Some("a scanned invoice")
    );
    assert_eq!(
        env.pair
            .target
            .value("SELECT relispopulated::text FROM pg_class WHERE relname = 'never_filled'")
            .await
            .as_deref(),
        Some("false")
    );

    let status = env.run(&["db", "status", "--json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let s: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(s["subscription"]["enabled"], true);
    assert!(s["slot"]["lag_bytes"].as_i64().is_some());
    assert_eq!(s["tables"].as_array().unwrap().len(), 7);
    assert!(s["tables"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["state"] == "ready"));

    stop.store(true, Ordering::Relaxed);
    let writes = load.await.unwrap();
    assert!(writes > 0);

    let verify = env.run(&["db", "verify"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    assert!(
        verify.stdout.contains("all 7 tables equal"),
        "{}",
        verify.stdout
    );
    assert_eq!(
        env.pair
            .source
            .value("SELECT count(*) FROM billing.invoices")
            .await,
        env.pair
            .target
            .value("SELECT count(*) FROM billing.invoices")
            .await
    );

    // One row changed on the target only: verify names its table, range and key.
    env.pair
        .target
        .exec("UPDATE public.codes SET label = 'tampered' WHERE code = 'c250'")
        .await;
    let verify = env.run(&["db", "verify", "--json"]);
    assert_eq!(verify.code, 1, "{}", verify.stderr);
    let r: serde_json::Value = serde_json::from_str(&verify.stdout).unwrap();
    assert_eq!(r["equal"], false);
    let differ: Vec<&serde_json::Value> = r["tables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["equal"] == false)
        .collect();
    assert_eq!(differ.len(), 1);
    assert_eq!(differ[0]["table"], "public.codes");
    let ranges = differ[0]["mismatches"].as_array().unwrap();
    assert_eq!(ranges.len(), 1);
    assert_eq!(ranges[0]["first_keys"][0]["key"][0], "c250");
    assert_eq!(ranges[0]["first_keys"][0]["kind"], "different");

    // --dry-run lists exactly what cleanup then removes, and removes nothing itself.
    let dry = env.run(&["db", "cleanup", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(
        dry.stdout.lines().collect::<Vec<_>>(),
        [
            "would remove subscription cutover_sub on the target",
            "would remove replication slot cutover_slot on the source",
            "would remove publication cutover_pub on the source",
            "would remove event triggers cutover_ddl, cutover_ddl_drop and cutover.ddl_log on the source",
            "would remove copy queue cutover.copy_job and cutover.copy_part on the target",
        ]
    );
    let cleanup = env.run(&["db", "cleanup"]);
    assert_eq!(cleanup.code, 0, "{}", cleanup.stderr);
    assert!(
        cleanup
            .stdout
            .contains("removed subscription cutover_sub on the target"),
        "{}",
        cleanup.stdout
    );
    assert!(
        cleanup
            .stdout
            .contains("removed replication slot cutover_slot on the source"),
        "{}",
        cleanup.stdout
    );
    assert!(
        cleanup
            .stdout
            .contains("removed publication cutover_pub on the source"),
        "{}",
        cleanup.stdout
    );
    let again = env.run(&["db", "cleanup"]);
    assert_eq!(again.code, 0);
    assert!(
        again.stdout.contains("nothing to remove"),
        "{}",
        again.stdout
    );
    let (source, target) = common::footprint(&env.pair).await;
    assert_eq!(source, "0/0");
    assert!(target.starts_with("0/"), "{target}");

    let journal = env.run(&["status"]);
    assert_eq!(journal.code, 0);
    assert!(
        journal.stdout.contains("db sync · ok"),
        "{}",
        journal.stdout
    );
    env.assert_journal_clean();
}
