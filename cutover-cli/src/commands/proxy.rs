//! `cutover proxy`: runs the PG proxy until SIGINT or SIGTERM, then leaves as a load balancer
//! expects (see `Running::shutdown`).

use crate::cli::{Global, ProxyArgs};

pub async fn run(g: &Global, args: ProxyArgs) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    let drain = plan.proxy().map_err(anyhow::Error::msg)?.shutdown_timeout;
    let mut config = cutover_proxy::Config::from_plan(&plan).map_err(anyhow::Error::msg)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let running = cutover_proxy::start(config)
        .await
        .map_err(anyhow::Error::msg)?;
    let gate = running.shared.gate();
    if g.json {
        crate::output::json(&serde_json::json!({
            "listen": running.addr,
            "admin": running.admin_addr,
            "health": running.health_addr,
            "active": gate.active,
            "epoch": gate.epoch,
        }))?;
    } else {
        let health = match running.health_addr {
            Some(a) => format!(", /ready and /metrics on {a}"),
            None => String::new(),
        };
        println!(
            "proxy listening on {} (admin API on {}{health}), sending sessions to the {}",
            running.addr, running.admin_addr, gate.active
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
        crate::output::json(&serde_json::json!({ "shutdown": done }))?;
    } else {
        eprintln!(
            "stopped: {} sessions closed at a transaction boundary, {} cut inside a transaction",
            done.closed, done.cut
        );
    }
    Ok(0)
}
