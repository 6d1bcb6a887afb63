#![no_main]
//! Whatever a sandbox sends to 127.0.0.11, and whatever an upstream answers, the
//! resolver's message handling never panics; what it answers is a response that fits
//! the transport's limit.
use std::net::Ipv4Addr;
use std::sync::OnceLock;

use keelnet_core::dns::NameTable;
use keelnet_core::dns::message::{self, Decision, ResponseCode, Transport, UDP_MAX, UDP_MIN};
use libfuzzer_sys::fuzz_target;

fn table() -> &'static NameTable {
    static TABLE: OnceLock<NameTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = NameTable::new();
        table.set_network("n1", "front").unwrap();
        for i in 0..40u8 {
            let id = format!("e{i}");
            table
                .set_endpoint("n1", &id, &[&id, "web"], Some(Ipv4Addr::new(10, 0, 0, i)), None)
                .unwrap();
        }
        table.set_sandbox("s", &["n1"]).unwrap();
        table
    })
}

fuzz_target!(|data: &[u8]| {
    for transport in [Transport::Udp, Transport::Tcp] {
        if let Decision::Reply(reply) = message::decide(table(), "s", data, transport) {
            assert!(reply.len() >= 12 && reply[2] & 0x80 != 0, "a reply is a response");
            if transport == Transport::Udp {
                assert!(reply.len() <= usize::from(UDP_MAX));
            }
        }
    }
    if let Some(fitted) = message::fit_reply(data, 7, UDP_MIN) {
        assert!(fitted.len() <= data.len().max(usize::from(UDP_MIN)));
    }
    let _ = message::error_reply(data, ResponseCode::ServFail);
});
