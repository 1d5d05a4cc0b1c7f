//! Two local platforms for a whole move: on each a PostgreSQL cluster and an instance of the
//! shop, both apps reaching the database through one cutover proxy, the splitter standing in
//! front of the old app as the old platform's web process, and a plan file that names them
//! all. `cutover demo` moves it; the migration tests drive it the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cutover_core::plan::Order;
use cutover_core::{ConnString, Plan, Secret};
use cutover_demo::app::{self, AppConfig, RunningApp};
use cutover_demo::load::{Load, LoadConfig, Resolver};
use cutover_pg::local::{random_password, ClusterOptions, LocalCluster, WalLevel};
use cutover_pg::{connect, PgError, Side};

/// What the stage is like.
#[derive(Clone, Debug)]
pub struct StageOptions {
    /// A Heroku-like source: `wal_level = replica` and one application role that owns the
    /// tables (no superuser, no replication): trigger mode.
    pub heroku: bool,
    pub order: Order,
    /// The canary's steps.
    pub steps: Vec<u8>,
    /// How long each canary step is watched.
    pub interval: &'static str,
    pub check_every: &'static str,
    /// The rollback window.
    pub hold: &'static str,
    pub done_window: &'static str,
    /// How long the proxy gate waits for sessions around the proxy to go.
    pub proxy_wait: &'static str,
    /// JSON fields the shadow diff leaves out.
    pub shadow_ignore: Vec<&'static str>,
    /// Extra settings of `[traffic]`, as written (a test's own gates).
    pub traffic_extra: String,
    /// Extra plan text (a test's own sections), appended as written.
    pub extra: String,
    /// Variables the extra text refers to.
    pub extra_env: Vec<(String, String)>,
}

