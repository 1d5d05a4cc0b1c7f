//! Sequences across a switchover.
//!
//! Logical replication does not carry sequences: the side taking over still has the values its
//! schema was created with, and its first `nextval` would hand out ids the old side has used
//! already. So once the side being left is fenced, every sequence's `last_value` and
//! `is_called` are read there and set the same on the other side, owned by a column (serial,
//! identity) or free-standing alike. `is_called` matters: `false` means the next `nextval`
//! returns `last_value` itself.
//!
//! `setval` is not transactional (a rollback does not undo it), so "all or nothing" is had by
//! checking first: every sequence must exist on both sides and every value must fit the other
//! side's bounds before the first one is set, and then all are set in one statement. Setting
//! the same values again is harmless, so a copy that failed half-way is simply run again.

use serde::Serialize;
use tokio_postgres::Client;

use crate::connect::qualified;
use crate::error::{PgError, Side, SqlContext};
use crate::inspect::Sequence;

/// Sequences read per statement on the side being left.
const CHUNK: usize = 500;

/// One sequence's state as copied.
#[derive(Clone, Debug, Serialize)]
pub struct SequenceValue {
    pub schema: String,
    pub name: String,
    pub last_value: i64,
    pub is_called: bool,
}

/// Sequences of `names` that do not exist on this side, as `schema.name`.
async fn missing(
    client: &Client,
    side: Side,
    schemas: &[&str],
    names: &[&str],
) -> Result<Vec<String>, PgError> {
    let rows = client
        .query(
            "SELECT w.s || '.' || w.n FROM unnest($1::text[], $2::text[]) w(s, n)
              WHERE NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
                                 WHERE ns.nspname = w.s AND c.relname = w.n AND c.relkind = 'S')",
            &[&schemas, &names],
        )
        .await
        .ctx(side, "look for the sequences")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Reads every sequence's `last_value` and `is_called` on `from` and sets the same on `to`.
///
/// Refuses, changing nothing, when a sequence is missing on either side or a value does not
/// fit the bounds of the sequence on `to`, naming every one of them.
pub async fn copy_sequences(
    from: &Client,
    from_side: Side,
    to: &Client,
    to_side: Side,
    sequences: &[Sequence],
) -> Result<Vec<SequenceValue>, PgError> {
    if sequences.is_empty() {
        return Ok(vec![]);
    }
    let schemas: Vec<&str> = sequences.iter().map(|s| s.schema.as_str()).collect();
    let names: Vec<&str> = sequences.iter().map(|s| s.name.as_str()).collect();
    let mut problems = vec![];
    for (client, side) in [(from, from_side), (to, to_side)] {
        for name in missing(client, side, &schemas, &names).await? {
            problems.push(format!("sequence {name} does not exist on the {side}"));
        }
    }
    if !problems.is_empty() {
        return Err(PgError::Refused(format!(
            "cannot copy the sequences from the {from_side} to the {to_side}: {}; create them (the two schemas must match) or leave them out of sync.schemas",
            problems.join("; ")
        )));
    }

    let mut values = Vec::with_capacity(sequences.len());
    for chunk in sequences.chunks(CHUNK) {
        let selects: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "SELECT {i} AS i, last_value, is_called FROM {}",
                    qualified(&s.schema, &s.name)
                )
            })
            .collect();
        let rows = from
            .query(&format!("{} ORDER BY i", selects.join(" UNION ALL ")), &[])
            .await
            .ctx(from_side, "read the sequences")?;
        for (s, r) in chunk.iter().zip(&rows) {
            values.push(SequenceValue {
                schema: s.schema.clone(),
                name: s.name.clone(),
                last_value: r.get(1),
                is_called: r.get(2),
            });
        }
    }

    let last: Vec<i64> = values.iter().map(|v| v.last_value).collect();
    let called: Vec<bool> = values.iter().map(|v| v.is_called).collect();
    let out_of_bounds = to
        .query(
            "SELECT w.s || '.' || w.n, w.v, q.seqmin, q.seqmax
               FROM unnest($1::text[], $2::text[], $3::int8[]) w(s, n, v)
               JOIN pg_namespace ns ON ns.nspname = w.s
               JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = w.n AND c.relkind = 'S'
               JOIN pg_sequence q ON q.seqrelid = c.oid
              WHERE w.v < q.seqmin OR w.v > q.seqmax",
            &[&schemas, &names, &last],
        )
        .await
        .ctx(to_side, "check the sequences' bounds")?;
    if !out_of_bounds.is_empty() {
        let list: Vec<String> = out_of_bounds
            .iter()
            .map(|r| {
                format!(
                    "{} is at {} on the {from_side} but allows only {}..{} on the {to_side}",
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, i64>(2),
                    r.get::<_, i64>(3)
                )
            })
            .collect();
        return Err(PgError::Refused(format!(
            "cannot copy the sequences: {}; make the sequences' MINVALUE/MAXVALUE the same on both sides",
            list.join("; ")
        )));
    }
    // One statement: one transaction, and one round trip while the writes wait.
    let row = to
        .query_one(
            "SELECT count(setval(c.oid, w.v, w.called))
               FROM unnest($1::text[], $2::text[], $3::int8[], $4::bool[]) w(s, n, v, called)
               JOIN pg_namespace ns ON ns.nspname = w.s
               JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = w.n AND c.relkind = 'S'",
            &[&schemas, &names, &last, &called],
        )
        .await
        .ctx(to_side, "set the sequences")?;
    let set: i64 = row.get(0);
    if set as usize != values.len() {
        return Err(PgError::Refused(format!(
            "set {set} of {} sequences on the {to_side}: some were dropped meanwhile; run the copy again",
            values.len()
        )));
    }
    Ok(values)
}
