//! The protocol through the proxy: TLS on both sides, COPY both ways, pipelined queries,
//! and the session state that pins a session (LISTEN, advisory locks, WITH HOLD cursors).

use std::sync::Arc;
use std::time::Duration;

use cutover_core::ConnString;
use cutover_pg::local::ClusterOptions;
use cutover_pg::{connect, Side};
use cutover_proxy::AdminClient;
use cutover_testkit::{scram_user, via_proxy, Pair};
use futures_util::SinkExt;

fn pki(dir: &std::path::Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_sides() {
    let certs = tempfile::tempdir().unwrap();
    pki(certs.path());
    let tls = ClusterOptions {
        tls: Some((
            certs.path().join("server.crt"),
            certs.path().join("server.key"),
        )),
        ..Default::default()
    };
    let pair = Pair::with(tls, ClusterOptions::default()).await;
    let pw = pair.app_role("app").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = pair.proxy_config(vec![scram_user("app", &pw)], dir.path());
    // The proxy reaches the source over TLS, checking its certificate against the test CA.
    let u = pair.source.url();
    config.source = ConnString::parse(&format!(
        "postgres://{}@127.0.0.1:{}/{}?sslmode=verify-ca&sslrootcert={}",
        u.user,
        u.port,
        u.dbname,
        certs.path().join("ca.pem").display()
    ))
    .unwrap()
    .with_password(u.password().cloned());
    config.tls = Some(Arc::new(
        cutover_proxy::tls::server_config(
            &certs.path().join("server.crt"),
            &certs.path().join("server.key"),
        )
        .unwrap(),
    ));
    let proxy = cutover_proxy::start(config).await.unwrap();
    let mut url = via_proxy(proxy.addr, "app", &pw, &pair.source.db);
    url.sslmode = cutover_core::SslMode::Require;
    let c = connect(&url, Side::Source).await.unwrap();
    let ssl: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the proxy's server connection uses TLS");
    proxy.stop().await;
}

async fn plain() -> (
    Pair,
    tempfile::TempDir,
    cutover_proxy::Running,
    AdminClient,
    ConnString,
) {
    let pair = Pair::native().await;
    let pw = pair.app_role("app").await;
    let dir = tempfile::tempdir().unwrap();
    let config = pair.proxy_config(vec![scram_user("app", &pw)], dir.path());
    let token = config.admin_token.clone();
    let proxy = cutover_proxy::start(config).await.unwrap();
    let admin = AdminClient::new(proxy.admin_addr, token);
    let url = via_proxy(proxy.addr, "app", &pw, &pair.source.db);
    (pair, dir, proxy, admin, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_both_ways_and_pipelined_queries() {
    let (_pair, _dir, proxy, _admin, url) = plain().await;
    let c = connect(&url, Side::Source).await.unwrap();
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let sink = c.copy_in("COPY t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\tvalue {i}\n"));
    }
    sink.send(bytes::Bytes::from(data.clone())).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 5000);
    let stream = c.copy_out("COPY t TO STDOUT").await.unwrap();
    futures_util::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(out).unwrap(), data);
    // Queries issued together go out pipelined on one connection.
    let stmt = c.prepare("SELECT v FROM t WHERE id = $1").await.unwrap();
    let ids: Vec<i32> = (0..200).collect();
    let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> =
        ids.iter().map(|i| [i as _]).collect();
    let futures = params.iter().map(|p| c.query_one(&stmt, p));
    let rows = futures_util::future::try_join_all(futures).await.unwrap();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.get::<_, String>(0), format!("value {i}"));
    }
    // An error in the middle of a pipeline leaves the session usable.
    let bad = c.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(bad.code().map(|c| c.code()), Some("22012"));
    assert_eq!(
        c.query_one("SELECT 2", &[]).await.unwrap().get::<_, i32>(0),
        2
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_advisory_locks_and_hold_cursors_pin_a_session() {
    let (_pair, _dir, proxy, admin, url) = plain().await;
    let listener = connect(&url, Side::Source).await.unwrap();
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let locker = connect(&url, Side::Source).await.unwrap();
    locker
        .batch_execute("SELECT pg_advisory_lock(42)")
        .await
        .unwrap();
    let cursor = connect(&url, Side::Source).await.unwrap();
    cursor
        .batch_execute("DECLARE c CURSOR WITH HOLD FOR SELECT 1")
        .await
        .unwrap();
    admin.pause().await.unwrap();
    let e = admin
        .drain(Duration::from_millis(800))
        .await
        .unwrap_err()
        .to_string();
    for want in ["LISTEN channels", "advisory locks", "WITH HOLD cursors"] {
        assert!(e.contains(want), "{want}: {e}");
    }
    // A switch while they hold it is refused: their state would be lost.
    let e = admin
        .switch(cutover_proxy::Backend::Target)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not drained"), "{e}");
    // Pinned sessions are not held; once they let go, the drain completes.
    listener.batch_execute("UNLISTEN *").await.unwrap();
    locker
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    cursor.batch_execute("CLOSE c").await.unwrap();
    let status = admin.drain(Duration::from_secs(10)).await.unwrap();
    assert!(status.drained, "{status:?}");
    admin.resume().await.unwrap();
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_server_ends_gets_the_servers_error_once() {
    let (_pair, _dir, proxy, _admin, url) = plain().await;
    let c = connect(&url, Side::Source).await.unwrap();
    let e = c
        .simple_query("SELECT pg_terminate_backend(pg_backend_pid())")
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("57P01"), "{e:?}");
    assert!(c.is_closed() || c.simple_query("SELECT 1").await.is_err());
    proxy.stop().await;
}

/// A CA and a certificate for the given names, written as `<prefix>ca.pem`,
/// `<prefix>server.crt` and `<prefix>server.key`.
fn pki_for(dir: &std::path::Path, prefix: &str, names: &[&str]) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    std::fs::write(dir.join(format!("{prefix}ca.pem")), ca_cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{prefix}server.crt")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{prefix}server.key")), key.serialize_pem()).unwrap();
}

