//! A Dockerfile that runs the app the way its Heroku slug ran.
//!
//! Choices, each for fidelity with the dyno:
//! - the base image pins the version the buildpack would have used (from [`crate::language`]);
//! - the whole source tree is copied into `/app` and stays in the runtime image, as in a slug:
//!   apps read templates, migrations and data files from their tree at runtime;
//! - dependencies install the way the buildpack installs them (dev dependencies for the build,
//!   pruned after; `collectstatic`, `assets:precompile`, `go install` into `bin/`);
//! - the web process runs through `sh -c` as the Procfile's does on a dyno, so `$PORT` and
//!   other variables expand at start; `PORT` defaults to 8080, the container port the ECS
//!   task maps;
//! - the release phase is not baked into the start command: it is a separate command run
//!   once per deploy (the ECS Terraform has a task definition for it), because running
//!   migrations in every web container races when several start at once.

use crate::files::Artifact;
use crate::inspect::Inspection;
use crate::language::{pin_node, Language};
use crate::AppError;

/// The container port the web process listens on.
pub const PORT: u16 = 8080;

/// The generated files and what the user should know about them.
#[derive(Debug, Clone)]
pub struct Build {
    pub files: Vec<Artifact>,
    pub notes: Vec<String>,
}

fn exists(ins: &Inspection, name: &str) -> bool {
    ins.dir.join(name).exists()
}

/// `exec`s simple commands so the process gets signals directly; leaves compound ones alone.
pub fn shell_command(command: &str) -> String {
    let compound = ["&&", "||", ";", "|", "\n"]
        .iter()
        .any(|s| command.contains(s));
    if compound || command.starts_with("exec ") {
        command.to_string()
    } else {
        format!("exec {command}")
    }
}

/// `["/bin/sh", "-c", "exec <command>"]` as Dockerfile exec-form JSON.
pub fn sh_json(command: &str) -> String {
    let parts = [
        "/bin/sh".to_string(),
        "-c".to_string(),
        shell_command(command),
    ];
    serde_json::to_string(&parts).expect("strings serialize")
}

/// A PHP Procfile runs Heroku's own boot scripts, which do not exist in an image: the web
/// command becomes Apache on `$PORT` with the same document root.
fn php_web(command: &str) -> (String, Option<String>) {
    let mut words = command.split_whitespace();
    let first = words.next().unwrap_or_default();
    if !first.contains("heroku-php-") {
        return (command.to_string(), None);
    }
    let root = words
        .find(|w| !w.starts_with('-'))
        .map(|w| format!("/app/{}", w.trim_end_matches('/')))
        .unwrap_or_else(|| "/app".to_string());
    let cmd = format!(
        "sed -i \"s/Listen 80/Listen ${{PORT}}/\" /etc/apache2/ports.conf && sed -i \"s#/var/www/html#{root}#\" /etc/apache2/sites-available/000-default.conf && exec apache2-foreground"
    );
    (
        cmd,
        Some(format!(
            "the Procfile runs Heroku's `{first}` boot script, which exists only on Heroku: the image runs Apache on $PORT with document root {root} instead"
        )),
    )
}

fn apt(packages: &[&str]) -> String {
    format!(
        "RUN apt-get update \\\n && apt-get install -y --no-install-recommends {} \\\n && rm -rf /var/lib/apt/lists/*\n",
        packages.join(" ")
    )
}

