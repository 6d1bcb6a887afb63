//! From a query's bytes to what the resolver does with it: answer from the name table,
//! forward upstream, or say nothing. Messages are parsed and built with hickory-proto;
//! nothing here panics on any input (fuzzed by `rust/fuzz/fuzz_targets/dns_query.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use hickory_proto::op::ResponseCode;
use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode};
use hickory_proto::rr::rdata::PTR;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use super::table::{Family, Lookup, NameTable};

/// Time to live of local answers (Docker's `respTTL`).
pub const TTL: u32 = 600;
/// Largest answer over UDP without EDNS (RFC 1035).
pub const UDP_MIN: u16 = 512;
/// Largest answer over UDP the resolver sends or advertises (EDNS payload size).
pub const UDP_MAX: u16 = 4096;
/// Largest DNS message over TCP (its two-byte length prefix).
pub const TCP_MAX: u16 = u16::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What to do with a message a sandbox sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not a local name: ask the upstream servers; `limit` is the largest answer the
    /// client takes on its transport.
    Forward { limit: u16 },
    /// Garbage, a response, or not one standard query with one question: no answer.
    Ignore,
}

/// The largest answer the sender of `query` takes over `transport`.
fn limit(query: &Message, transport: Transport) -> u16 {
    match transport {
        Transport::Tcp => TCP_MAX,
        Transport::Udp => query
            .edns
            .as_ref()
            .map_or(UDP_MIN, |edns| edns.max_payload().clamp(UDP_MIN, UDP_MAX)),
    }
}

/// Whether a parsed message is a query the resolver answers at all.
fn is_query(message: &Message) -> bool {
    message.message_type == MessageType::Query
        && message.op_code == OpCode::Query
        && message.queries.len() == 1
}

/// Parses a query sent by a sandbox; `None` for anything but one standard query.
pub fn parse_query(bytes: &[u8]) -> Option<Message> {
    let message = Message::from_vec(bytes).ok()?;
    is_query(&message).then_some(message)
}

/// Decides how to answer `bytes`, sent by `sandbox` over `transport`.
pub fn decide(table: &NameTable, sandbox: &str, bytes: &[u8], transport: Transport) -> Decision {
    let Some(query) = parse_query(bytes) else {
        return Decision::Ignore;
    };
    let limit = limit(&query, transport);
    let question = &query.queries[0];
    if question.query_class() != DNSClass::IN {
        return Decision::Forward { limit };
    }
    let name = lower_name(question.name());
    let kind = question.query_type();
    let mut answers = Vec::new();
    let code = match kind {
        RecordType::PTR => match reverse_address(question.name())
            .and_then(|address| table.reverse(sandbox, address))
            .and_then(|host| Name::from_ascii(format!("{host}.")).ok())
        {
            Some(host) => {
                answers.push(Record::from_rdata(
                    question.name().clone(),
                    TTL,
                    RData::PTR(PTR(host)),
                ));
                ResponseCode::NoError
            }
            None => return Decision::Forward { limit },
        },
        _ => {
            let family = if kind == RecordType::AAAA {
                Family::V6
            } else {
                Family::V4
            };
            match table.lookup(sandbox, &name, family) {
                Lookup::Found(addresses) => {
                    // Other types of a local name (MX, TXT, ...): the name exists, with
                    // no records of that type.
                    if matches!(kind, RecordType::A | RecordType::AAAA) {
                        answers.extend(addresses.into_iter().map(|address| {
                            Record::from_rdata(question.name().clone(), TTL, RData::from(address))
                        }));
                    }
                    ResponseCode::NoError
                }
                Lookup::Unknown => ResponseCode::NXDomain,
                Lookup::Elsewhere => return Decision::Forward { limit },
            }
        }
    };
    let mut response = reply_to(&query, code);
    response.metadata.authoritative = true;
    response.answers = answers;
    encode(&response, limit).map_or(Decision::Ignore, Decision::Reply)
}

