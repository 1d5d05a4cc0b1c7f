//! Where the canary's gates read, and how a check is judged.
//!
//! A check covers one window (`check_every`). From the splitter, the window is the
//! difference of two `/status` snapshots of the new origin; from Prometheus, the queries
//! are expected to cover a window themselves (`rate(...[1m])`). No number, or fewer requests
//! than `min_requests`, is "no data", and no data fails the check: a canary that sees nothing
//! must not be promoted. Prometheus counts requests only when the plan has a query for it
//! (`traffic.requests_query`); without one `min_requests` does not apply there, and only a
//! window without any request is caught, as the NaN (0/0) of a rate ratio. A handful of
//! requests then passes on a handful of answers, which is why the count query exists.

use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::splitter::admin::AdminClient;
use crate::splitter::metrics::Snapshot;
use crate::splitter::Side;

/// One window's numbers for the new origin.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Measured {
    /// None when the source does not count requests (Prometheus without a requests query).
    pub requests: Option<u64>,
    /// The plan setting that counted them, named when they are too few; None for the
    /// splitter's own count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counted_by: Option<&'static str>,
    /// Percent.
    pub success_rate: Option<f64>,
    /// Seconds.
    pub p99: Option<f64>,
    /// Why a number above is missing, when its source said (Prometheus' answer). It is
    /// judged after the request count: too few requests is the reason worth showing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
    /// A check of its own that failed beside the numbers (the database gates of a migration:
    /// the replication that protects the rollback fell behind, the proxy saw server errors).
    /// It fails the window whatever the numbers say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// The thresholds of a check.
#[derive(Clone, Debug, Serialize)]
pub struct Thresholds {
    pub min_success_rate: f64,
    #[serde(with = "humantime_serde_secs")]
    pub max_p99: Duration,
    /// None when the gates count no requests (Prometheus without traffic.requests_query):
    /// then no minimum applies.
    pub min_requests: Option<u64>,
}

mod humantime_serde_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// What a check found.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Passed,
    Failed { reason: String },
    NoData { reason: String },
}

impl Verdict {
    pub fn passed(&self) -> bool {
        matches!(self, Verdict::Passed)
    }

    pub fn reason(&self) -> &str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed { reason } | Verdict::NoData { reason } => reason,
        }
    }
}

pub fn judge(m: &Measured, t: &Thresholds) -> Verdict {
    if let Some(why) = &m.failed {
        return Verdict::Failed {
            reason: why.clone(),
        };
    }
    if let (Some(n), Some(min)) = (m.requests, t.min_requests) {
        if n < min {
            let reason = match m.counted_by {
                Some(setting) => format!(
                    "no data: {setting} counted {n} requests to the new app in the window, fewer than traffic.min_requests ({min})"
                ),
                None => format!(
                    "no data: {n} requests reached the new app in the window, fewer than traffic.min_requests ({min})"
                ),
            };
            return Verdict::NoData { reason };
        }
    }
    if let Some(why) = &m.missing {
        return Verdict::NoData {
            reason: format!("no data: {why}"),
        };
    }
    let Some(rate) = m.success_rate else {
        return Verdict::NoData {
            reason: "no data: no success rate for the new app".into(),
        };
    };
    let Some(p99) = m.p99 else {
        return Verdict::NoData {
            reason: "no data: no p99 latency for the new app".into(),
        };
    };
    if rate < t.min_success_rate {
        return Verdict::Failed {
            reason: format!(
                "success rate {rate:.2}% is below traffic.min_success_rate ({}%)",
                t.min_success_rate
            ),
        };
    }
    if p99 > t.max_p99.as_secs_f64() {
        return Verdict::Failed {
            reason: format!(
                "p99 latency {:.0}ms is above traffic.max_p99 ({}ms)",
                p99 * 1000.0,
                t.max_p99.as_millis()
            ),
        };
    }
    Verdict::Passed
}

/// A source of the new origin's numbers.
pub trait Gates: Send + Sync {
    /// Starts a window now.
    fn begin(&self) -> BoxFuture<'_, Result<(), String>>;
    /// The numbers of the window since [`Gates::begin`].
    fn measure(&self) -> BoxFuture<'_, Result<Measured, String>>;
}

