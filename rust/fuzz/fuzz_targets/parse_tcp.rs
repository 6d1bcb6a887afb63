#![no_main]
//! TCP parsing never panics.
use keelnet_core::packet::tcp::TcpSegment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tcp) = TcpSegment::parse(data) {
        assert_eq!(tcp.header().len() + tcp.payload().len(), data.len());
        let _ = (tcp.sequence(), tcp.acknowledgment(), tcp.flags(), tcp.window(), tcp.checksum_ok(0));
    }
});
