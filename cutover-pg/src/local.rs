//! Local PostgreSQL clusters started on free loopback ports: what `cutover demo` runs on, and
//! what the test kit builds its fixtures from.
//!
//! PostgreSQL refuses to run as root, so when we are root the server programs run as the
//! `postgres` user (`runuser -u postgres`) in a directory that user owns. `initdb` runs once
//! per machine into a template that later clusters copy, which keeps a test that starts two
//! clusters fast. A cluster is stopped and its directory removed when it is dropped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cutover_core::{ConnString, Secret};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(
        "PostgreSQL server programs (initdb, pg_ctl) were not found; install them \
         (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql@15) \
         or put their folder on PATH"
    )]
    NoBinaries,
    #[error("running as root, but there is no `postgres` user to run the server as; create it (useradd -r postgres) or run as another user")]
    NoPostgresUser,
    #[error("{step} failed: {detail}")]
    Failed { step: String, detail: String },
}

/// `wal_level` of a local cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalLevel {
    /// Allows logical replication.
    Logical,
    /// Like Heroku Postgres: no logical replication.
    Replica,
}

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub wal_level: WalLevel,
    /// Extra `postgresql.conf` settings, written last.
    pub settings: Vec<(String, String)>,
    /// PEM certificate and key to serve TLS with.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Keep fsync on (benchmarks); off by default for speed.
    pub durable: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            wal_level: WalLevel::Logical,
            settings: vec![],
            tls: None,
            durable: false,
        }
    }
}

/// The server programs' folder.
pub fn bindir() -> Result<PathBuf, LocalError> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
                return Ok(dir);
            }
        }
    }
    Err(LocalError::NoBinaries)
}

/// The uid/gid to run the server as, when we are root.
fn server_user() -> Result<Option<(u32, u32)>, LocalError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(u)) => Ok(Some((u.uid.as_raw(), u.gid.as_raw()))),
        _ => Err(LocalError::NoPostgresUser),
    }
}

