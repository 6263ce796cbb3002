//! Corruption table: damage each section and each file of one block and check that opening or
//! reading it yields a typed error naming the file and section — never a panic, never wrong
//! data — while a second block in the same directory stays readable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sextant_core::labels::Labels;
use sextant_core::matcher::Matcher;
use sextant_core::sample::Sample;
use sextant_storage::block::{write_block, Block, BlockError, BlockSeriesData, BlockWriterConfig, Tombstone};
use sextant_storage::fs::sim::SimFs;
use sextant_storage::fs::FileSystem;

const BLOCKS: &str = "blocks";

fn series(n: usize) -> Vec<BlockSeriesData> {
    (0..n)
        .map(|i| BlockSeriesData {
            tenant: if i % 3 == 0 { "a".into() } else { "b".into() },
            labels: Labels::from_pairs(&[("__name__", "m"), ("i", &i.to_string())]),
            samples: (0..300).map(|k| Sample::new(k * 15_000, (k * i as i64) as f64 * 0.5)).collect(),
        })
        .collect()
}

/// Two blocks (1 and 2), block 1 with a tombstone.
async fn setup() -> (SimFs, Arc<dyn FileSystem>) {
    let sim = SimFs::new(3);
    let fs: Arc<dyn FileSystem> = Arc::new(sim.clone());
    fs.create_dir_all(Path::new(BLOCKS)).await.unwrap();
    fs.sync_dir(Path::new("")).await.unwrap();
    let config = BlockWriterConfig { chunk_group_bytes_target: 2048, ..BlockWriterConfig::default() };
    write_block(&*fs, Path::new(BLOCKS), 1, series(30), &config).await.unwrap();
    write_block(&*fs, Path::new(BLOCKS), 2, series(10), &config).await.unwrap();
    let mut block = Block::open(fs.clone(), PathBuf::from("blocks/0000000000000001")).await.unwrap();
    let tombstone = Tombstone { tenant: "a".into(), matchers: vec![Matcher::equal("i", "3")], min_t: 0, max_t: 30_000 };
    block.add_tombstone(tombstone).await.unwrap();
    (sim, fs)
}

/// Offsets and lengths of the frames after the 8-byte header.
async fn frames(fs: &dyn FileSystem, file: &str) -> Vec<(usize, usize)> {
    let bytes = fs.read(Path::new(file)).await.unwrap();
    let mut out = Vec::new();
    let mut offset = 8;
    while offset < bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize + 14;
        out.push((offset, len));
        offset += len;
    }
    out
}

/// Opens block 1 and reads every series in full; the first error, if any.
async fn open_and_read(fs: &Arc<dyn FileSystem>) -> Result<(), BlockError> {
    let block = Block::open(fs.clone(), PathBuf::from("blocks/0000000000000001")).await?;
    for r in block.all_series() {
        block.samples(r, i64::MIN, i64::MAX).await?;
    }
    Ok(())
}

async fn block_two_is_intact(fs: &Arc<dyn FileSystem>) {
    let block = Block::open(fs.clone(), PathBuf::from("blocks/0000000000000002")).await.unwrap();
    let expected = series(10);
    for (r, s) in block.all_series().zip(&expected) {
        assert_eq!(block.samples(r, i64::MIN, i64::MAX).await.unwrap().len(), s.samples.len());
    }
}

enum Damage {
    /// Flip all bits of one byte at (frame index or None for the header, offset in it).
    Flip { frame: Option<usize>, at: usize },
    Truncate { cut_bytes: u64 },
    Delete,
}

fn flip(frame: Option<usize>, at: usize) -> Damage {
    Damage::Flip { frame, at }
}

