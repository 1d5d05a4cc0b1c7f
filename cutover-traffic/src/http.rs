//! HTTP/1.1 client plumbing shared by the splitter (its origins), the SaaS DNS providers and
//! the canary (the splitter's admin API, Prometheus): an address with an optional TLS layer
//! whose server name (SNI) is set per origin, and a one-shot request for small JSON APIs.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type the splitter sends and returns: anything, streamed.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// The driver of a connection made by [`Target::open`]: it moves the connection's bytes
/// only while it is polled.
pub type Conn = http1::Connection<TokioIo<Pin<Box<dyn Io>>>, Body>;

/// A byte stream to a server, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Io for T {}

/// Where requests go: host and port, and TLS with its server name when the scheme is https.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub https: bool,
    /// The TLS server name (SNI and the certificate's name).
    pub server_name: String,
    tls: Option<tokio_rustls::TlsConnector>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}:{}",
            if self.https { "https" } else { "http" },
            self.host,
            self.port
        )
    }
}

/// How connecting failed: the request was certainly not sent.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {target}: {reason}")]
pub struct ConnectError {
    pub target: String,
    pub reason: String,
}

impl Target {
    /// From "http(s)://host:port"; `sni` overrides the server name, `ca_file` adds roots.
    pub fn new(url: &str, sni: Option<&str>, ca_file: Option<&Path>) -> Result<Target, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("\"{url}\" is not an http(s) URL"))?;
        let https = match scheme {
            "http" => false,
            "https" => true,
            _ => return Err(format!("\"{url}\" is not an http(s) URL")),
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
                Ok(p) => (h.to_string(), p),
                Err(_) => (authority.to_string(), if https { 443 } else { 80 }),
            },
            _ => (authority.to_string(), if https { 443 } else { 80 }),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let server_name = sni.unwrap_or(&host).to_string();
        let tls = if https {
            Some(tokio_rustls::TlsConnector::from(Arc::new(tls_config(
                ca_file,
            )?)))
        } else {
            None
        };
        Ok(Target {
            host,
            port,
            https,
            server_name,
            tls,
            connect_timeout: Duration::from_secs(5),
        })
    }

    /// "host:port", as a Host header would carry it.
    pub fn authority(&self) -> String {
        let default = if self.https { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// A connected stream (TLS handshake done).
    pub async fn connect(&self) -> Result<Pin<Box<dyn Io>>, ConnectError> {
        let fail = |reason: String| ConnectError {
            target: format!("{self:?}"),
            reason,
        };
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| fail("timed out".into()))?
        .map_err(|e| fail(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::pin(tcp)),
            Some(connector) => {
                let name = ServerName::try_from(self.server_name.clone()).map_err(|_| {
                    fail(format!("\"{}\" is not a TLS server name", self.server_name))
                })?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| fail(format!("TLS: {e}")))?;
                Ok(Box::pin(tls))
            }
        }
    }

    /// An HTTP/1.1 connection and its driver, which the caller polls: whoever waits for
    /// its response drives it, in the same task, with no hand-off to another.
    pub async fn open(&self) -> Result<(http1::SendRequest<Body>, Conn), ConnectError> {
        let io = self.connect().await?;
        // One buffer and one write() per request, as the splitter's server side does.
        http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ConnectError {
                target: format!("{self:?}"),
                reason: e.to_string(),
            })
    }

    /// An HTTP/1.1 connection; its driver runs until the connection closes (upgrades kept).
    pub async fn handshake(&self) -> Result<http1::SendRequest<Body>, ConnectError> {
        let (sender, conn) = self.open().await?;
        // The connection's own driver: it ends with the connection.
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut added = 0;
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem).flatten() {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A small request to an API: method, full URL, headers, body. Returns status and body.
pub async fn request(
    method: hyper::Method,
    url: &str,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(hyper::StatusCode, Bytes), String> {
    let target = Target::new(url, None, None)?;
    exchange(&target, method, url, headers, body, timeout)
        .await
        .map(|r| (r.status, r.body))
}

/// An answer, whole.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: hyper::StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

/// One request to `target` for the path (and query) of `url`; a `host` among `headers`
/// replaces the target's own authority (an origin reached by address with its site's name).
pub async fn exchange(
    target: &Target,
    method: hyper::Method,
    url: &str,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Answer, String> {
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
        .unwrap_or_else(|| "/".into());
    let work = async {
        let mut sender = target.handshake().await.map_err(|e| e.to_string())?;
        let mut req = hyper::Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req = req.header(hyper::header::HOST, target.authority());
        }
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req
            .body(match body {
                Some(b) => full(b),
                None => empty(),
            })
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body: bytes,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("{target:?} did not answer within {}s", timeout.as_secs()))?
}
