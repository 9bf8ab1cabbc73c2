//! Input parsing shared by the fuzz targets.

/// Takes one record's payload from `body`: a one-byte length, or a two-byte
/// little-endian one when `wide`, then up to that many bytes. `None` when
/// the length itself is cut off.
pub fn take_record<'a>(body: &mut &'a [u8], wide: bool) -> Option<&'a [u8]> {
    let len = if wide {
        let (&[lo, hi], rest) = body.split_first_chunk::<2>()?;
        *body = rest;
        usize::from(u16::from_le_bytes([lo, hi]))
    } else {
        let (&l, rest) = body.split_first()?;
        *body = rest;
        usize::from(l)
    };
    let (payload, rest) = body.split_at(len.min(body.len()));
    *body = rest;
    Some(payload)
}

/// Every command peerlink decodes to a typed message, then a few unknown
/// ones (passed through as `NetworkMessage::Unknown`).
pub const COMMANDS: [&str; 40] = {
    let known = peerlink::wire::payload::KNOWN_COMMANDS;
    let mut all = [""; 40];
    let mut i = 0;
    while i < known.len() {
        all[i] = known[i];
        i += 1;
    }
    all[36] = "sendtemplate";
    all[37] = "";
    all[38] = "Ping";
    all[39] = "x y~";
    all
};
