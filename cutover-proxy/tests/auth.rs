//! Server-side client authentication, driven by rust-postgres' client implementation.

use bytes::BytesMut;
use cutover_proxy::auth::*;
use cutover_proxy::codec;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use proptest::prelude::*;

/// The body of a SASLInitialResponse, as a client sends it.
fn initial_response(mechanism: &str, data: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    codec::sasl_initial_response(&mut buf, mechanism, data);
    let frame = codec::decode_frame(&mut buf).unwrap().unwrap();
    frame.body().to_vec()
}

/// Runs a whole exchange: the client knows `client_password`, the server `server`.
/// Returns the server's verdict and, if it accepted, whether the client accepted the server.
fn exchange(
    server: &mut ScramServer,
    client_password: &str,
    binding: ChannelBinding,
) -> Result<std::io::Result<()>, AuthError> {
    let mut client = ScramSha256::new(client_password.as_bytes(), binding);
    let server_first = server.client_first(&initial_response(SCRAM_SHA_256, client.message()))?;
    client
        .update(&server_first)
        .expect("the client accepts the server-first message");
    let server_final = server.client_final(client.message())?;
    Ok(client.finish(&server_final))
}

#[test]
fn scram_right_password_authenticates_both_ways() {
    for password in ["secret", "", "p@ss w0rd,=;\"'\\", "tab\there"] {
        let mut server = ScramServer::new(password);
        let client_verdict = exchange(&mut server, password, ChannelBinding::unsupported())
            .unwrap_or_else(|e| panic!("server refused {password:?}: {e}"));
        client_verdict
            .unwrap_or_else(|e| panic!("client refused the server for {password:?}: {e}"));
    }
}

/// Passwords SASLprep changes (a ligature NFKC unfolds, a non-breaking space, a soft hyphen
/// it removes) and one it refuses (a control character): the proxy derives what the client
/// derives, as PostgreSQL does.
#[test]
fn scram_non_ascii_passwords_are_prepared_as_clients_prepare_them() {
    for password in [
        "pa\u{fb01}le",
        "sp\u{a0}ace",
        "soft\u{ad}hyphen",
        "žluťoučký kůň",
        "bell\u{7}",
    ] {
        let mut server = ScramServer::new(password);
        let client_verdict = exchange(&mut server, password, ChannelBinding::unsupported())
            .unwrap_or_else(|e| panic!("server refused {password:?}: {e}"));
        client_verdict
            .unwrap_or_else(|e| panic!("client refused the server for {password:?}: {e}"));
    }
    // What they map to is the same password: "pa\u{fb01}le" is "pafile" after SASLprep.
    let mut server = ScramServer::new("pa\u{fb01}le");
    assert!(exchange(&mut server, "pafile", ChannelBinding::unsupported()).is_ok());
}

#[test]
fn scram_accepts_gs2_flag_y() {
    let mut server = ScramServer::new("secret");
    exchange(&mut server, "secret", ChannelBinding::unrequested())
        .unwrap()
        .unwrap();
}

#[test]
fn scram_wrong_password_is_refused() {
    let mut server = ScramServer::new("secret");
    let verdict = exchange(&mut server, "Secret", ChannelBinding::unsupported());
    assert!(
        matches!(verdict, Err(AuthError::WrongPassword)),
        "{verdict:?}"
    );
    assert_eq!(AuthError::WrongPassword.sqlstate(), "28P01");
    assert_eq!(
        AuthError::WrongPassword.to_string(),
        "password authentication failed: the password the client sent does not match the one in the plan"
    );
}

#[test]
fn scram_secret_serves_many_sessions_with_fresh_nonces() {
    let secret = ScramSecret::new("secret");
    let mut server_firsts = Vec::new();
    for _ in 0..3 {
        let mut server = ScramServer::with_secret(secret.clone());
        let mut client = ScramSha256::new(b"secret", ChannelBinding::unsupported());
        let server_first = server
            .client_first(&initial_response(SCRAM_SHA_256, client.message()))
            .unwrap();
        client.update(&server_first).unwrap();
        let server_final = server.client_final(client.message()).unwrap();
        client.finish(&server_final).unwrap();
        server_firsts.push(String::from_utf8(server_first).unwrap());
    }
    // Same salt and iterations, different nonces.
    let tail = |s: &str| s[s.find(",s=").unwrap()..].to_owned();
    assert_eq!(tail(&server_firsts[0]), tail(&server_firsts[1]));
    assert!(server_firsts[0].ends_with(",i=4096"));
    assert_ne!(server_firsts[0], server_firsts[1]);
    assert_ne!(server_firsts[1], server_firsts[2]);
}

