//! WAL codec tests: golden bytes written by hand from docs/design/storage-format.md § WAL,
//! typed decode errors, and property tests (round trip; arbitrary bytes never panic).

use proptest::prelude::*;
use sextant_core::labels::{Label, LabelError, Labels};
use sextant_core::matcher::{MatchOp, Matcher};
use sextant_storage::wal::format::{
    check_header, frame_record, framed_len, segment_header, HeaderCheck, SegmentScan, PAGE_BYTES, SEGMENT_HEADER_BYTES,
};
use sextant_storage::wal::record::{decode_payload, encode_meta, encode_payload, DecodeError, Payload};
use sextant_storage::wal::{RecordBody, SampleEntry, SeriesEntry, TombstoneEntry, WalRecord};

fn le64(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn roundtrip(record: &WalRecord) {
    let bytes = encode_payload(record);
    assert_eq!(decode_payload(&bytes), Ok(Payload::Record(record.clone())));
}

// Goal: the Samples payload matches § WAL "Record payload" and "kind 2 Samples" byte for byte.
#[test]
fn golden_samples_payload() {
    let record = WalRecord {
        shard: 7,
        seq: 258,
        body: RecordBody::Samples(vec![SampleEntry { series_ref: 1, t: 1000, v: 1.5 }]),
    };
    let mut expected = vec![0x07, 0x00, 0x00, 0x00]; // shard u32
    expected.extend([0x02, 0x01, 0, 0, 0, 0, 0, 0]); // seq u64 = 258
    expected.push(0x02); // kind Samples
    expected.push(0x01); // count uvarint
    expected.extend([0x01, 0, 0, 0, 0, 0, 0, 0]); // series_ref
    expected.extend([0xe8, 0x03, 0, 0, 0, 0, 0, 0]); // t = 1000
    expected.extend([0, 0, 0, 0, 0, 0, 0xf8, 0x3f]); // v = 1.5 bits
    assert_eq!(encode_payload(&record), expected);
    roundtrip(&record);
}

// Goal: the Series payload matches § WAL "kind 1 Series".
#[test]
fn golden_series_payload() {
    let record = WalRecord {
        shard: 1,
        seq: 1,
        body: RecordBody::Series(vec![SeriesEntry {
            series_ref: 5,
            tenant: "t".into(),
            labels: Labels::from_pairs(&[("job", "a"), ("__name__", "up")]),
        }]),
    };
    let mut expected = vec![1, 0, 0, 0];
    expected.extend(le64(1));
    expected.push(1); // kind Series
    expected.push(1); // one entry
    expected.extend(le64(5));
    expected.extend([1, b't']); // tenant
    expected.push(2); // two labels, sorted by name
    expected.push(8);
    expected.extend(b"__name__");
    expected.extend([2, b'u', b'p']);
    expected.extend([3, b'j', b'o', b'b']);
    expected.extend([1, b'a']);
    assert_eq!(encode_payload(&record), expected);
    roundtrip(&record);
}

// Goal: the Tombstone payload matches § WAL "kind 3 Tombstone" (op codes from its table).
#[test]
fn golden_tombstone_payload() {
    let record = WalRecord {
        shard: 2,
        seq: 3,
        body: RecordBody::Tombstone(TombstoneEntry {
            tenant: String::new(),
            matchers: vec![Matcher::new(MatchOp::RegexMatch, "job", "a.*").unwrap()],
            min_t: -1,
            max_t: 10,
        }),
    };
    let mut expected = vec![2, 0, 0, 0];
    expected.extend(le64(3));
    expected.push(3); // kind Tombstone
    expected.push(0); // empty tenant
    expected.extend([0xff; 8]); // min_t = -1
    expected.extend(le64(10)); // max_t
    expected.push(1); // one matcher
    expected.push(2); // op =~
    expected.extend([3, b'j', b'o', b'b']);
    expected.extend([3, b'a', b'.', b'*']);
    assert_eq!(encode_payload(&record), expected);
    roundtrip(&record);
}

// Goal: the checkpoint meta payload matches § WAL "kind 255 Meta".
#[test]
fn golden_meta_payload() {
    let meta = [(1u32, 5u64), (300, 7)].into_iter().collect();
    let mut expected = vec![0; 12];
    expected.push(0xff);
    expected.push(2);
    expected.extend([1, 0, 0, 0]);
    expected.extend(le64(5));
    expected.extend([0x2c, 0x01, 0, 0]);
    expected.extend(le64(7));
    assert_eq!(encode_meta(&meta), expected);
    assert_eq!(decode_payload(&expected), Ok(Payload::Meta(meta)));
}

// Goal: the segment header matches § WAL "Segment header".
#[test]
fn golden_segment_header() {
    let mut expected = b"SXWL".to_vec();
    expected.extend([1, 0, 0, 0]); // version 1, 3 reserved zero bytes
    expected.extend([0x2a, 0, 0, 0]); // index 42
    let crc = crc32fast::hash(&expected);
    expected.extend(crc.to_le_bytes());
    assert_eq!(segment_header(42).to_vec(), expected);
    assert_eq!(check_header(&expected), HeaderCheck::Valid { index: 42 });
    let mut bad = expected.clone();
    bad[9] ^= 1;
    assert_eq!(check_header(&bad), HeaderCheck::Damaged);
    assert_eq!(check_header(&expected[..10]), HeaderCheck::Short);
}

fn fragment(kind: u8, data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u16).to_le_bytes();
    let mut covered = vec![kind, len[0], len[1]];
    covered.extend(data);
    let crc = crc32fast::hash(&covered);
    let mut out = vec![kind, len[0], len[1]];
    out.extend(crc.to_le_bytes());
    out.extend(data);
    out
}

