//! The Gorilla (XOR) chunk codec: up to [`CHUNK_SAMPLES_MAX`] samples of one series,
//! timestamps as delta-of-delta and values XORed against their predecessor.
//!
//! The format is specified byte by byte in `docs/design/storage-format.md` § Chunk. It is
//! Prometheus's XOR chunk (same header, same first two samples, same value encoding, same
//! clamping of leading zeros) with Sextant's own delta-of-delta buckets, sized for scrape
//! timestamps with a few milliseconds of jitter; so it is *not* byte-compatible with
//! Prometheus. The chunk bytes carry no format identity: version 1 of the block format is what
//! says "this encoding". The document and this file change in the same commit.
//!
//! Guarantees:
//! - every `f64` bit pattern (NaN payloads, the staleness marker, ±Inf, −0.0, subnormals)
//!   and every strictly increasing `i64` timestamp sequence round-trips bit for bit;
//! - [`ChunkEncoder::bytes`] is a complete, decodable chunk after every append;
//! - decoding bytes from outside never panics, never loops and never reads out of bounds: a
//!   damaged chunk yields a [`ChunkError`] that names the sample index and what was wrong.

use std::fmt;

/// A head cuts a chunk at this many samples in normal operation (Prometheus's default).
pub const CHUNK_SAMPLES_TARGET: usize = 120;

/// The hard limit: the sample count header is a `u16`.
pub const CHUNK_SAMPLES_MAX: usize = u16::MAX as usize;

const _: () = assert!(CHUNK_SAMPLES_TARGET <= CHUNK_SAMPLES_MAX);
const _: () = assert!(CHUNK_SAMPLES_TARGET > 0);

/// The sample count header: a big-endian `u16`.
pub const CHUNK_HEADER_BYTES: usize = 2;

const _: () = assert!(CHUNK_HEADER_BYTES * 8 == u16::BITS as usize);

/// The most bits one sample can take: a 10-byte varint timestamp (only sample 0 or 1; more
/// than the `11111` + 64-bit delta of delta), plus a `11` + 5 + 6 + 64-bit value.
const SAMPLE_BITS_MAX: usize = 80 + 2 + 5 + 6 + 64;

/// Slack kept zeroed after the last written byte, so that one write of up to 64 bits at any
/// bit offset touches at most nine bytes that already exist.
const WRITE_SLACK_BYTES: usize = SAMPLE_BITS_MAX.div_ceil(8) + 9;

/// A Go `binary.PutUvarint` value takes at most this many bytes.
const VARINT_BYTES_MAX: usize = 10;

/// The delta-of-delta buckets after `0` (ΔΔ = 0): bucket `i` has the control prefix of `i + 1`
/// one bits and a zero bit (`10`, `110`, `1110`, `11110`), then ΔΔ as a two's complement value
/// of this many bits, covering `-2^(bits-1) ..= 2^(bits-1) - 1`. Anything else is `11111` and
/// 64 bits. 4 bits hold the ΔΔ of 15 s scrapes with 0-3 ms jitter (ΔΔ in -6..=6); see
/// storage-format.md § Chunk for the measurements behind the widths.
const DOD_BUCKET_BITS: [u32; 4] = [4, 8, 17, 20];

/// The escape after the last bucket: `11111`, then ΔΔ in 64 bits.
const DOD_ESCAPE_PREFIX_BITS: u32 = DOD_BUCKET_BITS.len() as u32 + 1;

const _: () = assert!(DOD_ESCAPE_PREFIX_BITS + 20 <= 64);

/// Leading zero counts are written in 5 bits, so they clamp at 31 (as Prometheus does).
const XOR_LEADING_ZEROS_MAX: u32 = 31;

/// "No leading/trailing window yet": no `10` (reuse) control may appear until a `11` sets one.
const XOR_WINDOW_NONE: u8 = 0xff;

/// Which part of a sample a decoding error was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkField {
    Timestamp,
    Value,
}

impl fmt::Display for ChunkField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChunkField::Timestamp => "timestamp",
            ChunkField::Value => "value",
        })
    }
}

/// Why a chunk could not be appended to or decoded. Decoding errors name the sample index
/// (0-based) and what was wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    // Encoding: programmer or caller errors the encoder refuses so that a chunk is never
    // corrupted; the chunk is unchanged after either.
    #[error("chunk is full: it holds {samples_max} samples already")]
    Full { samples_max: usize },
    #[error("timestamp {t} is not after the chunk's last timestamp {max_t}")]
    TimestampNotIncreasing { t: i64, max_t: i64 },

    // Decoding.
    #[error("chunk is {bytes_len} bytes, shorter than its {header_bytes}-byte header")]
    HeaderTruncated { bytes_len: usize, header_bytes: usize },
    #[error("chunk ends inside the {field} of sample {sample_index}")]
    Truncated { sample_index: usize, field: ChunkField },
    #[error("varint timestamp of sample {sample_index} is longer than 64 bits")]
    VarintOverflow { sample_index: usize },
    #[error("timestamp delta of sample {sample_index} is zero, but timestamps must increase")]
    DeltaZero { sample_index: usize },
    #[error("timestamp of sample {sample_index} overflows i64 (previous {prev_t}, delta {delta})")]
    TimestampOverflow { sample_index: usize, prev_t: i64, delta: u64 },
    #[error(
        "value of sample {sample_index} reuses a leading/trailing-zero window that was never set"
    )]
    XorWindowMissing { sample_index: usize },
    #[error(
        "value of sample {sample_index} has {leading_zeros} leading zeros and \
         {significant_bits} significant bits, more than 64 in all"
    )]
    XorWindowInvalid { sample_index: usize, leading_zeros: u32, significant_bits: u32 },
    #[error(
        "value of sample {sample_index} XORs to zero in a non-zero window \
         (a zero XOR must be written as a single 0 bit)"
    )]
    XorZeroInWindow { sample_index: usize },
    #[error("{trailing_bits} bits follow the last of {samples_count} samples (at most 7 zero padding bits may)")]
    TrailingData { samples_count: usize, trailing_bits: usize },
    #[error("padding after the last of {samples_count} samples is not zero")]
    PaddingNotZero { samples_count: usize },
}

// ---------------------------------------------------------------------------------------------
// Bit writer.

