//! Cloudflare: the DNS records API, and pool weights where the user has Load Balancing.
//!
//! Plain DNS records on Cloudflare have no weights, so without a load balancer the provider
//! switches in one step. A replacement is one call to the records batch endpoint (deletes
//! and creates applied together). With `load_balancer_id`, `old_pool` and `new_pool` a
//! split sets the load balancer's random steering weights instead, and the records stay.
//! Rate limiting (HTTP 429) and server errors are retried with exponential backoff.

use std::time::Duration;

use cutover_core::plan::{DnsProviderSettings, DnsSettings, RecordKind};
use cutover_core::Secret;
use futures_util::future::BoxFuture;
use hyper::Method;
use serde_json::{json, Value};

use super::{DnsError, DnsProvider, RecordSet};

const API: &str = "https://api.cloudflare.com/client/v4";

pub struct Cloudflare {
    base: String,
    zone_id: String,
    token: Secret,
    /// (load balancer, old pool, new pool).
    load_balancer: Option<(String, String, String)>,
    old: Vec<String>,
    new: Vec<String>,
    /// First backoff; doubled per attempt.
    pub backoff: Duration,
    pub attempts: u32,
}

impl Cloudflare {
    pub fn from_settings(settings: &DnsSettings) -> Result<Cloudflare, DnsError> {
        let DnsProviderSettings::Cloudflare {
            zone_id,
            api_token,
            load_balancer,
            endpoint,
        } = &settings.provider
        else {
            return Err(DnsError::Refused(
                "the plan's provider is not cloudflare".into(),
            ));
        };
        Ok(Cloudflare {
            base: endpoint.clone().unwrap_or_else(|| API.into()),
            zone_id: zone_id.clone(),
            token: api_token.clone(),
            load_balancer: load_balancer.clone(),
            old: settings.old.clone(),
            new: settings.new.clone(),
            backoff: Duration::from_millis(500),
            attempts: 6,
        })
    }

