//! Route 53 weighted records through the AWS SDK.
//!
//! A split is two record sets at the same name and type, `cutover-old` and `cutover-new`,
//! whose weights are the two shares. Every replacement is *one* change batch (Route 53
//! applies a batch atomically, so going from a plain record to two weighted ones never
//! leaves the name without an answer), then `GetChange` is polled until the change is
//! `INSYNC` on every Route 53 server. Throttling (`Throttling`, `PriorRequestNotComplete`)
//! and server errors are retried by the SDK's standard retry with exponential backoff.

use std::time::Duration;

use aws_sdk_route53::config::retry::RetryConfig;
use aws_sdk_route53::config::{BehaviorVersion, Region};
use aws_sdk_route53::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};
use aws_sdk_route53::Client;
use cutover_core::plan::{DnsProviderSettings, DnsSettings, RecordKind};
use futures_util::future::BoxFuture;

use super::{fqdn, DnsError, DnsProvider, RecordSet};

pub struct Route53 {
    client: Client,
    zone_id: String,
    /// Time between `GetChange` polls.
    pub poll: Duration,
    /// How long a change may stay PENDING.
    pub max_wait: Duration,
}

impl Route53 {
    pub fn from_settings(settings: &DnsSettings) -> Result<Route53, DnsError> {
        let DnsProviderSettings::Route53 {
            hosted_zone_id,
            access_key_id,
            secret_access_key,
            session_token,
            region,
            endpoint,
        } = &settings.provider
        else {
            return Err(DnsError::Refused(
                "the plan's provider is not route53".into(),
            ));
        };
        let credentials = aws_credential_types::Credentials::new(
            access_key_id.expose(),
            secret_access_key.expose(),
            session_token.as_ref().map(|t| t.expose().to_string()),
            None,
            "cutover-plan",
        );
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut config = aws_sdk_route53::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.clone()))
            .credentials_provider(credentials)
            .http_client(http)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(6)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(10)),
            );
        if let Some(e) = endpoint {
            config = config.endpoint_url(e);
        }
        Ok(Route53 {
            client: Client::from_conf(config.build()),
            zone_id: hosted_zone_id.clone(),
            poll: Duration::from_secs(2),
            max_wait: Duration::from_secs(900),
        })
    }

    fn error<E: ProvideErrorMetadata + std::fmt::Debug>(
        &self,
        what: &str,
        e: SdkError<E, aws_sdk_route53::config::http::HttpResponse>,
    ) -> DnsError {
        let (code, message) = match &e {
            SdkError::ServiceError(s) => (
                s.err()
                    .code()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("HTTP {}", s.raw().status().as_u16())),
                s.err().message().unwrap_or_default().to_string(),
            ),
            SdkError::TimeoutError(_) => ("timeout".into(), "no answer in time".into()),
            SdkError::DispatchFailure(d) => (
                "unreachable".into(),
                if d.is_io() {
                    "connection failed".into()
                } else {
                    format!("{d:?}").chars().take(200).collect()
                },
            ),
            other => ("error".into(), format!("{other}")),
        };
        let text = format!("Route 53 refused to {what} ({code}: {message})");
        match code.as_str() {
            "AccessDenied" | "InvalidClientTokenId" | "SignatureDoesNotMatch"
            | "UnrecognizedClientException" | "ExpiredToken" => DnsError::Auth(format!(
                "{text}; check dns.route53.access_key_id and secret_access_key (the key needs route53:ChangeResourceRecordSets, ListResourceRecordSets and GetChange)"
            )),
            "InvalidChangeBatch" | "InvalidInput" | "NoSuchHostedZone" => {
                DnsError::Refused(format!("{text}; check dns.route53.hosted_zone_id and the [dns] records"))
            }
            _ => DnsError::Unavailable(format!("{text}; retried with backoff and still failing, try again later")),
        }
    }

    async fn read(&self, name: &str, kind: RecordKind) -> Result<Vec<RecordSet>, DnsError> {
        let wanted = fqdn(name);
        let out = self
            .client
            .list_resource_record_sets()
            .hosted_zone_id(&self.zone_id)
            .start_record_name(&wanted)
            .start_record_type(rr_type(kind))
            .max_items(300)
            .send()
            .await
            .map_err(|e| self.error("list records", e))?;
        let mut sets = vec![];
        for s in out.resource_record_sets() {
            if !s.name().eq_ignore_ascii_case(&wanted) || s.r#type() != &rr_type(kind) {
                continue;
            }
            if s.alias_target().is_some() {
                return Err(DnsError::Unsupported(format!(
                    "{name} {kind} is a Route 53 alias record; cutover moves plain records: point [dns] new at the alias target's name with record_type = \"CNAME\", or use the splitter"
                )));
            }
            let mut values: Vec<String> = s
                .resource_records()
                .iter()
                .map(|r| r.value().trim_end_matches('.').to_ascii_lowercase())
                .collect();
            values.sort();
            sets.push(RecordSet {
                name: name.to_string(),
                kind,
                ttl: s.ttl().unwrap_or(0) as u32,
                values,
                weight: s
                    .set_identifier()
                    .map(|id| (id.to_string(), s.weight().unwrap_or(0) as u32)),
            });
        }
        Ok(sets)
    }

    async fn write(
        &self,
        name: &str,
        kind: RecordKind,
        sets: &[RecordSet],
    ) -> Result<(), DnsError> {
        let current = self.read(name, kind).await?;
        let id = |s: &RecordSet| s.weight.as_ref().map(|(i, _)| i.clone());
        let mut changes = vec![];
        for old in &current {
            match sets.iter().find(|n| id(n) == id(old)) {
                Some(new) if new == old => {}
                Some(new) => changes.push(change(ChangeAction::Upsert, new)?),
                None => changes.push(change(ChangeAction::Delete, old)?),
            }
        }
        for new in sets {
            if !current.iter().any(|o| id(o) == id(new)) {
                changes.push(change(ChangeAction::Create, new)?);
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        // Deletions first within the batch: Route 53 checks the batch as a whole, but a
        // plain record and weighted ones cannot coexist even for a moment in its order.
        changes.sort_by_key(|c| {
            if c.action() == &ChangeAction::Delete {
                0
            } else {
                1
            }
        });
        let batch = ChangeBatch::builder()
            .comment("cutover")
            .set_changes(Some(changes))
            .build()
            .map_err(|e| DnsError::Refused(e.to_string()))?;
        let out = self
            .client
            .change_resource_record_sets()
            .hosted_zone_id(&self.zone_id)
            .change_batch(batch)
            .send()
            .await
            .map_err(|e| self.error(&format!("change {name}"), e))?;
        let mut info = out.change_info().cloned();
        let started = std::time::Instant::now();
        while let Some(i) = &info {
            if i.status() == &ChangeStatus::Insync {
                return Ok(());
            }
            if started.elapsed() > self.max_wait {
                return Err(DnsError::Unavailable(format!(
                    "Route 53 change {} is still PENDING after {}s; it will apply by itself, check it with `cutover dns verify`",
                    i.id(),
                    self.max_wait.as_secs()
                )));
            }
            tokio::time::sleep(self.poll).await;
            info = self
                .client
                .get_change()
                .id(i.id())
                .send()
                .await
                .map_err(|e| self.error("report the change", e))?
                .change_info()
                .cloned();
        }
        Err(DnsError::Unavailable(
            "Route 53 returned no change info".into(),
        ))
    }
}

fn rr_type(kind: RecordKind) -> RrType {
    match kind {
        RecordKind::A => RrType::A,
        RecordKind::Aaaa => RrType::Aaaa,
        RecordKind::Cname => RrType::Cname,
    }
}

fn change(action: ChangeAction, s: &RecordSet) -> Result<Change, DnsError> {
    let bad = |e: aws_sdk_route53::error::BuildError| DnsError::Refused(e.to_string());
    let mut rrset = ResourceRecordSet::builder()
        .name(fqdn(&s.name))
        .r#type(rr_type(s.kind))
        .ttl(i64::from(s.ttl));
    for v in &s.values {
        let value = if s.kind == RecordKind::Cname {
            fqdn(v)
        } else {
            v.clone()
        };
        rrset = rrset.resource_records(
            ResourceRecord::builder()
                .value(value)
                .build()
                .map_err(bad)?,
        );
    }
    if let Some((id, w)) = &s.weight {
        rrset = rrset.set_identifier(id).weight(i64::from(*w));
    }
    Change::builder()
        .action(action)
        .resource_record_set(rrset.build().map_err(bad)?)
        .build()
        .map_err(bad)
}

impl DnsProvider for Route53 {
    fn name(&self) -> &'static str {
        "route53"
    }

    fn weighted(&self) -> bool {
        true
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
