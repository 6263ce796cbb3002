//! Byte-level building blocks of the block files: file headers, section frames, varints and a
//! bounds-checked reader. Specified in `docs/design/storage-format.md` § Block; this file and
//! that section change in the same commit.

use std::path::Path;

use super::BlockError;

/// Bytes of every file header: `magic <4b> │ version <1b> │ reserved <3b, zero>`.
pub const FILE_HEADER_BYTES: usize = 8;
/// The one format version this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;

pub const INDEX_MAGIC: [u8; 4] = *b"SXBI";
pub const CHUNKS_MAGIC: [u8; 4] = *b"SXBC";
pub const META_MAGIC: [u8; 4] = *b"SXBM";
pub const TOMBSTONES_MAGIC: [u8; 4] = *b"SXBT";

/// Section frame: `len <4b LE> │ kind <1b> │ encoding <1b> │ raw_len <4b LE> │ data <len> │ crc32 <4b LE>`.
pub const FRAME_HEADER_BYTES: usize = 10;
pub const FRAME_TRAILER_BYTES: usize = 4;

/// Largest decoded (raw) size of any section; a frame claiming more is corrupt. Bounds the
/// memory a damaged length can make a reader allocate.
pub const SECTION_RAW_BYTES_MAX: usize = 1 << 30;
/// Largest stored size of a section.
pub const SECTION_BYTES_MAX: usize = 1 << 30;

const _: () = assert!(SECTION_RAW_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(SECTION_BYTES_MAX <= u32::MAX as usize);

/// Section kinds (the `kind` byte of a frame).
pub const KIND_SYMBOLS: u8 = 1;
pub const KIND_SERIES: u8 = 2;
pub const KIND_POSTINGS: u8 = 3;
pub const KIND_CHUNK_GROUP: u8 = 4;
pub const KIND_META: u8 = 5;
pub const KIND_TOMBSTONES: u8 = 6;

/// Section encodings (the `encoding` byte of a frame).
pub const ENCODING_RAW: u8 = 0;
pub const ENCODING_ZSTD: u8 = 1;

pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_SYMBOLS => "symbols",
        KIND_SERIES => "series",
        KIND_POSTINGS => "postings",
        KIND_CHUNK_GROUP => "chunk group",
        KIND_META => "meta",
        KIND_TOMBSTONES => "tombstones",
        _ => "unknown",
    }
}

pub fn encode_file_header(magic: [u8; 4]) -> [u8; FILE_HEADER_BYTES] {
    let mut header = [0u8; FILE_HEADER_BYTES];
    header[..4].copy_from_slice(&magic);
    header[4] = FORMAT_VERSION;
    header
}

/// Checks a file header: magic, version, zero reserved bytes.
pub fn check_file_header(bytes: &[u8], magic: [u8; 4], file: &Path) -> Result<(), BlockError> {
    let corrupt = |reason: String| BlockError::corrupt(file, "header", 0, reason);
    if bytes.len() < FILE_HEADER_BYTES {
        return Err(corrupt(format!("file is {} bytes, shorter than its {FILE_HEADER_BYTES}-byte header", bytes.len())));
    }
    if bytes[..4] != magic {
        return Err(corrupt(format!("magic is {:02x?}, expected {:02x?}", &bytes[..4], magic)));
    }
    if bytes[4] != FORMAT_VERSION {
        return Err(corrupt(format!("format version {} is not the supported version {FORMAT_VERSION}", bytes[4])));
    }
    if bytes[5..8] != [0, 0, 0] {
        return Err(corrupt("reserved header bytes are not zero".to_string()));
    }
    Ok(())
}

