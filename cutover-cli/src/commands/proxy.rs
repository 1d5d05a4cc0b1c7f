//! `cutover proxy`: runs the PG proxy until SIGINT or SIGTERM, then leaves as a load balancer
//! expects (see `Running::shutdown`). `cutover proxy status`: the fleet. `cutover proxy
//! terraform`: where the fleet runs.

use serde::Serialize;

use crate::cli::{Global, ProxyArgs, ProxyCommand, ProxyTerraformArgs};
use crate::output;

pub async fn run(g: &Global, args: ProxyArgs) -> anyhow::Result<i32> {
    match args.command {
        Some(ProxyCommand::Status) => status(g).await,
        Some(ProxyCommand::Terraform(a)) => terraform(g, a),
        None => serve(g, args).await,
    }
}

/// The port `cutover proxy terraform` serves /ready on when the plan names none.
const DEFAULT_HEALTH_PORT: u16 = 9187;

fn terraform(g: &Global, a: ProxyTerraformArgs) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    let proxy = plan.proxy().map_err(anyhow::Error::msg)?;
    let text = std::fs::read_to_string(&g.plan)?;
    let name = a.name.clone().unwrap_or_else(|| {
        plan.target
            .url
            .dbname
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect()
    });
    let infra = cutover_app::proxy_infra::ProxyInfra {
        name,
        region: a.region.clone(),
        tasks: a.tasks,
        listen_port: proxy.listen.port(),
        health_port: proxy
            .health_listen
            .map_or(DEFAULT_HEALTH_PORT, |h| h.port()),
        shutdown_timeout_s: proxy.shutdown_timeout.as_secs(),
        secret_vars: cutover_app::proxy_infra::referenced_vars(&text),
        plan_text: text,
        tls: proxy
            .tls_cert
            .clone()
            .zip(proxy.tls_key.clone())
            .map(|(c, k)| (relative(&g.plan, c), relative(&g.plan, k))),
        user: proxy.users.first().map(|u| u.name.clone()),
        dbname: plan.target.url.dbname.clone(),
    };
    let (files, notes) = cutover_app::proxy_infra::render(&infra);
    super::app::write_files(g, &a.out, &files, &a.write, &notes, &[])
}

/// A path the plan names, relative to the plan's folder when it is inside it (the image
/// holds the plan's folder as /etc/cutover).
fn relative(plan: &std::path::Path, p: std::path::PathBuf) -> std::path::PathBuf {
    let dir = plan.parent().unwrap_or(std::path::Path::new(""));
    p.strip_prefix(dir).map(|r| r.to_path_buf()).unwrap_or(p)
}

async fn serve(g: &Global, args: ProxyArgs) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    let drain = plan.proxy().map_err(anyhow::Error::msg)?.shutdown_timeout;
    let mut config = cutover_proxy::Config::from_plan(&plan).map_err(anyhow::Error::msg)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(a) = args.admin_listen {
        config.admin_listen = a;
    }
    if let Some(h) = args.health_listen {
        config.health_listen = Some(h);
    }
    if let Some(s) = args.state {
        config.state_path = s;
    }
    let running = cutover_proxy::start(config)
        .await
        .map_err(anyhow::Error::msg)?;
    let gate = running.shared.gate();
    if g.json {
        output::json(&serde_json::json!({
            "listen": running.addr,
            "admin": running.admin_addr,
            "health": running.health_addr,
            "member": running.member,
            "active": gate.active,
            "epoch": gate.epoch,
        }))?;
    } else {
        let health = match running.health_addr {
            Some(a) => format!(", /ready and /metrics on {a}"),
            None => String::new(),
        };
        let fleet = match (&running.member, plan.proxy_control()) {
            (Some(id), Some(url)) => format!("; in the fleet of {} as {id}", url.location()),
            _ => String::new(),
        };
        outln!(
            "proxy listening on {} (admin API on {}{health}), sending sessions to the {}{fleet}",
            running.addr,
            running.admin_addr,
            gate.active
        );
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let sessions = running.shared.session_count();
    eprintln!(
        "stopping: not ready, no new sessions; {sessions} sessions end at their next transaction boundary (at most {})",
        humantime::format_duration(drain)
    );
    let done = running.shutdown(drain).await;
    if g.json {
        output::json(&serde_json::json!({ "shutdown": done }))?;
    } else {
        eprintln!(
            "stopped: {} sessions closed at a transaction boundary, {} cut inside a transaction",
            done.closed, done.cut
        );
    }
    Ok(0)
}

