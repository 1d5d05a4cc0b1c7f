//! [dns]: the record that moves users, and who serves its zone.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::error::Collector;
use super::values::*;
use super::Env;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// Who serves the zone: "rfc2136", "route53" or "cloudflare". No default.
    pub provider: Spanned<String>,
    /// The zone, e.g. "example.com". No default.
    pub zone: Spanned<String>,
    /// The name users resolve, e.g. "www.example.com" (the zone itself for the apex). No default.
    pub name: Spanned<String>,
    /// "A", "AAAA" or "CNAME". Default: "A".
    #[serde(default = "default_record_type")]
    pub record_type: Spanned<String>,
    /// What the name answers for the old app: addresses, or one host name for a CNAME.
    pub old: Vec<Spanned<String>>,
    /// What it answers for the new app, likewise.
    pub new: Vec<Spanned<String>>,
    /// The TTL `cutover dns lower-ttl` sets ahead of the move. Default: "60s".
    #[serde(default = "default_low_ttl", with = "humantime_serde")]
    pub low_ttl: Duration,
    /// Authoritative servers `cutover dns verify` asks, as "ip:port". Default: rfc2136.server.
    #[serde(default)]
    pub authoritative: Vec<Spanned<String>>,
    /// Recursive resolvers `cutover dns verify` asks too, as "ip:port". Default: none.
    #[serde(default)]
    pub resolvers: Vec<Spanned<String>>,
    /// With provider = "rfc2136".
    #[serde(default)]
    pub rfc2136: Option<RawRfc2136>,
    /// With provider = "route53".
    #[serde(default)]
    pub route53: Option<RawRoute53>,
    /// With provider = "cloudflare".
    #[serde(default)]
    pub cloudflare: Option<RawCloudflare>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRfc2136 {
    /// The primary server that accepts updates, "ip:port". No default.
    pub server: Spanned<String>,
    /// The TSIG key's name as the server knows it. No default.
    pub key_name: Spanned<String>,
    /// "hmac-sha256", "hmac-sha384" or "hmac-sha512". Default: "hmac-sha256".
    #[serde(default = "default_tsig_algorithm")]
    pub algorithm: Spanned<String>,
    /// The key (base64), by reference: "${CUTOVER_TSIG_SECRET}".
    pub secret: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute53 {
    /// The hosted zone's id, e.g. "Z0123456789ABC". No default.
    pub hosted_zone_id: Spanned<String>,
    /// By reference: "${AWS_ACCESS_KEY_ID}".
    pub access_key_id: Spanned<String>,
    /// By reference: "${AWS_SECRET_ACCESS_KEY}".
    pub secret_access_key: Spanned<String>,
    /// By reference, for temporary credentials: "${AWS_SESSION_TOKEN}". Default: none.
    #[serde(default)]
    pub session_token: Option<Spanned<String>>,
    /// Default: "us-east-1" (Route 53 is global; this only signs requests).
    #[serde(default = "default_region")]
    pub region: Spanned<String>,
    /// Another API address (a test double, a partition's endpoint). Default: AWS's own.
    #[serde(default)]
    pub endpoint: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCloudflare {
    /// The zone's id (Overview page of the zone). No default.
    pub zone_id: Spanned<String>,
    /// An API token with DNS edit (and Load Balancing edit) rights, by reference:
    /// "${CLOUDFLARE_API_TOKEN}".
    pub api_token: Spanned<String>,
    /// With Load Balancing: the load balancer whose pool weights carry the split. Default:
    /// none (DNS records only: a one-step switch, no weights).
    #[serde(default)]
    pub load_balancer_id: Option<Spanned<String>>,
    /// The pool of the old app (with load_balancer_id).
    #[serde(default)]
    pub old_pool: Option<Spanned<String>>,
    /// The pool of the new app (with load_balancer_id).
    #[serde(default)]
    pub new_pool: Option<Spanned<String>>,
    /// Another API address (a test double). Default: `"https://api.cloudflare.com/client/v4"`.
    #[serde(default)]
    pub endpoint: Option<Spanned<String>>,
}

pub(super) fn default_record_type() -> Spanned<String> {
    spanned("A".into())
}
pub(super) fn default_low_ttl() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_tsig_algorithm() -> Spanned<String> {
    spanned("hmac-sha256".into())
}
pub(super) fn default_region() -> Spanned<String> {
    spanned("us-east-1".into())
}

/// Set identifier of the old side of a weighted split. `cutover dns` and the Terraform that
/// `cutover app terraform` writes name the same two records, so that neither undoes the other.
pub const OLD_SET: &str = "cutover-old";
/// Set identifier of the new side of a weighted split.
pub const NEW_SET: &str = "cutover-new";

/// The type of the record that moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RecordKind {
    A,
    #[serde(rename = "AAAA")]
    Aaaa,
    #[serde(rename = "CNAME")]
    Cname,
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordKind::A => "A",
            RecordKind::Aaaa => "AAAA",
            RecordKind::Cname => "CNAME",
        })
    }
}

