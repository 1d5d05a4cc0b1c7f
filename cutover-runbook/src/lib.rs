//! The procedures that combine cutover's parts: the database switchover and its rollback.

pub mod switchover;

pub use switchover::{run, Direction, Options, SwitchError, SwitchSummary};
