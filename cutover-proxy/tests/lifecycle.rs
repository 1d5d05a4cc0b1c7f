//! The proxy as a load balancer and Prometheus see it: `/live`, `/ready`, `/metrics` that
//! move with the traffic and the switch, and a shutdown that never fails a transaction that
//! can finish: idle sessions are told to reconnect, an open transaction may commit, and one
//! that outlasts the drain time is cut and rolled back.

use std::time::Duration;

use cutover_pg::{connect, Side};
use cutover_proxy::{AdminClient, Backend};
use cutover_testkit::{http_get, metric, scram_user, via_proxy, Pair};

async fn metrics(addr: std::net::SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

fn value(text: &str, sample: &str) -> f64 {
    metric(text, sample).unwrap_or_else(|| panic!("no {sample} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_follow_the_traffic_and_the_switch() {
    let pair = Pair::native().await;
    let pw = pair.app_role("app").await;
    let dir = tempfile::tempdir().unwrap();
    let config = pair.proxy_config(vec![scram_user("app", &pw)], dir.path());
    let token = config.admin_token.clone();
    let proxy = cutover_proxy::start(config).await.unwrap();
    let health = proxy.health_addr.expect("a health listener");
    let admin = AdminClient::new(proxy.admin_addr, token.clone());

    assert_eq!(http_get(health, "/live").await.unwrap().0, 200);
    assert_eq!(http_get(health, "/ready").await.unwrap().0, 200);
    assert_eq!(http_get(health, "/nothing").await.unwrap().0, 404);
    let m = metrics(health).await;
    assert_eq!(value(&m, "cutover_proxy_ready"), 1.0);
    assert_eq!(value(&m, "cutover_proxy_backend{backend=\"source\"}"), 1.0);
    assert_eq!(value(&m, "cutover_proxy_backend{backend=\"target\"}"), 0.0);
    assert_eq!(value(&m, "cutover_proxy_sessions"), 0.0);
    assert!(
        !m.contains(token.expose()),
        "the admin token is not in the metrics"
    );

    let url = via_proxy(proxy.addr, "app", &pw, &pair.source.db);
    let c = connect(&url, Side::Source).await.unwrap();
    for _ in 0..5 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    c.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
    let m = metrics(health).await;
    assert_eq!(value(&m, "cutover_proxy_sessions"), 1.0);
    assert_eq!(value(&m, "cutover_proxy_sessions_opened_total"), 1.0);
    // Five queries and one explicit transaction, after whatever the login ran.
    assert!(value(&m, "cutover_proxy_transactions_total") >= 6.0, "{m}");
    assert!(value(&m, "cutover_proxy_client_bytes_total") > 0.0);
    assert!(value(&m, "cutover_proxy_server_bytes_total") > 0.0);

    admin.pause().await.unwrap();
    assert_eq!(value(&metrics(health).await, "cutover_proxy_paused"), 1.0);
    assert!(admin.drain(Duration::from_secs(10)).await.unwrap().drained);
    admin.switch(Backend::Target).await.unwrap();
    admin.resume().await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();

    let m = metrics(health).await;
    assert_eq!(value(&m, "cutover_proxy_backend{backend=\"target\"}"), 1.0);
    assert_eq!(value(&m, "cutover_proxy_backend{backend=\"source\"}"), 0.0);
    assert_eq!(value(&m, "cutover_proxy_epoch"), 1.0);
    assert_eq!(value(&m, "cutover_proxy_paused"), 0.0);
    assert_eq!(value(&m, "cutover_proxy_pauses_total"), 1.0);
    assert_eq!(value(&m, "cutover_proxy_pause_seconds_count"), 1.0);
    drop(c);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_idle_sessions_to_reconnect_and_lets_a_transaction_commit() {
    let pair = Pair::native().await;
    pair.source
        .exec("CREATE TABLE orders (id int PRIMARY KEY)")
        .await;
    let pw = pair.app_role("app").await;
    pair.source.exec("GRANT ALL ON orders TO app").await;
    let dir = tempfile::tempdir().unwrap();
    let config = pair.proxy_config(vec![scram_user("app", &pw)], dir.path());
    let proxy = cutover_proxy::start(config).await.unwrap();
    let (addr, health) = (proxy.addr, proxy.health_addr.unwrap());
    let url = via_proxy(addr, "app", &pw, &pair.source.db);

    let idle = connect(&url, Side::Source).await.unwrap();
    idle.simple_query("SELECT 1").await.unwrap();
    let busy = connect(&url, Side::Source).await.unwrap();
    busy.batch_execute("BEGIN; INSERT INTO orders VALUES (1)")
        .await
        .unwrap();

    let leaving = tokio::spawn(proxy.shutdown(Duration::from_secs(30)));
    let mut ready = 200;
    for _ in 0..100 {
        ready = http_get(health, "/ready").await.map(|r| r.0).unwrap_or(0);
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 503, "/ready turns 503 as the shutdown begins");
    assert!(
        connect(&url, Side::Source).await.is_err(),
        "no new session is taken"
    );

    // The idle session was told to go, with a reason.
    let err = idle.simple_query("SELECT 1").await.unwrap_err();
    let text = format!("{err:?} {err}");
    assert!(
        idle.is_closed() && (text.contains("57P01") || text.contains("closed")),
        "{text}"
    );
    // The open transaction was not cut: it commits, and then its session ends too.
    busy.batch_execute("INSERT INTO orders VALUES (2); COMMIT")
        .await
        .unwrap();
    let done = tokio::time::timeout(Duration::from_secs(20), leaving)
        .await
        .expect("the shutdown ends once both sessions are gone")
        .unwrap();
    assert_eq!(
        (done.sessions, done.closed, done.cut),
        (2, 2, 0),
        "{done:?}"
    );
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM orders")
            .await
            .as_deref(),
        Some("2")
    );
    assert!(busy.simple_query("SELECT 1").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_outlasts_the_shutdown_is_cut_and_rolled_back() {
    let pair = Pair::native().await;
    pair.source
        .exec("CREATE TABLE orders (id int PRIMARY KEY)")
        .await;
    let pw = pair.app_role("app").await;
    pair.source.exec("GRANT ALL ON orders TO app").await;
    let dir = tempfile::tempdir().unwrap();
    let config = pair.proxy_config(vec![scram_user("app", &pw)], dir.path());
    let proxy = cutover_proxy::start(config).await.unwrap();
    let url = via_proxy(proxy.addr, "app", &pw, &pair.source.db);
    let stuck = connect(&url, Side::Source).await.unwrap();
    stuck
        .batch_execute("BEGIN; INSERT INTO orders VALUES (1)")
        .await
        .unwrap();

    let done = proxy.shutdown(Duration::from_millis(500)).await;
    assert_eq!(
        (done.sessions, done.closed, done.cut),
        (1, 0, 1),
        "{done:?}"
    );
    assert!(stuck.simple_query("COMMIT").await.is_err());
    // The server saw its client go and rolled the transaction back.
    for _ in 0..100 {
        let open = pair
            .source
            .value("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")
            .await;
        if open.as_deref() == Some("0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        pair.source
            .value("SELECT count(*) FROM orders")
            .await
            .as_deref(),
        Some("0")
    );
}
