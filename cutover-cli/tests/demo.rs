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
    assert_eq!(s["removed"].as_array().unwrap().len(), 3, "{stdout}");
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
