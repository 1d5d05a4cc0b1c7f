//! Shell completions and the manual page, generated from the command definitions: bash loads
//! the script and completes a subcommand with it, and `man` renders the page.

use std::io::Write;
use std::process::{Command, Stdio};

fn cutover(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .env_remove("CUTOVER_PLAN")
        .output()
        .expect("run cutover");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bash_loads_the_completions_and_completes_a_subcommand() {
    let (code, script, err) = cutover(&["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.bash");
    std::fs::write(&path, script).unwrap();
    // What bash does on `cutover db sw<TAB>`.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}' && COMP_WORDS=(cutover db sw) COMP_CWORD=2 COMP_LINE='cutover db sw' COMP_POINT=13 \
             && _cutover cutover sw db && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display()
        ))
        .output()
        .unwrap();
    let replies = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(replies.trim(), "switchover", "{replies}");
    for shell in ["zsh", "fish"] {
        let (code, script, err) = cutover(&["completions", shell]);
        assert_eq!(code, 0, "{err}");
        assert!(script.contains("switchover"), "{shell}");
    }
    // A shell it does not know: one line with the ones it does, and exit 64.
    let (code, _, err) = cutover(&["completions", "tcsh"]);
    assert_eq!(code, 64);
    assert!(
        err.contains("invalid value 'tcsh'")
            && err.contains("[possible values: bash, elvish, fish, powershell, zsh]"),
        "{err}"
    );
}

#[test]
fn man_renders_the_page() {
    let (code, page, err) = cutover(&["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        page.starts_with(".ie \\n(.g .ds Aq"),
        "roff expected: {}",
        &page[..80.min(page.len())]
    );
    let mut man = Command::new("man")
        .args(["-l", "-"])
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("man is installed (apt-get install man-db; .ci/run does)");
    man.stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = man.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("cutover(1)") && text.contains("NAME"),
        "{text}"
    );
    assert!(
        text.contains("Move a PostgreSQL-backed app between platforms"),
        "{text}"
    );
    assert!(
        text.contains("cutover-db(1)") && text.contains("cutover-completions(1)"),
        "{text}"
    );
}
