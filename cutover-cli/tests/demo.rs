//! The README's first command works: `cutover demo` on clusters it starts itself, the whole
//! move under HTTP load, and the database move alone (`--database-only`).

mod common;

/// The clusters' passwords are "cut" and 24 hex digits; none may show.
fn assert_no_password(text: &str) {
    let leaked = text.match_indices("cut").any(|(i, _)| {
        let rest = &text[i + 3..];
        rest.len() >= 24 && rest[..24].chars().all(|c| c.is_ascii_hexdigit())
    });
    assert!(!leaked, "a password leaked:\n{text}");
}

fn whole_move(args: &[&str]) -> (serde_json::Value, String) {
    let out = std::process::Command::new(common::bin())
        .args(["demo", "--json"])
        .args(args)
        .env("CI", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_no_password(&stdout);
    assert_no_password(&stderr);
    let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // The users' side: every request answered, every acknowledged order on the new primary.
    assert!(s["requests_sent"].as_u64().unwrap() > 200, "{stdout}");
    assert_eq!(s["requests_failed"], 0, "{stdout}");
    let acked = s["writes_acknowledged"].as_i64().unwrap();
    assert!(acked > 50, "{stdout}");
    assert_eq!(s["writes_present"].as_i64().unwrap(), acked, "{stdout}");
    assert_eq!(s["writes_lost"], 0, "{stdout}");
    // Every phase ran, in the runbook's order.
    let phases: Vec<&str> = s["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        ["prepare", "new_app", "proxy", "database", "traffic", "done", "hold", "finish"],
        "{stdout}"
    );
    assert!(
        s["longest_request_at_switch_ms"].as_f64().is_some(),
        "{stdout}"
    );
    assert_eq!(
        s["longest_request_at_canary_steps"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "{stdout}"
    );
    let checklist = std::path::Path::new(s["checklist"].as_str().unwrap());
    assert!(checklist.ends_with("decommission.md"), "{stdout}");
    (s, stderr)
}

#[test]
fn the_demo_moves_the_whole_shop_under_load_losing_nothing() {
    let (s, stderr) = whole_move(&[]);
    assert_eq!(s["mode"], "native");
    assert_eq!(s["attempts"], 1);
    assert_eq!(s["rolled_back_mid_canary"], false);
    for step in [
        "prepare.sync",
        "prepare.verify",
        "new_app.checks",
        "new_app.shadow",
        "proxy.sessions",
        "database.switchover",
        "traffic.canary",
        "done.residual",
        "hold.window",
        "finish.cleanup",
    ] {
        assert!(stderr.contains(&format!("✓ {step} (")), "{step}: {stderr}");
    }
}

#[test]
fn the_heroku_like_demo_rolls_back_mid_canary_and_moves_again_losing_nothing() {
    let (s, stderr) = whole_move(&["--source-kind", "heroku"]);
    assert_eq!(s["mode"], "trigger");
    assert_eq!(s["rolled_back_mid_canary"], true);
    assert_eq!(s["attempts"], 2);
    assert!(
        s["longest_request_at_rollback_ms"].as_f64().is_some(),
        "{s}"
    );
    assert!(
        stderr.contains("✓ rollback.database.switchover ("),
        "{stderr}"
    );
    assert!(stderr.contains("✓ rollback.traffic.canary ("), "{stderr}");
}

#[test]
fn demo_runs_to_an_equal_verification() {
    let out = std::process::Command::new(common::bin())
        .args(["demo", "--database-only", "--scale", "1", "--json"])
        .env("CI", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(s["verification"], "equal");
    assert_eq!(s["tables"], 9);
    assert_eq!(s["tables_equal"], 9);
    assert!(s["writes_during_copy"].as_i64().unwrap() > 0, "{stdout}");
    let sw = &s["switchover"];
    assert_eq!(sw["failed_transactions"], 0, "{stdout}");
    assert_eq!(sw["aborted_clients"], 0, "{stdout}");
    assert!(sw["transactions"].as_u64().unwrap() > 0, "{stdout}");
    assert!(sw["sessions_moved"].as_u64().unwrap() > 0, "{stdout}");
    assert!(
        sw["errors_during_copy"].as_array().unwrap().is_empty(),
        "{stdout}"
    );
    // After the switch the source follows the target: cleanup removes that direction.
    let removed: Vec<&str> = s["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        removed.contains(&"subscription cutover_rev_sub (source)"),
        "{removed:?}"
    );
    assert!(
        removed.contains(&"publication cutover_pub (source)"),
        "{removed:?}"
    );
    assert!(stderr.contains("✓ copy"), "{stderr}");
    assert_no_password(&stdout);
    assert_no_password(&stderr);
}

#[test]
fn the_heroku_like_demo_switches_over_and_rolls_back_losing_nothing() {
    let out = std::process::Command::new(common::bin())
        .args([
            "demo",
            "--database-only",
            "--source-kind",
            "heroku",
            "--scale",
            "1",
            "--json",
        ])
        .env("CI", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(s["mode"], "trigger");
    assert_eq!(s["verification"], "equal", "{stdout}");
    for part in ["switchover", "rollback"] {
        assert_eq!(s[part]["failed_transactions"], 0, "{part}: {stdout}");
        assert_eq!(s[part]["aborted_clients"], 0, "{part}: {stdout}");
        assert!(
            s[part]["transactions"].as_u64().unwrap() > 0,
            "{part}: {stdout}"
        );
    }
    assert!(stderr.contains("wal_level=replica"), "{stderr}");
}
