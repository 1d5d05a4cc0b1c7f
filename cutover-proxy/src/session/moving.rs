//! Moving a session: the check of an idle session's state, the connection to the other
//! server made (and warmed) before the pause, and the move to it with settings, role and
//! prepared statements.

use crate::codec::{self, Backend};
use crate::proxy::Gate;
use crate::server::{self, ServerConn, ServerError};
use crate::state;
use bytes::BytesMut;

use super::*;

impl Session {
    /// Reads what the session holds on its server: run only while idle.
    pub(super) async fn inspect(&mut self) -> Result<(), SessionError> {
        let live = self.server.take().expect("a live server connection");
        let mut conn = live.into_conn();
        let result = conn.simple_query(INSPECT).await;
        self.take_async(&mut conn);
        self.server = Some(Live::from(conn));
        let rows = result?;
        let row = rows
            .first()
            .ok_or_else(|| ServerError::Protocol("the session check returned no row".into()))?;
        let col = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let settings: Vec<(String, String)> = serde_json::from_str(&col(0))
            .map_err(|e| ServerError::Protocol(format!("session settings: {e}")))?;
        let statements: Vec<(String, String, Vec<String>, bool)> = serde_json::from_str(&col(1))
            .map_err(|e| ServerError::Protocol(format!("prepared statements: {e}")))?;
        let (current, session_user) = (col(2), col(3));
        let mut pins = vec![];
        for (i, what) in [
            (4, "LISTEN channels"),
            (5, "advisory locks"),
            (6, "WITH HOLD cursors"),
            (7, "temporary tables"),
        ] {
            if col(i) != "0" && !col(i).is_empty() {
                pins.push(what);
            }
        }
        self.inspection = Some(Inspection {
            settings,
            role: (current != session_user).then_some(current),
            statements,
            pinned: (!pins.is_empty()).then(|| pins.join(", ")),
        });
        Ok(())
    }

    /// Messages the server sent on its own during a check (notices, parameter changes) go
    /// on to the client.
    pub(super) fn take_async(&mut self, conn: &mut ServerConn) {
        for frame in conn.async_messages.drain(..) {
            if let Ok(Backend::ParameterStatus { name, value }) = codec::parse_backend(&frame) {
                remember(&mut self.reported, name, value);
            }
            self.to_client.extend_from_slice(&frame.raw);
        }
    }

    /// Opens the other backend's connection in the background while paused.
    pub(super) fn start_standby(&mut self, backend: state::Backend) {
        let Some(inspection) = self.inspection.clone() else {
            return;
        };
        if inspection.pinned.is_some() {
            return;
        }
        self.drop_standby();
        let url = self.shared.config.backend(backend).clone();
        let (user, password, startup) = (
            self.user.clone(),
            self.password.clone(),
            self.startup.clone(),
        );
        let bare = match self.bare.take() {
            Some((b, bare)) if b == backend => Some(bare),
            Some((b, other)) => {
                self.bare = Some((b, other));
                self.drop_bare();
                None
            }
            None => None,
        };
        let handle = tokio::spawn(async move {
            let ready = match bare {
                Some(Bare::Pending(h)) => h.await.ok().and_then(Result::ok),
                Some(Bare::Ready(r)) => r.ok(),
                None => None,
            };
            let conn = match ready {
                Some(c) => c,
                None => server::connect(&url, &user, password.as_ref(), &startup).await?,
            };
            give_state(conn, &inspection).await
        });
        self.standby = Some((backend, handle));
    }

    /// Logs in to `backend` in the background, before any pause.
    pub(super) fn start_bare(&mut self, backend: state::Backend) {
        let url = self.shared.config.backend(backend).clone();
        let (user, password, startup) = (
            self.user.clone(),
            self.password.clone(),
            self.startup.clone(),
        );
        let handle = tokio::spawn(async move {
            let mut conn = server::connect(&url, &user, password.as_ref(), &startup).await?;
            // Best effort: a failed warm-up leaves a connection that is only colder.
            if let Err(e) = conn.simple_query(WARM).await {
                tracing::debug!("warming a connection to the {backend}: {e}");
            }
            conn.async_messages.clear();
            Ok(conn)
        });
        self.bare = Some((backend, Bare::Pending(handle)));
    }

    pub(super) fn drop_bare(&mut self) {
        match self.bare.take() {
            Some((_, Bare::Pending(handle))) => {
                tokio::spawn(async move {
                    if let Ok(Ok(conn)) = handle.await {
                        conn.terminate().await;
                    }
                });
            }
            Some((_, Bare::Ready(Ok(conn)))) => {
                tokio::spawn(conn.terminate());
            }
            _ => {}
        }
    }

    pub(super) fn drop_standby(&mut self) {
        if let Some((_, handle)) = self.standby.take() {
            tokio::spawn(async move {
                if let Ok(Ok(conn)) = handle.await {
                    conn.terminate().await;
                }
            });
        }
    }

