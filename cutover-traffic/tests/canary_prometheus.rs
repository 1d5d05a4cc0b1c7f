//! The canary with gates read from a real Prometheus (traffic.metrics = "prometheus") that
//! scrapes the splitter's `/metrics`, two local origins behind the splitter and a steady
//! load. Needs the `prometheus` program (`apt-get install -y prometheus`).

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::prometheus::Prometheus;
use common::{checks, live_splitter, Load, Origin, Recording, TOKEN};
use cutover_core::engine::Steps;
use cutover_core::{Journal, Secret};
use cutover_traffic::canary::gates::{PrometheusGates, Thresholds};
use cutover_traffic::canary::{self, Canary, Outcome, Phase};
use cutover_traffic::splitter::admin::AdminClient;
use cutover_traffic::splitter::{self, Side};

/// The new app's success rate in percent over the last 5s, as a plan would write it.
const SUCCESS_RATE: &str = r#"100 * sum(rate(cutover_splitter_requests_total{origin="new",class!~"5xx|error"}[5s])) / sum(rate(cutover_splitter_requests_total{origin="new"}[5s]))"#;
/// The new app's p99 latency in seconds over the last 5s.
const P99: &str = r#"histogram_quantile(0.99, sum by (le) (rate(cutover_splitter_request_duration_seconds_bucket{origin="new"}[5s])))"#;
/// The requests that reached the new app over the last 5s (traffic.requests_query).
const REQUESTS: &str = r#"sum(increase(cutover_splitter_requests_total{origin="new"}[5s]))"#;

/// Checks every 2s: Prometheus scrapes every second, so each check sees new samples.
fn canary(steps: Vec<u8>, interval_ms: u64, check_every_ms: u64) -> Canary {
    Canary {
        steps,
        interval: Duration::from_millis(interval_ms),
        check_every: Duration::from_millis(check_every_ms),
        failure_threshold: 1,
        thresholds: Thresholds {
            min_success_rate: 95.0,
            max_p99: Duration::from_secs(5),
            min_requests: Some(3),
        },
    }
}

fn gates(prometheus: &Prometheus, success_rate: &str, p99: &str) -> PrometheusGates {
    PrometheusGates {
        url: prometheus.url.clone(),
        success_rate_query: success_rate.to_string(),
        p99_query: p99.to_string(),
        requests_query: None,
        auth: None,
    }
}

/// Two origins, a splitter in front of them (health checks on `/live`), a Prometheus that
/// scrapes it, and its admin client.
struct Stage {
    _old: Origin,
    _new: Origin,
    splitter: splitter::Running,
    prometheus: Prometheus,
    admin: AdminClient,
}

impl Stage {
    async fn start(new_fails: bool) -> Stage {
        Self::start_with(new_fails, false).await
    }

    /// With Prometheus's own basic authentication on its API.
    async fn start_with(new_fails: bool, basic_auth: bool) -> Stage {
        let (old, new) = (Origin::start("old").await, Origin::start("new").await);
        new.fail(new_fails);
        let splitter = live_splitter(&old, &new).await;
        let prometheus = if basic_auth {
            Prometheus::start_with_basic_auth(splitter.admin_addr).await
        } else {
            Prometheus::start(splitter.admin_addr).await
        };
        let admin = AdminClient::new(splitter.admin_addr, Secret::new(TOKEN));
        Stage {
            _old: old,
            _new: new,
            splitter,
            prometheus,
            admin,
        }
    }
}

/// A canary that went to 10%, failed its first check there and was rolled back to 0%;
/// returns why.
fn rolled_back_at_10(out: Outcome, weights: &[u8], lines: &[String], names: &[String]) -> String {
    assert_eq!(
        (out.phase, out.new_percent),
        (Phase::RolledBack, 0),
        "{lines:#?}"
    );
    assert_eq!(weights, [10, 0], "{lines:#?}");
    assert_eq!(names, ["traffic.canary.step.1", "traffic.canary.rollback"]);
    let reason = out.reason.unwrap();
    assert_eq!(
        lines.last().unwrap(),
        &format!("rolled back to 0%: {reason}")
    );
    reason
}

