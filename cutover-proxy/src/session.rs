//! One client session and the server connection it owns.
//!
//! After login the session is one loop over four directions (read client, read server,
//! write client, write server) with buffers in between, so a slow reader on one side never
//! stalls the other. Every client message that goes to the server is looked at only as far
//! as needed to know whether the session is *idle*:
//!
//! - `pending`: Query, FunctionCall and Sync messages sent and not yet answered by a
//!   ReadyForQuery (each gets exactly one, error or not);
//! - `unsynced`: extended-protocol messages sent since the last Sync (an implicit
//!   transaction may be open);
//! - `tx`: the transaction status of the last ReadyForQuery.
//!
//! Idle means none pending, nothing unsynced, status `I`. Only an idle session is held by a
//! pause or moved by a switch, so no request in flight is ever cut.
//!
//! ## Moving a session
//!
//! While paused and idle, a session checks its server connection with one query: the
//! settings changed with `SET` (`pg_settings` whose source is `session`), the role, the
//! prepared statements (protocol-level and SQL `PREPARE`), and state that cannot move:
//! LISTEN channels, advisory locks, WITH HOLD cursors, temporary tables. A session with such
//! state is *pinned*: it is not held, and a switch waits for it to end.
//!
//! The connection to the other backend is made ahead: `POST /prepare` has every session log
//! in there with the client's startup parameters before the pause, and plan a query on the
//! busiest tables so that the new server process has them cached ([`WARM`]). Once paused and
//! checked, the session gives that connection its state: the role and settings replayed,
//! every prepared statement re-prepared under its name. When the gate's epoch changes, an
//! idle session swaps to it (logging in then only if the early login failed), tells the
//! client about parameters whose values differ, and ends the old connection a little later
//! ([`OLD_CONNECTION_GRACE`]). The client sees only a slower next request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use cutover_core::plan::ClientAuth;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::codec::{self, Backend, Frame, Frontend, Startup};
use crate::proxy::{Gate, SessionCell, SessionView, Shared};
use crate::server::{self, build, BoxStream, ServerConn, ServerError};
use crate::state;

/// How long a moved session's old server connection stays open, idle, before it is ended.
const OLD_CONNECTION_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Above this many buffered bytes a direction stops reading until the other side catches up.
const HIGH_WATER: usize = 1 << 20;