/// Appends bits most significant first. The bytes of the chunk header are the first 16 bits.
///
/// The buffer always holds at least [`WRITE_SLACK_BYTES`] zero bytes after the last written
/// bit's byte, so a write ORs into bytes that exist without a length check per bit; `bytes()`
/// slices the slack off, which keeps the chunk complete and decodable between appends.
#[derive(Clone)]
struct BitWriter {
    buffer: Vec<u8>,
    bits_len: usize,
}

impl BitWriter {
    fn new() -> Self {
        let mut buffer = Vec::with_capacity(CHUNK_HEADER_BYTES + 64);
        buffer.resize(CHUNK_HEADER_BYTES + WRITE_SLACK_BYTES, 0);
        BitWriter { buffer, bits_len: CHUNK_HEADER_BYTES * 8 }
    }

    /// Makes room for one sample's worst case; called once per append, not once per write.
    #[inline]
    fn reserve_sample(&mut self) {
        let needed_bytes = self.bits_len / 8 + WRITE_SLACK_BYTES;
        if self.buffer.len() < needed_bytes {
            // Doubling keeps appends amortized O(1); the new bytes are zero, as the OR needs.
            let target_bytes = needed_bytes.max(self.buffer.len() * 2);
            self.buffer.resize(target_bytes, 0);
        }
    }

    /// Writes the low `count` bits of `bits`, 1 ≤ `count` ≤ 64. Higher bits must be zero.
    #[inline]
    fn write(&mut self, bits: u64, count: u32) {
        debug_assert!((1..=64).contains(&count));
        debug_assert!(count == 64 || bits >> count == 0);
        let index = self.bits_len / 8;
        let offset = (self.bits_len % 8) as u32;
        // Left-align the bits, then place them `offset` bits into byte `index`; the `offset`
        // lowest bits that do not fit into the 8-byte word go to the top of byte `index + 8`.
        let aligned = bits << (64 - count);
        let word_bytes: &mut [u8; 8] =
            (&mut self.buffer[index..index + 8]).try_into().expect("slice of 8 bytes");
        let word = u64::from_be_bytes(*word_bytes) | (aligned >> offset);
        *word_bytes = word.to_be_bytes();
        if offset + count > 64 {
            self.buffer[index + 8] = (aligned << (64 - offset) >> 56) as u8;
        }
        self.bits_len += count as usize;
    }

    #[inline]
    fn write_bit(&mut self, bit: bool) {
        self.write(bit as u64, 1);
    }

    fn write_uvarint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.write((value as u8 | 0x80) as u64, 8);
            value >>= 7;
        }
        self.write(value, 8);
    }

    fn write_varint(&mut self, value: i64) {
        // Go's binary.PutVarint: zigzag, so small negative numbers stay short.
        self.write_uvarint(((value as u64) << 1) ^ ((value >> 63) as u64));
    }

    fn set_header(&mut self, samples_count: u16) {
        self.buffer[..CHUNK_HEADER_BYTES].copy_from_slice(&samples_count.to_be_bytes());
    }

    fn bytes(&self) -> &[u8] {
        &self.buffer[..self.bits_len.div_ceil(8)]
    }

    fn into_bytes(mut self) -> Vec<u8> {
        self.buffer.truncate(self.bits_len.div_ceil(8));
        self.buffer
    }
}

// ---------------------------------------------------------------------------------------------
// Encoder.

/// Builds one chunk, one sample at a time. Timestamps must strictly increase.
#[derive(Clone)]
pub struct ChunkEncoder {
    writer: BitWriter,
    samples_count: usize,
    t_first: i64,
    t_last: i64,
    /// The last timestamp delta, as an unsigned 64-bit number: a delta between two `i64`s
    /// can be as large as `u64::MAX`, and the delta of deltas wraps exactly as Prometheus's.
    t_delta: u64,
    v_last_bits: u64,
    xor_leading_zeros: u8,
    xor_trailing_zeros: u8,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ChunkEncoder {
    // The buffer can be 100 KiB; the summary is what a reader of a log wants.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkEncoder")
            .field("samples_count", &self.samples_count)
            .field("min_t", &self.min_t())
            .field("max_t", &self.max_t())
            .field("bytes_len", &self.bytes().len())
            .finish()
    }
}

impl ChunkEncoder {
    pub fn new() -> Self {
        ChunkEncoder {
            writer: BitWriter::new(),
            samples_count: 0,
            t_first: 0,
            t_last: 0,
            t_delta: 0,
            v_last_bits: 0,
            xor_leading_zeros: XOR_WINDOW_NONE,
            xor_trailing_zeros: 0,
        }
    }

    /// Appends one sample. Refuses, leaving the chunk unchanged, a timestamp that is not after
    /// the last one and a sample beyond [`CHUNK_SAMPLES_MAX`].
    pub fn append(&mut self, t: i64, v: f64) -> Result<(), ChunkError> {
        if self.samples_count >= CHUNK_SAMPLES_MAX {
            return Err(ChunkError::Full { samples_max: CHUNK_SAMPLES_MAX });
        }
        if self.samples_count > 0 && t <= self.t_last {
            return Err(ChunkError::TimestampNotIncreasing { t, max_t: self.t_last });
        }
        self.writer.reserve_sample();
        let v_bits = v.to_bits();
        match self.samples_count {
            0 => {
                self.writer.write_varint(t);
                self.writer.write(v_bits, 64);
                self.t_first = t;
            }
            1 => {
                let delta = t.wrapping_sub(self.t_last) as u64;
                assert!(delta > 0);
                self.writer.write_uvarint(delta);
                self.write_value(v_bits);
                self.t_delta = delta;
            }
            _ => {
                let delta = t.wrapping_sub(self.t_last) as u64;
                assert!(delta > 0);
                self.write_delta_of_delta(delta.wrapping_sub(self.t_delta) as i64);
                self.write_value(v_bits);
                self.t_delta = delta;
            }
        }
        self.t_last = t;
        self.v_last_bits = v_bits;
        self.samples_count += 1;
        let samples_count = u16::try_from(self.samples_count).expect("count checked against max");
        self.writer.set_header(samples_count);
        Ok(())
    }