    /// One API call, retried on 429 and 5xx; the `result` of a successful answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<Value, DnsError> {
        let url = format!("{}{path}", self.base);
        let mut wait = self.backoff;
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            let headers = [
                ("authorization", format!("Bearer {}", self.token.expose())),
                ("content-type", "application/json".to_string()),
            ];
            let result = crate::http::request(
                method.clone(),
                &url,
                &headers,
                body.as_ref().map(|b| b.to_string().into_bytes()),
                Duration::from_secs(30),
            )
            .await;
            let (status, bytes) = match result {
                Ok(r) => r,
                Err(e) => {
                    last = format!("unreachable: {e}");
                    if attempt < self.attempts {
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                    continue;
                }
            };
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let errors: Vec<String> = v["errors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| {
                            format!(
                                "{} {}",
                                e["code"],
                                e["message"].as_str().unwrap_or_default()
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let detail = if errors.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {}", errors.join("; "))
            };
            let text = crate::dns::redacted(
                &format!("Cloudflare refused to {what} ({detail})"),
                &self.token,
            );
            if status.is_success() && v["success"].as_bool() != Some(false) {
                return Ok(v["result"].clone());
            }
            match status.as_u16() {
                401 | 403 => {
                    return Err(DnsError::Auth(format!(
                        "{text}; check the token dns.cloudflare.api_token refers to (it needs Zone DNS edit, and Load Balancers edit for pool weights)"
                    )))
                }
                429 | 500..=599 => {
                    last = text;
                    if attempt < self.attempts {
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
                _ => return Err(DnsError::Refused(format!("{text}; check dns.cloudflare.zone_id and the [dns] records"))),
            }
        }
        Err(DnsError::Unavailable(format!(
            "{last}; retried {} times with backoff, try again later",
            self.attempts
        )))
    }

    async fn current(&self, name: &str, kind: RecordKind) -> Result<Vec<Value>, DnsError> {
        let result = self
            .call(
                Method::GET,
                &format!(
                    "/zones/{}/dns_records?type={kind}&name={name}&per_page=100",
                    self.zone_id
                ),
                None,
                "list records",
            )
            .await?;
        Ok(result.as_array().cloned().unwrap_or_default())
    }

    async fn read(&self, name: &str, kind: RecordKind) -> Result<Vec<RecordSet>, DnsError> {
        let records = self.current(name, kind).await?;
        if records.is_empty() {
            return Ok(vec![]);
        }
        let mut values: Vec<String> = records
            .iter()
            .filter_map(|r| r["content"].as_str())
            .map(|c| c.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        values.sort();
        // TTL 1 is Cloudflare's "automatic", which is 300 seconds.
        let ttl = records
            .iter()
            .filter_map(|r| r["ttl"].as_u64())
            .map(|t| if t == 1 { 300 } else { t as u32 })
            .min()
            .unwrap_or(300);
        Ok(vec![RecordSet {
            name: name.to_string(),
            kind,
            ttl,
            values,
            weight: None,
        }])
    }

    /// The new side's share that `sets` express, when they are a split of the plan's answers.
    fn share(&self, sets: &[RecordSet]) -> Option<u32> {
        if sets.iter().any(|s| s.weight.is_some()) {
            return sets
                .iter()
                .find(|s| {
                    s.weight
                        .as_ref()
                        .is_some_and(|(id, _)| id == super::NEW_SET)
                })
                .map(|s| s.weight.as_ref().map(|w| w.1).unwrap_or(0));
        }
        match sets {
            [s] if s.values == self.new => Some(100),
            [s] if s.values == self.old => Some(0),
            _ => None,
        }
    }

    async fn write(
        &self,
        name: &str,
        kind: RecordKind,
        sets: &[RecordSet],
    ) -> Result<(), DnsError> {
        let weighted = sets.iter().any(|s| s.weight.is_some());
        if let (Some((lb, old_pool, new_pool)), Some(p)) = (&self.load_balancer, self.share(sets)) {
            let body = json!({
                "steering_policy": "random",
                "random_steering": {
                    "default_weight": 0,
                    "pool_weights": { old_pool: f64::from(100 - p) / 100.0, new_pool: f64::from(p) / 100.0 },
                },
            });
            self.call(
                Method::PATCH,
                &format!("/zones/{}/load_balancers/{lb}", self.zone_id),
                Some(body),
                "set the pool weights",
            )
            .await?;
            return Ok(());
        }
        if weighted {
            return Err(DnsError::Unsupported(
                "Cloudflare DNS records have no weights; set dns.cloudflare.load_balancer_id, old_pool and new_pool (Load Balancing), or use the splitter (traffic.weights_via = \"splitter\") and switch DNS in one step".into(),
            ));
        }
        let current = self.current(name, kind).await?;
        let proxied = current
            .first()
            .and_then(|r| r["proxied"].as_bool())
            .unwrap_or(false);
        let deletes: Vec<Value> = current.iter().map(|r| json!({ "id": r["id"] })).collect();
        let posts: Vec<Value> = sets
            .iter()
            .flat_map(|s| {
                s.values.iter().map(move |v| {
                    json!({ "type": kind.to_string(), "name": name, "content": v, "ttl": s.ttl, "proxied": proxied })
                })
            })
            .collect();
        self.call(
            Method::POST,
            &format!("/zones/{}/dns_records/batch", self.zone_id),
            Some(json!({ "deletes": deletes, "posts": posts })),
            &format!("change {name}"),
        )
        .await?;
        Ok(())
    }
}

impl DnsProvider for Cloudflare {
    fn name(&self) -> &'static str {
        "cloudflare"
    }

    fn weighted(&self) -> bool {
        self.load_balancer.is_some()
    }

    fn records<'a>(
        &'a self,
        name: &'a str,
        kind: RecordKind,
    ) -> BoxFuture<'a, Result<Vec<RecordSet>, DnsError>> {
        Box::pin(self.read(name, kind))
    }

    fn replace<'a>(
        &'a self,
        name: &'a str,
        kind: RecordKind,
        sets: &'a [RecordSet],
    ) -> BoxFuture<'a, Result<(), DnsError>> {
        Box::pin(self.write(name, kind, sets))
    }
}
