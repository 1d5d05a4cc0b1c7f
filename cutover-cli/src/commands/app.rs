//! `cutover app ...`: read a Heroku app and write what the new platform needs. Parsing and
//! printing only; the work is in `cutover-app`. None of these commands needs a plan file.

use std::path::{Path, PathBuf};

use cutover_app::env::EnvReport;
use cutover_app::export::{self, Target};
use cutover_app::files::{self, Artifact};
use cutover_app::{cnb, diff, dockerfile, terraform, vercel, Inspection};
use cutover_core::Secret;

use crate::cli::{
    AppCommand, AppDockerizeArgs, AppEnvArgs, AppEnvCommand, AppInspectArgs, AppTerraformArgs,
    AppVercelArgs, AppWrite, Global,
};
use crate::output;

/// The exit code for a wrong command line, as clap's own errors use.
const USAGE: i32 = 64;

pub fn run(g: &Global, command: AppCommand) -> anyhow::Result<i32> {
    match command {
        AppCommand::Inspect(a) => inspect(g, a),
        AppCommand::Dockerize(a) => dockerize(g, a),
        AppCommand::Env(a) => match a.command {
            Some(AppEnvCommand::Diff {
                ref source,
                ref target,
            }) => env_diff(g, source, target),
            None => env_export(g, a),
        },
        AppCommand::Terraform(a) => terraform(g, a),
        AppCommand::Vercel(a) => vercel(g, a),
    }
}

/// A wrong command line: one line, exit 64.
fn usage(g: &Global, message: &str) -> i32 {
    if g.json {
        let _ = output::json(&serde_json::json!({ "error": message }));
    }
    eprintln!("error: {message}");
    USAGE
}

fn inspect_app(
    dir: &Path,
    config: Option<&Path>,
    addons: Option<&Path>,
) -> anyhow::Result<Inspection> {
    let ins = cutover_app::inspect(dir, config, addons)?;
    if let Some(env) = &ins.env {
        output::hide_in_logs(env.secrets());
    }
    Ok(ins)
}

fn inspect(g: &Global, a: AppInspectArgs) -> anyhow::Result<i32> {
    let ins = inspect_app(
        &a.source.dir,
        a.source.config.as_deref(),
        a.source.addons.as_deref(),
    )?;
    if g.json {
        output::json(&ins)?;
    } else {
        out!("{}", render_inspection(&ins));
    }
    Ok(0)
}

fn render_inspection(ins: &Inspection) -> String {
    let l = &ins.language;
    let mut out = format!("app        {}\n", ins.name);
    let requested = l
        .version
        .requested
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    out.push_str(&format!(
        "language   {} {} ({}{requested}), decided by {}",
        l.language.name(),
        l.version.pinned,
        l.version.source,
        l.marker
    ));
    if !l.also.is_empty() {
        let also: Vec<&str> = l.also.iter().map(|x| x.name()).collect();
        out.push_str(&format!("; also present: {}", also.join(", ")));
    }
    out.push_str(&format!("\nbuild      {}\n", l.tool));
    out.push_str("\nprocesses\n");
    match &ins.procfile {
        Some(p) => {
            let rows: Vec<Vec<String>> = p
                .processes
                .iter()
                .map(|p| {
                    vec![
                        format!("  {}", p.name),
                        p.command.clone(),
                        format!("(line {})", p.line),
                    ]
                })
                .collect();
            out.push_str(
                &output::table(&["", "", ""], &rows)
                    .lines()
                    .skip(1)
                    .map(|l| format!("{l}\n"))
                    .collect::<String>(),
            );
        }
        None => match &ins.web {
            Some(w) => out.push_str(&format!("  web  {}  ({})\n", w.command, w.source)),
            None => out.push_str("  (none)\n"),
        },
    }
    if let Some(app) = &ins.app_json {
        let mut parts = vec![];
        if !app.formation.is_empty() {
            let f: Vec<String> = app
                .formation
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}x{}",
                        v.quantity.unwrap_or(1),
                        v.size.as_deref().unwrap_or("default")
                    )
                })
                .collect();
            parts.push(format!("formation {}", f.join(" ")));
        }
        if !app.addons.is_empty() {
            let a: Vec<&str> = app.addons.iter().map(|a| a.plan()).collect();
            parts.push(format!("add-ons {}", a.join(", ")));
        }
        if !app.buildpacks.is_empty() {
            let b: Vec<&str> = app.buildpacks.iter().map(|b| b.url.as_str()).collect();
            parts.push(format!("buildpacks {}", b.join(", ")));
        }
        if !app.scripts.is_empty() {
            let s: Vec<String> = app
                .scripts
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            parts.push(format!("scripts {}", s.join("; ")));
        }
        if !app.env.is_empty() {
            let e: Vec<&str> = app.env.keys().map(String::as_str).collect();
            parts.push(format!("declared env {}", e.join(", ")));
        }
        out.push_str(&format!("\napp.json   {}\n", parts.join("\n           ")));
    }
    if let Some(env) = &ins.env {
        out.push_str(&render_env(env));
    }
    if !ins.findings.is_empty() {
        out.push_str(&format!(
            "\nHeroku-isms ({}): code that behaves differently off Heroku\n",
            ins.findings.len()
        ));
        for f in &ins.findings {
            out.push_str(&format!(
                "  {}:{}  {}: {}\n      fix: {}\n",
                f.file, f.line, f.rule, f.message, f.fix
            ));
        }
    }
    out.push_str(&render_notes("notes", &ins.notes));
    out
}

