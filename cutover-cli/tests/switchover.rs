//! `cutover proxy`, `db switchover` and `db rollback` as a user runs them: the real binary,
//! a proxy in its own process, and a client that keeps its session across both switches.
//! A proxy restarted after the switch stays on the target. Bad input changes nothing.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{start_proxy, Env};
use cutover_pg::{connect, Side};
use cutover_testkit::free_port;

fn with_proxy(env: &mut Env, app_pw: &str) -> (u16, u16) {
    common::with_proxy(env, app_pw, "")
}

async fn port_of(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_and_rollback_from_the_command_line() {
    let mut env = Env::native().await;
    let pw = env.pair.app_role("app").await;
    env.pair
        .source
        .exec(
            "CREATE TABLE public.items (id bigserial PRIMARY KEY, v text);
             ALTER TABLE public.items OWNER TO app;
             INSERT INTO public.items (v) SELECT 'v' || g FROM generate_series(1, 100) g;",
        )
        .await;
    let (port, _) = with_proxy(&mut env, pw.expose());

    // Without a running proxy a switchover refuses and changes nothing.
    let run = env.run(&["db", "sync"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    env.pair
        .target
        .exec("GRANT ALL ON ALL TABLES IN SCHEMA public TO app; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app")
        .await;
    let run = env.run(&["db", "switchover"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("no cutover proxy has joined the control database")
            && run.stderr.contains("start `cutover proxy`"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);

    let proxy = start_proxy(&env, port).await;
    let app = cutover_testkit::via_proxy(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "app",
        &pw,
        &env.pair.source.db,
    );
    let client = connect(&app, Side::Source).await.unwrap();
    let insert = client
        .prepare("INSERT INTO public.items (v) VALUES ($1) RETURNING id")
        .await
        .unwrap();
    client.query_one(&insert, &[&"before"]).await.unwrap();
    assert_eq!(
        port_of(&client).await,
        env.pair.source.cluster.port() as i32
    );

    let run = env.run(&["--json", "db", "switchover"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let s: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(s["active"], "target");
    assert_eq!(s["sessions_moved"], 1);
    assert!(run.stderr.contains("switchover.switch"), "{}", run.stderr);
    // The same session, the same prepared statement, now on the target.
    let id: i64 = client.query_one(&insert, &[&"after"]).await.unwrap().get(0);
    assert!(id > 101, "the sequence moved with the data: {id}");
    assert_eq!(
        port_of(&client).await,
        env.pair.target.cluster.port() as i32
    );

    // db status follows the reverse direction now.
    let run = env.run(&["db", "status"]);
    assert!(
        run.stdout.contains("direction     reverse"),
        "{}",
        run.stdout
    );
    // A restarted proxy stays on the target.
    drop(proxy);
    let proxy = start_proxy(&env, port).await;
    let again = connect(&app, Side::Source).await.unwrap();
    assert_eq!(port_of(&again).await, env.pair.target.cluster.port() as i32);
    // A second switchover has nothing to do.
    let run = env.run(&["db", "switchover"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("already on the target"),
        "{}",
        run.stdout
    );

    // Rollback: the write made on the target is on the source.
    let run = env.run(&["db", "rollback"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(port_of(&again).await, env.pair.source.cluster.port() as i32);
    let n = env
        .pair
        .source
        .value("SELECT count(*) FROM public.items WHERE v = 'after'")
        .await;
    assert_eq!(n.as_deref(), Some("1"));
    again
        .execute("INSERT INTO public.items (v) VALUES ('back')", &[])
        .await
        .unwrap();
    let run = env.run(&["status"]);
    assert!(run.stdout.contains("db rollback"), "{}", run.stdout);
    env.assert_journal_clean();
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_bypasses_the_proxy_is_listed_and_nothing_changes() {
    let mut env = Env::native().await;
    let pw = env.pair.app_role("app").await;
    env.pair
        .source
        .exec("CREATE TABLE public.t (id int PRIMARY KEY); ALTER TABLE public.t OWNER TO app;")
        .await;
    let (port, _) = with_proxy(&mut env, pw.expose());
    assert_eq!(env.run(&["db", "sync"]).code, 0);
    env.pair
        .target
        .exec("GRANT ALL ON ALL TABLES IN SCHEMA public TO app")
        .await;
    let _proxy = start_proxy(&env, port).await;
    let mut direct = env
        .pair
        .source
        .cluster
        .url_as("app", Some(pw.clone()), &env.pair.source.db);
    // An application's session (cutover's own carry application_name "cutover").
    direct.application_name = Some("rails".into());
    let bypass = connect(&direct, Side::Source).await.unwrap();
    let run = env.run(&["db", "switchover"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("do not go through the proxy") && run.stderr.contains("user app"),
        "{}",
        run.stderr
    );
    // Nothing was fenced: the bypassing session still writes.
    bypass
        .execute("INSERT INTO public.t VALUES (1)", &[])
        .await
        .unwrap();

    // A session that leaves while the switchover looks (a pool closing a connection, one
    // the proxy is still logging in) does not stop it: only one that stays counts.
    let leaves = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
        drop(bypass);
    });
    let run = tokio::task::block_in_place(|| env.run(&["db", "switchover"]));
    leaves.await.unwrap();
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
}

#[test]
fn proxy_without_a_proxy_section_says_how_to_add_one() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let env = rt.block_on(Env::native());
    for args in [
        &["proxy"][..],
        &["db", "switchover"][..],
        &["db", "rollback"][..],
    ] {
        let run = env.run(args);
        assert_eq!(run.code, 1, "{args:?}");
        assert!(
            run.stderr.contains("has no [proxy] section"),
            "{}",
            run.stderr
        );
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_leaves_on_sigterm_as_a_load_balancer_expects() {
    let mut env = Env::native().await;
    let pw = env.pair.app_role("app").await;
    let (port, _) = with_proxy(&mut env, pw.expose());
    let health = free_port();
    let plan = std::fs::read_to_string(env.plan()).unwrap().replace(
        "\n[proxy]\nlisten",
        &format!(
            "\n[proxy]\nhealth_listen = \"127.0.0.1:{health}\"\nshutdown_timeout = \"20s\"\nlisten"
        ),
    );
    std::fs::write(env.plan(), plan).unwrap();
    let child = env
        .command(&["proxy"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let health: std::net::SocketAddr = format!("127.0.0.1:{health}").parse().unwrap();
    let mut up = false;
    for _ in 0..100 {
        if cutover_testkit::http_get(health, "/ready")
            .await
            .map(|r| r.0)
            == Ok(200)
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the proxy answers /ready");
    let url = cutover_testkit::via_proxy(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "app",
        &pw,
        &env.pair.source.db,
    );
    let c = connect(&url, Side::Source).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    let (_, metrics) = cutover_testkit::http_get(health, "/metrics").await.unwrap();
    assert_eq!(
        cutover_testkit::metric(&metrics, "cutover_proxy_sessions"),
        Some(1.0),
        "{metrics}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let run = common::to_run(out);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains(&format!("/ready and /metrics on {health}")),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("stopped: 1 sessions closed at a transaction boundary, 0 cut"),
        "{}",
        run.stderr
    );
    assert!(c.simple_query("SELECT 1").await.is_err());
    env.assert_no_secret(&run.stdout);
    env.assert_no_secret(&run.stderr);
}
