//! The `index` file: symbols, series table and postings (storage-format.md § Block › index).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use sextant_core::chunk::CHUNK_SAMPLES_MAX;
use sextant_core::labels::{Label, Labels};

use super::format::{
    decode_frame, encode_file_header, encode_frame, put_bytes, put_uvarint, put_varint, Decoder, FILE_HEADER_BYTES,
    INDEX_MAGIC, KIND_POSTINGS, KIND_SERIES, KIND_SYMBOLS, SECTION_RAW_BYTES_MAX,
};
use super::{
    BlockError, BLOCK_SERIES_COUNT_MAX, CHUNK_GROUP_RAW_BYTES_MAX, SERIES_CHUNK_COUNT_MAX, SERIES_LABEL_COUNT_MAX,
    SYMBOL_BYTES_MAX, TENANT_LABEL,
};

/// Where one chunk lives and what it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkMeta {
    pub min_t: i64,
    pub max_t: i64,
    pub samples: u32,
    /// File offset of the chunk group frame in `chunks`.
    pub group_offset: u64,
    /// Offset of the chunk inside the group's decoded data.
    pub offset_in_group: u32,
    pub len: u32,
}

/// One series of the index.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexSeries {
    pub tenant: Arc<str>,
    pub labels: Labels,
    pub chunks: Vec<ChunkMeta>,
}

/// The decoded index: series sorted by (tenant, labels), postings by name then value.
#[derive(Debug, Default)]
pub struct Index {
    pub series: Vec<IndexSeries>,
    pub postings: BTreeMap<String, BTreeMap<String, Vec<u32>>>,
}

/// The sorted, unique symbols of a series list (tenants, label names, label values and
/// [`TENANT_LABEL`]).
pub fn collect_symbols(series: &[IndexSeries]) -> Vec<String> {
    let mut symbols: BTreeSet<&str> = BTreeSet::new();
    symbols.insert(TENANT_LABEL);
    for s in series {
        symbols.insert(&s.tenant);
        for label in s.labels.iter() {
            symbols.insert(&label.name);
            symbols.insert(&label.value);
        }
    }
    symbols.into_iter().map(str::to_string).collect()
}

/// Raw data of the symbols section: `count <uvarint> │ (len <uvarint> │ bytes <len>)*`.
pub fn encode_symbols(symbols: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    put_uvarint(&mut out, symbols.len() as u64);
    for symbol in symbols {
        put_bytes(&mut out, symbol.as_bytes());
    }
    out
}

fn symbol_id(symbols: &[String], s: &str) -> u64 {
    symbols.binary_search_by(|x| x.as_str().cmp(s)).expect("every string of the block is a symbol") as u64
}

/// Raw data of the series section.
pub fn encode_series(symbols: &[String], series: &[IndexSeries]) -> Vec<u8> {
    let mut out = Vec::new();
    put_uvarint(&mut out, series.len() as u64);
    let mut previous_group_offset = 0u64;
    let mut previous_group_end = 0u32;
    for s in series {
        put_uvarint(&mut out, symbol_id(symbols, &s.tenant));
        put_uvarint(&mut out, s.labels.len() as u64);
        for label in s.labels.iter() {
            put_uvarint(&mut out, symbol_id(symbols, &label.name));
            put_uvarint(&mut out, symbol_id(symbols, &label.value));
        }
        put_uvarint(&mut out, s.chunks.len() as u64);
        let mut previous_max_t = None;
        for chunk in &s.chunks {
            match previous_max_t {
                None => put_varint(&mut out, chunk.min_t),
                Some(previous) => {
                    assert!(chunk.min_t > previous);
                    put_uvarint(&mut out, chunk.min_t.abs_diff(previous));
                }
            }
            assert!(chunk.max_t >= chunk.min_t);
            put_uvarint(&mut out, chunk.max_t.abs_diff(chunk.min_t));
            put_uvarint(&mut out, u64::from(chunk.samples));
            assert!(chunk.group_offset >= previous_group_offset);
            // A zero delta means "the same group, right after the previous chunk": the reader
            // derives offset_in_group from that, so the writer must have laid chunks out so.
            if chunk.group_offset == previous_group_offset {
                assert!(chunk.offset_in_group == previous_group_end);
            } else {
                assert!(chunk.offset_in_group == 0);
            }
            put_uvarint(&mut out, chunk.group_offset - previous_group_offset);
            previous_group_end = chunk.offset_in_group + chunk.len;
            put_uvarint(&mut out, u64::from(chunk.len));
            previous_group_offset = chunk.group_offset;
            previous_max_t = Some(chunk.max_t);
        }
    }
    out
}

