//! Compiles the admin API (`proto/fanout/admin/v1`) with tonic-prost-build. protoc comes from
//! the `protoc-bin-vendored` crate unless `PROTOC` is set, so a fresh machine needs no system
//! package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment yet.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let include = protoc_bin_vendored::include_path()?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // The subscription contract (fanout.v1) is compiled once, by the `fanout-proto` crate that
    // the subscriber library shares. The admin API is the gateway's own: its own descriptor set,
    // so the Subscribe port's reflection does not list a service it does not serve. Serializable,
    // so `fanoutctl -o json|yaml` prints the replies as they are; maps sorted, so that output is
    // stable.
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("fanout_admin_descriptor.bin"))
        .type_attribute(".fanout.admin.v1", "#[derive(serde::Serialize)]")
        .btree_map(".fanout.admin.v1")
        .compile_protos(&["proto/fanout/admin/v1/admin.proto"], &["proto", include.to_str().unwrap_or("")])?;
    println!("cargo:rerun-if-changed=proto/fanout/admin");
    Ok(())
}
