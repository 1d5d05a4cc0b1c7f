//! `cutover app ...` through the real binary: no plan file needed, nothing written in a dry
//! run or over an existing file, one clear error line for bad input, and no secret value of
//! the fixture configs in any output.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cutover-app/tests/fixtures")
}

/// Every secret value in the fixtures' configs (everything but the plain ones).
fn secrets() -> Vec<String> {
    let mut out = vec![];
    for app in ["node-express", "django", "rails", "go-hello"] {
        let text =
            std::fs::read_to_string(fixtures().join(app).join("heroku-config.json")).unwrap();
        let vars: std::collections::BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
        for (k, v) in vars {
            let plain = [
                "HEROKU_APP_NAME",
                "LOG_LEVEL",
                "SUPPORT_EMAIL",
                "DJANGO_LOG_LEVEL",
                "WEB_CONCURRENCY",
                "LANG",
                "RACK_ENV",
                "RAILS_ENV",
                "RAILS_LOG_TO_STDOUT",
                "RAILS_SERVE_STATIC_FILES",
                "GREETING",
            ];
            if !plain.contains(&k.as_str()) {
                out.push(v);
            }
        }
    }
    out
}

/// Runs `cutover args...` in `cwd`, where there is no cutover.toml, and checks that no
/// secret leaked into stdout or stderr.
fn cutover(cwd: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env_remove("CUTOVER_PLAN")
        .output()
        .expect("run cutover");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    for s in secrets() {
        assert!(
            !run.stdout.contains(&s),
            "a secret leaked into stdout of {args:?}"
        );
        assert!(
            !run.stderr.contains(&s),
            "a secret leaked into stderr of {args:?}"
        );
    }
    run
}

fn one_error_line(r: &Run) -> String {
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line:\n{}", r.stderr);
    assert!(lines[0].starts_with("error: "), "{}", r.stderr);
    lines[0].to_string()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// Every file under `dir`, relative, sorted.
fn listing(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = vec![];
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn app_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    copy_tree(&fixtures().join(name), &dir);
    (tmp, dir)
}

#[test]
fn inspect_needs_no_plan_and_hides_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    for app in ["node-express", "django", "rails", "go-hello"] {
        let dir = fixtures().join(app);
        let config = dir.join("heroku-config.json");
        let args = [
            "app",
            "inspect",
            dir.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ];
        let r = cutover(tmp.path(), &args);
        assert_eq!(r.code, 0, "{app}: {}", r.stderr);
        assert!(r.stdout.contains("config vars ("), "{app}");
        let mut json_args = args.to_vec();
        json_args.push("--json");
        let r = cutover(tmp.path(), &json_args);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert!(v["env"]["vars"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v.get("value").is_none()));
    }
    let r = cutover(
        tmp.path(),
        &["app", "inspect", fixtures().join("rails").to_str().unwrap()],
    );
    assert!(r.stdout.contains("language   Ruby 3.2.2 (Gemfile.lock RUBY VERSION: ruby 3.2.2p53), decided by Gemfile; also present: Node.js"), "{}", r.stdout);
    assert!(listing(tmp.path()).is_empty(), "inspect writes nothing");
}

#[test]
fn dockerize_shows_then_writes_and_never_clobbers() {
    let (_tmp, dir) = app_copy("django");
    let before = listing(&dir);
    let d = dir.to_str().unwrap();
    let r = cutover(&dir, &["app", "dockerize", d, "--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .starts_with("would write (dry run, nothing written):\n"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains(
        "CMD [\"/bin/sh\",\"-c\",\"exec gunicorn --config gunicorn.conf.py gettingstarted.wsgi\"]"
    ));
    assert_eq!(listing(&dir), before, "a dry run writes nothing");

    let r = cutover(&dir, &["app", "dockerize", d]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let dockerfile = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("FROM python:3.12-slim-bookworm"));
    assert!(dir.join(".dockerignore").is_file());

    std::fs::write(dir.join("Dockerfile"), "FROM scratch\n").unwrap();
    let r = cutover(&dir, &["app", "dockerize", d]);
    assert_eq!(r.code, 1);
    assert_eq!(
        one_error_line(&r),
        format!(
            "error: {} already exists; pass --force to overwrite, or --out to write elsewhere",
            dir.join("Dockerfile").display()
        )
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("Dockerfile")).unwrap(),
        "FROM scratch\n"
    );
    let r = cutover(&dir, &["app", "dockerize", d, "--force"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.join("Dockerfile")).unwrap(),
        dockerfile
    );

    let r = cutover(&dir, &["app", "dockerize", d, "--cnb", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["files"][0]["action"], "create");
    assert!(v["caveats"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c.as_str().unwrap().contains("release phase")));
    assert!(dir.join("project.toml").is_file());
}

