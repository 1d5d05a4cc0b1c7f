//! Large objects (`lo_import`, `lo_create`): neither logical replication nor the trigger
//! capture carries them, since their pages live in the catalog `pg_largeobject`. They are
//! copied by comparison instead: every large object's MD5 on both sides, then each one
//! missing or different copied in chunks under the same OID (the rows that point at it hold
//! that OID), each one gone from the old side removed from the new, and the owner set to the
//! old side's owner where that role exists (the application must be able to write its large
//! objects after the switch).
//!
//! `db sync` copies them with the data; a switch copies what changed once before its pause
//! and again after the fence, when nothing writes the old primary any more. Finding what
//! changed reads every large object once on each side (the pages' `xmin` would say it
//! cheaper, but `pg_largeobject` is readable by superusers only): `check` says how much that
//! is, since the second pass is inside the pause.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::Client;

use crate::connect::ident;
use crate::error::{PgError, Side, SqlContext};

/// Bytes read and written per statement.
const CHUNK: i32 = 4 << 20;

/// What [`copy`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoCopy {
    /// Large objects on the old side.
    pub total: usize,
    /// Copied because they were missing or different.
    pub copied: usize,
    /// Removed from the new side because the old one no longer has them.
    pub removed: usize,
    pub bytes: i64,
}

impl cutover_core::engine::Outcome for LoCopy {
    fn summary(&self) -> String {
        format!(
            "{} of {} large objects copied ({} bytes), {} removed",
            self.copied, self.total, self.bytes, self.removed
        )
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Digest {
    md5: String,
    owner: String,
}

/// Every large object of this database: its MD5 and its owner.
async fn digests(client: &Client, side: Side) -> Result<BTreeMap<u32, Digest>, PgError> {
    let rows = client
        .query(
            "SELECT oid, md5(lo_get(oid)), pg_get_userbyid(lomowner)::text
               FROM pg_largeobject_metadata ORDER BY oid",
            &[],
        )
        .await
        .ctx(
            side,
            "read the large objects (their owner or a superuser may)",
        )?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                Digest {
                    md5: r.get(1),
                    owner: r.get(2),
                },
            )
        })
        .collect())
}

/// How many large objects there are, and the size of `pg_largeobject` (what a comparison
/// reads). Readable by every role.
pub async fn volume(client: &Client, side: Side) -> Result<(i64, i64), PgError> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_largeobject_metadata),
                    pg_total_relation_size('pg_largeobject')",
            &[],
        )
        .await
        .ctx(side, "measure the large objects")?;
    Ok((row.get(0), row.get(1)))
}

/// Makes the large objects of `to` those of `from`.
pub async fn copy(from: (&Client, Side), to: (&Client, Side)) -> Result<LoCopy, PgError> {
    let ((src, src_side), (dst, dst_side)) = (from, to);
    let (have, there) = tokio::try_join!(digests(src, src_side), digests(dst, dst_side))?;
    let mut out = LoCopy {
        total: have.len(),
        ..LoCopy::default()
    };
    if have.is_empty() && there.is_empty() {
        return Ok(out);
    }
    let roles: Vec<String> = dst
        .query("SELECT rolname::text FROM pg_roles", &[])
        .await
        .ctx(dst_side, "list roles")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (oid, digest) in &have {
        let same = there.get(oid);
        if same.is_some_and(|d| d.md5 == digest.md5) {
            if same.is_some_and(|d| d.owner != digest.owner) && roles.contains(&digest.owner) {
                set_owner(dst, dst_side, *oid, &digest.owner).await?;
            }
            continue;
        }
        out.bytes += copy_one(src, src_side, dst, dst_side, *oid).await?;
        out.copied += 1;
        if roles.contains(&digest.owner) {
            set_owner(dst, dst_side, *oid, &digest.owner).await?;
        }
    }
    for oid in there.keys().filter(|oid| !have.contains_key(oid)) {
        dst.execute("SELECT lo_unlink($1)", &[oid])
            .await
            .ctx(dst_side, &format!("remove large object {oid}"))?;
        out.removed += 1;
    }
    Ok(out)
}

/// Copies one large object in chunks; the first chunk creates it again (one statement, so
/// the old one is never gone without the new one there). Returns its size.
async fn copy_one(
    src: &Client,
    src_side: Side,
    dst: &Client,
    dst_side: Side,
    oid: u32,
) -> Result<i64, PgError> {
    let mut offset: i64 = 0;
    loop {
        let chunk: Vec<u8> = src
            .query_one("SELECT lo_get($1, $2, $3)", &[&oid, &offset, &CHUNK])
            .await
            .ctx(src_side, &format!("read large object {oid}"))?
            .get(0);
        if offset == 0 {
            dst.execute(
                "WITH gone AS (SELECT lo_unlink(oid) FROM pg_largeobject_metadata WHERE oid = $1)
                 SELECT lo_from_bytea($1, $2) FROM (SELECT count(*) FROM gone) g",
                &[&oid, &chunk],
            )
            .await
            .ctx(dst_side, &format!("write large object {oid}"))?;
        } else if !chunk.is_empty() {
            dst.execute("SELECT lo_put($1, $2, $3)", &[&oid, &offset, &chunk])
                .await
                .ctx(dst_side, &format!("write large object {oid}"))?;
        }
        offset += chunk.len() as i64;
        if chunk.len() < CHUNK as usize {
            return Ok(offset);
        }
    }
}

async fn set_owner(client: &Client, side: Side, oid: u32, owner: &str) -> Result<(), PgError> {
    client
        .batch_execute(&format!(
            "ALTER LARGE OBJECT {oid} OWNER TO {}",
            ident(owner)
        ))
        .await
        .ctx(side, &format!("give large object {oid} to {owner}"))
}
