//! `env diff`: what differs between two sets of variables, without printing a secret.
//!
//! The point is parity: after exporting to the new platform and reading its variables back,
//! every name should be there with the same value, except what was meant to change
//! (platform variables, add-on URLs). A secret is shown only as a short keyed hash of its
//! value (HMAC-SHA-256 under a key drawn at random for each run), enough to see within one
//! comparison that two sides agree or which side changed, never the value. The key matters:
//! a plain hash of a short or guessable secret can be reversed by trying candidates, and the
//! output of this command ends up in terminals, tickets and CI logs. A variable
//! counts as secret if either side's name or value says so. Differences that are typical of
//! careless copies (added quotes, surrounding whitespace) are named as such.

use hmac::{KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::config::Vars;
use crate::env;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    OnlySource,
    OnlyTarget,
    Changed,
}

/// One differing variable. Values are shown only for plain variables; secrets as hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub name: String,
    pub status: Status,
    pub secret: bool,
    pub source: Option<String>,
    pub target: Option<String>,
    /// What kind of change it looks like, when we can tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub changes: Vec<Change>,
    /// Names with equal values on both sides.
    pub same: Vec<String>,
}

/// `hmac:` and the first 12 hex digits of the value's HMAC-SHA-256 under this run's key:
/// equal values give equal hashes within a run, and nothing can be learnt from it later.
pub fn hash(value: &str) -> String {
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(rand::random);
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(value.as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("hmac:{hex}")
}

fn is_secret(name: &str, values: &[&str]) -> bool {
    if name.starts_with("HEROKU_POSTGRESQL_") {
        return true;
    }
    values.iter().any(|v| env::secret_reason(name, v).is_some())
}

fn show(value: &str, secret: bool) -> String {
    if secret {
        hash(value)
    } else {
        value.to_string()
    }
}

fn unquote(v: &str) -> &str {
    let b = v.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

/// Compares two sets.
pub fn diff(source: &Vars, target: &Vars) -> Diff {
    let mut changes = vec![];
    let mut same = vec![];
    let mut names: Vec<&String> = source.keys().chain(target.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        match (source.get(name), target.get(name)) {
            (Some(a), Some(b)) if a == b => same.push(name.clone()),
            (Some(a), Some(b)) => {
                let secret = is_secret(name, &[a, b]);
                let note = if unquote(a) == unquote(b) {
                    Some("differs only by surrounding quotes".to_string())
                } else if a.trim() == b.trim() {
                    Some("differs only by surrounding whitespace".to_string())
                } else {
                    None
                };
                changes.push(Change {
                    name: name.clone(),
                    status: Status::Changed,
                    secret,
                    source: Some(show(a, secret)),
                    target: Some(show(b, secret)),
                    note,
                });
            }
            (Some(a), None) => {
                let secret = is_secret(name, &[a]);
                changes.push(Change {
                    name: name.clone(),
                    status: Status::OnlySource,
                    secret,
                    source: Some(show(a, secret)),
                    target: None,
                    note: None,
                });
            }
            (None, Some(b)) => {
                let secret = is_secret(name, &[b]);
                changes.push(Change {
                    name: name.clone(),
                    status: Status::OnlyTarget,
                    secret,
                    source: None,
                    target: Some(show(b, secret)),
                    note: None,
                });
            }
            (None, None) => {}
        }
    }
    Diff { changes, same }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn secrets_show_as_hashes_and_copy_mistakes_are_named() {
        let a = vars(&[
            ("API_TOKEN", "tok-aaa-111"),
            ("LOG_LEVEL", "info"),
            ("MODE", "fast"),
            ("SAME", "x"),
            ("OLD", "gone"),
        ]);
        let b = vars(&[
            ("API_TOKEN", "'tok-aaa-111'"),
            ("LOG_LEVEL", "debug"),
            ("MODE", "fast "),
            ("SAME", "x"),
            ("NEW", "here"),
        ]);
        let d = diff(&a, &b);
        assert_eq!(d.same, ["SAME"]);
        let token = &d.changes[0];
        assert_eq!(token.name, "API_TOKEN");
        assert!(token.secret);
        assert_eq!(token.source.as_deref(), Some(hash("tok-aaa-111").as_str()));
        assert_eq!(
            token.note.as_deref(),
            Some("differs only by surrounding quotes")
        );
        let text = format!("{d:?}{}", serde_json::to_string(&d).unwrap());
        assert!(!text.contains("tok-aaa-111"));
        let log = d.changes.iter().find(|c| c.name == "LOG_LEVEL").unwrap();
        assert_eq!(
            (log.source.as_deref(), log.target.as_deref()),
            (Some("info"), Some("debug"))
        );
        let mode = d.changes.iter().find(|c| c.name == "MODE").unwrap();
        assert_eq!(
            mode.note.as_deref(),
            Some("differs only by surrounding whitespace")
        );
        let statuses: Vec<(&str, Status)> = d
            .changes
            .iter()
            .map(|c| (c.name.as_str(), c.status))
            .collect();
        assert!(
            statuses.contains(&("OLD", Status::OnlySource))
                && statuses.contains(&("NEW", Status::OnlyTarget))
        );
        // Keyed: equal within a run, different for different values, and not the plain
        // SHA-256 of the value ("abc" hashes to ba7816bf8f01...).
        assert_eq!(hash("abc"), hash("abc"));
        assert_ne!(hash("abc"), hash("abd"));
        assert!(hash("abc").starts_with("hmac:") && !hash("abc").contains("ba7816bf8f01"));
    }
}