/// Beyond loopback the admin API, which can switch the database, is served only over TLS
/// and with the token: a proxy without a certificate refuses to start so, a plain request
/// gets no answer, a certificate from another CA is refused, a wrong token gets 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_beyond_loopback_speaks_only_tls_with_the_token() {
    let certs = tempfile::tempdir().unwrap();
    pki_for(certs.path(), "", &["0.0.0.0"]);
    pki_for(certs.path(), "other-", &["0.0.0.0"]);
    let pair = Pair::native().await;
    let pw = pair.app_role("app").await;
    let dir = tempfile::tempdir().unwrap();
    let admin_addr: std::net::SocketAddr = format!("0.0.0.0:{}", cutover_testkit::free_port())
        .parse()
        .unwrap();

    let mut config = pair.proxy_config(vec![scram_user("app", &pw)], dir.path());
    config.admin_listen = admin_addr;
    let err = cutover_proxy::start(config.clone()).await.err().unwrap();
    assert!(err.contains("without TLS"), "{err}");

    config.tls = Some(Arc::new(
        cutover_proxy::tls::server_config(
            &certs.path().join("server.crt"),
            &certs.path().join("server.key"),
        )
        .unwrap(),
    ));
    let token = config.admin_token.clone();
    let proxy = cutover_proxy::start(config).await.unwrap();
    assert_eq!(proxy.admin_addr, admin_addr);

    let good = AdminClient::for_address(
        admin_addr,
        token.clone(),
        Some(&certs.path().join("ca.pem")),
    )
    .unwrap();
    let status = good.status().await.unwrap();
    assert_eq!(status.active, cutover_proxy::Backend::Source);

    // Plain HTTP: no answer it can read.
    assert!(AdminClient::new(admin_addr, token.clone())
        .status()
        .await
        .is_err());
    // Another CA: the client refuses the certificate, and sends nothing.
    let stranger = AdminClient::for_address(
        admin_addr,
        token.clone(),
        Some(&certs.path().join("other-ca.pem")),
    )
    .unwrap();
    let err = stranger.status().await.unwrap_err().to_string();
    assert!(err.contains("TLS"), "{err}");
    // The right certificate, a wrong token.
    let intruder = AdminClient::for_address(
        admin_addr,
        cutover_core::Secret::new("not-the-token"),
        Some(&certs.path().join("ca.pem")),
    )
    .unwrap();
    match intruder.pause().await {
        Err(cutover_proxy::admin::AdminError::Refused { status, .. }) => assert_eq!(status, 401),
        other => panic!("a wrong token was not refused: {other:?}"),
    }
    assert!(!good.status().await.unwrap().paused);
    proxy.shutdown(Duration::from_secs(1)).await;
}
