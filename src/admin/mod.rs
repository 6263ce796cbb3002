//! The admin gRPC service and the `sextant admin` CLI.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sextant.admin.v1");
}
