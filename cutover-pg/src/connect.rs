//! Connecting, with TLS through rustls and libpq's `sslmode` honoured.
//!
//! | sslmode | encrypted | certificate checked | host name checked |
//! |---|---|---|---|
//! | disable | no | - | - |
//! | prefer (default) | if the server offers it | no | no |
//! | require | yes | no | no |
//! | verify-ca | yes | against `sslrootcert` or the system roots | no |
//! | verify-full | yes | yes | yes |
//!
//! Every failure becomes one line that says what to fix; the password is never in it.

use std::time::Duration;

use cutover_core::{ConnString, SslMode};
use tokio_postgres::Client;

use crate::error::{PgError, Retry, Side};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn driver_config(cs: &ConnString) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(&cs.host);
    c.port(cs.port);
    c.user(&cs.user);
    c.dbname(&cs.dbname);
    if let Some(p) = cs.password() {
        c.password(p.expose());
    }
    c.application_name(cs.application_name.as_deref().unwrap_or("cutover"));
    c.connect_timeout(cs.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT));
    c.ssl_mode(match cs.sslmode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    c
}

/// Turns a connection failure into one line that says how to fix it.
fn explain(cs: &ConnString, side: Side, e: &tokio_postgres::Error) -> (String, Retry) {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let msg = match code {
            "28P01" => format!(
                "password authentication failed for user \"{}\"; check the password in {side}.url",
                cs.user
            ),
            "28000" => format!(
                "the server refused user \"{}\" ({}); allow this client in the server's pg_hba.conf or fix the user in {side}.url",
                cs.user,
                db.message()
            ),
            "3D000" => format!(
                "database \"{}\" does not exist; create it (createdb {}) or fix the database name in {side}.url",
                cs.dbname, cs.dbname
            ),
            "53300" => "the server has no free connection slot (too many clients); close idle clients or raise max_connections".to_string(),
            "57P03" => "the server is starting up or shutting down; try again in a moment".to_string(),
            _ => format!("{} (SQLSTATE {code})", db.message()),
        };
        return (msg, crate::error::classify(code));
    }
    let mut text = e.to_string();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut io_kind = None;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        text = s.to_string();
        source = s.source();
    }
    let msg = match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => format!(
            "connection refused; check that PostgreSQL is running and listening on {}:{}",
            cs.host, cs.port
        ),
        Some(std::io::ErrorKind::TimedOut) => format!(
            "timed out; check the host and port in {side}.url and that a firewall lets this machine reach {}:{}",
            cs.host, cs.port
        ),
        _ if text.contains("timed out") || text.contains("timeout") => format!(
            "timed out; check the host and port in {side}.url and that a firewall lets this machine reach {}:{}",
            cs.host, cs.port
        ),
        _ if text.contains("failed to lookup") || text.contains("Name or service not known") || text.contains("resolve") => {
            format!("cannot resolve host \"{}\"; check the host name in {side}.url", cs.host)
        }
        _ if text.contains("server does not support TLS") => format!(
            "the server does not accept TLS connections; use sslmode=disable in {side}.url only on a trusted network, or enable ssl on the server"
        ),
        _ if text.to_lowercase().contains("certificate") || text.contains("InvalidCertificate") => format!(
            "TLS certificate rejected ({text}); give the right CA with sslrootcert=... in {side}.url, or use sslmode=require to skip verification"
        ),
        _ => text,
    };
    (cutover_core::redact(&msg, cs.password()), Retry::Transient)
}

/// Opens a connection. The connection's driver runs on its own task that ends when the
/// returned client is dropped.
pub async fn connect(cs: &ConnString, side: Side) -> Result<Client, PgError> {
    let config = driver_config(cs);
    let fail = |e: tokio_postgres::Error| {
        let (message, retry) = explain(cs, side, &e);
        PgError::Connect {
            side,
            location: cs.location(),
            message,
            retry,
        }
    };
    if cs.sslmode == SslMode::Disable {
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.map_err(fail)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        return Ok(client);
    }
    let tls = cutover_core::tls::client_config(cs).map_err(|message| PgError::Connect {
        side,
        location: cs.location(),
        message,
        retry: Retry::Definite,
    })?;
    let (client, conn) = config
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
        .await
        .map_err(fail)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A connection whose notifications (LISTEN) arrive on the returned channel. The channel
/// closes when the connection ends, however it ends: its reader can tell a lost connection
/// (and, with it, lost notifications) from a quiet one.
pub async fn connect_listening(
    cs: &ConnString,
    side: Side,
) -> Result<
    (
        Client,
        tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    ),
    PgError,
> {
    let config = driver_config(cs);
    let fail = |e: tokio_postgres::Error| {
        let (message, retry) = explain(cs, side, &e);
        PgError::Connect {
            side,
            location: cs.location(),
            message,
            retry,
        }
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    if cs.sslmode == SslMode::Disable {
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.map_err(fail)?;
        tokio::spawn(forward_notifications(conn, tx));
        return Ok((client, rx));
    }
    let tls = cutover_core::tls::client_config(cs).map_err(|message| PgError::Connect {
        side,
        location: cs.location(),
        message,
        retry: Retry::Definite,
    })?;
    let (client, conn) = config
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
        .await
        .map_err(fail)?;
    tokio::spawn(forward_notifications(conn, tx));
    Ok((client, rx))
}

async fn forward_notifications<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    tx: tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    while let Some(m) = futures_util::StreamExt::next(&mut messages).await {
        match m {
            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                let _ = tx.send(n);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

/// Every libpq variable a child could inherit from our own environment and mistake for the
/// plan's: the child gets exactly the connection it is given.
const LIBPQ_VARS: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGDATABASE",
    "PGSERVICE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGAPPNAME",
    "PGCONNECT_TIMEOUT",
];

/// A PostgreSQL client program (`pg_dump`, `psql`, `pgbench`...) from the server's own
/// folder when it can be found, with `conn` in its environment (password in `PGPASSWORD`, never
/// on the command line) and nothing inherited that could point it elsewhere.
pub fn client_program(name: &str, conn: Option<&ConnString>) -> tokio::process::Command {
    let path = crate::local::bindir()
        .map(|d| d.join(name))
        .unwrap_or_else(|_| std::path::PathBuf::from(name));
    let mut cmd = tokio::process::Command::new(path);
    for var in LIBPQ_VARS {
        cmd.env_remove(var);
    }
    if let Some(c) = conn {
        cmd.envs(c.libpq_env());
    }
    cmd
}

/// The error for a client program that cannot be started.
pub fn cannot_run(name: &str, e: std::io::Error) -> PgError {
    PgError::Child {
        program: name.into(),
        message: format!(
            "cannot run it ({e}); install the PostgreSQL client programs (Debian: apt-get install postgresql-client)"
        ),
    }
}

/// Quotes an identifier for SQL: `"My Table"` (libpq's `PQescapeIdentifier`, as
/// postgres-protocol writes it).
pub fn ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// Quotes a string literal for SQL (libpq's `PQescapeLiteral`, as postgres-protocol writes
/// it). A value with a backslash is written as an ` E''` string, which reads the same whatever
/// `standard_conforming_strings` says.
pub fn literal(value: &str) -> String {
    postgres_protocol::escape::escape_literal(value)
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_identifiers_are_quoted() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal(r"a\b'c"), r" E'a\\b''c'");
        assert_eq!(ident("My \"T\""), "\"My \"\"T\"\"\"");
        assert_eq!(qualified("s", "t"), "\"s\".\"t\"");
    }
}
