//! `cutover traffic` through the command line: the splitter as a process, the canary's dry
//! run and a real canary, control commands, status.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "cli-traffic-token-4471";

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// An origin answering 200 with its name.
async fn origin(name: &'static str) -> String {
    let app = axum::Router::new().fallback(move || async move { name });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn command(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cutover"));
    c.arg("--plan")
        .arg(dir.join("cutover.toml"))
        .args(args)
        .env("SRC_URL", "postgres://app@127.0.0.1:1/src")
        .env("DST_URL", "postgres://app@127.0.0.1:1/dst")
        .env("TRAFFIC_TOKEN", TOKEN)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    c
}

fn cutover(dir: &std::path::Path, args: &[&str]) -> Out {
    let out = command(dir, args).output().unwrap();
    let o = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !o.stdout.contains(TOKEN) && !o.stderr.contains(TOKEN),
        "the token leaked"
    );
    o
}

struct Serve(Child);

impl Serve {
    /// `cutover traffic serve` with the plan in `dir`, until dropped.
    fn start(dir: &std::path::Path) -> Serve {
        Serve(
            command(dir, &["traffic", "serve"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}
impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_canary_and_control_from_the_command_line() {
    let (old, new) = (origin("old").await, origin("new").await);
    let (listen, admin) = (free_addr(), free_addr());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cutover.toml"),
        format!("[source]\nurl = \"${{SRC_URL}}\"\n[target]\nurl = \"${{DST_URL}}\"\n\n[traffic]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\nadmin_token = \"${{TRAFFIC_TOKEN}}\"\nsteps = [20, 100]\ninterval = \"800ms\"\ncheck_every = \"400ms\"\nmin_requests = 2\n\n[traffic.old]\nurl = \"{old}\"\n\n[traffic.new]\nurl = \"{new}\"\nhost = \"new.example.net\"\n"),
    )
    .unwrap();

    let dry = cutover(dir.path(), &["traffic", "canary", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(
        dry.stdout,
        format!("moves the splitter's weight (admin API {admin}); gates read the splitter's own metrics\nstep 1: 20% of new users to the new app, watched for 800ms, checked every 400ms\nstep 2: 100% of new users to the new app: promoted\ngates: success rate >= 99%, p99 <= 1000ms, at least 2 requests per check (fewer is no data, which fails); 1 failed check(s) in a row roll back to 0%\n")
    );

    let status = cutover(dir.path(), &["traffic", "status"]);
    assert!(
        status.stdout.contains("canary: never run"),
        "{}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .contains("start it with `cutover traffic serve`"),
        "{}",
        status.stdout
    );

    let _serve = Serve::start(dir.path());
    let mut up = false;
    for _ in 0..300 {
        if cutover(dir.path(), &["traffic", "status"])
            .stdout
            .contains("splitter: 0% of new users")
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the splitter answered");

    // Users arrive all along.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let url = format!("http://{listen}/");
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let _ = reqwest_free_get(&url).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let canary = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || cutover(&dir, &["traffic", "canary"])
    })
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert_eq!(canary.code, 0, "{}{}", canary.stdout, canary.stderr);
    assert_eq!(
        canary.stdout,
        "promoted: 100% of new users go to the new app\n"
    );

    let status = cutover(dir.path(), &["traffic", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(v["canary"]["phase"], "promoted");
    assert_eq!(v["splitter"]["new_percent"], 100);

    // No canary running: abort and promote move the splitter directly; pause needs a canary.
    let r = cutover(dir.path(), &["traffic", "abort"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "splitter: 0% of new users to the new app\n")
    );
    let r = cutover(dir.path(), &["traffic", "pause"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr.trim(),
        "error: no canary is running; start one with `cutover traffic canary`"
    );
    let journal = cutover(dir.path(), &["status"]);
    assert!(
        journal.stdout.contains("traffic.canary.step.1"),
        "{}",
        journal.stdout
    );
}

/// An origin answering 200 with its name, and the task that serves it: aborting it closes
/// the listener, so connections are refused from then on.
async fn killable_origin(name: &'static str) -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().fallback(move || async move { name });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), task)
}

/// Lines of `cutover traffic status` that explain an origin's health, like "old: down (...)".
fn health_lines(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| l.starts_with("old: ") || l.starts_with("new: "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_why_an_origin_is_down() {
    let (old, old_task) = killable_origin("old").await;
    let new = origin("new").await;
    let (listen, admin) = (free_addr(), free_addr());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cutover.toml"),
        format!("[source]\nurl = \"${{SRC_URL}}\"\n[target]\nurl = \"${{DST_URL}}\"\n\n[traffic]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\nadmin_token = \"${{TRAFFIC_TOKEN}}\"\nhealth_interval = \"200ms\"\n\n[traffic.old]\nurl = \"{old}\"\n\n[traffic.new]\nurl = \"{new}\"\n"),
    )
    .unwrap();
    let _serve = Serve::start(dir.path());
    // Both origins pass their checks: no line explains anything.
    let mut healthy = None;
    for _ in 0..300 {
        let s = cutover(dir.path(), &["traffic", "status"]);
        if s.stdout.contains("splitter: 0% of new users") {
            healthy = Some(s.stdout);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let healthy = healthy.expect("the splitter answered");
    assert_eq!(health_lines(&healthy), Vec::<&str>::new(), "{healthy}");

    old_task.abort();
    let mut down = None;
    for _ in 0..300 {
        let s = cutover(dir.path(), &["traffic", "status"]);
        if s.stdout.lines().any(|l| l.starts_with("old: down (")) {
            down = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let down = down.expect("status showed the old origin down with its reason");
    assert_eq!(down.code, 0);
    // The reason is the splitter's own last_error, which --json carries too.
    let json = cutover(dir.path(), &["traffic", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let origins = v["splitter"]["origins"].as_array().unwrap();
    assert_eq!(origins[0]["side"], "old");
    assert_eq!(origins[0]["up"], false);
    let last_error = origins[0]["last_error"].as_str().unwrap();
    assert!(
        last_error.to_lowercase().contains("connection refused"),
        "{last_error}"
    );
    assert_eq!(origins[1]["last_error"], serde_json::Value::Null);
    assert_eq!(
        health_lines(&down.stdout),
        [format!("old: down ({last_error})")],
        "{}",
        down.stdout
    );
}

/// One GET through a new connection.
async fn reqwest_free_get(url: &str) -> Result<(), String> {
    let stream =
        tokio::net::TcpStream::connect(url.trim_start_matches("http://").trim_end_matches('/'))
            .await
            .map_err(|e| e.to_string())?;
    let mut stream = stream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![];
    stream
        .read_to_end(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[test]
fn a_bad_traffic_section_is_refused_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cutover.toml"),
        "[source]\nurl = \"${SRC_URL}\"\n[target]\nurl = \"${DST_URL}\"\n[traffic]\nadmin_listen = \"0.0.0.0:8081\"\nadmin_token = \"${TRAFFIC_TOKEN}\"\nsteps = [10, 5]\n[traffic.old]\nurl = \"ftp://old\"\n[traffic.new]\nurl = \"http://new:80\"\nsni = \"x\"\nweight = 3\n",
    )
    .unwrap();
    let r = cutover(dir.path(), &["traffic", "serve"]);
    assert_eq!(r.code, 1);
    let plan = dir.path().join("cutover.toml").display().to_string();
    assert_eq!(
        r.stderr.trim(),
        format!("error: {plan}:14:1: unknown field `weight`, expected one of `url`, `host`, `sni`, `ca_file`")
    );
    std::fs::write(
        dir.path().join("cutover.toml"),
        "[source]\nurl = \"${SRC_URL}\"\n[target]\nurl = \"${DST_URL}\"\n[traffic]\nadmin_listen = \"0.0.0.0:8081\"\nadmin_token = \"${TRAFFIC_TOKEN}\"\nsteps = [10, 5]\n[traffic.old]\nurl = \"ftp://old\"\n[traffic.new]\nurl = \"http://new:80\"\n",
    )
    .unwrap();
    let r = cutover(dir.path(), &["traffic", "serve"]);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!("error: {plan}:6:16: traffic.admin_listen: must be a loopback address (127.0.0.1 or ::1): the admin API moves users"),
            format!("error: {plan}:10:7: traffic.old.url: \"ftp://old\" is not an http(s) URL; write it like \"https://host:443\""),
            format!("error: {plan}:8:14: traffic.steps: steps are percentages from 1 to 100 in increasing order, like [1, 5, 10, 25, 50, 100]"),
            format!("error: {plan}: traffic.steps: the last step must be 100 (everyone on the new app)"),
        ]
    );
}

/// A canary whose rollback did not complete (the weight change was refused): status says it
/// is rolling back, why, and how to finish; promote and pause are refused, since the canary
/// would not do them; abort is taken (it goes to 0% too).
#[test]
fn status_shows_a_rollback_that_did_not_complete() {
    use cutover_traffic::canary::{self, Phase, State};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cutover.toml"),
        format!("[source]\nurl = \"${{SRC_URL}}\"\n[target]\nurl = \"${{DST_URL}}\"\n[traffic]\nadmin_listen = \"{}\"\nadmin_token = \"${{TRAFFIC_TOKEN}}\"\n[traffic.old]\nurl = \"http://127.0.0.1:1\"\n[traffic.new]\nurl = \"http://127.0.0.1:2\"\n", free_addr()),
    )
    .unwrap();
    let error = "the rollback to 0% did not complete: cannot set the weight: refused; the new app may still get 25% of new users; `cutover traffic canary` tries the move to 0% again before anything else";
    let state = State {
        step: 3,
        new_percent: 25,
        phase: Phase::RollingBack,
        reason: Some("success rate 80.00% is below traffic.min_success_rate (99%)".into()),
        error: Some(error.into()),
        updated_ms: 0,
    };
    let journal = cutover_core::Journal::open(&dir.path().join("cutover.journal.db")).unwrap();
    journal
        .set_fact(
            canary::STATE_FACT,
            Some(&serde_json::to_string(&state).unwrap()),
        )
        .unwrap();
    drop(journal);

    let status = cutover(dir.path(), &["traffic", "status"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert_eq!(
        status.stdout.lines().next().unwrap(),
        format!("canary: rolling back to 0% from step 4 (25%), not finished: {error}; it rolls back because success rate 80.00% is below traffic.min_success_rate (99%)")
    );
    let json = cutover(dir.path(), &["traffic", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["canary"]["phase"], "rolling_back");
    assert_eq!(v["canary"]["error"], error);

    for c in ["promote", "pause"] {
        let r = cutover(dir.path(), &["traffic", c]);
        assert_eq!(r.code, 1, "{c}");
        assert_eq!(
            r.stderr.trim(),
            format!("error: the canary is rolling back to 0%, so it cannot {c} now; `cutover traffic canary` finishes that move first (`cutover traffic status` says why it stopped)")
        );
    }
    let r = cutover(dir.path(), &["traffic", "abort"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// The dry run promises a request minimum only where the gates count requests: Prometheus
/// gates without traffic.requests_query say that min_requests does not apply.
#[test]
fn the_dry_run_says_when_min_requests_does_not_apply() {
    let dir = tempfile::tempdir().unwrap();
    let plan = |extra: &str| {
        std::fs::write(
            dir.path().join("cutover.toml"),
            format!("[source]\nurl = \"${{SRC_URL}}\"\n[target]\nurl = \"${{DST_URL}}\"\n[traffic]\nadmin_token = \"${{TRAFFIC_TOKEN}}\"\nsteps = [50, 100]\nmin_requests = 40\nmetrics = \"prometheus\"\nprometheus_url = \"http://127.0.0.1:9090\"\nsuccess_rate_query = \"100\"\np99_query = \"0.1\"\n{extra}[traffic.old]\nurl = \"http://127.0.0.1:1\"\n[traffic.new]\nurl = \"http://127.0.0.1:2\"\n"),
        )
        .unwrap();
    };
    let gates = |out: &Out| -> String {
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stdout
            .lines()
            .find(|l| l.starts_with("gates: "))
            .unwrap()
            .to_string()
    };
    plan("");
    let dry = cutover(dir.path(), &["traffic", "canary", "--dry-run"]);
    assert_eq!(
        gates(&dry),
        "gates: success rate >= 99%, p99 <= 1000ms, traffic.min_requests does not apply: the Prometheus gates count no requests without traffic.requests_query (a window without any request is still no data, which fails); 1 failed check(s) in a row roll back to 0%"
    );
    let json = cutover(dir.path(), &["traffic", "canary", "--dry-run", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["thresholds"]["min_requests"], serde_json::Value::Null);

    plan("requests_query = 'sum(increase(http_requests_total[30s]))'\n");
    let dry = cutover(dir.path(), &["traffic", "canary", "--dry-run"]);
    assert_eq!(
        gates(&dry),
        "gates: success rate >= 99%, p99 <= 1000ms, at least 40 requests per check (fewer is no data, which fails); 1 failed check(s) in a row roll back to 0%"
    );

    plan("requests_query = \"\"\n");
    let r = cutover(dir.path(), &["traffic", "canary", "--dry-run"]);
    assert_eq!(r.code, 1);
    let path = dir.path().join("cutover.toml").display().to_string();
    assert_eq!(
        r.stderr.trim(),
        format!("error: {path}:13:18: traffic.requests_query: is empty; write a PromQL query giving the new app's request count in a check's window, like 'sum(increase(http_requests_total{{app=\"new\"}}[30s]))', or remove the line")
    );
}
