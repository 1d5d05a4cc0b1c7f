//! The copy builds each table's indexes, keys, foreign keys and statistics as the table lands:
//! every kind of index and constraint an application's schema has comes out on the target as
//! the source has it, and a foreign key a run that died left `NOT VALID` is validated by the
//! next `db sync`.

mod common;

use common::Env;

const SCHEMA: &str = r#"
CREATE SCHEMA shop;
CREATE TABLE shop.customers (id bigint PRIMARY KEY, email text NOT NULL, referrer bigint, last_order bigint);
CREATE TABLE shop.orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, code text NOT NULL,
                          during tsrange NOT NULL, closed_at timestamptz);
CREATE TABLE shop.lines (order_id bigint NOT NULL, n int NOT NULL, qty int NOT NULL);
CREATE TABLE shop.notes (body text NOT NULL, ref bigint);
INSERT INTO shop.customers SELECT g, 'User' || g || '@example.com', nullif(g / 2, 0) FROM generate_series(1, 3000) g;
INSERT INTO shop.orders SELECT g, 1 + g % 3000, 'code-' || g,
       tsrange(timestamp '2024-01-01' + g * interval '1 hour', timestamp '2024-01-01' + g * interval '1 hour' + interval '30 minutes'),
       CASE WHEN g % 4 = 0 THEN NULL ELSE now() END
  FROM generate_series(1, 6000) g;
UPDATE shop.customers SET last_order = id WHERE id <= 6000;
INSERT INTO shop.lines SELECT o, n, n * 2 FROM generate_series(1, 6000) o, generate_series(1, 3) n;
INSERT INTO shop.notes SELECT 'note ' || g, CASE WHEN g % 10 = 0 THEN 999999 ELSE g END FROM generate_series(1, 500) g;
-- Indexes: an expression index (unique), a partial one, one that is the replica identity.
CREATE UNIQUE INDEX customers_email_lower ON shop.customers (lower(email));
CREATE INDEX orders_open ON shop.orders (customer_id) WHERE closed_at IS NULL;
CREATE UNIQUE INDEX notes_body ON shop.notes (body);
ALTER TABLE shop.notes REPLICA IDENTITY USING INDEX notes_body;
COMMENT ON INDEX shop.orders_open IS 'orders still open';
-- Constraints: unique (also the replica identity), deferrable unique, exclusion.
ALTER TABLE shop.lines ADD CONSTRAINT lines_key UNIQUE (order_id, n);
ALTER TABLE shop.lines REPLICA IDENTITY USING INDEX lines_key;
ALTER TABLE shop.orders ADD CONSTRAINT orders_code_key UNIQUE (code) DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE shop.orders ADD CONSTRAINT orders_no_overlap EXCLUDE USING gist (during WITH &&);
-- Foreign keys: to itself, in a circle between two tables, with an action, and one not
-- valid on the source (some notes point nowhere), which must stay not valid.
ALTER TABLE shop.customers ADD CONSTRAINT customers_referrer FOREIGN KEY (referrer) REFERENCES shop.customers (id);
ALTER TABLE shop.orders ADD CONSTRAINT orders_customer FOREIGN KEY (customer_id) REFERENCES shop.customers (id);
ALTER TABLE shop.customers ADD CONSTRAINT customers_last_order FOREIGN KEY (last_order) REFERENCES shop.orders (id);
ALTER TABLE shop.lines ADD CONSTRAINT lines_order FOREIGN KEY (order_id) REFERENCES shop.orders (id) ON DELETE CASCADE;
ALTER TABLE shop.notes ADD CONSTRAINT notes_ref FOREIGN KEY (ref) REFERENCES shop.orders (id) NOT VALID;
-- A trigger: the post-data restore's, after the copy.
CREATE FUNCTION shop.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON shop.orders FOR EACH ROW EXECUTE FUNCTION shop.touch();
"#;

/// Every index, constraint (with whether it is validated and deferrable), replica identity,
/// user trigger and index comment of the schema `shop`, one per line, sorted.
const CATALOG: &str = r#"
SELECT string_agg(x, E'\n' ORDER BY x) FROM (
    SELECT conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
           || ' valid=' || convalidated || ' deferrable=' || condeferrable || '/' || condeferred AS x
      FROM pg_constraint WHERE connamespace = 'shop'::regnamespace
    UNION ALL
    SELECT pg_get_indexdef(indexrelid) || ' identity=' || indisreplident || ' valid=' || indisvalid
      FROM pg_index WHERE indrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'shop'::regnamespace)
    UNION ALL
    SELECT relname || ' replica identity ' || relreplident::text
      FROM pg_class WHERE relnamespace = 'shop'::regnamespace AND relkind = 'r'
    UNION ALL
    SELECT 'trigger ' || tgname FROM pg_trigger
     WHERE NOT tgisinternal AND tgname NOT LIKE 'cutover%'
       AND tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'shop'::regnamespace)
    UNION ALL
    SELECT 'comment ' || obj_description('shop.orders_open'::regclass, 'pg_class')
) s"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_keys_and_foreign_keys_built_as_tables_land() {
    let env = Env::native().await;
    env.pair.source.exec(SCHEMA).await;
    let source = env.pair.source.value(CATALOG).await.unwrap();
    assert!(source.contains("notes_ref"), "{source}");

    let sync = env.run(&["db", "sync"]);
    assert_eq!(sync.code, 0, "{}{}", sync.stdout, sync.stderr);
    // The copy built them, all but what only a restore makes (the trigger, the comment).
    let copy = sync
        .stderr
        .lines()
        .find(|l| l.contains(" copy ("))
        .unwrap_or_default();
    assert!(
        copy.contains(
            "as the tables landed: 6 indexes, 5 keys and 5 foreign keys built, 4 tables analyzed"
        ),
        "{}",
        sync.stderr
    );
    assert!(
        sync.stderr.contains("schema.post_data") && sync.stderr.contains(": 2 entries"),
        "{}",
        sync.stderr
    );
    assert_eq!(env.pair.target.value(CATALOG).await.unwrap(), source);
    // Planner statistics for every table, from the copy's ANALYZE.
    assert_eq!(
        env.pair
            .target
            .value("SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = 'shop' AND last_analyze IS NOT NULL")
            .await
            .as_deref(),
        Some("4")
    );

    // A run that died between adding a foreign key and validating it left it NOT VALID: the
    // next run validates it.
    env.pair
        .target
        .exec(
            "ALTER TABLE shop.lines DROP CONSTRAINT lines_order;
             ALTER TABLE shop.lines ADD CONSTRAINT lines_order FOREIGN KEY (order_id)
                   REFERENCES shop.orders (id) ON DELETE CASCADE NOT VALID",
        )
        .await;
    assert_ne!(env.pair.target.value(CATALOG).await.unwrap(), source);
    let again = env.run(&["db", "sync"]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert!(
        again
            .stderr
            .contains("1 foreign keys left NOT VALID validated"),
        "{}",
        again.stderr
    );
    assert_eq!(env.pair.target.value(CATALOG).await.unwrap(), source);
    env.assert_journal_clean();
}