pub(crate) async fn serve(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    match login(&shared, Box::new(tcp), peer).await {
        Ok(Some(mut session)) => {
            let result = session.run().await;
            if let Err(e) = &result {
                tracing::debug!("session {}: {e}", session.id);
                if matches!(e, SessionError::Server(_)) {
                    shared.record_server_error(false);
                }
            }
            shared.unregister(session.id, session.cancel_key);
        }
        Ok(None) => {}
        Err(e) => {
            tracing::debug!("client {peer}: {e}");
            if matches!(e, SessionError::Server(_)) {
                shared.record_server_error(true);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("client: {0}")]
    Client(String),
    #[error("server: {0}")]
    Server(#[from] ServerError),
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    #[error("client i/o: {0}")]
    Io(#[from] std::io::Error),
}

async fn read_more(stream: &mut BoxStream, buf: &mut BytesMut) -> Result<(), SessionError> {
    if stream.read_buf(buf).await? == 0 {
        return Err(SessionError::Client("closed the connection".into()));
    }
    Ok(())
}

async fn read_frame(stream: &mut BoxStream, buf: &mut BytesMut) -> Result<Frame, SessionError> {
    loop {
        if let Some(f) = codec::decode_frame(buf)? {
            return Ok(f);
        }
        read_more(stream, buf).await?;
    }
}

async fn fatal(stream: &mut BoxStream, code: &str, message: &str) -> Result<(), SessionError> {
    stream
        .write_all(&build(|b| codec::error_response(b, "FATAL", code, message)))
        .await?;
    let _ = stream.shutdown().await;
    Ok(())
}

/// Startup, TLS, client authentication and the server login. `None` when the connection
/// was a cancel request or the client went away.
async fn login(
    shared: &Arc<Shared>,
    mut stream: BoxStream,
    peer: SocketAddr,
) -> Result<Option<Session>, SessionError> {
    let mut buf = BytesMut::with_capacity(1024);
    let (version, params) = loop {
        let startup = loop {
            if let Some(s) = codec::decode_startup(&mut buf)? {
                break s;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(None);
            }
        };
        match startup {
            Startup::Ssl => match &shared.config.tls {
                Some(tls) if buf.is_empty() => {
                    stream.write_all(b"S").await?;
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                    stream = Box::new(acceptor.accept(stream).await?);
                }
                _ => stream.write_all(b"N").await?,
            },
            Startup::GssEnc => stream.write_all(b"N").await?,
            Startup::Cancel { pid, key } => {
                shared.cancel(pid, key).await;
                return Ok(None);
            }
            Startup::Params { version, params } => break (version, params),
        }
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(user_name) = get("user") else {
        fatal(&mut stream, "28000", "no user name in the startup message").await?;
        return Ok(None);
    };
    if get("replication").is_some_and(|v| v != "false" && v != "0" && v != "off") {
        fatal(&mut stream, "28000", "the cutover proxy does not carry replication connections; connect to the database directly").await?;
        return Ok(None);
    }
    let database = get("database").unwrap_or_else(|| user_name.clone());
    let config = &shared.config;
    if database != config.source.dbname && database != config.target.dbname {
        let msg = format!(
            "database \"{database}\" is not served by the cutover proxy; connect to \"{}\"",
            config.backend(shared.gate().active).dbname
        );
        fatal(&mut stream, "3D000", &msg).await?;
        return Ok(None);
    }
    let Some(user) = config.user(&user_name).cloned() else {
        let msg = format!(
            "role \"{user_name}\" is not known to the cutover proxy; add it to [[proxy.users]] in the plan"
        );
        fatal(&mut stream, "28000", &msg).await?;
        return Ok(None);
    };

    // Client authentication against the plan's user.
    let password = user.password.as_ref().map(|p| p.expose().to_string());
    let wrong = format!("password authentication failed for user \"{user_name}\"");
    match user.auth {
        ClientAuth::Trust => {}
        ClientAuth::Md5 => {
            let salt = crate::auth::md5_salt();
            stream
                .write_all(&build(|b| codec::auth_md5(b, salt)))
                .await?;
            let frame = read_frame(&mut stream, &mut buf).await?;
            let ok = frame.tag == b'p'
                && crate::auth::md5_check(
                    &user_name,
                    password.as_deref().unwrap_or(""),
                    salt,
                    frame.body(),
                );
            if !ok {
                fatal(&mut stream, "28P01", &wrong).await?;
                return Ok(None);
            }
        }
        ClientAuth::ScramSha256 => {
            stream
                .write_all(&build(|b| codec::auth_sasl(b, &["SCRAM-SHA-256"])))
                .await?;
            let mut scram = crate::auth::ScramServer::with_secret(
                shared.scram_secret(&user_name, password.as_deref().unwrap_or("")),
            );
            let first = read_frame(&mut stream, &mut buf).await?;
            let server_first = match scram.client_first(first.body()) {
                Ok(m) => m,
                Err(e) => {
                    fatal(&mut stream, "28000", &format!("SCRAM: {e}")).await?;
                    return Ok(None);
                }
            };
            stream
                .write_all(&build(|b| codec::auth_sasl_continue(b, &server_first)))
                .await?;
            let last = read_frame(&mut stream, &mut buf).await?;
            match scram.client_final(last.body()) {
                Ok(server_final) => {
                    stream
                        .write_all(&build(|b| codec::auth_sasl_final(b, &server_final)))
                        .await?
                }
                Err(crate::auth::AuthError::WrongPassword) => {
                    fatal(&mut stream, "28P01", &wrong).await?;
                    return Ok(None);
                }
                Err(e) => {
                    fatal(&mut stream, "28000", &format!("SCRAM: {e}")).await?;
                    return Ok(None);
                }
            }
        }
    }

    // A new session waits while the proxy is paused: it must start on the backend the
    // switch chooses.
    let mut gate_rx = shared.watch();
    let waited = Instant::now();
    let gate = *gate_rx
        .wait_for(|g| !g.paused)
        .await
        .map_err(|_| SessionError::Client("proxy stopping".into()))?;
    if waited.elapsed().as_millis() > 0 && gate.epoch > 0 {
        shared.record_hold(waited.elapsed());
    }
    // Protocol options (`_pq_.*`) were declined to the client above; the server never sees them.
    let startup: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "user" && k != "database" && !k.starts_with("_pq_."))
        .cloned()
        .collect();
    let conn = match server::connect(
        config.backend(gate.active),
        &user_name,
        user.password.as_ref(),
        &startup,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            fatal(&mut stream, e.code(), &e.to_string()).await?;
            return Ok(None);
        }
    };

    let mut out = BytesMut::new();
    let minor = version & 0xffff;
    let unknown: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.as_str())
        .collect();
    if minor > 0 || !unknown.is_empty() {
        let mut body = Vec::new();
        // The newest version the proxy speaks, as major << 16 | minor: 3.0.
        body.extend_from_slice(&codec::PROTOCOL_3.to_be_bytes());
        body.extend_from_slice(&(unknown.len() as i32).to_be_bytes());
        for k in &unknown {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
        }
        out.extend_from_slice(&Frame::new(b'v', &body).raw);
    }
    codec::auth_ok(&mut out);
    for (k, v) in &conn.params {
        codec::parameter_status(&mut out, k, v);
    }
    let id = shared.next_id();
    // The process id is the real one of the first server (so pg_backend_pid(), NOTIFY
    // senders and pg_terminate_backend agree with what the client was told); the secret is
    // the proxy's own, so a cancel request always comes through the proxy, which sends it
    // to the server the session is on at that moment.
    let cancel_key = (conn.pid, rand::random::<i32>());
    codec::backend_key_data(&mut out, cancel_key.0, cancel_key.1);
    codec::ready_for_query(&mut out, b'I');
    stream.write_all(&out).await?;

    let view = SessionView {
        id,
        user: user_name.clone(),
        client: peer.to_string(),
        backend: Some(gate.active),
        epoch: gate.epoch,
        server_pid: conn.pid,
        server_key: conn.key,
        busy: false,
        tx: 'I',
        held: false,
        inspected: false,
        pinned: None,
        prepared: 0,
        standby: false,
    };
    let cell = shared.register(view.clone(), cancel_key);
    let (crd, cwr) = tokio::io::split(stream);
    let reported = conn.params.clone();
    Ok(Some(Session {
        shared: shared.clone(),
        cell,
        id,
        cancel_key,
        user: user_name,
        password: user.password.clone(),
        startup,
        reported,
        client_rd: crd,
        client_wr: cwr,
        cbuf: buf,
        to_client: BytesMut::new(),
        server: Some(Live::from(conn)),
        to_server: BytesMut::new(),
        gate_rx,
        backend: gate.active,
        epoch: gate.epoch,
        flow: Flow::default(),
        prepared: Default::default(),
        inspection: None,
        standby: None,
        bare: None,
        held_since: None,
        last_view: view,
        moved_in_pause: false,
        server_said_fatal: false,
    }))
}

/// The server connection while the loop runs: split so both directions move at once.
struct Live {
    rd: ReadHalf<BoxStream>,
    wr: WriteHalf<BoxStream>,
    buf: BytesMut,
    pid: i32,
    key: i32,
}

impl Live {
    fn from(conn: ServerConn) -> Live {
        let (rd, wr) = tokio::io::split(conn.stream);
        Live {
            rd,
            wr,
            buf: conn.buf,
            pid: conn.pid,
            key: conn.key,
        }
    }
    fn into_conn(self) -> ServerConn {
        ServerConn {
            stream: self.rd.unsplit(self.wr),
            buf: self.buf,
            pid: self.pid,
            key: self.key,
            params: vec![],
            async_messages: vec![],
        }
    }
}

#[derive(Default)]
struct Flow {
    pending: u32,
    unsynced: bool,
    tx: u8,
}

impl Flow {
    fn idle(&self) -> bool {
        self.pending == 0 && !self.unsynced && (self.tx == b'I' || self.tx == 0)
    }
}

/// What a check of an idle session found.
#[derive(Clone)]
struct Inspection {
    settings: Vec<(String, String)>,
    role: Option<String>,
    /// (name, statement, parameter type names, prepared with SQL PREPARE)
    statements: Vec<(String, String, Vec<String>, bool)>,
    pinned: Option<String>,
}

struct Session {
    shared: Arc<Shared>,
    cell: Arc<SessionCell>,
    id: u64,
    cancel_key: (i32, i32),
    user: String,
    password: Option<cutover_core::Secret>,
    /// The client's startup parameters, without user and database.
    startup: Vec<(String, String)>,
    /// ParameterStatus values the client has been told.
    reported: Vec<(String, String)>,
    client_rd: ReadHalf<BoxStream>,
    client_wr: WriteHalf<BoxStream>,
    cbuf: BytesMut,
    to_client: BytesMut,
    server: Option<Live>,
    to_server: BytesMut,
    gate_rx: tokio::sync::watch::Receiver<Gate>,
    backend: state::Backend,
    epoch: u64,
    flow: Flow,
    prepared: std::collections::HashSet<String>,
    inspection: Option<Inspection>,
    /// A connection to the other backend, opened and given this session's state while
    /// paused, so that a switch only swaps connections.
    standby: Option<(
        state::Backend,
        tokio::task::JoinHandle<Result<ServerConn, ServerError>>,
    )>,
    /// A bare login to the backend a coming switch goes to, made before the pause.
    bare: Option<(state::Backend, Bare)>,
    held_since: Option<Instant>,
    last_view: SessionView,
    /// Moved during this pause: no new check until the resume (a check now would only
    /// delay the switch; a second switch in the same pause checks when it moves).
    moved_in_pause: bool,
    /// The last error the server sent was FATAL: it is closing, and the client knows why.
    server_said_fatal: bool,
}

/// A login made ahead of a switch: under way, or done.
enum Bare {
    Pending(tokio::task::JoinHandle<Result<ServerConn, ServerError>>),
    Ready(Result<ServerConn, ServerError>),
}

enum Step {
    Go,
    End,
}

impl Session {
    async fn run(&mut self) -> Result<(), SessionError> {
        let result = self.pump().await;
        // Tell the client why, when the server side failed, unless the server said so itself
        // (a FATAL error it sent before closing, already forwarded): one error, not two.
        if let (Err(SessionError::Server(se)), false) = (&result, self.server_said_fatal) {
            let msg = format!("the cutover proxy lost the database connection: {se}");
            let mut out = std::mem::take(&mut self.to_client);
            codec::error_response(&mut out, "FATAL", se.code(), &msg);
            let _ = self.client_wr.write_all(&out).await;
        }
        let _ = self.client_wr.shutdown().await;
        self.drop_standby();
        self.drop_bare();
        if let Some(live) = self.server.take() {
            live.into_conn().terminate().await;
        }
        result
    }

    async fn pump(&mut self) -> Result<(), SessionError> {
        loop {
            let gate = *self.gate_rx.borrow_and_update();
            let idle = self.flow.idle() && self.to_server.is_empty();
            if idle && gate.epoch != self.epoch {
                self.migrate(gate).await?;
                continue;
            }
            match gate.prepare {
                Some(b) if b != self.backend && self.bare.is_none() && self.standby.is_none() => {
                    self.start_bare(b)
                }
                None if !gate.paused => self.drop_bare(),
                _ => {}
            }
            if !gate.paused {
                self.inspection = None;
                self.moved_in_pause = false;
                self.drop_standby();
            } else if idle && self.inspection.is_none() && !self.moved_in_pause {
                self.inspect().await?;
                self.start_standby(gate.active.other());
            }
            let pinned = self.inspection.as_ref().is_some_and(|i| i.pinned.is_some());
            let hold = gate.paused && self.flow.idle() && !pinned;
            if hold {
                if !self.cbuf.is_empty() && self.held_since.is_none() {
                    self.held_since = Some(Instant::now());
                }
            } else {
                if let Some(since) = self.held_since.take() {
                    self.shared.record_hold(since.elapsed());
                }
                if let Step::End = self.forward_client()? {
                    self.flush_server().await?;
                    return Ok(());
                }
            }
            self.publish(hold && self.held_since.is_some());

            let server = self.server.as_mut().expect("a live server connection");
            let read_client = self.cbuf.len() < HIGH_WATER && self.to_server.len() < HIGH_WATER;
            let read_server = self.to_client.len() < HIGH_WATER;
            let bare_pending = matches!(self.bare, Some((_, Bare::Pending(_))));
            tokio::select! {
                r = self.gate_rx.changed() => {
                    if r.is_err() { return Ok(()); }
                }
                r = async {
                    match &mut self.bare {
                        Some((_, Bare::Pending(h))) => h.await,
                        _ => std::future::pending().await,
                    }
                }, if bare_pending => {
                    let r = r.unwrap_or_else(|e| Err(ServerError::Protocol(e.to_string())));
                    if let Some((b, _)) = self.bare.take() {
                        self.bare = Some((b, Bare::Ready(r)));
                    }
                }
                r = self.client_rd.read_buf(&mut self.cbuf), if read_client => {
                    if r? == 0 { return Ok(()); }
                }
                r = server.rd.read_buf(&mut server.buf), if read_server => {
                    let n = r.map_err(ServerError::from)?;
                    let closed = n == 0;
                    self.forward_server()?;
                    if closed {
                        self.client_wr.write_all(&self.to_client).await?;
                        return Err(ServerError::Closed.into());
                    }
                }
                r = self.client_wr.write(&self.to_client), if !self.to_client.is_empty() => {
                    let n = r?;
                    let _ = self.to_client.split_to(n);
                }
                r = server.wr.write(&self.to_server), if !self.to_server.is_empty() => {
                    let n = r.map_err(ServerError::from)?;
                    let _ = self.to_server.split_to(n);
                }
            }
        }
    }

    async fn flush_server(&mut self) -> Result<(), SessionError> {
        if let Some(s) = self.server.as_mut() {
            s.wr.write_all(&self.to_server)
                .await
                .map_err(ServerError::from)?;
            self.to_server.clear();
        }
        Ok(())
    }

    /// Moves every whole client message in the buffer to the server's queue, noting what
    /// it means for idleness. Stops at a Terminate.
    fn forward_client(&mut self) -> Result<Step, SessionError> {
        while let Some(frame) = codec::decode_frame(&mut self.cbuf)? {
            match frame.tag {
                b'Q' | b'F' | b'S' => {
                    self.flow.pending += 1;
                    self.flow.unsynced = false;
                }
                b'H' | b'd' | b'c' | b'f' => {}
                b'X' => return Ok(Step::End),
                b'P' => {
                    if let Ok(Frontend::Parse { name, .. }) = codec::parse_frontend(&frame) {
                        if !name.is_empty() {
                            self.prepared.insert(name.to_string());
                        }
                    }
                    self.flow.unsynced = true;
                }
                b'C' => {
                    if let Ok(Frontend::Close { kind: b'S', name }) = codec::parse_frontend(&frame)
                    {
                        self.prepared.remove(name);
                    }
                    self.flow.unsynced = true;
                }
                _ => self.flow.unsynced = true,
            }
            if self.inspection.take().is_some() {
                self.drop_standby();
            }
            self.to_server.extend_from_slice(&frame.raw);
        }
        Ok(Step::Go)
    }

    /// Moves every whole server message to the client's queue, following ReadyForQuery.
    fn forward_server(&mut self) -> Result<(), SessionError> {
        let server = self.server.as_mut().expect("a live server connection");
        while let Some(frame) = codec::decode_frame(&mut server.buf)
            .map_err(|e| ServerError::Protocol(e.to_string()))?
        {
            if frame.tag == b'E' {
                if let Ok(Backend::Error(f)) = codec::parse_backend(&frame) {
                    self.server_said_fatal = f.severity == "FATAL" || f.severity == "PANIC";
                }
            }
            if frame.tag == b'Z' {
                self.flow.pending = self.flow.pending.saturating_sub(1);
                self.flow.tx = frame.body().first().copied().unwrap_or(b'I');
            } else if frame.tag == b'S' {
                if let Ok(Backend::ParameterStatus { name, value }) = codec::parse_backend(&frame) {
                    remember(&mut self.reported, name, value);
                }
            }
            self.to_client.extend_from_slice(&frame.raw);
        }
        Ok(())
    }

    /// Shares this session's state with the admin API when it changed.
    fn publish(&mut self, held: bool) {
        let (pid, key) = self
            .server
            .as_ref()
            .map(|s| (s.pid, s.key))
            .unwrap_or((0, 0));
        let tx = if self.flow.tx == 0 {
            'I'
        } else {
            self.flow.tx as char
        };
        let pinned = self.inspection.as_ref().and_then(|i| i.pinned.as_deref());
        let ready = matches!(self.bare, Some((_, Bare::Ready(_)))) || self.standby.is_some();
        let v = &self.last_view;
        if v.backend == Some(self.backend)
            && v.epoch == self.epoch
            && v.server_pid == pid
            && v.server_key == key
            && v.busy != self.flow.idle()
            && v.tx == tx
            && v.held == held
            && v.inspected == self.inspection.is_some()
            && v.pinned.as_deref() == pinned
            && v.prepared == self.prepared.len()
            && v.standby == ready
        {
            return;
        }
        let view = SessionView {
            backend: Some(self.backend),
            epoch: self.epoch,
            server_pid: pid,
            server_key: key,
            busy: !self.flow.idle(),
            tx,
            held,
            inspected: self.inspection.is_some(),
            pinned: pinned.map(str::to_string),
            prepared: self.prepared.len(),
            standby: ready,
            ..self.last_view.clone()
        };
        *self.cell.view.lock().unwrap() = view.clone();
        self.last_view = view;
        self.shared.changed.notify_waiters();
    }

    /// Reads what the session holds on its server: run only while idle.
    async fn inspect(&mut self) -> Result<(), SessionError> {
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
    fn take_async(&mut self, conn: &mut ServerConn) {
        for frame in conn.async_messages.drain(..) {
            if let Ok(Backend::ParameterStatus { name, value }) = codec::parse_backend(&frame) {
                remember(&mut self.reported, name, value);
            }
            self.to_client.extend_from_slice(&frame.raw);
        }
    }

    /// Opens the other backend's connection in the background while paused.
    fn start_standby(&mut self, backend: state::Backend) {
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
    fn start_bare(&mut self, backend: state::Backend) {
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

    fn drop_bare(&mut self) {
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

    fn drop_standby(&mut self) {
        if let Some((_, handle)) = self.standby.take() {
            tokio::spawn(async move {
                if let Ok(Ok(conn)) = handle.await {
                    conn.terminate().await;
                }
            });
        }
    }

    /// Moves this idle session to the gate's backend with its state.
    async fn migrate(&mut self, gate: Gate) -> Result<(), SessionError> {
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
            Some((backend, handle)) if backend == gate.active => match handle.await {
                Ok(Ok(conn)) => Some(conn),
                Ok(Err(e)) => {
                    tracing::debug!(
                        "session {}: standby connection failed ({e}); trying again",
                        self.id
                    );
                    None
                }
                Err(_) => None,
            },
            Some((_, handle)) => {
                handle.abort();
                None
            }
            None => None,
        };
        let mut conn = match ready {
            Some(c) => c,
            None => {
                let url = self.shared.config.backend(gate.active).clone();
                let conn = server::connect(&url, &self.user, self.password.as_ref(), &self.startup)
                    .await?;
                give_state(conn, &inspection).await?
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

/// Logs in to `url` and gives the new connection the session's state: role, settings,
/// SQL-prepared statements, then every protocol-level prepared statement under its name.
/// Replays a session's state on a fresh connection: role, settings, SQL-prepared
/// statements, then every protocol-level prepared statement under its name.
async fn give_state(
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

fn remember(list: &mut Vec<(String, String)>, name: &str, value: &str) {
    match list.iter_mut().find(|(n, _)| n == name) {
        Some(entry) => entry.1 = value.to_string(),
        None => list.push((name.to_string(), value.to_string())),
    }
}

/// A SQL string literal.
fn literal(v: &str) -> String {
    if v.contains('\\') {
        format!("E'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", v.replace('\'', "''"))
    }
}

/// What an idle session holds, in one row.
const INSPECT: &str = "SELECT
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
const WARM: &str = "DO $warm$
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
