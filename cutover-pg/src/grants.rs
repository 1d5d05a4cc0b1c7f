//! Whether the applications' roles can work on a database: the schema copy carries no
//! grants (the new platform's roles differ), so the switchover checks before it starts.

use tokio_postgres::Client;

use crate::error::{PgError, Side, SqlContext};

/// For each of `roles` that lacks SELECT, INSERT, UPDATE or DELETE on any of `tables`, or
/// USAGE on any of `sequences` (all qualified names): (role, the objects, comma-separated).
/// A role that does not exist comes back with an empty list.
pub async fn missing(
    client: &Client,
    side: Side,
    roles: &[String],
    tables: &[String],
    sequences: &[String],
) -> Result<Vec<(String, String)>, PgError> {
    let rows = client
        .query(
            "SELECT u.role, coalesce(string_agg(t.name, ', ' ORDER BY t.name), '')
               FROM unnest($1::text[]) u(role)
               LEFT JOIN unnest($2::text[]) t(name)
                 ON EXISTS (SELECT 1 FROM pg_roles WHERE rolname = u.role)
                AND NOT (has_table_privilege(u.role, t.name, 'SELECT') AND has_table_privilege(u.role, t.name, 'INSERT')
                         AND has_table_privilege(u.role, t.name, 'UPDATE') AND has_table_privilege(u.role, t.name, 'DELETE'))
              WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = u.role) OR t.name IS NOT NULL
              GROUP BY u.role
              UNION ALL
             SELECT u.role, string_agg(q.name, ', ' ORDER BY q.name)
               FROM unnest($1::text[]) u(role), unnest($3::text[]) q(name)
              WHERE EXISTS (SELECT 1 FROM pg_roles WHERE rolname = u.role)
                AND NOT has_sequence_privilege(u.role, q.name, 'USAGE')
              GROUP BY u.role",
            &[&roles, &tables, &sequences],
        )
        .await
        .ctx(side, "check the applications' privileges")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
