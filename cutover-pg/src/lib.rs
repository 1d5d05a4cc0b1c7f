//! Everything of cutover that talks SQL: inspecting the databases, the preflight rules, the
//! schema copy, native logical replication, lag, verification and cleanup.

pub mod cleanup;
pub mod connect;
pub mod copy;
pub mod ddl_log;
pub mod drift;
pub mod error;
pub mod fence;
pub mod grants;
pub mod inspect;
pub mod large_objects;
pub mod local;
pub mod marker;
pub mod pgbench;
pub mod preflight;
pub mod preflight_gate;
pub mod ready;
pub mod replication;
pub mod schema;
pub mod schema_change;
pub mod sequences;
pub mod status;
pub mod sync;
pub mod trigger;
pub mod verify;

pub use connect::{connect, connect_listening, ident, literal, qualified};
pub use error::{PgError, Retry, Side};