/// Renders the Dockerfile and .dockerignore for an inspected app.
pub fn render(ins: &Inspection) -> Result<Build, AppError> {
    let web = ins.require_web()?;
    let lang = &ins.language;
    let v = &lang.version.pinned;
    let mut notes = vec![];
    let mut web_command = web.command.clone();
    let mut d = String::new();
    d.push_str("# syntax=docker/dockerfile:1\n");
    d.push_str(&format!(
        "# {} {} ({}), built like its Heroku slug: the whole source tree stays in /app.\n",
        lang.language.name(),
        v,
        lang.version.source
    ));
    match lang.language {
        Language::Node => node(ins, v, &mut d),
        Language::Python => python(ins, v, &mut d),
        Language::Ruby => ruby(ins, v, &mut d, &mut notes)?,
        Language::Go => go(ins, v, &mut d),
        Language::Java => java(ins, v, &mut d),
        Language::Php => {
            php(ins, v, &mut d);
            let (cmd, note) = php_web(&web_command);
            web_command = cmd;
            notes.extend(note);
        }
    }
    d.push_str(&format!("\nENV PORT={PORT}\nEXPOSE {PORT}\n"));
    if let Some(release) = ins.release() {
        d.push_str(&format!(
            "\n# Release phase: run once per deploy, before new web containers start, never in them:\n#   docker run --rm IMAGE /bin/sh -c {}\n",
            shell_quote(release)
        ));
        notes.push(format!(
            "release phase `{release}` is a separate command: run it once per deploy before the new web tasks start (the Terraform has a `release` task definition)"
        ));
    }
    d.push_str(&format!(
        "\n# web ({}): {}\nCMD {}\n",
        web.source,
        web.command,
        sh_json(&web_command)
    ));
    if !web_command.contains("PORT") && lang.language != Language::Php {
        let reads_port = ["gunicorn", "puma", "rails server", "npm start", "node "]
            .iter()
            .any(|w| web_command.contains(w));
        if !reads_port {
            notes.push(format!(
                "the web command does not mention $PORT: make sure it listens on the PORT variable ({PORT} in the image)"
            ));
        }
    }
    for p in ins.workers() {
        notes.push(format!(
            "process `{}` runs from the same image with the command {}",
            p.name,
            sh_json(&p.command)
        ));
    }
    Ok(Build {
        files: vec![
            Artifact::plain("Dockerfile", d),
            Artifact::plain(".dockerignore", dockerignore(ins)),
        ],
        notes,
    })
}

/// Single-quotes for a shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn copy_present(ins: &Inspection, names: &[&str]) -> Option<String> {
    let present: Vec<&str> = names.iter().copied().filter(|n| exists(ins, n)).collect();
    (!present.is_empty()).then(|| format!("COPY {} ./\n", present.join(" ")))
}

fn node(ins: &Inspection, v: &str, d: &mut String) {
    let t = &ins.language.traits;
    d.push_str(&format!("FROM node:{v}-bookworm-slim\n\nWORKDIR /app\n"));
    d.push_str("\n# dependencies first (dev ones too, for the build), so a code change does not reinstall them\n");
    let (install, run, prune) = match ins.language.tool.as_str() {
        "pnpm" => (
            "corepack enable && pnpm install --frozen-lockfile --prod=false",
            "pnpm run",
            "pnpm prune --prod",
        ),
        "yarn" => (
            "corepack enable && yarn install --frozen-lockfile --production=false",
            "yarn run",
            "yarn install --frozen-lockfile --production=true --ignore-scripts --prefer-offline",
        ),
        _ if exists(ins, "package-lock.json") => {
            ("npm ci --include=dev", "npm run", "npm prune --omit=dev")
        }
        _ => (
            "npm install --include=dev",
            "npm run",
            "npm prune --omit=dev",
        ),
    };
    if let Some(c) = copy_present(
        ins,
        &[
            "package.json",
            "package-lock.json",
            "yarn.lock",
            "pnpm-lock.yaml",
        ],
    ) {
        d.push_str(&c);
    }
    d.push_str(&format!("RUN {install}\n\nCOPY . .\n"));
    let build = if t.iter().any(|x| x == "script:heroku-postbuild") {
        Some("heroku-postbuild")
    } else if t.iter().any(|x| x == "script:build") {
        Some("build")
    } else {
        None
    };
    if let Some(script) = build {
        d.push_str(&format!("RUN {run} {script}\n"));
    }
    d.push_str(&format!("RUN {prune}\nENV NODE_ENV=production\n"));
}

fn python(ins: &Inspection, v: &str, d: &mut String) {
    d.push_str(&format!("FROM python:{v}-slim-bookworm\n\n"));
    d.push_str("# compilers and libpq, as on the Heroku stack, for packages built from source (psycopg2)\n");
    d.push_str(&apt(&["build-essential", "libpq-dev"]));
    d.push_str("\nWORKDIR /app\nENV PYTHONUNBUFFERED=1 \\\n    PIP_NO_CACHE_DIR=1 \\\n    PIP_DISABLE_PIP_VERSION_CHECK=1\n\n");
    match ins.language.tool.as_str() {
        "uv" => {
            d.push_str("COPY pyproject.toml uv.lock ./\nRUN pip install uv && uv sync --locked --no-dev --no-install-project\nENV PATH=/app/.venv/bin:$PATH\n");
        }
        "poetry" => {
            d.push_str("COPY pyproject.toml poetry.lock ./\nRUN pip install poetry \\\n && poetry config virtualenvs.create false \\\n && poetry install --only main --no-root\n");
        }
        "pipenv" => {
            let files = copy_present(ins, &["Pipfile", "Pipfile.lock"]).unwrap_or_default();
            d.push_str(&files);
            d.push_str("RUN pip install pipenv && pipenv install --deploy --system\n");
        }
        _ => {
            if exists(ins, "requirements.txt") {
                d.push_str("COPY requirements.txt ./\nRUN pip install -r requirements.txt\n");
            }
        }
    }
    d.push_str("\nCOPY . .\n");
    if ins.language.traits.iter().any(|t| t == "django") {
        d.push_str("# Heroku runs collectstatic during the build of a Django app\nRUN python manage.py collectstatic --noinput\n");
    }
}

