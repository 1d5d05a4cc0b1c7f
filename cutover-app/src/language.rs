//! Which language Heroku would build the app as, and which version.
//!
//! Heroku tries its buildpacks in a fixed order (Ruby, Node.js, Python, Java, Gradle, PHP,
//! Go) and the first whose marker file exists wins, so a Rails app with a `package.json` for
//! its assets is a Ruby app; buildpacks listed in `app.json` override the order (the last one
//! is the app's language). The version comes from the same file the buildpack reads, in the
//! buildpack's own order, so the image runs what the dyno ran. A range we cannot pin without
//! asking a registry (`>=18`) falls back to the platform default, with a note saying so.

use std::path::Path;

use serde::Serialize;

use crate::appjson::AppJson;
use crate::AppError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Ruby,
    Node,
    Python,
    Java,
    Php,
    Go,
}

impl Language {
    pub fn name(self) -> &'static str {
        match self {
            Language::Ruby => "Ruby",
            Language::Node => "Node.js",
            Language::Python => "Python",
            Language::Java => "Java",
            Language::Php => "PHP",
            Language::Go => "Go",
        }
    }

    /// The Heroku (and Cloud Native) buildpack id.
    pub fn buildpack(self) -> &'static str {
        match self {
            Language::Ruby => "heroku/ruby",
            Language::Node => "heroku/nodejs",
            Language::Python => "heroku/python",
            Language::Java => "heroku/java",
            Language::Php => "heroku/php",
            Language::Go => "heroku/go",
        }
    }
}

/// Heroku's detection order, with each buildpack's marker files.
const ORDER: &[(Language, &[&str])] = &[
    (Language::Ruby, &["Gemfile"]),
    (Language::Node, &["package.json"]),
    (
        Language::Python,
        &[
            "requirements.txt",
            "setup.py",
            "Pipfile",
            "pyproject.toml",
            "poetry.lock",
            "uv.lock",
        ],
    ),
    (
        Language::Java,
        &["pom.xml", "build.gradle", "build.gradle.kts"],
    ),
    (Language::Php, &["composer.json", "index.php"]),
    (
        Language::Go,
        &["go.mod", "Gopkg.lock", "Godeps/Godeps.json"],
    ),
];

/// The pinned runtime version and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    /// As written in the source (`20.x`, `python-3.12.4`), when written at all.
    pub requested: Option<String>,
    /// What goes into the image tag (`20`, `3.12.4`).
    pub pinned: String,
    /// The file (and field) it came from, or "platform default".
    pub source: String,
}

/// What the build needs to know about the app's language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detected {
    pub language: Language,
    /// The file (or app.json buildpack) that decided it.
    pub marker: String,
    pub version: Version,
    /// Package manager or build tool: npm, yarn, pnpm, pip, pipenv, poetry, uv, bundler,
    /// maven, gradle, composer, go.
    pub tool: String,
    /// Other languages whose marker is present too (a Rails app's package.json).
    pub also: Vec<Language>,
    /// Facts the build cares about: `rails`, `django`, `next`, `build-script`, ...
    pub traits: Vec<String>,
    /// Go: the packages to install (`// +heroku install`), default `.`.
    pub go_install: Vec<String>,
    /// Go: the module's last path element, the name Heroku gives the binary.
    pub go_binary: Option<String>,
    /// Things we could not pin or saw, each with its fix.
    pub notes: Vec<String>,
}

fn exists(dir: &Path, name: &str) -> bool {
    dir.join(name).exists()
}

fn read_opt(dir: &Path, name: &str) -> Result<Option<String>, AppError> {
    let path = dir.join(name);
    if !path.is_file() {
        return Ok(None);
    }
    crate::error::read(&path).map(Some)
}