    #[inline]
    fn write_delta_of_delta(&mut self, dod: i64) {
        if dod == 0 {
            self.writer.write_bit(false);
            return;
        }
        // Control prefixes 10, 110, 1110, 11110, each followed by the value in its bucket's
        // width; prefix and value go out as one write (at most 5 + 20 bits).
        for (bucket_index, &bits) in DOD_BUCKET_BITS.iter().enumerate() {
            if dod_fits(dod, bits) {
                let prefix_bits = bucket_index as u32 + 2;
                let prefix = (1u64 << prefix_bits) - 2; // 0b10, 0b110, 0b1110, 0b11110
                let value = (dod as u64) & ((1u64 << bits) - 1);
                self.writer.write((prefix << bits) | value, prefix_bits + bits);
                return;
            }
        }
        self.writer.write((1u64 << DOD_ESCAPE_PREFIX_BITS) - 1, DOD_ESCAPE_PREFIX_BITS);
        self.writer.write(dod as u64, 64);
    }

    #[inline]
    fn write_value(&mut self, v_bits: u64) {
        let xor = v_bits ^ self.v_last_bits;
        if xor == 0 {
            self.writer.write_bit(false);
            return;
        }
        let leading_zeros = xor.leading_zeros().min(XOR_LEADING_ZEROS_MAX);
        let trailing_zeros = xor.trailing_zeros();
        if self.xor_leading_zeros != XOR_WINDOW_NONE
            && leading_zeros >= self.xor_leading_zeros as u32
            && trailing_zeros >= self.xor_trailing_zeros as u32
        {
            // The significant bits fit into the previous window: `10` + the window's bits.
            let significant_bits =
                64 - self.xor_leading_zeros as u32 - self.xor_trailing_zeros as u32;
            self.writer.write(0b10, 2);
            self.writer.write(xor >> self.xor_trailing_zeros, significant_bits);
            return;
        }
        let significant_bits = 64 - leading_zeros - trailing_zeros;
        assert!(significant_bits >= 1);
        assert!(significant_bits <= 64);
        // `11`, 5 bits of leading zeros, 6 bits of significant-bit count (64 written as 0).
        let control = (0b11 << 11) | ((leading_zeros as u64) << 6) | (significant_bits as u64 & 63);
        self.writer.write(control, 13);
        self.writer.write(xor >> trailing_zeros, significant_bits);
        self.xor_leading_zeros = leading_zeros as u8;
        self.xor_trailing_zeros = trailing_zeros as u8;
    }

    pub fn num_samples(&self) -> usize {
        self.samples_count
    }

    pub fn min_t(&self) -> Option<i64> {
        (self.samples_count > 0).then_some(self.t_first)
    }

    pub fn max_t(&self) -> Option<i64> {
        (self.samples_count > 0).then_some(self.t_last)
    }

    pub fn last_value(&self) -> Option<f64> {
        (self.samples_count > 0).then_some(f64::from_bits(self.v_last_bits))
    }

    /// The chunk so far: complete and decodable after every append.
    pub fn bytes(&self) -> &[u8] {
        self.writer.bytes()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.writer.into_bytes()
    }
}

/// True when `dod` fits a `bits`-wide two's complement bucket: `-2^(bits-1) ..= 2^(bits-1) - 1`.
#[inline]
fn dod_fits(dod: i64, bits: u32) -> bool {
    let half = 1i64 << (bits - 1);
    -half <= dod && dod < half
}

/// Encodes `samples` into one chunk; fails as [`ChunkEncoder::append`] does.
pub fn encode_all(samples: &[(i64, f64)]) -> Result<Vec<u8>, ChunkError> {
    let mut encoder = ChunkEncoder::new();
    for &(t, v) in samples {
        encoder.append(t, v)?;
    }
    Ok(encoder.into_bytes())
}

// ---------------------------------------------------------------------------------------------
// Bit reader.

/// Reads bits most significant first from the bytes after the header. Every read checks the
/// remaining length first, so damaged input yields `None`, never an out-of-bounds access.
struct BitReader<'a> {
    bytes: &'a [u8],
    bits_len: usize,
    position_bits: usize,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        BitReader { bytes, bits_len: bytes.len() * 8, position_bits: 0 }
    }

    fn bits_remaining(&self) -> usize {
        self.bits_len - self.position_bits
    }

    /// The 8 bytes from `index`, zero-padded past the end.
    #[inline]
    fn word_at(&self, index: usize) -> u64 {
        match self.bytes.get(index..index + 8) {
            Some(word) => u64::from_be_bytes(word.try_into().expect("slice of 8 bytes")),
            None => {
                let mut word = [0u8; 8];
                let tail = self.bytes.get(index..).unwrap_or(&[]);
                word[..tail.len()].copy_from_slice(tail);
                u64::from_be_bytes(word)
            }
        }
    }

    /// The next `count` bits (1 ≤ `count` ≤ 64) without consuming them; zeros past the end.
    #[inline]
    fn peek(&self, count: u32) -> u64 {
        debug_assert!((1..=64).contains(&count));
        let index = self.position_bits / 8;
        let offset = (self.position_bits % 8) as u32;
        let mut word = self.word_at(index) << offset;
        if offset + count > 64 {
            // offset > 0 here, so the shift is in 1..=7.
            let next = self.bytes.get(index + 8).copied().unwrap_or(0);
            word |= (next >> (8 - offset)) as u64;
        }
        word >> (64 - count)
    }

    #[inline]
    fn read(&mut self, count: u32) -> Option<u64> {
        if count as usize > self.bits_remaining() {
            return None;
        }
        let bits = self.peek(count);
        self.position_bits += count as usize;
        Some(bits)
    }

    #[inline]
    fn read_bit(&mut self) -> Option<bool> {
        if self.position_bits >= self.bits_len {
            return None;
        }
        let byte = self.bytes[self.position_bits / 8];
        let bit = (byte >> (7 - self.position_bits % 8)) & 1;
        self.position_bits += 1;
        Some(bit == 1)
    }

    /// Go's `binary.Uvarint`; `Err(true)` on overflow, `Err(false)` when the input ends.
    fn read_uvarint(&mut self) -> Result<u64, bool> {
        let mut value = 0u64;
        for byte_index in 0..VARINT_BYTES_MAX {
            let byte = self.read(8).ok_or(false)?;
            if byte_index == VARINT_BYTES_MAX - 1 && byte > 1 {
                return Err(true);
            }
            value |= (byte & 0x7f) << (7 * byte_index);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(true)
    }
}

// ---------------------------------------------------------------------------------------------
// Decoder.

