//! Connections from the proxy to a database server.
//!
//! The proxy speaks the wire protocol itself, so it logs in itself: TLS as the backend URL's
//! `sslmode` asks (the same rules as every other connection cutover makes), then the
//! startup message with the client's own parameters, then whatever authentication the
//! server asks for (SCRAM-SHA-256, md5, cleartext) with the credentials of the plan.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use cutover_core::{ConnString, Secret, SslMode};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::codec::{self, Auth, Backend, ErrorFields, Frame};

/// A byte stream: plain TCP or TLS, on either side of the proxy.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
pub type BoxStream = Box<dyn Stream>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a server connection failed. Never holds a password.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot reach the database at {location}: {message}")]
    Connect { location: String, message: String },
    /// The server answered with an error (wrong password, no such database, too many clients).
    #[error("{}", .0.message)]
    Server(ErrorFields),
    #[error("protocol error from the database: {0}")]
    Protocol(String),
    #[error("the database closed the connection")]
    Closed,
}

impl ServerError {
    /// The SQLSTATE to hand the client for this failure.
    pub fn code(&self) -> &str {
        match self {
            ServerError::Server(f) => &f.code,
            ServerError::Connect { .. } | ServerError::Closed => "08006",
            ServerError::Protocol(_) => "08P01",
        }
    }
}

impl From<std::io::Error> for ServerError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ServerError::Closed
        } else {
            ServerError::Protocol(e.to_string())
        }
    }
}

impl From<codec::CodecError> for ServerError {
    fn from(e: codec::CodecError) -> Self {
        ServerError::Protocol(e.to_string())
    }
}

/// One message (or several) encoded into a fresh buffer.
pub fn build(f: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut b = BytesMut::new();
    f(&mut b);
    b
}

/// A logged-in server connection, ready for queries.
pub struct ServerConn {
    pub stream: BoxStream,
    /// Bytes read from the server and not yet consumed.
    pub buf: BytesMut,
    pub pid: i32,
    pub key: i32,
    /// ParameterStatus values the server reported at login, in order.
    pub params: Vec<(String, String)>,
    /// Messages the server sent on its own (notices, notifications, parameter changes)
    /// while the proxy ran its own queries; they belong to the client.
    pub async_messages: Vec<Frame>,
}

/// Opens the byte stream to `backend`, with TLS as its sslmode asks.
pub async fn open_stream(backend: &ConnString) -> Result<BoxStream, ServerError> {
    let location = backend.location();
    let fail = |message: String| ServerError::Connect {
        location: location.clone(),
        message,
    };
    let timeout = backend.connect_timeout.unwrap_or(CONNECT_TIMEOUT);
    let mut tcp = tokio::time::timeout(
        timeout,
        TcpStream::connect((backend.host.as_str(), backend.port)),
    )
    .await
    .map_err(|_| fail(format!("timed out after {}s", timeout.as_secs())))?
    .map_err(|e| fail(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    if backend.sslmode == SslMode::Disable {
        return Ok(Box::new(tcp));
    }
    tcp.write_all(&build(codec::ssl_request))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(|e| fail(e.to_string()))?;
    match answer[0] {
        b'S' => {
            let config = cutover_core::tls::client_config(backend).map_err(&fail)?;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let name = ServerName::try_from(backend.host.clone())
                .map_err(|e| fail(format!("host name {}: {e}", backend.host)))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| fail(format!("TLS: {e}")))?;
            Ok(Box::new(tls))
        }
        b'N' if backend.sslmode == SslMode::Prefer => Ok(Box::new(tcp)),
        b'N' => Err(fail(format!(
            "the server does not accept TLS, and sslmode={} requires it",
            backend.sslmode.as_str()
        ))),
        other => Err(fail(format!(
            "unexpected answer {other:#x} to the TLS request"
        ))),
    }
}

/// Logs in to `backend` as `user` and returns the connection once the server is ready for
/// queries. `startup` carries the client's own startup parameters (application_name,
/// client_encoding, DateStyle, options...); user and database come from the arguments.
pub async fn connect(
    backend: &ConnString,
    user: &str,
    password: Option<&Secret>,
    startup: &[(String, String)],
) -> Result<ServerConn, ServerError> {
    let mut stream = open_stream(backend).await?;
    let mut params: Vec<(String, String)> = vec![
        ("user".into(), user.into()),
        ("database".into(), backend.dbname.clone()),
    ];
    params.extend(
        startup
            .iter()
            .filter(|(k, _)| k != "user" && k != "database" && k != "replication")
            .cloned(),
    );
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    stream
        .write_all(&build(|b| codec::startup_message(b, &pairs)))
        .await?;
    let mut conn = ServerConn {
        stream,
        buf: BytesMut::with_capacity(8192),
        pid: 0,
        key: 0,
        params: vec![],
        async_messages: vec![],
    };
    let mut scram: Option<ScramSha256> = None;
    loop {
        let frame = conn.read_frame().await?;
        match codec::parse_backend(&frame)? {
            Backend::Auth(Auth::Ok) => {}
            Backend::Auth(Auth::Cleartext) => {
                let pw = need_password(password)?;
                let mut body = pw.expose().as_bytes().to_vec();
                body.push(0);
                conn.send(&build(|b| codec::password(b, &body))).await?;
            }
            Backend::Auth(Auth::Md5 { salt }) => {
                let pw = need_password(password)?;
                let hash =
                    postgres_protocol::authentication::md5_hash(user.as_bytes(), pw.expose().as_bytes(), salt);
                let mut body = hash.into_bytes();
                body.push(0);
                conn.send(&build(|b| codec::password(b, &body))).await?;
            }
            Backend::Auth(Auth::Sasl { mechanisms }) => {
                if !mechanisms.contains(&"SCRAM-SHA-256") {
                    return Err(ServerError::Protocol(format!(
                        "the server offers SASL mechanisms {mechanisms:?}; cutover speaks SCRAM-SHA-256"
                    )));
                }
                let pw = need_password(password)?;
                let s = ScramSha256::new(pw.expose().as_bytes(), ChannelBinding::unsupported());
                conn.send(&build(|b| codec::sasl_initial_response(b, "SCRAM-SHA-256", s.message())))
                    .await?;
                scram = Some(s);
            }
            Backend::Auth(Auth::SaslContinue(data)) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| ServerError::Protocol("SASL continue before SASL start".into()))?;
                s.update(data)
                    .map_err(|e| ServerError::Protocol(format!("SCRAM: {e}")))?;
                let msg = s.message().to_vec();
                conn.send(&build(|b| codec::sasl_response(b, &msg))).await?;
            }
            Backend::Auth(Auth::SaslFinal(data)) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| ServerError::Protocol("SASL final before SASL start".into()))?;
                s.finish(data).map_err(|e| {
                    ServerError::Protocol(format!("the server's SCRAM signature is wrong: {e}"))
                })?;
            }
            Backend::Auth(Auth::Other(code)) => {
                return Err(ServerError::Protocol(format!(
                    "the server asks for authentication method {code}, which cutover does not speak; use scram-sha-256 or md5 in pg_hba.conf"
                )))
            }
            Backend::ParameterStatus { name, value } => {
                conn.params.push((name.to_string(), value.to_string()))
            }
            Backend::BackendKeyData { pid, key } => {
                conn.pid = pid;
                conn.key = key;
            }
            Backend::ReadyForQuery(_) => return Ok(conn),
            Backend::Error(fields) => return Err(ServerError::Server(fields)),
            Backend::Notice(_) => {}
            _ => {
                return Err(ServerError::Protocol(format!(
                    "unexpected message '{}' during login",
                    frame.tag as char
                )))
            }
        }
    }
}

