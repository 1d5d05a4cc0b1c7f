//! A running proxy: how it starts (the listeners, the admin API, health, the fleet and the
//! path checks) and how it stops, at once or draining its sessions for a load balancer.

use super::*;

/// A running proxy: its addresses and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Where `/live`, `/ready` and `/metrics` are served, when they are.
    pub health_addr: Option<SocketAddr>,
    /// This proxy's id in its fleet's lease table, when it has a fleet.
    pub member: Option<String>,
    pub shared: Arc<Shared>,
    /// Ends the accept loop only.
    accepting: tokio_util::sync::CancellationToken,
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How a shutdown went.
#[derive(Clone, Debug, Serialize)]
pub struct Shutdown {
    /// Sessions when the shutdown began.
    pub sessions: usize,
    /// Sessions that ended at a transaction boundary (their clients were told to connect
    /// again) or by themselves, within the drain time.
    pub closed: usize,
    /// Sessions still inside a transaction when the drain time ran out: their connections
    /// were cut and the database rolled those transactions back.
    pub cut: usize,
}

impl Running {
    /// Stops accepting; sessions in progress end with their clients.
    pub async fn stop(self) {
        self.accepting.cancel();
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Waits until [`Running::stop`] or a fatal listener error.
    pub fn stopper(&self) -> tokio_util::sync::CancellationToken {
        self.stop.clone()
    }

    /// Leaves as a load balancer expects: `/ready` answers 503 and no session is accepted
    /// any more; each session ends at its next transaction boundary, its client told to
    /// connect again (a pool then reaches another instance); a session still inside a
    /// transaction after `drain` is cut.
    pub async fn shutdown(self, drain: Duration) -> Shutdown {
        self.shared
            .ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.accepting.cancel();
        let sessions = self.shared.session_count();
        self.shared.gate.send_modify(|g| g.closing = true);
        let left = self.shared.wait_sessions_gone(drain).await;
        if left > 0 {
            self.shared.gate.send_modify(|g| g.cut = true);
            let still = self.shared.wait_sessions_gone(Duration::from_secs(5)).await;
            if still > 0 {
                tracing::warn!("{still} sessions did not end after being cut");
            }
        }
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        Shutdown {
            sessions,
            closed: sessions.saturating_sub(left),
            cut: left,
        }
    }
}

/// A socket bound to `addr` (address reuse as a listener has it), not yet listening.
fn bound(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// How long a starting proxy waits for its fleet's control database before it starts on its
/// disk's backend.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds both listeners and starts serving. Fails with one line if an address is taken or
/// the state file is unreadable.
pub async fn start(config: Config) -> Result<Running, String> {
    if !config.admin_listen.ip().is_loopback() && config.tls.is_none() {
        return Err(format!(
            "the admin API would listen on {} without TLS; set proxy.tls_cert and proxy.tls_key, or listen on 127.0.0.1",
            config.admin_listen
        ));
    }
    let shared = Shared::new(config)?;
    let config = &shared.config;
    // Bound now (a taken address fails at once), listening only once the proxy knows its
    // backend: until then a client is refused, not served by the wrong database.
    let socket = bound(config.listen).map_err(|e| {
        format!(
            "cannot listen on {}: {e}; pick another proxy.listen",
            config.listen
        )
    })?;
    let addr = socket.local_addr().map_err(|e| e.to_string())?;
    // In a fleet, the backend comes from the control database before the first session is
    // taken: a new proxy (an empty disk) or a restarted one joins on the current backend.
    let me = crate::control::member::Me::new(addr);
    let first = match config.control.clone() {
        Some(url) => {
            match tokio::time::timeout(
                JOIN_TIMEOUT,
                crate::control::member::connect(&shared, &url, &me),
            )
            .await
            {
                Ok(Ok(j)) => Some(j),
                Ok(Err(e)) => {
                    tracing::warn!("cannot join the fleet in {}: {e}; starting on the {} from {}, joining when it can", url.location(), shared.gate().active, config.state_path.display());
                    None
                }
                Err(_) => {
                    tracing::warn!("the control database {} did not answer in {}s; starting on the {} from {}, joining when it can", url.location(), JOIN_TIMEOUT.as_secs(), shared.gate().active, config.state_path.display());
                    None
                }
            }
        }
        None => None,
    };
    let admin = TcpListener::bind(config.admin_listen).await.map_err(|e| {
        format!(
            "cannot listen on {} for the admin API: {e}; pick another proxy.admin_listen",
            config.admin_listen
        )
    })?;
    let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;
    let health = match config.health_listen {
        Some(a) => Some(TcpListener::bind(a).await.map_err(|e| {
            format!("cannot listen on {a} for /ready, /live and /metrics: {e}; pick another proxy.health_listen")
        })?),
        None => None,
    };
    let health_addr = match &health {
        Some(h) => Some(h.local_addr().map_err(|e| e.to_string())?),
        None => None,
    };
    let listener = socket.listen(1024).map_err(|e| {
        format!(
            "cannot listen on {}: {e}; pick another proxy.listen",
            config.listen
        )
    })?;
    let stop = tokio_util::sync::CancellationToken::new();
    let accepting = stop.child_token();
    let accept = {
        let shared = shared.clone();
        let accepting = accepting.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = accepting.cancelled() => break,
                    r = listener.accept() => match r {
                        Ok((tcp, peer)) => {
                            tokio::spawn(crate::session::serve(shared.clone(), tcp, peer));
                        }
                        Err(e) => {
                            tracing::warn!("accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        })
    };
    let admin_task = {
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move { crate::admin::serve(shared, admin, stop).await })
    };
    let mut tasks = vec![accept, admin_task];
    tasks.push(tokio::spawn(check_paths(shared.clone(), stop.clone())));
    let member = shared.config.control.clone().map(|url| {
        let id = me.id.clone();
        let shared = shared.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            crate::control::member::serve(shared, url, me, first, stop).await
        }));
        id
    });
    if let Some(h) = health {
        let shared = shared.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            crate::health::serve(shared, h, stop).await
        }));
    }
    Ok(Running {
        addr,
        admin_addr,
        health_addr,
        member,
        shared,
        accepting,
        stop,
        tasks,
    })
}

/// While a switch is prepared or paused, checks every [`crate::reach::EVERY`] that a
/// connection to the backend it goes to can be made; forgets the check when no switch is
/// under way.
async fn check_paths(shared: Arc<Shared>, stop: tokio_util::sync::CancellationToken) {
    let mut gate_rx = shared.gate.subscribe();
    loop {
        let gate = *gate_rx.borrow_and_update();
        let to = match gate.prepare {
            Some(b) if b != gate.active => Some(b),
            _ if gate.paused => Some(gate.active.other()),
            _ => None,
        };
        let Some(backend) = to else {
            *shared.reach.lock().unwrap() = None;
            tokio::select! {
                () = stop.cancelled() => return,
                r = gate_rx.changed() => if r.is_err() { return },
            }
            continue;
        };
        let checked = crate::reach::check(backend, shared.config.backend(backend)).await;
        *shared.reach.lock().unwrap() = Some(checked);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(crate::reach::EVERY) => {}
        }
    }
}