/// Detects the language and version of the app in `dir`.
pub fn detect(dir: &Path, app: Option<&AppJson>) -> Result<Detected, AppError> {
    let present: Vec<(Language, &str)> = ORDER
        .iter()
        .filter_map(|(lang, markers)| markers.iter().find(|m| exists(dir, m)).map(|m| (*lang, *m)))
        .collect();
    let from_app_json = app.and_then(|a| {
        a.buildpacks.iter().rev().find_map(|b| {
            ORDER
                .iter()
                .map(|(l, _)| *l)
                .find(|l| buildpack_matches(&b.url, *l))
                .map(|l| (l, format!("app.json buildpack {}", b.url)))
        })
    });
    let (language, marker) = match from_app_json {
        Some(found) => found,
        None => match present.first() {
            Some((l, m)) => (*l, m.to_string()),
            None => return Err(AppError::NoLanguage(dir.to_path_buf())),
        },
    };
    let also = present
        .iter()
        .map(|(l, _)| *l)
        .filter(|l| *l != language)
        .collect();
    let mut d = Detected {
        language,
        marker,
        version: Version {
            requested: None,
            pinned: String::new(),
            source: String::new(),
        },
        tool: String::new(),
        also,
        traits: vec![],
        go_install: vec![],
        go_binary: None,
        notes: vec![],
    };
    match language {
        Language::Node => node(dir, &mut d)?,
        Language::Python => python(dir, &mut d)?,
        Language::Ruby => ruby(dir, &mut d)?,
        Language::Go => go(dir, &mut d)?,
        Language::Java => java(dir, &mut d)?,
        Language::Php => php(dir, &mut d)?,
    }
    Ok(d)
}

fn buildpack_matches(url: &str, lang: Language) -> bool {
    let tail = match lang {
        Language::Ruby => "ruby",
        Language::Node => "nodejs",
        Language::Python => "python",
        Language::Java => "java",
        Language::Php => "php",
        Language::Go => "go",
    };
    url == lang.buildpack()
        || url
            .trim_end_matches(".git")
            .ends_with(&format!("heroku-buildpack-{tail}"))
}

fn default_version(d: &mut Detected, pinned: &str, fix: &str) {
    d.version = Version {
        requested: d.version.requested.take(),
        pinned: pinned.to_string(),
        source: "platform default".to_string(),
    };
    d.notes.push(format!(
        "no pinned {} version: using {pinned}, Heroku's current default; {fix}",
        d.language.name()
    ));
}

fn set_version(d: &mut Detected, requested: &str, pinned: &str, source: &str) {
    d.version = Version {
        requested: Some(requested.to_string()),
        pinned: pinned.to_string(),
        source: source.to_string(),
    };
}

/// `20.11.1` stays, `20.x`/`^20.1.0`/`20` → `20`, `~20.11.0` → `20.11`; anything wider → None.
pub fn pin_node(range: &str) -> Option<String> {
    let r = range.trim().trim_start_matches('v');
    let numeric = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if let Some(rest) = r.strip_prefix('^') {
        let major = rest.split('.').next()?;
        return numeric(major).then(|| major.to_string());
    }
    if let Some(rest) = r.strip_prefix('~') {
        let parts: Vec<&str> = rest.split('.').collect();
        return match parts.as_slice() {
            [major] if numeric(major) => Some(major.to_string()),
            [major, minor, ..] if numeric(major) && numeric(minor) => {
                Some(format!("{major}.{minor}"))
            }
            _ => None,
        };
    }
    let parts: Vec<&str> = r.split('.').collect();
    let wild = |s: &str| s == "x" || s == "*" || s == "X";
    match parts.as_slice() {
        [a] if numeric(a) => Some(a.to_string()),
        [a, b] if numeric(a) && wild(b) => Some(a.to_string()),
        [a, b] if numeric(a) && numeric(b) => Some(format!("{a}.{b}")),
        [a, b, c] if numeric(a) && wild(b) && wild(c) => Some(a.to_string()),
        [a, b, c] if numeric(a) && numeric(b) && wild(c) => Some(format!("{a}.{b}")),
        [a, b, c] if numeric(a) && numeric(b) && numeric(c) => Some(format!("{a}.{b}.{c}")),
        _ => None,
    }
}

fn node(dir: &Path, d: &mut Detected) -> Result<(), AppError> {
    let text = read_opt(dir, "package.json")?.unwrap_or_else(|| "{}".into());
    let pkg: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        crate::error::json_error(
            "package.json",
            &e,
            "a package.json object",
            "fix package.json (npm would refuse it too)",
        )
    })?;
    node_traits(&pkg, d);
    d.tool = if exists(dir, "pnpm-lock.yaml") {
        "pnpm"
    } else if exists(dir, "yarn.lock") {
        "yarn"
    } else {
        "npm"
    }
    .to_string();
    match pkg.pointer("/engines/node").and_then(|v| v.as_str()) {
        Some(range) => match pin_node(range) {
            Some(pinned) => set_version(d, range, &pinned, "package.json engines.node"),
            None => {
                d.version.requested = Some(range.to_string());
                default_version(
                    d,
                    "22",
                    &format!("engines.node is the range `{range}`: write a major version (\"22.x\") to pin it"),
                )
            }
        },
        None => default_version(d, "22", "set engines.node in package.json (e.g. \"22.x\")"),
    }
    Ok(())
}

