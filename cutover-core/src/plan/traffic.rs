//! [traffic]: the HTTP splitter and the canary.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::error::Collector;
use super::proxy::default_drain_timeout;
use super::values::*;
use super::Env;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTraffic {
    /// Where the splitter takes client requests; "${PORT}" works. Default: "0.0.0.0:8080".
    #[serde(default = "default_traffic_listen")]
    pub listen: Spanned<String>,
    /// Admin API and Prometheus `/metrics`; loopback only. Default: "127.0.0.1:8081".
    #[serde(default = "default_traffic_admin")]
    pub admin_listen: Spanned<String>,
    /// Bearer token of the admin API, by reference: "${CUTOVER_TRAFFIC_TOKEN}".
    pub admin_token: Spanned<String>,
    /// The old app. No default.
    pub old: RawOrigin,
    /// The new app. No default.
    pub new: RawOrigin,
    /// What the canary moves: "splitter" (its weights) or "dns" (the `[dns]` provider's
    /// weighted records). Default: "splitter".
    #[serde(default = "default_weights_via")]
    pub weights_via: Spanned<String>,
    /// Cookie that keeps a user on one side. Default: "cutover_origin".
    #[serde(default = "default_sticky_cookie")]
    pub sticky_cookie: Spanned<String>,
    /// Path of the active health check (GET, 2xx/3xx = healthy). Default: "/".
    #[serde(default = "default_health_path")]
    pub health_path: Spanned<String>,
    /// Time between health checks. Default: "2s".
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub health_interval: Duration,
    /// Failed checks in a row before an origin is marked down. Default: 2.
    #[serde(default = "default_two")]
    pub unhealthy_after: Spanned<i64>,
    /// Passed checks in a row before it is marked up again. Default: 2.
    #[serde(default = "default_two")]
    pub healthy_after: Spanned<i64>,
    /// How long requests in flight may take to finish at shutdown. Default: "30s".
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long a client connection may wait for its next request, or take to send one,
    /// before the splitter closes it: idle keep-alive connections and clients that
    /// vanished without closing do not pile up. Default: "75s" (nginx's keepalive_timeout).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Other attempts after a connection failure (idempotent requests, or any request that
    /// was provably not sent). Default: 2.
    #[serde(default = "default_two")]
    pub retries: Spanned<i64>,
    /// Canary weights of the new app, in percent. Default: [1, 5, 10, 25, 50, 100].
    #[serde(default = "default_steps")]
    pub steps: Vec<Spanned<i64>>,
    /// How long each step is watched before the next. Default: "5m".
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How often the gates are checked within a step. Default: "30s".
    #[serde(default = "default_check_every", with = "humantime_serde")]
    pub check_every: Duration,
    /// Lowest success rate (non-5xx, in percent) of the new app that passes. Default: 99.
    #[serde(default = "default_success_rate")]
    pub min_success_rate: Spanned<f64>,
    /// Highest p99 latency of the new app that passes. Default: "1s".
    #[serde(default = "default_max_p99", with = "humantime_serde")]
    pub max_p99: Duration,
    /// Failed checks in a row that roll back to 0%. Default: 1.
    #[serde(default = "default_one")]
    pub failure_threshold: Spanned<i64>,
    /// Fewer requests than this in a check is "no data", which fails the check. Default: 10.
    #[serde(default = "default_min_requests")]
    pub min_requests: Spanned<i64>,
    /// Where the gates read: "splitter" (its own metrics) or "prometheus". Default: "splitter".
    #[serde(default = "default_gate_source")]
    pub metrics: Spanned<String>,
    /// With metrics = "prometheus": the server's address, e.g. "http://127.0.0.1:9090".
    #[serde(default)]
    pub prometheus_url: Option<Spanned<String>>,
    /// With metrics = "prometheus": a query giving the new app's success rate in percent.
    #[serde(default)]
    pub success_rate_query: Option<Spanned<String>>,
    /// With metrics = "prometheus": a query giving the new app's p99 latency in seconds.
    #[serde(default)]
    pub p99_query: Option<Spanned<String>>,
    /// With metrics = "prometheus": a query giving the number of requests that reached the
    /// new app in a check's window, e.g. `sum(increase(...[30s]))`. With it, a check that
    /// counts fewer than min_requests is "no data"; without it, Prometheus gives the canary
    /// no count and min_requests does not apply. Default: none.
    #[serde(default)]
    pub requests_query: Option<Spanned<String>>,
    /// With metrics = "prometheus", a server that asks for a bearer token (a managed
    /// Prometheus, or one behind an authenticating proxy): the token, by environment
    /// reference, e.g. "${PROMETHEUS_TOKEN}". Default: none.
    #[serde(default)]
    pub prometheus_token: Option<Spanned<String>>,
    /// With metrics = "prometheus", a server that asks for basic authentication (Prometheus's
    /// own web config, Grafana Cloud): the user, and the password by environment reference.
    /// Default: none.
    #[serde(default)]
    pub prometheus_user: Option<Spanned<String>>,
    #[serde(default)]
    pub prometheus_password: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOrigin {
    /// "http://host:port" or "https://host:port"; "${VAR}" works. No default.
    pub url: Spanned<String>,
    /// Host header sent to this origin. Default: the client's own.
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    /// TLS server name sent to this origin. Default: the URL's host.
    #[serde(default)]
    pub sni: Option<Spanned<String>>,
    /// Extra CA certificates (PEM) trusted for this origin. Default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
}

pub(super) fn default_traffic_listen() -> Spanned<String> {
    spanned("0.0.0.0:8080".into())
}
pub(super) fn default_traffic_admin() -> Spanned<String> {
    spanned("127.0.0.1:8081".into())
}
pub(super) fn default_weights_via() -> Spanned<String> {
    spanned("splitter".into())
}
pub(super) fn default_sticky_cookie() -> Spanned<String> {
    spanned("cutover_origin".into())
}
pub(super) fn default_health_path() -> Spanned<String> {
    spanned("/".into())
}
pub(super) fn default_idle_timeout() -> Duration {
    Duration::from_secs(75)
}

pub(super) fn default_health_interval() -> Duration {
    Duration::from_secs(2)
}
pub(super) fn default_two() -> Spanned<i64> {
    spanned(2)
}
pub(super) fn default_one() -> Spanned<i64> {
    spanned(1)
}
pub(super) fn default_steps() -> Vec<Spanned<i64>> {
    [1, 5, 10, 25, 50, 100].into_iter().map(spanned).collect()
}
pub(super) fn default_interval() -> Duration {
    Duration::from_secs(300)
}
pub(super) fn default_check_every() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_success_rate() -> Spanned<f64> {
    spanned(99.0)
}
pub(super) fn default_max_p99() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_min_requests() -> Spanned<i64> {
    spanned(10)
}
pub(super) fn default_gate_source() -> Spanned<String> {
    spanned("splitter".into())
}

/// One side of the split.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OriginSettings {
    /// "http(s)://host:port", without a path.
    pub url: String,
    pub host: Option<String>,
    pub sni: Option<String>,
    pub ca_file: Option<PathBuf>,
}