impl Default for StageOptions {
    fn default() -> Self {
        StageOptions {
            heroku: false,
            order: Order::DatabaseFirst,
            steps: vec![10, 50, 100],
            interval: "4s",
            check_every: "2s",
            hold: "4s",
            done_window: "2s",
            proxy_wait: "30s",
            shadow_ignore: vec!["served_by"],
            traffic_extra: String::new(),
            extra: String::new(),
            extra_env: vec![],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Local(#[from] cutover_pg::local::LocalError),
    #[error(transparent)]
    Plan(#[from] cutover_core::PlanError),
    #[error("{0}")]
    Other(String),
}

fn other(e: impl std::fmt::Display) -> StageError {
    StageError::Other(e.to_string())
}

/// The two platforms, running.
pub struct Stage {
    pub source: LocalCluster,
    pub target: LocalCluster,
    pub dir: tempfile::TempDir,
    pub plan: Plan,
    /// The variables the plan refers to (secrets among them).
    pub env: BTreeMap<String, String>,
    pub proxy: Option<cutover_proxy::Running>,
    pub splitter: Option<cutover_traffic::splitter::Running>,
    pub old_app: Option<RunningApp>,
    pub new_app: Option<RunningApp>,
    pub app_password: Secret,
    /// What users resolve the shop's name to: the splitter, later the new app.
    pub resolver: Resolver,
}

/// The application's database, on both platforms.
pub const DB: &str = "shop";
/// The application's role, on both platforms.
pub const ROLE: &str = "app";

fn free_port() -> Result<u16, StageError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(other)?
        .port())
}

/// A URL with its password, as an environment variable holds it.
fn url_text(c: &ConnString, password: &str) -> String {
    format!(
        "postgres://{}:{password}@{}:{}/{}?sslmode=disable",
        c.user, c.host, c.port, c.dbname
    )
}

/// Two clusters, a Heroku-like source when `heroku` (`wal_level = replica`), each with the
/// application's role (one password, not a superuser) owning the shop's database.
pub(super) async fn platforms(
    heroku: bool,
) -> Result<(LocalCluster, LocalCluster, Secret), StageError> {
    let (source, target) = tokio::join!(
        LocalCluster::start(ClusterOptions {
            wal_level: if heroku {
                WalLevel::Replica
            } else {
                WalLevel::Logical
            },
            ..Default::default()
        }),
        LocalCluster::start(ClusterOptions {
            wal_level: WalLevel::Logical,
            ..Default::default()
        })
    );
    let (source, target) = (source?, target?);
    let app_password = Secret::new(random_password());
    for (c, side) in [(&source, Side::Source), (&target, Side::Target)] {
        let admin = connect(&c.url("postgres"), side).await?;
        for sql in [
            format!(
                "CREATE ROLE {ROLE} LOGIN PASSWORD {}",
                cutover_pg::literal(app_password.expose())
            ),
            format!("CREATE DATABASE {DB} OWNER {ROLE}"),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .map_err(|e| PgError::sql(side, "prepare the shop's database", e))?;
        }
    }
    Ok((source, target, app_password))
}

impl Stage {
    /// Starts both clusters, loads the shop on the old one, writes the plan, and starts the
    /// proxy, both apps and the splitter.
    pub async fn start(options: StageOptions) -> Result<Stage, StageError> {
        let (source, target, app_password) = platforms(options.heroku).await?;
        // The old platform: the shop's tables, made by the application's role as Heroku's
        // would be.
        let app_source = source.url_as(ROLE, Some(app_password.clone()), DB);
        connect(&app_source, Side::Source)
            .await?
            .batch_execute(cutover_demo::SHOP_SCHEMA)
            .await
            .map_err(|e| PgError::sql(Side::Source, "load the shop", e))?;
        // The new platform: the schema copy carries no grants, so the team gives the
        // application's role its privileges on what the copy will create, ahead of time.
        connect(&target.url(DB), Side::Target)
            .await?
            .batch_execute(&format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT USAGE ON SCHEMAS TO {ROLE};
                 ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {ROLE};
                 ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {ROLE};"
            ))
            .await
            .map_err(|e| PgError::sql(Side::Target, "grant the application's role", e))?;

        let dir = tempfile::Builder::new()
            .prefix("cutover-demo-")
            .tempdir()
            .map_err(other)?;
        // Both apps reach the database through the proxy: DATABASE_URL is the proxy's.
        let proxy_port = free_port()?;
        let database_url = format!(
            "postgres://{ROLE}:{}@127.0.0.1:{proxy_port}/{DB}?sslmode=disable",
            app_password.expose()
        );
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let old_app = app::start(AppConfig {
            listen: any,
            database_url: database_url.clone(),
            name: "old".into(),
            pool_size: 4,
        })
        .await
        .map_err(other)?;
        let new_app = app::start(AppConfig {
            listen: any,
            database_url,
            name: "new".into(),
            pool_size: 4,
        })
        .await
        .map_err(other)?;

        let (plan_source, source_password) = if options.heroku {
            (app_source.clone(), app_password.expose().to_string())
        } else {
            (source.url(DB), source.password().expose().to_string())
        };
        let mut env = BTreeMap::new();
        env.insert(
            "CUTOVER_DEMO_SOURCE_URL".to_string(),
            url_text(&plan_source, &source_password),
        );
        env.insert(
            "CUTOVER_DEMO_TARGET_URL".to_string(),
            url_text(&target.url(DB), target.password().expose()),
        );
        env.insert(
            "CUTOVER_DEMO_APP_PASSWORD".to_string(),
            app_password.expose().to_string(),
        );
        env.insert("CUTOVER_DEMO_ADMIN_TOKEN".to_string(), random_password());
        env.insert("CUTOVER_DEMO_TRAFFIC_TOKEN".to_string(), random_password());
        env.extend(options.extra_env.iter().cloned());
        let text = plan_text(
            &options,
            proxy_port,
            free_port()?,
            free_port()?,
            free_port()?,
            old_app.addr.port(),
            new_app.addr.port(),
        );
        let path = dir.path().join("cutover.toml");
        std::fs::write(&path, &text).map_err(other)?;
        write_env(&dir.path().join("demo.env"), &env)?;
        let plan = cutover_core::plan::parse(&text, &path, &env)?;

        let proxy = cutover_proxy::start(
            cutover_proxy::Config::from_plan(&plan).map_err(StageError::Other)?,
        )
        .await
        .map_err(StageError::Other)?;
        let splitter = cutover_traffic::splitter::start(
            cutover_traffic::splitter::Config::from_plan(&plan).map_err(StageError::Other)?,
        )
        .await
        .map_err(StageError::Other)?;
        let resolver = Resolver::new(
            &format!("http://{}", splitter.addr),
            std::time::Duration::from_secs(2),
        );
        Ok(Stage {
            source,
            target,
            dir,
            plan,
            env,
            proxy: Some(proxy),
            splitter: Some(splitter),
            old_app: Some(old_app),
            new_app: Some(new_app),
            app_password,
            resolver,
        })
    }

    pub fn plan_path(&self) -> PathBuf {
        self.plan.path.clone()
    }

    /// Every password of the stage, to check that none leaks.
    pub fn secrets(&self) -> Vec<String> {
        let mut s: Vec<String> = vec![
            self.source.password().expose().to_string(),
            self.target.password().expose().to_string(),
            self.app_password.expose().to_string(),
        ];
        s.push(self.env["CUTOVER_DEMO_ADMIN_TOKEN"].clone());
        s.push(self.env["CUTOVER_DEMO_TRAFFIC_TOKEN"].clone());
        s
    }

    /// Users of the shop: `rate` requests per second, half of them orders, through whatever
    /// the resolver answers (the splitter first).
    pub fn load(&self, rate: f64) -> Load {
        Load::start(LoadConfig {
            clients: 8,
            rate,
            write_share: 0.5,
            resolver: self.resolver.clone(),
        })
    }

    /// The new app's address, as a DNS answer.
    pub fn new_app_url(&self) -> String {
        format!(
            "http://{}",
            self.new_app.as_ref().expect("the new app runs").addr
        )
    }

    /// How many of `ids` are orders on `side`'s database, and how many rows that side has
    /// for them (more than one per id would be a duplicate).
    pub async fn orders_present(&self, side: Side, ids: &[i64]) -> Result<i64, StageError> {
        let url = match side {
            Side::Source => self.source.url(DB),
            Side::Target => self.target.url(DB),
        };
        let row = connect(&url, side)
            .await?
            .query_one(
                "SELECT count(*) FROM shop.orders WHERE id = ANY ($1)",
                &[&ids],
            )
            .await
            .map_err(|e| PgError::sql(side, "count the acknowledged orders", e))?;
        Ok(row.get(0))
    }

    /// Stops the splitter, the apps and the proxy (the clusters stop when dropped).
    pub async fn stop(&mut self) {
        if let Some(s) = self.splitter.take() {
            s.stop().await;
        }
        for a in [self.old_app.take(), self.new_app.take()]
            .into_iter()
            .flatten()
        {
            a.stop().await;
        }
        if let Some(p) = self.proxy.take() {
            p.stop().await;
        }
    }
}

pub(super) fn write_env(path: &Path, env: &BTreeMap<String, String>) -> Result<(), StageError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text: String = env
        .iter()
        .map(|(k, v)| format!("export {k}='{v}'\n"))
        .collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(other)?;
    f.write_all(text.as_bytes()).map_err(other)
}

