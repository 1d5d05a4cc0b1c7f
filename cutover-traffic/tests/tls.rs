//! The splitter in front of an origin served over HTTPS: its certificate comes from a test
//! CA given as the origin's `ca_file`, the server name it is issued for is the origin's
//! `sni` (the URL names 127.0.0.1), and `host` sets the Host header.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::{get, until, Origin, TOKEN};
use cutover_core::Secret;
use cutover_traffic::http::full;
use cutover_traffic::splitter::admin::AdminClient;
use cutover_traffic::splitter::{self, OriginConfig, Side};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

const NAME: &str = "origin.example.test";

/// A test CA; writes its certificate to `dir/ca_file` and returns it with its key.
fn ca(dir: &Path, ca_file: &str) -> (rcgen::Certificate, rcgen::KeyPair, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("cutover test CA {ca_file}"),
    );
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join(ca_file);
    std::fs::write(&path, cert.pem()).unwrap();
    (cert, key, path)
}

/// An HTTPS origin with a certificate for [`NAME`] issued by a CA; it answers with the
/// server name (SNI) and Host header it was given.
struct TlsOrigin {
    addr: SocketAddr,
    /// Server names of the handshakes that succeeded.
    names: Arc<Mutex<Vec<String>>>,
    /// Handshakes that failed (the client refused the certificate).
    refused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsOrigin {
    async fn start(issuer: &rcgen::Certificate, issuer_key: &rcgen::KeyPair) -> TlsOrigin {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![NAME.to_string()])
            .unwrap()
            .signed_by(&key, issuer, issuer_key)
            .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let names = Arc::new(Mutex::new(vec![]));
        let refused = Arc::new(AtomicU64::new(0));
        let (n, r) = (names.clone(), refused.clone());
        let task = tokio::spawn(async move {
            let mut open = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, n, r) = (acceptor.clone(), n.clone(), r.clone());
                open.spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(_) => {
                            r.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    let sni = tls
                        .get_ref()
                        .1
                        .server_name()
                        .unwrap_or_default()
                        .to_string();
                    n.lock().unwrap().push(sni.clone());
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let sni = sni.clone();
                        async move {
                            let host = req
                                .headers()
                                .get("host")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let mut resp = Response::new(full(format!("sni={sni} {}", body.len())));
                            resp.headers_mut()
                                .insert("x-origin", "new".parse().unwrap());
                            resp.headers_mut()
                                .insert("x-seen-host", host.parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
                while open.try_join_next().is_some() {}
            }
        });
        TlsOrigin {
            addr,
            names,
            refused,
            task,
        }
    }

    fn origin_config(&self, ca_file: PathBuf) -> OriginConfig {
        OriginConfig {
            url: format!("https://{}", self.addr),
            host: Some("www.shop.example".into()),
            sni: Some(NAME.into()),
            ca_file: Some(ca_file),
        }
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn admin(r: &splitter::Running) -> AdminClient {
    AdminClient::new(r.admin_addr, Secret::new(TOKEN))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_origin_is_reached_with_its_server_name_host_and_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_cert, ca_key, ca_file) = ca(dir.path(), "ca.pem");
    let new = TlsOrigin::start(&ca_cert, &ca_key).await;
    let old = Origin::start("old").await;
    let mut config = common::config(&old, &old);
    config.new = new.origin_config(ca_file);
    let s = splitter::start(config).await.unwrap();
    admin(&s).set_new_percent(100).await.unwrap();
    for _ in 0..20 {
        let g = get(s.addr, "GET", "/", None, b"").await;
        assert_eq!(
            (
                g.status,
                g.origin.as_str(),
                g.seen_host.as_str(),
                g.body.as_str()
            ),
            (200, "new", "www.shop.example", "sni=origin.example.test 0")
        );
    }
    // A body near the largest the direct path takes: the whole request reaches the origin
    // through TLS (a TLS stream holds what it encrypted until it is flushed).
    let body = vec![b'x'; 60 * 1024];
    let g = get(s.addr, "POST", "/", None, &body).await;
    assert_eq!(
        (g.status, g.body.as_str()),
        (200, "sni=origin.example.test 61440")
    );
    let names = new.names.lock().unwrap().clone();
    assert!(!names.is_empty());
    assert!(names.iter().all(|n| n == NAME), "{names:?}");
    assert_eq!(new.refused.load(Ordering::SeqCst), 0);
    let status = admin(&s).status().await.unwrap();
    let o = &status.origins[Side::New.index()];
    assert!(o.up, "{o:?}");
    assert_eq!((o.metrics.requests, o.metrics.classes[1]), (21, 21));
    assert_eq!(o.last_error, None);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_origin_signed_by_another_ca_is_marked_down_with_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_cert, ca_key, _) = ca(dir.path(), "origin-ca.pem");
    let (_, _, other_ca) = ca(dir.path(), "other-ca.pem");
    let new = TlsOrigin::start(&ca_cert, &ca_key).await;
    let old = Origin::start("old").await;
    let mut config = common::config(&old, &old);
    config.new = new.origin_config(other_ca);
    let s = splitter::start(config).await.unwrap();
    admin(&s).set_new_percent(100).await.unwrap();
    // The handshake fails before anything is sent: the request goes to the old origin.
    let g = get(s.addr, "GET", "/", None, b"").await;
    assert_eq!((g.status, g.origin.as_str()), (200, "old"));
    // Health checks fail the same way and keep it down.
    until("three refused handshakes", || {
        new.refused.load(Ordering::SeqCst) >= 3
    })
    .await;
    let status = admin(&s).status().await.unwrap();
    let o = &status.origins[Side::New.index()];
    assert!(!o.up, "{o:?}");
    let e = o.last_error.clone().expect("the reason it is down");
    assert!(!e.contains('\n'), "one line: {e:?}");
    for part in [
        "cannot connect to https://127.0.0.1:",
        "TLS",
        "UnknownIssuer",
        "traffic.new.ca_file",
        "traffic.new.sni",
    ] {
        assert!(e.contains(part), "{part:?} in {e:?}");
    }
    assert!(new.names.lock().unwrap().is_empty());
    // Users are still served.
    for _ in 0..5 {
        let g = get(s.addr, "GET", "/", None, b"").await;
        assert_eq!((g.status, g.origin.as_str()), (200, "old"));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_that_holds_no_certificate_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let old = Origin::start("old").await;
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    for (ca_file, want) in [
        (not_pem, "holds no PEM certificate"),
        (dir.path().join("missing.pem"), "cannot read"),
    ] {
        let mut config = common::config(&old, &old);
        config.new = OriginConfig {
            url: "https://127.0.0.1:9".into(),
            host: None,
            sni: Some(NAME.into()),
            ca_file: Some(ca_file),
        };
        let e = match splitter::start(config).await {
            Ok(_) => panic!("started with a bad ca_file"),
            Err(e) => e,
        };
        assert!(
            e.starts_with("traffic.new: ") && e.contains(want) && !e.contains('\n'),
            "{e}"
        );
    }
}