#[test]
fn scram_server_first_has_the_expected_shape() {
    let mut server = ScramServer::new("secret");
    let server_first = server
        .client_first(&initial_response(
            SCRAM_SHA_256,
            b"n,,n=ignored,r=clientnonce",
        ))
        .unwrap();
    let server_first = String::from_utf8(server_first).unwrap();
    let parts: Vec<&str> = server_first.split(',').collect();
    assert_eq!(parts.len(), 3, "{server_first}");
    let nonce = parts[0].strip_prefix("r=clientnonce").unwrap();
    assert_eq!(nonce.len(), 24, "18 random bytes in base64: {nonce}");
    let salt = parts[1].strip_prefix("s=").unwrap();
    assert_eq!(salt.len(), 24, "16 bytes in base64: {salt}");
    assert_eq!(parts[2], "i=4096");
}

fn unsupported(body: &[u8]) -> String {
    match ScramServer::new("secret").client_first(body) {
        Err(AuthError::Unsupported(reason)) => reason,
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

fn malformed_first(body: &[u8]) -> String {
    match ScramServer::new("secret").client_first(body) {
        Err(e @ AuthError::Malformed(_)) => {
            assert_eq!(e.sqlstate(), "08P01");
            e.to_string()
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn scram_refuses_what_it_does_not_support() {
    let cbind = initial_response(SCRAM_SHA_256, b"p=tls-server-end-point,,n=,r=abc");
    assert!(unsupported(&cbind).contains("channel binding"));
    let plus = initial_response("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc");
    assert!(unsupported(&plus).contains("SCRAM-SHA-256-PLUS"));
    assert_eq!(
        unsupported(&initial_response("PLAIN", b"\0user\0pw")),
        "SASL mechanism \"PLAIN\" is not offered; use SCRAM-SHA-256"
    );
    let authzid = initial_response(SCRAM_SHA_256, b"n,a=admin,n=,r=abc");
    assert!(unsupported(&authzid).contains("authorization identity"));
    let mext = initial_response(SCRAM_SHA_256, b"n,,m=ext,n=,r=abc");
    assert!(unsupported(&mext).contains("m="));
}

#[test]
fn scram_rejects_malformed_client_first() {
    let no_data = [b"SCRAM-SHA-256\0".as_slice(), &(-1i32).to_be_bytes()].concat();
    assert_eq!(
        malformed_first(&no_data),
        "malformed authentication message from the client: SASLInitialResponse carries no client-first message"
    );
    assert!(malformed_first(b"SCRAM-SHA-256").contains("NUL terminator"));
    for data in [
        &b""[..],
        b"n,,",
        b"n,",
        b"x,,n=,r=abc",
        b"n,b=1,n=,r=abc",
        b"n,,r=abc",
        b"n,,n=,",
        b"n,,n=,r=",
        b"n,,n=,x=abc",
        b"n,,n=,r=ab c",
        b"n,,n=,r=\xff",
    ] {
        malformed_first(&initial_response(SCRAM_SHA_256, data));
    }
}

/// A server that has answered a client-first message, and the client nonce + server nonce.
fn server_after_first(password: &str) -> (ScramServer, String) {
    let mut server = ScramServer::new(password);
    let server_first = server
        .client_first(&initial_response(SCRAM_SHA_256, b"n,,n=,r=clientnonce"))
        .unwrap();
    let server_first = String::from_utf8(server_first).unwrap();
    let nonce = server_first.split(',').next().unwrap()[2..].to_owned();
    (server, nonce)
}

#[test]
fn scram_rejects_malformed_client_final() {
    let proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    let cases = |nonce: &str| {
        vec![
            (format!("c=biws,r={nonce}"), "does not end with a proof"),
            (format!("c=eSws,r={nonce},{proof}"), "channel binding"),
            (format!("r={nonce},{proof}"), "channel binding"),
            (format!("c=biws,r={nonce}x,{proof}"), "nonce"),
            (format!("c=biws,{proof}"), "nonce"),
            (format!("c=biws,r={nonce},p=abc"), "proof"),
            (format!("c=biws,r={nonce},p=AAAA"), "proof"),
            (format!("c=biws,r={nonce},p=!!!"), "proof"),
            ("\u{0}\u{1}".to_string(), "does not end with a proof"),
        ]
    };
    for (message, expected) in cases("NONCE") {
        let (mut server, nonce) = server_after_first("secret");
        let message = message.replace("NONCE", &nonce);
        match server.client_final(message.as_bytes()) {
            Err(AuthError::Malformed(reason)) => {
                assert!(reason.contains(expected), "{message}: {reason}")
            }
            other => panic!("{message}: expected Malformed, got {other:?}"),
        }
    }
    let (mut server, _) = server_after_first("secret");
    assert!(matches!(
        server.client_final(b"c=biws,\xff"),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn scram_extensions_are_ignored_but_a_bad_proof_still_fails() {
    let (mut server, nonce) = server_after_first("secret");
    let message = format!("c=biws,r={nonce},x=ext,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
    assert!(matches!(
        server.client_final(message.as_bytes()),
        Err(AuthError::WrongPassword)
    ));
}

#[test]
fn scram_messages_out_of_order_are_refused() {
    let mut server = ScramServer::new("secret");
    assert!(matches!(
        server.client_final(b"c=biws,r=x,p=y"),
        Err(AuthError::Malformed(_))
    ));

    let (mut server, _) = server_after_first("secret");
    let again = server.client_first(&initial_response(SCRAM_SHA_256, b"n,,n=,r=abc"));
    assert!(matches!(again, Err(AuthError::Malformed(_))));

    let mut server = ScramServer::new("secret");
    exchange(&mut server, "secret", ChannelBinding::unsupported())
        .unwrap()
        .unwrap();
    assert!(matches!(
        server.client_final(b"c=biws,r=x,p=y"),
        Err(AuthError::Malformed(_))
    ));

    // After an error the exchange is over, even for a message that would have been right.
    let mut server = ScramServer::new("secret");
    assert!(server.client_first(b"garbage").is_err());
    let client = ScramSha256::new(b"secret", ChannelBinding::unsupported());
    assert!(server
        .client_first(&initial_response(SCRAM_SHA_256, client.message()))
        .is_err());
}

#[test]
fn debug_and_errors_never_show_the_password() {
    let password = "hunter2-very-secret";
    let (server, _) = server_after_first(password);
    let debug = format!("{server:?} {:?}", ScramSecret::new(password));
    assert!(!debug.contains(password), "{debug}");
    assert!(debug.contains("iterations: 4096"), "{debug}");
    let mut server = ScramServer::new(password);
    let verdict = exchange(&mut server, "wrong", ChannelBinding::unsupported());
    let shown = format!("{verdict:?} {}", verdict.as_ref().unwrap_err());
    assert!(
        !shown.contains(password) && !shown.contains("wrong\""),
        "{shown}"
    );
}

#[test]
fn md5_check_agrees_with_rust_postgres() {
    for (user, password) in [("app", "secret"), ("", ""), ("üser", "pässword")] {
        let salt = md5_salt();
        let response = md5_hash(user.as_bytes(), password.as_bytes(), salt);
        assert_eq!(md5_response(user, password, salt), response);
        assert!(md5_check(user, password, salt, response.as_bytes()));
        let with_nul = [response.as_bytes(), b"\0"].concat();
        assert!(md5_check(user, password, salt, &with_nul));

        assert!(!md5_check(user, "other", salt, response.as_bytes()));
        assert!(!md5_check("other", password, salt, response.as_bytes()));
        let other_salt = salt.map(|b| b.wrapping_add(1));
        assert!(!md5_check(user, password, other_salt, response.as_bytes()));
        assert!(!md5_check(user, password, salt, &response.as_bytes()[..34]));
        assert!(!md5_check(
            user,
            password,
            salt,
            response.to_uppercase().as_bytes()
        ));
        assert!(!md5_check(user, password, salt, b""));
    }
}

#[test]
fn md5_salts_differ() {
    let salts: std::collections::HashSet<[u8; 4]> = (0..16).map(|_| md5_salt()).collect();
    assert!(salts.len() > 1);
}

#[test]
fn cleartext_check_compares_the_password() {
    assert!(cleartext_check("secret", b"secret\0"));
    assert!(cleartext_check("secret", b"secret"));
    assert!(!cleartext_check("secret", b"secret\0\0"));
    assert!(!cleartext_check("secret", b"Secret\0"));
    assert!(!cleartext_check("secret", b""));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_client_first_never_panics(
        mechanism in prop_oneof![Just(SCRAM_SHA_256.to_string()), "\\PC{0,20}"],
        data in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..80),
            "[nyp]{0,1},(a=x)?,(n=[a-z]{0,5})?,?(r=[!-~]{0,10})?(,[a-z]=[a-z]{0,3}){0,2}"
                .prop_map(String::into_bytes),
        ],
        raw in prop::collection::vec(any::<u8>(), 0..80),
        use_raw: bool,
    ) {
        let body = if use_raw { raw } else { initial_response(&mechanism, &data) };
        let _ = ScramServer::with_secret(secret()).client_first(&body);
    }

    #[test]
    fn random_client_final_is_refused_without_panicking(
        data in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..120),
            "(c=(biws|eSws|[A-Za-z0-9+/=]{0,8}))?,?(r=[!-~]{0,10})?(,[a-z]=[a-z]{0,3}){0,2}(,p=[A-Za-z0-9+/=]{0,46})?"
                .prop_map(String::into_bytes),
        ],
    ) {
        let mut server = ScramServer::with_secret(secret());
        server.client_first(&initial_response(SCRAM_SHA_256, b"n,,n=,r=abc")).unwrap();
        prop_assert!(server.client_final(&data).is_err());
    }

    #[test]
    fn random_md5_responses_are_refused(response in prop::collection::vec(any::<u8>(), 0..40)) {
        prop_assert!(!md5_check("app", "secret", [1, 2, 3, 4], &response));
    }
}

/// One secret for all proptest cases: deriving it is the slow part.
fn secret() -> ScramSecret {
    static SECRET: std::sync::OnceLock<ScramSecret> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| ScramSecret::new("secret")).clone()
}
