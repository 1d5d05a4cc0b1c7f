//! The errors of everything that talks SQL, classified by what the caller must do.

use cutover_core::JournalError;

/// Which database an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Source,
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// What the caller should do about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Try again with backoff: the server is restarting, a lock timed out, a network blip.
    Transient,
    /// Stop and tell a person.
    Definite,
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A connection could not be made. `message` already says how to fix it.
    #[error("cannot connect to the {side} database ({location}): {message}")]
    Connect {
        side: Side,
        location: String,
        message: String,
        retry: Retry,
    },
    /// A statement failed.
    #[error("{side}: {context}: {message}")]
    Sql {
        side: Side,
        context: String,
        message: String,
        code: Option<String>,
        retry: Retry,
    },
    /// Something in the databases stops the job; the message says what and how to fix it.
    #[error("{0}")]
    Refused(String),
    /// A child process (pg_dump, pg_restore) failed.
    #[error("{program} failed: {message}")]
    Child { program: String, message: String },
    /// A table's columns changed on the side being followed: the follower reconciles the
    /// schema before it applies anything more.
    #[error("the schema changed: {0}")]
    SchemaChanged(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{0}")]
    Io(String),
}

impl PgError {
    pub fn retry(&self) -> Retry {
        match self {
            PgError::Connect { retry, .. } | PgError::Sql { retry, .. } => *retry,
            _ => Retry::Definite,
        }
    }

    /// Wraps a driver error from a statement.
    pub fn sql(side: Side, context: impl Into<String>, e: tokio_postgres::Error) -> PgError {
        let code = e.code().map(|c| c.code().to_string());
        let message = db_message(&e);
        let retry = match &code {
            Some(c) => classify(c),
            None if e.is_closed() => Retry::Transient,
            None => Retry::Transient,
        };
        PgError::Sql {
            side,
            context: context.into(),
            message,
            code,
            retry,
        }
    }
}

/// What the server said, with its detail and hint; the driver's words when it said nothing.
pub fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut m = db.message().to_string();
            if let Some(d) = db.detail() {
                m.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                m.push_str(&format!("; hint: {h}"));
            }
            m
        }
        None => e.to_string(),
    }
}

/// Transient or definite, from the SQLSTATE class.
pub fn classify(sqlstate: &str) -> Retry {
    match sqlstate {
        "57P01" | "57P02" | "57P03" | "55P03" | "55006" => Retry::Transient,
        s if s.starts_with("08") || s.starts_with("40") || s.starts_with("53") => Retry::Transient,
        _ => Retry::Definite,
    }
}

/// Adds a context to a driver error of one side.
pub trait SqlContext<T> {
    fn ctx(self, side: Side, context: &str) -> Result<T, PgError>;
}

impl<T> SqlContext<T> for Result<T, tokio_postgres::Error> {
    fn ctx(self, side: Side, context: &str) -> Result<T, PgError> {
        self.map_err(|e| PgError::sql(side, context, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classes() {
        assert_eq!(classify("08006"), Retry::Transient);
        assert_eq!(classify("40001"), Retry::Transient);
        assert_eq!(classify("57P01"), Retry::Transient);
        assert_eq!(classify("42P01"), Retry::Definite);
        assert_eq!(classify("28P01"), Retry::Definite);
    }
}
