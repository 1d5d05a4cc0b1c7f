//! `db verify` against real clusters: the same schema and data written on both sides by
//! hand, then one thing changed on the target, and the report must name exactly that.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cutover_core::plan::SyncSettings;
use cutover_pg::inspect::Table;
use cutover_pg::verify::{
    verify, CatchUp, KeyDiff, TableReport, VerifyEvent, VerifyOptions, VerifyReport,
};
use cutover_pg::{literal, PgError, Side};
use cutover_testkit::{Pair, Pg};

/// Every kind of key and column the verifier must handle, in two schemas.
const FIXTURE: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer text NOT NULL, amount numeric(10,2), tags text[], doc jsonb, blob bytea,
    status mood, placed timestamptz, ratio float8);
INSERT INTO orders (customer, amount, tags, doc, blob, status, placed, ratio)
SELECT 'c' || (i % 17), i * 1.25, ARRAY['t' || i, 'x'],
       jsonb_build_object('i', i, 'nested', jsonb_build_array(i, 'a', null)),
       decode(md5(i::text), 'hex'), (ARRAY['sad', 'ok', 'happy'])[1 + i % 3]::mood,
       timestamptz '2024-01-01 00:00:00+00' + i * interval '1 hour', 1.0 / i
  FROM generate_series(1, 300) i;

CREATE TABLE line_items (order_id bigint, line int, sku text NOT NULL, qty int NOT NULL,
                         PRIMARY KEY (order_id, line));
INSERT INTO line_items SELECT o, l, 'sku-' || (o * l % 41), l
  FROM generate_series(1, 100) o, generate_series(1, 3) l;

CREATE SCHEMA "Sales";
CREATE TABLE "Sales"."Customer Accounts" ("AccountId" uuid PRIMARY KEY, "Display Name" text, "Balance" numeric);
INSERT INTO "Sales"."Customer Accounts" SELECT md5('acct' || i)::uuid, 'Name ' || i, i * 10
  FROM generate_series(1, 120) i;
CREATE TABLE "Sales".codes (code text PRIMARY KEY, label text);
INSERT INTO "Sales".codes
SELECT 'code-' || lpad(i::text, 4, '0') || CASE WHEN i % 2 = 0 THEN 'B' ELSE 'a' END, 'label ' || i
  FROM generate_series(1, 90) i;

CREATE TABLE empty_one (id int PRIMARY KEY, v text);

CREATE TABLE events (day date NOT NULL, id int NOT NULL, what text, PRIMARY KEY (day, id)) PARTITION BY RANGE (day);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO events SELECT date '2024-11-01' + (i % 120), i, 'e' || i FROM generate_series(1, 200) i;

CREATE TABLE audit_log (at timestamptz, who text, what text);
ALTER TABLE audit_log REPLICA IDENTITY FULL;
INSERT INTO audit_log
SELECT timestamptz '2024-05-01 00:00+00' + (i % 10) * interval '1 minute', 'u' || (i % 3), 'did ' || (i % 10)
  FROM generate_series(1, 50) i;

CREATE TABLE devices (serial text NOT NULL, owner text, seen int);
CREATE UNIQUE INDEX devices_serial ON devices (serial);
ALTER TABLE devices REPLICA IDENTITY USING INDEX devices_serial;
INSERT INTO devices SELECT 'dev-' || i, 'o' || (i % 5), i FROM generate_series(1, 40) i;
"#;

fn settings() -> SyncSettings {
    SyncSettings {
        ready_timeout: Duration::from_secs(3600),
        copy_jobs: 2,
        ..SyncSettings::default()
    }
}

async fn tables(pg: &Pg) -> Vec<Table> {
    cutover_pg::inspect::tables(&pg.client().await, Side::Source, &settings())
        .await
        .unwrap()
}

fn options(chunk_rows: u64) -> VerifyOptions {
    VerifyOptions {
        chunk_rows,
        parallel: 3,
        catch_up_timeout: Duration::from_secs(60),
    }
}

