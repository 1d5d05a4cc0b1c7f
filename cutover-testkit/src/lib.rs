//! Real servers for cutover's tests.
//!
//! Each test starts its own clusters on free loopback ports (no fixed port, no shared global
//! server) and works in a database of its own, so tests run in parallel under `cargo test`
//! and `cargo nextest` alike. Clusters stop and vanish when the fixture is dropped.

use cutover_core::{ConnString, Secret};
use cutover_pg::local::{ClusterOptions, LocalCluster, WalLevel};
use cutover_pg::{connect, Side};
use tokio_postgres::Client;

pub mod bind;
pub mod forward;

pub use cutover_pg::local;

/// One database on a cluster of its own.
pub struct Pg {
    pub cluster: LocalCluster,
    pub db: String,
    side: Side,
}

fn random_name(prefix: &str) -> String {
    let n: u64 = rand::random();
    format!("{prefix}_{n:x}")
}

impl Pg {
    /// Starts a cluster and creates a fresh database on it.
    pub async fn start(options: ClusterOptions, side: Side) -> Pg {
        let cluster = LocalCluster::start(options)
            .await
            .unwrap_or_else(|e| panic!("start PostgreSQL: {e}"));
        let db = random_name("t");
        let admin = connect(&cluster.url("postgres"), side)
            .await
            .expect("connect as postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .expect("create the test database");
        Pg { cluster, db, side }
    }

    /// The superuser's URL for this test's database.
    pub fn url(&self) -> ConnString {
        self.cluster.url(&self.db)
    }

    /// A connection as the superuser to this test's database.
    pub async fn client(&self) -> Client {
        connect(&self.url(), self.side)
            .await
            .expect("connect to the test database")
    }

    /// Runs SQL as the superuser.
    pub async fn exec(&self, sql: &str) {
        self.client()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// One value of a query, as text.
    pub async fn value(&self, sql: &str) -> Option<String> {
        let rows = self
            .client()
            .await
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        })?
    }

    /// Creates a login role with `attributes` (e.g. "NOSUPERUSER NOREPLICATION") and returns its URL.
    pub async fn role(&self, name: &str, attributes: &str) -> ConnString {
        let password = cutover_pg::local::random_password();
        self.exec(&format!(
            "CREATE ROLE {name} LOGIN {attributes} PASSWORD '{password}'"
        ))
        .await;
        self.exec(&format!("GRANT ALL ON DATABASE {} TO {name}", self.db))
            .await;
        self.cluster
            .url_as(name, Some(Secret::new(password)), &self.db)
    }
}

/// A source and a target, each on its own cluster.
pub struct Pair {
    pub source: Pg,
    pub target: Pg,
}

impl Pair {
    /// A source with `wal_level = logical` and an empty target.
    pub async fn native() -> Pair {
        Self::with(ClusterOptions::default(), ClusterOptions::default()).await
    }

    /// A Heroku-like source: `wal_level = replica`.
    pub async fn heroku_like() -> Pair {
        Self::with(
            ClusterOptions {
                wal_level: WalLevel::Replica,
                ..Default::default()
            },
            ClusterOptions::default(),
        )
        .await
    }

    pub async fn with(source: ClusterOptions, target: ClusterOptions) -> Pair {
        let (s, t) = tokio::join!(
            Pg::start(source, Side::Source),
            Pg::start(target, Side::Target)
        );
        Pair {
            source: s,
            target: t,
        }
    }

    /// A plan file's text pointing at this pair through the given environment variables.
    pub fn plan_text(&self, source_var: &str, target_var: &str) -> String {
        cutover_core::plan::template(&format!("${{{source_var}}}"), &format!("${{{target_var}}}"))
    }
}

impl Pair {
    /// Creates login role `name` with one password on both sides, free to use the test
    /// database and its public schema. Returns the password.
    pub async fn app_role(&self, name: &str) -> Secret {
        let password = cutover_pg::local::random_password();
        for pg in [&self.source, &self.target] {
            pg.exec(&format!(
                "CREATE ROLE {name} LOGIN PASSWORD '{password}';
                 GRANT ALL ON DATABASE {db} TO {name};
                 GRANT ALL ON SCHEMA public TO {name};",
                db = pg.db
            ))
            .await;
        }
        Secret::new(password)
    }

    /// A proxy in front of this pair, on free loopback ports, keeping its state in `dir`.
    pub fn proxy_config(
        &self,
        users: Vec<cutover_core::plan::ProxyUser>,
        dir: &std::path::Path,
    ) -> cutover_proxy::Config {
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("an address");
        cutover_proxy::Config {
            listen: any,
            admin_listen: any,
            admin_token: Secret::new(cutover_pg::local::random_password()),
            users,
            source: self.source.url(),
            target: self.target.url(),
            tls: None,
            state_path: dir.join("cutover.proxy.json"),
            health_listen: Some(any),
            control: None,
        }
    }
}

/// A plan user checked with SCRAM-SHA-256.
pub fn scram_user(name: &str, password: &Secret) -> cutover_core::plan::ProxyUser {
    cutover_core::plan::ProxyUser {
        name: name.into(),
        password: Some(password.clone()),
        auth: cutover_core::plan::ClientAuth::ScramSha256,
    }
}

/// A URL for `user` through a proxy listening on `addr`.
pub fn via_proxy(
    addr: std::net::SocketAddr,
    user: &str,
    password: &Secret,
    db: &str,
) -> ConnString {
    ConnString::parse(&format!(
        "postgres://{user}@{}:{}/{db}?sslmode=disable",
        addr.ip(),
        addr.port()
    ))
    .expect("a well-formed proxy URL")
    .with_password(Some(password.clone()))
}

/// The URL text with its password, for an environment variable.
pub fn url_text(c: &ConnString) -> String {
    let pw = c
        .password()
        .map(|p| format!(":{}", p.expose()))
        .unwrap_or_default();
    format!(
        "postgres://{}{pw}@{}:{}/{}?sslmode=disable",
        c.user, c.host, c.port, c.dbname
    )
}

/// A loopback port free for TCP and for UDP (a DNS server takes both).
pub fn free_port() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `GET path` on `addr` over plain HTTP/1.0: the status and the body. Errors (nothing
/// listening, a cut connection) come back as text.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The value of one sample (`name` with its labels, as written) in Prometheus text.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok()).flatten()
    })
}
