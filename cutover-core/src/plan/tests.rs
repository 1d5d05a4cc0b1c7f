//! The plan file's tests: every section read, checked and refused as a user would write it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::*;

fn env() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(
        "SRC".into(),
        "postgres://app:pw1@src.example:5432/app".into(),
    );
    m.insert(
        "DST".into(),
        "postgres://app:pw2@dst.example:5432/app".into(),
    );
    m
}

#[test]
fn the_template_is_a_valid_plan_with_defaults() {
    let text = template("${SRC}", "${DST}");
    let plan = parse(&text, Path::new("cutover.toml"), &env()).unwrap();
    assert_eq!(plan.sync.mode, Mode::Native);
    assert_eq!(plan.sync.publication(), "cutover_pub");
    assert_eq!(plan.verify.chunk_rows, 10_000);
    assert_eq!(plan.status.refresh, Duration::from_secs(2));
    assert_eq!(plan.source.url.host, "src.example");
    assert_eq!(plan.source.replication_url, plan.source.url);
    let json = serde_json::to_string(&plan).unwrap();
    assert!(!json.contains("pw1") && !json.contains("pw2"), "{json}");
}

#[test]
fn a_minimal_plan_takes_every_default() {
    let text = "[source]\nurl = \"${SRC}\"\n[target]\nurl = \"${DST}\"\n";
    let plan = parse(text, Path::new("p.toml"), &env()).unwrap();
    assert!(plan.sync.copy_schema);
    assert_eq!(plan.sync.ready_timeout, Duration::from_secs(6 * 3600));
    assert_eq!(plan.journal_path(), PathBuf::from("p.journal.db"));
}

#[test]
fn every_problem_is_reported_at_once_with_its_position() {
    let text = "[source]\nurl = \"${NOPE}\"\n[target]\nurl = \"postgres://u:inline@h/d\"\n\
                [sync]\nmode = \"magic\"\nname = \"Bad-Name\"\nexclude_tables = [\"nodot\"]\n\
                [verify]\nparallel = 0\n";
    let err = parse(text, Path::new("cutover.toml"), &env()).unwrap_err();
    let p = err.problems();
    let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "source.url",
            "target.url",
            "sync.mode",
            "sync.name",
            "sync.exclude_tables",
            "verify.parallel"
        ]
    );
    assert_eq!((p[0].line, p[0].column), (2, 7));
    assert_eq!((p[2].line, p[2].column), (6, 8));
    let shown = err.to_string();
    assert!(
        shown.starts_with("cutover.toml:2:7: source.url: environment variable NOPE is not set"),
        "{shown}"
    );
    assert!(
        !shown.contains("inline@"),
        "the inline password must not be echoed: {shown}"
    );
    assert_eq!(shown.lines().count(), 6);
}

#[test]
fn unknown_keys_are_refused_with_their_position() {
    let text =
        "[source]\nurl = \"${SRC}\"\n[target]\nurl = \"${DST}\"\n[sync]\nmodee = \"native\"\n";
    let err = parse(text, Path::new("cutover.toml"), &env()).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.starts_with("cutover.toml:6:1: unknown field `modee`"),
        "{shown}"
    );
}

#[test]
fn durations_are_typed() {
    let text = "[source]\nurl = \"${SRC}\"\n[target]\nurl = \"${DST}\"\n[sync]\nready_timeout = \"soon\"\n";
    let err = parse(text, Path::new("c.toml"), &env()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("c.toml:6:17: sync.ready_timeout: "),
        "{err}"
    );
}

#[test]
fn same_database_on_both_sides_is_refused() {
    let text = "[source]\nurl = \"${SRC}\"\n[target]\nurl = \"${SRC}\"\n";
    let err = parse(text, Path::new("c.toml"), &env()).unwrap_err();
    assert!(
        err.to_string().contains("points at the same database"),
        "{err}"
    );
}