/// Postings keyed by (name symbol id, value symbol id), ids in series order.
pub fn build_postings(symbols: &[String], series: &[IndexSeries]) -> BTreeMap<(u64, u64), Vec<u32>> {
    let tenant_label = symbol_id(symbols, TENANT_LABEL);
    let mut postings: BTreeMap<(u64, u64), Vec<u32>> = BTreeMap::new();
    for (id, s) in series.iter().enumerate() {
        let id = u32::try_from(id).expect("series count is limited below u32::MAX");
        postings.entry((tenant_label, symbol_id(symbols, &s.tenant))).or_default().push(id);
        for label in s.labels.iter() {
            postings.entry((symbol_id(symbols, &label.name), symbol_id(symbols, &label.value))).or_default().push(id);
        }
    }
    postings
}

/// Raw data of the postings section:
/// `count <uvarint> │ (name <uvarint> │ value <uvarint> │ n <uvarint> │ first <uvarint> │ delta <uvarint> × (n-1))*`.
pub fn encode_postings(postings: &BTreeMap<(u64, u64), Vec<u32>>) -> Vec<u8> {
    let mut out = Vec::new();
    put_uvarint(&mut out, postings.len() as u64);
    for ((name, value), ids) in postings {
        put_uvarint(&mut out, *name);
        put_uvarint(&mut out, *value);
        put_uvarint(&mut out, ids.len() as u64);
        let mut previous = None;
        for &id in ids {
            match previous {
                None => put_uvarint(&mut out, u64::from(id)),
                Some(p) => {
                    assert!(id > p);
                    put_uvarint(&mut out, u64::from(id - p));
                }
            }
            previous = Some(id);
        }
    }
    out
}

/// The whole `index` file for series sorted by (tenant, labels).
pub fn encode_index(series: &[IndexSeries], zstd_level: Option<i32>) -> Vec<u8> {
    for pair in series.windows(2) {
        assert!((&pair[0].tenant, &pair[0].labels) < (&pair[1].tenant, &pair[1].labels));
    }
    let symbols = collect_symbols(series);
    let mut out = encode_file_header(INDEX_MAGIC).to_vec();
    out.extend_from_slice(&encode_frame(KIND_SYMBOLS, &encode_symbols(&symbols), zstd_level));
    out.extend_from_slice(&encode_frame(KIND_SERIES, &encode_series(&symbols, series), zstd_level));
    out.extend_from_slice(&encode_frame(KIND_POSTINGS, &encode_postings(&build_postings(&symbols, series)), zstd_level));
    out
}

/// Decodes and verifies a whole `index` file (header already checked by the caller).
pub fn decode_index(bytes: &[u8], file: &Path) -> Result<Index, BlockError> {
    let mut offset = FILE_HEADER_BYTES;
    let (raw, len) = decode_frame(&bytes[offset..], file, offset as u64, KIND_SYMBOLS, SECTION_RAW_BYTES_MAX)?;
    let symbols = decode_symbols(&raw, file, offset as u64)?;
    offset += len;
    let (raw, len) = decode_frame(&bytes[offset..], file, offset as u64, KIND_SERIES, SECTION_RAW_BYTES_MAX)?;
    let series = decode_series(&raw, file, offset as u64, &symbols)?;
    offset += len;
    let (raw, len) = decode_frame(&bytes[offset..], file, offset as u64, KIND_POSTINGS, SECTION_RAW_BYTES_MAX)?;
    let postings = decode_postings(&raw, file, offset as u64, &symbols, &series)?;
    offset += len;
    if offset != bytes.len() {
        return Err(BlockError::corrupt(
            file,
            "postings",
            offset as u64,
            format!("{} bytes follow the last section", bytes.len() - offset),
        ));
    }
    Ok(Index { series, postings })
}

