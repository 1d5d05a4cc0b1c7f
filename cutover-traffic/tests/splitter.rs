//! The splitter against real local origins: weights, stickiness, failures, draining,
//! upgrades, Host headers and metrics.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{get, get_with, splitter, until, Origin, TOKEN};
use cutover_core::Secret;
use cutover_traffic::splitter::admin::AdminClient;
use cutover_traffic::splitter::Side;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn admin(r: &cutover_traffic::splitter::Running) -> AdminClient {
    AdminClient::new(r.admin_addr, Secret::new(TOKEN))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_are_honoured_within_statistical_bounds() {
    let (old, new) = (Origin::start("old").await, Origin::start("new").await);
    let s = splitter(&old, &new).await;
    admin(&s).set_new_percent(25).await.unwrap();
    let n = 1200;
    let mut to_new = 0;
    for _ in 0..n {
        let g = get(s.addr, "GET", "/", None, b"").await;
        assert_eq!(g.status, 200);
        if g.origin == "new" {
            to_new += 1;
        }
    }
    // 25% of 1200 = 300, standard deviation 15: six of them either side.
    assert!(
        (210..=390).contains(&to_new),
        "{to_new} of {n} went to the new origin"
    );
    let status = admin(&s).status().await.unwrap();
    assert_eq!(status.new_percent, 25);
    assert_eq!(
        status.origins[1].metrics.requests + status.origins[0].metrics.requests,
        n
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_stays_on_one_side_by_cookie() {
    let (old, new) = (Origin::start("old").await, Origin::start("new").await);
    let s = splitter(&old, &new).await;
    admin(&s).set_new_percent(10).await.unwrap();
    // A first visit gets a cookie for the side that served it.
    let first = get(s.addr, "GET", "/", None, b"").await;
    let cookie = first.set_cookie.expect("a sticky cookie");
    assert!(
        cookie.starts_with(&format!("cutover_origin={};", first.origin)),
        "{cookie}"
    );
    for side in ["new", "old"] {
        for _ in 0..40 {
            let g = get(
                s.addr,
                "GET",
                "/",
                Some(&format!("a=b; cutover_origin={side}")),
                b"",
            )
            .await;
            assert_eq!(g.origin, side);
            assert_eq!(
                g.set_cookie, None,
                "no new cookie for a user already on their side"
            );
        }
    }
    // Rolled back to 0%: nobody is kept on the new side.
    admin(&s).set_new_percent(0).await.unwrap();
    let g = get(s.addr, "GET", "/", Some("cutover_origin=new"), b"").await;
    assert_eq!(g.origin, "old");
    assert!(g.set_cookie.unwrap().starts_with("cutover_origin=old;"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_killed_mid_run_fails_no_idempotent_request_and_is_marked_down() {
    let (old, new) = (Origin::start("old").await, Origin::start("new").await);
    let s = splitter(&old, &new).await;
    admin(&s).set_new_percent(50).await.unwrap();
    let addr = s.addr;
    let mut workers = vec![];
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for _ in 0..4 {
        let done = done.clone();
        workers.push(tokio::spawn(async move {
            let mut statuses = vec![];
            for i in 0..150 {
                let method = if i % 3 == 0 { "HEAD" } else { "GET" };
                statuses.push(get(addr, method, "/", None, b"").await.status);
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            statuses
        }));
    }
    until("a third of the requests", || {
        done.load(std::sync::atomic::Ordering::SeqCst) >= 200
    })
    .await;
    new.kill();
    let mut all = vec![];
    for w in workers {
        all.extend(w.await.unwrap());
    }
    assert_eq!(all.len(), 600);
    assert!(
        all.iter().all(|s| *s == 200),
        "failed: {:?}",
        all.iter().filter(|s| **s != 200).count()
    );
    let status = admin(&s).status().await.unwrap();
    assert!(
        !status.origins[Side::New.index()].up,
        "the killed origin is marked down"
    );
    assert!(status.origins[Side::Old.index()].up);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_could_not_be_sent_goes_to_the_other_origin() {
    let (old, new) = (Origin::start("old").await, Origin::start("new").await);
    let s = splitter(&old, &new).await;
    admin(&s).set_new_percent(100).await.unwrap();
    new.kill();
    // Not idempotent, but the connection was refused: it was never sent, so it may go again.
    let g = get(s.addr, "POST", "/orders", None, b"0123456789").await;
    assert_eq!(
        (g.status, g.origin.as_str(), g.body.as_str()),
        (200, "old", "old 10")
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_drops_no_request_in_flight() {
    let (old, new) = (Origin::start("old").await, Origin::start("new").await);
    let s = splitter(&old, &new).await;
    let a = admin(&s);
    a.set_new_percent(100).await.unwrap();
    let addr = s.addr;
    let slow = tokio::spawn(async move { get(addr, "GET", "/slow", None, b"").await });
    until("the slow request in flight", || {
        new.hits.load(std::sync::atomic::Ordering::SeqCst) >= 1
    })
    .await;
    let status = a.set_new_percent(0).await.unwrap();
    let new_status = &status.origins[Side::New.index()];
    assert_eq!(
        (new_status.weight, new_status.in_flight, new_status.draining),
        (0, 1, true)
    );
    // New requests go to the old origin meanwhile.
    assert_eq!(get(s.addr, "GET", "/", None, b"").await.origin, "old");
    let g = slow.await.unwrap();
    assert_eq!(
        (g.status, g.origin.as_str(), g.body.as_str()),
        (200, "new", "first,last")
    );
    let after = a.status().await.unwrap();
    assert!(!after.origins[Side::New.index()].draining);
    assert_eq!(
        after.origins[Side::New.index()].metrics.classes[5],
        0,
        "no request without a response"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_and_host_headers_pass_through() {
    let (old, new) = (Origin::start("old").await, Origin::start("new").await);
    let mut config = common::config(&old, &new);
    config.new.host = Some("new-app.example.net".into());
    let s = cutover_traffic::splitter::start(config).await.unwrap();
    let a = admin(&s);
    a.set_new_percent(100).await.unwrap();
    let g = get(s.addr, "GET", "/", None, b"").await;
    assert_eq!(
        (g.origin.as_str(), g.seen_host.as_str()),
        ("new", "new-app.example.net")
    );
    a.set_new_percent(0).await.unwrap();
    let g = get(s.addr, "GET", "/", None, b"").await;
    assert_eq!(
        (g.origin.as_str(), g.seen_host.as_str()),
        ("old", "app.example.test")
    );

    // An upgraded connection: bytes both ways through the splitter.
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: app.example.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![];
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    tcp.write_all(b"ping through the splitter").await.unwrap();
    let mut echo = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(30), tcp.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping through the splitter");

    let metrics = cutover_traffic::http::request(
        hyper::Method::GET,
        &format!("http://{}/metrics", s.admin_addr),
        &[],
        None,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&metrics.1);
    assert!(
        text.contains("cutover_splitter_requests_total{origin=\"new\",class=\"2xx\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("cutover_splitter_requests_total{origin=\"old\",class=\"1xx\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("cutover_splitter_weight_percent{origin=\"old\"} 100\n"),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_weight_survives_a_restart_and_needs_the_token() {
    let (old, new) = (Origin::start("old").await, Origin::start("new").await);
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(&old, &new);
    config.state_path = Some(dir.path().join("cutover.traffic.json"));
    let s = cutover_traffic::splitter::start(config.clone())
        .await
        .unwrap();
    admin(&s).set_new_percent(40).await.unwrap();
    let wrong = AdminClient::new(s.admin_addr, Secret::new("not-the-token"));
    let e = wrong.set_new_percent(100).await.unwrap_err();
    assert!(
        e.contains("401") && e.contains("traffic.admin_token"),
        "{e}"
    );
    assert!(!e.contains(TOKEN));
    s.stop().await;
    let s = cutover_traffic::splitter::start(config).await.unwrap();
    assert_eq!(admin(&s).status().await.unwrap().new_percent, 40);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_connections_are_kept_alive_between_requests() {
    // Before, a response with a Content-Length (or none at all, as for HEAD) ended without
    // its body being polled to the end, and the connection to the origin was dropped: every
    // request opened a new one.
    let (old, new) = (Origin::start("old").await, Origin::start("new").await);
    let mut config = common::config(&old, &new);
    // One health check per origin, at start.
    config.health_interval = Duration::from_secs(3600);
    let s = cutover_traffic::splitter::start(config).await.unwrap();
    until("the first health check", || {
        old.conns.load(std::sync::atomic::Ordering::SeqCst) >= 1
    })
    .await;
    let before = old.conns.load(std::sync::atomic::Ordering::SeqCst);
    for i in 0..60 {
        let (method, body): (&str, &[u8]) = match i % 3 {
            0 => ("GET", b""),
            1 => ("HEAD", b""),
            _ => ("PUT", b"some bytes"),
        };
        let g = get(s.addr, method, "/", None, body).await;
        assert_eq!((g.status, g.origin.as_str()), (200, "old"));
    }
    // A slow, streamed response too.
    let g = get(s.addr, "GET", "/slow", None, b"").await;
    assert_eq!(g.body, "first,last");
    // One connection carries them all; a few spare ones are allowed for a connection that
    // was not yet ready for the next request when it came.
    let opened = old.conns.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(
        (1..=6).contains(&opened),
        "{opened} connections to the origin for 61 requests one after the other"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_the_origin_closed_meanwhile_costs_no_request() {
    // Idle connections to the origin are polled by no one until a request takes one, so
    // the origin's close is found out then: the request must still go, even a POST, which
    // is never sent twice.
    let (old, new) = (Origin::start("old").await, Origin::start("new").await);
    let mut config = common::config(&old, &new);
    config.health_interval = Duration::from_secs(3600);
    let s = cutover_traffic::splitter::start(config).await.unwrap();
    for round in 0..5 {
        let g = get(s.addr, "POST", "/", None, b"a body").await;
        assert_eq!((g.status, g.body.as_str()), (200, "old 6"), "round {round}");
        let before = old.conns.load(std::sync::atomic::Ordering::SeqCst);
        old.close_connections();
        // The origin's close reaches the splitter's side of the connection.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let g = get(s.addr, "POST", "/", None, b"a body").await;
        assert_eq!((g.status, g.body.as_str()), (200, "old 6"), "round {round}");
        assert!(old.conns.load(std::sync::atomic::Ordering::SeqCst) > before);
    }
    let status = admin(&s).status().await.unwrap();
    let o = &status.origins[0];
    assert!(o.up, "a closed idle connection is no failure: {o:?}");
    assert_eq!(o.metrics.retries, 0, "{o:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_name_the_client_and_hop_by_hop_ones_stay_behind() {
    let (old, new) = (Origin::start("old").await, Origin::start("new").await);
    let s = splitter(&old, &new).await;
    let g = get(s.addr, "GET", "/", None, b"").await;
    assert_eq!(g.seen_forwarded, "127.0.0.1 | http | app.example.test");
    // A chain from a proxy in front is extended; what the client set is kept; headers
    // named by Connection go no further.
    let g = get_with(
        s.addr,
        "GET",
        "/",
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example"),
            ("connection", "x-private"),
            ("x-private", "secret-for-the-next-hop-only"),
        ],
        b"",
    )
    .await;
    assert_eq!(
        (g.status, g.seen_forwarded.as_str(), g.seen_private.as_str()),
        (200, "203.0.113.7, 127.0.0.1 | https | shop.example", "-")
    );
    // Several X-Forwarded-For lines are one chain, on both paths: the direct one (HTTP/1.1)
    // and hyper's (HTTP/1.0 here).
    for version in ["1.1", "1.0"] {
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let req = format!(
            "GET / HTTP/{version}\r\nHost: a\r\nX-Forwarded-For: 192.0.2.1\r\nX-Forwarded-For: 192.0.2.2\r\nConnection: close, x-private\r\nX-Private: no\r\n\r\n"
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).await.unwrap();
        let got = got.to_ascii_lowercase();
        assert!(
            got.contains("x-seen-forwarded: 192.0.2.1, 192.0.2.2, 127.0.0.1 | http | a\r\n"),
            "HTTP/{version}: {got}"
        );
        assert!(
            got.contains("x-seen-private: -\r\n"),
            "HTTP/{version}: {got}"
        );
    }
    s.stop().await;
}
