//! Client authentication, server side: SCRAM-SHA-256 and md5.
//!
//! The proxy authenticates its clients itself, against the users and passwords in the plan:
//! a client's session outlives the server it started on (cutover moves it to another one),
//! so the client cannot authenticate against "the" server. The proxy logs into each server
//! with its own credentials.
//!
//! # SCRAM-SHA-256 (RFC 5802, RFC 7677), as PostgreSQL does it
//!
//! 1. The proxy sends AuthenticationSASL offering [`SCRAM_SHA_256`].
//! 2. The client answers with a SASLInitialResponse; [`ScramServer::client_first`] returns
//!    the server-first message for AuthenticationSASLContinue.
//! 3. The client answers with a SASLResponse; [`ScramServer::client_final`] checks the proof
//!    and returns the server-final message for AuthenticationSASLFinal, to be followed by
//!    AuthenticationOk.
//!
//! As in PostgreSQL, the user name inside the SCRAM messages is ignored (the StartupMessage's
//! user is the one that counts), and an authorization identity (`a=`) is refused. Channel
//! binding (SCRAM-SHA-256-PLUS, gs2 flag `p=`) is not supported; the flag `y` ("I could bind
//! but think you cannot") is accepted, because the proxy never offers the -PLUS mechanism,
//! so it is not a downgrade.
//!
//! The password is prepared with SASLprep (RFC 4013, the `stringprep` crate) before it is
//! hashed, as PostgreSQL does when it stores a SCRAM verifier and as libpq and rust-postgres
//! do on their side: a non-ASCII password (not in NFKC, with a non-ASCII space or a soft
//! hyphen) derives the same keys everywhere. A password SASLprep refuses (ASCII control
//! characters, unassigned code points) is used as its raw UTF-8 bytes, as they all do too.
//!
//! # md5
//!
//! [`md5_check`] verifies the response to AuthenticationMD5Password for a fresh
//! [`md5_salt`]. It exists for old clients; prefer SCRAM.
//!
//! # Secrets
//!
//! A [`ScramServer`] keeps no password, only the derived StoredKey and ServerKey, and its
//! `Debug` output shows neither. No error carries a password or a key. Comparisons of
//! secret-derived values take a time that does not depend on where they differ.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::codec;

/// The only SASL mechanism the proxy offers.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// PBKDF2 iterations for a new secret (PostgreSQL's default `scram_iterations`).
pub const SCRAM_ITERATIONS: u32 = 4096;
const SALT_LEN: usize = 16;
/// Random bytes the server adds to the client's nonce (PostgreSQL's `SCRAM_RAW_NONCE_LEN`).
const SERVER_NONCE_LEN: usize = 18;

const NO_PLUS: &str = "channel binding (SCRAM-SHA-256-PLUS) is not offered; \
    connect with channel_binding=prefer or disable";
const NO_CHANNEL_BINDING: &str = "channel binding (gs2 flag p=) is not supported; \
    connect with channel_binding=prefer or disable";

/// Why a client was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password authentication failed: the password the client sent does not match the one in the plan")]
    WrongPassword,
    #[error("malformed authentication message from the client: {0}")]
    Malformed(String),
    #[error("unsupported authentication request from the client: {0}")]
    Unsupported(String),
}

impl AuthError {
    /// The SQLSTATE to send the client in the FATAL ErrorResponse, as PostgreSQL does:
    /// `28P01` (invalid_password) or `08P01` (protocol_violation).
    pub fn sqlstate(&self) -> &'static str {
        match self {
            AuthError::WrongPassword => "28P01",
            AuthError::Malformed(_) | AuthError::Unsupported(_) => "08P01",
        }
    }
}

