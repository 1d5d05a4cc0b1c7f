//! The fixture apps (Express, Django from Heroku's template, Rails with a package.json, Go),
//! each inspected, dockerized, exported and turned into Terraform, compared with the expected
//! files under `tests/snapshots/`. Run with `UPDATE_SNAPSHOTS=1` to rewrite them after an
//! intended change, then review the diff.
//!
//! Besides the snapshots, each run checks what a snapshot cannot: the Dockerfile parsed
//! (pinned version in FROM, the Procfile's web command, `$PORT`), `terraform fmt -check` on
//! every generated tree, and that no secret value of the fixture's config appears in any
//! output meant to be shown.

use std::path::{Path, PathBuf};

use cutover_app::env::Class;
use cutover_app::export::{self, Target};
use cutover_app::files::{self, Artifact};
use cutover_app::{cnb, dockerfile, terraform, vercel, Inspection};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Compares `actual` with the snapshot file, or rewrites it under UPDATE_SNAPSHOTS=1.
fn snapshot(fixture: &str, file: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(fixture)
        .join(file);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "no snapshot {}; run UPDATE_SNAPSHOTS=1 cargo test -p cutover-app --test apps",
            path.display()
        )
    });
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the snapshot at line {}:\n  expected: {:?}\n  actual:   {:?}\nrun UPDATE_SNAPSHOTS=1 cargo test -p cutover-app --test apps if the change is intended",
            path.display(),
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line)
        );
    }
}

/// The values of the fixture's config that must never be shown.
fn secret_values(ins: &Inspection) -> Vec<String> {
    let env = ins.env.as_ref().expect("fixtures have a config");
    let values: Vec<String> = env
        .vars
        .iter()
        .filter(|v| !v.class.printable())
        .map(|v| v.value.expose().to_string())
        .collect();
    assert!(!values.is_empty(), "each fixture has secrets to protect");
    values
}

fn assert_clean(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "a secret value leaked into {what}"
        );
    }
}

/// A Dockerfile read back: instructions with continuation lines joined, comments dropped.
struct Dockerfile {
    instructions: Vec<(String, String)>,
}

impl Dockerfile {
    fn parse(text: &str) -> Dockerfile {
        let mut instructions = vec![];
        let mut current = String::new();
        for line in text.lines() {
            let t = line.trim();
            if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
                continue;
            }
            if let Some(head) = t.strip_suffix('\\') {
                current.push_str(head);
                current.push(' ');
                continue;
            }
            current.push_str(t);
            let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
            instructions.push((op.to_uppercase(), args.trim().to_string()));
            current.clear();
        }
        Dockerfile { instructions }
    }

    fn all(&self, op: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    }

    /// Instructions of the last stage (the runtime image).
    fn last_stage(&self) -> &[(String, String)] {
        let start = self
            .instructions
            .iter()
            .rposition(|(o, _)| o == "FROM")
            .unwrap();
        &self.instructions[start..]
    }

    fn env(&self, name: &str) -> Option<String> {
        self.last_stage()
            .iter()
            .filter(|(o, _)| o == "ENV")
            .flat_map(|(_, a)| a.split_whitespace())
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
            .next_back()
    }
}

fn procfile_command(dir: &Path, process: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("Procfile")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{process}:")))
        .map(|c| c.trim().to_string())
}

fn check_dockerfile(name: &str, ins: &Inspection, text: &str, image: &str) {
    let d = Dockerfile::parse(text);
    let froms = d.all("FROM");
    assert!(
        froms
            .iter()
            .any(|f| f.split_whitespace().next() == Some(image)),
        "{name}: expected FROM {image}, got {froms:?}"
    );
    assert!(image.contains(&ins.language.version.pinned));
    let cmd = d
        .last_stage()
        .iter()
        .rfind(|(o, _)| o == "CMD")
        .expect("a CMD");
    let argv: Vec<String> = serde_json::from_str(&cmd.1).expect("CMD in exec form");
    let web = procfile_command(&ins.dir, "web").unwrap();
    assert_eq!(
        argv,
        ["/bin/sh", "-c", &format!("exec {web}")],
        "{name}: web command"
    );
    assert_eq!(d.env("PORT").as_deref(), Some("8080"), "{name}: PORT");
    assert_eq!(d.all("EXPOSE"), ["8080"]);
    // the whole source tree is in the runtime image
    let copies: Vec<&str> = d
        .last_stage()
        .iter()
        .filter(|(o, _)| o == "COPY")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(
        copies.contains(&". .") || copies.contains(&"--from=build /app /app"),
        "{name}: the source tree must be copied whole: {copies:?}"
    );
    if let Some(release) = procfile_command(&ins.dir, "release") {
        assert!(
            !cmd.1.contains(&release),
            "{name}: release runs apart from web"
        );
    }
}

fn terraform_fmt_check(name: &str, files: &[Artifact]) {
    let dir = tempfile::tempdir().unwrap();
    files::write(dir.path(), files, false, false).unwrap();
    match std::process::Command::new("terraform")
        .args(["fmt", "-check", "-diff", "-recursive"])
        .arg(dir.path())
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "{name}: terraform fmt -check failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("terraform is not on PATH: skipping terraform fmt -check for {name}");
        }
        Err(e) => panic!("cannot run terraform: {e}"),
    }
}

fn notes_text(notes: &[String]) -> String {
    notes.iter().map(|n| format!("{n}\n")).collect()
}

