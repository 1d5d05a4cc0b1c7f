//! PostgreSQL connection strings.
//!
//! A [`ConnString`] is parsed once from a `postgres://` URL and then handed around whole. Its
//! `Display` and `Debug` never show the password: every message that names a database prints
//! it, so redaction has to be the type's default, not a habit of its callers.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::secret::{Secret, MASK};

/// How the connection is protected, as libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, without checking its certificate (libpq's default).
    Prefer,
    /// TLS always, without checking the certificate.
    Require,
    /// TLS, certificate chain checked against the trusted roots.
    VerifyCa,
    /// TLS, chain checked and the host name matched.
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// Why a connection string was refused. The text never contains the password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnStringError {
    #[error("not a postgres:// URL ({0}); write it as postgres://user:password@host:5432/dbname")]
    NotAUrl(String),
    #[error("URL scheme must be postgres:// or postgresql://, not {0}://")]
    Scheme(String),
    #[error("URL has no host; write it as postgres://user:password@host:5432/dbname")]
    NoHost,
    #[error("URL has no user name; write it as postgres://user:password@host:5432/dbname")]
    NoUser,
    #[error(
        "URL has no database name; add it after the host, as in postgres://user@host:5432/dbname"
    )]
    NoDatabase,
    #[error("sslmode={0} is not known; use disable, prefer, require, verify-ca or verify-full")]
    SslMode(String),
    #[error("connect_timeout={0} is not a number of seconds")]
    ConnectTimeout(String),
    #[error("URL parameter {0} is not supported; supported: sslmode, sslrootcert, application_name, connect_timeout")]
    UnknownParam(String),
}

/// A parsed PostgreSQL connection string whose password never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnString {
    pub host: String,
    pub port: u16,
    pub user: String,
    password: Option<Secret>,
    pub dbname: String,
    pub sslmode: SslMode,
    /// File with the trusted root certificates (PEM) for verify-ca / verify-full.
    pub sslrootcert: Option<PathBuf>,
    pub application_name: Option<String>,
    pub connect_timeout: Option<Duration>,
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

impl ConnString {
    /// Parses `postgres://user:password@host:port/dbname?sslmode=...`.
    pub fn parse(text: &str) -> Result<ConnString, ConnStringError> {
        let text = text.trim();
        let url = url::Url::parse(text).map_err(|e| ConnStringError::NotAUrl(e.to_string()))?;
        match url.scheme() {
            "postgres" | "postgresql" => {}
            other => return Err(ConnStringError::Scheme(other.to_string())),
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err(ConnStringError::NoHost),
        };
        if host.is_empty() {
            return Err(ConnStringError::NoHost);
        }
        let user = decode(url.username());
        if user.is_empty() {
            return Err(ConnStringError::NoUser);
        }
        let password = url.password().map(|p| Secret::new(decode(p)));
        let dbname = decode(url.path().trim_start_matches('/'));
        if dbname.is_empty() {
            return Err(ConnStringError::NoDatabase);
        }
        let mut cs = ConnString {
            host,
            port: url.port().unwrap_or(5432),
            user,
            password,
            dbname,
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            application_name: None,
            connect_timeout: None,
        };
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "sslmode" => {
                    cs.sslmode =
                        SslMode::parse(&v).ok_or_else(|| ConnStringError::SslMode(v.to_string()))?
                }
                "sslrootcert" => cs.sslrootcert = Some(PathBuf::from(v.as_ref())),
                "application_name" => cs.application_name = Some(v.to_string()),
                "connect_timeout" => {
                    let secs: u64 = v
                        .parse()
                        .map_err(|_| ConnStringError::ConnectTimeout(v.to_string()))?;
                    cs.connect_timeout = Some(Duration::from_secs(secs));
                }
                other => return Err(ConnStringError::UnknownParam(other.to_string())),
            }
        }
        Ok(cs)
    }

    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    pub fn with_password(mut self, password: Option<Secret>) -> Self {
        self.password = password;
        self
    }

    /// The same server with another database name.
    pub fn with_dbname(mut self, dbname: &str) -> Self {
        self.dbname = dbname.to_string();
        self
    }

    /// Environment for a libpq child (`pg_dump`, `psql`): the password travels in
    /// `PGPASSWORD`, never on a command line where `ps` would show it.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGDATABASE", self.dbname.clone()),
            ("PGSSLMODE", self.sslmode.as_str().to_string()),
        ];
        if let Some(p) = &self.password {
            env.push(("PGPASSWORD", p.expose().to_string()));
        }
        if let Some(r) = &self.sslrootcert {
            env.push(("PGSSLROOTCERT", r.display().to_string()));
        }
        if let Some(a) = &self.application_name {
            env.push(("PGAPPNAME", a.clone()));
        }
        if let Some(t) = self.connect_timeout {
            env.push(("PGCONNECT_TIMEOUT", t.as_secs().max(1).to_string()));
        }
        env
    }

    /// The keyword/value conninfo with the password, as `CREATE SUBSCRIPTION ... CONNECTION`
    /// needs it. Wrapped in a [`Secret`] so it cannot be logged by mistake.
    pub fn conninfo_with_password(&self) -> Secret {
        fn q(v: &str) -> String {
            format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
        }
        let mut parts = vec![
            format!("host={}", q(&self.host)),
            format!("port={}", self.port),
            format!("user={}", q(&self.user)),
            format!("dbname={}", q(&self.dbname)),
            format!("sslmode={}", self.sslmode.as_str()),
        ];
        if let Some(p) = &self.password {
            parts.push(format!("password={}", q(p.expose())));
        }
        if let Some(r) = &self.sslrootcert {
            parts.push(format!("sslrootcert={}", q(&r.display().to_string())));
        }
        if let Some(t) = self.connect_timeout {
            parts.push(format!("connect_timeout={}", t.as_secs().max(1)));
        }
        Secret::new(parts.join(" "))
    }

    /// Where this points, without credentials: `host:port/dbname`.
    pub fn location(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{host}:{}/{}", self.port, self.dbname)
    }
}