/// What the canary moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightsVia {
    Splitter,
    Dns,
}

/// Where the canary's gates read.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum GateSource {
    Splitter,
    Prometheus {
        url: String,
        success_rate_query: String,
        p99_query: String,
        /// None: no request count, so `min_requests` does not apply.
        requests_query: Option<String>,
        /// None: the server asks for no credentials.
        auth: Option<PrometheusAuth>,
    },
}

/// How the gates log in to Prometheus.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PrometheusAuth {
    /// `Authorization: Bearer <token>`.
    Bearer { token: crate::secret::Secret },
    /// `Authorization: Basic <user:password>`.
    Basic {
        user: String,
        password: crate::secret::Secret,
    },
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TrafficSettings {
    pub listen: std::net::SocketAddr,
    pub admin_listen: std::net::SocketAddr,
    pub admin_token: crate::secret::Secret,
    pub old: OriginSettings,
    pub new: OriginSettings,
    pub weights_via: WeightsVia,
    pub sticky_cookie: String,
    pub health_path: String,
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    pub retries: u32,
    pub steps: Vec<u8>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub check_every: Duration,
    pub min_success_rate: f64,
    #[serde(with = "humantime_serde")]
    pub max_p99: Duration,
    pub failure_threshold: u32,
    pub min_requests: u64,
    pub metrics: GateSource,
}

pub(super) fn origin_settings(
    c: &mut Collector<'_>,
    field: &str,
    o: &RawOrigin,
    env: &dyn Env,
) -> Option<OriginSettings> {
    let url = url_setting(c, &format!("{field}.url"), &Some(o.url.clone()), env)?;
    let parsed = url::Url::parse(&url).ok()?;
    if parsed.path() != "/" || parsed.query().is_some() {
        c.push(
            o.url.span(),
            &format!("{field}.url"),
            "must not have a path or query; write only \"scheme://host:port\"",
        );
        return None;
    }
    Some(OriginSettings {
        url,
        host: plain(&o.host),
        sni: plain(&o.sni),
        ca_file: o.ca_file.as_ref().map(|s| PathBuf::from(s.get_ref())),
    })
}

