//! The demo's moves: the whole move of the shop ([`whole`]) on two local platforms
//! ([`stage`]), which the migration tests drive the same way, and the database move alone
//! ([`database`]).

pub mod database;
pub mod stage;
pub mod whole;

pub use stage::{Stage, StageError, StageOptions};
pub use whole::{DemoError, DemoOptions, MoveSummary};