fn render_env(env: &EnvReport) -> String {
    let counts: Vec<String> = cutover_app::env::counts(env)
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    let mut out = format!(
        "\nconfig vars ({}): {}\n",
        env.vars.len(),
        counts.join(", ")
    );
    let rows: Vec<Vec<String>> = env
        .vars
        .iter()
        .map(|v| {
            vec![
                format!("  {}", v.name),
                v.class.name().to_string(),
                v.action.clone(),
                v.reason.clone(),
            ]
        })
        .collect();
    out.push_str(&output::table(
        &["  NAME", "CLASS", "ACTION", "REASON"],
        &rows,
    ));
    for v in env.vars.iter().filter(|v| !v.warnings.is_empty()) {
        for w in &v.warnings {
            out.push_str(&format!("  ! {}: {w}\n", v.name));
        }
    }
    if !env.buildpack.is_empty() {
        out.push_str("\nset explicitly on the target (the buildpack set these at runtime):\n");
        let rows: Vec<Vec<String>> = env
            .buildpack
            .iter()
            .map(|b| {
                let value = b
                    .value
                    .as_deref()
                    .map(|v| format!("={v}"))
                    .unwrap_or_else(|| " (generate)".into());
                vec![format!("  {}{value}", b.name), b.reason.clone()]
            })
            .collect();
        out.push_str(
            &output::table(&["", ""], &rows)
                .lines()
                .skip(1)
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        );
    }
    out
}

fn render_notes(title: &str, notes: &[String]) -> String {
    if notes.is_empty() {
        return String::new();
    }
    let mut out = format!("\n{title}:\n");
    for n in notes {
        out.push_str(&format!("  - {n}\n"));
    }
    out
}

/// Shows the files, then writes them unless `--dry-run`. Nothing is written when any
/// destination exists without `--force`.
pub(crate) fn write_files(
    g: &Global,
    out_dir: &Path,
    artifacts: &[Artifact],
    w: &AppWrite,
    notes: &[String],
    caveats: &[String],
) -> anyhow::Result<i32> {
    let planned = files::write(out_dir, artifacts, w.force, true)?;
    if g.json {
        if !w.dry_run {
            files::write(out_dir, artifacts, w.force, false)?;
        }
        let list: Vec<serde_json::Value> = planned
            .iter()
            .zip(artifacts)
            .map(|(p, a)| {
                let mut v = serde_json::to_value(p).unwrap_or_default();
                if w.dry_run {
                    v["preview"] = serde_json::Value::String(a.preview.clone());
                }
                v
            })
            .collect();
        output::json(&serde_json::json!({
            "dry_run": w.dry_run,
            "files": list,
            "notes": notes,
            "caveats": caveats,
        }))?;
        return Ok(0);
    }
    let head = if w.dry_run {
        "would write (dry run, nothing written):"
    } else {
        "writing:"
    };
    outln!("{head}");
    let rows: Vec<Vec<String>> = planned
        .iter()
        .map(|p| {
            let mut size = output::bytes(p.bytes as i64);
            if p.sensitive {
                size.push_str(", holds secrets: mode 0600");
            }
            vec![
                format!("  {}", p.action),
                p.path.display().to_string(),
                format!("({size})"),
            ]
        })
        .collect();
    out!(
        "{}",
        output::table(&["", "", ""], &rows)
            .lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    if w.dry_run {
        for (p, a) in planned.iter().zip(artifacts) {
            outln!(
                "\n--- {}{}",
                p.path.display(),
                if a.sensitive {
                    " (secret values masked)"
                } else {
                    ""
                }
            );
            out!("{}", a.preview);
        }
    } else {
        files::write(out_dir, artifacts, w.force, false)?;
    }
    out!("{}", render_notes("notes", notes));
    out!("{}", render_notes("caveats", caveats));
    Ok(0)
}

fn dockerize(g: &Global, a: AppDockerizeArgs) -> anyhow::Result<i32> {
    let ins = inspect_app(&a.dir, None, None)?;
    let out = a.out.clone().unwrap_or_else(|| a.dir.clone());
    if a.cnb {
        let (file, caveats) = cnb::render(&ins);
        return write_files(g, &out, &[file], &a.write, &[], &caveats);
    }
    let build = dockerfile::render(&ins)?;
    write_files(g, &out, &build.files, &a.write, &build.notes, &[])
}

fn env_export(g: &Global, a: AppEnvArgs) -> anyhow::Result<i32> {
    let Some(to) = a.to.as_deref() else {
        return Ok(usage(g, "pass --to secrets-manager|ssm|ecs|vercel|dotenv, or use `cutover app env diff SOURCE TARGET`"));
    };
    let target = match Target::parse(to) {
        Ok(t) => t,
        Err(e) => return Ok(usage(g, &format!("--to: {e}"))),
    };
    let Some(config) = a.config.as_deref() else {
        return Ok(usage(g, "pass --config heroku-config.json (made with `heroku config --json --app APP > heroku-config.json`)"));
    };
    let (name, env) = cutover_app::inspect::environment(&a.dir, config, a.addons.as_deref())?;
    output::hide_in_logs(env.secrets());
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(target.default_file()));
    let (dir, file) = split_out(&out);
    let e = export::export(
        &env,
        target,
        &export::Options {
            app: name,
            secret_arn: a.secret_arn.clone(),
            port: dockerfile::PORT,
            ..Default::default()
        },
        &file,
    );
    if !g.json {
        out!("{}", render_env(&env));
        outln!();
    }
    write_files(g, &dir, &[e.artifact], &a.write, &e.todo, &[])
}

