//! `cutover init`: writes a commented plan whose URLs are references to the environment.

use crate::cli::{Global, InitArgs};

/// The reference to write for a URL given on the command line: `${VAR}` when an environment
/// variable holds exactly this URL, the URL itself when it has no password.
fn reference(flag: &str, given: &str, preferred: &str) -> anyhow::Result<String> {
    if given.trim_start().starts_with("${") {
        return Ok(given.to_string());
    }
    let parsed =
        cutover_core::ConnString::parse(given).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))?;
    if std::env::var(preferred).is_ok_and(|v| v == given) {
        return Ok(format!("${{{preferred}}}"));
    }
    let mut matches: Vec<String> = std::env::vars()
        .filter(|(_, v)| v == given)
        .map(|(k, _)| k)
        .collect();
    matches.sort();
    if let Some(name) = matches.first() {
        return Ok(format!("${{{name}}}"));
    }
    if parsed.password().is_some() {
        anyhow::bail!(
            "--{flag} holds a password, and the plan keeps secrets out of the file; export it first \
             (export {preferred}='postgres://...') and pass --{flag} \"${preferred}\""
        );
    }
    Ok(given.to_string())
}

pub fn run(g: &Global, args: InitArgs) -> anyhow::Result<i32> {
    let source = reference("source-url", &args.source_url, "SOURCE_DATABASE_URL")?;
    let target = reference("target-url", &args.target_url, "TARGET_DATABASE_URL")?;
    if g.plan.exists() && !args.force {
        anyhow::bail!(
            "{} already exists; pass --force to overwrite it",
            g.plan.display()
        );
    }
    let text = cutover_core::plan::template(&source, &target);
    std::fs::write(&g.plan, text)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", g.plan.display()))?;
    if g.json {
        crate::output::json(
            &serde_json::json!({ "plan": g.plan, "source_url": source, "target_url": target }),
        )?;
    } else {
        outln!(
            "wrote {} (source.url = \"{source}\", target.url = \"{target}\")",
            g.plan.display()
        );
        outln!("next: cutover check");
    }
    Ok(0)
}
