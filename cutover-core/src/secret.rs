//! Secrets that cannot be printed by accident.
//!
//! A [`Secret`] has a `Display` and a `Debug` that print `********`; the value comes out only
//! through [`Secret::expose`], so every place that hands a password to a server or a child
//! process is visible in the code. [`redact`] is the second line of defence: text we did not
//! write ourselves (a child's stderr, a server message) is scrubbed of every known secret
//! before it reaches a log, an error or the journal.

use std::fmt;

/// What a secret prints as.
pub const MASK: &str = "********";

/// A value that must never appear in output, logs, the journal or `--json`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for handing to a server or a child process, never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({MASK})")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

/// Replaces every occurrence of each secret (and of its percent-encoded form) in `text`.
pub fn redact<'a>(text: &str, secrets: impl IntoIterator<Item = &'a Secret>) -> String {
    let mut out = text.to_string();
    for secret in secrets {
        let value = secret.expose();
        if value.is_empty() {
            continue;
        }
        out = out.replace(value, MASK);
        // As a JSON string holds it (a JSON log line): quotes, backslashes and control
        // characters escaped.
        let json = serde_json::to_string(value).unwrap_or_default();
        let json = json.trim_start_matches('"').trim_end_matches('"');
        if json != value && !json.is_empty() {
            out = out.replace(json, MASK);
        }
        let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        if encoded != value {
            out = out.replace(&encoded, MASK);
            out = out.replace(&encoded.replace('+', "%20"), MASK);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_debug_hide_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(s.to_string(), MASK);
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{MASK}\""));
    }

    #[test]
    fn redact_replaces_plain_and_encoded_forms() {
        let s = Secret::new("p@ss word");
        let text = "password=p@ss word url=postgres://u:p%40ss+word@h";
        let out = redact(text, [&s]);
        assert!(!out.contains("p@ss word"));
        assert!(!out.contains("p%40ss+word"));
    }

    #[test]
    fn redact_replaces_the_form_a_json_log_line_holds() {
        let s = Secret::new("pa\"ss\\wörd");
        let line = serde_json::json!({"fields": {"message": format!("connect with password={}", s.expose())}})
            .to_string();
        assert!(line.contains("pa\\\"ss\\\\wörd"), "{line}");
        let out = redact(&line, [&s]);
        assert!(
            !out.contains("wörd") && out.contains("password=********"),
            "{out}"
        );
        assert!(
            serde_json::from_str::<serde_json::Value>(&out).is_ok(),
            "{out}"
        );
    }
}
