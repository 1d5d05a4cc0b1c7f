//! [proxy] and [switchover]: the PG proxy applications connect through, and the limits of
//! the switch it makes.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::database::default_catch_up;
use super::error::Collector;
use super::values::*;
use super::Env;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    /// Where applications connect. Default: "127.0.0.1:6432".
    #[serde(default = "default_listen")]
    pub listen: Spanned<String>,
    /// The admin API (HTTP/JSON). Default: "127.0.0.1:6433". Beyond loopback only with
    /// TLS (`tls_cert` and `tls_key`, the same certificate as for clients) and the token.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: Spanned<String>,
    /// Bearer token of the admin API, by reference: "${CUTOVER_ADMIN_TOKEN}".
    pub admin_token: Spanned<String>,
    /// `/live`, `/ready` and `/metrics` (Prometheus) for a load balancer and a scraper, e.g.
    /// "0.0.0.0:9187". They read but never change anything. Default: none.
    #[serde(default)]
    pub health_listen: Option<Spanned<String>>,
    /// On SIGTERM, how long sessions may take to end by themselves (idle ones are told to
    /// reconnect; one in a transaction may finish it) before they are cut. Default: "30s".
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// The database whose `cutover` schema the proxies share: the active backend, one lease
    /// per proxy, and the switch every proxy makes together. "target" (the default), or a
    /// URL by reference ("${CONTROL_DATABASE_URL}"), or "none" for a single proxy that keeps
    /// its state on local disk and is switched through its admin API.
    #[serde(default)]
    pub control_url: Option<Spanned<String>>,
    /// How long a switch waits for every proxy to acknowledge a pause, a resume or the
    /// switch itself. A proxy that does not answer in time makes the switch stop, undone,
    /// before its point of no return. Default: "5s".
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Certificate chain (PEM) offered to clients that ask for TLS. With `tls_key`.
    #[serde(default)]
    pub tls_cert: Option<Spanned<String>>,
    /// Private key (PEM) of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<Spanned<String>>,
    /// The CA (PEM) that `db switchover` checks an admin API beyond loopback against.
    /// Default: the system's trusted roots.
    #[serde(default)]
    pub admin_ca: Option<Spanned<String>>,
    /// The roles applications log in as. The proxy checks their password and logs in to
    /// the database with the same name and password.
    #[serde(default)]
    pub users: Vec<RawProxyUser>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyUser {
    pub name: Spanned<String>,
    /// By reference: "${APP_DATABASE_PASSWORD}". Required unless auth = "trust".
    #[serde(default)]
    pub password: Option<Spanned<String>>,
    /// How the proxy checks the client: "scram-sha-256", "md5" or "trust". Default: "scram-sha-256".
    #[serde(default = "default_auth")]
    pub auth: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSwitchover {
    /// Replication lag above which a switchover refuses to start, in MiB. Default: 16.
    #[serde(default = "default_max_lag")]
    pub max_lag_mib: Spanned<i64>,
    /// How long running transactions may take to finish once new ones are paused. Default: "30s".
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long the new primary may take to apply everything up to the fence. Default: "30s".
    #[serde(default = "default_catch_up", with = "humantime_serde")]
    pub catch_up_timeout: Duration,
}

pub(super) fn default_listen() -> Spanned<String> {
    spanned("127.0.0.1:6432".into())
}
pub(super) fn default_admin_listen() -> Spanned<String> {
    spanned("127.0.0.1:6433".into())
}
pub(super) fn default_auth() -> Spanned<String> {
    spanned("scram-sha-256".into())
}
pub(super) fn default_max_lag() -> Spanned<i64> {
    spanned(16)
}
pub(super) fn default_ack_timeout() -> Duration {
    Duration::from_secs(5)
}
pub(super) fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for RawSwitchover {
    fn default() -> Self {
        RawSwitchover {
            max_lag_mib: default_max_lag(),
            drain_timeout: default_drain_timeout(),
            catch_up_timeout: default_catch_up(),
        }
    }
}

/// How clients prove who they are to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    ScramSha256,
    Md5,
    Trust,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ProxyUser {
    pub name: String,
    pub password: Option<crate::secret::Secret>,
    pub auth: ClientAuth,
}

/// The `application_name` of every connection to the control database: a fence leaves them
/// alone (they write nothing it guards).
pub const CONTROL_APPLICATION_NAME: &str = "cutover control";

/// Where the proxies keep what they share.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Control {
    /// The `cutover` schema of the target database.
    Target,
    /// The `cutover` schema of another database.
    Url(crate::ConnString),
    /// A single proxy, its state on local disk, switched through its admin API.
    None,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ProxySettings {
    pub listen: std::net::SocketAddr,
    pub admin_listen: std::net::SocketAddr,
    pub admin_token: crate::secret::Secret,
    pub health_listen: Option<std::net::SocketAddr>,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    pub control: Control,
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub admin_ca: Option<PathBuf>,
    pub users: Vec<ProxyUser>,
}

impl ProxySettings {
    pub fn user(&self, name: &str) -> Option<&ProxyUser> {
        self.users.iter().find(|u| u.name == name)
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SwitchoverSettings {
    pub max_lag_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub catch_up_timeout: Duration,
}

pub(super) fn proxy_settings(
    c: &mut Collector<'_>,
    p: &RawProxy,
    env: &dyn Env,
) -> Option<ProxySettings> {
    let before = c.problems.len();
    let addr = |c: &mut Collector<'_>, field: &str, v: &Spanned<String>| match v
        .get_ref()
        .parse::<std::net::SocketAddr>(
    ) {
        Ok(a) => Some(a),
        Err(_) => {
            c.push(
                v.span(),
                field,
                format!(
                    "\"{}\" is not an address; write it as \"127.0.0.1:6432\"",
                    v.get_ref()
                ),
            );
            None
        }
    };
    let listen = addr(c, "proxy.listen", &p.listen);
    let admin_listen = addr(c, "proxy.admin_listen", &p.admin_listen);
    if let Some(a) = admin_listen {
        if !a.ip().is_loopback() && (p.tls_cert.is_none() || p.tls_key.is_none()) {
            c.push(
                p.admin_listen.span(),
                "proxy.admin_listen",
                "beyond loopback the admin API, which can switch the database, needs TLS: set proxy.tls_cert and proxy.tls_key, or listen on 127.0.0.1",
            );
        }
    }
    let admin_token = secret(c, "proxy.admin_token", &p.admin_token, env);
    let health_listen = p
        .health_listen
        .as_ref()
        .map(|h| addr(c, "proxy.health_listen", h));
    let control = match &p.control_url {
        None => Some(Control::Target),
        Some(v) if v.get_ref() == "target" => Some(Control::Target),
        Some(v) if v.get_ref() == "none" => Some(Control::None),
        Some(v) => url(c, "proxy.control_url", v, env).map(Control::Url),
    };
    if p.ack_timeout.is_zero() {
        c.push(
            p.listen.span(),
            "proxy.ack_timeout",
            "must be longer than 0s; the default is \"5s\"",
        );
    }
    let path = |v: &Option<Spanned<String>>| v.as_ref().map(|s| PathBuf::from(s.get_ref()));
    if p.tls_cert.is_some() != p.tls_key.is_some() {
        let span = p
            .tls_cert
            .as_ref()
            .or(p.tls_key.as_ref())
            .map(|s| s.span())
            .unwrap_or(0..0);
        c.push(
            span,
            "proxy.tls_cert",
            "tls_cert and tls_key go together; set both or neither",
        );
    }
    if p.users.is_empty() {
        c.push(
            p.listen.span(),
            "proxy.users",
            "no [[proxy.users]]; add one per application role: name = \"app\", password = \"${APP_DATABASE_PASSWORD}\"",
        );
    }
    let mut users = vec![];
    for u in &p.users {
        let auth = match u.auth.get_ref().as_str() {
            "scram-sha-256" => ClientAuth::ScramSha256,
            "md5" => ClientAuth::Md5,
            "trust" => ClientAuth::Trust,
            other => {
                c.push(
                    u.auth.span(),
                    "proxy.users.auth",
                    format!(
                        "\"{other}\" is not a method; use \"scram-sha-256\", \"md5\" or \"trust\""
                    ),
                );
                ClientAuth::ScramSha256
            }
        };
        let password = match &u.password {
            Some(pw) => secret(c, "proxy.users.password", pw, env),
            None => {
                if auth != ClientAuth::Trust {
                    c.push(
                        u.name.span(),
                        "proxy.users.password",
                        format!("user {} has no password; add password = \"${{NAME}}\" (the proxy also logs in to the database with it)", u.name.get_ref()),
                    );
                }
                None
            }
        };
        if users
            .iter()
            .any(|x: &ProxyUser| &x.name == u.name.get_ref())
        {
            c.push(
                u.name.span(),
                "proxy.users.name",
                format!("user {} is listed twice", u.name.get_ref()),
            );
        }
        users.push(ProxyUser {
            name: u.name.get_ref().clone(),
            password,
            auth,
        });
    }
    if c.problems.len() > before {
        return None;
    }
    Some(ProxySettings {
        listen: listen?,
        admin_listen: admin_listen?,
        admin_token: admin_token?,
        health_listen: health_listen.flatten(),
        shutdown_timeout: p.shutdown_timeout,
        control: control?,
        ack_timeout: p.ack_timeout,
        tls_cert: path(&p.tls_cert),
        tls_key: path(&p.tls_key),
        admin_ca: path(&p.admin_ca),
        users,
    })
}

pub(super) fn switchover_settings(
    c: &mut Collector<'_>,
    s: &RawSwitchover,
) -> Option<SwitchoverSettings> {
    let max_lag = *s.max_lag_mib.get_ref();
    if max_lag < 0 {
        c.push(
            s.max_lag_mib.span(),
            "switchover.max_lag_mib",
            "must be 0 or more",
        );
        return None;
    }
    Some(SwitchoverSettings {
        max_lag_bytes: max_lag as u64 * 1024 * 1024,
        drain_timeout: s.drain_timeout,
        catch_up_timeout: s.catch_up_timeout,
    })
}
