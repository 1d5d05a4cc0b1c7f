//! The fence: the side being left stops taking writes, and an exact undo for a rollback.
//!
//! During a switchover the proxy holds the clients; the fence makes sure nothing else writes
//! to the old primary either, so that the position read after it ([`wal_position`]) really is
//! the last write the other side must apply. It is made of privileges: every INSERT, UPDATE,
//! DELETE and TRUNCATE on the moved tables (their partitions included, and column-level
//! INSERT/UPDATE) and every UPDATE and USAGE on their sequences (what `nextval` needs) is
//! revoked from every role that holds it, PUBLIC and the owners included (an owner's REVOKE of
//! its own privilege works, and the app's role owning its tables loses them too, as it should).
//! Reads keep working. `default_transaction_read_only` would not do: any session can `SET` it
//! off again.
//!
//! What the fence does not stop, and what covers it:
//! - **Superusers** bypass privileges. The fence stops every other role; [`other_sessions`] and
//!   [`terminate`] end every session that is not the proxy's, superusers' included.
//! - **Transactions already running** keep the rows they wrote and may still commit: the
//!   privilege is checked when a statement starts. The proxy drains its clients' transactions
//!   before the fence, and [`terminate`] rolls back everyone else's; read [`wal_position`]
//!   only after both.
//! - **An owner can grant itself its privileges back**, and a superuser-owned `SECURITY
//!   DEFINER` function or writable view writes with its owner's rights. Those sessions are
//!   ended by [`terminate`] too.
//!
//! Privileges are revoked and granted back by the role that granted them (`SET LOCAL ROLE`
//! grantor): a superuser's REVOKE acts as the owner and only removes the owner's grants, and
//! `CASCADE` from a grantor does not reach column grants it made while holding the table
//! privilege. So the undo is exact: every ACL item comes back with its grantor and grant option
//! (the order of items in `relacl` may differ, and a NULL `relacl`, meaning the owner's
//! defaults, comes back written out; both mean the same to the server).
//!
//! Invariant: a fence is all or nothing. [`apply_fence`] and [`unfence`] run in one transaction
//! that checks its own result before it commits: no write privilege left on any fenced object,
//! or every revoked item back.
//!
//! A fence is planned once and journaled: planned again after it was applied it finds nothing
//! to revoke, and its undo would give nothing back.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::connect::{ident, qualified};
use crate::error::{PgError, Side, SqlContext};
use crate::inspect::{Sequence, Table};

/// How long [`terminate`] waits for the ended sessions to be gone.
const TERMINATE_WAIT: Duration = Duration::from_secs(5);

/// What a privilege is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Table,
    Sequence,
}

impl ObjectKind {
    fn sql(self) -> &'static str {
        match self {
            ObjectKind::Table => "TABLE",
            ObjectKind::Sequence => "SEQUENCE",
        }
    }
}

/// Everything a fence revoked, to be journaled and given back by [`unfence`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fence {
    pub revoked: Vec<Revoked>,
}

/// One privilege of one role (or PUBLIC) on a table, a column or a sequence.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Revoked {
    pub schema: String,
    pub name: String,
    pub kind: ObjectKind,
    /// The column of a column-level privilege.
    pub column: Option<String>,
    /// A role name, or `PUBLIC`.
    pub grantee: String,
    /// INSERT, UPDATE, DELETE, TRUNCATE (tables) or UPDATE, USAGE (sequences).
    pub privilege: String,
    /// Held WITH GRANT OPTION.
    pub grantable: bool,
    /// The role that granted it (the owner for the owner's own and most others). It is revoked
    /// and granted back as this role, so the ACL comes back exactly.
    pub grantor: String,
}

impl Revoked {
    fn schema_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    fn object(&self) -> String {
        match &self.column {
            Some(c) => format!("{}.{}({c})", self.schema, self.name),
            None => format!("{}.{}", self.schema, self.name),
        }
    }

    fn grantee_sql(&self) -> String {
        if self.grantee == "PUBLIC" {
            "PUBLIC".into()
        } else {
            ident(&self.grantee)
        }
    }