/// The splitter's own metrics, read from its admin API.
pub struct SplitterGates {
    client: AdminClient,
    start: Mutex<Option<Snapshot>>,
}

impl SplitterGates {
    pub fn new(client: AdminClient) -> Self {
        SplitterGates {
            client,
            start: Mutex::new(None),
        }
    }

    async fn snapshot(&self) -> Result<Snapshot, String> {
        let status = self.client.status().await?;
        status
            .origins
            .into_iter()
            .find(|o| o.side == Side::New)
            .map(|o| o.metrics)
            .ok_or_else(|| "the splitter's /status has no new origin".to_string())
    }
}

impl Gates for SplitterGates {
    fn begin(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let s = self.snapshot().await?;
            *self.start.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
            Ok(())
        })
    }

    fn measure(&self) -> BoxFuture<'_, Result<Measured, String>> {
        Box::pin(async move {
            let now = self.snapshot().await?;
            let start = self
                .start
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default();
            let w = now.since(&start);
            Ok(Measured {
                requests: Some(w.requests),
                success_rate: w.success_rate,
                p99: w.p99,
                ..Measured::default()
            })
        })
    }
}

/// Two PromQL queries, each giving one number, and optionally a third giving the request
/// count of the window.
pub struct PrometheusGates {
    pub url: String,
    pub success_rate_query: String,
    pub p99_query: String,
    /// traffic.requests_query; None: no count, so `min_requests` does not apply.
    pub requests_query: Option<String>,
    /// The credentials the server asks for; None: none.
    pub auth: Option<cutover_core::plan::PrometheusAuth>,
}

impl PrometheusGates {
    /// The one number of an instant query. Err says why there is none: Prometheus cannot be
    /// reached or refused the query, the query gives no sample (no data) or several, or its
    /// value is NaN (0/0: no requests in its window). The canary counts each as no data.
    async fn scalar(&self, field: &str, query: &str) -> Result<f64, String> {
        use base64::Engine as _;
        use cutover_core::plan::PrometheusAuth;
        let (authorization, secret) = match &self.auth {
            None => (None, None),
            Some(PrometheusAuth::Bearer { token }) => {
                (Some(format!("Bearer {}", token.expose())), Some(token))
            }
            Some(PrometheusAuth::Basic { user, password }) => (
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{user}:{}", password.expose()))
                )),
                Some(password),
            ),
        };
        let headers: Vec<(&str, String)> = authorization
            .into_iter()
            .map(|a| ("authorization", a))
            .collect();
        let (code, body) = crate::http::request(
            hyper::Method::GET,
            &format!("{}/api/v1/query?query={}", self.url, url_encode(query)),
            &headers,
            None,
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| {
            format!(
                "cannot query Prometheus at {} ({e}); check traffic.prometheus_url",
                self.url
            )
        })?;
        if code == hyper::StatusCode::UNAUTHORIZED || code == hyper::StatusCode::FORBIDDEN {
            return Err(match &self.auth {
                None => format!(
                    "Prometheus at {} asks for credentials ({code}); set traffic.prometheus_token, or traffic.prometheus_user and traffic.prometheus_password",
                    self.url
                ),
                Some(PrometheusAuth::Bearer { .. }) => format!(
                    "Prometheus at {} refused the token ({code}); check the variable traffic.prometheus_token names",
                    self.url
                ),
                Some(PrometheusAuth::Basic { user, .. }) => format!(
                    "Prometheus at {} refused user {user} ({code}); check traffic.prometheus_user and the variable traffic.prometheus_password names",
                    self.url
                ),
            });
        }
        // Whatever the server echoes, a credential never reaches a message.
        let body = match secret {
            Some(s) => bytes::Bytes::from(
                cutover_core::redact(&String::from_utf8_lossy(&body), [s]).into_bytes(),
            ),
            None => body,
        };
        let v: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        if !code.is_success() || v.as_ref().is_some_and(|v| v["status"] != "success") {
            // Prometheus explains a refused query in the JSON body's "error".
            let why = v
                .as_ref()
                .and_then(|v| v["error"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
            // A proxy's error page can be long; its start says enough.
            let why: String = why.chars().take(300).collect();
            return Err(format!(
                "Prometheus refused {field} ({code}: {why}); fix the query in the plan"
            ));
        }
        let Some(v) = v else {
            return Err(format!(
                "Prometheus at {} answered {field} with something other than JSON; check traffic.prometheus_url",
                self.url
            ));
        };
        read_scalar(field, &v["data"])
    }
}