/// Frames `raw` as one section. With `zstd_level = Some(level)` the data is zstd-compressed
/// when (and only when) that makes it smaller.
pub fn encode_frame(kind: u8, raw: &[u8], zstd_level: Option<i32>) -> Vec<u8> {
    assert!(raw.len() <= SECTION_RAW_BYTES_MAX, "section of {} bytes is over the limit", raw.len());
    let compressed = zstd_level.map(|level| {
        zstd::bulk::compress(raw, level).expect("zstd compression of an in-memory buffer cannot fail")
    });
    let (encoding, data): (u8, &[u8]) = match &compressed {
        Some(c) if c.len() < raw.len() => (ENCODING_ZSTD, c),
        _ => (ENCODING_RAW, raw),
    };
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + data.len() + FRAME_TRAILER_BYTES);
    frame.extend_from_slice(&(data.len() as u32).to_le_bytes());
    frame.push(kind);
    frame.push(encoding);
    frame.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    frame.extend_from_slice(data);
    let crc = crc32fast::hash(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame
}

/// The parsed fixed part of a frame header.
#[derive(Clone, Copy, Debug)]
pub struct FrameHeader {
    pub data_len: usize,
    pub kind: u8,
    pub encoding: u8,
    pub raw_len: usize,
}

impl FrameHeader {
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_BYTES + self.data_len + FRAME_TRAILER_BYTES
    }
}

/// Parses a frame header at `offset` of `file`, expecting section `kind`. `raw_len_max` bounds
/// the decoded size for this kind.
pub fn parse_frame_header(
    bytes: &[u8],
    file: &Path,
    offset: u64,
    kind: u8,
    raw_len_max: usize,
) -> Result<FrameHeader, BlockError> {
    let section = kind_name(kind);
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(BlockError::corrupt(
            file,
            section,
            offset,
            format!("section header truncated: {} of {FRAME_HEADER_BYTES} bytes present", bytes.len()),
        ));
    }
    let data_len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let header = FrameHeader {
        data_len,
        kind: bytes[4],
        encoding: bytes[5],
        raw_len: u32::from_le_bytes(bytes[6..10].try_into().expect("4 bytes")) as usize,
    };
    if header.kind != kind {
        return Err(BlockError::corrupt(
            file,
            section,
            offset,
            format!("section kind {} ({}) where {kind} ({section}) was expected", header.kind, kind_name(header.kind)),
        ));
    }
    if header.data_len > SECTION_BYTES_MAX || header.raw_len > raw_len_max {
        return Err(BlockError::corrupt(
            file,
            section,
            offset,
            format!("section claims {} stored / {} raw bytes, over the limit of {raw_len_max}", header.data_len, header.raw_len),
        ));
    }
    if header.encoding != ENCODING_RAW && header.encoding != ENCODING_ZSTD {
        return Err(BlockError::corrupt(file, section, offset, format!("unknown encoding {}", header.encoding)));
    }
    if header.encoding == ENCODING_RAW && header.raw_len != header.data_len {
        return Err(BlockError::corrupt(
            file,
            section,
            offset,
            format!("raw section has length {} but raw length {}", header.data_len, header.raw_len),
        ));
    }
    Ok(header)
}

/// Verifies and decodes one whole frame (`bytes` starts at the frame and holds at least all of
/// it). Returns the raw section data and the frame's total length.
pub fn decode_frame(
    bytes: &[u8],
    file: &Path,
    offset: u64,
    kind: u8,
    raw_len_max: usize,
) -> Result<(Vec<u8>, usize), BlockError> {
    let header = parse_frame_header(bytes, file, offset, kind, raw_len_max)?;
    let section = kind_name(kind);
    let frame_len = header.frame_len();
    if bytes.len() < frame_len {
        return Err(BlockError::corrupt(
            file,
            section,
            offset,
            format!("section truncated: {} of {frame_len} bytes present", bytes.len()),
        ));
    }
    let body_end = FRAME_HEADER_BYTES + header.data_len;
    let stored_crc = u32::from_le_bytes(bytes[body_end..frame_len].try_into().expect("4 bytes"));
    let crc = crc32fast::hash(&bytes[..body_end]);
    if crc != stored_crc {
        return Err(BlockError::corrupt(
            file,
            section,
            offset,
            format!("CRC mismatch: stored {stored_crc:08x}, computed {crc:08x}"),
        ));
    }
    let data = &bytes[FRAME_HEADER_BYTES..body_end];
    let raw = match header.encoding {
        ENCODING_RAW => data.to_vec(),
        _ => {
            let raw = zstd::bulk::decompress(data, header.raw_len).map_err(|e| {
                BlockError::corrupt(file, section, offset, format!("zstd decompression failed: {e}"))
            })?;
            if raw.len() != header.raw_len {
                return Err(BlockError::corrupt(
                    file,
                    section,
                    offset,
                    format!("zstd data decompressed to {} bytes, header says {}", raw.len(), header.raw_len),
                ));
            }
            raw
        }
    };
    Ok((raw, frame_len))
}