async fn fixture() -> Pair {
    let pair = Pair::native().await;
    tokio::join!(pair.source.exec(FIXTURE), pair.target.exec(FIXTURE));
    pair
}

/// Verifies every table of the source with small chunks.
async fn run(pair: &Pair, chunk_rows: u64) -> VerifyReport {
    let tables = tables(&pair.source).await;
    verify(
        &pair.source.url(),
        &pair.target.url(),
        &tables,
        &options(chunk_rows),
        None,
        &|_| {},
    )
    .await
    .unwrap()
}

fn table<'r>(report: &'r VerifyReport, name: &str) -> &'r TableReport {
    report
        .tables
        .iter()
        .find(|t| t.table == name)
        .unwrap_or_else(|| panic!("no report for {name}"))
}

fn unequal(report: &VerifyReport) -> Vec<&str> {
    report
        .tables
        .iter()
        .filter(|t| !t.equal)
        .map(|t| t.table.as_str())
        .collect()
}

fn diff(key: &[&str], kind: &'static str) -> KeyDiff {
    KeyDiff {
        key: key.iter().map(|k| k.to_string()).collect(),
        kind,
    }
}

fn bound(values: &[&str]) -> Option<Vec<String>> {
    Some(values.iter().map(|v| v.to_string()).collect())
}

#[tokio::test]
async fn equal_tables_verify_equal_in_many_chunks() {
    let pair = fixture().await;
    let tables = tables(&pair.source).await;
    let events = Mutex::new(vec![]);
    let progress = |e: VerifyEvent| events.lock().unwrap().push(e);
    let report = verify(
        &pair.source.url(),
        &pair.target.url(),
        &tables,
        &options(7),
        None,
        &progress,
    )
    .await
    .unwrap();

    assert!(report.equal, "{report:#?}");
    // (table, rows, chunks, method): chunks = 1 + (rows - 1) / 7, one for an empty table.
    let expected = [
        ("Sales.Customer Accounts", 120, 18, "chunked"),
        ("Sales.codes", 90, 13, "chunked"),
        ("public.audit_log", 50, 1, "whole"),
        ("public.devices", 40, 6, "chunked"),
        ("public.empty_one", 0, 1, "chunked"),
        ("public.events", 200, 29, "chunked"),
        ("public.line_items", 300, 43, "chunked"),
        ("public.orders", 300, 43, "chunked"),
    ];
    assert_eq!(report.tables.len(), expected.len());
    for (name, rows, chunks, method) in expected {
        let t = table(&report, name);
        assert_eq!(
            (
                t.source_rows,
                t.target_rows,
                t.chunks,
                t.method,
                t.equal,
                t.mismatches.len(),
                &t.error
            ),
            (rows, rows, chunks, method, true, 0, &None),
            "{name}"
        );
    }

    let events = events.into_inner().unwrap();
    for (name, _, chunks, _) in expected {
        let of_table: Vec<&VerifyEvent> = events
            .iter()
            .filter(|e| match e {
                VerifyEvent::TableStarted { table, .. }
                | VerifyEvent::ChunkDone { table }
                | VerifyEvent::TableDone { table, .. } => table == name,
            })
            .collect();
        assert_eq!(of_table.len(), chunks + 2, "{name}");
        assert_eq!(
            of_table[0],
            &VerifyEvent::TableStarted {
                table: name.into(),
                chunks
            }
        );
        assert_eq!(
            of_table[chunks + 1],
            &VerifyEvent::TableDone {
                table: name.into(),
                equal: true
            }
        );
    }

    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["equal"], true);
    assert_eq!(json["tables"][0]["method"], "chunked");
}