/// Records dependencies and scripts the build steps depend on.
pub(crate) fn node_traits(pkg: &serde_json::Value, d: &mut Detected) {
    let has_dep = |name: &str| {
        ["dependencies", "devDependencies"]
            .iter()
            .any(|k| pkg.get(k).and_then(|m| m.get(name)).is_some())
    };
    for (dep, t) in [("next", "next"), ("express", "express")] {
        if has_dep(dep) {
            d.traits.push(t.to_string());
        }
    }
    for script in ["heroku-postbuild", "build", "start"] {
        if pkg.pointer(&format!("/scripts/{script}")).is_some() {
            d.traits.push(format!("script:{script}"));
        }
    }
}

fn first_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
}

fn python(dir: &Path, d: &mut Detected) -> Result<(), AppError> {
    d.tool = if exists(dir, "uv.lock") {
        "uv"
    } else if exists(dir, "poetry.lock") {
        "poetry"
    } else if exists(dir, "Pipfile") || exists(dir, "Pipfile.lock") {
        "pipenv"
    } else {
        "pip"
    }
    .to_string();
    if exists(dir, "manage.py") {
        d.traits.push("django".into());
    }
    if let Some(v) = read_opt(dir, ".python-version")?.and_then(|t| first_line(&t)) {
        set_version(d, &v, &v, ".python-version");
    } else if let Some(v) = read_opt(dir, "runtime.txt")?.and_then(|t| first_line(&t)) {
        let pinned = v.trim_start_matches("python-").to_string();
        set_version(d, &v, &pinned, "runtime.txt");
        d.notes.push(
            "runtime.txt is deprecated on Heroku and refused by the Cloud Native Python buildpack; \
             write the version into .python-version instead"
                .into(),
        );
    } else if let Some(text) = read_opt(dir, "Pipfile.lock")? {
        let lock: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            crate::error::json_error(
                "Pipfile.lock",
                &e,
                "a Pipfile.lock",
                "regenerate it with `pipenv lock`",
            )
        })?;
        let meta = |k: &str| {
            lock.pointer(&format!("/_meta/requires/{k}"))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        match meta("python_full_version").or_else(|| meta("python_version")) {
            Some(v) => set_version(d, &v, &v, "Pipfile.lock _meta.requires"),
            None => default_version(d, "3.13", "write the version into .python-version"),
        }
    } else {
        default_version(
            d,
            "3.13",
            "write the version into .python-version (e.g. 3.13)",
        );
    }
    if (d.tool == "uv" || d.tool == "poetry") && d.version.source != ".python-version" {
        d.notes.push(format!(
            "Heroku builds {} apps only with a .python-version file; add one",
            d.tool
        ));
    }
    Ok(())
}

fn ruby(dir: &Path, d: &mut Detected) -> Result<(), AppError> {
    d.tool = "bundler".into();
    let lock = read_opt(dir, "Gemfile.lock")?;
    if let Some(lock) = &lock {
        if lock.lines().any(|l| l.trim_start().starts_with("rails ")) {
            d.traits.push("rails".into());
        }
    } else {
        d.notes.push(
            "no Gemfile.lock: Heroku refuses to build without one; run `bundle lock` and commit it"
                .into(),
        );
    }
    if exists(dir, "package.json") {
        let text = read_opt(dir, "package.json")?.unwrap_or_default();
        if let Ok(pkg) = serde_json::from_str::<serde_json::Value>(&text) {
            node_traits(&pkg, d);
        }
    }
    let mut lines = lock.as_deref().unwrap_or_default().lines();
    let mut found = None;
    while let Some(l) = lines.next() {
        if l.trim() == "RUBY VERSION" {
            found = lines.next().map(|v| v.trim().to_string());
            break;
        }
    }
    match found {
        Some(v) => {
            let number = v.trim_start_matches("ruby ").to_string();
            let pinned = number.split('p').next().unwrap_or(&number).to_string();
            set_version(d, &v, &pinned, "Gemfile.lock RUBY VERSION");
        }
        None => default_version(
            d,
            "3.3",
            "add `ruby \"3.3.6\"` to the Gemfile and run `bundle update --ruby`",
        ),
    }
    Ok(())
}