    fn privilege_sql(&self) -> String {
        match &self.column {
            Some(c) => format!("{} ({})", self.privilege, ident(c)),
            None => self.privilege.clone(),
        }
    }
}

/// Every write privilege on the named tables (their partitions included) and sequences, with
/// what the connecting role needs to take it away. `$1`/`$2` schemas and names of tables,
/// `$3`/`$4` of sequences.
const WRITE_PRIVILEGES: &str = "
WITH named AS (
    SELECT c.oid, c.relkind
      FROM unnest($1::text[], $2::text[]) w(s, n)
      JOIN pg_namespace ns ON ns.nspname = w.s
      JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = w.n AND c.relkind IN ('r', 'p', 'f')
    UNION
    SELECT c.oid, c.relkind
      FROM unnest($3::text[], $4::text[]) w(s, n)
      JOIN pg_namespace ns ON ns.nspname = w.s
      JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = w.n AND c.relkind = 'S'
), objects AS (
    SELECT oid FROM named
    UNION
    SELECT t.relid FROM named, pg_partition_tree(named.oid) t WHERE named.relkind = 'p'
), items AS (
    SELECT c.oid, NULL::text AS col, a.grantor, a.grantee, a.privilege_type, a.is_grantable
      FROM objects o JOIN pg_class c ON c.oid = o.oid,
           aclexplode(coalesce(c.relacl,
                               acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner))) a
     WHERE a.privilege_type = ANY (CASE WHEN c.relkind = 'S' THEN ARRAY['UPDATE', 'USAGE']
                                        ELSE ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'] END)
    UNION ALL
    SELECT c.oid, att.attname::text, a.grantor, a.grantee, a.privilege_type, a.is_grantable
      FROM objects o JOIN pg_class c ON c.oid = o.oid
      JOIN pg_attribute att ON att.attrelid = c.oid AND att.attnum > 0 AND NOT att.attisdropped
                           AND att.attacl IS NOT NULL,
           aclexplode(att.attacl) a
     WHERE a.privilege_type IN ('INSERT', 'UPDATE')
)
SELECT ns.nspname::text, c.relname::text, c.relkind = 'S', i.col,
       CASE WHEN i.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(i.grantee)::text END,
       i.privilege_type, i.is_grantable, pg_get_userbyid(i.grantor)::text,
       pg_get_userbyid(c.relowner)::text,
       i.grantee <> 0 AND pg_get_userbyid(i.grantee) = 'PUBLIC',
       pg_has_role(current_user, c.relowner, 'USAGE'),
       pg_has_role(current_user, i.grantor, 'MEMBER'),
       current_user::text
  FROM items i JOIN pg_class c ON c.oid = i.oid JOIN pg_namespace ns ON ns.oid = c.relnamespace
 ORDER BY 1, 2, 4 NULLS FIRST, 6, 8, 5";

/// One row of [`WRITE_PRIVILEGES`].
struct Held {
    item: Revoked,
    owner: String,
    grantee_named_public: bool,
    acts_as_owner: bool,
    can_be_grantor: bool,
    current_user: String,
}

async fn write_privileges(
    client: &Client,
    side: Side,
    tables: &[(String, String)],
    sequences: &[(String, String)],
) -> Result<Vec<Held>, PgError> {
    let (ts, tn): (Vec<&str>, Vec<&str>) =
        tables.iter().map(|(s, n)| (s.as_str(), n.as_str())).unzip();
    let (ss, sn): (Vec<&str>, Vec<&str>) = sequences
        .iter()
        .map(|(s, n)| (s.as_str(), n.as_str()))
        .unzip();
    let rows = client
        .query(WRITE_PRIVILEGES, &[&ts, &tn, &ss, &sn])
        .await
        .ctx(side, "read the write privileges")?;
    Ok(rows
        .iter()
        .map(|r| Held {
            item: Revoked {
                schema: r.get(0),
                name: r.get(1),
                kind: if r.get(2) {
                    ObjectKind::Sequence
                } else {
                    ObjectKind::Table
                },
                column: r.get(3),
                grantee: r.get(4),
                privilege: r.get(5),
                grantable: r.get(6),
                grantor: r.get(7),
            },
            owner: r.get(8),
            grantee_named_public: r.get(9),
            acts_as_owner: r.get(10),
            can_be_grantor: r.get(11),
            current_user: r.get(12),
        })
        .collect())
}

