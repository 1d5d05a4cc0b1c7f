//! The procedures that combine cutover's parts: `db sync`, the database switchover and its
//! rollback, verification from whichever side is the primary, the canary's driving, the
//! whole migration (plan, apply, status, rollback, finish), and the demos.

pub mod canary;
pub mod demo;
pub mod migration;
pub mod switchover;
pub mod sync;
pub mod verify;

pub use switchover::{run, Direction, Options, SwitchError, SwitchSummary};
