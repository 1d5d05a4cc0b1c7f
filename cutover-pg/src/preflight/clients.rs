//! The PostgreSQL client programs `db sync` runs (`pg_dump`, `pg_restore`, `psql`), found as
//! it finds them, and their versions: facts for the `client-programs` rule.

/// A PostgreSQL client program and the version it reports (None: it cannot be run).
#[derive(Clone, Debug)]
pub struct ClientProgram {
    pub name: &'static str,
    /// As `--version` prints it, e.g. "15.18".
    pub version: Option<String>,
}

impl ClientProgram {
    /// The major version: 15 for "15.18", 9 for "9.6.24".
    pub fn major(&self) -> Option<u32> {
        self.version.as_ref()?.split('.').next()?.parse().ok()
    }
}

/// `pg_dump`, `pg_restore` and `psql` as `db sync` would start them, with their versions.
pub async fn client_programs() -> Vec<ClientProgram> {
    let mut out = vec![];
    for name in ["pg_dump", "pg_restore", "psql"] {
        let version = crate::connect::client_program(name, None)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| parse_client_version(&String::from_utf8_lossy(&o.stdout)));
        out.push(ClientProgram { name, version });
    }
    out
}

/// "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" → "15.18".
pub fn parse_client_version(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(|w| {
            let v: String = w
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            v.trim_end_matches('.').to_string()
        })
}
