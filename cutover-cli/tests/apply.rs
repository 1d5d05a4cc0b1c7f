//! `cutover plan`, `apply`, `status`, `rollback` and `finish` through the binary, against the
//! demo's two platforms (clusters, the shop on each, the proxy and the splitter, in this test's
//! process) with users sending HTTP requests the whole time.

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use cutover_pg::Side;
use cutover_runbook::demo::{Stage, StageOptions};
use tokio::io::AsyncBufReadExt;

fn cutover(stage: &Stage, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(common::bin());
    cmd.arg("--plan")
        .arg(stage.plan_path())
        .args(args)
        .envs(&stage.env)
        .env("CI", "1")
        .env("NO_COLOR", "1")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(stage: &Stage, args: &[&str]) -> Out {
    let out = cutover(stage, args).output().await.unwrap();
    let o = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    no_secret(stage, &o.stdout);
    no_secret(stage, &o.stderr);
    o
}

fn no_secret(stage: &Stage, text: &str) {
    for s in stage.secrets() {
        assert!(!text.contains(&s), "a secret leaked:\n{text}");
    }
}

fn one_error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(lines.len(), 1, "expected exactly one error line:\n{stderr}");
    lines[0]
}

/// The steps of a full run of the stage's plan, in order.
const STEPS: &[&str] = &[
    "prepare.check",
    "prepare.sync",
    "prepare.verify",
    "new_app.health",
    "new_app.checks",
    "new_app.shadow",
    "proxy.sessions",
    "database.switchover",
    "traffic.canary",
    "done.residual",
    "hold.window",
    "finish.cleanup",
    "finish.checklist",
];

