//! The shop and its users against a real PostgreSQL: every acknowledged order is in the
//! database, a read of one finds it, and a load that cannot reach the app counts failures.

use std::time::Duration;

use cutover_demo::app::{self, AppConfig};
use cutover_demo::load::{Load, LoadConfig, Resolver};
use cutover_testkit::local::ClusterOptions;
use cutover_testkit::{url_text, Pg};

async fn shop() -> (Pg, app::RunningApp) {
    let pg = Pg::start(ClusterOptions::default(), cutover_pg::Side::Source).await;
    pg.exec(cutover_demo::SHOP_SCHEMA).await;
    let running = app::start(AppConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: url_text(&pg.url()),
        name: "old".into(),
        pool_size: 4,
    })
    .await
    .unwrap();
    (pg, running)
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status: u16 = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap())
}

#[tokio::test]
async fn acknowledged_orders_are_in_the_database_and_read_back() {
    let (pg, running) = shop().await;
    let (status, health) = get(running.addr, "/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["served_by"], "old");

    let load = Load::start(LoadConfig {
        clients: 4,
        rate: 80.0,
        write_share: 0.5,
        resolver: Resolver::new(&format!("http://{}", running.addr), Duration::ZERO),
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    assert!(report.sent >= 60, "sent {}", report.sent);
    assert!(report.acknowledged.len() >= 10);
    let ids: Vec<String> = report.acknowledged.iter().map(i64::to_string).collect();
    let present = pg
        .value(&format!(
            "SELECT count(*) FROM shop.orders WHERE id IN ({})",
            ids.join(",")
        ))
        .await
        .unwrap();
    assert_eq!(present, report.acknowledged.len().to_string());

    let (status, order) = get(running.addr, &format!("/orders/{}", report.acknowledged[0])).await;
    assert_eq!(status, 200);
    assert_eq!(order["id"], report.acknowledged[0]);
    let (status, _) = get(running.addr, "/orders/999999999").await;
    assert_eq!(status, 404);
    let (status, list) = get(running.addr, "/orders?limit=3").await;
    assert_eq!(status, 200);
    assert_eq!(list["orders"].as_array().unwrap().len(), 3);
    running.stop().await;
}

#[tokio::test]
async fn a_load_that_cannot_reach_the_app_counts_every_request_as_failed() {
    let port = cutover_testkit::free_port();
    let load = Load::start(LoadConfig {
        clients: 2,
        rate: 20.0,
        write_share: 1.0,
        resolver: Resolver::new(&format!("http://127.0.0.1:{port}"), Duration::ZERO),
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;
    assert!(report.sent > 0);
    assert_eq!(report.failed, report.sent);
    assert!(report.acknowledged.is_empty());
    assert!(
        report.failures[0].contains("connect to"),
        "{:?}",
        report.failures
    );
}

#[tokio::test]
async fn clients_follow_a_new_answer_within_the_ttl() {
    let (_pg, old) = shop().await;
    let pg2 = Pg::start(ClusterOptions::default(), cutover_pg::Side::Target).await;
    pg2.exec(cutover_demo::SHOP_SCHEMA).await;
    let new = app::start(AppConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: url_text(&pg2.url()),
        name: "new".into(),
        pool_size: 2,
    })
    .await
    .unwrap();
    let resolver = Resolver::new(&format!("http://{}", old.addr), Duration::from_millis(300));
    let load = Load::start(LoadConfig {
        clients: 3,
        rate: 60.0,
        write_share: 1.0,
        resolver: resolver.clone(),
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    resolver.set(&format!("http://{}", new.addr));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    // Orders placed on both: the clients moved.
    let on_new: i64 = pg2
        .value("SELECT count(*) FROM shop.orders")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(on_new > 0);
}
