//! `cutover dns` against a real BIND started by the test (RFC 2136 with TSIG).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cutover_testkit::free_port;

const KEY: &str = "Y3V0b3Zlci1jbGktdGVzdC1rZXktc2VjcmV0LTEyMzQ=";

/// named, its folder (removed on drop), its address.
struct Bind(Child, #[allow(dead_code)] tempfile::TempDir, SocketAddr);
impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bind() -> Bind {
    let named = ["/usr/sbin/named", "/usr/bin/named"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("BIND's named is not installed; install it with `apt-get install -y bind9`");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let port = free_port();
    std::fs::write(
        dir.path().join("zone.db"),
        "$TTL 300\n@ IN SOA ns1.example.test. admin.example.test. 1 3600 600 86400 120\n@ IN NS ns1\nns1 IN A 127.0.0.1\nwww 1800 IN A 192.0.2.10\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("named.conf"),
        format!("options {{ directory \"{d}\"; pid-file \"{d}/named.pid\"; session-keyfile \"{d}/s.key\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; recursion no; }};\ncontrols {{ }};\nkey \"cli-key\" {{ algorithm hmac-sha256; secret \"{KEY}\"; }};\nzone \"example.test\" {{ type primary; file \"{d}/zone.db\"; update-policy {{ grant cli-key zonesub ANY; }}; }};\n"),
    )
    .unwrap();
    let child = Command::new(named)
        .args(["-g", "-c"])
        .arg(dir.path().join("named.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Bind(child, dir, format!("127.0.0.1:{port}").parse().unwrap())
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cutover(dir: &std::path::Path, secret: &str, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("--plan")
        .arg(dir.join("cutover.toml"))
        .args(args)
        .env("SRC_URL", "postgres://app@127.0.0.1:1/src")
        .env("DST_URL", "postgres://app@127.0.0.1:1/dst")
        .env("TSIG_SECRET", secret)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let o = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !o.stdout.contains(secret) && !o.stderr.contains(secret),
        "the TSIG secret leaked:\n{}{}",
        o.stdout,
        o.stderr
    );
    o
}

#[test]
fn lower_ttl_switch_and_verify_through_the_command_line() {
    let b = bind();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cutover.toml"),
        format!("[source]\nurl = \"${{SRC_URL}}\"\n[target]\nurl = \"${{DST_URL}}\"\n\n[dns]\nprovider = \"rfc2136\"\nzone = \"example.test\"\nname = \"www.example.test\"\nold = [\"192.0.2.10\"]\nnew = [\"198.51.100.7\"]\nlow_ttl = \"30s\"\n\n[dns.rfc2136]\nserver = \"{}\"\nkey_name = \"cli-key\"\nsecret = \"${{TSIG_SECRET}}\"\n", b.2),
    )
    .unwrap();
    // named may take a moment to listen.
    let mut first = None;
    for _ in 0..300 {
        let r = cutover(dir.path(), KEY, &["dns", "verify", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        if v[0]["verdict"] == "old" {
            first = Some(v);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = first.expect("named answered");
    assert_eq!(first[0]["ttl"], 1800);

    let r = cutover(dir.path(), KEY, &["dns", "lower-ttl"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.starts_with(
            "lowered the TTL of www.example.test A from 1800s to 30s\nearliest safe cutover: "
        ),
        "{}",
        r.stdout
    );

    let r = cutover(dir.path(), KEY, &["dns", "switch"]);
    assert_eq!(r.code, 1);
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    assert!(
        errors[0].starts_with(
            "error: too early: resolvers may cache the old answer of www.example.test for"
        ),
        "{}",
        errors[0]
    );
    assert!(errors[0].ends_with("wait, or pass --force to strand them"));
    assert_eq!(
        cutover(dir.path(), KEY, &["dns", "verify", "--expect", "old"]).code,
        0
    );

    let r = cutover(dir.path(), KEY, &["dns", "switch", "--force"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = cutover(dir.path(), KEY, &["dns", "verify", "--expect", "new"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("authoritative  new   30s  198.51.100.7"),
        "{}",
        r.stdout
    );
    assert_eq!(
        cutover(dir.path(), KEY, &["dns", "verify", "--expect", "old"]).code,
        1
    );

    // A wrong key: one clear line, nothing changed.
    let wrong = "d3JvbmctY2xpLXNlY3JldC13cm9uZy1zZWNyZXQtMTI=";
    let r = cutover(
        dir.path(),
        wrong,
        &["dns", "switch", "--percent", "0", "--force"],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&format!(
            "error: the DNS server {} refused the TSIG key cli-key",
            b.2
        )),
        "{}",
        r.stderr
    );
    assert_eq!(
        cutover(dir.path(), KEY, &["dns", "verify", "--expect", "new"]).code,
        0
    );
}

#[test]
fn a_bad_dns_section_is_refused_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cutover.toml"),
        "[source]\nurl = \"${SRC_URL}\"\n[target]\nurl = \"${DST_URL}\"\n[dns]\nprovider = \"rfc2136\"\nzone = \"example.test\"\nname = \"www.other.test\"\nold = [\"not-an-ip\"]\nnew = [\"198.51.100.7\"]\n[dns.rfc2136]\nserver = \"127.0.0.1:53\"\nkey_name = \"k\"\nsecret = \"inline-secret\"\n",
    )
    .unwrap();
    let r = cutover(dir.path(), KEY, &["dns", "lower-ttl"]);
    assert_eq!(r.code, 1);
    let plan = dir.path().join("cutover.toml").display().to_string();
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!("error: {plan}:8:8: dns.name: www.other.test is not in the zone example.test; set dns.zone to the zone that holds it"),
            format!("error: {plan}:9:8: dns.old: \"not-an-ip\" does not fit record_type A; write addresses for A/AAAA, one host name for CNAME"),
            format!("error: {plan}:14:10: dns.rfc2136.secret: is written inline; keep secrets out of the plan: put it in an environment variable and write \"${{NAME}}\""),
        ]
    );
    assert!(!r.stderr.contains("inline-secret"));
}