// Goal: fragments match § WAL "Fragments": FULL inside a page; FIRST/LAST across a page
// boundary; zero padding when 7 or fewer bytes are left in the page.
#[test]
fn golden_fragments() {
    let payload = [0xab_u8, 0xcd, 0xef, 0x01, 0x02];
    let mut out = Vec::new();
    let end = frame_record(SEGMENT_HEADER_BYTES as u64, &payload, &mut out);
    assert_eq!(out, fragment(1, &payload));
    assert_eq!(end, SEGMENT_HEADER_BYTES as u64 + 12);

    // 10 bytes left in the page: FIRST carries 3 bytes, LAST the other 2 in the next page.
    let mut out = Vec::new();
    let start = PAGE_BYTES as u64 - 10;
    let end = frame_record(start, &payload, &mut out);
    let mut expected = fragment(2, &payload[..3]);
    expected.extend(fragment(4, &payload[3..]));
    assert_eq!(out, expected);
    assert_eq!(end, PAGE_BYTES as u64 + 9);
    assert_eq!(framed_len(start, payload.len()), 10 + 9);

    // 7 bytes left: zero padding, then FULL at the page start.
    let mut out = Vec::new();
    frame_record(PAGE_BYTES as u64 - 7, &payload, &mut out);
    let mut expected = vec![0; 7];
    expected.extend(fragment(1, &payload));
    assert_eq!(out, expected);

    // A payload longer than a page: FIRST, MIDDLE, LAST.
    let big = vec![7u8; PAGE_BYTES + 100];
    let mut out = Vec::new();
    frame_record(PAGE_BYTES as u64 - 100, &big, &mut out);
    assert_eq!(out[0], 2);
    assert_eq!(out[100], 3);
    assert_eq!(out[100 + PAGE_BYTES], 4);
}

// Goal: every malformed payload is a typed error naming field and offset, never a panic.
#[test]
fn decode_errors_are_typed() {
    let series = |labels: Vec<(&str, &str)>| {
        let mut bytes = vec![0; 12];
        bytes.push(1);
        bytes.push(1);
        bytes.extend(le64(9));
        bytes.push(0);
        bytes.push(labels.len() as u8);
        for (n, v) in labels {
            bytes.push(n.len() as u8);
            bytes.extend(n.as_bytes());
            bytes.push(v.len() as u8);
            bytes.extend(v.as_bytes());
        }
        bytes
    };
    let tombstone = |op: u8, value: &str| {
        let mut bytes = vec![0; 12];
        bytes.push(3);
        bytes.push(0);
        bytes.extend([0; 16]);
        bytes.push(1);
        bytes.push(op);
        bytes.extend([1, b'l']);
        bytes.push(value.len() as u8);
        bytes.extend(value.as_bytes());
        bytes
    };
    let mut trailing = encode_payload(&WalRecord { shard: 0, seq: 1, body: RecordBody::Samples(vec![]) });
    trailing.push(0);
    let mut bad_utf8 = series(vec![("a", "b")]);
    let last = bad_utf8.len() - 1;
    bad_utf8[last] = 0xff;
    let cases: Vec<(&str, Vec<u8>, DecodeError)> = vec![
        ("empty", vec![], DecodeError::Truncated { field: "shard", offset: 0 }),
        ("unknown kind", { let mut b = vec![0; 12]; b.push(9); b }, DecodeError::UnknownKind { kind: 9, offset: 12 }),
        ("duplicate label", series(vec![("a", "1"), ("a", "2")]),
            DecodeError::Labels { offset: 23, source: LabelError::DuplicateName { name: "a".into() } }),
        ("invalid utf8", bad_utf8, DecodeError::InvalidUtf8 { field: "label value", offset: 27 }),
        ("huge count", { let mut b = vec![0; 12]; b.extend([2, 0xff, 0xff, 0x03]); b },
            DecodeError::CountTooLarge { field: "sample count", offset: 13, count: 65535, remaining: 0 }),
        ("unknown op", tombstone(9, "x"), DecodeError::UnknownMatchOp { op: 9, offset: 31 }),
        ("trailing", trailing, DecodeError::TrailingBytes { offset: 14, count: 1 }),
        ("varint overflow", { let mut b = vec![0; 12]; b.push(2); b.extend([0xff; 11]); b },
            DecodeError::VarintOverflow { field: "sample count", offset: 13 }),
    ];
    for (name, bytes, expected) in cases {
        assert_eq!(decode_payload(&bytes), Err(expected), "case {name}");
    }
    assert!(matches!(decode_payload(&tombstone(2, "(")), Err(DecodeError::Matcher { offset: 31, .. })));
}