/// Who serves the zone, with what it needs.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
pub enum DnsProviderSettings {
    Rfc2136 {
        server: std::net::SocketAddr,
        key_name: String,
        algorithm: String,
        secret: crate::secret::Secret,
    },
    Route53 {
        hosted_zone_id: String,
        access_key_id: crate::secret::Secret,
        secret_access_key: crate::secret::Secret,
        session_token: Option<crate::secret::Secret>,
        region: String,
        endpoint: Option<String>,
    },
    Cloudflare {
        zone_id: String,
        api_token: crate::secret::Secret,
        /// (load balancer id, old pool, new pool) when the split goes through pool weights.
        load_balancer: Option<(String, String, String)>,
        endpoint: Option<String>,
    },
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DnsSettings {
    /// Lower-case, no trailing dot.
    pub zone: String,
    /// Lower-case, no trailing dot.
    pub name: String,
    pub record_type: RecordKind,
    pub old: Vec<String>,
    pub new: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub low_ttl: Duration,
    pub authoritative: Vec<std::net::SocketAddr>,
    pub resolvers: Vec<std::net::SocketAddr>,
    pub provider: DnsProviderSettings,
}

impl DnsSettings {
    /// True when the name is the zone itself.
    pub fn is_apex(&self) -> bool {
        self.name == self.zone
    }