pub use crate::varint::{put_uvarint, put_varint};

pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_uvarint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A bounds-checked reader over the raw data of one section. Every error names the file, the
/// section, the section frame's offset in the file and the position inside the raw data.
pub struct Decoder<'a> {
    bytes: &'a [u8],
    position: usize,
    file: &'a Path,
    section: &'static str,
    frame_offset: u64,
}

impl<'a> Decoder<'a> {
    pub fn new(bytes: &'a [u8], file: &'a Path, section: &'static str, frame_offset: u64) -> Self {
        Decoder { bytes, position: 0, file, section, frame_offset }
    }

    pub fn error(&self, reason: impl Into<String>) -> BlockError {
        BlockError::corrupt(
            self.file,
            self.section,
            self.frame_offset,
            format!("at byte {} of the decoded section: {}", self.position, reason.into()),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.position == self.bytes.len()
    }

    pub fn uvarint(&mut self) -> Result<u64, BlockError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&byte) = self.bytes.get(self.position) else {
                return Err(self.error("data ends inside a varint"));
            };
            self.position += 1;
            if i == 9 && byte > 1 {
                return Err(self.error("varint longer than 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(self.error("varint longer than 64 bits"))
    }

    pub fn varint(&mut self) -> Result<i64, BlockError> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// A uvarint that must be at most `max`, as a usize.
    pub fn count(&mut self, max: usize, what: &str) -> Result<usize, BlockError> {
        let value = self.uvarint()?;
        if value > max as u64 {
            return Err(self.error(format!("{what} is {value}, over the limit of {max}")));
        }
        Ok(value as usize)
    }

    pub fn bytes(&mut self, len: usize) -> Result<&'a [u8], BlockError> {
        if self.bytes.len() - self.position < len {
            return Err(self.error(format!("{len} bytes claimed, {} left", self.bytes.len() - self.position)));
        }
        let slice = &self.bytes[self.position..self.position + len];
        self.position += len;
        Ok(slice)
    }

    pub fn finish(&self) -> Result<(), BlockError> {
        if !self.is_empty() {
            return Err(self.error(format!("{} bytes of trailing data", self.bytes.len() - self.position)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: varints round-trip at the edges and a decoder never reads past its data.
    #[test]
    fn varints_round_trip_and_reject_garbage() {
        let values = [0i64, 1, -1, 63, -64, 64, i64::MAX, i64::MIN, 1 << 40];
        let mut out = Vec::new();
        for v in values {
            put_varint(&mut out, v);
        }
        put_uvarint(&mut out, u64::MAX);
        let path = Path::new("x");
        let mut decoder = Decoder::new(&out, path, "test", 0);
        for v in values {
            assert_eq!(decoder.varint().unwrap(), v);
        }
        assert_eq!(decoder.uvarint().unwrap(), u64::MAX);
        assert!(decoder.finish().is_ok());
        assert!(Decoder::new(&[0x80], path, "test", 0).uvarint().is_err());
        assert!(Decoder::new(&[0xff; 11], path, "test", 0).uvarint().is_err());
        assert!(Decoder::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], path, "test", 0)
            .uvarint()
            .is_err());
    }
}