#[tokio::test]
async fn one_changed_row_is_found_in_its_range() {
    let pair = fixture().await;
    pair.target
        .exec("UPDATE orders SET amount = amount + 0.01 WHERE id = 123")
        .await;
    let report = run(&pair, 7).await;

    assert!(!report.equal);
    assert_eq!(unequal(&report), ["public.orders"]);
    let orders = table(&report, "public.orders");
    assert_eq!(
        (orders.source_rows, orders.target_rows, orders.chunks),
        (300, 300, 43)
    );
    assert_eq!(orders.mismatches.len(), 1, "{:#?}", orders.mismatches);
    let m = &orders.mismatches[0];
    // Ranges start at every 7th id: 1 (open), 8, 15, ..., 120, 127, ...
    assert_eq!((&m.from, &m.to), (&bound(&["120"]), &bound(&["127"])));
    assert_eq!((m.source_rows, m.target_rows), (7, 7));
    assert_eq!(m.first_keys, [diff(&["123"], "different")]);
}

#[tokio::test]
async fn missing_extra_and_different_rows_are_named_with_any_key_type() {
    let pair = fixture().await;
    let gone = pair
        .source
        .value("SELECT md5('acct7')::uuid::text")
        .await
        .unwrap();
    pair.target
        .exec(&format!(
            r#"DELETE FROM "Sales"."Customer Accounts" WHERE "AccountId" = '{gone}';
               INSERT INTO line_items VALUES (50, 4, 'extra', 1);
               DELETE FROM "Sales".codes WHERE code = 'code-0011a';
               UPDATE "Sales".codes SET label = 'changed' WHERE code = 'code-0012B';
               INSERT INTO "Sales".codes VALUES ('code-0010c', 'new');
               UPDATE events SET what = 'changed' WHERE id = 10;
               UPDATE devices SET seen = -1 WHERE serial = 'dev-3';
               UPDATE orders SET doc = doc || '{{"x": 1}}' WHERE id = 202;
               DELETE FROM orders WHERE id = 199;"#
        ))
        .await;
    let report = run(&pair, 7).await;
    let mut names = unequal(&report);
    names.sort();
    assert_eq!(
        names,
        [
            "Sales.Customer Accounts",
            "Sales.codes",
            "public.devices",
            "public.events",
            "public.line_items",
            "public.orders"
        ]
    );

    let accounts = table(&report, "Sales.Customer Accounts");
    assert_eq!((accounts.source_rows, accounts.target_rows), (120, 119));
    assert_eq!(accounts.mismatches.len(), 1);
    assert_eq!(
        accounts.mismatches[0].first_keys,
        [diff(&[&gone], "missing on target")]
    );

    let items = table(&report, "public.line_items");
    assert_eq!(items.mismatches.len(), 1);
    let m = &items.mismatches[0];
    // Row 148 in key order is (50, 1) and row 155 is (52, 2).
    assert_eq!(
        (&m.from, &m.to),
        (&bound(&["50", "1"]), &bound(&["52", "2"]))
    );
    assert_eq!((m.source_rows, m.target_rows), (7, 8));
    assert_eq!(m.first_keys, [diff(&["50", "4"], "extra on target")]);

    // Three differences in one range of a text key, listed in key order.
    let codes = table(&report, "Sales.codes");
    assert_eq!(codes.mismatches.len(), 1);
    assert_eq!(
        (&codes.mismatches[0].from, &codes.mismatches[0].to),
        (&bound(&["code-0008B"]), &bound(&["code-0015a"]))
    );
    assert_eq!(
        codes.mismatches[0].first_keys,
        [
            diff(&["code-0010c"], "extra on target"),
            diff(&["code-0011a"], "missing on target"),
            diff(&["code-0012B"], "different"),
        ]
    );

    let events = table(&report, "public.events");
    assert_eq!(events.mismatches.len(), 1);
    assert_eq!(
        events.mismatches[0].first_keys,
        [diff(&["2024-11-11", "10"], "different")]
    );

    let devices = table(&report, "public.devices");
    assert_eq!(devices.method, "chunked");
    assert_eq!(devices.mismatches.len(), 1);
    assert_eq!(
        devices.mismatches[0].first_keys,
        [diff(&["dev-3"], "different")]
    );

    let orders = table(&report, "public.orders");
    assert_eq!((orders.source_rows, orders.target_rows), (300, 299));
    assert_eq!(orders.mismatches.len(), 1);
    assert_eq!(
        (&orders.mismatches[0].from, &orders.mismatches[0].to),
        (&bound(&["197"]), &bound(&["204"]))
    );
    assert_eq!(
        orders.mismatches[0].first_keys,
        [
            diff(&["199"], "missing on target"),
            diff(&["202"], "different")
        ]
    );
}

