//! The procedures that combine cutover's parts: the database switchover and its rollback,
//! verification from whichever side is the primary, and the whole migration (plan, apply,
//! status, rollback, finish).

pub mod canary;
pub mod demo;
pub mod migration;
pub mod switchover;
pub mod verify;

pub use switchover::{run, Direction, Options, SwitchError, SwitchSummary};