#[test]
fn a_proxy_section_is_checked_whole() {
    let mut e = env();
    e.insert("TOKEN".into(), "s3cret-token".into());
    e.insert("APP_PW".into(), "app-pw".into());
    let good = "[source]\nurl = \"${SRC}\"\n[target]\nurl = \"${DST}\"\n\
                [proxy]\nadmin_token = \"${TOKEN}\"\n[[proxy.users]]\nname = \"app\"\npassword = \"${APP_PW}\"\n";
    let plan = parse(good, Path::new("p.toml"), &e).unwrap();
    let p = plan.proxy().unwrap();
    assert_eq!(p.listen.port(), 6432);
    assert_eq!(p.health_listen, None);
    assert_eq!(p.shutdown_timeout, std::time::Duration::from_secs(30));
    assert_eq!(p.user("app").unwrap().auth, ClientAuth::ScramSha256);
    assert_eq!(plan.proxy_state_path(), Path::new("p.proxy.json"));
    let json = serde_json::to_string(&plan).unwrap();
    assert!(
        !json.contains("s3cret-token") && !json.contains("app-pw"),
        "{json}"
    );
    assert!(plan.secrets().iter().any(|s| s.expose() == "s3cret-token"));

    let bad = "[source]\nurl = \"${SRC}\"\n[target]\nurl = \"${DST}\"\n\
               [proxy]\nadmin_listen = \"0.0.0.0:6433\"\nadmin_token = \"inline\"\n\
               health_listen = \"everywhere\"\n\
               [[proxy.users]]\nname = \"app\"\nauth = \"kerberos\"\n";
    let err = parse(bad, Path::new("p.toml"), &e).unwrap_err();
    let text = err.to_string();
    for want in [
        "beyond loopback the admin API, which can switch the database, needs TLS",
        "inline",
        "kerberos",
        "no password",
        "proxy.health_listen: \"everywhere\" is not an address",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    // With TLS, the admin API may listen beyond loopback.
    let tls = good.replace(
        "[proxy]\n",
        "[proxy]\nadmin_listen = \"0.0.0.0:6433\"\ntls_cert = \"p.crt\"\ntls_key = \"p.key\"\n",
    );
    let plan = parse(&tls, Path::new("p.toml"), &e).unwrap();
    assert!(!plan.proxy().unwrap().admin_listen.ip().is_loopback());
    let none = parse(
        "[source]\nurl = \"${SRC}\"\n[target]\nurl = \"${DST}\"\n",
        Path::new("p.toml"),
        &e,
    )
    .unwrap();
    assert!(none.proxy().unwrap_err().contains("no [proxy] section"));
}

#[test]
fn dns_and_traffic_sections_are_checked_and_hide_their_secrets() {
    let mut e = env();
    e.insert("TSIG".into(), "dHNpZy1zZWNyZXQ=".into());
    e.insert("TT".into(), "traffic-token-1".into());
    e.insert("PORT".into(), "5000".into());
    let text = "[source]\nurl = \"${SRC}\"\n[target]\nurl = \"${DST}\"\n\
                [dns]\nprovider = \"rfc2136\"\nzone = \"Example.com.\"\nname = \"www.example.com\"\n\
                old = [\"192.0.2.1\"]\nnew = [\"192.0.2.2\"]\n\
                [dns.rfc2136]\nserver = \"127.0.0.1:53\"\nkey_name = \"k\"\nsecret = \"${TSIG}\"\n\
                [traffic]\nlisten = \"0.0.0.0:${PORT}\"\nadmin_token = \"${TT}\"\n\
                [traffic.old]\nurl = \"http://127.0.0.1:5001\"\n[traffic.new]\nurl = \"https://new.example.com\"\n";
    let plan = parse(text, Path::new("p.toml"), &e).unwrap();
    let dns = plan.dns().unwrap();
    assert_eq!(
        (dns.zone.as_str(), dns.low_ttl),
        ("example.com", Duration::from_secs(60))
    );
    assert_eq!(dns.authoritative, ["127.0.0.1:53".parse().unwrap()]);
    let t = plan.traffic().unwrap();
    assert_eq!(t.listen.port(), 5000);
    assert_eq!(t.steps, [1, 5, 10, 25, 50, 100]);
    assert_eq!(t.idle_timeout, Duration::from_secs(75));
    assert_eq!(plan.traffic_state_path(), Path::new("p.traffic.json"));
    let err = parse(
        &text.replace("[traffic.old]", "idle_timeout = \"10ms\"\n[traffic.old]"),
        Path::new("p.toml"),
        &e,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("traffic.idle_timeout: must be at least 100ms"),
        "{err}"
    );
    let json = serde_json::to_string(&plan).unwrap();
    assert!(
        !json.contains("dHNpZy1zZWNyZXQ=") && !json.contains("traffic-token-1"),
        "{json}"
    );
    let secrets = plan.secrets();
    assert!(secrets.iter().any(|s| s.expose() == "traffic-token-1"));
    assert!(secrets.iter().any(|s| s.expose() == "dHNpZy1zZWNyZXQ="));
    let none = parse(
        "[source]\nurl = \"${SRC}\"\n[target]\nurl = \"${DST}\"\n",
        Path::new("p.toml"),
        &e,
    )
    .unwrap();
    assert!(none.dns().unwrap_err().contains("no [dns] section"));
    assert!(none.traffic().unwrap_err().contains("no [traffic] section"));
}

#[test]
fn prometheus_gates_take_an_optional_requests_query() {
    let mut e = env();
    e.insert("TT".into(), "traffic-token-1".into());
    let plan = |extra: &str| {
        format!(
            "[source]\nurl = \"${{SRC}}\"\n[target]\nurl = \"${{DST}}\"\n\
             [traffic]\nadmin_token = \"${{TT}}\"\nmetrics = \"prometheus\"\n\
             prometheus_url = \"http://127.0.0.1:9090\"\nsuccess_rate_query = \"100\"\n\
             p99_query = \"0.1\"\n{extra}\
             [traffic.old]\nurl = \"http://127.0.0.1:5001\"\n[traffic.new]\nurl = \"http://127.0.0.1:5002\"\n"
        )
    };
    let requests = |text: &str| match &parse(text, Path::new("p.toml"), &e)
        .unwrap()
        .traffic()
        .unwrap()
        .metrics
    {
        GateSource::Prometheus { requests_query, .. } => requests_query.clone(),
        GateSource::Splitter => panic!("prometheus expected"),
    };
    assert_eq!(requests(&plan("")), None);
    assert_eq!(
        requests(&plan("requests_query = 'sum(increase(x[30s]))'\n")),
        Some("sum(increase(x[30s]))".to_string())
    );
    // Written but empty: one line naming the key, where it is and what to write.
    let err = parse(&plan("requests_query = \" \"\n"), Path::new("p.toml"), &e).unwrap_err();
    let shown = err.to_string();
    assert_eq!(shown.lines().count(), 1, "{shown}");
    assert!(
        shown.starts_with("p.toml:11:18: traffic.requests_query: is empty; write a PromQL query giving the new app's request count in a check's window, like "),
        "{shown}"
    );
    // Not a string: the parser names the key and what it expected.
    let err = parse(&plan("requests_query = 5\n"), Path::new("p.toml"), &e).unwrap_err();
    let shown = err.to_string();
    assert_eq!(shown.lines().count(), 1, "{shown}");
    assert_eq!(
        shown,
        "p.toml:11:18: traffic.requests_query: invalid type: integer `5`, expected a string"
    );
}

#[test]
fn prometheus_credentials_by_reference_one_way_and_never_in_clear() {
    let mut e = env();
    e.insert("TT".into(), "traffic-token-1".into());
    e.insert("PT".into(), "prom-token-9".into());
    e.insert("PP".into(), "prom-pass-9".into());
    let plan = |url: &str, extra: &str| {
        format!(
            "[source]\nurl = \"${{SRC}}\"\n[target]\nurl = \"${{DST}}\"\n\
             [traffic]\nadmin_token = \"${{TT}}\"\nmetrics = \"prometheus\"\n\
             prometheus_url = \"{url}\"\nsuccess_rate_query = \"100\"\n\
             p99_query = \"0.1\"\n{extra}\
             [traffic.old]\nurl = \"http://127.0.0.1:5001\"\n[traffic.new]\nurl = \"http://127.0.0.1:5002\"\n"
        )
    };
    let auth = |text: &str| match &parse(text, Path::new("p.toml"), &e)
        .unwrap()
        .traffic()
        .unwrap()
        .metrics
    {
        GateSource::Prometheus { auth, .. } => auth.clone(),
        GateSource::Splitter => panic!("prometheus expected"),
    };
    let error = |text: &str| {
        let shown = parse(text, Path::new("p.toml"), &e)
            .unwrap_err()
            .to_string();
        assert_eq!(shown.lines().count(), 1, "{shown}");
        shown
    };
    let https = "https://prometheus.example.com";
    assert!(auth(&plan(https, "")).is_none());
    match auth(&plan(https, "prometheus_token = \"${PT}\"\n")) {
        Some(PrometheusAuth::Bearer { token }) => assert_eq!(token.expose(), "prom-token-9"),
        other => panic!("{other:?}"),
    }
    let basic = plan(
        https,
        "prometheus_user = \"12345\"\nprometheus_password = \"${PP}\"\n",
    );
    match auth(&basic) {
        Some(PrometheusAuth::Basic { user, password }) => {
            assert_eq!((user.as_str(), password.expose()), ("12345", "prom-pass-9"))
        }
        other => panic!("{other:?}"),
    }
    // The plan's JSON form never holds them.
    let json = serde_json::to_string(
        &parse(&basic, Path::new("p.toml"), &e)
            .unwrap()
            .traffic()
            .unwrap(),
    )
    .unwrap();
    assert!(!json.contains("prom-pass-9"), "{json}");
    // Written inline, both ways at once, half of basic, in clear over the network: refused,
    // each in one line that says what to do.
    assert!(error(&plan(https, "prometheus_token = \"abc\"\n"))
        .contains("traffic.prometheus_token: is written inline; keep secrets out of the plan"));
    assert!(error(&plan(
        https,
        "prometheus_token = \"${PT}\"\nprometheus_user = \"u\"\nprometheus_password = \"${PP}\"\n"
    ))
    .contains("are two ways to log in; keep the one your Prometheus asks for"));
    assert!(error(&plan(https, "prometheus_user = \"u\"\n"))
        .contains("traffic.prometheus_password: is needed with traffic.prometheus_user"));
    assert!(error(&plan(https, "prometheus_password = \"${PP}\"\n"))
        .contains("traffic.prometheus_user: is needed with traffic.prometheus_password"));
    assert!(error(&plan(
        "http://prometheus.example.com",
        "prometheus_token = \"${PT}\"\n"
    ))
    .contains("traffic.prometheus_url: is plain http to another machine, so the Prometheus credentials would cross the network readable; use https://"));
    // On this machine plain http is fine.
    assert!(auth(&plan(
        "http://127.0.0.1:9090",
        "prometheus_token = \"${PT}\"\n"
    ))
    .is_some());
}
