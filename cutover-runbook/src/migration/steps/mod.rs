//! The steps of a migration, one file per phase.

pub(crate) mod database;
pub(crate) mod done;
pub(crate) mod finish;
pub(crate) mod hold;
pub(crate) mod new_app;
pub(crate) mod prepare;
pub(crate) mod proxy;
pub(crate) mod traffic;
