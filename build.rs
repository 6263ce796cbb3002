//! Generates the node's gRPC code from `proto/admin.proto`, `proto/data.proto` and `proto/lease.proto`.
//! madsim-tonic-build writes both the real and the simulated code; `tonic::include_proto!`
//! picks one by `cfg(madsim)`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A fresh machine has no protoc: use the vendored one unless the caller chose their own.
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing else reads the environment yet.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    println!("cargo:rerun-if-changed=proto/admin.proto");
    println!("cargo:rerun-if-changed=proto/data.proto");
    println!("cargo:rerun-if-changed=proto/lease.proto");
    tonic_build::configure().compile_protos(&["proto/admin.proto", "proto/data.proto", "proto/lease.proto"], &["proto"])?;
    Ok(())
}