/// Decodes a chunk sample by sample, borrowing its bytes. After an `Err` it yields `None`.
pub struct ChunkIter<'a> {
    reader: BitReader<'a>,
    samples_count: usize,
    /// Samples decoded so far, i.e. the index of the next sample.
    sample_index: usize,
    t: i64,
    t_delta: u64,
    v_bits: u64,
    xor_leading_zeros: u8,
    xor_trailing_zeros: u8,
    /// The last sample handed out, by `next` or `seek`; `seek` returns it again when it is at
    /// or after the target, as Prometheus's `Seek` does.
    current: Option<(i64, f64)>,
    /// Set once iteration has ended: the trailing padding was checked, or an error was found.
    finished: bool,
    error: Option<ChunkError>,
}

impl fmt::Debug for ChunkIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkIter")
            .field("samples_count", &self.samples_count)
            .field("sample_index", &self.sample_index)
            .field("error", &self.error)
            .finish()
    }
}

impl<'a> ChunkIter<'a> {
    /// Reads the header; the samples are decoded (and checked) as the iterator advances.
    pub fn new(bytes: &'a [u8]) -> Result<Self, ChunkError> {
        let Some((header, stream)) = bytes.split_first_chunk::<CHUNK_HEADER_BYTES>() else {
            return Err(ChunkError::HeaderTruncated {
                bytes_len: bytes.len(),
                header_bytes: CHUNK_HEADER_BYTES,
            });
        };
        Ok(ChunkIter {
            reader: BitReader::new(stream),
            samples_count: u16::from_be_bytes(*header) as usize,
            sample_index: 0,
            t: 0,
            t_delta: 0,
            v_bits: 0,
            xor_leading_zeros: XOR_WINDOW_NONE,
            xor_trailing_zeros: 0,
            current: None,
            finished: false,
            error: None,
        })
    }

    /// The sample count from the header (not yet checked against the stream).
    pub fn num_samples(&self) -> usize {
        self.samples_count
    }

    /// Advances to the first sample with `t >= target_t` and returns it, or `None` when there
    /// is none. Like Prometheus's `Seek`, it never moves backwards: if the sample last returned
    /// (by `next` or `seek`) is at or after `target_t`, it is returned again; `next` continues
    /// after the returned sample.
    pub fn seek(&mut self, target_t: i64) -> Result<Option<(i64, f64)>, ChunkError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        if let Some(current) = self.current {
            if current.0 >= target_t {
                return Ok(Some(current));
            }
        }
        for item in self.by_ref() {
            let sample = item?;
            if sample.0 >= target_t {
                return Ok(Some(sample));
            }
        }
        Ok(None)
    }

    fn fail(&mut self, error: ChunkError) -> ChunkError {
        self.finished = true;
        self.error = Some(error.clone());
        error
    }

    /// After the last sample only zero padding up to the byte boundary may remain: anything
    /// else means the header count and the stream disagree.
    fn check_end(&self) -> Result<(), ChunkError> {
        let trailing_bits = self.reader.bits_remaining();
        if trailing_bits >= 8 {
            return Err(ChunkError::TrailingData {
                samples_count: self.samples_count,
                trailing_bits,
            });
        }
        if trailing_bits > 0 && self.reader.peek(trailing_bits as u32) != 0 {
            return Err(ChunkError::PaddingNotZero { samples_count: self.samples_count });
        }
        Ok(())
    }

    #[inline]
    fn decode_next(&mut self) -> Result<(i64, f64), ChunkError> {
        let sample_index = self.sample_index;
        let truncated_t = ChunkError::Truncated { sample_index, field: ChunkField::Timestamp };
        match sample_index {
            0 => {
                let zigzag = self.reader.read_uvarint().map_err(|overflow| {
                    if overflow {
                        ChunkError::VarintOverflow { sample_index }
                    } else {
                        truncated_t.clone()
                    }
                })?;
                self.t = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
                self.v_bits = self
                    .reader
                    .read(64)
                    .ok_or(ChunkError::Truncated { sample_index, field: ChunkField::Value })?;
            }
            _ => {
                let delta = if sample_index == 1 {
                    self.reader.read_uvarint().map_err(|overflow| {
                        if overflow {
                            ChunkError::VarintOverflow { sample_index }
                        } else {
                            truncated_t.clone()
                        }
                    })?
                } else {
                    let dod = self.read_delta_of_delta().ok_or(truncated_t)?;
                    self.t_delta.wrapping_add(dod as u64)
                };
                if delta == 0 {
                    return Err(ChunkError::DeltaZero { sample_index });
                }
                let t = self
                    .t
                    .checked_add_unsigned(delta)
                    .ok_or(ChunkError::TimestampOverflow { sample_index, prev_t: self.t, delta })?;
                self.read_value(sample_index)?;
                self.t = t;
                self.t_delta = delta;
            }
        }
        self.sample_index += 1;
        Ok((self.t, f64::from_bits(self.v_bits)))
    }

    #[inline]
    fn read_delta_of_delta(&mut self) -> Option<i64> {
        // Count the leading ones of the (up to 5-bit) control prefix in one peek.
        let prefix = self.reader.peek(DOD_ESCAPE_PREFIX_BITS);
        let ones = (!(prefix << (64 - DOD_ESCAPE_PREFIX_BITS))).leading_zeros();
        if ones == 0 {
            self.reader.read(1)?;
            return Some(0);
        }
        if ones == DOD_ESCAPE_PREFIX_BITS {
            self.reader.read(DOD_ESCAPE_PREFIX_BITS)?;
            return Some(self.reader.read(64)? as i64);
        }
        let bits = DOD_BUCKET_BITS[ones as usize - 1];
        let both = self.reader.read(ones + 1 + bits)?;
        // Sign-extend the low `bits` bits (the prefix shifts out at the top).
        Some(((both << (64 - bits)) as i64) >> (64 - bits))
    }

    #[inline]
    fn read_value(&mut self, sample_index: usize) -> Result<(), ChunkError> {
        let truncated = ChunkError::Truncated { sample_index, field: ChunkField::Value };
        if !self.reader.read_bit().ok_or(truncated.clone())? {
            return Ok(());
        }
        let (leading_zeros, significant_bits) =
            if !self.reader.read_bit().ok_or(truncated.clone())? {
                if self.xor_leading_zeros == XOR_WINDOW_NONE {
                    return Err(ChunkError::XorWindowMissing { sample_index });
                }
                let leading_zeros = self.xor_leading_zeros as u32;
                (leading_zeros, 64 - leading_zeros - self.xor_trailing_zeros as u32)
            } else {
                let control = self.reader.read(11).ok_or(truncated.clone())?;
                let leading_zeros = (control >> 6) as u32;
                let significant_bits = match (control & 63) as u32 {
                    0 => 64,
                    bits => bits,
                };
                if leading_zeros + significant_bits > 64 {
                    return Err(ChunkError::XorWindowInvalid {
                        sample_index,
                        leading_zeros,
                        significant_bits,
                    });
                }
                self.xor_leading_zeros = leading_zeros as u8;
                self.xor_trailing_zeros = (64 - leading_zeros - significant_bits) as u8;
                (leading_zeros, significant_bits)
            };
        let trailing_zeros = 64 - leading_zeros - significant_bits;
        let xor = self.reader.read(significant_bits).ok_or(truncated)? << trailing_zeros;
        if xor == 0 {
            return Err(ChunkError::XorZeroInWindow { sample_index });
        }
        self.v_bits ^= xor;
        Ok(())
    }
}