fn ruby(
    ins: &Inspection,
    v: &str,
    d: &mut String,
    notes: &mut Vec<String>,
) -> Result<(), AppError> {
    let rails = ins.language.traits.iter().any(|t| t == "rails");
    let node_version = if exists(ins, "package.json") {
        let text = crate::error::read(&ins.dir.join("package.json"))?;
        let pkg: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let range = pkg.pointer("/engines/node").and_then(|v| v.as_str());
        Some(match range.and_then(pin_node) {
            Some(p) => p,
            None => {
                notes.push("package.json has no pinnable engines.node: the image uses Node.js 22 for the asset build".into());
                "22".to_string()
            }
        })
    } else {
        None
    };
    d.push_str(&format!("FROM ruby:{v}-slim-bookworm\n\n"));
    d.push_str("# compilers and libraries for native gems, as on the Heroku stack\n");
    d.push_str(&apt(&[
        "build-essential",
        "git",
        "libpq-dev",
        "libyaml-dev",
        "pkg-config",
    ]));
    if let Some(nv) = &node_version {
        d.push_str(&format!(
            "\n# package.json: Node.js {nv} for the asset build, as the Ruby buildpack installs it\nCOPY --from=node:{nv}-bookworm-slim /usr/local/bin/node /usr/local/bin/node\nCOPY --from=node:{nv}-bookworm-slim /usr/local/lib/node_modules /usr/local/lib/node_modules\nRUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\\n && ln -s ../lib/node_modules/corepack/dist/corepack.js /usr/local/bin/corepack\n"
        ));
    }
    d.push_str("\nWORKDIR /app\nENV RACK_ENV=production \\\n");
    if rails {
        d.push_str("    RAILS_ENV=production \\\n    RAILS_LOG_TO_STDOUT=enabled \\\n    RAILS_SERVE_STATIC_FILES=enabled \\\n");
    }
    d.push_str("    BUNDLE_DEPLOYMENT=1 \\\n    BUNDLE_WITHOUT=development:test \\\n    MALLOC_ARENA_MAX=2\n\n");
    d.push_str(&copy_present(ins, &["Gemfile", "Gemfile.lock"]).unwrap_or_default());
    d.push_str("RUN bundle install\n");
    if node_version.is_some() {
        let install = if exists(ins, "yarn.lock") {
            "corepack enable && yarn install --frozen-lockfile"
        } else if exists(ins, "package-lock.json") {
            "npm ci"
        } else {
            "npm install"
        };
        d.push_str(
            &copy_present(ins, &["package.json", "package-lock.json", "yarn.lock"])
                .unwrap_or_default(),
        );
        d.push_str(&format!("RUN {install}\n"));
    }
    d.push_str("\nCOPY . .\n");
    if rails {
        d.push_str("# Heroku runs assets:precompile during the build; the dummy key lets Rails boot without secrets\nRUN SECRET_KEY_BASE_DUMMY=1 bundle exec rails assets:precompile\n");
    }
    Ok(())
}

fn go(ins: &Inspection, v: &str, d: &mut String) {
    d.push_str(&format!(
        "FROM golang:{v}-bookworm AS build\n\nWORKDIR /app\n"
    ));
    d.push_str(&copy_present(ins, &["go.mod", "go.sum"]).unwrap_or_default());
    d.push_str("RUN go mod download\n\nCOPY . .\n");
    d.push_str(&format!(
        "# as the Go buildpack does: install the main packages into bin/\nRUN CGO_ENABLED=0 GOBIN=/app/bin go install -tags heroku {}\n",
        ins.language.go_install.join(" ")
    ));
    d.push_str("\nFROM debian:bookworm-slim\n");
    d.push_str(&apt(&["ca-certificates"]));
    d.push_str("\nWORKDIR /app\n# the whole tree, sources and bin/, as in the slug\nCOPY --from=build /app /app\n");
}

