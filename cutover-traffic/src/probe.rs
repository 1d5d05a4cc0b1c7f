//! Judging the new app before any user reaches it.
//!
//! - [`wait_healthy`]: its health path answers 2xx.
//! - [`synthetic`]: requests written in the plan, each with the status and the JSON fields its
//!   answer must have. Every check runs and every failure is listed.
//! - [`shadow`]: read-only requests sent to the old and the new app at the same moment, and
//!   their answers compared: status, the headers that matter, and the body (JSON with the
//!   plan's ignored fields left out, else byte for byte). A difference is something a user
//!   would notice after the move, found while no user can.

use std::time::{Duration, Instant};

use cutover_core::plan::{CheckSettings, OriginSettings, ShadowSettings};
use serde::Serialize;
use serde_json::Value;

use crate::http::{exchange, Answer, Target};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An app as the probes reach it: its address, and the Host (and TLS name) of its site.
#[derive(Clone, Debug)]
pub struct App {
    pub url: String,
    pub host: Option<String>,
    target: Target,
}

impl App {
    pub fn new(url: &str, host: Option<&str>, sni: Option<&str>) -> Result<App, String> {
        Ok(App {
            url: url.trim_end_matches('/').to_string(),
            host: host.map(str::to_string),
            target: Target::new(url, sni, None)?,
        })
    }

    pub fn from_origin(o: &OriginSettings) -> Result<App, String> {
        let mut app = App::new(&o.url, o.host.as_deref(), o.sni.as_deref())?;
        app.target = Target::new(&o.url, o.sni.as_deref(), o.ca_file.as_deref())?;
        Ok(app)
    }

    async fn send(&self, method: &str, path: &str, body: Option<&str>) -> Result<Answer, String> {
        let method = hyper::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut headers: Vec<(&str, String)> = vec![("accept", "application/json".into())];
        if let Some(h) = &self.host {
            headers.push(("host", h.clone()));
        }
        if body.is_some() {
            headers.push(("content-type", "application/json".into()));
        }
        exchange(
            &self.target,
            method,
            &format!("{}{path}", self.url),
            &headers,
            body.map(|b| b.as_bytes().to_vec()),
            REQUEST_TIMEOUT,
        )
        .await
    }
}

/// Waits until `GET path` answers 2xx, for at most `wait`. `progress` hears each failed try.
pub async fn wait_healthy(
    app: &App,
    path: &str,
    wait: Duration,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<u16, String> {
    let started = Instant::now();
    let mut last;
    loop {
        match app.send("GET", path, None).await {
            Ok(a) if a.status.is_success() => return Ok(a.status.as_u16()),
            Ok(a) => last = format!("GET {path} answered {}", a.status.as_u16()),
            Err(e) => last = e,
        }
        if started.elapsed() >= wait {
            return Err(format!(
                "the new app at {} is not healthy after {}: {last}; look at its logs, then run again",
                app.url,
                humantime::format_duration(Duration::from_secs(wait.as_secs()))
            ));
        }
        progress(&format!("waiting for the new app to be healthy: {last}"));
        tokio::time::sleep(Duration::from_secs(1).min(wait)).await;
    }
}

/// One synthetic check's result.
#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    pub problems: Vec<String>,
}