pub(super) fn traffic_settings(
    c: &mut Collector<'_>,
    t: &RawTraffic,
    env: &dyn Env,
) -> Option<TrafficSettings> {
    let before = c.problems.len();
    let listen = socket_addr(c, "traffic.listen", &t.listen, env);
    let admin_listen = socket_addr(c, "traffic.admin_listen", &t.admin_listen, env);
    if let Some(a) = admin_listen {
        if !a.ip().is_loopback() {
            c.push(
                t.admin_listen.span(),
                "traffic.admin_listen",
                "must be a loopback address (127.0.0.1 or ::1): the admin API moves users",
            );
        }
    }
    let admin_token = secret(c, "traffic.admin_token", &t.admin_token, env);
    let old = origin_settings(c, "traffic.old", &t.old, env);
    let new = origin_settings(c, "traffic.new", &t.new, env);
    let weights_via = match t.weights_via.get_ref().as_str() {
        "splitter" => WeightsVia::Splitter,
        "dns" => WeightsVia::Dns,
        other => {
            c.push(
                t.weights_via.span(),
                "traffic.weights_via",
                format!("\"{other}\" is not a choice; use \"splitter\" or \"dns\""),
            );
            WeightsVia::Splitter
        }
    };
    let cookie = t.sticky_cookie.get_ref().clone();
    if cookie.is_empty()
        || !cookie
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
    {
        c.push(
            t.sticky_cookie.span(),
            "traffic.sticky_cookie",
            "use letters, digits, _ and - only",
        );
    }
    if !t.health_path.get_ref().starts_with('/') {
        c.push(
            t.health_path.span(),
            "traffic.health_path",
            "must start with /",
        );
    }
    let count = |c: &mut Collector<'_>, field: &str, v: &Spanned<i64>, min: i64, max: i64| {
        let n = *v.get_ref();
        if !(min..=max).contains(&n) {
            c.push(v.span(), field, format!("must be between {min} and {max}"));
        }
        n.clamp(min, max)
    };
    let unhealthy_after = count(c, "traffic.unhealthy_after", &t.unhealthy_after, 1, 100) as u32;
    let healthy_after = count(c, "traffic.healthy_after", &t.healthy_after, 1, 100) as u32;
    let retries = count(c, "traffic.retries", &t.retries, 0, 10) as u32;
    let failure_threshold = count(
        c,
        "traffic.failure_threshold",
        &t.failure_threshold,
        1,
        1000,
    ) as u32;
    let min_requests = count(c, "traffic.min_requests", &t.min_requests, 1, i64::MAX) as u64;
    let mut steps = vec![];
    for s in &t.steps {
        let n = *s.get_ref();
        if !(1..=100).contains(&n) || steps.last().is_some_and(|&l: &u8| l as i64 >= n) {
            c.push(
                s.span(),
                "traffic.steps",
                "steps are percentages from 1 to 100 in increasing order, like [1, 5, 10, 25, 50, 100]",
            );
        }
        steps.push(n.clamp(0, 100) as u8);
    }
    if steps.last() != Some(&100) {
        c.push(
            0..0,
            "traffic.steps",
            "the last step must be 100 (everyone on the new app)",
        );
    }
    let rate = *t.min_success_rate.get_ref();
    if !(0.0..=100.0).contains(&rate) {
        c.push(
            t.min_success_rate.span(),
            "traffic.min_success_rate",
            "is a percentage between 0 and 100",
        );
    }
    for (field, d) in [
        ("traffic.health_interval", t.health_interval),
        ("traffic.idle_timeout", t.idle_timeout),
        ("traffic.interval", t.interval),
        ("traffic.check_every", t.check_every),
    ] {
        if d < Duration::from_millis(100) {
            c.push(0..0, field, "must be at least 100ms");
        }
    }
    if t.check_every > t.interval {
        c.push(
            0..0,
            "traffic.check_every",
            "must not be longer than traffic.interval",
        );
    }
    let metrics = match t.metrics.get_ref().as_str() {
        "splitter" => Some(GateSource::Splitter),
        "prometheus" => {
            let url = url_setting(c, "traffic.prometheus_url", &t.prometheus_url, env);
            let q = |c: &mut Collector<'_>, field: &str, v: &Option<Spanned<String>>| {
                let v = plain(v);
                if v.as_deref().is_none_or(str::is_empty) {
                    c.push(
                        t.metrics.span(),
                        field,
                        "is needed with metrics = \"prometheus\"; write a PromQL query giving one number",
                    );
                }
                v
            };
            let success = q(c, "traffic.success_rate_query", &t.success_rate_query);
            let p99 = q(c, "traffic.p99_query", &t.p99_query);
            // Optional, but when written it must be a query: an empty one would be a count
            // nobody meant to skip.
            let requests = t.requests_query.as_ref().and_then(|v| {
                if v.get_ref().trim().is_empty() {
                    c.push(
                        v.span(),
                        "traffic.requests_query",
                        "is empty; write a PromQL query giving the new app's request count in a check's window, like 'sum(increase(http_requests_total{app=\"new\"}[30s]))', or remove the line",
                    );
                    None
                } else {
                    Some(v.get_ref().clone())
                }
            });
            if url.is_none() && t.prometheus_url.is_none() {
                c.push(
                    t.metrics.span(),
                    "traffic.prometheus_url",
                    "is needed with metrics = \"prometheus\"; write it like \"http://127.0.0.1:9090\"",
                );
            }
            let auth = prometheus_auth(c, t, url.as_deref(), env);
            match (url, success, p99, auth) {
                (Some(url), Some(s), Some(p), Ok(auth)) => Some(GateSource::Prometheus {
                    url,
                    success_rate_query: s,
                    p99_query: p,
                    requests_query: requests,
                    auth,
                }),
                _ => None,
            }
        }
        other => {
            c.push(
                t.metrics.span(),
                "traffic.metrics",
                format!("\"{other}\" is not a source; use \"splitter\" or \"prometheus\""),
            );
            None
        }
    };
    if c.problems.len() > before {
        return None;
    }
    Some(TrafficSettings {
        listen: listen?,
        admin_listen: admin_listen?,
        admin_token: admin_token?,
        old: old?,
        new: new?,
        weights_via,
        sticky_cookie: cookie,
        health_path: t.health_path.get_ref().clone(),
        health_interval: t.health_interval,
        unhealthy_after,
        healthy_after,
        drain_timeout: t.drain_timeout,
        idle_timeout: t.idle_timeout,
        retries,
        steps,
        interval: t.interval,
        check_every: t.check_every,
        min_success_rate: rate,
        max_p99: t.max_p99,
        failure_threshold,
        min_requests,
        metrics: metrics?,
    })
}