impl Iterator for ChunkIter<'_> {
    type Item = Result<(i64, f64), ChunkError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        if self.sample_index == self.samples_count {
            self.finished = true;
            return match self.check_end() {
                Ok(()) => None,
                Err(error) => Some(Err(self.fail(error))),
            };
        }
        match self.decode_next() {
            Ok(sample) => {
                self.current = Some(sample);
                Some(Ok(sample))
            }
            Err(error) => Some(Err(self.fail(error))),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.finished {
            return (0, Some(0));
        }
        // One more item than samples left, at most: the end check may yield an error.
        let samples_left = self.samples_count - self.sample_index;
        (0, Some(samples_left + 1))
    }
}

/// Decodes a whole chunk, checking that the stream holds exactly the header's sample count.
pub fn decode_all(bytes: &[u8]) -> Result<Vec<(i64, f64)>, ChunkError> {
    let iter = ChunkIter::new(bytes)?;
    // The count comes from outside; the stream's length bounds the real count (a sample
    // takes at least 2 bits), so a lying header cannot make this allocate much.
    let capacity = iter.num_samples().min(bytes.len() * 4 + 1);
    let mut samples = Vec::with_capacity(capacity);
    for item in iter {
        samples.push(item?);
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::STALE_NAN_BITS;

    /// Encodes `samples`, decodes them back and compares bit for bit; also checks the encoder's
    /// accessors and that `bytes()` equals `into_bytes()`.
    fn check_round_trip(samples: &[(i64, f64)]) -> Vec<u8> {
        let mut encoder = ChunkEncoder::new();
        for &(t, v) in samples {
            encoder.append(t, v).unwrap();
            // The chunk is complete after every append.
            let decoded = decode_all(encoder.bytes()).unwrap();
            assert_eq!(decoded.len(), encoder.num_samples());
        }
        assert_eq!(encoder.num_samples(), samples.len());
        assert_eq!(encoder.min_t(), samples.first().map(|s| s.0));
        assert_eq!(encoder.max_t(), samples.last().map(|s| s.0));
        assert_eq!(encoder.last_value().map(f64::to_bits), samples.last().map(|s| s.1.to_bits()));
        let bytes = encoder.bytes().to_vec();
        assert_eq!(bytes, encoder.into_bytes());
        assert_eq!(bits_of(&decode_all(&bytes).unwrap()), bits_of(samples));
        let iter = ChunkIter::new(&bytes).unwrap();
        assert_eq!(iter.num_samples(), samples.len());
        bytes
    }

    fn bits_of(samples: &[(i64, f64)]) -> Vec<(i64, u64)> {
        samples.iter().map(|&(t, v)| (t, v.to_bits())).collect()
    }

    // Goal: the encoder writes exactly the bytes storage-format.md § Chunk specifies, and the
    // decoder reads them back.
    // Method: the expected bytes were worked out by hand from the ΔΔ and xor tables in
    // storage-format.md § Chunk, "Worked example" (not captured from the encoder).
    #[test]
    fn golden_bytes_by_hand() {
        let samples = [(1000, 1.0), (1015, 1.0), (1030, 2.0), (1040, 0.5)];
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x00, 0x04,                                     // num_samples = 4
            0xD0, 0x0F,                                     // s0 t: varint(1000)
            0x3F, 0xF0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // s0 v: 1.0
            0x0F,                                           // s1 Δ: uvarint(15)
            // s1 v `0`, s2 ΔΔ `0`, s2 v `11 00001 001011 11111111111`,
            // s3 ΔΔ −5 `10 1011`, s3 v `10 11111111110`, padding `000`.
            0x30, 0x97, 0xFF, 0xEB, 0xBF, 0xF0,
        ];
        assert_eq!(encode_all(&samples).unwrap(), expected);
        assert_eq!(bits_of(&decode_all(expected).unwrap()), bits_of(&samples));
    }

    // Goal: every ΔΔ bucket's control prefix, width and sign convention are as the table in
    // storage-format.md § Chunk says, at each bucket's max and min, byte for byte.
    // Method: storage-format.md § Chunk, "Worked example: every ΔΔ bucket"; the bytes were
    // worked out by hand from the ΔΔ table (not captured from the encoder). All values are 0.0,
    // so each value after sample 0 is the single bit `0`.
    #[test]
    fn golden_bytes_every_bucket_by_hand() {
        let samples: Vec<(i64, f64)> =
            [0, 10, 27, 36, 172, 180, 65_723, 65_730, 590_024, 590_030, 1_099_512_217_812]
                .iter()
                .map(|&t| (t, 0.0))
                .collect();
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x00, 0x0B,                                     // num_samples = 11
            0x00,                                           // s0 t: varint(0)
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // s0 v: 0.0
            0x0A,                                           // s1 Δ: uvarint(10)
            // s1 v `0`, then per sample ΔΔ and v `0`:
            // s2 `10 0111`, s3 `10 1000`, s4 `110 01111111`, s5 `110 10000000`,
            // s6 `1110 01111111111111111`, s7 `1110 10000000000000000`,
            // s8 `11110 01111111111111111111`, s9 `11110 10000000000000000000`,
            // s10 `11111` + 0x0000010000000000 in 64 bits; padding `000`.
            0x4E, 0xA1, 0x9F, 0xDA, 0x01, 0xCF, 0xFF, 0xF7,
            0x40, 0x00, 0x1E, 0x7F, 0xFF, 0xF7, 0xA0, 0x00,
            0x01, 0xF0, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00,
            0x00, 0x00,
        ];
        assert_eq!(encode_all(&samples).unwrap(), expected);
        assert_eq!(bits_of(&decode_all(expected).unwrap()), bits_of(&samples));
    }

    // Goal: the empty chunk is the two header bytes and decodes to nothing.
    // Method: a fresh encoder's bytes and accessors, and decoding `00 00`, checked exactly.
    #[test]
    fn empty_chunk() {
        let encoder = ChunkEncoder::new();
        assert_eq!(encoder.bytes(), &[0, 0]);
        assert_eq!(encoder.min_t(), None);
        assert_eq!(encoder.max_t(), None);
        assert_eq!(encoder.last_value(), None);
        assert_eq!(decode_all(&[0, 0]).unwrap(), vec![]);
        assert_eq!(encode_all(&[]).unwrap(), vec![0, 0]);
    }

    /// Every special float plus values that differ in every way from their neighbours.
    fn special_values() -> Vec<f64> {
        vec![
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -f64::NAN,
            f64::from_bits(STALE_NAN_BITS),
            f64::from_bits(0x7ff0_0000_0000_0001), // signalling NaN, smallest payload
            f64::from_bits(0xffff_ffff_ffff_ffff), // NaN, all payload bits set
            f64::MIN_POSITIVE,
            f64::from_bits(1),                     // smallest subnormal
            f64::from_bits(0x000f_ffff_ffff_ffff), // largest subnormal
            -f64::from_bits(1),
            f64::MAX,
            f64::MIN,
            f64::EPSILON,
            1.0,
            -1.0,
            1e300,
            -1e-300,
            std::f64::consts::PI,
            f64::from_bits(0x8000_0000_0000_0001),
            f64::from_bits(0x0000_0001_0000_0000), // XOR leading zeros ≥ 32: clamped to 31
            f64::from_bits(0x0000_0000_0000_0001),
            f64::from_bits(0x0000_0000_8000_0000),
        ]
    }

    // Goal: edge cases of timestamps and values round-trip bit for bit.
    // Method: a table of named sample sequences, each encoded and decoded by check_round_trip.
    #[test]
    fn round_trip_edge_cases() {
        let specials = special_values();
        let every_special: Vec<(i64, f64)> =
            specials.iter().enumerate().map(|(i, &v)| (i as i64 * 15_000, v)).collect();
        // Every ordered pair of specials back to back, so each XOR case meets each other.
        let mut pairs = Vec::new();
        for &a in &specials {
            for &b in &specials {
                pairs.push(a);
                pairs.push(b);
            }
        }
        let every_pair: Vec<(i64, f64)> =
            pairs.iter().enumerate().map(|(i, &v)| (i as i64 - 300, v)).collect();
        let alternating: Vec<(i64, f64)> = (0..200)
            .map(|i| (i * 1000, if i % 2 == 0 { f64::MAX } else { f64::from_bits(1) }))
            .collect();
        let all_buckets: Vec<(i64, f64)> = {
            // Deltas of deltas at each bucket's min and max and one past each, both signs.
            let mut dods: Vec<i64> = Vec::new();
            for bits in DOD_BUCKET_BITS {
                let half = 1i64 << (bits - 1);
                dods.extend([half - 1, -half, half, -half - 1]);
            }
            dods.extend([1 << 40, -(1 << 40), 0, 1, -1]);
            let mut t = -1_000_000_000;
            let mut delta = 2_000_000i64;
            let mut samples = vec![(t, 0.0), (t + delta, 0.5)];
            t += delta;
            for (i, dod) in dods.iter().enumerate() {
                delta += dod;
                assert!(delta > 0);
                t += delta;
                samples.push((t, i as f64));
            }
            samples
        };
        let cases: Vec<(&str, Vec<(i64, f64)>)> = vec![
            ("single sample", vec![(1_700_000_000_000, 42.0)]),
            ("two samples", vec![(0, 1.0), (15_000, 2.0)]),
            ("three samples", vec![(0, 1.0), (15_000, 2.0), (30_000, 2.0)]),
            ("first t = i64::MIN", vec![(i64::MIN, 1.0), (i64::MIN + 1, 1.0), (0, 2.0)]),
            ("last t = i64::MAX", vec![(0, 1.0), (i64::MAX - 1, 1.0), (i64::MAX, 2.0)]),
            ("whole i64 range", vec![(i64::MIN, 1.0), (i64::MAX, 2.0)]),
            ("whole range then 1", vec![(i64::MIN, 0.0), (i64::MAX - 1, 0.0), (i64::MAX, 0.0)]),
            ("single sample at i64::MIN", vec![(i64::MIN, f64::NAN)]),
            ("single sample at i64::MAX", vec![(i64::MAX, -0.0)]),
            (
                "negative timestamps",
                vec![(-45_000, 1.0), (-30_000, 1.0), (-15_000, 1.0), (-1, 3.0)],
            ),
            ("every special value", every_special),
            ("every pair of specials", every_pair),
            ("alternating extremes", alternating),
            ("every dod bucket", all_buckets),
            ("stale markers", vec![(0, 1.0), (1, f64::from_bits(STALE_NAN_BITS)), (2, 1.0)]),
        ];
        for (name, samples) in cases {
            let decoded = decode_all(&encode_all(&samples).unwrap());
            assert_eq!(decoded.map(|s| bits_of(&s)), Ok(bits_of(&samples)), "case {name:?}");
            check_round_trip(&samples);
        }
    }

    // Goal: each ΔΔ bucket holds exactly its range: its min and max take that bucket's width,
    // and one below the min or one above the max takes the next bucket's.
    // Method: for each ΔΔ, encode 3 samples and compare the exact bit length the third
    // sample's ΔΔ and value take (read from the encoder's bit writer) with the table in
    // storage-format.md § Chunk, then check the round trip. The timestamps are chosen so
    // that Δ1 = t1 - t0 and Δ2 = t2 - t1 give the ΔΔ wanted, up to ±(2^63 - 1) and i64::MIN.
    #[test]
    fn dod_bucket_bounds() {
        // ΔΔ, bits the table gives it (control prefix + value).
        let cases: &[(i64, usize)] = &[
            (0, 1),
            (1, 2 + 4),
            (-1, 2 + 4),
            (7, 2 + 4),
            (-8, 2 + 4),
            (8, 3 + 8),
            (-9, 3 + 8),
            (127, 3 + 8),
            (-128, 3 + 8),
            (128, 4 + 17),
            (-129, 4 + 17),
            (65_535, 4 + 17),
            (-65_536, 4 + 17),
            (65_536, 5 + 20),
            (-65_537, 5 + 20),
            (524_287, 5 + 20),
            (-524_288, 5 + 20),
            (524_288, 5 + 64),
            (-524_289, 5 + 64),
            (1 << 40, 5 + 64),
            (-(1 << 40), 5 + 64),
            (i64::MAX, 5 + 64),
            (i64::MIN + 1, 5 + 64),
            (i64::MIN, 5 + 64),
        ];
        for &(dod, dod_bits) in cases {
            // Δ1 large enough that Δ2 = Δ1 + ΔΔ stays positive; for the extremes, start at
            // i64::MIN with Δ1 = 1 (ΔΔ > 0, or ΔΔ = i64::MIN: Δ2 = 2^63 + 1) or Δ1 = 2^63
            // (other ΔΔ < 0), which the wrapping arithmetic of the format covers.
            let (t0, delta1): (i64, u64) = if dod.unsigned_abs() < (1 << 50) {
                (0, 1 << 50)
            } else if dod > 0 || dod == i64::MIN {
                (i64::MIN, 1)
            } else {
                (i64::MIN, 1 << 63)
            };
            let delta2 = delta1.wrapping_add(dod as u64);
            let t1 = t0.wrapping_add_unsigned(delta1);
            let t2 = t1.checked_add_unsigned(delta2).expect("t2 within i64");
            let mut encoder = ChunkEncoder::new();
            encoder.append(t0, 0.0).unwrap();
            encoder.append(t1, 0.0).unwrap();
            let bits_before = encoder.writer.bits_len;
            encoder.append(t2, 0.0).unwrap();
            // The ΔΔ plus the value's one `0` bit.
            assert_eq!(encoder.writer.bits_len - bits_before, dod_bits + 1, "dod {dod}");
            check_round_trip(&[(t0, 0.0), (t1, 0.0), (t2, 0.0)]);
        }
    }

    // Goal: the encoder refuses what would corrupt a chunk, and leaves the chunk unchanged.
    // Method: an equal and an older timestamp, then an append to a chunk of CHUNK_SAMPLES_MAX
    // samples; each refusal's error is exact and the bytes are compared before and after.
    #[test]
    fn append_refusals() {
        let mut encoder = ChunkEncoder::new();
        encoder.append(100, 1.0).unwrap();
        let before = encoder.bytes().to_vec();
        assert_eq!(
            encoder.append(100, 2.0),
            Err(ChunkError::TimestampNotIncreasing { t: 100, max_t: 100 })
        );
        assert_eq!(
            encoder.append(99, 2.0),
            Err(ChunkError::TimestampNotIncreasing { t: 99, max_t: 100 })
        );
        assert_eq!(encoder.bytes(), &before[..]);
        assert_eq!(encoder.num_samples(), 1);

        let mut encoder = ChunkEncoder::new();
        for i in 0..CHUNK_SAMPLES_MAX {
            encoder.append(i as i64, i as f64).unwrap();
        }
        let before = encoder.bytes().to_vec();
        assert_eq!(
            encoder.append(i64::MAX, 0.0),
            Err(ChunkError::Full { samples_max: CHUNK_SAMPLES_MAX })
        );
        assert_eq!(encoder.bytes(), &before[..]);
        assert_eq!(&before[..2], &[0xff, 0xff]);
        let decoded = decode_all(&before).unwrap();
        assert_eq!(decoded.len(), CHUNK_SAMPLES_MAX);
        assert_eq!(decoded[CHUNK_SAMPLES_MAX - 1], ((CHUNK_SAMPLES_MAX - 1) as i64, 65534.0));
    }

    fn sample_chunk() -> (Vec<(i64, f64)>, Vec<u8>) {
        let samples: Vec<(i64, f64)> = (0..CHUNK_SAMPLES_TARGET as i64)
            .map(|i| (1_700_000_000_000 + i * 15_000 + (i * 7 % 3), (i * i % 17) as f64 * 0.25))
            .collect();
        let bytes = encode_all(&samples).unwrap();
        (samples, bytes)
    }

    // Goal: seek finds the first sample at or after the target, never moves backwards, and
    // `next` continues after the sample seek returned.
    // Method: a table of seek sequences on one chunk, each compared with a linear scan.
    #[test]
    fn seek_cases() {
        let samples = [(10, 1.0), (20, 2.0), (30, 3.0), (40, 4.0)];
        let bytes = encode_all(&samples).unwrap();
        // name, targets, expected t from each seek, expected t of `next` afterwards
        type SeekCase<'a> = (&'a str, &'a [i64], &'a [Option<i64>], Option<i64>);
        let cases: &[SeekCase] = &[
            ("before first", &[i64::MIN], &[Some(10)], Some(20)),
            ("exact", &[20], &[Some(20)], Some(30)),
            ("between", &[21], &[Some(30)], Some(40)),
            ("after last", &[41], &[None], None),
            ("same target twice", &[20, 20], &[Some(20), Some(20)], Some(30)),
            ("backwards stays", &[30, 10], &[Some(30), Some(30)], Some(40)),
            ("forward", &[15, 35, 40], &[Some(20), Some(40), Some(40)], None),
            ("last then past", &[40, 41], &[Some(40), None], None),
        ];
        for (name, targets, expected, expected_next) in cases {
            let mut iter = ChunkIter::new(&bytes).unwrap();
            let got: Vec<Option<i64>> =
                targets.iter().map(|&t| iter.seek(t).unwrap().map(|s| s.0)).collect();
            assert_eq!(&got, expected, "case {name:?}");
            assert_eq!(iter.next().map(|s| s.unwrap().0), *expected_next, "case {name:?}");
        }
    }

    /// What a damaged chunk must give: an error, or any result as long as it does not panic.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Survives {
        Error,
        ErrorOrAnyResult,
    }

    // Goal: damaged chunks never panic; truncation is always an error.
    // Method: a table of case → damage → what must survive, applied to a realistic chunk and
    // to the golden chunk; every damaged copy is decoded by decode_all and by the iterator.
    #[test]
    fn corruption_table() {
        let (_, realistic) = sample_chunk();
        let golden = encode_all(&[(1000, 1.0), (1015, 1.0), (1030, 2.0), (1040, 0.5)]).unwrap();
        let specials: Vec<(i64, f64)> =
            special_values().iter().enumerate().map(|(i, &v)| (i as i64 * 1_000_003, v)).collect();
        let specials = encode_all(&specials).unwrap();
        for original in [realistic, golden, specials] {
            let mut damaged: Vec<(String, Vec<u8>, Survives)> = Vec::new();
            for len in 0..original.len() {
                damaged.push((
                    format!("truncated to {len} bytes"),
                    original[..len].to_vec(),
                    Survives::Error,
                ));
            }
            for bit in 0..original.len() * 8 {
                let mut bytes = original.clone();
                bytes[bit / 8] ^= 0x80 >> (bit % 8);
                damaged.push((format!("bit {bit} flipped"), bytes, Survives::ErrorOrAnyResult));
            }
            let count = u16::from_be_bytes([original[0], original[1]]);
            for wrong_count in [0, 1, count.wrapping_sub(1), count + 1, count + 2, u16::MAX] {
                let mut bytes = original.clone();
                bytes[..2].copy_from_slice(&wrong_count.to_be_bytes());
                damaged.push((format!("count {wrong_count}"), bytes, Survives::ErrorOrAnyResult));
            }
            for extra in [vec![0u8], vec![0xff], vec![0; 9]] {
                let mut bytes = original.clone();
                bytes.extend_from_slice(&extra);
                damaged.push((format!("extra bytes {extra:?}"), bytes, Survives::Error));
            }
            for (name, bytes, survives) in damaged {
                let result = decode_all(&bytes);
                if survives == Survives::Error {
                    assert!(result.is_err(), "case {name:?} decoded: {result:?}");
                }
                // The iterator agrees with decode_all and stops after an error.
                if let Ok(mut iter) = ChunkIter::new(&bytes) {
                    let mut items = Vec::new();
                    for item in iter.by_ref() {
                        items.push(item);
                    }
                    assert!(iter.next().is_none(), "case {name:?}");
                    let collected: Result<Vec<_>, _> = items.into_iter().collect();
                    assert_eq!(collected.map(|s| bits_of(&s)), result.map(|s| bits_of(&s)));
                }
            }
        }
    }

    // Goal: each decoding error names the right sample and fault.
    // Method: hand-built chunks, each broken in one specific way, with the exact error.
    #[test]
    fn decoding_errors() {
        let cases: Vec<(&str, Vec<u8>, ChunkError)> = vec![
            ("no header", vec![], ChunkError::HeaderTruncated { bytes_len: 0, header_bytes: 2 }),
            ("half header", vec![0], ChunkError::HeaderTruncated { bytes_len: 1, header_bytes: 2 }),
            (
                "count 1, no bits",
                vec![0, 1],
                ChunkError::Truncated { sample_index: 0, field: ChunkField::Timestamp },
            ),
            (
                "value cut short",
                vec![0, 1, 0x02, 0x3f, 0xf0],
                ChunkError::Truncated { sample_index: 0, field: ChunkField::Value },
            ),
            (
                "varint of 11 bytes",
                [vec![0, 1], vec![0xff; 10], vec![0x01]].concat(),
                ChunkError::VarintOverflow { sample_index: 0 },
            ),
            (
                "varint tenth byte > 1",
                [vec![0, 1], vec![0xff; 9], vec![0x02]].concat(),
                ChunkError::VarintOverflow { sample_index: 0 },
            ),
            (
                "sample 1 delta zero",
                [vec![0, 2, 0x00], vec![0; 8], vec![0x00, 0x00]].concat(),
                ChunkError::DeltaZero { sample_index: 1 },
            ),
            (
                // t0 = i64::MAX (zigzag u64::MAX - 1), delta 1.
                "sample 1 overflows",
                [vec![0, 2], vec![0xfe], vec![0xff; 8], vec![0x01], vec![0; 8], vec![0x01, 0x00]]
                    .concat(),
                ChunkError::TimestampOverflow { sample_index: 1, prev_t: i64::MAX, delta: 1 },
            ),
            (
                // t0 = 0, delta 1, then ΔΔ = -1 (`10` + 4 ones): delta becomes 0.
                "sample 2 delta zero",
                // bits after 0x01: v1 `0`, ΔΔ `10 1111`, v2 `0`
                [vec![0, 3, 0x00], vec![0; 8], vec![0x01, 0b0101_1110]].concat(),
                ChunkError::DeltaZero { sample_index: 2 },
            ),
            (
                "reuse before any window",
                // bits after Δ: v1 `10`, then padding.
                [vec![0, 2, 0x00], vec![0; 8], vec![0x01, 0b1000_0000]].concat(),
                ChunkError::XorWindowMissing { sample_index: 1 },
            ),
            (
                "window wider than 64",
                // v1 `11` L=31 `11111` S=63 `111111`
                [vec![0, 2, 0x00], vec![0; 8], vec![0x01, 0b1111_1111, 0b1111_1000]].concat(),
                ChunkError::XorWindowInvalid {
                    sample_index: 1,
                    leading_zeros: 31,
                    significant_bits: 63,
                },
            ),
            (
                "zero in window",
                // v1 `11` L=0 `00000` S=1 `000001`, bit `0`
                [vec![0, 2, 0x00], vec![0; 8], vec![0x01, 0b1100_0000, 0b0000_1000]].concat(),
                ChunkError::XorZeroInWindow { sample_index: 1 },
            ),
            (
                "trailing byte",
                [vec![0, 1, 0x00], vec![0; 8], vec![0x00]].concat(),
                ChunkError::TrailingData { samples_count: 1, trailing_bits: 8 },
            ),
            (
                "padding not zero",
                // v1 `0`, then padding `0000001`
                [vec![0, 2, 0x00], vec![0; 8], vec![0x01, 0b0000_0001]].concat(),
                ChunkError::PaddingNotZero { samples_count: 2 },
            ),
            (
                "count 0 with data",
                vec![0, 0, 0],
                ChunkError::TrailingData { samples_count: 0, trailing_bits: 8 },
            ),
        ];
        for (name, bytes, expected) in cases {
            assert_eq!(decode_all(&bytes), Err(expected), "case {name:?}");
        }
    }

    // Goal: error messages say what was wrong and where.
    // Method: a table of errors and their exact Display strings.
    #[test]
    fn error_messages() {
        let cases = [
            (
                ChunkError::Truncated { sample_index: 7, field: ChunkField::Value },
                "chunk ends inside the value of sample 7",
            ),
            (
                ChunkError::TimestampNotIncreasing { t: 5, max_t: 9 },
                "timestamp 5 is not after the chunk's last timestamp 9",
            ),
            (
                ChunkError::Full { samples_max: 65535 },
                "chunk is full: it holds 65535 samples already",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error.to_string(), expected);
        }
    }
}
