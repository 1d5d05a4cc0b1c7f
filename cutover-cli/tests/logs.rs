//! Log lines as JSON (`CUTOVER_LOG_FORMAT=json` or `--log-format json`): one object per line,
//! every library at debug level, and no password in any of them, as for text logs.

mod common;

use common::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_one_object_per_line_without_passwords() {
    let env = Env::native().await;
    env.pair
        .source
        .exec(
            "CREATE TABLE public.items (id int PRIMARY KEY, name text);
             INSERT INTO public.items SELECT g, 'item ' || g FROM generate_series(1, 1000) g;",
        )
        .await;
    let out = env
        .command(&["-vvv", "db", "sync"])
        .env("CUTOVER_LOG_FORMAT", "json")
        .output()
        .unwrap();
    let sync = common::to_run(out);
    env.assert_no_secret(&sync.stdout);
    env.assert_no_secret(&sync.stderr);
    assert_eq!(sync.code, 0, "{}{}", sync.stdout, sync.stderr);

    // Log lines are JSON objects; the rest of stderr is the command's own step lines.
    let logs: Vec<serde_json::Value> = sync
        .stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(logs.len() > 20, "{}", sync.stderr);
    for l in &logs {
        assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
        assert!(l["fields"].is_object() && l["target"].is_string(), "{l}");
    }
    assert!(
        logs.iter().any(|l| l["level"] == "DEBUG"),
        "{}",
        sync.stderr
    );
    // The subscription's connection string went through a debug line, its password masked.
    let masked = logs
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .filter(|m| m.contains("CREATE SUBSCRIPTION") && m.contains("password=''********''"))
        .count();
    assert!(masked > 0, "{}", sync.stderr);
    assert!(sync.stderr.lines().any(|l| l.starts_with("✓ copy")));

    // -q: the run again prints no step line and no progress, only its result.
    let quiet = env.run(&["-q", "db", "sync"]);
    assert_eq!(quiet.code, 0, "{}{}", quiet.stdout, quiet.stderr);
    assert!(
        !quiet.stderr.lines().any(|l| l.starts_with('✓')
            || l.starts_with('·')
            || l.starts_with('→')
            || l.starts_with("  copy:")),
        "{}",
        quiet.stderr
    );
    assert!(quiet.stdout.contains("synced"), "{}", quiet.stdout);

    // The flag says the same, and a wrong value is refused in one line that lists the values.
    let bad = env.run(&["--log-format", "yaml", "status"]);
    assert_eq!(bad.code, 64, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("[possible values: text, json]"),
        "{}",
        bad.stderr
    );
}