/// traffic.prometheus_token, or traffic.prometheus_user with traffic.prometheus_password; never
/// both, never half of the second, and never over plain http beyond this machine. Err: a
/// problem was reported.
fn prometheus_auth(
    c: &mut Collector<'_>,
    t: &RawTraffic,
    url: Option<&str>,
    env: &dyn Env,
) -> Result<Option<PrometheusAuth>, ()> {
    let before = c.problems.len();
    let auth = match (
        &t.prometheus_token,
        &t.prometheus_user,
        &t.prometheus_password,
    ) {
        (None, None, None) => return Ok(None),
        (Some(token), None, None) => secret(c, "traffic.prometheus_token", token, env)
            .map(|token| PrometheusAuth::Bearer { token }),
        (None, Some(user), Some(password)) => {
            let name = user.get_ref().trim().to_string();
            if name.is_empty() || name.contains(':') {
                c.push(
                    user.span(),
                    "traffic.prometheus_user",
                    "must be a user name, not empty and without ':'",
                );
            }
            secret(c, "traffic.prometheus_password", password, env).map(|password| {
                PrometheusAuth::Basic {
                    user: name,
                    password,
                }
            })
        }
        (Some(token), _, _) => {
            c.push(
                token.span(),
                "traffic.prometheus_token",
                "and traffic.prometheus_user/prometheus_password are two ways to log in; keep the one your Prometheus asks for",
            );
            None
        }
        (None, Some(user), None) => {
            c.push(
                user.span(),
                "traffic.prometheus_password",
                "is needed with traffic.prometheus_user; write it as \"${PROMETHEUS_PASSWORD}\" and export the variable",
            );
            None
        }
        (None, None, Some(password)) => {
            c.push(
                password.span(),
                "traffic.prometheus_user",
                "is needed with traffic.prometheus_password; write the user name",
            );
            None
        }
    };
    let clear = url
        .and_then(|u| url::Url::parse(u).ok())
        .filter(|u| u.scheme() == "http")
        .and_then(|u| u.host().map(|h| h.to_owned()))
        .is_some_and(|h| match h {
            url::Host::Domain(d) => d != "localhost",
            url::Host::Ipv4(a) => !a.is_loopback(),
            url::Host::Ipv6(a) => !a.is_loopback(),
        });
    if clear {
        c.push(
            t.prometheus_url.as_ref().map(|v| v.span()).unwrap_or(0..0),
            "traffic.prometheus_url",
            "is plain http to another machine, so the Prometheus credentials would cross the network readable; use https://",
        );
    }
    match auth {
        Some(a) if c.problems.len() == before => Ok(Some(a)),
        _ => Err(()),
    }
}