/// `--out path/file` → (`path`, `file`).
fn split_out(out: &Path) -> (PathBuf, String) {
    let file = out
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| out.display().to_string());
    let dir = out.parent().map(Path::to_path_buf).unwrap_or_default();
    (dir, file)
}

fn env_diff(g: &Global, source: &Path, target: &Path) -> anyhow::Result<i32> {
    let a = cutover_app::config::read_env_set(source)?;
    let b = cutover_app::config::read_env_set(target)?;
    let d = diff::diff(&a, &b);
    let code = if d.changes.is_empty() { 0 } else { 1 };
    if g.json {
        output::json(&d)?;
        return Ok(code);
    }
    if d.changes.is_empty() {
        outln!("the same {} variables on both sides", d.same.len());
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = d
        .changes
        .iter()
        .map(|c| {
            let status = match c.status {
                diff::Status::OnlySource => "only in source",
                diff::Status::OnlyTarget => "only in target",
                diff::Status::Changed => "changed",
            };
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            vec![
                c.name.clone(),
                status.to_string(),
                show(&c.source),
                show(&c.target),
                c.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out!(
        "{}",
        output::table(&["NAME", "STATUS", "SOURCE", "TARGET", "NOTE"], &rows)
    );
    outln!(
        "\n{} differ, {} the same; secret values are shown as hashes",
        d.changes.len(),
        d.same.len()
    );
    Ok(code)
}

fn terraform(g: &Global, a: AppTerraformArgs) -> anyhow::Result<i32> {
    let ins = inspect_app(
        &a.source.dir,
        a.source.config.as_deref(),
        a.source.addons.as_deref(),
    )?;
    let (tf, notes) = terraform::render(
        &ins,
        &terraform::Options {
            domain: a.domain.clone(),
            health_path: a.health_path.clone(),
            region: a.region.clone(),
        },
    )?;
    let out = a.out.clone().unwrap_or_else(|| a.source.dir.join("infra"));
    write_files(g, &out, &tf, &a.write, &notes, &[])
}

/// Reads a URL from the named environment variable, so it never sits on a command line.
fn url_from_env(g: &Global, flag: &str, var: &Option<String>) -> Result<Option<Secret>, i32> {
    let Some(name) = var else { return Ok(None) };
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => {
            output::hide_in_logs([Secret::new(v.clone())]);
            Ok(Some(Secret::new(v)))
        }
        _ => Err(usage(
            g,
            &format!("{flag}: the environment variable {name} is not set; export it first"),
        )),
    }
}

fn vercel(g: &Global, a: AppVercelArgs) -> anyhow::Result<i32> {
    let pooled = match url_from_env(g, "--pooled-url-env", &a.pooled_url_env) {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    let direct = match url_from_env(g, "--direct-url-env", &a.direct_url_env) {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    let proxy = match url_from_env(g, "--proxy-url-env", &a.proxy_url_env) {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    let ins = inspect_app(
        &a.source.dir,
        a.source.config.as_deref(),
        a.source.addons.as_deref(),
    )?;
    let (files, notes) = vercel::render(
        &ins,
        &vercel::Options {
            pooled_url: pooled,
            direct_url: direct,
            proxy_url: proxy,
            after_move: a.after_move,
        },
    )?;
    let out = a.out.clone().unwrap_or_else(|| a.source.dir.clone());
    write_files(g, &out, &files, &a.write, &notes, &[])
}
