//! Runs the real `cutover` binary against real clusters. Every run is checked for leaked
//! passwords, so each test also asserts that secrets never reach output.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cutover_core::ConnString;
use cutover_testkit::Pair;

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A pair of clusters, a plan for them, and the environment that fills its references.
pub struct Env {
    pub pair: Pair,
    pub dir: tempfile::TempDir,
    pub vars: Vec<(String, String)>,
    pub secrets: Vec<String>,
}

pub use cutover_testkit::url_text;

impl Env {
    pub async fn native() -> Env {
        Self::from_pair(Pair::native().await)
    }

    pub fn from_pair(pair: Pair) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mut env = Env {
            pair,
            dir,
            vars: vec![],
            secrets: vec![],
        };
        let (s, t) = (env.pair.source.url(), env.pair.target.url());
        env.set_urls(&s, &t);
        std::fs::write(env.plan(), env.pair.plan_text("SRC_URL", "DST_URL")).unwrap();
        env
    }

    /// Points the plan's variables at these URLs.
    pub fn set_urls(&mut self, source: &ConnString, target: &ConnString) {
        self.vars = vec![
            ("SRC_URL".into(), url_text(source)),
            ("DST_URL".into(), url_text(target)),
        ];
        for c in [source, target] {
            if let Some(p) = c.password() {
                self.secrets.push(p.expose().to_string());
            }
        }
        self.secrets
            .push(self.pair.source.cluster.password().expose().to_string());
        self.secrets
            .push(self.pair.target.cluster.password().expose().to_string());
    }

    pub fn plan(&self) -> PathBuf {
        self.dir.path().join("cutover.toml")
    }

    pub fn journal(&self) -> PathBuf {
        self.dir.path().join("cutover.journal.db")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
        cmd.arg("--plan")
            .arg(self.plan())
            .args(args)
            .current_dir(self.dir.path());
        cmd.env_remove("PGPASSWORD")
            .env("NO_COLOR", "1")
            .env("CI", "1");
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `cutover --plan <plan> args...` and checks that no password leaked.
    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().expect("run cutover");
        let run = to_run(out);
        self.assert_no_secret(&run.stdout);
        self.assert_no_secret(&run.stderr);
        run
    }

    pub fn assert_no_secret(&self, text: &str) {
        for s in &self.secrets {
            assert!(
                !text.contains(s.as_str()),
                "a password leaked into output:\n{text}"
            );
        }
    }

    /// Checks the journal file's bytes for passwords too.
    pub fn assert_journal_clean(&self) {
        let bytes = std::fs::read(self.journal()).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        self.assert_no_secret(&text);
    }
}

pub fn to_run(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cutover"))
}

/// Objects cutover makes, counted on each side: (publications, slots) on the source,
/// (subscriptions, tables) on the target.
pub async fn footprint(pair: &Pair) -> (String, String) {
    let s = pair
        .source
        .value("SELECT (SELECT count(*) FROM pg_publication) || '/' || (SELECT count(*) FROM pg_replication_slots)")
        .await
        .unwrap();
    let t = pair
        .target
        .value(
            "SELECT (SELECT count(*) FROM pg_subscription) || '/' || \
             (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog','information_schema'))",
        )
        .await
        .unwrap();
    (s, t)
}

/// Adds a [proxy] section (plus `extra` lines in it) and the variables it names; returns the
/// client port and the admin port.
pub fn with_proxy(env: &mut Env, app_pw: &str, extra: &str) -> (u16, u16) {
    let (port, admin) = (cutover_testkit::free_port(), cutover_testkit::free_port());
    let mut plan = std::fs::read_to_string(env.plan()).unwrap();
    plan.push_str(&format!(
        "\n[proxy]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
         admin_token = \"${{ADMIN_TOKEN}}\"\n{extra}\n[[proxy.users]]\nname = \"app\"\npassword = \"${{APP_PW}}\"\n"
    ));
    std::fs::write(env.plan(), plan).unwrap();
    let token = cutover_pg::local::random_password();
    env.vars.push(("ADMIN_TOKEN".into(), token.clone()));
    env.vars.push(("APP_PW".into(), app_pw.into()));
    env.secrets.push(token);
    env.secrets.push(app_pw.into());
    (port, admin)
}

/// A child process of the test, ended with SIGTERM (and waited for) when dropped.
pub struct Running(pub std::process::Child);

impl Running {
    pub fn new(child: std::process::Child) -> Running {
        Running(child)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

/// `cutover proxy` started with the test's plan, once it listens on `port`.
pub async fn start_proxy(env: &Env, port: u16) -> Running {
    let proxy = Running(
        env.command(&["proxy"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return proxy;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the proxy did not start listening on {port}");
}
