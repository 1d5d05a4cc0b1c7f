//! TLS through rustls with libpq's sslmode: against a real server serving a certificate
//! signed by a test CA.

use cutover_core::ConnString;
use cutover_pg::local::ClusterOptions;
use cutover_pg::{connect, Side};
use cutover_testkit::Pg;

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA and a server certificate for `names`, plus an unrelated CA.
    fn new(names: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
        let other_key = rcgen::KeyPair::generate().unwrap();
        let mut other = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        other.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let other_cert = other.self_signed(&other_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("other-ca.pem"), other_cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.crt"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

fn url(pg: &Pg, params: &str) -> ConnString {
    let base = pg.url();
    ConnString::parse(&format!(
        "postgres://postgres@127.0.0.1:{}/{}?{params}",
        base.port, base.dbname
    ))
    .unwrap()
    .with_password(base.password().cloned())
}

async fn ssl_in_use(cs: &ConnString) -> bool {
    let c = connect(cs, Side::Target)
        .await
        .unwrap_or_else(|e| panic!("{cs}: {e}"));
    c.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn sslmodes_are_honoured() {
    let pki = Pki::new(&["127.0.0.1", "localhost"]);
    let tls = Some((pki.path("server.crt"), pki.path("server.key")));
    let pg = Pg::start(
        ClusterOptions {
            tls,
            ..Default::default()
        },
        Side::Target,
    )
    .await;
    let ca = pki.path("ca.pem").display().to_string();
    let other = pki.path("other-ca.pem").display().to_string();

    assert!(!ssl_in_use(&url(&pg, "sslmode=disable")).await);
    assert!(ssl_in_use(&url(&pg, "sslmode=prefer")).await);
    assert!(ssl_in_use(&url(&pg, "sslmode=require")).await);
    assert!(ssl_in_use(&url(&pg, &format!("sslmode=verify-ca&sslrootcert={ca}"))).await);
    assert!(ssl_in_use(&url(&pg, &format!("sslmode=verify-full&sslrootcert={ca}"))).await);

    let err = connect(
        &url(&pg, &format!("sslmode=verify-full&sslrootcert={other}")),
        Side::Target,
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("TLS certificate rejected"), "{text}");
    assert!(text.ends_with("give the right CA with sslrootcert=... in target.url, or use sslmode=require to skip verification"), "{text}");

    let err = connect(
        &url(&pg, "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"),
        Side::Target,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot read sslrootcert /nonexistent/ca.pem"),
        "{err}"
    );
}

#[tokio::test]
async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let pki = Pki::new(&["db.example.com"]);
    let tls = Some((pki.path("server.crt"), pki.path("server.key")));
    let pg = Pg::start(
        ClusterOptions {
            tls,
            ..Default::default()
        },
        Side::Target,
    )
    .await;
    let ca = pki.path("ca.pem").display().to_string();
    assert!(ssl_in_use(&url(&pg, &format!("sslmode=verify-ca&sslrootcert={ca}"))).await);
    let err = connect(
        &url(&pg, &format!("sslmode=verify-full&sslrootcert={ca}")),
        Side::Target,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("TLS certificate rejected"),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_without_tls_is_refused_when_tls_is_required() {
    let pg = Pg::start(ClusterOptions::default(), Side::Source).await;
    let err = connect(&url(&pg, "sslmode=require"), Side::Source)
        .await
        .unwrap_err();
    assert!(
        err.to_string().ends_with("the server does not accept TLS connections; use sslmode=disable in source.url only on a trusted network, or enable ssl on the server"),
        "{err}"
    );
    assert!(!ssl_in_use(&url(&pg, "sslmode=prefer")).await);
}
