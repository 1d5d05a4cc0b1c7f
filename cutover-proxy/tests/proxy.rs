//! The proxy in front of two real clusters: login, queries, prepared statements, cancel,
//! pause/drain/switch/resume with session state carried over, and pinned sessions.

use std::time::Duration;

use cutover_pg::{connect, Side};
use cutover_proxy::{AdminClient, Backend};
use cutover_testkit::{scram_user, via_proxy, Pair};

async fn q1(c: &tokio_postgres::Client, sql: &str) -> String {
    let rows = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_move_to_the_target_with_their_state() {
    let pair = Pair::native().await;
    let pw = pair.app_role("app").await;
    let dir = tempfile::tempdir().unwrap();
    let config = pair.proxy_config(vec![scram_user("app", &pw)], dir.path());
    let token = config.admin_token.clone();
    let proxy = cutover_proxy::start(config).await.unwrap();
    let admin = AdminClient::new(proxy.admin_addr, token);
    let url = via_proxy(proxy.addr, "app", &pw, &pair.source.db);

    let c = connect(&url, Side::Source).await.unwrap();
    let source_port = pair.source.cluster.port().to_string();
    let target_port = pair.target.cluster.port().to_string();
    assert_eq!(q1(&c, "SELECT inet_server_port()").await, source_port);
    c.batch_execute("SET statement_timeout = '7s'; SET application_name = 'moved'; CREATE SCHEMA IF NOT EXISTS app")
        .await
        .unwrap();
    c.batch_execute("SET search_path = app, public")
        .await
        .unwrap();
    let stmt = c.prepare("SELECT $1::int8 * 2").await.unwrap();
    let r: i64 = c.query_one(&stmt, &[&21i64]).await.unwrap().get(0);
    assert_eq!(r, 42);
    c.batch_execute("PREPARE twice(int) AS SELECT $1 * 2")
        .await
        .unwrap();

    // Pause, drain, switch, resume.
    admin.pause().await.unwrap();
    let status = admin.drain(Duration::from_secs(10)).await.unwrap();
    assert!(status.drained, "{status:?}");
    let report = admin.switch(Backend::Target).await.unwrap();
    assert_eq!(report.active, Backend::Target);
    assert!(report.failed.is_empty(), "{report:?}");
    admin.resume().await.unwrap();

    assert_eq!(q1(&c, "SELECT inet_server_port()").await, target_port);
    assert_eq!(q1(&c, "SHOW statement_timeout").await, "7s");
    assert_eq!(q1(&c, "SHOW application_name").await, "moved");
    assert_eq!(q1(&c, "SHOW search_path").await, "app, public");
    let r: i64 = c.query_one(&stmt, &[&50i64]).await.unwrap().get(0);
    assert_eq!(
        r, 100,
        "the protocol-level prepared statement was re-prepared"
    );
    assert_eq!(
        q1(&c, "EXECUTE twice(5)").await,
        "10",
        "SQL PREPARE was replayed"
    );

    // The choice is durable: a new proxy on the same state starts on the target.
    let state = std::fs::read_to_string(dir.path().join("cutover.proxy.json")).unwrap();
    assert!(state.contains("target"), "{state}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_a_temporary_table_blocks_the_drain_and_a_transaction_finishes_first() {
    let pair = Pair::native().await;
    let pw = pair.app_role("app").await;
    let dir = tempfile::tempdir().unwrap();
    let config = pair.proxy_config(vec![scram_user("app", &pw)], dir.path());
    let token = config.admin_token.clone();
    let proxy = cutover_proxy::start(config).await.unwrap();
    let admin = AdminClient::new(proxy.admin_addr, token);
    let url = via_proxy(proxy.addr, "app", &pw, &pair.source.db);

    let pinned = connect(&url, Side::Source).await.unwrap();
    pinned
        .batch_execute("CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    let busy = connect(&url, Side::Source).await.unwrap();
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();

    admin.pause().await.unwrap();
    let err = admin
        .drain(Duration::from_millis(800))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("temporary tables"), "{err}");
    assert!(err.contains("transaction in progress"), "{err}");
    // The pinned session is not held: it can still work, and end its state.
    pinned
        .batch_execute("INSERT INTO scratch VALUES (1)")
        .await
        .unwrap();
    pinned.batch_execute("DROP TABLE scratch").await.unwrap();
    // The open transaction is never cut: it commits while paused.
    busy.batch_execute("COMMIT").await.unwrap();
    let status = admin.drain(Duration::from_secs(10)).await.unwrap();
    assert!(status.drained, "{status:?}");
    // A switch with a session that is not drained is refused; here it is drained.
    admin.switch(Backend::Target).await.unwrap();
    admin.resume().await.unwrap();
    assert_eq!(
        q1(&pinned, "SELECT inet_server_port()").await,
        pair.target.cluster.port().to_string()
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_unknown_users_and_cancel() {
    let pair = Pair::native().await;
    let pw = pair.app_role("app").await;
    let dir = tempfile::tempdir().unwrap();
    let mut md5 = scram_user("app", &pw);
    md5.auth = cutover_core::plan::ClientAuth::Md5;
    let config = pair.proxy_config(vec![md5], dir.path());
    let token = config.admin_token.clone();
    let proxy = cutover_proxy::start(config).await.unwrap();

    let wrong = via_proxy(
        proxy.addr,
        "app",
        &cutover_core::Secret::new("not-the-password"),
        &pair.source.db,
    );
    let e = connect(&wrong, Side::Source).await.unwrap_err().to_string();
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains(pw.expose()));
    let stranger = via_proxy(proxy.addr, "nobody", &pw, &pair.source.db);
    let e = connect(&stranger, Side::Source)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not known to the cutover proxy"), "{e}");

    let url = via_proxy(proxy.addr, "app", &pw, &pair.source.db);
    let c = connect(&url, Side::Source).await.unwrap();
    let cancel = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the cancel reached the server")
        .unwrap();
    let e = r.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e:?}");

    // A wrong admin token is refused.
    let bad = AdminClient::new(proxy.admin_addr, cutover_core::Secret::new("nope"));
    let e = bad.pause().await.unwrap_err().to_string();
    assert!(e.contains("admin token"), "{e}");
    assert!(!proxy.shared.status().paused);
    drop(token);
    proxy.stop().await;
}

/// A password with characters SASLprep changes (a ligature, a non-breaking space) logs in
/// through the proxy with SCRAM, and the proxy logs in to the server with it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_ascii_password_logs_in_through_the_proxy() {
    let pair = Pair::native().await;
    let pw = "pa\u{fb01}le\u{a0}žluťoučký";
    for pg in [&pair.source, &pair.target] {
        pg.exec(&format!(
            "CREATE ROLE intl LOGIN PASSWORD '{pw}'; GRANT ALL ON DATABASE {db} TO intl;",
            db = pg.db
        ))
        .await;
    }
    let secret = cutover_core::Secret::new(pw);
    let dir = tempfile::tempdir().unwrap();
    let config = pair.proxy_config(vec![scram_user("intl", &secret)], dir.path());
    let proxy = cutover_proxy::start(config).await.unwrap();
    let url = via_proxy(proxy.addr, "intl", &secret, &pair.source.db);
    let c = connect(&url, Side::Source).await.unwrap();
    assert_eq!(q1(&c, "SELECT current_user").await, "intl");
    // Its SASLprep form is the same password, as PostgreSQL itself takes it; another one is
    // refused.
    for (password, logs_in) in [("pafile žluťoučký", true), ("pafile zlutoucky", false)] {
        let url = via_proxy(
            proxy.addr,
            "intl",
            &cutover_core::Secret::new(password),
            &pair.source.db,
        );
        assert_eq!(
            connect(&url, Side::Source).await.is_ok(),
            logs_in,
            "{password}"
        );
    }
    proxy.stop().await;
}
