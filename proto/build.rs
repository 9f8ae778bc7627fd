//! Compiles both contracts with tonic-prost-build: `fanout/v1/fanout.proto` (subscribers) and
//! `fanout/admin/v1/admin.proto` (operators). protoc comes from the `protoc-bin-vendored` crate
//! unless `PROTOC` is set, so a fresh machine needs no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment yet.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let include = protoc_bin_vendored::include_path()?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Served by the gateway's reflection, so generic gRPC tools can discover the contract.
        .file_descriptor_set_path(out_dir.join("fanout_descriptor.bin"))
        // Payloads are passed through without copying: Kafka record -> Bytes -> gRPC frame.
        .bytes(".fanout.v1.Delivery")
        .bytes(".fanout.v1.Header")
        .compile_protos(&["fanout/v1/fanout.proto"], &[".", include.to_str().unwrap_or("")])?;
    // The admin API has a descriptor set of its own, so the Subscribe port's reflection does
    // not list a service it does not serve. Serializable behind the `serde` feature (fanoutctl
    // prints replies as JSON or YAML); maps sorted, so that output is stable.
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("fanout_admin_descriptor.bin"))
        .type_attribute(".fanout.admin.v1", "#[cfg_attr(feature = \"serde\", derive(serde::Serialize))]")
        .btree_map(".fanout.admin.v1")
        .compile_protos(&["fanout/admin/v1/admin.proto"], &[".", include.to_str().unwrap_or("")])?;
    println!("cargo:rerun-if-changed=fanout");
    Ok(())
}