/// What a SCRAM server needs to know about a password: salt, iteration count, StoredKey and
/// ServerKey. Deriving it costs [`SCRAM_ITERATIONS`] rounds of HMAC, so derive it once per
/// user and reuse it for every session with [`ScramServer::with_secret`].
#[derive(Clone)]
pub struct ScramSecret {
    salt: [u8; SALT_LEN],
    iterations: u32,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl ScramSecret {
    /// Derives a secret from `password` with a random 16-byte salt and 4096 iterations.
    pub fn new(password: &str) -> ScramSecret {
        let mut salt = [0; SALT_LEN];
        rand::fill(&mut salt);
        let prepared =
            stringprep::saslprep(password).unwrap_or(std::borrow::Cow::Borrowed(password));
        ScramSecret::derive(prepared.as_bytes(), salt, SCRAM_ITERATIONS)
    }

    fn derive(password: &[u8], salt: [u8; SALT_LEN], iterations: u32) -> ScramSecret {
        let salted = hi(password, &salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        ScramSecret {
            salt,
            iterations,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }
}

impl fmt::Debug for ScramSecret {
    /// Shows the iteration count only: the keys are password equivalents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// The server side of one SCRAM-SHA-256 exchange. Each method may be called once, in order;
/// after an error the exchange is over and every later call fails.
pub struct ScramServer {
    secret: ScramSecret,
    state: State,
}

enum State {
    AwaitingClientFirst,
    AwaitingClientFinal {
        client_first_bare: String,
        server_first: String,
        /// Client nonce + server nonce.
        nonce: String,
        /// The `c=` value the client must send: base64 of the gs2 header.
        channel_binding: String,
    },
    Done,
}

impl ScramServer {
    /// A server for `password` with a fresh random salt (see [`ScramSecret::new`]).
    pub fn new(password: &str) -> ScramServer {
        ScramServer::with_secret(ScramSecret::new(password))
    }

    /// A server for a secret derived earlier.
    pub fn with_secret(secret: ScramSecret) -> ScramServer {
        ScramServer {
            secret,
            state: State::AwaitingClientFirst,
        }
    }

    /// Handles SASLInitialResponse body: mechanism name (cstring) + i32 len +
    /// client-first-message. Returns server-first-message bytes to send in
    /// AuthenticationSASLContinue.
    pub fn client_first(
        &mut self,
        sasl_initial_response_body: &[u8],
    ) -> Result<Vec<u8>, AuthError> {
        let mut nonce = [0; SERVER_NONCE_LEN];
        rand::fill(&mut nonce);
        self.client_first_with_nonce(sasl_initial_response_body, &STANDARD.encode(nonce))
    }

    fn client_first_with_nonce(
        &mut self,
        body: &[u8],
        server_nonce: &str,
    ) -> Result<Vec<u8>, AuthError> {
        let State::AwaitingClientFirst = std::mem::replace(&mut self.state, State::Done) else {
            return Err(out_of_order());
        };
        let initial =
            codec::parse_sasl_initial_response(body).map_err(|e| malformed(e.to_string()))?;
        match initial.mechanism {
            SCRAM_SHA_256 => {}
            "SCRAM-SHA-256-PLUS" => return Err(unsupported(NO_PLUS)),
            other => {
                return Err(AuthError::Unsupported(format!(
                    "SASL mechanism {:?} is not offered; use {SCRAM_SHA_256}",
                    snippet(other)
                )))
            }
        }
        let message = initial
            .data
            .ok_or_else(|| malformed("SASLInitialResponse carries no client-first message"))?;
        let message = std::str::from_utf8(message)
            .map_err(|_| malformed("client-first message is not UTF-8"))?;

        // gs2-header = gs2-cbind-flag "," [authzid] ","
        let mut parts = message.splitn(3, ',');
        let (flag, authzid, bare) = match (parts.next(), parts.next(), parts.next()) {
            (Some(flag), Some(authzid), Some(bare)) => (flag, authzid, bare),
            _ => return Err(malformed("client-first message has no gs2 header")),
        };
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(unsupported(NO_CHANNEL_BINDING)),
            _ => return Err(malformed("gs2 channel binding flag is not n, y or p=")),
        }
        match authzid {
            "" => {}
            a if a.starts_with("a=") => {
                return Err(unsupported(
                    "an authorization identity (a=) is not supported; leave it out",
                ))
            }
            _ => return Err(malformed("gs2 header has an unknown attribute")),
        }

        // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        let mut attrs = bare.split(',');
        match attrs.next() {
            Some(a) if a.starts_with("m=") => {
                return Err(unsupported(
                    "mandatory SCRAM extensions (m=) are not supported",
                ))
            }
            Some(a) if a.starts_with("n=") => {} // ignored: the StartupMessage's user counts
            _ => return Err(malformed("client-first message has no user name (n=)")),
        }
        let client_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or_else(|| malformed("client-first message has no nonce (r=)"))?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(malformed(
                "client nonce is empty or has non-printable characters",
            ));
        }

        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(self.secret.salt),
            self.secret.iterations
        );
        self.state = State::AwaitingClientFinal {
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
            channel_binding: STANDARD.encode(format!("{flag},,")),
        };
        Ok(server_first.into_bytes())
    }

    /// Handles the SASLResponse body (client-final-message). Returns server-final-message for
    /// AuthenticationSASLFinal, or AuthError::WrongPassword.
    pub fn client_final(&mut self, body: &[u8]) -> Result<Vec<u8>, AuthError> {
        let State::AwaitingClientFinal {
            client_first_bare,
            server_first,
            nonce,
            channel_binding,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(out_of_order());
        };
        let message = std::str::from_utf8(body)
            .map_err(|_| malformed("client-final message is not UTF-8"))?;

        // client-final-message = channel-binding "," nonce ["," extensions] "," proof
        let (without_proof, proof) = message
            .rsplit_once(',')
            .and_then(|(rest, proof)| Some((rest, proof.strip_prefix("p=")?)))
            .ok_or_else(|| malformed("client-final message does not end with a proof (p=)"))?;
        let mut attrs = without_proof.split(',');
        if attrs.next().and_then(|a| a.strip_prefix("c=")) != Some(channel_binding.as_str()) {
            return Err(malformed(
                "channel binding (c=) does not match the gs2 header",
            ));
        }
        if attrs.next().and_then(|a| a.strip_prefix("r=")) != Some(nonce.as_str()) {
            return Err(malformed(
                "nonce (r=) does not match the one of this exchange",
            ));
        }
        let proof: [u8; 32] = STANDARD
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| malformed("proof (p=) is not 32 bytes of base64"))?;

        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.secret.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = proof;
        client_key
            .iter_mut()
            .zip(client_signature)
            .for_each(|(k, s)| *k ^= s);
        if !ct_eq(&Sha256::digest(client_key), &self.secret.stored_key) {
            return Err(AuthError::WrongPassword);
        }
        let server_signature = hmac(&self.secret.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", STANDARD.encode(server_signature)).into_bytes())
    }
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::AwaitingClientFirst => "awaiting client-first",
            State::AwaitingClientFinal { .. } => "awaiting client-final",
            State::Done => "done",
        };
        f.debug_struct("ScramServer")
            .field("secret", &self.secret)
            .field("state", &state)
            .finish()
    }
}

