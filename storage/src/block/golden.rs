//! Golden bytes for the block format, written by hand from docs/design/storage-format.md
//! § Block (not captured from the encoder), so they catch the code drifting from the document.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sextant_core::labels::Labels;
use sextant_core::sample::Sample;

use super::format::{encode_file_header, encode_frame, CHUNKS_MAGIC, INDEX_MAGIC, KIND_POSTINGS, META_MAGIC, TOMBSTONES_MAGIC};
use super::index::{encode_postings, encode_series, encode_symbols, ChunkMeta, IndexSeries};
use super::{write_block, Block, BlockSeriesData, BlockWriterConfig};
use crate::fs::sim::SimFs;
use crate::fs::FileSystem;

/// A frame as § Block › Common framing describes it: `len`, `kind`, `encoding` 0, `raw_len`,
/// data, then the CRC-32 (IEEE) of everything before it.
fn raw_frame(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.push(kind);
    out.push(0);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

// Goal: file headers are magic, version 1, three zero bytes.
// Method: "storage-format.md § Block › Common framing" (file header table), by hand.
#[test]
fn golden_file_headers() {
    assert_eq!(encode_file_header(INDEX_MAGIC), [0x53, 0x58, 0x42, 0x49, 0x01, 0x00, 0x00, 0x00]);
    assert_eq!(encode_file_header(CHUNKS_MAGIC), [0x53, 0x58, 0x42, 0x43, 0x01, 0x00, 0x00, 0x00]);
    assert_eq!(encode_file_header(META_MAGIC), [0x53, 0x58, 0x42, 0x4D, 0x01, 0x00, 0x00, 0x00]);
    assert_eq!(encode_file_header(TOMBSTONES_MAGIC), [0x53, 0x58, 0x42, 0x54, 0x01, 0x00, 0x00, 0x00]);
}

// Goal: a raw section frame byte for byte, and the CRC being IEEE CRC-32.
// Method: "storage-format.md § Block › Common framing" (section frame), by hand; the CRC's
// check value for "123456789" is the IEEE polynomial's published 0xCBF43926.
#[test]
fn golden_section_frame() {
    assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    let frame = encode_frame(KIND_POSTINGS, &[0xAA, 0xBB], None);
    let head = [0x02, 0x00, 0x00, 0x00, 0x03, 0x00, 0x02, 0x00, 0x00, 0x00, 0xAA, 0xBB];
    assert_eq!(frame[..12], head);
    assert_eq!(frame[12..], crc32fast::hash(&head).to_le_bytes());
    // Incompressible data stays raw even when zstd is asked for.
    assert_eq!(encode_frame(KIND_POSTINGS, &[0xAA, 0xBB], Some(3)), frame);
}

fn tiny_series() -> Vec<IndexSeries> {
    vec![IndexSeries {
        tenant: Arc::from("t"),
        labels: Labels::from_pairs(&[("__name__", "up")]),
        chunks: vec![
            ChunkMeta { min_t: 1000, max_t: 1030, samples: 3, group_offset: 8, offset_in_group: 0, len: 20 },
            ChunkMeta { min_t: 1045, max_t: 1060, samples: 2, group_offset: 8, offset_in_group: 20, len: 10 },
        ],
    }]
}

fn tiny_symbols() -> Vec<String> {
    ["__name__", "__tenant__", "t", "up"].iter().map(|s| s.to_string()).collect()
}

// Goal: symbols, series and postings sections of a one-series block.
// Method: "storage-format.md § Block › index › Symbols / Series / Postings", by hand. Symbols
// sort bytewise: "__name__" (0) < "__tenant__" (1) < "t" (2) < "up" (3).
#[test]
fn golden_tiny_index_sections() {
    let symbols = tiny_symbols();
    assert_eq!(super::index::collect_symbols(&tiny_series()), symbols);
    let mut expected = vec![0x04, 0x08];
    expected.extend_from_slice(b"__name__");
    expected.push(0x0A);
    expected.extend_from_slice(b"__tenant__");
    expected.push(0x01);
    expected.extend_from_slice(b"t");
    expected.push(0x02);
    expected.extend_from_slice(b"up");
    assert_eq!(encode_symbols(&symbols), expected);

    let series = [
        0x01, // count
        0x02, // tenant "t"
        0x01, 0x00, 0x03, // one label: __name__ = up
        0x02, // two chunks
        0xD0, 0x0F, 0x1E, 0x03, 0x08, 0x14, // min_t zigzag(1000)=2000, span 30, 3 samples, group +8, len 20
        0x0F, 0x0F, 0x02, 0x00, 0x0A, // min_t 1030+15, span 15, 2 samples, same group, len 10
    ];
    assert_eq!(encode_series(&symbols, &tiny_series()), series);

    let mut postings = BTreeMap::new();
    postings.insert((0u64, 3u64), vec![0u32]);
    postings.insert((1, 2), vec![0]);
    assert_eq!(super::index::build_postings(&symbols, &tiny_series()), postings);
    // count 2; (__name__, up): n 1, id 0; (__tenant__, t): n 1, id 0.
    assert_eq!(encode_postings(&postings), [0x02, 0x00, 0x03, 0x01, 0x00, 0x01, 0x02, 0x01, 0x00]);
}

// Goal: a whole uncompressed block, `index` and `chunks` byte for byte.
// Method: "storage-format.md § Block › index" and "§ Block › chunks", by hand; the chunk is
// the worked example of "§ Chunk › Worked example".
#[tokio::test]
async fn golden_whole_block_uncompressed() {
    let fs: Arc<dyn FileSystem> = Arc::new(SimFs::new(1));
    let blocks = PathBuf::from("blocks");
    fs.create_dir_all(&blocks).await.unwrap();
    let samples = [(1000, 1.0), (1015, 1.0), (1030, 2.0), (1040, 0.5)].map(|(t, v)| Sample::new(t, v)).to_vec();
    let series = vec![BlockSeriesData { tenant: "t".into(), labels: Labels::from_pairs(&[("__name__", "up")]), samples }];
    let config = BlockWriterConfig { zstd_level: None, ..BlockWriterConfig::default() };
    write_block(&*fs, &blocks, 1, series, &config).await.unwrap();

    // The worked example of storage-format.md § Chunk (19 bytes).
    let chunk = [0x00, 0x04, 0xD0, 0x0F, 0x3F, 0xF0, 0, 0, 0, 0, 0, 0, 0x0F, 0x30, 0x97, 0xFF, 0xEB, 0xBF, 0xF0];
    let mut chunks = vec![0x53, 0x58, 0x42, 0x43, 0x01, 0x00, 0x00, 0x00];
    chunks.extend_from_slice(&raw_frame(4, &chunk));
    assert_eq!(fs.read(Path::new("blocks/0000000000000001/chunks")).await.unwrap(), chunks);

    let mut symbols = vec![0x04, 0x08];
    symbols.extend_from_slice(b"__name__");
    symbols.push(0x0A);
    symbols.extend_from_slice(b"__tenant__");
    symbols.extend_from_slice(&[0x01, b't', 0x02, b'u', b'p']);
    // One chunk: min_t 1000, span 40, 4 samples, group at offset 8, 19 bytes.
    let series = [0x01, 0x02, 0x01, 0x00, 0x03, 0x01, 0xD0, 0x0F, 0x28, 0x04, 0x08, 0x13];
    let postings = [0x02, 0x00, 0x03, 0x01, 0x00, 0x01, 0x02, 0x01, 0x00];
    let mut index = vec![0x53, 0x58, 0x42, 0x49, 0x01, 0x00, 0x00, 0x00];
    index.extend_from_slice(&raw_frame(1, &symbols));
    index.extend_from_slice(&raw_frame(2, &series));
    index.extend_from_slice(&raw_frame(3, &postings));
    assert_eq!(fs.read(Path::new("blocks/0000000000000001/index")).await.unwrap(), index);

    // meta: header, one raw frame of kind 5 holding JSON with the documented fields.
    let meta = fs.read(Path::new("blocks/0000000000000001/meta")).await.unwrap();
    assert_eq!(meta[..8], [0x53, 0x58, 0x42, 0x4D, 0x01, 0x00, 0x00, 0x00]);
    assert_eq!(meta[12], 5);
    let json: serde_json::Value = serde_json::from_slice(&meta[18..meta.len() - 4]).unwrap();
    let expected = serde_json::json!({
        "format_version": 1, "seq": 1, "min_t": 1000, "max_t": 1040,
        "series_count": 1, "sample_count": 4, "chunk_count": 1,
        "compaction": {"level": 0, "sources": [1], "parents": []},
        "files": {"index_bytes": index.len(), "chunks_bytes": chunks.len()},
    });
    assert_eq!(json, expected);
    let block = Block::open(fs.clone(), blocks.join("0000000000000001")).await.unwrap();
    assert_eq!(block.meta().sample_count, 4);
}