    pub(super) fn secrets(&self) -> Vec<crate::secret::Secret> {
        match &self.provider {
            DnsProviderSettings::Rfc2136 { secret, .. } => vec![secret.clone()],
            DnsProviderSettings::Route53 {
                access_key_id,
                secret_access_key,
                session_token,
                ..
            } => [access_key_id, secret_access_key]
                .into_iter()
                .cloned()
                .chain(session_token.clone())
                .collect(),
            DnsProviderSettings::Cloudflare { api_token, .. } => vec![api_token.clone()],
        }
    }
}

pub(super) fn dns_settings(
    c: &mut Collector<'_>,
    d: &RawDns,
    env: &dyn Env,
) -> Option<DnsSettings> {
    let before = c.problems.len();
    let zone = dns_name(c, "dns.zone", &d.zone);
    let name = dns_name(c, "dns.name", &d.name);
    if let (Some(z), Some(n)) = (&zone, &name) {
        if n != z && !n.ends_with(&format!(".{z}")) {
            c.push(
                d.name.span(),
                "dns.name",
                format!("{n} is not in the zone {z}; set dns.zone to the zone that holds it"),
            );
        }
    }
    let kind = match d.record_type.get_ref().to_ascii_uppercase().as_str() {
        "A" => Some(RecordKind::A),
        "AAAA" => Some(RecordKind::Aaaa),
        "CNAME" => Some(RecordKind::Cname),
        other => {
            c.push(
                d.record_type.span(),
                "dns.record_type",
                format!("\"{other}\" is not supported; use \"A\", \"AAAA\" or \"CNAME\""),
            );
            None
        }
    };
    let answers = |c: &mut Collector<'_>, field: &str, list: &[Spanned<String>]| {
        let mut out = vec![];
        if list.is_empty() {
            c.push(
                d.name.span(),
                field,
                "is empty; list what the name answers (addresses, or one host name for CNAME)",
            );
        }
        for v in list {
            let text = v.get_ref().trim().trim_end_matches('.').to_string();
            let ok = match kind {
                Some(RecordKind::A) => text.parse::<std::net::Ipv4Addr>().is_ok(),
                Some(RecordKind::Aaaa) => text.parse::<std::net::Ipv6Addr>().is_ok(),
                Some(RecordKind::Cname) => dns_name(c, field, v).is_some() && list.len() == 1,
                None => true,
            };
            if !ok {
                c.push(
                    v.span(),
                    field,
                    format!(
                        "\"{}\" does not fit record_type {}; write addresses for A/AAAA, one host name for CNAME",
                        v.get_ref(),
                        kind.map(|k| k.to_string()).unwrap_or_default()
                    ),
                );
            }
            out.push(text.to_ascii_lowercase());
        }
        out
    };
    let old = answers(c, "dns.old", &d.old);
    let new = answers(c, "dns.new", &d.new);
    if kind == Some(RecordKind::Cname) && zone.is_some() && zone == name {
        c.push(
            d.record_type.span(),
            "dns.record_type",
            "a zone apex cannot be a CNAME; use A/AAAA records, or the splitter (`cutover traffic serve`) in front of the old app",
        );
    }
    if d.low_ttl < Duration::from_secs(1) || d.low_ttl > Duration::from_secs(86400) {
        c.push(
            0..0,
            "dns.low_ttl",
            "must be between 1s and 1d; 60s is usual",
        );
    }
    let authoritative: Vec<_> = d
        .authoritative
        .iter()
        .filter_map(|a| socket_addr(c, "dns.authoritative", a, env))
        .collect();
    let resolvers: Vec<_> = d
        .resolvers
        .iter()
        .filter_map(|a| socket_addr(c, "dns.resolvers", a, env))
        .collect();
    let sections = [
        ("rfc2136", d.rfc2136.is_some()),
        ("route53", d.route53.is_some()),
        ("cloudflare", d.cloudflare.is_some()),
    ];
    let chosen = d.provider.get_ref().as_str();
    for (name, present) in sections {
        if present && name != chosen {
            c.push(
                d.provider.span(),
                &format!("dns.{name}"),
                format!("[dns.{name}] is set but provider is \"{chosen}\"; remove one of them"),
            );
        }
    }
    let missing = |c: &mut Collector<'_>, section: &str| {
        c.push(
            d.provider.span(),
            "dns.provider",
            format!("provider \"{section}\" needs a [dns.{section}] section"),
        );
    };
    let provider = match chosen {
        "rfc2136" => match &d.rfc2136 {
            None => {
                missing(c, "rfc2136");
                None
            }
            Some(r) => {
                let server = socket_addr(c, "dns.rfc2136.server", &r.server, env);
                let algorithm = r.algorithm.get_ref().to_ascii_lowercase();
                if !["hmac-sha256", "hmac-sha384", "hmac-sha512"].contains(&algorithm.as_str()) {
                    c.push(
                        r.algorithm.span(),
                        "dns.rfc2136.algorithm",
                        format!("\"{algorithm}\" is not supported; use \"hmac-sha256\", \"hmac-sha384\" or \"hmac-sha512\""),
                    );
                }
                let secret = secret(c, "dns.rfc2136.secret", &r.secret, env);
                let key_name = r.key_name.get_ref().trim_end_matches('.').to_string();
                if key_name.is_empty() {
                    c.push(
                        r.key_name.span(),
                        "dns.rfc2136.key_name",
                        "is empty; write the key's name as the server knows it",
                    );
                }
                Some(DnsProviderSettings::Rfc2136 {
                    server: server?,
                    key_name,
                    algorithm,
                    secret: secret?,
                })
            }
        },
        "route53" => match &d.route53 {
            None => {
                missing(c, "route53");
                None
            }
            Some(r) => {
                let id = r
                    .hosted_zone_id
                    .get_ref()
                    .trim_start_matches("/hostedzone/");
                if id.is_empty() || !id.chars().all(|ch| ch.is_ascii_alphanumeric()) {
                    c.push(
                        r.hosted_zone_id.span(),
                        "dns.route53.hosted_zone_id",
                        "is not a hosted zone id; copy it from the Route 53 console (like \"Z0123456789ABC\")",
                    );
                }
                let key = secret(c, "dns.route53.access_key_id", &r.access_key_id, env);
                let secret = secret(
                    c,
                    "dns.route53.secret_access_key",
                    &r.secret_access_key,
                    env,
                );
                let token = r
                    .session_token
                    .as_ref()
                    .map(|t| super::values::secret(c, "dns.route53.session_token", t, env));
                Some(DnsProviderSettings::Route53 {
                    hosted_zone_id: id.to_string(),
                    access_key_id: key?,
                    secret_access_key: secret?,
                    session_token: match token {
                        Some(t) => Some(t?),
                        None => None,
                    },
                    region: r.region.get_ref().clone(),
                    endpoint: url_setting(c, "dns.route53.endpoint", &r.endpoint, env),
                })
            }
        },
        "cloudflare" => match &d.cloudflare {
            None => {
                missing(c, "cloudflare");
                None
            }
            Some(r) => {
                let token = secret(c, "dns.cloudflare.api_token", &r.api_token, env);
                let lb = match (&r.load_balancer_id, &r.old_pool, &r.new_pool) {
                    (None, None, None) => None,
                    (Some(lb), Some(o), Some(n)) => Some((
                        lb.get_ref().clone(),
                        o.get_ref().clone(),
                        n.get_ref().clone(),
                    )),
                    _ => {
                        c.push(
                            r.zone_id.span(),
                            "dns.cloudflare.load_balancer_id",
                            "load_balancer_id, old_pool and new_pool go together; set all three or none",
                        );
                        None
                    }
                };
                Some(DnsProviderSettings::Cloudflare {
                    zone_id: r.zone_id.get_ref().clone(),
                    api_token: token?,
                    load_balancer: lb,
                    endpoint: url_setting(c, "dns.cloudflare.endpoint", &r.endpoint, env),
                })
            }
        },
        other => {
            c.push(
                d.provider.span(),
                "dns.provider",
                format!(
                    "\"{other}\" is not a provider; use \"rfc2136\", \"route53\" or \"cloudflare\""
                ),
            );
            None
        }
    };
    if c.problems.len() > before {
        return None;
    }
    let mut authoritative = authoritative;
    if authoritative.is_empty() {
        if let Some(DnsProviderSettings::Rfc2136 { server, .. }) = &provider {
            authoritative.push(*server);
        }
    }
    Some(DnsSettings {
        zone: zone?,
        name: name?,
        record_type: kind?,
        old,
        new,
        low_ttl: d.low_ttl,
        authoritative,
        resolvers,
        provider: provider?,
    })
}