/// Runs a canary in a fresh journal; returns its outcome, the weights set, the report's
/// lines and the journaled step names.
async fn run(
    c: &Canary,
    admin: &AdminClient,
    gates: &PrometheusGates,
) -> (Outcome, Vec<u8>, Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("cutover.journal.db")).unwrap();
    let run = j.begin_run("traffic canary").unwrap();
    let obs = |_: &cutover_core::engine::StepEvent<'_>| {};
    let steps = Steps::new(&j, run, &obs);
    let weights = Recording::new(admin);
    let lines = Mutex::new(vec![]);
    let report = |l: &str| lines.lock().unwrap().push(l.to_string());
    let out = canary::run(c, &weights, gates, &steps, &report)
        .await
        .unwrap();
    assert_eq!(
        canary::state(&j).unwrap().unwrap().phase,
        out.phase,
        "the journal's state"
    );
    let names = j.timeline().unwrap()[0]
        .steps
        .iter()
        .map(|s| s.step.clone())
        .collect();
    (
        out,
        weights.1.into_inner().unwrap(),
        lines.into_inner().unwrap(),
        names,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_new_origin_is_promoted_by_prometheus_gates() {
    let st = Stage::start(false).await;
    let _load = Load::start(st.splitter.addr);
    let c = canary(vec![10, 50, 100], 4000, 2000);
    let (out, weights, lines, names) =
        run(&c, &st.admin, &gates(&st.prometheus, SUCCESS_RATE, P99)).await;
    assert_eq!(
        (out.phase, out.new_percent),
        (Phase::Promoted, 100),
        "{lines:#?}\n{}",
        st.prometheus.log()
    );
    assert_eq!(weights, [10, 50, 100]);
    // Two checks at each watched step, every one passed on Prometheus' numbers.
    assert_eq!(
        checks(&lines),
        [
            "check passed at 10%",
            "check passed at 10%",
            "check passed at 50%",
            "check passed at 50%"
        ],
        "{lines:#?}"
    );
    assert_eq!(
        names,
        [
            "traffic.canary.step.1",
            "traffic.canary.step.2",
            "traffic.canary.step.3"
        ]
    );
    assert_eq!(st.admin.status().await.unwrap().new_percent, 100);
    // The numbers came from scraping: Prometheus holds the new origin's answers.
    let scraped = st
        .prometheus
        .value(r#"sum(cutover_splitter_requests_total{origin="new",class="2xx"})"#)
        .await
        .unwrap_or(0.0);
    assert!(scraped > 0.0, "Prometheus saw no 2xx of the new origin");
    st.splitter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_new_origin_is_rolled_back_to_0_by_prometheus_gates() {
    let st = Stage::start(true).await;
    let _load = Load::start(st.splitter.addr);
    let c = canary(vec![10, 50, 100], 4000, 2000);
    let (out, weights, lines, names) =
        run(&c, &st.admin, &gates(&st.prometheus, SUCCESS_RATE, P99)).await;
    // The first check at 10% failed and the next weight set was 0.
    let reason = rolled_back_at_10(out, &weights, &lines, &names);
    assert!(
        reason.starts_with("success rate 0.00% is below traffic.min_success_rate (95%)"),
        "the gate read the failures from Prometheus, not an empty answer: {reason}"
    );
    let status = st.admin.status().await.unwrap();
    assert_eq!(status.new_percent, 0);
    let m = &status.origins[Side::New.index()].metrics;
    assert!(m.classes[4] > 0 && m.classes[1] == 0, "{m:?}");
    st.splitter.stop().await;
}

/// Each way a query can fail to give one number is no data, which fails the check and rolls
/// back, with a reason that says what to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_data_from_prometheus_counts_as_a_failed_check() {
    let st = Stage::start(false).await;
    let c = canary(vec![10, 100], 1500, 1500);
    let not_aggregated = r#"rate(cutover_splitter_requests_total{origin="new"}[5s])"#;
    let cases = [
        // No load at all: 0/0 in the window.
        (
            SUCCESS_RATE.to_string(),
            "no data: traffic.success_rate_query gave NaN (0/0: no requests in its window)",
        ),
        // A label that matches nothing: an empty vector.
        (
            SUCCESS_RATE.replace("origin=\"new\"", "origin=\"neww\""),
            "no data: traffic.success_rate_query gave no sample",
        ),
        // One series per status class.
        (
            not_aggregated.to_string(),
            "no data: traffic.success_rate_query gave 6 series, not one number",
        ),
        // A range vector.
        (
            r#"cutover_splitter_requests_total{origin="new",class="2xx"}[5s]"#.to_string(),
            "no data: traffic.success_rate_query is a range vector",
        ),
        // Not PromQL: Prometheus' own explanation.
        (
            "sum(rate(cutover_splitter_requests_total[5s])".to_string(),
            "no data: Prometheus refused traffic.success_rate_query (400 Bad Request: ",
        ),
    ];
    for (query, want) in cases {
        let (out, weights, lines, names) =
            run(&c, &st.admin, &gates(&st.prometheus, &query, P99)).await;
        let reason = rolled_back_at_10(out, &weights, &lines, &names);
        assert!(reason.starts_with(want), "{query}: {reason}");
    }
    // Prometheus not there: no data too, and the reason names the setting to check.
    let gone = PrometheusGates {
        url: format!("http://127.0.0.1:{}", common::free_port()),
        ..gates(&st.prometheus, SUCCESS_RATE, P99)
    };
    let (out, weights, lines, names) = run(&c, &st.admin, &gone).await;
    let reason = rolled_back_at_10(out, &weights, &lines, &names);
    assert!(
        reason.starts_with("no data: cannot query Prometheus at")
            && reason.ends_with("check traffic.prometheus_url"),
        "{reason}"
    );
    st.splitter.stop().await;
}

/// With traffic.requests_query, Prometheus gates hold each check to min_requests: a trickle
/// of healthy answers is no data, which fails the check and rolls back with a reason naming
/// the setting; the same canary with enough traffic passes every check and promotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_query_makes_too_few_requests_no_data() {
    let st = Stage::start(false).await;
    let c = Canary {
        thresholds: Thresholds {
            min_requests: Some(20),
            ..canary(vec![], 0, 0).thresholds
        },
        ..canary(vec![10, 100], 4000, 2000)
    };
    let counting = PrometheusGates {
        requests_query: Some(REQUESTS.to_string()),
        ..gates(&st.prometheus, SUCCESS_RATE, P99)
    };

    // One user on the new side (by cookie), a request every 500ms, all answered 2xx: the
    // rate and p99 alone would pass.
    let trickle = Load::paced(
        st.splitter.addr,
        1,
        Some("cutover_origin=new"),
        Duration::from_millis(500),
    );
    let (out, weights, lines, names) = run(&c, &st.admin, &counting).await;
    let reason = rolled_back_at_10(out, &weights, &lines, &names);
    assert!(
        reason.starts_with("no data: traffic.requests_query counted ")
            && reason.ends_with(
                " requests to the new app in the window, fewer than traffic.min_requests (20)"
            ),
        "{reason}"
    );
    let m = &st.admin.status().await.unwrap().origins[Side::New.index()].metrics;
    assert!(
        m.classes[1] > 0 && m.classes[4] == 0,
        "the new app answered, and only 2xx: {m:?}"
    );
    drop(trickle);

    // Enough traffic: two users on the new side, one request after the other.
    let _load = Load::users(st.splitter.addr, 2, Some("cutover_origin=new"));
    let (out, weights, lines, _) = run(&c, &st.admin, &counting).await;
    assert_eq!(
        (out.phase, out.new_percent),
        (Phase::Promoted, 100),
        "{lines:#?}"
    );
    assert_eq!(weights, [10, 100]);
    assert_eq!(
        checks(&lines),
        ["check passed at 10%", "check passed at 10%"],
        "{lines:#?}"
    );
    st.splitter.stop().await;
}

/// A Prometheus that asks for credentials (its own basic authentication, as a managed one
/// does): without them, or with a wrong password, every check is no data with a reason that
/// names the setting to fix and never the password; with them, the canary promotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_prometheus_is_read_with_the_plans_credentials() {
    use common::prometheus::{BASIC_PASSWORD, BASIC_USER};
    use cutover_core::plan::PrometheusAuth;
    let st = Stage::start_with(false, true).await;
    let _load = Load::start(st.splitter.addr);
    let c = canary(vec![10, 100], 1500, 1500);

    let anonymous = gates(&st.prometheus, SUCCESS_RATE, P99);
    let (out, weights, lines, names) = run(&c, &st.admin, &anonymous).await;
    let reason = rolled_back_at_10(out, &weights, &lines, &names);
    assert!(
        reason.starts_with("no data: Prometheus at http://127.0.0.1:")
            && reason.contains("asks for credentials (401 Unauthorized); set traffic.prometheus_token, or traffic.prometheus_user and traffic.prometheus_password"),
        "{reason}"
    );

    let wrong = PrometheusGates {
        auth: Some(PrometheusAuth::Basic {
            user: BASIC_USER.into(),
            password: Secret::new("not-the-password"),
        }),
        ..gates(&st.prometheus, SUCCESS_RATE, P99)
    };
    let (out, weights, lines, names) = run(&c, &st.admin, &wrong).await;
    let reason = rolled_back_at_10(out, &weights, &lines, &names);
    assert!(
        reason.contains("refused user gates (401 Unauthorized); check traffic.prometheus_user and the variable traffic.prometheus_password names"),
        "{reason}"
    );
    assert!(!reason.contains("not-the-password") && !lines.concat().contains("not-the-password"));

    let right = PrometheusGates {
        auth: Some(PrometheusAuth::Basic {
            user: BASIC_USER.into(),
            password: Secret::new(BASIC_PASSWORD),
        }),
        ..gates(&st.prometheus, SUCCESS_RATE, P99)
    };
    let c = canary(vec![10, 100], 4000, 2000);
    let (out, _weights, lines, _names) = run(&c, &st.admin, &right).await;
    assert_eq!(
        (out.phase, out.new_percent),
        (Phase::Promoted, 100),
        "{lines:#?}\n{}",
        st.prometheus.log()
    );
    assert_eq!(
        checks(&lines),
        ["check passed at 10%", "check passed at 10%"],
        "{lines:#?}"
    );
    assert!(!lines.concat().contains(BASIC_PASSWORD));
    st.splitter.stop().await;
}