    /// Moves this idle session to the gate's backend with its state.
    pub(super) async fn migrate(&mut self, gate: Gate) -> Result<(), SessionError> {
        if self.inspection.is_none() {
            self.inspect().await?;
        }
        let inspection = self.inspection.take().expect("inspected");
        if let Some(p) = &inspection.pinned {
            // Never silently dropped: a session whose state cannot move ends here, loudly.
            let msg = format!("the cutover proxy moved to another database and this session holds {p}, which cannot move; reconnect");
            codec::error_response(&mut self.to_client, "FATAL", "57P01", &msg);
            return Err(SessionError::Client(msg));
        }
        let ready = match self.standby.take() {
            // A login made ahead that hangs (the path cut while it was under way) is not
            // waited for longer than a login of its own.
            Some((backend, mut handle)) if backend == gate.active => {
                match tokio::time::timeout(LOGIN_TIMEOUT, &mut handle).await {
                    Ok(Ok(Ok(conn))) => Some(conn),
                    Ok(Ok(Err(e))) => {
                        tracing::debug!(
                            "session {}: standby connection failed ({e}); trying again",
                            self.id
                        );
                        None
                    }
                    Ok(Err(_)) => None,
                    Err(_) => {
                        handle.abort();
                        None
                    }
                }
            }
            Some((_, handle)) => {
                handle.abort();
                None
            }
            None => None,
        };
        let mut conn = match ready {
            Some(c) => c,
            None => {
                let login = Login {
                    id: self.id,
                    url: self.shared.config.backend(gate.active),
                    user: &self.user,
                    password: self.password.as_ref(),
                    startup: &self.startup,
                };
                login.after_switch(gate.active, &inspection).await?
            }
        };
        // Tell the client about parameters whose values changed.
        for (k, v) in conn.params.clone() {
            if self.reported.iter().any(|(n, old)| n == &k && old != &v) {
                codec::parameter_status(&mut self.to_client, &k, &v);
                remember(&mut self.reported, &k, &v);
            }
        }
        self.take_async(&mut conn);
        let old = self.server.replace(Live::from(conn));
        if let Some(old) = old {
            // Ended a little later: every session moves at the same moment, and the old
            // server's processes exiting together would compete for the CPUs with the
            // first transactions on the new one.
            let conn = old.into_conn();
            tokio::spawn(async move {
                tokio::time::sleep(OLD_CONNECTION_GRACE).await;
                conn.terminate().await;
            });
        }
        self.backend = gate.active;
        self.epoch = gate.epoch;
        self.flow = Flow::default();
        self.inspection = None;
        self.moved_in_pause = true;
        self.publish(false);
        Ok(())
    }
}

/// How long a session moved by a switch waits for the new backend while it cannot be
/// reached (its client's next request waits with it), and how long one login may take.
const MOVE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
const LOGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a session logs in with (the session itself holds its client's stream, which a
/// future that must be `Send` cannot borrow).
struct Login<'a> {
    id: u64,
    url: &'a cutover_core::ConnString,
    user: &'a str,
    password: Option<&'a cutover_core::Secret>,
    startup: &'a [(String, String)],
}

impl Login<'_> {
    /// Logs in to `to`, where a switch moved the proxy, with the session's state. After the
    /// point of no return there is nowhere else to go: while `to` cannot be reached (the
    /// path cut, a login that hangs) the session waits and tries again, for [`MOVE_WAIT`].
    /// A login the server refuses is not waited for.
    async fn after_switch(
        &self,
        to: state::Backend,
        inspection: &Inspection,
    ) -> Result<ServerConn, SessionError> {
        let url = self.url;
        let started = Instant::now();
        let mut delay = std::time::Duration::from_millis(100);
        let mut failed = 0u32;
        loop {
            let attempt = tokio::time::timeout(LOGIN_TIMEOUT, async {
                let conn = server::connect(url, self.user, self.password, self.startup).await?;
                give_state(conn, inspection).await
            })
            .await;
            let why = match attempt {
                Ok(Ok(conn)) => {
                    if failed > 0 {
                        // At the level of the warnings it ends.
                        tracing::warn!(
                            "session {}: reached the {to} after {:.1}s",
                            self.id,
                            started.elapsed().as_secs_f64()
                        );
                    }
                    return Ok(conn);
                }
                Ok(Err(e @ ServerError::Server(_))) => return Err(e.into()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!(
                    "the login to {} did not finish in {}s",
                    url.location(),
                    LOGIN_TIMEOUT.as_secs()
                ),
            };
            if started.elapsed() >= MOVE_WAIT {
                return Err(ServerError::Connect {
                    location: url.location(),
                    message: format!("{why}; waited {}s", MOVE_WAIT.as_secs()),
                }
                .into());
            }
            failed += 1;
            tracing::warn!(
                "session {}: cannot reach the {to} yet ({why}); trying again",
                self.id
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(1));
        }
    }
}

