//! A kept-alive connection to an origin, driven by the request that uses it.
//!
//! hyper's usual client spawns a task per connection to move its bytes; a request then
//! crosses two tasks and often both CPUs: the client's connection hands the request to the
//! origin connection's task through a channel, and the response comes back through
//! another. Here the connection's driver ([`Conn`]) travels with the connection instead:
//! the task of the client connection that checked it out polls it while it waits for the
//! response and while it streams the body back, so one wake-up of one task moves a
//! request or a response. An idle connection in the pool is polled by no one; whether the
//! origin closed it meanwhile is found out by the next request that takes it (hyper then
//! hands that request back unsent, and it goes on a fresh connection).

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{Context, Waker};

use hyper::client::conn::http1::SendRequest;

use crate::http::{Body, Conn};

pub(crate) struct Upstream {
    pub(crate) sender: SendRequest<Body>,
    /// None once the connection has ended. Boxed: an Upstream moves from the idle list
    /// through every request that uses it, and the driver is most of its size.
    conn: Option<Box<Conn>>,
}

impl Upstream {
    pub(crate) fn new(sender: SendRequest<Body>, conn: Conn) -> Upstream {
        Upstream {
            sender,
            conn: Some(Box::new(conn)),
        }
    }

    /// Moves the connection's bytes as far as they go now; `cx` is woken when there is more.
    pub(crate) fn poll_conn(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = &mut self.conn {
            if Pin::new(&mut **conn).poll(cx).is_ready() {
                // Closed or failed: whatever waited on it has been told.
                self.conn = None;
            }
        }
    }

    /// Polls the connection once without anyone to wake: takes in what has already
    /// arrived (the end of a response, the origin's close) before the connection goes
    /// idle. The next task that polls it registers itself.
    pub(crate) fn settle(&mut self) {
        self.poll_conn(&mut Context::from_waker(Waker::noop()));
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.conn.is_none() || self.sender.is_closed()
    }

    /// Waits until the connection can take a request, driving it meanwhile.
    pub(crate) async fn ready(&mut self) -> Result<(), hyper::Error> {
        let Upstream { sender, conn } = self;
        driving(conn, sender.ready()).await
    }

    /// Sends a request and waits for the response's head, driving the connection
    /// meanwhile. A request hyper hands back was never written.
    pub(crate) async fn send(
        &mut self,
        req: hyper::Request<Body>,
    ) -> Result<
        hyper::Response<hyper::body::Incoming>,
        hyper::client::conn::TrySendError<hyper::Request<Body>>,
    > {
        let Upstream { sender, conn } = self;
        let sent = sender.try_send_request(req);
        driving(conn, sent).await
    }
}

/// Runs `work` to its end while driving `conn` in the same task. When the connection
/// ends, `work` (which waits on it) is told by hyper and ends too.
async fn driving<F: Future>(conn: &mut Option<Box<Conn>>, work: F) -> F::Output {
    let mut work = pin!(work);
    poll_fn(|cx| {
        // The connection first: what it reads now, `work` sees in the same poll.
        if let Some(c) = conn {
            if Pin::new(&mut **c).poll(cx).is_ready() {
                *conn = None;
            }
        }
        work.as_mut().poll(cx)
    })
    .await
}
