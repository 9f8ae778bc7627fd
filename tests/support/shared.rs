//! What the gateway's tests and the tools' (`tools/tests/`, through `#[path]`) share: the
//! workspace's other binaries, run as an operator would (cargo hands a test the binaries of its
//! own package only, `CARGO_BIN_EXE_*`, and `fanoutctl` and `fanout-tools` are packages of their
//! own), free ports and test logs. std, tokio, parking_lot and tracing-subscriber only.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use parking_lot::Mutex;

/// `bin` of workspace package `package`, built once per test binary (`cargo build`, a no-op
/// when `cargo test --workspace` built it already) into the test's own profile directory
/// (`target/<profile>/`).
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    // One build at a time: two tests asking at once would wait on cargo's lock anyway.
    static BUILT: OnceLock<Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock();
    if let Some((_, path)) = built.iter().find(|(name, _)| name == bin) {
        return path.clone();
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> -> target/<profile>
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(other) => other.to_string(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--locked", "--quiet", "--profile", &profile, "-p", package, "--bin", bin])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build -p {package} --bin {bin} failed");
    let path = dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{bin} was built, but not at {}", path.display());
    built.push((bin.to_string(), path.clone()));
    path
}

/// The `fanoutctl` binary (the workspace crate `ctl/`: no librdkafka).
pub fn fanoutctl_bin() -> PathBuf {
    workspace_bin("fanoutctl", "fanoutctl")
}

/// The developer tools' binary (`tools/`): `dev-kafka`, `subscribe`, `demo`, `bench`.
pub fn tools_bin() -> PathBuf {
    workspace_bin("fanout-tools", "fanout-tools")
}

/// The service's binary (`serve`, `check-config`), for tests outside its package.
pub fn gateway_bin() -> PathBuf {
    workspace_bin("fanout-gateway", "fanout-gateway")
}

/// The `fanoutctl` binary, with no gateway or token from the test's own environment.
pub fn fanoutctl_command() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(fanoutctl_bin());
    for name in [
        "FANOUT_GATEWAY",
        "FANOUT_GATEWAYS_DNS",
        "FANOUT_ADMIN_TOKEN",
        "FANOUT_ADMIN_TOKEN_FILE",
        "FANOUT_TLS_CA",
        "FANOUT_TLS_CERT",
        "FANOUT_TLS_KEY",
        "FANOUT_TLS_DOMAIN",
    ] {
        command.env_remove(name);
    }
    command
}

/// Runs the `fanoutctl` binary with `args` (no gateway or token from the environment);
/// (exit code, stdout, stderr).
pub async fn fanoutctl(args: &[&str]) -> (i32, String, String) {
    let out = fanoutctl_command().args(args).output().await.expect("fanoutctl runs");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8");
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

/// A loopback port nothing listens on right now (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// Logs to the test's output (shown for failing tests); RUST_LOG filters.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("fanout_gateway=info")),
        )
        .with_test_writer()
        .try_init();
}