/// The plan of the stage: short intervals, every phase.
fn plan_text(
    o: &StageOptions,
    proxy: u16,
    proxy_admin: u16,
    splitter: u16,
    splitter_admin: u16,
    old_app: u16,
    new_app: u16,
) -> String {
    let steps = o
        .steps
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"# The demo's move: two local platforms, every phase with short intervals.
[source]
url = "${{CUTOVER_DEMO_SOURCE_URL}}"

[target]
url = "${{CUTOVER_DEMO_TARGET_URL}}"

[sync]
mode = "{mode}"

[proxy]
listen = "127.0.0.1:{proxy}"
admin_listen = "127.0.0.1:{proxy_admin}"
admin_token = "${{CUTOVER_DEMO_ADMIN_TOKEN}}"

[[proxy.users]]
name = "{ROLE}"
password = "${{CUTOVER_DEMO_APP_PASSWORD}}"

[traffic]
listen = "127.0.0.1:{splitter}"
admin_listen = "127.0.0.1:{splitter_admin}"
admin_token = "${{CUTOVER_DEMO_TRAFFIC_TOKEN}}"
health_path = "/health"
health_interval = "500ms"
steps = [{steps}]
interval = "{interval}"
check_every = "{check_every}"
min_requests = 2
failure_threshold = 2
{traffic_extra}

[traffic.old]
url = "http://127.0.0.1:{old_app}"

[traffic.new]
url = "http://127.0.0.1:{new_app}"

[new_app]
health_path = "/health"

[[new_app.checks]]
name = "place an order"
method = "POST"
path = "/orders"
body = '{{"customer": 1, "total": "9.99"}}'
status = 201
json = {{ total = "9.99", customer = "Customer 1", id = "*" }}

[[new_app.checks]]
name = "read the first orders"
path = "/orders?limit=3"
json = {{ "orders.0.id" = 1 }}

[new_app.shadow]
paths = ["/orders?limit=20", "/orders/1", "/orders/999999999"]
ignore = [{ignore}]
samples = 2

[migration]
order = "{order}"
hold = "{hold}"
done_threshold = 0.5
done_window = "{done_window}"
proxy_wait = "{proxy_wait}"
new_app_wait = "30s"
heroku_app = "shop"
{extra}"#,
        mode = if o.heroku { "trigger" } else { "native" },
        interval = o.interval,
        check_every = o.check_every,
        order = o.order.as_str(),
        hold = o.hold,
        done_window = o.done_window,
        proxy_wait = o.proxy_wait,
        ignore = o
            .shadow_ignore
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", "),
        traffic_extra = o.traffic_extra,
        extra = o.extra,
    )
}
