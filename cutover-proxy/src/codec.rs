//! The PostgreSQL wire protocol, with no IO.