/// The one number in the `data` of an instant query's answer.
fn read_scalar(field: &str, data: &serde_json::Value) -> Result<f64, String> {
    let text = match data["resultType"].as_str() {
        Some("scalar") => data["result"][1].as_str(),
        Some("vector") => {
            let series = data["result"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            match series {
                [] => {
                    return Err(format!(
                        "{field} gave no sample (the series does not exist or had nothing in its window)"
                    ))
                }
                [one] => one["value"][1].as_str(),
                many => {
                    return Err(format!(
                        "{field} gave {} series, not one number; aggregate it, e.g. sum(...) or sum by (le) (...) inside histogram_quantile",
                        many.len()
                    ))
                }
            }
        }
        Some("matrix") => {
            return Err(format!(
                "{field} is a range vector, not one number; wrap it, e.g. rate(...[1m])"
            ))
        }
        other => {
            return Err(format!(
                "{field} gave a {} result, not one number",
                other.unwrap_or("missing")
            ))
        }
    };
    let text = text.ok_or_else(|| format!("{field}: Prometheus' answer has no value"))?;
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(f),
        Ok(f) if f.is_nan() => Err(format!("{field} gave NaN (0/0: no requests in its window)")),
        _ => Err(format!("{field} gave {text}, not a finite number")),
    }
}