/// Logs in to `url` and gives the new connection the session's state: role, settings,
/// SQL-prepared statements, then every protocol-level prepared statement under its name.
/// Replays a session's state on a fresh connection: role, settings, SQL-prepared
/// statements, then every protocol-level prepared statement under its name.
pub(super) async fn give_state(
    mut conn: ServerConn,
    inspection: &Inspection,
) -> Result<ServerConn, ServerError> {
    let mut replay = String::new();
    if let Some(role) = &inspection.role {
        replay.push_str(&format!(
            "SELECT set_config('role', {}, false);",
            literal(role)
        ));
    }
    for (name, value) in &inspection.settings {
        replay.push_str(&format!(
            "SELECT set_config({}, {}, false);",
            literal(name),
            literal(value)
        ));
    }
    for (_, statement, _, from_sql) in &inspection.statements {
        if *from_sql {
            replay.push_str(statement.trim_end_matches(';'));
            replay.push(';');
        }
    }
    if !replay.is_empty() {
        conn.simple_query(&replay).await?;
    }
    let protocol: Vec<_> = inspection.statements.iter().filter(|s| !s.3).collect();
    if !protocol.is_empty() {
        let mut names: Vec<&String> = protocol.iter().flat_map(|s| s.2.iter()).collect();
        names.sort();
        names.dedup();
        let mut oids = std::collections::HashMap::new();
        if !names.is_empty() {
            let list = names
                .iter()
                .map(|n| literal(n))
                .collect::<Vec<_>>()
                .join(",");
            let rows = conn
                .simple_query(&format!(
                    "SELECT t, t::regtype::oid::text FROM unnest(ARRAY[{list}]::text[]) t"
                ))
                .await?;
            for r in rows {
                if let (Some(Some(n)), Some(Some(o))) = (r.first(), r.get(1)) {
                    oids.insert(n.clone(), o.parse::<u32>().unwrap_or(0));
                }
            }
        }
        let mut out = BytesMut::new();
        for (name, statement, types, _) in &protocol {
            let t: Vec<u32> = types
                .iter()
                .map(|n| oids.get(n).copied().unwrap_or(0))
                .collect();
            codec::parse(&mut out, name, statement, &t);
        }
        codec::sync(&mut out);
        conn.send(&out).await?;
        conn.until_ready().await?;
    }
    Ok(conn)
}

pub(super) fn remember(list: &mut Vec<(String, String)>, name: &str, value: &str) {
    match list.iter_mut().find(|(n, _)| n == name) {
        Some(entry) => entry.1 = value.to_string(),
        None => list.push((name.to_string(), value.to_string())),
    }
}

/// A SQL string literal (libpq's `PQescapeLiteral`, as postgres-protocol writes it).
pub(super) fn literal(v: &str) -> String {
    postgres_protocol::escape::escape_literal(v)
}

/// What an idle session holds, in one row.
pub(super) const INSPECT: &str = "SELECT
  (SELECT coalesce(json_agg(json_build_array(name, setting)), '[]')::text
     FROM pg_catalog.pg_settings WHERE source = 'session' AND name NOT IN ('role', 'session_authorization')),
  (SELECT coalesce(json_agg(json_build_array(name, statement, parameter_types::text[], from_sql)), '[]')::text
     FROM pg_catalog.pg_prepared_statements),
  current_user::text, session_user::text,
  (SELECT count(*) FROM pg_catalog.pg_listening_channels()),
  (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
  (SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable),
  (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema())";

/// Run on a login made ahead of a switch, before the pause: plans (without running) a query
/// on each of the backend's busiest tables, so that the server process has their catalog
/// entries and indexes cached before the first transaction after the switch arrives. A
/// fresh server process otherwise pays for that on its first statements, and all the
/// sessions released at once pay together. Bounded: 50 tables, a short lock timeout (a
/// table locked by DDL is skipped, not waited for), tables the role may read.
pub(super) const WARM: &str = "DO $warm$
DECLARE r record;
BEGIN
  PERFORM pg_catalog.set_config('lock_timeout', '50ms', true);
  FOR r IN SELECT s.relid::regclass::text AS t FROM pg_catalog.pg_stat_user_tables s
            WHERE pg_catalog.has_table_privilege(s.relid, 'SELECT')
            ORDER BY coalesce(s.seq_scan, 0) + coalesce(s.idx_scan, 0) + s.n_tup_ins + s.n_tup_upd + s.n_tup_del DESC
            LIMIT 50
  LOOP
    BEGIN
      EXECUTE 'EXPLAIN SELECT * FROM ' || r.t;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
  END LOOP;
END $warm$";