#[tokio::test]
async fn a_table_without_a_key_is_compared_whole() {
    let pair = fixture().await;
    // Rows 3 and 33 are the same row: take one of the pair away, and add a new one.
    pair.target
        .exec(
            "DELETE FROM audit_log WHERE ctid = (SELECT ctid FROM audit_log WHERE what = 'did 3' AND who = 'u0' LIMIT 1);
             INSERT INTO audit_log VALUES ('2024-06-01 12:00+00', 'zz', 'new');",
        )
        .await;
    let report = run(&pair, 7).await;
    assert_eq!(unequal(&report), ["public.audit_log"]);
    let log = table(&report, "public.audit_log");
    assert_eq!(
        (log.method, log.chunks, log.source_rows, log.target_rows),
        ("whole", 1, 50, 50)
    );
    assert_eq!(log.mismatches.len(), 1);
    let m = &log.mismatches[0];
    assert_eq!(
        (&m.from, &m.to, m.source_rows, m.target_rows),
        (&None, &None, 50, 50)
    );
    let mut keys = m.first_keys.clone();
    keys.sort_by_key(|k| k.kind);
    assert_eq!(
        keys,
        [
            diff(&[r#"("2024-06-01 12:00:00+00",zz,new)"#], "extra on target"),
            diff(
                &[r#"("2024-05-01 00:03:00+00",u0,"did 3")"#],
                "missing on target"
            ),
        ]
    );
}

#[tokio::test]
async fn a_table_missing_or_different_on_the_target_is_reported_and_the_rest_checked() {
    let pair = Pair::native().await;
    let both = "CREATE TABLE kept (id int PRIMARY KEY, v text); INSERT INTO kept SELECT i, 'v' || i FROM generate_series(1, 30) i;";
    pair.source
        .exec(&format!(
            "{both} CREATE TABLE gone (id int PRIMARY KEY);
             CREATE TABLE narrow (id int PRIMARY KEY, note text, \"Weight\" int);
             CREATE TABLE reordered (id int PRIMARY KEY, a text, b int);
             INSERT INTO reordered SELECT i, 'a' || i, i * 2 FROM generate_series(1, 25) i;"
        ))
        .await;
    // The target's table has its columns in another order and one more: still equal.
    pair.target
        .exec(&format!(
            "{both} CREATE TABLE narrow (id int PRIMARY KEY);
             CREATE TABLE reordered (b int, extra text DEFAULT 'x', a text, id int PRIMARY KEY);
             INSERT INTO reordered (id, a, b) SELECT i, 'a' || i, i * 2 FROM generate_series(1, 25) i;"
        ))
        .await;
    let report = run(&pair, 4).await;
    assert!(!report.equal);
    let gone = table(&report, "public.gone");
    assert_eq!(
        gone.error.as_deref(),
        Some("missing on target; run `cutover db sync`")
    );
    assert_eq!(
        (gone.equal, gone.chunks, gone.mismatches.len()),
        (false, 0, 0)
    );
    let narrow = table(&report, "public.narrow");
    assert_eq!(
        narrow.error.as_deref(),
        Some("column(s) note, Weight missing on target; the schemas differ: make the target's table match and verify again")
    );
    assert!(!narrow.equal);
    for name in ["public.kept", "public.reordered"] {
        let t = table(&report, name);
        assert!(t.equal && t.error.is_none(), "{t:#?}");
    }
    assert_eq!(table(&report, "public.reordered").chunks, 7);
}

/// Polls `sql` on `pg` until it returns `want`, for at most a minute.
async fn wait_until(pg: &Pg, sql: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = pg.value(sql).await;
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql} still returns {got:?}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn check(
    pair: &Pair,
    tables: &[Table],
    catch_up: Option<&CatchUp>,
    timeout: Duration,
) -> Result<VerifyReport, PgError> {
    let options = VerifyOptions {
        chunk_rows: 7,
        parallel: 2,
        catch_up_timeout: timeout,
    };
    verify(
        &pair.source.url(),
        &pair.target.url(),
        tables,
        &options,
        catch_up,
        &|_| {},
    )
    .await
}

#[tokio::test]
async fn under_live_replication_verify_waits_for_the_target_to_catch_up() {
    let pair = Pair::native().await;
    let table_sql = "CREATE TABLE t (id int PRIMARY KEY, v text);";
    pair.source
        .exec(&format!("{table_sql} INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 200) i; CREATE PUBLICATION p FOR TABLE t;"))
        .await;
    pair.target.exec(table_sql).await;
    let conninfo = pair.source.url().conninfo_with_password();
    pair.target
        .exec(&format!(
            "CREATE SUBSCRIPTION s CONNECTION {} PUBLICATION p WITH (slot_name = 's_slot')",
            literal(conninfo.expose())
        ))
        .await;
    wait_until(
        &pair.target,
        "SELECT count(*) FILTER (WHERE srsubstate = 'r') FROM pg_subscription_rel",
        "1",
    )
    .await;

    let tables = tables(&pair.source).await;
    let slot = CatchUp::Slot("s_slot".into());
    let check = |catch_up, timeout| check(&pair, &tables, catch_up, timeout);
    let write = "UPDATE t SET v = 'changed' WHERE id IN (5, 50, 150); DELETE FROM t WHERE id = 77;
                 INSERT INTO t SELECT i, 'new' || i FROM generate_series(201, 230) i;";

    // Written on the source and verified at once: the target must be waited for.
    pair.source.exec(write).await;
    let report = check(Some(&slot), Duration::from_secs(60)).await.unwrap();
    assert!(report.equal, "{report:#?}");
    assert_eq!(report.tables[0].source_rows, 229);

    // Replication stopped: the differences stay, after one wait of the timeout.
    pair.target.exec("ALTER SUBSCRIPTION s DISABLE").await;
    wait_until(
        &pair.target,
        "SELECT count(pid) FROM pg_stat_subscription WHERE subname = 's'",
        "0",
    )
    .await;
    wait_until(
        &pair.source,
        "SELECT active FROM pg_replication_slots WHERE slot_name = 's_slot'",
        "f",
    )
    .await;
    pair.source
        .exec(
            &write
                .replace("'changed'", "'again'")
                .replace("201, 230", "231, 240"),
        )
        .await;
    // Ids 5, 50 and 150 changed; 231..240 added, in the ranges from 226, 233 and 240.
    let ranges = |r: &VerifyReport| -> Vec<Option<Vec<String>>> {
        r.tables[0]
            .mismatches
            .iter()
            .map(|m| m.from.clone())
            .collect()
    };
    let expected = [
        None,
        bound(&["50"]),
        bound(&["149"]),
        bound(&["226"]),
        bound(&["233"]),
        bound(&["240"]),
    ];
    let report = check(None, Duration::from_secs(60)).await.unwrap();
    assert_eq!(ranges(&report), expected, "{report:#?}");
    let report = check(Some(&slot), Duration::from_secs(1)).await.unwrap();
    assert_eq!(ranges(&report), expected, "{report:#?}");
    assert!(report.duration_ms >= 1000, "{}", report.duration_ms);

    // Running again, replication catches up while verify waits.
    pair.target.exec("ALTER SUBSCRIPTION s ENABLE").await;
    let report = check(Some(&slot), Duration::from_secs(60)).await.unwrap();
    assert!(report.equal, "{report:#?}");
    assert_eq!(
        (report.tables[0].source_rows, report.tables[0].target_rows),
        (239, 239)
    );

    let wrong = CatchUp::Slot("nope".into());
    let err = check(Some(&wrong), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, PgError::Refused(_)));
    assert_eq!(
        err.to_string(),
        "replication slot \"nope\" does not exist on the source; start replication first (`cutover db sync`) or verify without waiting for it"
    );
}