/// Runs every generator on one fixture.
fn run(name: &str, image: &str) -> Inspection {
    let dir = fixture(name);
    let addons = dir.join("addons.json");
    let ins = cutover_app::inspect(
        &dir,
        Some(&dir.join("heroku-config.json")),
        addons.exists().then_some(addons.as_path()),
    )
    .unwrap();
    let secrets = secret_values(&ins);

    let inspect_json = serde_json::to_string_pretty(&ins).unwrap() + "\n";
    assert_clean("inspect --json", &inspect_json, &secrets);
    assert_clean("inspect Debug", &format!("{ins:?}"), &secrets);
    snapshot(name, "inspect.json", &inspect_json);

    let build = dockerfile::render(&ins).unwrap();
    let docker = &build.files[0];
    check_dockerfile(name, &ins, &docker.contents, image);
    snapshot(name, "Dockerfile", &docker.contents);
    snapshot(name, ".dockerignore", &build.files[1].contents);
    assert!(build.files[1].contents.contains("heroku-config.json"));
    snapshot(name, "dockerize-notes.txt", &notes_text(&build.notes));

    let (project, caveats) = cnb::render(&ins);
    snapshot(name, "project.toml", &project.contents);
    snapshot(name, "cnb-caveats.txt", &notes_text(&caveats));

    let (tf, tf_notes) = terraform::render(
        &ins,
        &terraform::Options {
            domain: Some(format!("www.{name}.example")),
            ..Default::default()
        },
    )
    .unwrap();
    terraform_fmt_check(name, &tf);
    for f in &tf {
        assert_clean("terraform", &f.contents, &secrets);
        snapshot(name, &format!("infra/{}", f.path.display()), &f.contents);
    }
    snapshot(name, "terraform-notes.txt", &notes_text(&tf_notes));

    let env = ins.env.as_ref().unwrap();
    for target in Target::ALL {
        let e = export::export(
            env,
            target,
            &export::Options {
                app: ins.name.clone(),
                port: dockerfile::PORT,
                ..Default::default()
            },
            target.default_file(),
        );
        assert_clean("an export preview", &e.artifact.preview, &secrets);
        assert_clean("the export to-do list", &notes_text(&e.todo), &secrets);
        snapshot(
            name,
            &format!("env-{}.preview", target.name()),
            &e.artifact.preview,
        );
        // the file itself holds what the platform needs: each secret's real value
        for v in env.of(Class::Secret) {
            if matches!(
                target,
                Target::SecretsManager | Target::Ssm | Target::Vercel | Target::Dotenv
            ) {
                assert!(
                    e.artifact.contents.contains(&v.name) && e.artifact.sensitive,
                    "{name}: {} missing from the {} export",
                    v.name,
                    target.name()
                );
            }
        }
        // add-on values are never copied, to any target
        for v in env.of(Class::Addon) {
            assert!(!e.artifact.contents.contains(v.value.expose()));
        }
    }
    ins
}

#[test]
fn node_express() {
    let ins = run("node-express", "node:20-bookworm-slim");
    assert_eq!(ins.language.language, cutover_app::language::Language::Node);
    let (files, notes) = vercel::render(&ins, &vercel::Options::default()).unwrap();
    let secrets = secret_values(&ins);
    for f in &files {
        assert_clean("vercel preview", &f.preview, &secrets);
        snapshot(
            "node-express",
            &format!("vercel/{}", f.path.display()),
            &f.preview,
        );
    }
    assert_clean("vercel notes", &notes_text(&notes), &secrets);
    snapshot("node-express", "vercel-notes.txt", &notes_text(&notes));
    let config: serde_json::Value = serde_json::from_str(&files[0].contents).unwrap();
    assert_eq!(
        config["buildCommand"],
        "if [ \"$VERCEL_ENV\" = production ]; then DATABASE_URL=\"$DATABASE_URL_UNPOOLED\" node migrate.js; fi"
    );
}

#[test]
fn django_from_the_heroku_template() {
    let ins = run("django", "python:3.12-slim-bookworm");
    let rules: Vec<(String, usize, &str)> = ins
        .findings
        .iter()
        .map(|f| (f.file.clone(), f.line, f.rule))
        .collect();
    assert_eq!(
        rules,
        [
            ("gettingstarted/settings.py".to_string(), 29, "dyno-check"),
            ("gettingstarted/settings.py".to_string(), 33, "debug-flag"),
            (
                "gettingstarted/settings.py".to_string(),
                40,
                "allowed-hosts"
            ),
            (
                "gettingstarted/settings.py".to_string(),
                42,
                "allowed-hosts"
            ),
            (
                "gettingstarted/settings.py".to_string(),
                89,
                "database-branch"
            ),
            (
                "gettingstarted/settings.py".to_string(),
                98,
                "database-branch"
            ),
        ]
    );
    let (files, notes) = vercel::render(&ins, &vercel::Options::default()).unwrap();
    for f in &files {
        snapshot(
            "django",
            &format!("vercel/{}", f.path.display()),
            &f.preview,
        );
    }
    snapshot("django", "vercel-notes.txt", &notes_text(&notes));
    assert_eq!(files[1].path, Path::new("api/index.py"));
}

#[test]
fn rails_with_a_package_json_is_ruby() {
    let ins = run("rails", "ruby:3.2.2-slim-bookworm");
    assert_eq!(ins.language.language, cutover_app::language::Language::Ruby);
    assert_eq!(ins.language.also, [cutover_app::language::Language::Node]);
    let e = vercel::render(&ins, &vercel::Options::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Vercel has no runtime for a long-running Ruby web process; use `cutover app terraform` (ECS) for this app"
    );
}

#[test]
fn go_with_the_heroku_go_version_directive() {
    let ins = run("go-hello", "golang:1.22-bookworm");
    assert_eq!(ins.language.version.source, "go.mod // +heroku goVersion");
    assert_eq!(ins.name, "go-hello");
}