#[test]
fn env_exports_and_diff_never_print_a_secret() {
    let (_tmp, dir) = app_copy("rails");
    let d = dir.to_str().unwrap();
    let config = dir.join("heroku-config.json");
    let c = config.to_str().unwrap();
    let addons = dir.join("addons.json");
    for target in ["secrets-manager", "ssm", "ecs", "vercel", "dotenv"] {
        let out = dir.join(format!("out-{target}"));
        let o = out.to_str().unwrap();
        let base = [
            "app",
            "env",
            "--dir",
            d,
            "--config",
            c,
            "--addons",
            addons.to_str().unwrap(),
            "--to",
            target,
            "--out",
            o,
        ];
        let mut dry = base.to_vec();
        dry.push("--dry-run");
        let r = cutover(&dir, &dry);
        assert_eq!(r.code, 0, "{target}: {}", r.stderr);
        assert!(!out.exists(), "{target}: a dry run writes nothing");
        let mut json = dry.clone();
        json.push("--json");
        let r = cutover(&dir, &json);
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap();
        let r = cutover(&dir, &base);
        assert_eq!(r.code, 0, "{target}: {}", r.stderr);
        let written = std::fs::read_to_string(&out).unwrap();
        if target != "ecs" {
            assert!(
                written.contains("0fixture1b2c3d4e5f60718293a4b5c6"),
                "{target}: the export carries the secret"
            );
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(
                    std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
                    0o600
                );
            }
        }
        assert!(
            !written.contains("pfixtureRailsDb3Kv"),
            "{target}: add-on values are never copied"
        );
    }
    // the .env export read back: the changes are exactly what the move meant to change
    let r = cutover(
        &dir,
        &[
            "app",
            "env",
            "diff",
            c,
            dir.join("out-dotenv").to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stdout.contains("DATABASE_URL"));
    assert!(r.stdout.contains("hmac:"));
    assert!(
        r.stdout.contains("MALLOC_ARENA_MAX  only in target  -"),
        "{}",
        r.stdout
    );
    let r = cutover(
        &dir,
        &[
            "app",
            "env",
            "diff",
            c,
            dir.join("out-vercel").to_str().unwrap(),
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["same"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == "RAILS_MASTER_KEY"));
    let r = cutover(&dir, &["app", "env", "diff", c, c]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "the same 9 variables on both sides\n")
    );
}

