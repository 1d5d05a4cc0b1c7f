//! What `cutover init` writes.

/// The commented plan `cutover init` writes. `source_url` and `target_url` are written as
/// given: references like "${SOURCE_DATABASE_URL}" (or URLs without a password).
pub fn template(source_url: &str, target_url: &str) -> String {
    format!(
        r#"# cutover plan. Every setting but the two URLs has the default shown.
# Secrets are written by reference: "${{NAME}}" is read from the environment when cutover runs.

[source]
# The database being moved away from.
url = "{source_url}"
# URL the target server uses to reach the source for replication. Default: url.
# replication_url = "${{SOURCE_REPLICATION_URL}}"

[target]
# The database being moved to; it must not hold the tables being moved.
url = "{target_url}"

[sync]
# "native": logical replication (the source needs wal_level = logical).
# "trigger": row triggers and a change log, for sources without it (Heroku Postgres).
mode = "native"
# Schemas to move. Default: every schema except the system ones.
schemas = []
# Tables to leave behind, as "schema.table".
exclude_tables = []
# Trigger mode: tables without a primary key to follow by whole-row identity (every column
# compared; slower), as "schema.table". Other keyless tables are refused.
whole_row_tables = []
# Copy the schema (tables, types, indexes, constraints) with pg_dump.
copy_schema = true
# Prefix of every object cutover creates: <name>_pub, <name>_sub, <name>_slot.
name = "cutover"
# How long `cutover db sync` waits for every table to be ready.
ready_timeout = "6h"
# How the initial copy is made. "parallel": cutover copies from the replication slot's
# snapshot, large tables split in parts, primary keys built after the copy. "subscription":
# the subscription's own copy, one worker per table, keys built before it.
copy = "parallel"
# Parts copied at once with copy = "parallel".
copy_jobs = 4
# A change to the source's schema while the databases are in sync: an additive one (new
# table, column, index, constraint) is "apply"-ed to the target by the follower on its own,
# or "hold"-s until `cutover db schema apply`. Others (a dropped or renamed column, a type
# change, a dropped table) always wait for `cutover db schema apply`.
schema_changes = "apply"

[verify]
# Rows per checksum chunk.
chunk_rows = 10000
# Chunks compared at once.
parallel = 2
# How long a mismatching chunk may wait for replication to catch up before it is reported.
catch_up_timeout = "30s"

[status]
# Retained WAL on the source (held by the replication slot) above which `db status` warns, in MiB.
retained_wal_warn_mib = 1024
# How often `cutover db status --watch` refreshes.
refresh = "2s"

[switchover]
# Replication lag above which `cutover db switchover` refuses to start, in MiB.
max_lag_mib = 16
# How long running transactions may take to finish once new ones are paused.
drain_timeout = "30s"
# How long the new primary may take to apply everything up to the fence.
catch_up_timeout = "30s"

# The PG proxy applications connect through (`cutover proxy`); point DATABASE_URL at it.
# [proxy]
# listen = "127.0.0.1:6432"
# Beyond loopback only with tls_cert and tls_key (served there too); admin_ca is the CA
# `db switchover` checks that certificate with (default: the system's roots).
# admin_listen = "127.0.0.1:6433"
# admin_ca = "ca.pem"
# admin_token = "${{CUTOVER_ADMIN_TOKEN}}"
# /live, /ready and /metrics for a load balancer and Prometheus:
# health_listen = "0.0.0.0:9187"
# On SIGTERM: how long sessions may take to end before they are cut.
# shutdown_timeout = "30s"
# Where the proxies of this plan find each other and switch as one: "target" (the default,
# a `cutover` schema in the target database), another database's URL, or "none" (one proxy,
# its state on local disk, switched through its admin API).
# control_url = "target"
# How long a switch waits for every proxy to acknowledge a pause or a switch.
# ack_timeout = "5s"
# tls_cert = "proxy.crt"
# tls_key = "proxy.key"
#
# [[proxy.users]]
# name = "app"
# password = "${{APP_DATABASE_PASSWORD}}"
# auth = "scram-sha-256"
"#
    )
}
