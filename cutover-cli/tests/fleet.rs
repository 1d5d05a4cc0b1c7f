//! A fleet of `cutover proxy` processes on one plan, coordinated through the control schema
//! on the target: they switch as one under pgbench through each of them, a new proxy joins on
//! the current backend, and the faults end with every proxy on one backend, no failed
//! transaction on the proxies that stay up, and never two writable primaries.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::{with_proxy, Env};
use cutover_core::ConnString;
use cutover_pg::{connect, pgbench, Side};
use cutover_testkit::forward::{Forwarder, Path as ForwardPath};
use cutover_testkit::{free_port, http_get, url_text, via_proxy};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// One `cutover proxy` process with its own ports and state file.
struct Member {
    child: Option<Child>,
    addr: std::net::SocketAddr,
    health: std::net::SocketAddr,
}

impl Member {
    async fn start(env: &Env, name: &str) -> Member {
        Member::start_with(env, name, &[]).await
    }

    /// A proxy whose environment differs: e.g. its plan's target reached another way.
    async fn start_with(env: &Env, name: &str, vars: &[(&str, String)]) -> Member {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin = format!("127.0.0.1:{}", free_port());
        let health: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let state = env.dir.path().join(format!("{name}.proxy.json"));
        let child = env
            .command(&[
                "proxy",
                "--listen",
                &addr.to_string(),
                "--admin-listen",
                &admin,
                "--health-listen",
                &health.to_string(),
                "--state",
                state.to_str().unwrap(),
            ])
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(env.dir.path().join(format!("{name}.err"))).unwrap())
            .spawn()
            .unwrap();
        let m = Member {
            child: Some(child),
            addr,
            health,
        };
        for _ in 0..200 {
            if http_get(health, "/ready").await.map(|r| r.0) == Ok(200) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("proxy {name} did not become ready");
    }