#[derive(Serialize)]
struct FleetView {
    control: Option<String>,
    active: cutover_proxy::Backend,
    epoch: u64,
    paused: bool,
    generation: Option<i64>,
    proxies: Vec<ProxyView>,
}

#[derive(Serialize)]
struct ProxyView {
    id: String,
    address: String,
    version: String,
    epoch: Option<u64>,
    backend: Option<cutover_proxy::Backend>,
    sessions: Option<usize>,
    paused: Option<bool>,
    /// Seconds since its last heartbeat (None for a proxy without a fleet).
    heartbeat_age_s: Option<f64>,
    live: bool,
}

async fn status(g: &Global) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    let proxies = cutover_proxy::Proxies::from_plan(&plan).map_err(anyhow::Error::msg)?;
    let view = match &proxies {
        cutover_proxy::Proxies::Fleet(f) => {
            let fleet = f.fleet().await?;
            FleetView {
                control: Some(f.location()),
                active: fleet.row.active,
                epoch: fleet.row.epoch,
                paused: fleet.row.paused,
                generation: Some(fleet.row.generation),
                proxies: fleet
                    .proxies
                    .iter()
                    .map(|l| ProxyView {
                        id: l.id.clone(),
                        address: l.address.clone(),
                        version: l.version.clone(),
                        epoch: l.status.as_ref().map(|s| s.epoch),
                        backend: l.status.as_ref().map(|s| s.active),
                        sessions: l.status.as_ref().map(|s| s.sessions.len()),
                        paused: l.status.as_ref().map(|s| s.paused),
                        heartbeat_age_s: Some(l.age_s),
                        live: l.live(),
                    })
                    .collect(),
            }
        }
        cutover_proxy::Proxies::One(a) => {
            let s = a.status().await?;
            FleetView {
                control: None,
                active: s.active,
                epoch: s.epoch,
                paused: s.paused,
                generation: None,
                proxies: vec![ProxyView {
                    id: "-".into(),
                    address: a.addr.to_string(),
                    version: "-".into(),
                    epoch: Some(s.epoch),
                    backend: Some(s.active),
                    sessions: Some(s.sessions.len()),
                    paused: Some(s.paused),
                    heartbeat_age_s: None,
                    live: true,
                }],
            }
        }
    };
    let live = view.proxies.iter().filter(|p| p.live).count();
    if g.json {
        output::json(&view)?;
    } else {
        let head = match &view.control {
            Some(c) => format!(
                "fleet in {c}: {live} live proxies, on the {} (epoch {}){}",
                view.active,
                view.epoch,
                if view.paused { ", paused" } else { "" }
            ),
            None => format!(
                "one proxy (proxy.control_url = \"none\"), on the {} (epoch {}){}",
                view.active,
                view.epoch,
                if view.paused { ", paused" } else { "" }
            ),
        };
        outln!("{head}");
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let rows: Vec<Vec<String>> = view
            .proxies
            .iter()
            .map(|p| {
                vec![
                    p.id.clone(),
                    p.address.clone(),
                    p.version.clone(),
                    or_dash(p.epoch.map(|e| e.to_string())),
                    or_dash(p.backend.map(|b| b.to_string())),
                    or_dash(p.sessions.map(|n| n.to_string())),
                    or_dash(p.paused.map(|b| if b { "yes" } else { "no" }.to_string())),
                    match (p.heartbeat_age_s, p.live) {
                        (Some(a), true) => format!("{a:.1}s ago"),
                        (Some(a), false) => format!("{a:.0}s ago (gone)"),
                        (None, _) => "-".into(),
                    },
                ]
            })
            .collect();
        out!(
            "{}",
            output::table(
                &[
                    "proxy",
                    "address",
                    "version",
                    "epoch",
                    "backend",
                    "sessions",
                    "paused",
                    "heartbeat"
                ],
                &rows
            )
        );
    }
    Ok(if live > 0 { 0 } else { 1 })
}