/// A random salt for AuthenticationMD5Password.
pub fn md5_salt() -> [u8; 4] {
    rand::random()
}

/// The response a client sends to AuthenticationMD5Password:
/// `"md5" + hex(md5(hex(md5(password + user)) + salt))`.
pub fn md5_response(user: &str, password: &str, salt: [u8; 4]) -> String {
    postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt)
}

/// Checks a PasswordMessage body answering AuthenticationMD5Password with `salt`; the
/// response may be NUL-terminated. Constant time.
pub fn md5_check(user: &str, password: &str, salt: [u8; 4], response: &[u8]) -> bool {
    let response = response.strip_suffix(&[0]).unwrap_or(response);
    ct_eq(md5_response(user, password, salt).as_bytes(), response)
}

/// Checks a PasswordMessage body answering AuthenticationCleartextPassword; the response may
/// be NUL-terminated. Compares hashes, so the time taken reveals neither content nor length.
pub fn cleartext_check(password: &str, response: &[u8]) -> bool {
    let response = response.strip_suffix(&[0]).unwrap_or(response);
    ct_eq(&Sha256::digest(password), &Sha256::digest(response))
}

/// `Hi()` of RFC 5802: PBKDF2 with HMAC-SHA-256, one block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let prf =
        <Hmac<Sha256> as KeyInit>::new_from_slice(password).expect("HMAC takes keys of any length");
    let mut u: [u8; 32] = prf
        .clone()
        .chain_update(salt)
        .chain_update(1u32.to_be_bytes())
        .finalize()
        .into_bytes()
        .into();
    let mut out = u;
    for _ in 1..iterations {
        u = prf.clone().chain_update(u).finalize().into_bytes().into();
        out.iter_mut().zip(u).for_each(|(o, u)| *o ^= u);
    }
    out
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    parts.iter().for_each(|p| mac.update(p));
    mac.finalize().into_bytes().into()
}

/// Equality whose time depends only on the lengths.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// At most 64 characters of client input, for error messages.
fn snippet(s: &str) -> String {
    s.chars().take(64).collect()
}

fn malformed(reason: impl Into<String>) -> AuthError {
    AuthError::Malformed(reason.into())
}

fn unsupported(reason: &str) -> AuthError {
    AuthError::Unsupported(reason.to_owned())
}

fn out_of_order() -> AuthError {
    malformed("SCRAM message out of order: the exchange is over or has not started")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example exchange of RFC 7677, section 3 (user "user", password "pencil").
    #[test]
    fn rfc7677_example() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let secret = ScramSecret::derive(b"pencil", salt.try_into().unwrap(), 4096);
        let mut server = ScramServer::with_secret(secret);
        let mut initial = bytes::BytesMut::new();
        codec::sasl_initial_response(
            &mut initial,
            SCRAM_SHA_256,
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        );
        let server_first = server
            .client_first_with_nonce(&initial[5..], "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
            .unwrap();
        assert_eq!(
            server_first,
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let server_final = server
            .client_final(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        assert_eq!(
            server_final,
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn ct_eq_compares_contents_and_lengths() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }
}
