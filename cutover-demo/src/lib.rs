//! The demo's shop: what `cutover demo` and the migration tests move.
//!
//! An old and a new instance of [`app`], a small order service, each reaching the database
//! through the cutover proxy as every app must during a move; [`load`], users placing and
//! reading orders through whatever their DNS answers; and [`SHOP_SCHEMA`], the tables with
//! the awkward parts real schemas have. None of it knows about cutover: it is the customer's
//! side of the move, so the move is judged from there (requests failed, writes lost).

pub mod app;
pub mod load;

/// Tables with the awkward parts real schemas have: several schemas, quoted mixed-case names,
/// composite and non-integer keys, jsonb, bytea, arrays, enums, identity columns, a
/// partitioned table and an empty one.
pub const SHOP_SCHEMA: &str = r#"
CREATE SCHEMA shop;
CREATE TYPE shop.status AS ENUM ('new', 'paid', 'shipped');
CREATE TABLE shop."Customers" (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    "FullName" text NOT NULL,
    tags text[] NOT NULL DEFAULT '{}',
    profile jsonb
);
CREATE TABLE shop.orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer uuid NOT NULL REFERENCES shop."Customers"(id),
    status shop.status NOT NULL DEFAULT 'new',
    total numeric(12,2) NOT NULL,
    receipt bytea
);
CREATE INDEX orders_customer ON shop.orders (customer);
CREATE INDEX customers_name ON shop."Customers" ("FullName");
CREATE TABLE shop.order_lines (
    order_id bigint NOT NULL,
    line int NOT NULL,
    sku text NOT NULL,
    qty int NOT NULL CHECK (qty > 0),
    PRIMARY KEY (order_id, line)
);
CREATE TABLE shop.events (
    at timestamptz NOT NULL,
    id bigint NOT NULL,
    kind text,
    PRIMARY KEY (at, id)
) PARTITION BY RANGE (at);
CREATE TABLE shop.events_2025 PARTITION OF shop.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE shop.events_2026 PARTITION OF shop.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE shop.returns (id serial PRIMARY KEY, note text);
INSERT INTO shop."Customers" ("FullName", tags, profile)
    SELECT 'Customer ' || g, ARRAY['t' || g % 7, 'x'], jsonb_build_object('n', g, 'vip', g % 10 = 0)
      FROM generate_series(1, 5000) g;
INSERT INTO shop.orders (customer, status, total, receipt)
    SELECT c.id, (ARRAY['new','paid','shipped'])[1 + g % 3]::shop.status, g * 1.25, decode(md5(g::text), 'hex')
      FROM generate_series(1, 20000) g
      JOIN LATERAL (SELECT id FROM shop."Customers" OFFSET g % 5000 LIMIT 1) c ON true;
INSERT INTO shop.order_lines SELECT o, l, 'SKU-' || (o * l) % 997, 1 + l FROM generate_series(1, 20000) o, generate_series(1, 3) l;
INSERT INTO shop.events SELECT timestamptz '2025-06-01' + g * interval '1 hour', g, 'e' || g % 5 FROM generate_series(1, 12000) g;
"#;