/// Percent-encodes a query parameter: only RFC 3986's unreserved characters are left as
/// they are, so PromQL's quotes, braces, `+` and `|` reach Prometheus unchanged.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Gates for PrometheusGates {
    fn begin(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    fn measure(&self) -> BoxFuture<'_, Result<Measured, String>> {
        Box::pin(async move {
            const COUNT: &str = "traffic.requests_query";
            let Some(count) = &self.requests_query else {
                return Ok(Measured {
                    success_rate: Some(
                        self.scalar("traffic.success_rate_query", &self.success_rate_query)
                            .await?,
                    ),
                    p99: Some(self.scalar("traffic.p99_query", &self.p99_query).await?),
                    ..Measured::default()
                });
            };
            let n = self.scalar(COUNT, count).await?;
            if n < 0.0 {
                return Err(format!(
                    "{COUNT} gave {n}, not a count; use increase(...) or sum(...) of a counter"
                ));
            }
            // increase() extrapolates to the window's edges, so a count may have a fraction.
            let requests = Some(n.round() as u64);
            // With a count, a missing rate or latency is kept for the judge rather than
            // returned: an empty window's NaN is then reported as the count that explains it.
            let (success_rate, p99) = match (
                self.scalar("traffic.success_rate_query", &self.success_rate_query)
                    .await,
                self.scalar("traffic.p99_query", &self.p99_query).await,
            ) {
                (Ok(s), Ok(p)) => (Some(s), Some(p)),
                (Err(e), _) | (_, Err(e)) => {
                    return Ok(Measured {
                        requests,
                        counted_by: Some(COUNT),
                        missing: Some(e),
                        ..Measured::default()
                    })
                }
            };
            Ok(Measured {
                requests,
                counted_by: Some(COUNT),
                success_rate,
                p99,
                ..Measured::default()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Thresholds {
        Thresholds {
            min_success_rate: 99.0,
            max_p99: Duration::from_millis(500),
            min_requests: Some(10),
        }
    }

    #[test]
    fn no_data_fails_and_thresholds_are_named() {
        let none = judge(&Measured::default(), &t());
        assert!(!none.passed());
        let few = judge(
            &Measured {
                requests: Some(3),
                success_rate: Some(100.0),
                p99: Some(0.01),
                ..Measured::default()
            },
            &t(),
        );
        assert!(matches!(few, Verdict::NoData { .. }), "{few:?}");
        let bad = judge(
            &Measured {
                requests: Some(100),
                success_rate: Some(90.0),
                p99: Some(0.01),
                ..Measured::default()
            },
            &t(),
        );
        assert!(bad.reason().contains("min_success_rate"), "{bad:?}");
        let slow = judge(
            &Measured {
                requests: Some(100),
                success_rate: Some(100.0),
                p99: Some(0.9),
                ..Measured::default()
            },
            &t(),
        );
        assert!(slow.reason().contains("max_p99"), "{slow:?}");
        let good = judge(
            &Measured {
                requests: None,
                success_rate: Some(99.5),
                p99: Some(0.2),
                ..Measured::default()
            },
            &t(),
        );
        assert!(good.passed());
        let other = judge(
            &Measured {
                failed: Some("the proxy saw 2 server errors in the window".into()),
                ..good_numbers()
            },
            &t(),
        );
        assert_eq!(
            other,
            Verdict::Failed {
                reason: "the proxy saw 2 server errors in the window".into()
            }
        );
    }

    fn good_numbers() -> Measured {
        Measured {
            requests: Some(100),
            success_rate: Some(100.0),
            p99: Some(0.01),
            ..Measured::default()
        }
    }

    #[test]
    fn a_count_from_a_query_is_named_and_judged_before_a_missing_number() {
        let few = judge(
            &Measured {
                requests: Some(2),
                counted_by: Some("traffic.requests_query"),
                missing: Some(
                    "traffic.success_rate_query gave NaN (0/0: no requests in its window)".into(),
                ),
                ..Measured::default()
            },
            &t(),
        );
        assert_eq!(
            few,
            Verdict::NoData {
                reason: "no data: traffic.requests_query counted 2 requests to the new app in the window, fewer than traffic.min_requests (10)".into()
            }
        );
        let missing = judge(
            &Measured {
                requests: Some(50),
                counted_by: Some("traffic.requests_query"),
                missing: Some("traffic.p99_query gave no sample".into()),
                ..Measured::default()
            },
            &t(),
        );
        assert_eq!(
            missing.reason(),
            "no data: traffic.p99_query gave no sample"
        );
        // No minimum: a count (there is none without the query) is not judged.
        let no_min = Thresholds {
            min_requests: None,
            ..t()
        };
        let m = Measured {
            requests: Some(1),
            success_rate: Some(100.0),
            p99: Some(0.01),
            ..Measured::default()
        };
        assert!(judge(&m, &no_min).passed());
    }

    #[test]
    fn prometheus_answers_give_one_number_or_say_why_not() {
        let f = "traffic.p99_query";
        let data = |v: serde_json::Value| read_scalar(f, &v);
        assert_eq!(
            data(serde_json::json!({"resultType": "scalar", "result": [1.5, "0.25"]})),
            Ok(0.25)
        );
        assert_eq!(
            data(
                serde_json::json!({"resultType": "vector", "result": [{"metric": {}, "value": [1.5, "99.5"]}]})
            ),
            Ok(99.5)
        );
        let none = data(serde_json::json!({"resultType": "vector", "result": []})).unwrap_err();
        assert!(
            none.starts_with("traffic.p99_query gave no sample"),
            "{none}"
        );
        let two = data(serde_json::json!({"resultType": "vector", "result": [
            {"metric": {"origin": "old"}, "value": [1.5, "1"]},
            {"metric": {"origin": "new"}, "value": [1.5, "2"]}
        ]}))
        .unwrap_err();
        assert!(two.contains("gave 2 series, not one number"), "{two}");
        let range = data(serde_json::json!({"resultType": "matrix", "result": [
            {"metric": {}, "values": [[1.5, "1"]]}
        ]}))
        .unwrap_err();
        assert!(range.contains("is a range vector"), "{range}");
        let nan =
            data(serde_json::json!({"resultType": "scalar", "result": [1.5, "NaN"]})).unwrap_err();
        assert!(nan.contains("NaN"), "{nan}");
        let inf =
            data(serde_json::json!({"resultType": "scalar", "result": [1.5, "+Inf"]})).unwrap_err();
        assert!(inf.contains("+Inf, not a finite number"), "{inf}");
    }

    #[test]
    fn promql_is_percent_encoded_whole() {
        assert_eq!(
            url_encode("sum(rate(x{a=\"b|c\",d!~\"5xx\"}[1m])) + 1"),
            "sum%28rate%28x%7Ba%3D%22b%7Cc%22%2Cd%21~%225xx%22%7D%5B1m%5D%29%29%20%2B%201"
        );
    }
}