// Goal: every kind of damage to every file and section is reported as a typed error naming
// that file and section. Method: a table of (file, damage, expected section); "section" None
// means an I/O error naming the file.
#[tokio::test]
async fn corruption_table() {
    let cases: Vec<(&str, &str, Damage, Option<&str>)> = vec![
        ("index magic", "index", flip(None, 0), Some("header")),
        ("index version", "index", flip(None, 4), Some("header")),
        ("index symbols data", "index", flip(Some(0), 20), Some("symbols")),
        ("index symbols length", "index", flip(Some(0), 1), Some("symbols")),
        ("index series data", "index", flip(Some(1), 15), Some("series")),
        ("index series kind", "index", flip(Some(1), 4), Some("series")),
        ("index postings data", "index", flip(Some(2), 12), Some("postings")),
        ("index postings crc", "index", flip(Some(2), usize::MAX), Some("postings")),
        ("index truncated", "index", Damage::Truncate { cut_bytes: 1 }, Some("file")),
        ("index deleted", "index", Damage::Delete, None),
        ("chunks magic", "chunks", flip(None, 1), Some("header")),
        ("chunks first group data", "chunks", flip(Some(0), 30), Some("chunk group")),
        ("chunks last group crc", "chunks", flip(Some(usize::MAX), usize::MAX), Some("chunk group")),
        ("chunks group encoding", "chunks", flip(Some(1), 5), Some("chunk group")),
        ("chunks truncated", "chunks", Damage::Truncate { cut_bytes: 7 }, Some("file")),
        ("chunks deleted", "chunks", Damage::Delete, None),
        ("meta magic", "meta", flip(None, 2), Some("header")),
        ("meta json", "meta", flip(Some(0), 40), Some("meta")),
        ("meta truncated", "meta", Damage::Truncate { cut_bytes: 3 }, Some("meta")),
        ("meta deleted", "meta", Damage::Delete, None),
        ("tombstones json", "tombstones", flip(Some(0), 20), Some("tombstones")),
        ("tombstones truncated", "tombstones", Damage::Truncate { cut_bytes: 1 }, Some("tombstones")),
        ("tombstones magic", "tombstones", flip(None, 3), Some("header")),
    ];
    for (name, file, damage, section) in cases {
        let (sim, fs) = setup().await;
        let path = format!("blocks/0000000000000001/{file}");
        match damage {
            Damage::Flip { frame, at } => {
                let bytes = fs.read(Path::new(&path)).await.unwrap();
                let offset = match frame {
                    None => at,
                    Some(i) => {
                        let all = frames(&*fs, &path).await;
                        let (start, len) = all[i.min(all.len() - 1)];
                        start + at.min(len - 1)
                    }
                };
                sim.corrupt(Path::new(&path), offset, &[!bytes[offset]]).unwrap();
            }
            Damage::Truncate { cut_bytes } => {
                let len = fs.file_len(Path::new(&path)).await.unwrap();
                fs.truncate(Path::new(&path), len - cut_bytes).await.unwrap();
            }
            Damage::Delete => fs.remove_file(Path::new(&path)).await.unwrap(),
        }
        let error = open_and_read(&fs).await.expect_err(name);
        assert_eq!(error.file(), Some(Path::new(&path)), "{name}: {error}");
        match (section, &error) {
            (None, BlockError::Io { .. }) => {}
            (Some(expected), BlockError::Corrupt { section, .. }) => assert_eq!(*section, expected, "{name}: {error}"),
            _ => panic!("{name}: unexpected error {error}"),
        }
        assert!(error.to_string().contains(&path), "{name}: the message names the file: {error}");
        block_two_is_intact(&fs).await;
    }
}

// Goal: no single damaged byte anywhere in index, meta or chunks goes unnoticed or panics.
// Method: flip each byte in turn (restoring it after), open and read everything.
#[tokio::test]
async fn every_byte_flip_is_detected() {
    let (sim, fs) = setup().await;
    for file in ["index", "meta", "chunks", "tombstones"] {
        let path = format!("blocks/0000000000000001/{file}");
        let bytes = fs.read(Path::new(&path)).await.unwrap();
        let step = if file == "chunks" { 7 } else { 1 };
        for offset in (0..bytes.len()).step_by(step) {
            sim.corrupt(Path::new(&path), offset, &[bytes[offset] ^ 0x10]).unwrap();
            let error = open_and_read(&fs).await.expect_err(&format!("{file} byte {offset}"));
            assert_eq!(error.file(), Some(Path::new(&path)), "{file} byte {offset}: {error}");
            sim.corrupt(Path::new(&path), offset, &[bytes[offset]]).unwrap();
        }
    }
    open_and_read(&fs).await.unwrap();
}