fn go(dir: &Path, d: &mut Detected) -> Result<(), AppError> {
    d.tool = "go".into();
    let text = read_opt(dir, "go.mod")?.unwrap_or_default();
    let mut heroku_version = None;
    let mut go_directive = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("// +heroku goVersion ") {
            heroku_version = Some(rest.trim().to_string());
        } else if let Some(rest) = t.strip_prefix("// +heroku install ") {
            d.go_install = rest.split_whitespace().map(str::to_string).collect();
        } else if let Some(rest) = t.strip_prefix("module ") {
            let module = rest.trim().trim_matches('"');
            d.go_binary = module.rsplit('/').next().map(str::to_string);
        } else if let Some(rest) = t.strip_prefix("go ") {
            go_directive = Some(rest.trim().to_string());
        }
    }
    if d.go_install.is_empty() {
        d.go_install.push(".".into());
    }
    match (heroku_version, go_directive) {
        (Some(v), directive) => {
            let pinned = v.trim_start_matches("go").to_string();
            set_version(d, &v, &pinned, "go.mod // +heroku goVersion");
            if let Some(g) = directive {
                if g != pinned {
                    d.traits.push(format!("go-directive:{g}"));
                }
            }
        }
        (None, Some(g)) => set_version(d, &g, &g, "go.mod go directive"),
        (None, None) => default_version(d, "1.23", "add a `go 1.23` line to go.mod"),
    }
    Ok(())
}

fn java(dir: &Path, d: &mut Detected) -> Result<(), AppError> {
    d.tool = if exists(dir, "pom.xml") {
        "maven"
    } else {
        "gradle"
    }
    .to_string();
    let props = read_opt(dir, "system.properties")?.unwrap_or_default();
    let v = props.lines().find_map(|l| {
        l.trim()
            .strip_prefix("java.runtime.version")
            .map(|r| r.trim_start().trim_start_matches('=').trim().to_string())
    });
    match v {
        Some(v) => {
            let pinned = v.strip_prefix("1.").unwrap_or(&v);
            let pinned = pinned.split('.').next().unwrap_or(pinned).to_string();
            set_version(d, &v, &pinned, "system.properties java.runtime.version");
        }
        None => default_version(
            d,
            "21",
            "add `java.runtime.version=21` to system.properties",
        ),
    }
    Ok(())
}

