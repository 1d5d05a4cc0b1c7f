//! The README's first command works: `cutover demo` on clusters it starts itself.

mod common;

#[test]
fn demo_runs_to_an_equal_verification() {
    let out = std::process::Command::new(common::bin())
        .args(["demo", "--scale", "1", "--json"])
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
    // The clusters' passwords are "cut" and 24 hex digits; none may show.
    for text in [&stdout, &stderr] {
        let leaked = text.match_indices("cut").any(|(i, _)| {
            let rest = &text[i + 3..];
            rest.len() >= 24 && rest[..24].chars().all(|c| c.is_ascii_hexdigit())
        });
        assert!(!leaked, "a password leaked:\n{text}");
    }
}

#[test]
fn the_heroku_like_demo_switches_over_and_rolls_back_losing_nothing() {
    let out = std::process::Command::new(common::bin())
        .args(["demo", "--source-kind", "heroku", "--scale", "1", "--json"])
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
