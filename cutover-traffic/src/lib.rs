//! Moving users from the old app to the new one.
//!
//! Flipping a DNS record strands users for as long as resolvers and clients cache the old
//! answer, so the move happens in three parts that this crate owns:
//!
//! - [`dns`]: one small trait over the providers that serve the zone (RFC 2136 with TSIG,
//!   Route 53 weighted records, Cloudflare), `dns verify`'s questions to servers, and the
//!   [`ttl`] planner that says when the old answer has expired everywhere.
//! - [`splitter`]: a weighted HTTP reverse proxy between the old and the new app, with sticky
//!   sessions, health checks, draining and per-origin metrics. It can run in front of the old
//!   app, so clients that still resolve the old address reach the new one; the traffic that
//!   still arrives there is how "done" is measured.
//! - [`canary`]: steps of weights with gates on success rate and p99 latency, rolled back to
//!   0% by itself when a gate fails, each step journaled so a restart continues.
//!
//! It imports `cutover-core` only.

pub mod canary;
pub mod dns;
pub mod http;
pub mod probe;
pub mod splitter;
pub mod ttl;
