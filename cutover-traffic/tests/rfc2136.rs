//! RFC 2136 with TSIG against a real BIND started by the test.

mod common;

use std::time::Duration;

use cutover_core::engine::Steps;
use cutover_core::plan::{DnsProviderSettings, DnsSettings, RecordKind};
use cutover_core::{Journal, Secret};
use cutover_testkit::bind::{Bind, KEY_NAME, KEY_SECRET, ZONE};
use cutover_traffic::dns::rfc2136::Rfc2136;
use cutover_traffic::dns::{ops, query, DnsError, DnsProvider, RecordSet};

fn settings(bind: &Bind, secret: &str) -> DnsSettings {
    DnsSettings {
        zone: ZONE.into(),
        name: format!("www.{ZONE}"),
        record_type: RecordKind::A,
        old: vec!["192.0.2.10".into()],
        new: vec!["198.51.100.20".into(), "198.51.100.21".into()],
        low_ttl: Duration::from_secs(60),
        authoritative: vec![bind.addr],
        resolvers: vec![],
        provider: DnsProviderSettings::Rfc2136 {
            server: bind.addr,
            key_name: KEY_NAME.into(),
            algorithm: "hmac-sha256".into(),
            secret: Secret::new(secret),
        },
    }
}

fn provider(bind: &Bind, secret: &str) -> Rfc2136 {
    Rfc2136::new(
        bind.addr,
        ZONE,
        KEY_NAME,
        "hmac-sha256",
        &Secret::new(secret),
    )
    .unwrap()
}

