//! Conversions between openraft's types and the transport's protobuf messages. The only place
//! that knows both: payloads are openraft's (serde) types as JSON, except a snapshot chunk's
//! data, which travels as raw bytes.

use bytes::Bytes;
use openraft::raft::InstallSnapshotRequest;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::pb;
use crate::types::TypeConfig;

/// A message that could not be turned back into openraft's types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode {what}: {message}")]
pub struct ConvertError {
    pub what: &'static str,
    pub message: String,
}

pub fn to_json<T: Serialize>(value: &T) -> Bytes {
    // openraft's messages and Sextant's commands are plain data (strings, integers, maps with
    // string keys): serializing them cannot fail.
    Bytes::from(serde_json::to_vec(value).expect("raft messages always serialize to JSON"))
}

pub fn from_json<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, ConvertError> {
    serde_json::from_slice(bytes).map_err(|e| ConvertError {
        what,
        message: e.to_string(),
    })
}

pub fn request<T: Serialize>(value: &T) -> pb::RaftRequest {
    pb::RaftRequest {
        json: to_json(value),
    }
}

/// The answer of a call on the remote `Raft`, or the error it returned.
pub fn reply<T: Serialize, E: Serialize>(result: &Result<T, E>) -> pb::RaftReply {
    let result = match result {
        Ok(value) => pb::raft_reply::Result::OkJson(to_json(value)),
        Err(error) => pb::raft_reply::Result::ErrorJson(to_json(error)),
    };
    pb::RaftReply {
        result: Some(result),
    }
}

/// The inverse of [`reply`]: the outer error is a malformed reply, the inner result is what the
/// remote `Raft` answered.
pub fn from_reply<T: DeserializeOwned, E: DeserializeOwned>(
    what: &'static str,
    reply: pb::RaftReply,
) -> Result<Result<T, E>, ConvertError> {
    match reply.result {
        Some(pb::raft_reply::Result::OkJson(json)) => Ok(Ok(from_json(what, &json)?)),
        Some(pb::raft_reply::Result::ErrorJson(json)) => Ok(Err(from_json(what, &json)?)),
        None => Err(ConvertError {
            what,
            message: "the reply holds neither an answer nor an error".into(),
        }),
    }
}

pub fn snapshot_chunk(request: &InstallSnapshotRequest<TypeConfig>) -> pb::SnapshotChunk {
    pb::SnapshotChunk {
        vote_json: to_json(&request.vote),
        meta_json: to_json(&request.meta),
        offset: request.offset,
        data: Bytes::copy_from_slice(&request.data),
        done: request.done,
    }
}

pub fn install_snapshot_request(
    chunk: pb::SnapshotChunk,
) -> Result<InstallSnapshotRequest<TypeConfig>, ConvertError> {
    Ok(InstallSnapshotRequest {
        vote: from_json("snapshot chunk vote", &chunk.vote_json)?,
        meta: from_json("snapshot chunk meta", &chunk.meta_json)?,
        offset: chunk.offset,
        data: chunk.data.to_vec(),
        done: chunk.done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{LogId, SnapshotMeta, Vote};

    // Goal: a snapshot chunk survives the trip through protobuf unchanged, data as raw bytes.
    #[test]
    fn snapshot_chunk_round_trips() {
        let request = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 2),
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(3, 2), 40)),
                last_membership: Default::default(),
                snapshot_id: "3-2-40".into(),
            },
            offset: 1024,
            data: vec![0, 1, 2, 255],
            done: true,
        };
        let chunk = snapshot_chunk(&request);
        assert_eq!(&chunk.data[..], &[0, 1, 2, 255]);
        let back = install_snapshot_request(chunk).unwrap();
        assert_eq!(back, request);
    }

    // Goal: malformed bytes from the wire are typed errors naming what was being decoded.
    #[test]
    fn malformed_replies_are_errors() {
        let empty = pb::RaftReply { result: None };
        let error = from_reply::<u64, String>("vote reply", empty).unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot decode vote reply: the reply holds neither an answer nor an error"
        );
        let garbage = pb::RaftReply {
            result: Some(pb::raft_reply::Result::OkJson(Bytes::from_static(b"{"))),
        };
        let error = from_reply::<u64, String>("vote reply", garbage).unwrap_err();
        assert!(
            error.to_string().starts_with("cannot decode vote reply: "),
            "{error}"
        );
        let remote = reply::<u64, String>(&Err("no".into()));
        assert_eq!(
            from_reply::<u64, String>("x", remote).unwrap(),
            Err("no".to_string())
        );
    }
}
