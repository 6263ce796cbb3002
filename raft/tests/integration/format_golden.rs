//! Goal: the bytes on disk are the ones docs/design/raft.md § On-disk format specifies.
//! Method: golden bytes written by hand from the document's field tables (only the crc32 values
//! are computed, over the hand-written bytes they cover), compared with the encoders; then the
//! decoders read the hand-written bytes back.

use std::path::Path;
use std::sync::Arc;

use openraft::{CommittedLeaderId, EntryPayload, LeaderId};
use sextant_raft::log_store::format::{
    decode_entry, decode_log_id, decode_vote, encode_entry, encode_log_id, encode_vote,
    segment_header, segment_name, META_KIND_COMMITTED, META_KIND_PURGED,
};
use sextant_raft::types::{Entry, LogId, Vote};
use sextant_raft::{LogStore, LogStoreConfig};
use sextant_storage::fs::sim::SimFs;
use sextant_storage::fs::FileSystem;

fn with_crc(mut bytes: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

// docs/design/raft.md § Segment files: the header.
#[test]
fn segment_header_bytes() {
    let expected = with_crc(vec![
        b'S', b'X', b'R', b'L', // magic
        0x01, // version
        0x00, 0x00, 0x00, // reserved
        0x2c, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // first index 300, u64 LE
    ]);
    assert_eq!(segment_header(300).to_vec(), expected);
    assert_eq!(segment_name(300), "00000000000000000300.seg");
}

// docs/design/raft.md § Record payload: a blank entry and a command entry.
#[test]
fn record_payload_bytes() {
    let blank = Entry {
        log_id: LogId::new(CommittedLeaderId::new(2, 3), 300),
        payload: EntryPayload::Blank,
    };
    // index 300 = uvarint ac 02; term 2; leader node 3; kind 0 (blank); no body.
    let expected = vec![0xac, 0x02, 0x02, 0x03, 0x00];
    assert_eq!(encode_entry(&blank), expected);
    assert_eq!(decode_entry(&expected).unwrap(), blank);

    let body = br#"{"who":"ops","at_ms":5,"action":{"DeleteRuleGroup":{"name":"g"}}}"#;
    let mut expected = vec![0x01, 0x01, 0x01, 0x01]; // index 1, term 1, node 1, kind 1 (normal)
    expected.extend_from_slice(body);
    let entry = decode_entry(&expected).unwrap();
    assert_eq!(
        encode_entry(&entry),
        expected,
        "the command's JSON re-encodes byte for byte"
    );
}

// docs/design/raft.md § Segment files: one record framed after the header, as a WAL FULL
// fragment (type 1, len u16 LE, crc32 over type + len + data).
#[tokio::test]
async fn a_segment_with_one_record() {
    let fs = SimFs::new(1);
    let mut store = LogStore::open(
        Arc::new(fs.clone()) as Arc<dyn FileSystem>,
        "raft",
        LogStoreConfig::default(),
    )
    .await
    .unwrap();
    let entry = Entry {
        log_id: LogId::new(CommittedLeaderId::new(2, 3), 1),
        payload: EntryPayload::Blank,
    };
    store.append_entries(vec![entry]).await.unwrap();
    let bytes = fs
        .read(Path::new("raft/log/00000000000000000001.seg"))
        .await
        .unwrap();

    let mut expected = with_crc(vec![
        b'S', b'X', b'R', b'L', 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
    ]);
    let fragment_head = [0x01, 0x04, 0x00]; // FULL, len 4
    let data = [0x01, 0x02, 0x03, 0x00]; // index 1, term 2, node 3, blank
    let crc = crc32fast::hash(&[&fragment_head[..], &data[..]].concat());
    expected.extend_from_slice(&fragment_head);
    expected.extend_from_slice(&crc.to_le_bytes());
    expected.extend_from_slice(&data);
    assert_eq!(bytes, expected);
}

// docs/design/raft.md § Meta files: vote.
#[test]
fn vote_file_bytes() {
    let vote = Vote {
        leader_id: LeaderId {
            term: 5,
            node_id: 2,
        },
        committed: true,
    };
    let expected = with_crc(vec![
        b'S', b'X', b'R', b'M', // magic
        0x01, // version
        0x01, // kind: vote
        0x11, 0x00, // body length 17
        0x05, 0, 0, 0, 0, 0, 0, 0, // term
        0x02, 0, 0, 0, 0, 0, 0, 0,    // node id
        0x01, // committed
    ]);
    assert_eq!(encode_vote(&vote), expected);
    assert_eq!(decode_vote(&expected).unwrap(), vote);
}

// docs/design/raft.md § Meta files: committed and purged log ids, present and absent.
#[test]
fn log_id_file_bytes() {
    let log_id = LogId::new(CommittedLeaderId::new(7, 1), 258);
    let expected = with_crc(vec![
        b'S', b'X', b'R', b'M', 0x01, 0x02, // magic, version, kind: committed
        0x19, 0x00, // body length 25
        0x01, // present
        0x07, 0, 0, 0, 0, 0, 0, 0, // term
        0x01, 0, 0, 0, 0, 0, 0, 0, // leader node
        0x02, 0x01, 0, 0, 0, 0, 0, 0, // index 258
    ]);
    assert_eq!(encode_log_id(META_KIND_COMMITTED, Some(&log_id)), expected);
    assert_eq!(
        decode_log_id(&expected, META_KIND_COMMITTED).unwrap(),
        Some(log_id)
    );
    assert!(
        decode_log_id(&expected, META_KIND_PURGED).is_err(),
        "the kind byte is checked"
    );

    let mut absent = vec![b'S', b'X', b'R', b'M', 0x01, 0x03, 0x19, 0x00];
    absent.extend_from_slice(&[0u8; 25]);
    let absent = with_crc(absent);
    assert_eq!(encode_log_id(META_KIND_PURGED, None), absent);
    assert_eq!(decode_log_id(&absent, META_KIND_PURGED).unwrap(), None);
}

// Decoders refuse damaged bytes with a message that says what and where, never a panic.
#[test]
fn decoders_refuse_garbage() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "empty payload",
            vec![],
            "index: uvarint runs past the end at byte 0",
        ),
        ("no kind", vec![1, 1, 1], "entry kind missing at byte 3"),
        (
            "unknown kind",
            vec![1, 1, 1, 9],
            "unknown entry kind 9 at byte 3",
        ),
        (
            "blank with body",
            vec![1, 1, 1, 0, 5],
            "blank entry with a 1-byte body at byte 4",
        ),
        ("bad command json", vec![1, 1, 1, 1, b'{'], "command body:"),
        (
            "overlong varint",
            vec![0xff; 11],
            "index: uvarint overflows 64 bits at byte 0",
        ),
    ];
    for (name, bytes, message) in cases {
        let error = decode_entry(&bytes).unwrap_err().to_string();
        assert!(
            error.starts_with(message),
            "{name}: {error:?} should start with {message:?}"
        );
    }
    let vote = encode_vote(&Vote {
        leader_id: LeaderId {
            term: 1,
            node_id: 1,
        },
        committed: false,
    });
    for cut in 0..vote.len() {
        assert!(
            decode_vote(&vote[..cut]).is_err(),
            "vote cut to {cut} bytes"
        );
    }
    let mut bad_flag = vote.clone();
    bad_flag[24] = 2;
    let crc_at = bad_flag.len() - 4;
    let crc = crc32fast::hash(&bad_flag[..crc_at]);
    bad_flag[crc_at..].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(
        decode_vote(&bad_flag).unwrap_err().to_string(),
        "committed flag is 2, not 0 or 1 at byte 24"
    );
}