fn decode_symbols(raw: &[u8], file: &Path, frame_offset: u64) -> Result<Vec<String>, BlockError> {
    let mut d = Decoder::new(raw, file, "symbols", frame_offset);
    // Each symbol takes at least one byte, which bounds the count by the data.
    let count = d.count(raw.len(), "symbol count")?;
    let mut symbols: Vec<String> = Vec::with_capacity(count);
    for _ in 0..count {
        let len = d.count(SYMBOL_BYTES_MAX, "symbol length")?;
        let bytes = d.bytes(len)?;
        let symbol = std::str::from_utf8(bytes).map_err(|e| d.error(format!("symbol is not UTF-8: {e}")))?;
        if let Some(previous) = symbols.last() {
            if previous.as_str() >= symbol {
                return Err(d.error(format!("symbol {symbol:?} is not after {previous:?}")));
            }
        }
        symbols.push(symbol.to_string());
    }
    d.finish()?;
    if symbols.binary_search_by(|s| s.as_str().cmp(TENANT_LABEL)).is_err() {
        return Err(d.error(format!("the symbol {TENANT_LABEL:?} is missing")));
    }
    Ok(symbols)
}

fn symbol<'s>(d: &Decoder<'_>, symbols: &'s [String], id: u64) -> Result<&'s String, BlockError> {
    usize::try_from(id)
        .ok()
        .and_then(|i| symbols.get(i))
        .ok_or_else(|| d.error(format!("symbol id {id} out of range (there are {})", symbols.len())))
}

fn decode_series(raw: &[u8], file: &Path, frame_offset: u64, symbols: &[String]) -> Result<Vec<IndexSeries>, BlockError> {
    let mut d = Decoder::new(raw, file, "series", frame_offset);
    let count = d.count(BLOCK_SERIES_COUNT_MAX.min(raw.len()), "series count")?;
    let mut series: Vec<IndexSeries> = Vec::with_capacity(count);
    let mut tenants: BTreeMap<&str, Arc<str>> = BTreeMap::new();
    let mut group_offset = 0u64;
    let mut group_end = 0u64;
    let mut previous_group = None;
    for _ in 0..count {
        let tenant_id = d.uvarint()?;
        let tenant = symbol(&d, symbols, tenant_id)?;
        let tenant = tenants.entry(tenant).or_insert_with(|| Arc::from(tenant.as_str())).clone();
        let label_count = d.count(SERIES_LABEL_COUNT_MAX, "label count")?;
        let mut labels = Vec::with_capacity(label_count);
        let mut previous_name: Option<u64> = None;
        for _ in 0..label_count {
            let name_id = d.uvarint()?;
            if previous_name.is_some_and(|p| p >= name_id) {
                return Err(d.error("label names not strictly increasing"));
            }
            previous_name = Some(name_id);
            let name = symbol(&d, symbols, name_id)?;
            let value_id = d.uvarint()?;
            let value = symbol(&d, symbols, value_id)?;
            if name.is_empty() || name == TENANT_LABEL || value.is_empty() {
                return Err(d.error(format!("invalid label {name:?}={value:?}")));
            }
            labels.push(Label::new(name.clone(), value.clone()));
        }
        let labels = Labels::from_sorted(labels);
        if let Some(previous) = series.last() {
            if (&previous.tenant, &previous.labels) >= (&tenant, &labels) {
                return Err(d.error("series not strictly increasing by (tenant, labels)"));
            }
        }
        let chunk_count = d.count(SERIES_CHUNK_COUNT_MAX, "chunk count")?;
        if chunk_count == 0 {
            return Err(d.error("series without chunks"));
        }
        let mut chunks = Vec::with_capacity(chunk_count.min(raw.len()));
        let mut previous_max_t: Option<i64> = None;
        for _ in 0..chunk_count {
            let min_t = match previous_max_t {
                None => d.varint()?,
                Some(previous) => {
                    let delta = d.uvarint()?;
                    if delta == 0 {
                        return Err(d.error("chunk overlaps the previous chunk of its series"));
                    }
                    previous.checked_add_unsigned(delta).ok_or_else(|| d.error("chunk min_t overflows"))?
                }
            };
            let span = d.uvarint()?;
            let max_t = min_t.checked_add_unsigned(span).ok_or_else(|| d.error("chunk max_t overflows"))?;
            let samples = d.count(CHUNK_SAMPLES_MAX, "chunk sample count")?;
            if samples == 0 || (samples as u64 - 1) > span {
                return Err(d.error(format!("chunk of {samples} samples cannot span {span} ms")));
            }
            let delta = d.uvarint()?;
            let len = d.count(CHUNK_GROUP_RAW_BYTES_MAX, "chunk length")?;
            if len < 2 {
                return Err(d.error("chunk shorter than its header"));
            }
            let offset_in_group;
            if delta == 0 && previous_group.is_some() {
                offset_in_group = group_end;
            } else {
                group_offset = group_offset.checked_add(delta).ok_or_else(|| d.error("group offset overflows"))?;
                if group_offset < FILE_HEADER_BYTES as u64 {
                    return Err(d.error("chunk group offset inside the file header"));
                }
                offset_in_group = 0;
            }
            previous_group = Some(group_offset);
            group_end = offset_in_group + len as u64;
            if group_end > CHUNK_GROUP_RAW_BYTES_MAX as u64 {
                return Err(d.error("chunk ends past the largest chunk group"));
            }
            chunks.push(ChunkMeta {
                min_t,
                max_t,
                samples: samples as u32,
                group_offset,
                offset_in_group: offset_in_group as u32,
                len: len as u32,
            });
            previous_max_t = Some(max_t);
        }
        series.push(IndexSeries { tenant, labels, chunks });
    }
    d.finish()?;
    Ok(series)
}

