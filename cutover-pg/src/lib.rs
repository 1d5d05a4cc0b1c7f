//! Everything of cutover that talks SQL: inspecting the databases, the preflight rules, the
//! schema copy, native logical replication, lag, verification and cleanup.

pub mod connect;
pub mod error;
pub mod local;

pub use connect::{connect, ident, literal, qualified};
pub use error::{PgError, Retry, Side};