/// How long into a long step the kill inside it comes.
fn inside(step: &str) -> Option<Duration> {
    match step {
        "prepare.sync" => Some(Duration::from_millis(300)),
        "traffic.canary" => Some(Duration::from_secs(3)),
        "hold.window" => Some(Duration::from_secs(1)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_killed_at_every_step_boundary_and_inside_long_steps_ends_in_the_same_state() {
    let stage = Stage::start(StageOptions::default()).await.unwrap();
    let load = stage.load(30.0);
    let plan = run(&stage, &["plan"]).await;
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    for step in STEPS {
        assert!(
            plan.stdout.contains(&format!(" {step}: ")),
            "{step}: {}",
            plan.stdout
        );
    }

    let mut killed_after: HashSet<String> = HashSet::new();
    let mut killed_inside: HashSet<String> = HashSet::new();
    let mut runs = 0;
    let mut history: Vec<String> = vec![];
    let final_state = loop {
        runs += 1;
        assert!(runs < 60, "apply never finished");
        let mut child = cutover(&stage, &["apply", "--yes", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut ended = None;
        loop {
            let line = match deadline {
                Some(d) => match tokio::time::timeout_at(d, lines.next_line()).await {
                    Ok(l) => l.unwrap(),
                    // Killed inside the step.
                    Err(_) => break,
                },
                None => lines.next_line().await.unwrap(),
            };
            let Some(line) = line else { break };
            no_secret(&stage, &line);
            let e: serde_json::Value = serde_json::from_str(&line).unwrap();
            let step = e["step"].as_str().unwrap_or_default().to_string();
            history.push(format!("run {runs}: {} {step}", e["event"]));
            match e["event"].as_str().unwrap() {
                "step_started" if deadline.is_none() && !killed_inside.contains(&step) => {
                    if let Some(after) = inside(&step) {
                        killed_inside.insert(step);
                        deadline = Some(tokio::time::Instant::now() + after);
                    }
                }
                "step_finished" if e["status"] == "ok" => {
                    if deadline.is_some() && killed_inside.contains(&step) {
                        panic!(
                            "{step} finished before the kill inside it:\n{}",
                            history.join("\n")
                        );
                    }
                    if step == "traffic.canary" {
                        // Users' DNS now answers the new app.
                        stage.resolver.set(&stage.new_app_url());
                    }
                    if deadline.is_none() && killed_after.insert(step) {
                        break;
                    }
                }
                "step_finished" => panic!("a step failed: {line}"),
                "ended" => {
                    ended = Some(e);
                    break;
                }
                _ => {}
            }
        }
        // SIGKILL: no handler runs, nothing is flushed or undone.
        let _ = child.start_kill();
        let _ = child.wait().await;
        if let Some(e) = ended {
            if e["state"] == "finished" {
                break e;
            }
        }
    };
    assert_eq!(final_state["command"], "apply");
    // Cut after every step but where the next one was done before the SIGKILL landed (a
    // millisecond step can finish between the event and the kill), and inside each long step.
    assert!(
        killed_after.len() >= STEPS.len() - 3,
        "{killed_after:?}\n{}",
        history.join("\n")
    );
    assert_eq!(killed_inside.len(), 3, "{killed_inside:?}");

    let status = run(&stage, &["status", "--json"]).await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    let s: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(s["migration"]["state"], "finished");
    assert_eq!(s["state"]["attempt"], 1);
    let done: Vec<&str> = s["state"]["done"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["step"].as_str().unwrap())
        .collect();
    assert_eq!(done, STEPS, "each step is done once, in order");

    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    let present = stage
        .orders_present(Side::Target, &report.acknowledged)
        .await
        .unwrap();
    assert_eq!(
        present,
        report.acknowledged.len() as i64,
        "acknowledged orders lost"
    );
    let journal = std::fs::read(stage.plan.journal_path()).unwrap();
    no_secret(&stage, &String::from_utf8_lossy(&journal));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_apply_status_and_finish_refuse_bad_input_with_one_line() {
    let stage = Stage::start(StageOptions {
        hold: "1h",
        ..StageOptions::default()
    })
    .await
    .unwrap();

    // Nothing has started: nothing to roll back, nothing to finish.
    for (args, expect) in [
        (&["rollback", "--yes"][..], "error: nothing to roll back: no migration has started here (`cutover apply` starts one)"),
        (&["finish", "--yes"][..], "error: nothing to finish: no migration has started here (`cutover apply` starts one)"),
    ] {
        let r = run(&stage, args).await;
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert_eq!(one_error_line(&r.stderr), expect);
    }

    // A saved plan is refused once the plan file changes.
    let saved = stage.dir.path().join("migration.plan");
    let r = run(&stage, &["plan", "-o", saved.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(stage.plan_path()).unwrap();
    std::fs::write(
        stage.plan_path(),
        format!("{text}\n# edited after review\n"),
    )
    .unwrap();
    let r = run(&stage, &["apply", saved.to_str().unwrap(), "--yes"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    let line = one_error_line(&r.stderr);
    assert!(
        line.contains("changed since this plan was saved") && line.contains("cutover plan -o"),
        "{line}"
    );
    std::fs::write(stage.plan_path(), &text).unwrap();

    // Without a terminal and without --yes, apply stops before the first step that changes
    // production, and says how to go on.
    let r = run(&stage, &["apply", saved.to_str().unwrap()]).await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("✓ proxy.sessions"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("waiting for a person before database.switchover"),
        "{}",
        r.stderr
    );
    assert_eq!(
        stage.proxy.as_ref().unwrap().shared.status().active,
        cutover_proxy::Backend::Source
    );

    // Through the done phase; finish inside the rollback window is refused.
    let load = stage.load(20.0);
    // Users' DNS follows the canary, for as long as the run lasts (a run that fails before
    // the canary reaches 100% fails the test instead of leaving it waiting).
    let apply = run(&stage, &["apply", "--yes", "--until", "done"]);
    tokio::pin!(apply);
    let r = loop {
        tokio::select! {
            r = &mut apply => break r,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if stage.splitter.as_ref().unwrap().shared.new_percent() == 100 {
                    stage.resolver.set(&stage.new_app_url());
                }
            }
        }
    };
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("stopped after the done phase"),
        "{}",
        r.stderr
    );
    let r = run(&stage, &["finish", "--yes"]).await;
    assert_eq!(r.code, 1);
    let line = one_error_line(&r.stderr);
    assert!(
        line.starts_with("error: the rollback window ends at") && line.contains("pass --force"),
        "{line}"
    );
    let r = run(&stage, &["finish", "--dry-run"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("finish.cleanup: cut the replication")
            && r.stdout
                .contains("finish refuses before then without --force")
            && r.stdout.contains("nothing was changed (dry run)"),
        "{}",
        r.stdout
    );
    // A rollback's dry run lists what it would undo, users first, and undoes nothing.
    let r = run(&stage, &["rollback", "--dry-run"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let canary = r.stdout.find("  traffic.canary: ");
    let database = r.stdout.find("  database.switchover: ");
    assert!(
        r.stdout.starts_with("rollback would, in order:")
            && canary.is_some()
            && canary < database
            && r.stdout.ends_with("nothing was changed (dry run)\n"),
        "{}",
        r.stdout
    );
    assert_eq!(
        stage.proxy.as_ref().unwrap().shared.status().active,
        cutover_proxy::Backend::Target
    );
    let r = run(&stage, &["status"]).await;
    assert!(r.stdout.contains("rollback window: 59m"), "{}", r.stdout);
    assert!(
        r.stdout.contains("the proxy is on the target"),
        "{}",
        r.stdout
    );
    let r = run(&stage, &["finish", "--yes", "--force"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("decommission checklist"), "{}", r.stdout);
    let checklist = std::fs::read_to_string(stage.dir.path().join("decommission.md")).unwrap();
    assert!(
        checklist.contains("heroku pg:backups:capture --app shop"),
        "{checklist}"
    );
    let r = run(&stage, &["rollback", "--yes"]).await;
    assert_eq!(r.code, 1);
    assert!(
        one_error_line(&r.stderr).contains("nothing to roll back to"),
        "{}",
        r.stderr
    );
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.failures);
}

#[test]
fn apply_without_a_proxy_section_is_one_line_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("cutover.toml");
    std::fs::write(&plan, cutover_core::plan::template("${SRC}", "${DST}")).unwrap();
    for args in [&["apply", "--yes"][..], &["plan"][..]] {
        let (code, stdout, stderr) = plain(&plan, args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        let text = if args[0] == "apply" {
            one_error_line(&stderr).to_string()
        } else {
            stdout.to_string()
        };
        assert!(
            text.contains(
                "has no [proxy]: every app must reach the database through the cutover proxy"
            ),
            "{args:?}: {text}"
        );
        assert!(!stdout.contains("pw-src-123") && !stderr.contains("pw-src-123"));
    }
    // apply refused before it wrote any state.
    let journal = cutover_core::Journal::open(&dir.path().join("cutover.journal.db")).unwrap();
    assert!(cutover_runbook::migration::MigrationState::load(&journal)
        .unwrap()
        .is_none());
}

/// `cutover` on the plan file at `plan`, with the databases named by variables and no
/// terminal: (exit code, stdout, stderr).
fn plain(plan: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(common::bin())
        .arg("--plan")
        .arg(plan)
        .args(args)
        .env(
            "SRC",
            "postgres://app:pw-src-123@127.0.0.1:1/app?sslmode=disable",
        )
        .env(
            "DST",
            "postgres://app:pw-dst-123@127.0.0.1:2/app?sslmode=disable",
        )
        .env("CUTOVER_ADMIN_TOKEN", "tok-admin-123456")
        .env("APP_PW", "pw-app-123")
        .env("CI", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// A plan with the databases and the proxy only: `plan` lists the phases and steps it leaves
/// out, each with what to add, and `apply --dry-run` shows the same and writes nothing.
#[test]
fn plan_names_what_it_leaves_out_and_how_to_add_it_and_a_dry_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("cutover.toml");
    std::fs::write(
        &plan,
        format!(
            "{}\n[proxy]\nadmin_token = \"${{CUTOVER_ADMIN_TOKEN}}\"\n\n[[proxy.users]]\nname = \"app\"\npassword = \"${{APP_PW}}\"\n",
            cutover_core::plan::template("${SRC}", "${DST}")
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = plain(&plan, &["plan"]);
    assert_eq!(code, Some(0), "{stderr}");
    let left_out = stdout.split("left out:").nth(1).expect("a left-out list");
    for (what, fix) in [
        (
            "prepare.lower_ttl: no [dns]",
            "add [dns] (provider, zone, name, old, new)",
        ),
        (
            "new_app phase: the plan names no new app",
            "add [new_app] url = \"https://...\"",
        ),
        (
            "traffic phase: no [traffic]",
            "add [traffic] with the splitter in front of the old app",
        ),
        (
            "done phase: no [traffic]",
            "the move is done when the database is",
        ),
    ] {
        let line = left_out
            .lines()
            .find(|l| l.trim_start().starts_with(what))
            .unwrap_or_else(|| panic!("{what}: {stdout}"));
        assert!(line.contains(fix), "{line}");
    }
    // The phases it runs are there, with what each step changes and what a rollback does.
    for step in [
        "prepare.sync",
        "proxy.sessions",
        "database.switchover",
        "hold.window",
        "finish.cleanup",
    ] {
        assert!(stdout.contains(&format!(" {step}: ")), "{step}: {stdout}");
    }
    assert!(stdout.contains("↺ switch back to the source"), "{stdout}");

    let (code, dry, stderr) = plain(&plan, &["apply", "--dry-run"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        dry.contains("left out:") && dry.ends_with("nothing was changed (dry run)\n"),
        "{dry}"
    );
    let (code, dry, stderr) = plain(&plan, &["rollback", "--dry-run"]);
    assert_eq!(
        (code, dry.as_str()),
        (Some(0), "nothing to roll back\n"),
        "{stderr}"
    );
    for text in [&stdout, &dry] {
        assert!(
            !text.contains("pw-") && !text.contains("tok-admin"),
            "{text}"
        );
    }
    // Not even a journal: the dry runs reached no database and wrote nothing.
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, ["cutover.toml"]);
}