fn decode_postings(
    raw: &[u8],
    file: &Path,
    frame_offset: u64,
    symbols: &[String],
    series: &[IndexSeries],
) -> Result<BTreeMap<String, BTreeMap<String, Vec<u32>>>, BlockError> {
    let mut d = Decoder::new(raw, file, "postings", frame_offset);
    let count = d.count(raw.len(), "postings list count")?;
    let mut postings: BTreeMap<String, BTreeMap<String, Vec<u32>>> = BTreeMap::new();
    let mut previous_key: Option<(u64, u64)> = None;
    let mut total: u64 = 0;
    for _ in 0..count {
        let name_id = d.uvarint()?;
        let value_id = d.uvarint()?;
        if previous_key.is_some_and(|p| p >= (name_id, value_id)) {
            return Err(d.error("postings lists not strictly increasing by (name, value)"));
        }
        previous_key = Some((name_id, value_id));
        let name = symbol(&d, symbols, name_id)?;
        let value = symbol(&d, symbols, value_id)?;
        let n = d.count(series.len(), "postings list length")?;
        if n == 0 {
            return Err(d.error("empty postings list"));
        }
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let v = d.uvarint()?;
            let id = if i == 0 {
                v
            } else {
                if v == 0 {
                    return Err(d.error("postings ids not strictly increasing"));
                }
                u64::from(*ids.last().expect("i > 0")) + v
            };
            let Some(s) = usize::try_from(id).ok().and_then(|i| series.get(i)) else {
                return Err(d.error(format!("series id {id} out of range (there are {})", series.len())));
            };
            let has = if name == TENANT_LABEL { &*s.tenant == value } else { s.labels.get(name) == value };
            if !has || value.is_empty() && name != TENANT_LABEL {
                return Err(d.error(format!("series {id} is listed under {name}={value:?} but does not have it")));
            }
            ids.push(id as u32);
        }
        total += n as u64;
        postings.entry(name.clone()).or_default().insert(value.clone(), ids);
    }
    d.finish()?;
    // Every listed (series, label) pair exists and lists hold no duplicates, so equal totals mean
    // the postings are exactly the series table's labels.
    let expected: u64 = series.iter().map(|s| s.labels.len() as u64 + 1).sum();
    if total != expected {
        return Err(d.error(format!("postings hold {total} entries, the series table implies {expected}")));
    }
    Ok(postings)
}
