//! Client authentication (server side of SCRAM-SHA-256, md5).