impl fmt::Display for ConnString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgres://{}", self.user)?;
        if self.password.is_some() {
            write!(f, ":{MASK}")?;
        }
        write!(f, "@{}", self.location())?;
        if self.sslmode != SslMode::Prefer {
            write!(f, "?sslmode={}", self.sslmode.as_str())?;
        }
        Ok(())
    }
}

impl fmt::Debug for ConnString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnString({self})")
    }
}

impl serde::Serialize for ConnString {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_url() {
        let c = ConnString::parse(
            "postgres://app%40x:s3cr%2Ft@db.example.com:6432/my_db?sslmode=verify-full&sslrootcert=/ca.pem",
        )
        .unwrap();
        assert_eq!(c.user, "app@x");
        assert_eq!(c.password().unwrap().expose(), "s3cr/t");
        assert_eq!(c.host, "db.example.com");
        assert_eq!(c.port, 6432);
        assert_eq!(c.dbname, "my_db");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(
            c.sslrootcert.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
    }

    #[test]
    fn display_and_debug_redact_the_password() {
        let c = ConnString::parse("postgresql://u:topsecret@h/d?sslmode=require").unwrap();
        assert_eq!(
            c.to_string(),
            "postgres://u:********@h:5432/d?sslmode=require"
        );
        assert!(!format!("{c:?}").contains("topsecret"));
        assert!(!serde_json::to_string(&c).unwrap().contains("topsecret"));
        assert!(!c.conninfo_with_password().to_string().contains("topsecret"));
        assert!(c
            .conninfo_with_password()
            .expose()
            .contains("password='topsecret'"));
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert_eq!(
            ConnString::parse("mysql://u@h/d"),
            Err(ConnStringError::Scheme("mysql".into()))
        );
        assert_eq!(
            ConnString::parse("postgres://h/d"),
            Err(ConnStringError::NoUser)
        );
        assert_eq!(
            ConnString::parse("postgres://u@h"),
            Err(ConnStringError::NoDatabase)
        );
        assert_eq!(
            ConnString::parse("postgres://u@h/d?sslmode=always"),
            Err(ConnStringError::SslMode("always".into()))
        );
        assert_eq!(
            ConnString::parse("postgres://u@h/d?foo=1"),
            Err(ConnStringError::UnknownParam("foo".into()))
        );
        assert!(matches!(
            ConnString::parse("host=x"),
            Err(ConnStringError::NotAUrl(_))
        ));
    }

    #[test]
    fn conninfo_quotes_values() {
        let c = ConnString::parse("postgres://u:it's@h/d").unwrap();
        assert!(c
            .conninfo_with_password()
            .expose()
            .contains(r"password='it\'s'"));
    }
}