fn body_strategy() -> impl Strategy<Value = RecordBody> {
    let name = "[a-z_]{1,8}";
    let text = "\\PC{0,12}";
    let series = prop::collection::vec(
        (any::<u64>(), text, prop::collection::btree_map(name, text, 0..6)),
        0..5,
    )
    .prop_map(|entries| {
        RecordBody::Series(
            entries
                .into_iter()
                .map(|(series_ref, tenant, labels)| SeriesEntry {
                    series_ref,
                    tenant,
                    labels: Labels::from_unsorted(labels.into_iter().map(|(n, v)| Label::new(n, v)).collect()).unwrap(),
                })
                .collect(),
        )
    });
    let samples = prop::collection::vec((any::<u64>(), any::<i64>(), any::<u64>()), 0..40).prop_map(|entries| {
        RecordBody::Samples(entries.into_iter().map(|(r, t, bits)| SampleEntry { series_ref: r, t, v: f64::from_bits(bits) }).collect())
    });
    let matcher = (0u8..4, name, prop::sample::select(vec!["", "a.*", "b|c", ".+", "x"])).prop_map(|(op, n, v)| {
        let op = [MatchOp::Equal, MatchOp::NotEqual, MatchOp::RegexMatch, MatchOp::RegexNoMatch][op as usize];
        Matcher::new(op, n, v).unwrap()
    });
    let tombstone = (text, prop::collection::vec(matcher, 0..4), any::<i64>(), any::<i64>()).prop_map(|(tenant, matchers, min_t, max_t)| {
        RecordBody::Tombstone(TombstoneEntry { tenant, matchers, min_t, max_t })
    });
    prop_oneof![series, samples, tombstone]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    // Goal: decode(encode(r)) == r for every record, value bits included.
    #[test]
    fn payload_round_trip(shard in any::<u32>(), seq in any::<u64>(), body in body_strategy()) {
        let record = WalRecord { shard, seq, body };
        let bytes = encode_payload(&record);
        prop_assert_eq!(decode_payload(&bytes), Ok(Payload::Record(record)));
    }

    // Goal: arbitrary bytes never panic the payload decoder or the segment scanner.
    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let _ = decode_payload(&bytes);
        let mut scan = SegmentScan::new(bytes, 0);
        while scan.next_record().is_some() {}
        let _ = scan.finish();
    }

    // Goal: framing then scanning gives back the payloads, whatever the start offset.
    #[test]
    fn framing_round_trip(start in 16u64..(2 * PAGE_BYTES as u64), lens in prop::collection::vec(1usize..40_000, 1..6)) {
        let mut bytes = vec![0u8; start as usize];
        let mut offset = start;
        let payloads: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, n)| vec![(i + 1) as u8; *n]).collect();
        for p in &payloads {
            let before = offset;
            offset = frame_record(offset, p, &mut bytes);
            prop_assert_eq!(offset - before, framed_len(before, p.len()));
        }
        let mut scan = SegmentScan::new(bytes, start as usize);
        let mut got = Vec::new();
        while let Some(r) = scan.next_record() { got.push(r.payload); }
        prop_assert_eq!(got, payloads);
        prop_assert!(scan.finish().is_empty());
    }
}
