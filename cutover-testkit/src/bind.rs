//! A BIND primary on a loopback port with a TSIG key, for one test: the RFC 2136 target the
//! DNS provider tests and the migration tests change records on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::free_port;

pub const ZONE: &str = "example.test";
pub const KEY_NAME: &str = "cutover-test-key";
/// base64 of 32 bytes; only this test's server knows it.
pub const KEY_SECRET: &str = "c2VjcmV0LWtleS1vZi10aGUtdGVzdC1zZXJ2ZXItMzI=";

pub struct Bind {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn named() -> PathBuf {
    for p in ["/usr/sbin/named", "/usr/bin/named", "/usr/local/sbin/named"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("BIND's named is not installed; install it with `apt-get install -y bind9` (the CI script does)");
}

impl Bind {
    /// Starts named with the zone `example.test`: `www` has A 192.0.2.10 with TTL 3600.
    pub async fn start() -> Bind {
        Bind::start_with_ttl(3600).await
    }

    /// The same with `www`'s TTL: a move waits out the old TTL before it changes DNS.
    pub async fn start_with_ttl(www_ttl: u32) -> Bind {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = free_port();
        std::fs::write(
            d.join("zone.db"),
            format!(
                "$TTL 300\n@ IN SOA ns1.{ZONE}. admin.{ZONE}. 1 3600 600 86400 120\n@ IN NS ns1.{ZONE}.\nns1 IN A 127.0.0.1\nwww {www_ttl} IN A 192.0.2.10\n"
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("named.conf"),
            format!(
                r#"options {{
    directory "{dir}";
    pid-file "{dir}/named.pid";
    session-keyfile "{dir}/session.key";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    allow-query {{ any; }};
}};
controls {{ }};
key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{KEY_SECRET}"; }};
zone "{ZONE}" {{
    type primary;
    file "{dir}/zone.db";
    update-policy {{ grant {KEY_NAME} zonesub ANY; }};
}};
"#,
                dir = d.display()
            ),
        )
        .unwrap();
        // named runs as whoever runs the test, in a folder that user owns.
        let child = Command::new(named())
            .args(["-g", "-c"])
            .arg(d.join("named.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("named.log")).unwrap())
            .spawn()
            .expect("start named");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut bind = Bind {
            addr,
            child,
            _dir: dir,
        };
        for _ in 0..300 {
            if cutover_traffic::dns::query::negative_ttl(addr, ZONE)
                .await
                .is_ok()
            {
                return bind;
            }
            if let Ok(Some(status)) = bind.child.try_wait() {
                let log =
                    std::fs::read_to_string(bind._dir.path().join("named.log")).unwrap_or_default();
                panic!("named exited ({status}):\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("named did not answer on {addr}");
    }
}
