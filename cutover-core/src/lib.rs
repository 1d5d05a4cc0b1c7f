//! The bottom layer of cutover: the plan file, the journal, the step engine, secrets and
//! connection strings. It imports no other crate of the workspace.

pub mod connstr;
pub mod engine;
pub mod journal;
pub mod plan;
pub mod secret;
pub mod tls;

pub use connstr::{ConnString, ConnStringError, SslMode};
pub use journal::{Journal, JournalError};
pub use plan::{Mode, Plan, PlanError};
pub use secret::{redact, Secret};