fn java(ins: &Inspection, v: &str, d: &mut String) {
    let maven = ins.language.tool == "maven";
    let (image, cmd) = match (maven, exists(ins, "mvnw"), exists(ins, "gradlew")) {
        (true, true, _) => (
            format!("eclipse-temurin:{v}-jdk"),
            "./mvnw -B -DskipTests clean install",
        ),
        (true, false, _) => (
            format!("maven:3-eclipse-temurin-{v}"),
            "mvn -B -DskipTests clean install",
        ),
        (false, _, true) => (
            format!("eclipse-temurin:{v}-jdk"),
            "./gradlew build -x check",
        ),
        (false, _, false) => (format!("gradle:jdk{v}"), "gradle build -x check"),
    };
    d.push_str(&format!(
        "FROM {image} AS build\n\nWORKDIR /app\nCOPY . .\nRUN {cmd}\n\nFROM eclipse-temurin:{v}-jre\n\nWORKDIR /app\n# the whole tree with the build output, as in the slug\nCOPY --from=build /app /app\nENV JAVA_TOOL_OPTIONS=-XX:MaxRAMPercentage=80.0\n"
    ));
}

fn php(ins: &Inspection, v: &str, d: &mut String) {
    d.push_str(&format!(
        "FROM composer:2 AS composer\n\nFROM php:{v}-apache\n\n"
    ));
    d.push_str(&apt(&["git", "unzip", "libpq-dev"]));
    d.push_str("RUN docker-php-ext-install pdo_pgsql\nCOPY --from=composer /usr/bin/composer /usr/bin/composer\n\nWORKDIR /app\n");
    d.push_str(&copy_present(ins, &["composer.json", "composer.lock"]).unwrap_or_default());
    d.push_str("RUN composer install --no-dev --no-scripts --no-autoloader\n\nCOPY . .\nRUN composer dump-autoload --optimize\n");
}

/// What stays out of the build context: VCS data, local dependency folders the image
/// reinstalls, build output it rebuilds, exported config (which holds secrets), and
/// whatever `.slugignore` kept out of the slug.
fn dockerignore(ins: &Inspection) -> String {
    let mut lines: Vec<&str> = vec![
        "# version control and local files",
        ".git",
        "*.log",
        "tmp/",
        "log/",
        "",
        "# exported config and environment files: they hold secrets",
        ".env",
        ".env.*",
        "heroku-config.json",
        "addons.json",
        "secrets-manager.json",
        "ssm-parameters.json",
        "vercel-env.json",
        "",
        "# reinstalled or rebuilt in the image",
    ];
    let per_language: &[&str] = match ins.language.language {
        Language::Node => &["node_modules/"],
        Language::Python => &[".venv/", "venv/", "__pycache__/", "*.pyc", "staticfiles/"],
        Language::Ruby => &[
            ".bundle/",
            "vendor/bundle/",
            "node_modules/",
            "public/assets/",
        ],
        Language::Go => &["bin/"],
        Language::Java => &["target/", "build/", ".gradle/"],
        Language::Php => &["vendor/"],
    };
    lines.extend(per_language);
    let mut out = lines.join("\n");
    out.push('\n');
    if !ins.slugignore.is_empty() {
        out.push_str("\n# from .slugignore: Heroku left these out of the slug\n");
        for p in &ins.slugignore {
            out.push_str(p);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_run_through_sh_with_exec() {
        assert_eq!(
            sh_json("node server.js"),
            r#"["/bin/sh","-c","exec node server.js"]"#
        );
        assert_eq!(
            sh_json("bin/setup && bin/web --port $PORT"),
            r#"["/bin/sh","-c","bin/setup && bin/web --port $PORT"]"#
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn php_boot_scripts_become_apache_on_port() {
        let (cmd, note) = php_web("vendor/bin/heroku-php-apache2 public/");
        assert!(cmd.contains("Listen ${PORT}") && cmd.contains("/app/public"));
        assert!(note.unwrap().contains("heroku-php-apache2"));
        assert_eq!(php_web("php -S 0.0.0.0:$PORT").0, "php -S 0.0.0.0:$PORT");
    }
}
