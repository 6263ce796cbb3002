//! LEB128 varints shared by the WAL and block encoders (the same bytes as Go's
//! `binary.PutUvarint` / `PutVarint`, which the format documents describe). Decoders stay with
//! each format, because each reports errors in its own terms (field, section, offset).

/// Appends `value` as an unsigned LEB128 varint (1–10 bytes).
pub fn put_uvarint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends `value` zigzag-encoded as an unsigned varint.
pub fn put_varint(out: &mut Vec<u8>, value: i64) {
    put_uvarint(out, ((value << 1) ^ (value >> 63)) as u64);
}
