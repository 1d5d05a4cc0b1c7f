//! A client's login: startup, TLS, the check of its password, and its server connection.

use crate::codec::{self, Frame, Startup};
use crate::proxy::{SessionView, Shared};
use crate::server::{self, build, BoxStream};
use bytes::BytesMut;
use cutover_core::plan::ClientAuth;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Startup, TLS, client authentication and the server login. `None` when the connection
/// was a cancel request or the client went away.
pub(super) async fn login(
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