/// An empty response to `query` with `code` (the question and EDNS echoed).
fn reply_to(query: &Message, code: ResponseCode) -> Message {
    let mut response = Message::response(query.id, query.op_code);
    response.metadata = Metadata::response_from_request(&query.metadata);
    response.metadata.recursion_available = true;
    response.metadata.response_code = code;
    response.queries = query.queries.clone();
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_MAX);
        response.edns = Some(edns);
    }
    response
}

/// `code` (SERVFAIL, REFUSED) for the query in `bytes`; `None` if it is not one.
pub fn error_reply(bytes: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let query = parse_query(bytes)?;
    encode(&reply_to(&query, code), UDP_MIN)
}

/// Encodes `message` in at most `limit` bytes: records that do not fit are left out and
/// TC is set (hickory's encoder stops at its maximum size and reports the shortfall).
fn encode(message: &Message, limit: u16) -> Option<Vec<u8>> {
    let mut buffer = Vec::with_capacity(usize::from(limit.min(UDP_MIN)));
    let mut encoder = BinEncoder::new(&mut buffer);
    encoder.set_max_size(limit);
    message.emit(&mut encoder).ok()?;
    Some(buffer)
}

/// The question section of a message, for matching a reply to the query it answers.
pub fn same_question(query: &[u8], reply: &Message) -> bool {
    parse_query(query).is_some_and(|query| query.queries == reply.queries)
}

/// An upstream's answer made fit for the client: its id put back, and re-encoded with
/// TC set when it is longer than `limit`. `None` if it does not parse.
pub fn fit_reply(reply: &[u8], client_id: u16, limit: u16) -> Option<Vec<u8>> {
    if reply.len() <= usize::from(limit) && reply.len() >= 12 {
        let mut bytes = reply.to_vec();
        bytes[..2].copy_from_slice(&client_id.to_be_bytes());
        return Some(bytes);
    }
    let mut message = Message::from_vec(reply).ok()?;
    message.metadata.id = client_id;
    encode(&message, limit)
}

/// The message id of a DNS message (first two bytes), if long enough for a header.
pub fn message_id(bytes: &[u8]) -> Option<u16> {
    (bytes.len() >= 12).then(|| u16::from_be_bytes([bytes[0], bytes[1]]))
}

/// A lower-case, dot-separated name without the final dot (labels as Latin-1: a name
/// with other bytes never matches the table, whose names are checked ASCII).
fn lower_name(name: &Name) -> String {
    let mut text = String::with_capacity(name.len());
    for (index, label) in name.iter().enumerate() {
        if index > 0 {
            text.push('.');
        }
        text.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
    }
    text
}

