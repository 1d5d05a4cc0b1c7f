//! The cutover PG wire proxy.
//!
//! Applications connect to the proxy instead of the database. Each client session owns one
//! server connection (session mode). The proxy can pause new transactions, let the running
//! ones finish, move every session to another server with its state, and resume: clients
//! see a pause, never an error.

pub mod admin;
pub mod auth;
pub mod codec;
pub mod control;
mod health;
pub mod metrics;
pub mod proxies;
pub mod proxy;
pub mod reach;
pub mod server;
mod session;
pub mod state;
pub mod tls;

pub use admin::AdminClient;
pub use control::fleet::{Fleet, FleetClient};
pub use proxies::Proxies;
pub use proxy::{start, Config, Running, Shutdown, Status, SwitchReport};
pub use state::Backend;