fn need_password(password: Option<&Secret>) -> Result<&Secret, ServerError> {
    password.ok_or_else(|| {
        ServerError::Server(ErrorFields {
            severity: "FATAL".into(),
            code: "28P01".into(),
            message: "the database asks for a password and the proxy has none for this user; add password = \"${...}\" to its [[proxy.users]] entry".into(),
            detail: None,
            hint: None,
        })
    })
}

/// One result of [`ServerConn::simple_query`]: rows of text values.
pub type Rows = Vec<Vec<Option<String>>>;

impl ServerConn {
    /// Reads one whole message.
    pub async fn read_frame(&mut self) -> Result<Frame, ServerError> {
        loop {
            if let Some(frame) = codec::decode_frame(&mut self.buf)? {
                return Ok(frame);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ServerError::Closed);
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ServerError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Runs one simple-protocol query and returns the rows of its last result. An error
    /// from the server is returned after the server is ready again, so the connection
    /// stays usable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Rows, ServerError> {
        self.send(&build(|b| codec::query(b, sql))).await?;
        self.until_ready().await
    }

    /// Reads results until ReadyForQuery; returns the last result's rows or the first error.
    pub async fn until_ready(&mut self) -> Result<Rows, ServerError> {
        let mut rows = vec![];
        let mut error = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'T' => rows.clear(),
                b'D' => rows.push(data_row(frame.body())?),
                b'E' => {
                    if let Backend::Error(f) = codec::parse_backend(&frame)? {
                        error.get_or_insert(f);
                    }
                }
                b'A' | b'N' | b'S' => self.async_messages.push(frame),
                b'Z' => {
                    return match error {
                        Some(e) => Err(ServerError::Server(e)),
                        None => Ok(rows),
                    }
                }
                _ => {}
            }
        }
    }

    /// Ends the session politely.
    pub async fn terminate(mut self) {
        let _ = self.stream.write_all(&build(codec::terminate)).await;
        let _ = self.stream.shutdown().await;
    }
}

/// The columns of a DataRow, as text.
fn data_row(body: &[u8]) -> Result<Vec<Option<String>>, ServerError> {
    let bad = || ServerError::Protocol("malformed DataRow".into());
    let n = i16::from_be_bytes(
        body.get(0..2)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    let mut at = 2usize;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = i32::from_be_bytes(
            body.get(at..at + 4)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        );
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            let v = body.get(at..at + len as usize).ok_or_else(bad)?;
            out.push(Some(String::from_utf8_lossy(v).into_owned()));
            at += len as usize;
        }
    }
    Ok(out)
}

/// Sends a cancel request for the server session `pid`/`key` on `backend`.
pub async fn cancel(backend: &ConnString, pid: i32, key: i32) -> Result<(), ServerError> {
    let mut stream = open_stream(backend).await?;
    stream
        .write_all(&build(|b| codec::cancel_request(b, pid, key)))
        .await?;
    let _ = stream.shutdown().await;
    Ok(())
}