fn run(program: &Path, args: &[&str], as_user: bool, step: &str) -> Result<String, LocalError> {
    let mut cmd = if as_user {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = cmd
        .args(args)
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LocalError::Failed {
            step: step.into(),
            detail: e.to_string(),
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(LocalError::Failed {
            step: step.into(),
            detail: text.trim().to_string(),
        });
    }
    Ok(text)
}

fn chown_tree(path: &Path, owner: Option<(u32, u32)>) -> Result<(), LocalError> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    let out = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .output()
        .map_err(|e| LocalError::Failed {
            step: "chown".into(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(LocalError::Failed {
            step: "chown".into(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// A template data directory made by `initdb` once per machine and server version.
fn template(bindir: &Path, owner: Option<(u32, u32)>) -> Result<PathBuf, LocalError> {
    let version = run(
        &bindir.join("pg_ctl"),
        &["--version"],
        false,
        "pg_ctl --version",
    )?;
    let tag: String = version
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let uid = nix::unistd::Uid::effective().as_raw();
    let path = std::env::temp_dir().join(format!("cutover-initdb-{tag}-{uid}"));
    if path.join("PG_VERSION").exists() {
        return Ok(path);
    }
    let staging = tempfile::Builder::new()
        .prefix("cutover-initdb-staging-")
        .tempdir()
        .map_err(|e| LocalError::Failed {
            step: "tempdir".into(),
            detail: e.to_string(),
        })?
        .keep();
    let data = staging.join("data");
    chown_tree(&staging, owner)?;
    run(
        &bindir.join("initdb"),
        &[
            "-D",
            data.to_str().unwrap_or_default(),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ],
        owner.is_some(),
        "initdb",
    )?;
    // Another process may have won the race; either way a template now exists.
    if std::fs::rename(&data, &path).is_err() && !path.join("PG_VERSION").exists() {
        return Err(LocalError::Failed {
            step: "initdb template".into(),
            detail: format!("cannot move the template into {}", path.display()),
        });
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(path)
}

fn free_port() -> Result<u16, LocalError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| LocalError::Failed {
        step: "find a free port".into(),
        detail: e.to_string(),
    })?;
    Ok(l.local_addr().map(|a| a.port()).unwrap_or(0))
}

/// A running local cluster, stopped and removed on drop.
pub struct LocalCluster {
    root: PathBuf,
    data: PathBuf,
    bindir: PathBuf,
    as_user: bool,
    port: u16,
    password: Secret,
    stopped: bool,
}

impl LocalCluster {
    /// Starts a new cluster on a free loopback port.
    pub async fn start(options: ClusterOptions) -> Result<LocalCluster, LocalError> {
        tokio::task::spawn_blocking(move || Self::start_blocking(&options))
            .await
            .map_err(|e| LocalError::Failed {
                step: "start".into(),
                detail: e.to_string(),
            })?
    }

    fn start_blocking(options: &ClusterOptions) -> Result<LocalCluster, LocalError> {
        let bindir = bindir()?;
        let owner = server_user()?;
        let template = template(&bindir, owner)?;
        let root = tempfile::Builder::new()
            .prefix("cutover-pg-")
            .tempdir()
            .map_err(|e| LocalError::Failed {
                step: "tempdir".into(),
                detail: e.to_string(),
            })?
            .keep();
        let data = root.join("data");
        let out = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .output()
            .map_err(|e| LocalError::Failed {
                step: "copy template".into(),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(LocalError::Failed {
                step: "copy template".into(),
                detail: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
        if let Some((src, key)) = &options.tls {
            std::fs::copy(src, data.join("server.crt"))
                .and_then(|_| std::fs::copy(key, data.join("server.key")))
                .and_then(|_| {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(
                        data.join("server.key"),
                        std::fs::Permissions::from_mode(0o600),
                    )
                })
                .map_err(|e| LocalError::Failed {
                    step: "install TLS files".into(),
                    detail: e.to_string(),
                })?;
        }
        let mut cluster = LocalCluster {
            root: root.clone(),
            data: data.clone(),
            bindir,
            as_user: owner.is_some(),
            port: 0,
            password: Secret::new(random_password()),
            stopped: true,
        };
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            cluster.write_conf(port, options)?;
            chown_tree(&root, owner)?;
            match cluster.pg_ctl(&["-w", "-t", "60", "start"]) {
                Ok(_) => {
                    cluster.port = port;
                    cluster.stopped = false;
                    cluster.set_password()?;
                    return Ok(cluster);
                }
                Err(e) => {
                    let log = cluster.log();
                    if !log.contains("could not bind") && !log.contains("already in use") {
                        return Err(LocalError::Failed {
                            step: "pg_ctl start".into(),
                            detail: format!("{e}; server log: {}", log.trim()),
                        });
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(LocalError::Failed {
            step: "start".into(),
            detail: "no free port".into(),
        }))
    }

    fn write_conf(&self, port: u16, o: &ClusterOptions) -> Result<(), LocalError> {
        let mut conf = format!(
            "\n# written by cutover\nport = {port}\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nwal_level = {}\nmax_wal_senders = 20\n\
             max_replication_slots = 20\nmax_logical_replication_workers = 16\n\
             max_worker_processes = 32\nmax_sync_workers_per_subscription = 4\n\
             max_connections = 200\nshared_buffers = '128MB'\nfsync = {}\n\
             synchronous_commit = {}\nfull_page_writes = {}\nlog_min_messages = warning\n",
            self.data.display(),
            match o.wal_level {
                WalLevel::Logical => "logical",
                WalLevel::Replica => "replica",
            },
            if o.durable { "on" } else { "off" },
            if o.durable { "on" } else { "off" },
            if o.durable { "on" } else { "off" },
        );
        if o.tls.is_some() {
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        for (k, v) in &o.settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .map_err(|e| LocalError::Failed {
                step: "write postgresql.conf".into(),
                detail: e.to_string(),
            })?;
        f.write_all(conf.as_bytes())
            .map_err(|e| LocalError::Failed {
                step: "write postgresql.conf".into(),
                detail: e.to_string(),
            })
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<String, LocalError> {
        let log = self.root.join("server.log");
        let mut all = vec![
            "-D",
            self.data.to_str().unwrap_or_default(),
            "-l",
            log.to_str().unwrap_or_default(),
        ];
        all.extend_from_slice(args);
        run(
            &self.bindir.join("pg_ctl"),
            &all,
            self.as_user,
            &format!("pg_ctl {}", args.last().unwrap_or(&"")),
        )
    }

    fn set_password(&self) -> Result<(), LocalError> {
        let sql = format!("ALTER ROLE postgres PASSWORD '{}'", self.password.expose());
        let psql = self.bindir.join("psql");
        let mut cmd = if self.as_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&psql);
            c
        } else {
            Command::new(&psql)
        };
        let mut child = cmd
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.data)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LocalError::Failed {
                step: "set password".into(),
                detail: e.to_string(),
            })?;
        // The statement goes through stdin so the password is never on a command line.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(sql.as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| LocalError::Failed {
            step: "set password".into(),
            detail: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(LocalError::Failed {
                step: "set password".into(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn password(&self) -> &Secret {
        &self.password
    }

    /// The superuser's URL for `dbname`.
    pub fn url(&self, dbname: &str) -> ConnString {
        self.url_as("postgres", Some(self.password.clone()), dbname)
    }

    /// A URL for another role.
    pub fn url_as(&self, user: &str, password: Option<Secret>, dbname: &str) -> ConnString {
        ConnString::parse(&format!(
            "postgres://{user}@127.0.0.1:{}/{dbname}?sslmode=disable",
            self.port
        ))
        .expect("a well-formed local URL")
        .with_password(password)
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    /// Stops the server (fast shutdown) and starts it again, on the same port.
    pub fn restart(&self) -> Result<(), LocalError> {
        self.pg_ctl(&["-w", "-t", "60", "-m", "fast", "restart"])
            .map(|_| ())
    }

    /// Stops the server at once (as a crash would), keeping its files; [`LocalCluster::start_again`] brings it back.
    pub fn halt(&self) -> Result<(), LocalError> {
        self.pg_ctl(&["-w", "-m", "immediate", "stop"]).map(|_| ())
    }

    /// Starts a halted server again, on the same port.
    pub fn start_again(&self) -> Result<(), LocalError> {
        self.pg_ctl(&["-w", "-t", "60", "start"]).map(|_| ())
    }

    /// Stops the server and removes its files.
    pub fn stop(&mut self) {
        if !self.stopped {
            let _ = self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
            self.stopped = true;
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A random password of letters and digits.
pub fn random_password() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    while out.len() < 24 {
        let mut h = RandomState::new().build_hasher();
        h.write_usize(out.len());
        let n = h.finish();
        out.push_str(&format!("{n:x}"));
    }
    out.truncate(24);
    format!("cut{out}")
}
