//! Route 53 against our own fake of its REST XML API (which can answer PENDING, throttle and
//! refuse a batch), and a smoke test against moto_server.

#![cfg(feature = "route53")]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::route53::{fake, one, provider, settings, weighted, SECRET_KEY, ZONE_ID};
use cutover_core::plan::RecordKind;
use cutover_traffic::dns::{ops, DnsError, DnsProvider, NEW_SET, OLD_SET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_is_one_batch_and_waits_for_insync() {
    let (f, addr) = fake().await;
    let s = settings(format!("http://{addr}"), ZONE_ID);
    let p = provider(&s);
    f.pending.store(3, Ordering::SeqCst);
    p.replace(&s.name, RecordKind::A, &weighted(&s))
        .await
        .unwrap();
    assert_eq!(
        f.batches.load(Ordering::SeqCst),
        1,
        "plain → weighted in one batch"
    );
    assert_eq!(
        f.polls.load(Ordering::SeqCst),
        4,
        "three PENDING, then INSYNC"
    );
    let sets = p.records(&s.name, RecordKind::A).await.unwrap();
    let shares: Vec<_> = sets
        .iter()
        .map(|s| (s.weight.clone().unwrap(), s.values.clone()))
        .collect();
    assert_eq!(
        shares,
        [
            ((NEW_SET.to_string(), 10), vec!["198.51.100.20".to_string()]),
            ((OLD_SET.to_string(), 90), vec!["192.0.2.10".to_string()]),
        ]
    );
    // 10% → 50%: both weights change in one batch of UPSERTs.
    p.replace(
        &s.name,
        RecordKind::A,
        &ops::split_sets(&s, 50, true, false).unwrap(),
    )
    .await
    .unwrap();
    // 100%: back to one plain record.
    p.replace(
        &s.name,
        RecordKind::A,
        &ops::split_sets(&s, 100, true, false).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(f.batches.load(Ordering::SeqCst), 3);
    let sets = p.records(&s.name, RecordKind::A).await.unwrap();
    assert_eq!(sets.len(), 1);
    assert_eq!(
        (sets[0].weight.clone(), sets[0].values.clone(), sets[0].ttl),
        (None, vec!["198.51.100.20".to_string()], 60)
    );
}

/// The weighted records Terraform owns (`cutover app terraform` writes them with these set
/// identifiers) stay those two records at 100% and back at 0%: only their weights move, so a
/// later `terraform apply` finds what it made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_records_stay_weighted_at_the_ends_of_a_switch() {
    let (_f, addr) = fake().await;
    let s = settings(format!("http://{addr}"), ZONE_ID);
    let p = provider(&s);
    p.replace(
        &s.name,
        RecordKind::A,
        &ops::split_sets(&s, 0, true, true).unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = cutover_core::Journal::open(&dir.path().join("j.db")).unwrap();
    let run = journal.begin_run("dns switch").unwrap();
    let steps = cutover_core::engine::Steps::new(&journal, run, &|_| {});
    for (percent, old, new) in [(100u8, 0u32, 100u32), (0, 100, 0)] {
        ops::set_split(&p, &s, percent, true, &steps).await.unwrap();
        let mut sets: Vec<_> = p
            .records(&s.name, RecordKind::A)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.weight.unwrap())
            .collect();
        sets.sort();
        assert_eq!(
            sets,
            [(NEW_SET.to_string(), new), (OLD_SET.to_string(), old)],
            "{percent}%"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_with_backoff() {
    let (f, addr) = fake().await;
    let s = settings(format!("http://{addr}"), ZONE_ID);
    let p = provider(&s);
    f.throttle.store(3, Ordering::SeqCst);
    p.replace(&s.name, RecordKind::A, &weighted(&s))
        .await
        .unwrap();
    assert_eq!(f.throttled.load(Ordering::SeqCst), 3);
    assert_eq!(f.batches.load(Ordering::SeqCst), 1);

    // Throttled beyond the retries: a clear error, nothing half-done.
    f.throttle.store(100, Ordering::SeqCst);
    let e = p
        .replace(
            &s.name,
            RecordKind::A,
            &ops::split_sets(&s, 100, true, false).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, DnsError::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("Throttling"), "{e}");
    assert!(!e.to_string().contains(SECRET_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_changes_nothing_and_says_why() {
    let (f, addr) = fake().await;
    let s = settings(format!("http://{addr}"), ZONE_ID);
    let p = provider(&s);
    f.refuse.store(1, Ordering::SeqCst);
    let e = p
        .replace(&s.name, RecordKind::A, &weighted(&s))
        .await
        .unwrap_err();
    assert!(matches!(e, DnsError::Refused(_)), "{e}");
    assert!(
        e.to_string()
            .starts_with("Route 53 refused to change www.example.com (InvalidChangeBatch:"),
        "{e}"
    );
    assert_eq!(f.batches.load(Ordering::SeqCst), 0);
    let sets = p.records(&s.name, RecordKind::A).await.unwrap();
    assert_eq!((sets.len(), sets[0].weight.clone()), (1, None));

    let wrong_zone = settings(format!("http://{addr}"), "ZNOPE");
    let e = provider(&wrong_zone)
        .records("www.example.com", RecordKind::A)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("NoSuchHostedZone")
            && e.to_string().contains("dns.route53.hosted_zone_id"),
        "{e}"
    );
}

/// Request shapes against moto's Route 53 (`pip install 'moto[server]'`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_server_accepts_our_requests() {
    let Some(moto) = which("moto_server") else {
        panic!("moto_server is not installed; install it with `pip install 'moto[server]'` (the CI script does, in a virtualenv)");
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(moto)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(child);
    {
        let base = format!("http://127.0.0.1:{port}");
        let mut zone_id = None;
        for _ in 0..300 {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><CreateHostedZoneRequest xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><Name>example.com.</Name><CallerReference>cutover-test</CallerReference></CreateHostedZoneRequest>";
            if let Ok((code, text)) = cutover_traffic::http::request(
                hyper::Method::POST,
                &format!("{base}/2013-04-01/hostedzone"),
                &[
                    ("content-type", "text/xml".into()),
                    // moto tells services apart by the signature's scope.
                    ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDFAKE/20240101/us-east-1/route53/aws4_request, SignedHeaders=host, Signature=0".into()),
                ],
                Some(body.as_bytes().to_vec()),
                Duration::from_secs(5),
            )
            .await
            {
                let text = String::from_utf8_lossy(&text).into_owned();
                assert!(code.is_success(), "{code}: {text}");
                zone_id = one(&text, "Id").map(|i| i.trim_start_matches("/hostedzone/").to_string());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let zone_id = zone_id.expect("moto_server answered");
        let s = settings(base, &zone_id);
        let p = provider(&s);
        p.replace(
            &s.name,
            RecordKind::A,
            &ops::split_sets(&s, 0, true, false).unwrap(),
        )
        .await
        .unwrap();
        p.replace(&s.name, RecordKind::A, &weighted(&s))
            .await
            .unwrap();
        let sets = p.records(&s.name, RecordKind::A).await.unwrap();
        let mut weights: Vec<_> = sets.iter().filter_map(|s| s.weight.clone()).collect();
        weights.sort();
        assert_eq!(
            weights,
            [(NEW_SET.to_string(), 10), (OLD_SET.to_string(), 90)]
        );
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.is_file())
}
