//! MAC addresses as Python sees them: `aa:bb:cc:dd:ee:ff`.

use keelnet_core::packet::MacAddr;

/// Lower-case, colon-separated.
pub fn format(mac: &MacAddr) -> String {
    mac.iter()
        .map(|octet| format!("{octet:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Six two-digit hex octets (any case) split by any of `separators`; `None` otherwise.
/// Callers raise their own exception: a bad argument means different things to them.
pub fn parse(text: &str, separators: &[char]) -> Option<MacAddr> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(separators);
    for octet in &mut mac {
        let part = parts.next().filter(|part| part.len() == 2)?;
        *octet = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}