#[test]
fn terraform_and_vercel_write_their_trees() {
    let (_tmp, dir) = app_copy("node-express");
    let d = dir.to_str().unwrap();
    let config = dir.join("heroku-config.json");
    let infra = dir.join("infra");
    let r = cutover(
        &dir,
        &[
            "app",
            "terraform",
            d,
            "--config",
            config.to_str().unwrap(),
            "--domain",
            "www.shop.example",
            "--out",
            infra.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(listing(&infra), ["main.tf", "outputs.tf", "variables.tf"]);
    match Command::new("terraform")
        .args(["fmt", "-check", "-recursive"])
        .arg(&infra)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "terraform fmt -check: {}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(_) => eprintln!("terraform is not on PATH: skipping terraform fmt -check"),
    }
    let r = cutover(
        &dir,
        &["app", "vercel", d, "--config", config.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let payload: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("vercel-env.json")).unwrap())
            .unwrap();
    let keys: Vec<&str> = payload
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert!(keys.contains(&"DATABASE_URL") && keys.contains(&"DATABASE_URL_UNPOOLED"));
    assert!(dir.join("vercel.json").is_file());
}

/// The Route 53 records `app terraform` writes are the ones `cutover dns` and the canary
/// move: the same set identifiers, the same starting weights, and Terraform leaves their TTL
/// and weights to cutover, so neither undoes the other.
#[test]
fn terraform_writes_the_weighted_records_cutover_dns_moves() {
    use cutover_traffic::dns::{ops, NEW_SET, OLD_SET};
    let (_tmp, dir) = app_copy("node-express");
    let infra = dir.join("infra");
    let r = cutover(
        &dir,
        &[
            "app",
            "terraform",
            dir.to_str().unwrap(),
            "--domain",
            "www.shop.example",
            "--out",
            infra.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let main = std::fs::read_to_string(infra.join("main.tf")).unwrap();
    let variables = std::fs::read_to_string(infra.join("variables.tf")).unwrap();
    let record = |name: &str| {
        let start = main
            .find(&format!("resource \"aws_route53_record\" \"{name}\""))
            .unwrap();
        let end = main[start..].find("\n}\n").unwrap() + start;
        main[start..end].to_string()
    };
    let default = |var: &str| -> u32 {
        let start = variables.find(&format!("variable \"{var}\"")).unwrap();
        let block = &variables[start..];
        let line = block
            .lines()
            .find(|l| l.trim_start().starts_with("default"))
            .unwrap();
        line.split('=').nth(1).unwrap().trim().parse().unwrap()
    };
    // What cutover writes at 0% over records that are weighted already.
    let settings = cutover_core::plan::DnsSettings {
        zone: "shop.example".into(),
        name: "www.shop.example".into(),
        record_type: cutover_core::plan::RecordKind::Cname,
        old: vec!["shop.herokudns.com".into()],
        new: vec!["shop-alb.eu-west-1.elb.amazonaws.com".into()],
        low_ttl: std::time::Duration::from_secs(60),
        authoritative: vec![],
        resolvers: vec![],
        provider: cutover_core::plan::DnsProviderSettings::Route53 {
            hosted_zone_id: "Z0123456789ABC".into(),
            access_key_id: cutover_core::Secret::new("id"),
            secret_access_key: cutover_core::Secret::new("key"),
            session_token: None,
            region: "us-east-1".into(),
            endpoint: None,
        },
    };
    let sets = ops::split_sets(&settings, 0, true, true).unwrap();
    for (resource, set, var) in [
        ("heroku", OLD_SET, "heroku_weight"),
        ("ecs", NEW_SET, "ecs_weight"),
    ] {
        let r = record(resource);
        assert!(r.contains(&format!("set_identifier = \"{set}\"")), "{r}");
        assert!(r.contains("type           = \"CNAME\""), "{r}");
        assert!(
            r.contains("ignore_changes = [ttl, weighted_routing_policy]"),
            "{r}"
        );
        let cutover = sets
            .iter()
            .find(|s| s.weight.as_ref().is_some_and(|(id, _)| id == set))
            .unwrap();
        assert_eq!(cutover.weight.as_ref().unwrap().1, default(var), "{set}");
    }
}

#[test]
fn bad_input_is_one_line_and_writes_nothing() {
    let (tmp, dir) = app_copy("node-express");
    let d = dir.to_str().unwrap();
    let before = listing(tmp.path());

    let bad_config = tmp.path().join("bad-config.json");
    std::fs::write(
        &bad_config,
        "{\n  \"API_KEY\": \"sk_test_fixtureStripe51Hz\"\n  \"B\": \"x\"\n}\n",
    )
    .unwrap();
    let r = cutover(
        &dir,
        &[
            "app",
            "terraform",
            d,
            "--config",
            bad_config.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 1);
    assert_eq!(
        one_error_line(&r),
        format!("error: {}:3: not valid JSON (expected `,` or `}}`); pass the output of `heroku config --json --app APP` (an object of name → string)", bad_config.display())
    );

    let shell = tmp.path().join("shell.txt");
    std::fs::write(
        &shell,
        "DATABASE_URL='postgres://u7fixture:pfixtureNodeDb9Q2@h/d'\n",
    )
    .unwrap();
    let r = cutover(
        &dir,
        &[
            "app",
            "env",
            "--dir",
            d,
            "--config",
            shell.to_str().unwrap(),
            "--to",
            "dotenv",
            "--out",
            tmp.path().join("x.env").to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 1);
    assert!(one_error_line(&r)
        .contains("shell.txt:1: this is the text or shell-quoted form of `heroku config`"));

    let r = cutover(
        &dir,
        &[
            "app",
            "env",
            "--config",
            "heroku-config.json",
            "--to",
            "heroku",
        ],
    );
    assert_eq!(r.code, 64);
    assert_eq!(one_error_line(&r), "error: --to: unknown target `heroku`; use one of secrets-manager, ssm, ecs, vercel, dotenv");

    let missing = tmp.path().join("no-such-app");
    let r = cutover(&dir, &["app", "dockerize", missing.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert_eq!(one_error_line(&r), format!("error: {} does not exist; pass the app's source directory (the one holding the Procfile)", missing.display()));

    std::fs::write(
        dir.join("Procfile"),
        "web: node server.js\nworker node worker.js\n",
    )
    .unwrap();
    let r = cutover(&dir, &["app", "dockerize", d]);
    assert_eq!(r.code, 1);
    assert!(one_error_line(&r).starts_with(&format!(
        "error: {}:2: no `:` after the process type;",
        dir.join("Procfile").display()
    )));
    std::fs::copy(
        fixtures().join("node-express/Procfile"),
        dir.join("Procfile"),
    )
    .unwrap();

    std::fs::write(
        dir.join("app.json"),
        "{\n  \"name\": \"x\",\n  \"formation\": {\n",
    )
    .unwrap();
    let r = cutover(&dir, &["app", "inspect", d]);
    assert_eq!(r.code, 1);
    assert!(
        one_error_line(&r).starts_with(&format!(
            "error: {}:4: not valid JSON",
            dir.join("app.json").display()
        )),
        "{}",
        r.stderr
    );

    let mut after = listing(tmp.path());
    after.retain(|f| f != "bad-config.json" && f != "shell.txt");
    assert_eq!(after, before, "bad input writes nothing");
}

/// `cutover proxy terraform`: the fleet's service, load balancer and image from the plan,
/// with every secret by reference (no value of one in any file or output), `terraform fmt`
/// clean, and nothing written by a dry run.
#[test]
fn proxy_terraform_writes_the_fleet_with_secrets_by_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let plan = "[source]\nurl = \"${SOURCE_DATABASE_URL}\"\n\n[target]\nurl = \"${TARGET_DATABASE_URL}\"\n\n\
                [proxy]\nlisten = \"0.0.0.0:6432\"\nadmin_token = \"${CUTOVER_ADMIN_TOKEN}\"\n\
                health_listen = \"0.0.0.0:9200\"\nshutdown_timeout = \"40s\"\n\
                tls_cert = \"proxy.crt\"\ntls_key = \"proxy.key\"\n\n\
                [[proxy.users]]\nname = \"shop\"\npassword = \"${APP_DATABASE_PASSWORD}\" # the app's role\n";
    std::fs::write(dir.join("cutover.toml"), plan).unwrap();
    let secrets = [
        (
            "SOURCE_DATABASE_URL",
            "postgres://u:src-Secret-1@old.example:5432/shop",
        ),
        (
            "TARGET_DATABASE_URL",
            "postgres://u:tgt-Secret-2@new.example:5432/shop",
        ),
        ("CUTOVER_ADMIN_TOKEN", "admin-Secret-3"),
        ("APP_DATABASE_PASSWORD", "app-Secret-4"),
    ];
    let run = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cutover"));
        c.args(args).current_dir(dir).env_remove("CUTOVER_PLAN");
        for (k, v) in secrets {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let r = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        for (_, v) in secrets {
            assert!(
                !r.stdout.contains(v) && !r.stderr.contains(v),
                "{args:?} leaked a secret"
            );
        }
        r
    };
    let out = dir.join("infra/proxy");
    let r = run(&["proxy", "terraform", "--tasks", "3", "--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("dry run"), "{}", r.stdout);
    assert!(!out.exists(), "a dry run wrote files");

    let r = run(&["proxy", "terraform", "--tasks", "3"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        listing(&out),
        [
            "Dockerfile",
            "cutover.toml",
            "entrypoint.sh",
            "main.tf",
            "outputs.tf",
            "variables.tf"
        ]
    );
    for f in listing(&out) {
        let text = std::fs::read_to_string(out.join(&f)).unwrap();
        for (_, v) in secrets {
            assert!(!text.contains(v), "{f} holds a secret value");
        }
    }
    let main = std::fs::read_to_string(out.join("main.tf")).unwrap();
    for key in [
        "SOURCE_DATABASE_URL",
        "TARGET_DATABASE_URL",
        "CUTOVER_ADMIN_TOKEN",
        "APP_DATABASE_PASSWORD",
        "CUTOVER_PROXY_TLS_CERT_PEM",
        "CUTOVER_PROXY_TLS_KEY_PEM",
    ] {
        assert!(
            main.contains(&format!("valueFrom = \"${{var.secret_arn}}:{key}::\"")),
            "{key} is not a secret by reference:\n{main}"
        );
    }
    assert!(main.contains("load_balancer_type = \"network\""));
    assert!(main.contains("path                = \"/ready\""));
    assert!(main.contains("port                = \"9200\""));
    assert!(main.contains("desired_count   = var.tasks"));
    assert!(main.contains("deregistration_delay = 55"), "{main}");
    let vars = std::fs::read_to_string(out.join("variables.tf")).unwrap();
    assert!(vars.contains("default     = 3"), "{vars}");
    let outputs = std::fs::read_to_string(out.join("outputs.tf")).unwrap();
    assert!(
        outputs.contains(
            "postgres://shop:PASSWORD@${aws_lb.proxy.dns_name}:5432/shop?sslmode=require"
        ),
        "{outputs}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("cutover.toml")).unwrap(),
        plan
    );
    let entry = std::fs::read_to_string(out.join("entrypoint.sh")).unwrap();
    assert!(entry.contains("> '/etc/cutover/proxy.key'"), "{entry}");
    assert!(entry.contains("exec cutover proxy --listen 0.0.0.0:6432 --health-listen 0.0.0.0:9200"));
    let sh = Command::new("sh")
        .arg("-n")
        .arg(out.join("entrypoint.sh"))
        .status()
        .unwrap();
    assert!(sh.success(), "entrypoint.sh is not valid sh");
    match Command::new("terraform")
        .args(["fmt", "-check", "-recursive"])
        .arg(&out)
        .output()
    {
        Ok(o) => assert!(
            o.status.success(),
            "terraform fmt -check: {}",
            String::from_utf8_lossy(&o.stdout)
        ),
        Err(_) => eprintln!("terraform is not on PATH: skipping terraform fmt -check"),
    }
    // Again, without --force: refused, nothing changed.
    std::fs::write(out.join("main.tf"), "# mine\n").unwrap();
    let r = run(&["proxy", "terraform"]);
    assert_ne!(r.code, 0);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(out.join("main.tf")).unwrap(),
        "# mine\n"
    );
}

/// `cutover app terraform . --dry-run | head -1`: the reader goes after one line; the rest of
/// the output is dropped, with no panic, and the command ends with its own exit code (0).
#[test]
fn output_cut_short_by_a_closed_pipe_ends_quietly() {
    let (_tmp, dir) = app_copy("node-express");
    let d = dir.to_str().unwrap();
    let config = dir.join("heroku-config.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args([
            "app",
            "terraform",
            d,
            "--config",
            config.to_str().unwrap(),
            "--domain",
            "www.shop.example",
            "--dry-run",
        ])
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .env_remove("CUTOVER_PLAN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cutover");
    // The reader is gone before the first line, as when `head` has already exited: every
    // write meets a closed pipe (a reader that read a line first would race the writer, whose
    // whole output fits in the pipe's buffer).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}
