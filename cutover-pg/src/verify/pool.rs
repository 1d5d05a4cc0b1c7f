//! Connection pairs, one per range being checked.

use crate::connect::connect;
use crate::error::{PgError, Side, SqlContext};
use cutover_core::ConnString;
use std::sync::Mutex;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::Client;

use super::*;

// ---------------------------------------------------------------------------------------
// Connections: `parallel` pairs, one pair per range being checked.

pub(super) struct Conn {
    pub(super) source: Client,
    pub(super) target: Client,
}

impl Conn {
    pub(super) async fn open(source: &ConnString, target: &ConnString) -> Result<Conn, PgError> {
        let (s, t) =
            tokio::try_join!(connect(source, Side::Source), connect(target, Side::Target))?;
        let context = "set up the verification session";
        tokio::try_join!(
            async { s.batch_execute(SESSION).await.ctx(Side::Source, context) },
            async { t.batch_execute(SESSION).await.ctx(Side::Target, context) },
        )?;
        Ok(Conn {
            source: s,
            target: t,
        })
    }

    pub(super) fn client(&self, side: Side) -> &Client {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }
}

pub(super) struct Pool {
    pub(super) idle: Mutex<Vec<Conn>>,
    pub(super) permits: Semaphore,
}

impl Pool {
    pub(super) async fn open(
        source: &ConnString,
        target: &ConnString,
        n: usize,
    ) -> Result<Pool, PgError> {
        let conns =
            futures_util::future::try_join_all((0..n).map(|_| Conn::open(source, target))).await?;
        Ok(Pool {
            permits: Semaphore::new(conns.len()),
            idle: Mutex::new(conns),
        })
    }

    pub(super) async fn get(&self) -> Lease<'_> {
        let permit = self
            .permits
            .acquire()
            .await
            .expect("the pool's semaphore is never closed");
        let conn = self
            .idle
            .lock()
            .expect("pool lock")
            .pop()
            .expect("a permit stands for an idle pair");
        Lease {
            pool: self,
            conn: Some(conn),
            _permit: permit,
        }
    }
}

/// A connection pair on loan; goes back to the pool when dropped.
pub(super) struct Lease<'a> {
    pub(super) pool: &'a Pool,
    pub(super) conn: Option<Conn>,
    pub(super) _permit: SemaphorePermit<'a>,
}

impl std::ops::Deref for Lease<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.idle.lock().expect("pool lock").push(conn);
        }
    }
}
