//! A Prometheus server on a loopback port that scrapes one target every second, for one
//! test. The canary's Prometheus gates are only as good as their reading of a real server's
//! answers, so they are tested against one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::free_port;

pub struct Prometheus {
    /// "http://127.0.0.1:<port>", as traffic.prometheus_url holds it.
    pub url: String,
    child: Child,
    dir: tempfile::TempDir,
    /// The `Authorization` header its web config asks for; None: none.
    authorization: Option<String>,
}

/// The user and password of [`Prometheus::start_with_basic_auth`], and the bcrypt hash of the
/// password that its web config holds (cost 4: every request is checked against it).
pub const BASIC_USER: &str = "gates";
pub const BASIC_PASSWORD: &str = "gate-pass";
const BASIC_HASH: &str = "$2b$04$KVRM1LgDBXTfiSm6k2Joe.aCumTG5DWVjII8XBYHLdJxI6KY/Hggi";

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `prometheus` program on PATH (Debian installs /usr/bin/prometheus).
fn binary() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("Prometheus is not installed (no `prometheus` on PATH); install it with `apt-get install -y prometheus` (the CI script does)")
        })
}

impl Prometheus {
    /// Starts Prometheus scraping `target`'s `/metrics` every second, and returns once it
    /// has scraped it at least once.
    pub async fn start(target: SocketAddr) -> Prometheus {
        Self::start_with(target, false).await
    }

    /// [`Prometheus::start`], with Prometheus's own basic authentication on its HTTP API
    /// (`--web.config.file`): [`BASIC_USER`] and [`BASIC_PASSWORD`].
    pub async fn start_with_basic_auth(target: SocketAddr) -> Prometheus {
        Self::start_with(target, true).await
    }

    async fn start_with(target: SocketAddr, basic_auth: bool) -> Prometheus {
        // A port picked free may be taken again before Prometheus binds it; then it exits
        // at once and another port is tried.
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            std::fs::write(
                d.join("prometheus.yml"),
                format!(
                    "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: splitter\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['{target}']\n"
                ),
            )
            .unwrap();
            let port = free_port();
            let log = std::fs::File::create(d.join("prometheus.log")).unwrap();
            let mut cmd = Command::new(binary());
            let mut authorization = None;
            if basic_auth {
                std::fs::write(
                    d.join("web.yml"),
                    format!("basic_auth_users:\n  {BASIC_USER}: '{BASIC_HASH}'\n"),
                )
                .unwrap();
                cmd.arg(format!("--web.config.file={}", d.join("web.yml").display()));
                use base64::Engine as _;
                authorization = Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{BASIC_USER}:{BASIC_PASSWORD}"))
                ));
            }
            let child = cmd
                .arg(format!(
                    "--config.file={}",
                    d.join("prometheus.yml").display()
                ))
                .arg(format!("--storage.tsdb.path={}", d.join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start prometheus");
            let mut p = Prometheus {
                url: format!("http://127.0.0.1:{port}"),
                child,
                dir,
                authorization,
            };
            if p.wait_scraped().await {
                return p;
            }
        }
        panic!("Prometheus did not start on three free ports; see its log above");
    }

    /// True once the target has been scraped; false if Prometheus exited (its port was
    /// taken). Gives up with its log after a generous bound.
    async fn wait_scraped(&mut self) -> bool {
        for _ in 0..600 {
            if let Ok(Some(status)) = self.child.try_wait() {
                eprintln!("prometheus exited ({status}):\n{}", self.log());
                return false;
            }
            if self.value("up{job=\"splitter\"}").await == Some(1.0) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "Prometheus did not scrape the splitter within 30s; its log:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The answer to an instant query, or None while Prometheus does not answer.
    pub async fn query(&self, query: &str) -> Option<serde_json::Value> {
        let url = format!(
            "{}/api/v1/query?query={}",
            self.url,
            query
                .bytes()
                .map(|b| format!("%{b:02X}"))
                .collect::<String>()
        );
        let headers: Vec<(&str, String)> = self
            .authorization
            .iter()
            .map(|a| ("authorization", a.clone()))
            .collect();
        let (code, body) = cutover_traffic::http::request(
            hyper::Method::GET,
            &url,
            &headers,
            None,
            Duration::from_secs(5),
        )
        .await
        .ok()?;
        code.is_success()
            .then(|| serde_json::from_slice(&body).ok())
            .flatten()
    }

    /// The first sample's value of an instant vector query.
    pub async fn value(&self, query: &str) -> Option<f64> {
        let v = self.query(query).await?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}