/// Sends every check and judges its answer.
pub async fn synthetic(app: &App, checks: &[CheckSettings]) -> Vec<CheckResult> {
    let mut out = vec![];
    for c in checks {
        let mut problems = vec![];
        match app.send(&c.method, &c.path, c.body.as_deref()).await {
            Err(e) => problems.push(e),
            Ok(a) => {
                if a.status.as_u16() != c.status {
                    problems.push(format!(
                        "status {} (expected {}): {}",
                        a.status.as_u16(),
                        c.status,
                        excerpt(&a.body)
                    ));
                }
                if !c.json.is_empty() {
                    match serde_json::from_slice::<Value>(&a.body) {
                        Err(_) => {
                            problems.push(format!("the answer is not JSON: {}", excerpt(&a.body)))
                        }
                        Ok(v) => {
                            for (path, want) in &c.json {
                                match json_at(&v, path) {
                                    None => problems.push(format!("{path} is missing")),
                                    Some(_) if want == "*" => {}
                                    Some(got) if same(got, want) => {}
                                    Some(got) => {
                                        problems.push(format!("{path} is {got} (expected {want})"))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out.push(CheckResult {
            name: c.name.clone(),
            passed: problems.is_empty(),
            problems,
        });
    }
    out
}

/// Equal as JSON, with a number written as text in the plan ("12.50") equal to the same
/// number in the answer and the other way round.
fn same(got: &Value, want: &Value) -> bool {
    if got == want {
        return true;
    }
    let num = |v: &Value| match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse::<f64>().ok(),
        _ => None,
    };
    matches!((num(got), num(want)), (Some(a), Some(b)) if a == b)
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 160 {
        format!("{}…", one.chars().take(160).collect::<String>())
    } else {
        one
    }
}

/// The value at a dotted path: object keys by name, array items by index ("items.0.sku").
pub fn json_at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, part| match v {
        Value::Object(m) => m.get(part),
        Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// What a shadow diff found.
#[derive(Clone, Debug, Serialize)]
pub struct ShadowReport {
    /// Pairs of answers compared.
    pub compared: usize,
    /// One line per difference, "GET /path: what differs".
    pub differences: Vec<String>,
}

/// Sends each path to both apps at once, `samples` times, and compares the answers.
pub async fn shadow(old: &App, new: &App, s: &ShadowSettings) -> ShadowReport {
    let mut report = ShadowReport {
        compared: 0,
        differences: vec![],
    };
    for path in &s.paths {
        for _ in 0..s.samples {
            let (a, b) = tokio::join!(old.send("GET", path, None), new.send("GET", path, None));
            report.compared += 1;
            let found = match (a, b) {
                (Err(e), _) => vec![format!("the old app did not answer: {e}")],
                (_, Err(e)) => vec![format!("the new app did not answer: {e}")],
                (Ok(a), Ok(b)) => compare(&a, &b, s),
            };
            for f in found {
                let line = format!("GET {path}: {f}");
                if !report.differences.contains(&line) {
                    report.differences.push(line);
                }
            }
        }
    }
    report
}

fn compare(old: &Answer, new: &Answer, s: &ShadowSettings) -> Vec<String> {
    let mut out = vec![];
    if old.status != new.status {
        out.push(format!(
            "status {} on the old app, {} on the new",
            old.status.as_u16(),
            new.status.as_u16()
        ));
    }
    for h in &s.headers {
        let get = |a: &Answer| {
            a.headers
                .get(h.as_str())
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let (x, y) = (get(old), get(new));
        if x != y {
            out.push(format!(
                "header {h} is {} on the old app, {} on the new",
                x.as_deref().unwrap_or("absent"),
                y.as_deref().unwrap_or("absent")
            ));
        }
    }
    match (
        serde_json::from_slice::<Value>(&old.body),
        serde_json::from_slice::<Value>(&new.body),
    ) {
        (Ok(x), Ok(y)) => out.extend(compare_json(&x, &y, &s.ignore)),
        _ if old.body != new.body => out.push(format!(
            "bodies differ ({} bytes on the old app, {} on the new)",
            old.body.len(),
            new.body.len()
        )),
        _ => {}
    }
    out
}

/// The differences between two JSON documents, by dotted path, leaving out every field named
/// in `ignore` (a name at any depth, or a dotted path).
pub fn compare_json(old: &Value, new: &Value, ignore: &[String]) -> Vec<String> {
    let mut out = vec![];
    walk(old, new, "", ignore, &mut out);
    out
}

fn walk(old: &Value, new: &Value, at: &str, ignore: &[String], out: &mut Vec<String>) {
    const MAX: usize = 20;
    if out.len() >= MAX {
        return;
    }
    let join = |key: &str| {
        if at.is_empty() {
            key.to_string()
        } else {
            format!("{at}.{key}")
        }
    };
    let ignored = |key: &str| ignore.iter().any(|i| i == key || *i == join(key));
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                if ignored(k) {
                    continue;
                }
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => walk(x, y, &join(k), ignore, out),
                    (Some(_), None) => out.push(format!("{} is missing on the new app", join(k))),
                    (None, Some(_)) => out.push(format!("{} is only on the new app", join(k))),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                out.push(format!(
                    "{} has {} items on the old app, {} on the new",
                    if at.is_empty() { "the answer" } else { at },
                    a.len(),
                    b.len()
                ));
            }
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                walk(x, y, &join(&i.to_string()), ignore, out);
            }
        }
        (x, y) if x != y => out.push(format!(
            "{} is {x} on the old app, {y} on the new",
            if at.is_empty() { "the answer" } else { at }
        )),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ignored_fields_are_left_out_at_any_depth_and_by_path() {
        let old = json!({"served_by": "old", "orders": [{"id": 1, "served_by": "old", "total": "1.00"}], "meta": {"at": 1, "n": 2}});
        let new = json!({"served_by": "new", "orders": [{"id": 1, "served_by": "new", "total": "1.00"}], "meta": {"at": 9, "n": 2}});
        assert!(compare_json(&old, &new, &["served_by".into(), "meta.at".into()]).is_empty());
        let d = compare_json(&old, &new, &["meta.at".into()]);
        assert_eq!(
            d,
            [
                "orders.0.served_by is \"old\" on the old app, \"new\" on the new",
                "served_by is \"old\" on the old app, \"new\" on the new"
            ]
        );
    }

    #[test]
    fn missing_fields_and_lengths_are_named() {
        let old = json!({"a": [1, 2], "b": true});
        let new = json!({"a": [1], "c": null});
        assert_eq!(
            compare_json(&old, &new, &[]),
            [
                "a has 2 items on the old app, 1 on the new",
                "b is missing on the new app",
                "c is only on the new app"
            ]
        );
    }

    #[test]
    fn dotted_paths_reach_into_objects_and_arrays() {
        let v = json!({"order": {"items": [{"sku": "A-1"}]}});
        assert_eq!(json_at(&v, "order.items.0.sku"), Some(&json!("A-1")));
        assert_eq!(json_at(&v, "order.items.1.sku"), None);
        assert!(same(&json!(12.5), &json!("12.50")));
        assert!(!same(&json!("new"), &json!("paid")));
    }
}