/// Names given that do not exist on this side, as `schema.name`.
async fn missing(
    client: &Client,
    side: Side,
    names: &[(String, String)],
    relkinds: &str,
) -> Result<Vec<String>, PgError> {
    let (s, n): (Vec<&str>, Vec<&str>) =
        names.iter().map(|(s, n)| (s.as_str(), n.as_str())).unzip();
    let rows = client
        .query(
            "SELECT w.s || '.' || w.n FROM unnest($1::text[], $2::text[]) w(s, n)
              WHERE NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
                                 WHERE ns.nspname = w.s AND c.relname = w.n
                                   AND c.relkind::text = ANY (string_to_array($3, ',')))",
            &[&s, &n, &relkinds],
        )
        .await
        .ctx(side, "look for the tables and sequences to fence")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// At most `n` items, then how many more.
fn some_of(items: &[String], n: usize) -> String {
    if items.len() <= n {
        items.join(", ")
    } else {
        format!("{} (and {} more)", items[..n].join(", "), items.len() - n)
    }
}

/// Reads what would have to be revoked so that no role but a superuser can write to `tables`
/// (their partitions included) or advance `sequences`. Changes nothing.
///
/// Refuses, in one line, when a table or sequence is missing on this side, or when the
/// connecting role could not take every privilege away (it must be a superuser, or have the
/// owner's privileges and be able to act as every other grantor).
pub async fn plan_fence(
    client: &Client,
    side: Side,
    tables: &[Table],
    sequences: &[Sequence],
) -> Result<Fence, PgError> {
    let t: Vec<(String, String)> = tables
        .iter()
        .map(|t| (t.schema.clone(), t.name.clone()))
        .collect();
    let s: Vec<(String, String)> = sequences
        .iter()
        .map(|s| (s.schema.clone(), s.name.clone()))
        .collect();
    let mut absent = missing(client, side, &t, "r,p,f").await?;
    absent.extend(missing(client, side, &s, "S").await?);
    if !absent.is_empty() {
        return Err(PgError::Refused(format!(
            "cannot fence the {side}: {} not found there; the two sides must have the same tables and sequences (compare the schemas, or run `cutover check`)",
            some_of(&absent, 5)
        )));
    }
    let held = write_privileges(client, side, &t, &s).await?;
    refuse_unfenceable(side, &held)?;
    Ok(Fence {
        revoked: held.into_iter().map(|h| h.item).collect(),
    })
}

