//! The cutover PG wire proxy.
//!
//! Applications connect to the proxy instead of the database. Each client session owns one
//! server connection (session mode). The proxy can pause new transactions, let the running
//! ones finish, move every session to another server with its state, and resume: clients
//! see a pause, never an error.

pub mod auth;
pub mod codec;
