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
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::codec::{self, Backend, Frame, Frontend};
use crate::proxy::{Gate, SessionCell, SessionView, Shared};
use crate::server::{build, BoxStream, ServerConn, ServerError};
use crate::state;

mod login;
mod moving;

use login::login;
use moving::remember;

/// How long a moved session's old server connection stays open, idle, before it is ended.
const OLD_CONNECTION_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a session that ends reads what the client still sends before closing.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

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
        self.linger().await;
        self.drop_standby();
        self.drop_bare();
        if let Some(live) = self.server.take() {
            live.into_conn().terminate().await;
        }
        result
    }

    /// Reads and drops what the client still sends after the proxy said goodbye, until it
    /// closes (or [`LINGER`] passes). Closing a socket with unread input makes the kernel
    /// answer with a reset, and a client that gets the reset before reading the FATAL error
    /// only learns that "the server closed the connection unexpectedly", not why.
    async fn linger(&mut self) {
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(LINGER, async {
            while let Ok(n) = self.client_rd.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    async fn pump(&mut self) -> Result<(), SessionError> {
        loop {
            let gate = *self.gate_rx.borrow_and_update();
            let idle = self.flow.idle() && self.to_server.is_empty();
            if gate.cut {
                let mut out = std::mem::take(&mut self.to_client);
                codec::error_response(
                    &mut out,
                    "FATAL",
                    "57P01",
                    "the cutover proxy is shutting down and this transaction outlasted proxy.shutdown_timeout; it was rolled back, connect again",
                );
                let _ = self.client_wr.write_all(&out).await;
                return Ok(());
            }
            if idle && gate.closing && self.cbuf.is_empty() {
                // The proxy is going away: at an idle point, never inside a transaction.
                let mut out = std::mem::take(&mut self.to_client);
                codec::error_response(
                    &mut out,
                    "FATAL",
                    "57P01",
                    "the cutover proxy is shutting down; connect again (the load balancer sends you to another instance)",
                );
                self.client_wr.write_all(&out).await?;
                return Ok(());
            }
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
                    let n = r?;
                    if n == 0 { return Ok(()); }
                    self.shared.metrics.client_bytes.inc_by(n as u64);
                }
                r = server.rd.read_buf(&mut server.buf), if read_server => {
                    let n = r.map_err(ServerError::from)?;
                    self.shared.metrics.server_bytes.inc_by(n as u64);
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
                if self.flow.tx == b'I' {
                    self.shared.metrics.transactions.inc();
                }
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
}