fn php(dir: &Path, d: &mut Detected) -> Result<(), AppError> {
    d.tool = "composer".into();
    let text = read_opt(dir, "composer.json")?.unwrap_or_else(|| "{}".into());
    let composer: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        crate::error::json_error(
            "composer.json",
            &e,
            "a composer.json object",
            "fix composer.json (`composer validate` says where)",
        )
    })?;
    let req = composer.pointer("/require/php").and_then(|v| v.as_str());
    let pinned = req.and_then(|r| {
        let r = r.trim().trim_start_matches(['^', '~', '=']);
        let parts: Vec<&str> = r.split('.').collect();
        match parts.as_slice() {
            [a, b, ..]
                if a.chars().all(|c| c.is_ascii_digit())
                    && b.chars().all(|c| c.is_ascii_digit()) =>
            {
                Some(format!("{a}.{b}"))
            }
            _ => None,
        }
    });
    match (req, pinned) {
        (Some(r), Some(p)) => set_version(d, r, &p, "composer.json require.php"),
        (Some(r), None) => {
            d.version.requested = Some(r.to_string());
            default_version(
                d,
                "8.3",
                &format!("require.php is `{r}`: write `^8.3` to pin a minor version"),
            )
        }
        _ => default_version(
            d,
            "8.3",
            "add `\"php\": \"^8.3\"` to require in composer.json",
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ranges_pin_like_the_buildpack_would() {
        assert_eq!(pin_node("20.11.1").as_deref(), Some("20.11.1"));
        assert_eq!(pin_node("20.x").as_deref(), Some("20"));
        assert_eq!(pin_node("^18.17.0").as_deref(), Some("18"));
        assert_eq!(pin_node("~18.17.0").as_deref(), Some("18.17"));
        assert_eq!(pin_node("18.17.x").as_deref(), Some("18.17"));
        assert_eq!(pin_node(">=18"), None);
        assert_eq!(pin_node("18 || 20"), None);
    }

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    #[test]
    fn rails_with_package_json_is_ruby() {
        let dir = tree(&[
            ("Gemfile", "source 'https://rubygems.org'\n"),
            (
                "Gemfile.lock",
                "GEM\n  specs:\n    rails (7.1.3)\n\nRUBY VERSION\n   ruby 3.2.2p53\n",
            ),
            ("package.json", "{\"engines\": {\"node\": \"20.x\"}}"),
        ]);
        let d = detect(dir.path(), None).unwrap();
        assert_eq!(d.language, Language::Ruby);
        assert_eq!(d.version.pinned, "3.2.2");
        assert_eq!(d.also, [Language::Node]);
    }

    #[test]
    fn app_json_buildpacks_override_the_order() {
        let dir = tree(&[("Gemfile", ""), ("package.json", "{}")]);
        let app: AppJson = serde_json::from_str(
            r#"{"buildpacks": [{"url": "heroku/ruby"}, {"url": "heroku/nodejs"}]}"#,
        )
        .unwrap();
        let d = detect(dir.path(), Some(&app)).unwrap();
        assert_eq!(d.language, Language::Node);
        assert_eq!(d.marker, "app.json buildpack heroku/nodejs");
    }

    #[test]
    fn python_version_files_in_buildpack_order() {
        let dir = tree(&[
            ("requirements.txt", "django\n"),
            (".python-version", "3.12\n"),
            ("runtime.txt", "python-3.11.9\n"),
        ]);
        let d = detect(dir.path(), None).unwrap();
        assert_eq!(
            (d.version.pinned.as_str(), d.version.source.as_str()),
            ("3.12", ".python-version")
        );
        let dir = tree(&[("requirements.txt", ""), ("runtime.txt", "python-3.11.9\n")]);
        let d = detect(dir.path(), None).unwrap();
        assert_eq!(d.version.pinned, "3.11.9");
        let dir = tree(&[
            ("Pipfile", ""),
            (
                "Pipfile.lock",
                r#"{"_meta": {"requires": {"python_version": "3.10"}}}"#,
            ),
        ]);
        let d = detect(dir.path(), None).unwrap();
        assert_eq!(
            (d.version.pinned.as_str(), d.tool.as_str()),
            ("3.10", "pipenv")
        );
        let dir = tree(&[("pyproject.toml", ""), ("uv.lock", "")]);
        let d = detect(dir.path(), None).unwrap();
        assert_eq!(
            (d.version.source.as_str(), d.tool.as_str()),
            ("platform default", "uv")
        );
        assert!(d.notes.iter().any(|n| n.contains(".python-version")));
    }

    #[test]
    fn go_heroku_directive_wins_over_go_line() {
        let dir = tree(&[(
            "go.mod",
            "// +heroku goVersion go1.22\n// +heroku install ./cmd/...\nmodule github.com/acme/hello\n\ngo 1.21\n",
        )]);
        let d = detect(dir.path(), None).unwrap();
        assert_eq!(d.version.pinned, "1.22");
        assert_eq!(d.go_install, ["./cmd/..."]);
        assert_eq!(d.go_binary.as_deref(), Some("hello"));
    }

    #[test]
    fn java_and_php_versions() {
        let dir = tree(&[
            ("pom.xml", "<project/>"),
            ("system.properties", "java.runtime.version=17\n"),
        ]);
        let d = detect(dir.path(), None).unwrap();
        assert_eq!(
            (d.language, d.version.pinned.as_str(), d.tool.as_str()),
            (Language::Java, "17", "maven")
        );
        let dir = tree(&[("composer.json", r#"{"require": {"php": "^8.2"}}"#)]);
        let d = detect(dir.path(), None).unwrap();
        assert_eq!(
            (d.language, d.version.pinned.as_str()),
            (Language::Php, "8.2")
        );
    }

    #[test]
    fn nothing_to_build_is_an_error() {
        let dir = tree(&[("README.md", "hi")]);
        let e = detect(dir.path(), None).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("no language Heroku would build found in "));
    }
}
