//! `cutover proxy`: runs the PG proxy until SIGINT or SIGTERM.

use crate::cli::{Global, ProxyArgs};

pub async fn run(g: &Global, args: ProxyArgs) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
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
            "active": gate.active,
            "epoch": gate.epoch,
        }))?;
    } else {
        println!(
            "proxy listening on {} (admin API on {}), sending sessions to the {}",
            running.addr, running.admin_addr, gate.active
        );
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("stopping: no new sessions; sessions in progress end with their clients");
    running.stop().await;
    Ok(0)
}