fn set(name: &str, ttl: u32, values: &[&str]) -> RecordSet {
    RecordSet {
        name: name.into(),
        kind: RecordKind::A,
        ttl,
        values: values.iter().map(|v| v.to_string()).collect(),
        weight: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_change_and_delete_a_record_with_tsig() {
    let bind = Bind::start().await;
    let p = provider(&bind, KEY_SECRET);
    let name = format!("api.{ZONE}");
    assert_eq!(p.records(&name, RecordKind::A).await.unwrap(), vec![]);

    p.replace(&name, RecordKind::A, &[set(&name, 120, &["192.0.2.1"])])
        .await
        .unwrap();
    assert_eq!(
        query::ask(bind.addr, &name, RecordKind::A).await.unwrap(),
        Some(set(&name, 120, &["192.0.2.1"]))
    );

    p.replace(
        &name,
        RecordKind::A,
        &[set(&name, 60, &["192.0.2.2", "192.0.2.3"])],
    )
    .await
    .unwrap();
    assert_eq!(
        p.records(&name, RecordKind::A).await.unwrap(),
        vec![set(&name, 60, &["192.0.2.2", "192.0.2.3"])]
    );

    p.replace(&name, RecordKind::A, &[]).await.unwrap();
    assert_eq!(
        query::ask(bind.addr, &name, RecordKind::A).await.unwrap(),
        None
    );

    // Plain DNS has no weights.
    let weighted = RecordSet {
        weight: Some(("cutover-new".into(), 10)),
        ..set(&name, 60, &["192.0.2.9"])
    };
    let e = p
        .replace(&name, RecordKind::A, &[weighted])
        .await
        .unwrap_err();
    assert!(matches!(e, DnsError::Unsupported(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_with_a_clear_error_and_changes_nothing() {
    let bind = Bind::start().await;
    let wrong = "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC13cm9uZzE=";
    let p = provider(&bind, wrong);
    let name = format!("www.{ZONE}");
    let e = p
        .replace(&name, RecordKind::A, &[set(&name, 60, &["203.0.113.66"])])
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, DnsError::Auth(_)), "{text}");
    assert_eq!(
        text,
        format!("the DNS server {} refused the TSIG key {KEY_NAME} (unknown key or wrong secret); check dns.rfc2136.key_name, algorithm and the secret it refers to", bind.addr)
    );
    assert!(!text.contains(wrong) && !text.contains(KEY_SECRET));
    assert_eq!(
        query::ask(bind.addr, &name, RecordKind::A).await.unwrap(),
        Some(set(&name, 3600, &["192.0.2.10"]))
    );
    // A key name the server does not know.
    let unknown = Rfc2136::new(
        bind.addr,
        ZONE,
        "no-such-key",
        "hmac-sha256",
        &Secret::new(KEY_SECRET),
    )
    .unwrap();
    let e = unknown
        .replace(&name, RecordKind::A, &[set(&name, 60, &["203.0.113.66"])])
        .await
        .unwrap_err();
    assert!(matches!(e, DnsError::Auth(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_ttl_then_switch_and_verify_reads_the_new_answer() {
    let bind = Bind::start().await;
    let s = settings(&bind, KEY_SECRET);
    let p = provider(&bind, KEY_SECRET);
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("j.db")).unwrap();
    let run = journal.begin_run("dns lower-ttl").unwrap();
    let observer = |_: &cutover_core::engine::StepEvent<'_>| {};
    let steps = Steps::new(&journal, run, &observer);

    let before = query::verify(&s).await;
    assert_eq!(before.len(), 1);
    assert_eq!((before[0].verdict, before[0].ttl), ("old", Some(3600)));

    let lowered = ops::lower_ttl(&p, &s, &steps).await.unwrap();
    assert!(lowered.changed);
    assert_eq!(lowered.plan.old_ttl_s, 3600);
    assert_eq!(
        lowered.plan.earliest_safe_ms(),
        lowered.plan.lowered_at_ms + 3_600_000
    );
    assert_eq!(query::verify(&s).await[0].ttl, Some(60));
    // Again: nothing to change, and the safe time does not move.
    let again = ops::lower_ttl(&p, &s, &steps).await.unwrap();
    assert!(!again.changed);
    assert_eq!(again.plan, lowered.plan);

    // Too early: refused, nothing changed.
    let e = ops::set_split(&p, &s, 100, false, &steps)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("too early: resolvers may cache the old answer of www.example.test for"),
        "{e}"
    );
    assert_eq!(query::verify(&s).await[0].verdict, "old");
    // A partial split is refused by plain DNS even when forced.
    let e = ops::set_split(&p, &s, 10, true, &steps).await.unwrap_err();
    assert!(e.to_string().contains("use the splitter"), "{e}");
    // Forced one-step switch.
    ops::set_split(&p, &s, 100, true, &steps).await.unwrap();
    let after = query::verify(&s).await;
    assert_eq!(after[0].verdict, "new");
    assert_eq!(after[0].values, ["198.51.100.20", "198.51.100.21"]);
    assert_eq!(after[0].ttl, Some(60));
    let steps_seen: Vec<String> = journal.timeline().unwrap()[0]
        .steps
        .iter()
        .map(|s| s.step.clone())
        .collect();
    assert_eq!(
        steps_seen,
        ["dns.lower_ttl", "dns.lower_ttl", "dns.split.100"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_name_waits_for_the_negative_ttl() {
    let bind = Bind::start().await;
    let mut s = settings(&bind, KEY_SECRET);
    s.name = format!("fresh.{ZONE}");
    let p = provider(&bind, KEY_SECRET);
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("j.db")).unwrap();
    let run = journal.begin_run("dns lower-ttl").unwrap();
    let observer = |_: &cutover_core::engine::StepEvent<'_>| {};
    let steps = Steps::new(&journal, run, &observer);
    let lowered = ops::lower_ttl(&p, &s, &steps).await.unwrap();
    // SOA TTL 300, MINIMUM 120: negative answers are cached for the lesser.
    assert_eq!(lowered.plan.negative_ttl_s, Some(120));
    assert_eq!(lowered.plan.longest_cache_s(), 120);
    assert!(
        lowered.warnings.iter().any(|w| w.contains("negative TTL")),
        "{:?}",
        lowered.warnings
    );
}