    fn signal(&self, s: Signal) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        kill(Pid::from_raw(pid), s).unwrap();
    }

    fn url(&self, env: &Env, pw: &cutover_core::Secret) -> ConnString {
        via_proxy(self.addr, "app", pw, &env.pair.source.db)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// The pgbench tables on the source, synced to the target, with the app's grants there.
/// `CONTROL_URL` names the target, for plans that name the control database themselves.
async fn shop(extra: &str) -> (Env, cutover_core::Secret) {
    let mut env = Env::native().await;
    let control = url_text(&env.pair.target.url());
    env.vars.push(("CONTROL_URL".into(), control));
    let pw = env.pair.app_role("app").await;
    let app_source = env
        .pair
        .source
        .cluster
        .url_as("app", Some(pw.clone()), &env.pair.source.db);
    pgbench::init(&app_source, 1).await.unwrap();
    env.pair
        .source
        .exec("ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY")
        .await;
    with_proxy(&mut env, pw.expose(), extra);
    let run = env.run(&["db", "sync"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    env.pair
        .target
        .exec("GRANT ALL ON ALL TABLES IN SCHEMA public TO app; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app")
        .await;
    (env, pw)
}

async fn port_of(url: &ConnString) -> String {
    let c = connect(url, Side::Source).await.unwrap();
    let row = c
        .query_one("SELECT inet_server_port()::text", &[])
        .await
        .unwrap();
    row.get(0)
}

async fn history(pg: &cutover_testkit::Pg) -> u64 {
    pg.value("SELECT count(*) FROM pgbench_history")
        .await
        .unwrap()
        .parse()
        .unwrap()
}

/// pgbench through each proxy, one protocol each, with `command` run in the middle.
async fn under_load(
    env: &Env,
    pw: &cutover_core::Secret,
    members: &[&Member],
    command: &[&str],
) -> (common::Run, u64) {
    under_load_for(7, env, pw, members, command).await
}

/// As [`under_load`], with pgbench running for `seconds`.
async fn under_load_for(
    seconds: u32,
    env: &Env,
    pw: &cutover_core::Secret,
    members: &[&Member],
    command: &[&str],
) -> (common::Run, u64) {
    let seconds = seconds.to_string();
    let modes = ["prepared", "extended", "simple"];
    let loads: Vec<_> = members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            pgbench::start(
                &m.url(env, pw),
                &[
                    "-n",
                    "-c",
                    "4",
                    "-j",
                    "2",
                    "-T",
                    &seconds,
                    "-M",
                    modes[i % 3],
                ],
            )
            .unwrap()
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let run = env.run(command);
    let mut processed = 0;
    for (i, load) in loads.into_iter().enumerate() {
        let v = pgbench::finish(load).await.unwrap();
        assert!(v.clean(), "pgbench through proxy {i}: {v:?}");
        assert!(v.processed > 0, "pgbench through proxy {i}: {v:?}");
        processed += v.processed;
    }
    (run, processed)
}

fn fleet_json(env: &Env) -> serde_json::Value {
    let run = env.run(&["--json", "proxy", "status"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_switch_as_one_under_load_and_roll_back() {
    let (env, pw) = shop("").await;
    let members = [
        Member::start(&env, "a").await,
        Member::start(&env, "b").await,
        Member::start(&env, "c").await,
    ];
    let fleet = fleet_json(&env);
    assert_eq!(fleet["proxies"].as_array().unwrap().len(), 3, "{fleet}");
    assert_eq!(fleet["active"], "source");
    let target_port = env.pair.target.cluster.port().to_string();
    let source_port = env.pair.source.cluster.port().to_string();

    let all: Vec<&Member> = members.iter().collect();
    let (run, processed) = under_load(&env, &pw, &all, &["db", "switchover"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        history(&env.pair.target).await,
        processed,
        "every transaction pgbench reported, through any proxy, is on the target"
    );
    let fleet = fleet_json(&env);
    assert_eq!(
        (fleet["active"].as_str(), fleet["epoch"].as_u64()),
        (Some("target"), Some(1))
    );
    for p in fleet["proxies"].as_array().unwrap() {
        assert_eq!(p["backend"], "target", "{fleet}");
        assert_eq!(p["epoch"], 1, "{fleet}");
    }
    for m in &members {
        assert_eq!(port_of(&m.url(&env, &pw)).await, target_port);
    }
    let (_, metrics) = http_get(members[0].health, "/metrics").await.unwrap();
    assert_eq!(
        cutover_testkit::metric(&metrics, "cutover_proxy_backend{backend=\"target\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        cutover_testkit::metric(&metrics, "cutover_proxy_control_up"),
        Some(1.0)
    );

    // A proxy that starts now, with nothing on its disk, joins on the target.
    let late = Member::start(&env, "late").await;
    assert_eq!(port_of(&late.url(&env, &pw)).await, target_port);

    // Back, the same way, with the newcomer in the fleet.
    let all: Vec<&Member> = members.iter().chain([&late]).collect();
    let before = history(&env.pair.target).await;
    let (run, processed) = under_load(&env, &pw, &all, &["db", "rollback"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(history(&env.pair.source).await, before + processed);
    for m in members.iter().chain([&late]) {
        assert_eq!(port_of(&m.url(&env, &pw)).await, source_port);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_proxy_stops_the_switch_and_every_proxy_stays_on_the_source() {
    let (env, pw) = shop("ack_timeout = \"1s\"\n").await;
    let up = Member::start(&env, "up").await;
    let frozen = Member::start(&env, "frozen").await;
    frozen.signal(Signal::SIGSTOP);

    let (run, _) = under_load(&env, &pw, &[&up], &["db", "switchover"]).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("1 proxy did not acknowledge the pause within 1s"),
        "{}",
        run.stderr
    );
    frozen.signal(Signal::SIGCONT);
    let source_port = env.pair.source.cluster.port().to_string();
    for m in [&up, &frozen] {
        let url = m.url(&env, &pw);
        assert_eq!(port_of(&url).await, source_port);
        // Not fenced: the source takes writes.
        connect(&url, Side::Source)
            .await
            .unwrap()
            .batch_execute("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 0, now())")
            .await
            .unwrap();
    }
    let fleet = fleet_json(&env);
    assert_eq!(
        (fleet["active"].as_str(), fleet["paused"].as_bool()),
        (Some("source"), Some(false))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_inside_the_pause_stops_the_switch_and_its_clients_land_on_the_source() {
    let (env, pw) = shop("").await;
    let plan = std::fs::read_to_string(env.plan())
        .unwrap()
        .replace("drain_timeout = \"30s\"", "drain_timeout = \"3s\"");
    std::fs::write(env.plan(), plan).unwrap();
    let up = Member::start(&env, "up").await;
    let mut doomed = Member::start(&env, "doomed").await;
    // A transaction open through the doomed proxy keeps the fleet from draining.
    let open = connect(&doomed.url(&env, &pw), Side::Source).await.unwrap();
    open.batch_execute("BEGIN; INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 7, now())")
        .await
        .unwrap();
    let switch = env
        .command(&["db", "switchover"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let target = env.pair.target.client().await;
    let mut paused = false;
    for _ in 0..200 {
        let r = target
            .query_opt(
                "SELECT 1 FROM cutover.proxy_lease WHERE (status->>'paused')::bool AND NOT (status->>'drained')::bool",
                &[],
            )
            .await
            .ok()
            .flatten();
        if r.is_some() {
            paused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(paused, "the fleet paused");
    doomed.signal(Signal::SIGKILL);
    let _ = doomed.child.take().unwrap().wait();
    let out = tokio::task::spawn_blocking(move || switch.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let run = common::to_run(out);
    env.assert_no_secret(&run.stderr);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("not drained"), "{}", run.stderr);
    // Its client reconnects through the proxy that stayed: the source, writable, and the
    // killed transaction is not there.
    let url = up.url(&env, &pw);
    assert_eq!(
        port_of(&url).await,
        env.pair.source.cluster.port().to_string()
    );
    let c = connect(&url, Side::Source).await.unwrap();
    c.batch_execute(
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 8, now())",
    )
    .await
    .unwrap();
    let deltas = env
        .pair
        .source
        .value("SELECT string_agg(delta::text, ',') FROM pgbench_history")
        .await;
    assert_eq!(deltas.as_deref(), Some("8"));
    let fleet = fleet_json(&env);
    assert_eq!(
        (fleet["active"].as_str(), fleet["paused"].as_bool()),
        (Some("source"), Some(false))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_control_database_the_fleet_serves_and_a_switch_refuses() {
    let mut env = Env::native().await;
    let pw = env.pair.app_role("app").await;
    let dead = free_port();
    with_proxy(&mut env, pw.expose(), "control_url = \"${CONTROL_URL}\"\n");
    env.vars.push((
        "CONTROL_URL".into(),
        format!("postgres://nobody@127.0.0.1:{dead}/control?sslmode=disable"),
    ));
    let m = Member::start(&env, "alone").await;
    assert_eq!(
        port_of(&m.url(&env, &pw)).await,
        env.pair.source.cluster.port().to_string()
    );
    let (_, metrics) = http_get(m.health, "/metrics").await.unwrap();
    assert_eq!(
        cutover_testkit::metric(&metrics, "cutover_proxy_control_up"),
        Some(0.0)
    );
    for args in [&["db", "switchover"][..], &["proxy", "status"][..]] {
        let run = env.run(args);
        assert_eq!(run.code, 1, "{args:?}: {}{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("control database") && run.stderr.contains("connection refused"),
            "{}",
            run.stderr
        );
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    }
    // Still serving.
    assert_eq!(
        port_of(&m.url(&env, &pw)).await,
        env.pair.source.cluster.port().to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_tells_every_client_to_reconnect_and_exits_0() {
    let (env, pw) = shop("shutdown_timeout = \"5s\"\n").await;
    let mut m = Member::start(&env, "leaving").await;
    // While a proxy renews its lease, cleanup leaves the control tables alone.
    let dry = env.run(&["db", "cleanup", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(!dry.stdout.contains("proxy_fleet"), "{}", dry.stdout);
    let load = pgbench::start(
        &m.url(&env, &pw),
        &["-n", "-c", "4", "-j", "2", "-T", "30", "-M", "prepared"],
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    m.signal(Signal::SIGTERM);
    let mut child = m.child.take().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    // pgbench does not hang: every client was told, with a reason, and it ends long before
    // its 30 s.
    let v = tokio::time::timeout(Duration::from_secs(10), pgbench::finish(load))
        .await
        .expect("pgbench ends once the proxy is gone")
        .unwrap();
    assert!(v.processed > 0, "{v:?}");
    // pgbench reports a closed connection without the server's message; the proxy says how
    // each of the four sessions ended.
    let clients = v.aborted.iter().filter(|l| l.contains("client")).count();
    assert_eq!(clients, 4, "{v:?}");
    let said = std::fs::read_to_string(env.dir.path().join("leaving.err")).unwrap();
    assert!(
        said.contains("4 sessions closed at a transaction boundary, 0 cut inside a transaction"),
        "{said}"
    );
    // It left the fleet: its lease is gone.
    let fleet =
        serde_json::from_str::<serde_json::Value>(&env.run(&["--json", "proxy", "status"]).stdout)
            .unwrap();
    assert_eq!(fleet["proxies"].as_array().unwrap().len(), 0, "{fleet}");
    // With no proxy left, cleanup takes the control tables, and the schema with them.
    let cleanup = env.run(&["db", "cleanup"]);
    assert_eq!(cleanup.code, 0, "{}", cleanup.stderr);
    assert!(
        cleanup.stdout.contains(
            "removed proxy control cutover.proxy_fleet and cutover.proxy_lease on the target"
        ),
        "{}",
        cleanup.stdout
    );
    assert_eq!(
        env.pair
            .target
            .value("SELECT count(*) FROM pg_namespace WHERE nspname = 'cutover'")
            .await
            .as_deref(),
        Some("0")
    );
}

/// A fleet of two proxies, `direct` and `cut`, with `cut` reaching the target through a
/// forwarder the test controls (both reach the control database directly).
async fn fleet_with_a_path() -> (
    Env,
    cutover_core::Secret,
    Member,
    Member,
    std::sync::Arc<Forwarder>,
) {
    let (env, pw) = shop("control_url = \"${CONTROL_URL}\"\n").await;
    let target = env.pair.target.url();
    let target_addr: std::net::SocketAddr = format!("127.0.0.1:{}", target.port).parse().unwrap();
    let fwd = std::sync::Arc::new(Forwarder::start(target_addr).await);
    let mut through = target.clone();
    through.port = fwd.addr.port();
    let direct = Member::start(&env, "direct").await;
    let cut = Member::start_with(&env, "cut", &[("DST_URL", url_text(&through))]).await;
    (env, pw, direct, cut, fwd)
}

/// The path from one proxy to the target is cut before the switch: every proxy checks its
/// path before the point of no return, so the switch stops there, undone, and every proxy
/// goes on with the source; with the path back, the switch goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_cut_off_from_the_target_stops_the_switch_before_its_point_of_no_return() {
    let (env, pw, direct, cut, fwd) = fleet_with_a_path().await;
    fwd.set(ForwardPath::Refused).await;
    let (run, before) = under_load(&env, &pw, &[&direct, &cut], &["db", "switchover"]).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("not every proxy reaches the target")
            && run.stderr.contains("cannot reach the target")
            && run.stderr.contains("refused"),
        "{}",
        run.stderr
    );
    let source_port = env.pair.source.cluster.port().to_string();
    for m in [&direct, &cut] {
        assert_eq!(port_of(&m.url(&env, &pw)).await, source_port);
    }
    let fleet = fleet_json(&env);
    assert_eq!(
        (fleet["active"].as_str(), fleet["paused"].as_bool()),
        (Some("source"), Some(false))
    );

    fwd.set(ForwardPath::Open).await;
    let (run, processed) = under_load(&env, &pw, &[&direct, &cut], &["db", "switchover"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        history(&env.pair.target).await,
        before + processed,
        "every transaction of both runs, the refused switch's and the one that went through"
    );
    let target_port = env.pair.target.cluster.port().to_string();
    for m in [&direct, &cut] {
        assert_eq!(port_of(&m.url(&env, &pw)).await, target_port);
    }
}

/// The path from one proxy to the target is lost after the point of no return (it still
/// takes connections, and nothing goes through them): that proxy's sessions wait, their
/// clients' requests with them, and go on once the path is back, 12 s after the switch.
/// No transaction fails, and every one acknowledged is on the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_lost_after_the_point_of_no_return_holds_sessions_until_it_returns() {
    let (env, pw, direct, cut, fwd) = fleet_with_a_path().await;
    fwd.set(ForwardPath::BlackHole).await;
    let back = {
        let (fwd, control) = (fwd.clone(), env.pair.target.url());
        tokio::spawn(async move {
            let c = connect(&control, Side::Target).await.unwrap();
            loop {
                let active: Option<String> = c
                    .query_opt("SELECT active FROM cutover.proxy_fleet", &[])
                    .await
                    .ok()
                    .flatten()
                    .map(|r| r.get(0));
                if active.as_deref() == Some("target") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Longer than a session waits for its login made ahead, and than one login.
            tokio::time::sleep(Duration::from_secs(12)).await;
            fwd.set(ForwardPath::Open).await;
        })
    };
    let (run, processed) =
        under_load_for(25, &env, &pw, &[&direct, &cut], &["db", "switchover"]).await;
    back.await.unwrap();
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        history(&env.pair.target).await,
        processed,
        "every transaction pgbench reported is on the target"
    );
    let target_port = env.pair.target.cluster.port().to_string();
    for m in [&direct, &cut] {
        assert_eq!(port_of(&m.url(&env, &pw)).await, target_port);
    }
    let log = std::fs::read_to_string(env.dir.path().join("cut.err")).unwrap();
    assert!(
        log.contains("cannot reach the target yet") && log.contains("reached the target after"),
        "the sessions of the proxy cut off waited for the path: {log}"
    );
}
