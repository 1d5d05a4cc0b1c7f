//! A TCP forwarder a test can cut: the path between the proxies and a database.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How the path behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Every byte goes through.
    Open,
    /// Nothing listens: a new connection is refused, and the open ones are closed.
    Refused,
    /// New connections are accepted and nothing goes through them (a firewall that drops,
    /// a route that leads nowhere); the open ones go on.
    BlackHole,
}

/// Forwards `addr` to `to` while its path is open.
pub struct Forwarder {
    pub addr: SocketAddr,
    to: SocketAddr,
    path: Arc<Mutex<Path>>,
    accept: Mutex<Option<JoinHandle<()>>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Connections a black hole holds.
    held: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Forwarder {
    pub async fn start(to: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let f = Forwarder {
            addr: listener.local_addr().expect("its address"),
            to,
            path: Arc::new(Mutex::new(Path::Open)),
            accept: Mutex::new(None),
            conns: Arc::default(),
            held: Arc::default(),
        };
        f.serve(listener);
        f
    }

    fn serve(&self, listener: TcpListener) {
        let (to, path) = (self.to, self.path.clone());
        let (conns, held) = (self.conns.clone(), self.held.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if *path.lock().unwrap() == Path::BlackHole {
                    // Held open, never answered, until the test changes the path.
                    let hold = tokio::spawn(async move {
                        let _client = client;
                        std::future::pending::<()>().await;
                    });
                    held.lock().unwrap().push(hold);
                    continue;
                }
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns.lock().unwrap().push(conn);
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    /// Changes the path. Leaving `BlackHole` drops the connections it held.
    pub async fn set(&self, new: Path) {
        let old = std::mem::replace(&mut *self.path.lock().unwrap(), new);
        if old == new {
            return;
        }
        match (old, new) {
            (_, Path::Refused) => {
                if let Some(t) = self.accept.lock().unwrap().take() {
                    t.abort();
                }
                for c in self.conns.lock().unwrap().drain(..) {
                    c.abort();
                }
                for c in self.held.lock().unwrap().drain(..) {
                    c.abort();
                }
                // Aborted tasks drop their listener and sockets when next polled.
                tokio::task::yield_now().await;
            }
            (Path::Refused, _) => {
                let mut tries = 0;
                let listener = loop {
                    match TcpListener::bind(self.addr).await {
                        Ok(l) => break l,
                        Err(_) if tries < 100 => {
                            tries += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
                    }
                };
                self.serve(listener);
            }
            (Path::BlackHole, Path::Open) => {
                // The held connections end: their clients try again on an open path.
                for c in self.held.lock().unwrap().drain(..) {
                    c.abort();
                }
            }
            _ => {}
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(t) = self.accept.lock().unwrap().take() {
            t.abort();
        }
        for c in self
            .conns
            .lock()
            .unwrap()
            .drain(..)
            .chain(self.held.lock().unwrap().drain(..))
        {
            c.abort();
        }
    }
}
