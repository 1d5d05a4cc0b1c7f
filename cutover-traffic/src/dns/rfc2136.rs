//! RFC 2136 dynamic update, signed with TSIG (RFC 8945), for BIND, Knot, PowerDNS and the
//! like.
//!
//! A replacement is one UPDATE message: delete the RRset, then add the new records. A server
//! applies an UPDATE atomically, so resolvers never see the name without an answer. Plain
//! DNS has no weights: this provider switches in one step and refuses partial splits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use cutover_core::plan::RecordKind;
use cutover_core::Secret;
use futures_util::future::BoxFuture;
use hickory_client::client::{Client, ClientHandle};
use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm;
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use hickory_proto::runtime::TokioRuntimeProvider;
use hickory_proto::tcp::TcpClientStream;
use hickory_proto::xfer::{DnsHandle, FirstAnswer};

use super::query::{parse_name, record_type, records_of, to_rdata};
use super::{fqdn, DnsError, DnsProvider, RecordSet};

const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Rfc2136 {
    server: SocketAddr,
    zone: Name,
    key_name: String,
    signer: TSigner,
}

impl Rfc2136 {
    pub fn new(
        server: SocketAddr,
        zone: &str,
        key_name: &str,
        algorithm: &str,
        secret: &Secret,
    ) -> Result<Self, DnsError> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.expose().trim())
            .map_err(|_| {
                DnsError::Refused(
                    "dns.rfc2136.secret is not base64; give the key's secret exactly as the server's key file holds it".into(),
                )
            })?;
        let algorithm = match algorithm {
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => {
                return Err(DnsError::Refused(format!(
                    "TSIG algorithm {other} is not supported; use hmac-sha256, hmac-sha384 or hmac-sha512"
                )))
            }
        };
        let name = Name::from_ascii(fqdn(key_name)).map_err(|_| {
            DnsError::Refused(format!(
                "dns.rfc2136.key_name \"{key_name}\" is not a DNS name; write the key's name as the server knows it"
            ))
        })?;
        let signer = TSigner::new(key, algorithm, name, 300)
            .map_err(|e| DnsError::Refused(format!("cannot use the TSIG key: {e}")))?;
        Ok(Rfc2136 {
            server,
            zone: parse_name(zone)?,
            key_name: key_name.to_string(),
            signer,
        })
    }

    /// A TCP connection to the server whose every message is signed with the key.
    async fn client(&self) -> Result<Client, DnsError> {
        let (stream, handle) = TcpClientStream::new(
            self.server,
            None,
            Some(TIMEOUT),
            TokioRuntimeProvider::new(),
        );
        let (client, background) =
            Client::with_timeout(stream, handle, TIMEOUT, Some(Arc::new(self.signer.clone())))
                .await
                .map_err(|e| self.unreachable(e))?;
        // The exchange's background ends when the last handle of `client` is dropped.
        tokio::spawn(background);
        Ok(client)
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> DnsError {
        DnsError::Unavailable(format!(
            "cannot reach the DNS server {} ({e}); check dns.rfc2136.server and that it listens on TCP",
            self.server
        ))
    }

    /// Maps a failed exchange: a response we cannot verify is the server refusing our key.
    fn exchange_error(&self, e: impl std::fmt::Display) -> DnsError {
        let text = e.to_string();
        let lower = text.to_ascii_lowercase();
        if lower.contains("tsig") || lower.contains("hmac") || lower.contains("notauth") {
            self.key_refused()
        } else {
            self.unreachable(text)
        }
    }

    fn key_refused(&self) -> DnsError {
        DnsError::Auth(format!(
            "the DNS server {} refused the TSIG key {} (unknown key or wrong secret); check dns.rfc2136.key_name, algorithm and the secret it refers to",
            self.server, self.key_name
        ))
    }

    fn check(&self, code: ResponseCode, what: &str) -> Result<(), DnsError> {
        match code {
            ResponseCode::NoError => Ok(()),
            ResponseCode::NotAuth | ResponseCode::BADSIG | ResponseCode::BADKEY => {
                Err(self.key_refused())
            }
            ResponseCode::Refused => Err(DnsError::Refused(format!(
                "the DNS server {} refused to {what}; allow the key {} to update {} in the zone's update-policy",
                self.server, self.key_name, self.zone
            ))),
            ResponseCode::NotZone => Err(DnsError::Refused(format!(
                "the DNS server {} is not authoritative for {}; check dns.zone and dns.rfc2136.server",
                self.server, self.zone
            ))),
            other => Err(DnsError::Unavailable(format!(
                "the DNS server {} answered {other} when asked to {what}",
                self.server
            ))),
        }
    }

    async fn read(&self, name: &str, kind: RecordKind) -> Result<Vec<RecordSet>, DnsError> {
        let mut client = self.client().await?;
        let response = client
            .query(parse_name(name)?, DNSClass::IN, record_type(kind))
            .await
            .map_err(|e| self.exchange_error(e))?;
        match response.response_code() {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            code => self.check(code, "answer a query")?,
        }
        Ok(records_of(response.answers(), name, kind)
            .into_iter()
            .collect())
    }

    async fn write(
        &self,
        name: &str,
        kind: RecordKind,
        sets: &[RecordSet],
    ) -> Result<(), DnsError> {
        if sets.len() > 1 || sets.iter().any(|s| s.weight.is_some()) {
            return Err(DnsError::Unsupported(
                "RFC 2136 has no weighted records; split with the splitter (`cutover traffic serve`, weights_via = \"splitter\") and switch DNS in one step".into(),
            ));
        }
        let owner = parse_name(name)?;
        let rtype = record_type(kind);
        let mut zone = Query::new();
        zone.set_name(self.zone.clone())
            .set_query_class(DNSClass::IN)
            .set_query_type(RecordType::SOA);
        let mut message = Message::new();
        message
            .set_id(rand::random())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Update)
            .set_recursion_desired(false);
        message.add_zone(zone);
        let mut delete = Record::update0(owner.clone(), 0, rtype);
        delete.set_dns_class(DNSClass::ANY);
        message.add_update(delete);
        for set in sets {
            for value in &set.values {
                let mut record = Record::from_rdata(owner.clone(), set.ttl, to_rdata(kind, value)?);
                record.set_dns_class(DNSClass::IN);
                message.add_update(record);
            }
        }
        message
            .extensions_mut()
            .get_or_insert_with(Edns::new)
            .set_max_payload(1232)
            .set_version(0);
        let client = self.client().await?;
        let response = client
            .send(message)
            .first_answer()
            .await
            .map_err(|e| self.exchange_error(e))?;
        self.check(response.response_code(), &format!("update {name}"))
    }
}

impl DnsProvider for Rfc2136 {
    fn name(&self) -> &'static str {
        "rfc2136"
    }

    fn weighted(&self) -> bool {
        false
    }

    fn records<'a>(
        &'a self,
        name: &'a str,
        kind: RecordKind,
    ) -> BoxFuture<'a, Result<Vec<RecordSet>, DnsError>> {
        Box::pin(self.read(name, kind))
    }

    fn replace<'a>(
        &'a self,
        name: &'a str,
        kind: RecordKind,
        sets: &'a [RecordSet],
    ) -> BoxFuture<'a, Result<(), DnsError>> {
        Box::pin(self.write(name, kind, sets))
    }
}