/// Refuses, in one line, when the connecting role could not revoke all of `held`.
fn refuse_unfenceable(side: Side, held: &[Held]) -> Result<(), PgError> {
    fn add(list: &mut Vec<String>, item: String) {
        if !list.contains(&item) {
            list.push(item);
        }
    }
    let (mut not_owned, mut grantors, mut named_public) = (vec![], vec![], vec![]);
    for h in held {
        if h.grantee_named_public {
            add(&mut named_public, h.item.schema_name());
        } else if !h.acts_as_owner {
            add(
                &mut not_owned,
                format!("{} (owner \"{}\")", h.item.schema_name(), h.owner),
            );
        } else if !h.can_be_grantor {
            add(&mut grantors, format!("\"{}\"", h.item.grantor));
        }
    }
    let Some(user) = held.first().map(|h| &h.current_user) else {
        return Ok(());
    };
    let mut problems = vec![];
    if !not_owned.is_empty() {
        problems.push(format!(
            "role \"{user}\" is neither a superuser nor the owner of {}, so it cannot revoke the writes there; \
             connect to the {side} as a superuser, or as the owner",
            some_of(&not_owned, 3)
        ));
    }
    if !grantors.is_empty() {
        problems.push(format!(
            "some privileges were granted by {}, and only the role that granted a privilege can revoke it; \
             connect to the {side} as a superuser, or GRANT that role TO \"{user}\"",
            some_of(&grantors, 3)
        ));
    }
    if !named_public.is_empty() {
        problems.push(format!(
            "a role is named \"PUBLIC\" and holds privileges on {}, which cannot be told apart from PUBLIC; rename it (ALTER ROLE \"PUBLIC\" RENAME TO ...)",
            some_of(&named_public, 3)
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PgError::Refused(format!(
            "cannot fence the {side}: {}",
            problems.join("; and ")
        )))
    }
}

/// The fence's items in an order they can be granted in: an item granted by a role that holds
/// its privilege WITH GRANT OPTION through another item comes after that item. Revoking goes
/// the other way round, leaves first, so every grantor still has its grant option when it
/// revokes what it granted.
fn grant_order(items: &[Revoked]) -> Vec<&Revoked> {
    let gives = |f: &Revoked, e: &Revoked| {
        f.grantable
            && f.grantee == e.grantor
            && f.kind == e.kind
            && f.schema == e.schema
            && f.name == e.name
            && f.privilege == e.privilege
            && (f.column.is_none() || f.column == e.column)
    };
    let mut done: Vec<&Revoked> = vec![];
    let mut left: Vec<&Revoked> = items.iter().collect();
    while !left.is_empty() {
        // Ready when no item still waiting gives it (a grant from the owner, or one whose
        // grantor's own item is already placed).
        let (ready, wait): (Vec<&Revoked>, Vec<&Revoked>) = left
            .iter()
            .copied()
            .partition(|e| !left.iter().any(|f| !std::ptr::eq(*f, *e) && gives(f, e)));
        if ready.is_empty() {
            // Grant options cannot go round in a circle; keep whatever is left as it is.
            done.extend(wait);
            break;
        }
        done.extend(ready);
        left = wait;
    }
    done
}

/// The statements for `items`, each run as its grantor (a superuser's GRANT or REVOKE acts as
/// the owner, which is not the grantor of everything).
fn statements(items: &[&Revoked], revoke: bool) -> String {
    let mut sql = String::new();
    let mut role: Option<&str> = None;
    for e in items {
        if role != Some(e.grantor.as_str()) {
            sql.push_str(&format!("SET LOCAL ROLE {};\n", ident(&e.grantor)));
            role = Some(&e.grantor);
        }
        let on = format!("{} {}", e.kind.sql(), qualified(&e.schema, &e.name));
        if revoke {
            sql.push_str(&format!(
                "REVOKE {} ON {on} FROM {} CASCADE;\n",
                e.privilege_sql(),
                e.grantee_sql()
            ));
        } else {
            sql.push_str(&format!(
                "GRANT {} ON {on} TO {}{};\n",
                e.privilege_sql(),
                e.grantee_sql(),
                if e.grantable {
                    " WITH GRANT OPTION"
                } else {
                    ""
                }
            ));
        }
    }
    if role.is_some() {
        sql.push_str("SET LOCAL ROLE NONE;\n");
    }
    sql
}

/// The objects of a fence, as (schema, name) of tables and of sequences.
type Objects = (Vec<(String, String)>, Vec<(String, String)>);

fn objects(fence: &Fence) -> Objects {
    let mut seen = HashSet::new();
    let (mut t, mut s) = (vec![], vec![]);
    for e in &fence.revoked {
        if seen.insert((e.kind, e.schema.clone(), e.name.clone())) {
            let pair = (e.schema.clone(), e.name.clone());
            match e.kind {
                ObjectKind::Table => t.push(pair),
                ObjectKind::Sequence => s.push(pair),
            }
        }
    }
    (t, s)
}

/// Runs `body` in a transaction of its own on `client`: committed when it succeeds, rolled back
/// when it fails.
async fn in_transaction<T>(
    client: &Client,
    side: Side,
    what: &str,
    body: impl std::future::Future<Output = Result<T, PgError>>,
) -> Result<T, PgError> {
    client
        .batch_execute("BEGIN")
        .await
        .ctx(side, &format!("begin the transaction to {what}"))?;
    match body.await {
        Ok(v) => {
            client
                .batch_execute("COMMIT")
                .await
                .ctx(side, &format!("commit the transaction to {what}"))?;
            Ok(v)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// A permission error while changing privileges becomes one line that says how to fix it.
fn explain_denied(side: Side, what: &str, e: PgError) -> PgError {
    match &e {
        PgError::Sql {
            code: Some(code),
            message,
            ..
        } if code == "42501" => PgError::Refused(format!(
            "cannot {what} on the {side}: {message}; connect as a superuser, or as the owner of every table and sequence"
        )),
        _ => e,
    }
}

/// Revokes everything in `fence`, in one transaction: all of it or nothing. Idempotent: what is
/// already revoked is skipped. Refuses (changing nothing) when, with the fence in place, some
/// role could still write: a privilege granted after the fence was planned, or a new partition.
///
/// The transaction is opened with `BEGIN` on `client`: give a connection nothing else uses
/// meanwhile.
pub async fn apply_fence(client: &Client, side: Side, fence: &Fence) -> Result<(), PgError> {
    let (tables, sequences) = objects(fence);
    in_transaction(client, side, "fence", async {
        let now: Vec<Revoked> = write_privileges(client, side, &tables, &sequences)
            .await?
            .into_iter()
            .map(|h| h.item)
            .collect();
        let planned: HashSet<&Revoked> = fence.revoked.iter().collect();
        let unplanned: Vec<String> = now
            .iter()
            .filter(|e| !planned.contains(e))
            .map(|e| format!("{} on {} for {}", e.privilege, e.object(), e.grantee))
            .collect();
        if !unplanned.is_empty() {
            return Err(PgError::Refused(format!(
                "cannot fence the {side}: {} appeared after the fence was planned; plan the fence again",
                some_of(&unplanned, 3)
            )));
        }
        let present: HashSet<&Revoked> = now.iter().collect();
        let mut order = grant_order(&fence.revoked);
        order.retain(|e| present.contains(e));
        order.reverse();
        if !order.is_empty() {
            client
                .batch_execute(&statements(&order, true))
                .await
                .ctx(side, "revoke the write privileges")
                .map_err(|e| explain_denied(side, "fence", e))?;
        }
        let left: Vec<String> = write_privileges(client, side, &tables, &sequences)
            .await?
            .iter()
            .map(|h| {
                format!(
                    "{} on {} for {} (granted by {})",
                    h.item.privilege,
                    h.item.object(),
                    h.item.grantee,
                    h.item.grantor
                )
            })
            .collect();
        if !left.is_empty() {
            return Err(PgError::Refused(format!(
                "cannot fence the {side}: after revoking, {} would remain; nothing was changed",
                some_of(&left, 3)
            )));
        }
        Ok(())
    })
    .await
}

/// Grants back exactly what `fence` revoked (WITH GRANT OPTION where it was held, by the role
/// that had granted it), in one transaction. Idempotent: what is in place is skipped. As with
/// [`apply_fence`], `client` is a connection nothing else uses meanwhile.
pub async fn unfence(client: &Client, side: Side, fence: &Fence) -> Result<(), PgError> {
    let (tables, sequences) = objects(fence);
    in_transaction(client, side, "lift the fence", async {
        let now: HashSet<Revoked> = write_privileges(client, side, &tables, &sequences)
            .await?
            .into_iter()
            .map(|h| h.item)
            .collect();
        let mut order = grant_order(&fence.revoked);
        order.retain(|e| !now.contains(*e));
        if !order.is_empty() {
            client
                .batch_execute(&statements(&order, false))
                .await
                .ctx(side, "grant the write privileges back")
                .map_err(|e| explain_denied(side, "lift the fence", e))?;
        }
        let now: HashSet<Revoked> = write_privileges(client, side, &tables, &sequences)
            .await?
            .into_iter()
            .map(|h| h.item)
            .collect();
        let absent: Vec<String> = fence
            .revoked
            .iter()
            .filter(|e| !now.contains(*e))
            .map(|e| {
                format!(
                    "{} on {} for {} (granted by {})",
                    e.privilege,
                    e.object(),
                    e.grantee,
                    e.grantor
                )
            })
            .collect();
        if !absent.is_empty() {
            return Err(PgError::Refused(format!(
                "cannot lift the fence on the {side}: {} did not come back; nothing was changed",
                some_of(&absent, 3)
            )));
        }
        Ok(())
    })
    .await
}

/// A session that is not the proxy's.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SessionInfo {
    pub pid: i32,
    pub user: String,
    pub application_name: String,
    pub client_addr: Option<String>,
    /// active, idle, idle in transaction...; None when the role may not see it.
    pub state: Option<String>,
    /// RFC 3339, UTC.
    pub backend_start: String,
}

impl SessionInfo {
    /// "pid 123 user app from 10.0.0.5 (rails)", as lists of sessions name them.
    pub fn describe(&self) -> String {
        format!(
            "pid {} user {} from {} ({})",
            self.pid,
            self.user,
            self.client_addr.as_deref().unwrap_or("local socket"),
            if self.application_name.is_empty() {
                "no application_name"
            } else {
                &self.application_name
            }
        )
    }
}

/// A session cutover itself opened (its checks, status reads, the trigger-mode applier): the
/// `application_name` every connection of cutover's carries. It writes no application data
/// on a primary, so it never counts as an application reaching the database around the proxy.
pub fn is_cutover_session(s: &SessionInfo) -> bool {
    s.application_name == "cutover"
        || s.application_name == crate::trigger::APPLIER_NAME
        || is_control_session(s)
}

pub use cutover_core::plan::CONTROL_APPLICATION_NAME;

/// A connection to the proxies' control tables: it writes nothing a fence guards, and a fence
/// on the control database must not cut the fleet off from the switch it is part of.
pub fn is_control_session(s: &SessionInfo) -> bool {
    s.application_name == CONTROL_APPLICATION_NAME
}

/// Client sessions on this connection's database other than this connection and
/// `allowed_pids` (the proxy's). Walsenders, logical replication workers, autovacuum and other
/// background processes are not client sessions and are never listed.
pub async fn other_sessions(
    client: &Client,
    side: Side,
    allowed_pids: &[i32],
) -> Result<Vec<SessionInfo>, PgError> {
    let rows = client
        .query(
            "SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''),
                    host(client_addr), state,
                    to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
               FROM pg_stat_activity
              WHERE datname = current_database() AND backend_type = 'client backend'
                AND pid <> pg_backend_pid() AND NOT pid = ANY ($1)
              ORDER BY backend_start, pid",
            &[&allowed_pids],
        )
        .await
        .ctx(side, "list the sessions")?;
    Ok(rows
        .iter()
        .map(|r| SessionInfo {
            pid: r.get(0),
            user: r.get(1),
            application_name: r.get(2),
            client_addr: r.get(3),
            state: r.get(4),
            backend_start: r.get(5),
        })
        .collect())
}

/// Ends each session (`pg_terminate_backend`: its open transaction is rolled back) and waits,
/// a few seconds at most, until all are gone. Only client sessions on this database are ended;
/// any other pid (a walsender, a worker, this connection, a session that already left) is
/// skipped. Returns how many were ended.
pub async fn terminate(client: &Client, side: Side, pids: &[i32]) -> Result<usize, PgError> {
    if pids.is_empty() {
        return Ok(0);
    }
    let mut ended = 0;
    for pid in pids {
        let row = client
            .query_opt(
                "SELECT pg_terminate_backend(pid), coalesce(usename::text, '')
                   FROM pg_stat_activity
                  WHERE pid = $1 AND datname = current_database()
                    AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[pid],
            )
            .await
            .map_err(|e| match e.code().map(|c| c.code()) {
                Some("42501") => PgError::Refused(format!(
                    "cannot end session {pid} on the {side}: {}; connect as a superuser, or GRANT pg_signal_backend to the role cutover uses (it cannot end a superuser's session)",
                    e.as_db_error().map(|d| d.message()).unwrap_or("permission denied")
                )),
                _ => PgError::sql(side, format!("end session {pid}"), e),
            })?;
        if row.is_some_and(|r| r.get::<_, bool>(0)) {
            ended += 1;
        }
    }
    let deadline = Instant::now() + TERMINATE_WAIT;
    loop {
        let rows = client
            .query(
                "SELECT pid FROM pg_stat_activity WHERE pid = ANY ($1) AND pid <> pg_backend_pid()
                    AND datname = current_database() AND backend_type = 'client backend'",
                &[&pids],
            )
            .await
            .ctx(side, "look for the ended sessions")?;
        if rows.is_empty() {
            return Ok(ended);
        }
        if Instant::now() > deadline {
            let left: Vec<String> = rows
                .iter()
                .map(|r| r.get::<_, i32>(0).to_string())
                .collect();
            return Err(PgError::Refused(format!(
                "sessions {} on the {side} are still there {}s after pg_terminate_backend; they may be stuck in a system call: look at them in pg_stat_activity and end them from the server",
                left.join(", "),
                TERMINATE_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `pg_current_wal_insert_lsn()`: read after the fence and after [`terminate`], the position
/// the other side must have applied (see [`crate::replication::wait_applied`]) before it takes
/// the writes.
pub async fn wal_position(client: &Client, side: Side) -> Result<String, PgError> {
    let row = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .ctx(side, "read the WAL position")?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(grantee: &str, grantor: &str, privilege: &str, grantable: bool) -> Revoked {
        Revoked {
            schema: "public".into(),
            name: "t".into(),
            kind: ObjectKind::Table,
            column: None,
            grantee: grantee.into(),
            privilege: privilege.into(),
            grantable,
            grantor: grantor.into(),
        }
    }

    #[test]
    fn grant_order_puts_each_grantor_before_what_it_granted() {
        let h_to_y = item("y", "h", "UPDATE", false);
        let g_to_h = item("h", "g", "UPDATE", true);
        let owner_to_g = item("g", "owner", "UPDATE", true);
        let owner_own = item("owner", "owner", "INSERT", false);
        let mut col = item("y", "g", "UPDATE", false);
        col.column = Some("c".into());
        let items = vec![
            h_to_y.clone(),
            col.clone(),
            g_to_h.clone(),
            owner_to_g.clone(),
            owner_own.clone(),
        ];
        let order = grant_order(&items);
        let at = |e: &Revoked| order.iter().position(|o| *o == e).unwrap();
        assert_eq!(order.len(), items.len());
        assert!(at(&owner_to_g) < at(&g_to_h));
        assert!(at(&g_to_h) < at(&h_to_y));
        assert!(at(&owner_to_g) < at(&col));
    }

    #[test]
    fn statements_run_as_each_grantor_and_quote_everything() {
        let mut e = item("Bob \"B\"", "app", "UPDATE", true);
        e.column = Some("note".into());
        let p = item("PUBLIC", "owner", "INSERT", false);
        let sql = statements(&[&e, &p], false);
        assert_eq!(
            sql,
            "SET LOCAL ROLE \"app\";\n\
             GRANT UPDATE (\"note\") ON TABLE \"public\".\"t\" TO \"Bob \"\"B\"\"\" WITH GRANT OPTION;\n\
             SET LOCAL ROLE \"owner\";\n\
             GRANT INSERT ON TABLE \"public\".\"t\" TO PUBLIC;\n\
             SET LOCAL ROLE NONE;\n"
        );
        assert!(statements(&[&p], true)
            .contains("REVOKE INSERT ON TABLE \"public\".\"t\" FROM PUBLIC CASCADE;"));
    }
}
