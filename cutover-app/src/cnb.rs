//! A Cloud Native Buildpacks `project.toml` for `heroku/builder`, the alternative to a
//! Dockerfile: Heroku's own buildpacks, rebuilt for OCI images, so the build is closest to
//! what ran on Heroku. They are not identical to the classic buildpacks, and the differences
//! break builds in ways that are hard to read from the error, so each one that applies to
//! this app is printed as a caveat.

use crate::files::Artifact;
use crate::inspect::Inspection;
use crate::language::Language;

/// The builder image: Heroku-24, the current stack.
pub const BUILDER: &str = "heroku/builder:24";

/// The project.toml and the caveats for this app.
pub fn render(ins: &Inspection) -> (Artifact, Vec<String>) {
    let lang = &ins.language;
    let mut caveats = vec![];
    // Rails with a package.json needs Node.js for its assets, before Ruby
    let mut group: Vec<&str> = vec![];
    if lang.language == Language::Ruby && lang.also.contains(&Language::Node) {
        group.push(Language::Node.buildpack());
    }
    group.push(lang.language.buildpack());
    if ins.procfile.is_some() {
        group.push("heroku/procfile");
    }
    let mut t = String::new();
    t.push_str("# Build with: pack build IMAGE --path .\n");
    t.push_str(&format!(
        "[_]\nschema-version = \"0.2\"\nid = \"{}\"\nname = \"{}\"\n\n",
        ins.name, ins.name
    ));
    t.push_str(&format!("[io.buildpacks]\nbuilder = \"{BUILDER}\"\n"));
    for id in &group {
        t.push_str(&format!("\n[[io.buildpacks.group]]\nid = \"{id}\"\n"));
    }
    match lang.language {
        Language::Python => {
            if ins.dir.join("runtime.txt").is_file() {
                caveats.push(format!(
                    "the CNB Python buildpack refuses runtime.txt: move the version into .python-version (echo {} > .python-version) and delete runtime.txt",
                    lang.version.pinned
                ));
            }
            if lang.tool == "pipenv" {
                caveats.push("the CNB Python buildpack does not install from Pipfile: export requirements.txt (pipenv requirements > requirements.txt) or move to uv or Poetry".into());
            }
            if lang.traits.iter().any(|t| t == "django") {
                caveats.push("collectstatic runs during the CNB build as on Heroku, but without config vars: settings must import without them".into());
            }
        }
        Language::Go => {
            if let Some(d) = lang
                .traits
                .iter()
                .find_map(|t| t.strip_prefix("go-directive:"))
            {
                caveats.push(format!(
                    "the CNB Go buildpack takes the version from go.mod's `go` line ({d}), not from `// +heroku goVersion` ({}): make them agree",
                    lang.version.pinned
                ));
            }
        }
        Language::Ruby => {
            if !ins.dir.join("Gemfile.lock").is_file() {
                caveats.push(
                    "the CNB Ruby buildpack needs Gemfile.lock: run `bundle lock` and commit it"
                        .into(),
                );
            }
        }
        Language::Node => {
            if lang.version.source == "platform default" {
                caveats.push("engines.node is not pinned: the CNB Node.js buildpack picks its own default, which may differ from the dyno's".into());
            }
        }
        Language::Java | Language::Php => {}
    }
    if let Some(release) = ins.release() {
        caveats.push(format!(
            "CNB images have no release phase: run `{release}` once per deploy with `docker run --rm --entrypoint release IMAGE`"
        ));
    }
    if ins
        .app_json
        .as_ref()
        .is_some_and(|a| !a.buildpacks.is_empty())
    {
        caveats.push("app.json lists classic buildpacks: the CNB build uses the group in project.toml instead; third-party classic buildpacks do not run".into());
    }
    caveats.push("variables the classic buildpack set at runtime (WEB_CONCURRENCY and friends) are set differently or not at all: set them explicitly (see `cutover app env`)".into());
    (Artifact::plain("project.toml", t), caveats)
}