/// The address a reverse name (`4.3.2.1.in-addr.arpa`, 32 nibbles `.ip6.arpa`) stands
/// for; `None` for anything else (a partial reverse zone is not a host).
fn reverse_address(name: &Name) -> Option<IpAddr> {
    let labels: Vec<&[u8]> = name.iter().collect();
    let (rest, suffix) = labels.split_at(labels.len().checked_sub(2)?);
    let lower = |label: &[u8]| label.to_ascii_lowercase();
    if lower(suffix[1]) != b"arpa" {
        return None;
    }
    match lower(suffix[0]).as_slice() {
        b"in-addr" if rest.len() == 4 => {
            let mut octets = [0u8; 4];
            for (octet, label) in octets.iter_mut().rev().zip(rest) {
                *octet = std::str::from_utf8(label).ok()?.parse().ok()?;
                if label.len() > 1 && label[0] == b'0' {
                    return None; // "01" is not how reverse names write 1
                }
            }
            Some(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        b"ip6" if rest.len() == 32 => {
            let mut value: u128 = 0;
            for label in rest.iter().rev() {
                let [nibble] = label else { return None };
                value = (value << 4) | u128::from(char::from(*nibble).to_digit(16)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(value)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use proptest::prelude::*;

    fn table() -> NameTable {
        let mut table = NameTable::new();
        table.set_network("n1", "front").unwrap();
        table
            .set_endpoint(
                "n1",
                "e1",
                &["web"],
                Some(Ipv4Addr::new(10, 0, 0, 2)),
                "fd00::2".parse().ok(),
            )
            .unwrap();
        table.set_sandbox("s", &["n1"]).unwrap();
        table
    }

    fn query(name: &str, kind: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = 0x1234;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        if let Some(size) = edns {
            let mut opt = Edns::new();
            opt.set_max_payload(size);
            message.edns = Some(opt);
        }
        message.to_vec().unwrap()
    }

    fn reply(decision: Decision) -> Message {
        match decision {
            Decision::Reply(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn a_and_aaaa_of_a_local_name() {
        let table = table();
        let answer = reply(decide(
            &table,
            "s",
            &query("WEB.", RecordType::A, None),
            Transport::Udp,
        ));
        assert_eq!(answer.id, 0x1234);
        assert_eq!(answer.message_type, MessageType::Response);
        assert!(answer.recursion_desired && answer.recursion_available);
        assert_eq!(answer.answers.len(), 1);
        assert_eq!(
            answer.answers[0].data,
            RData::from(Ipv4Addr::new(10, 0, 0, 2))
        );
        assert_eq!(answer.answers[0].ttl, TTL);
        assert_eq!(
            answer.answers[0].name.to_ascii(),
            "WEB.",
            "the question's case is kept"
        );
        let answer = reply(decide(
            &table,
            "s",
            &query("web.front.", RecordType::AAAA, None),
            Transport::Udp,
        ));
        assert_eq!(
            answer.answers[0].data,
            RData::from("fd00::2".parse::<Ipv6Addr>().unwrap())
        );
    }

    #[test]
    fn unknown_local_names_are_nxdomain_others_are_forwarded() {
        let table = table();
        let answer = reply(decide(
            &table,
            "s",
            &query("nope.", RecordType::A, None),
            Transport::Udp,
        ));
        assert_eq!(answer.response_code, ResponseCode::NXDomain);
        assert!(answer.answers.is_empty());
        assert_eq!(
            decide(
                &table,
                "s",
                &query("example.com.", RecordType::A, Some(1232)),
                Transport::Udp
            ),
            Decision::Forward { limit: 1232 }
        );
        assert_eq!(
            decide(
                &table,
                "s",
                &query("example.com.", RecordType::A, None),
                Transport::Tcp
            ),
            Decision::Forward { limit: TCP_MAX }
        );
        let mx = reply(decide(
            &table,
            "s",
            &query("web.", RecordType::MX, None),
            Transport::Udp,
        ));
        assert_eq!(
            (mx.response_code, mx.answers.len()),
            (ResponseCode::NoError, 0)
        );
    }

    #[test]
    fn ptr_answers_name_dot_network() {
        let table = table();
        for name in [
            "2.0.0.10.in-addr.arpa.",
            "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
        ] {
            let answer = reply(decide(
                &table,
                "s",
                &query(name, RecordType::PTR, None),
                Transport::Udp,
            ));
            assert_eq!(
                answer.answers[0].data,
                RData::PTR(PTR(Name::from_ascii("web.front.").unwrap()))
            );
        }
        assert!(matches!(
            decide(
                &table,
                "s",
                &query("9.0.0.10.in-addr.arpa.", RecordType::PTR, None),
                Transport::Udp
            ),
            Decision::Forward { .. }
        ));
    }

    #[test]
    fn reverse_names_parse_only_whole_addresses() {
        let parse = |text: &str| reverse_address(&Name::from_ascii(text).unwrap());
        assert_eq!(
            parse("4.3.2.1.in-addr.arpa."),
            Some("1.2.3.4".parse().unwrap())
        );
        assert_eq!(parse("3.2.1.in-addr.arpa."), None);
        assert_eq!(parse("04.3.2.1.in-addr.arpa."), None);
        assert_eq!(parse("256.3.2.1.in-addr.arpa."), None);
        assert_eq!(parse("arpa."), None);
        assert_eq!(parse("."), None);
    }

    #[test]
    fn answers_beyond_the_udp_limit_are_cut_with_tc() {
        let mut table = NameTable::new();
        table.set_network("n1", "front").unwrap();
        for i in 0..100u8 {
            let id = format!("e{i}");
            table
                .set_endpoint(
                    "n1",
                    &id,
                    &[&id, "many"],
                    Some(Ipv4Addr::new(10, 0, 1, i)),
                    None,
                )
                .unwrap();
        }
        table.set_sandbox("s", &["n1"]).unwrap();
        let Decision::Reply(bytes) = decide(
            &table,
            "s",
            &query("many.", RecordType::A, None),
            Transport::Udp,
        ) else {
            panic!("no reply");
        };
        assert!(bytes.len() <= usize::from(UDP_MIN));
        let answer = Message::from_vec(&bytes).unwrap();
        assert!(answer.truncation);
        assert!(!answer.answers.is_empty() && answer.answers.len() < 100);
        let whole = reply(decide(
            &table,
            "s",
            &query("many.", RecordType::A, None),
            Transport::Tcp,
        ));
        assert!(!whole.truncation);
        assert_eq!(whole.answers.len(), 100);
    }

    #[test]
    fn responses_and_garbage_get_no_answer() {
        let table = table();
        let mut response = query("web.", RecordType::A, None);
        response[2] |= 0x80; // QR
        assert_eq!(
            decide(&table, "s", &response, Transport::Udp),
            Decision::Ignore
        );
        assert_eq!(decide(&table, "s", b"", Transport::Udp), Decision::Ignore);
        assert_eq!(
            decide(&table, "s", &[0xff; 40], Transport::Udp),
            Decision::Ignore
        );
        let whole = query("web.", RecordType::A, None);
        assert_eq!(
            decide(&table, "s", &whole[..whole.len() - 3], Transport::Udp),
            Decision::Ignore
        );
    }

    #[test]
    fn forwarded_replies_get_the_client_id_and_fit_its_limit() {
        let table = table();
        let Decision::Reply(bytes) = decide(
            &table,
            "s",
            &query("web.", RecordType::A, None),
            Transport::Tcp,
        ) else {
            panic!();
        };
        let fitted = fit_reply(&bytes, 7, UDP_MIN).unwrap();
        assert_eq!(message_id(&fitted), Some(7));
        assert_eq!(
            error_reply(&query("x.", RecordType::A, None), ResponseCode::ServFail)
                .map(|b| Message::from_vec(&b).unwrap().response_code),
            Some(ResponseCode::ServFail)
        );
        assert!(same_question(
            &query("web.", RecordType::A, None),
            &Message::from_vec(&bytes).unwrap()
        ));
        assert!(!same_question(
            &query("web.", RecordType::AAAA, None),
            &Message::from_vec(&bytes).unwrap()
        ));
    }

    proptest! {
        #[test]
        fn any_bytes_are_decided_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let table = table();
            let _ = decide(&table, "s", &bytes, Transport::Udp);
            let _ = fit_reply(&bytes, 1, UDP_MIN);
            let _ = error_reply(&bytes, ResponseCode::ServFail);
        }

        /// A valid query with a few bytes flipped: still no panic, and any reply is a
        /// response that fits UDP.
        #[test]
        fn mutated_queries_never_panic(flips in proptest::collection::vec((0usize..64, any::<u8>()), 0..6), ptr in any::<bool>()) {
            let table = table();
            let kind = if ptr { RecordType::PTR } else { RecordType::A };
            let mut bytes = query(if ptr { "2.0.0.10.in-addr.arpa." } else { "web.front." }, kind, Some(1400));
            for (at, value) in flips {
                if let Some(byte) = bytes.get_mut(at) {
                    *byte ^= value;
                }
            }
            if let Decision::Reply(reply) = decide(&table, "s", &bytes, Transport::Udp) {
                prop_assert!(reply.len() <= usize::from(UDP_MAX));
                prop_assert!(reply[2] & 0x80 != 0);
            }
        }
    }
}
