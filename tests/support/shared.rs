//! What the gateway's tests and the tools' (`tools/tests/`, through `#[path]`) share: the
//! workspace's other binaries, run as an operator would (cargo hands a test the binaries of its
//! own package only, `CARGO_BIN_EXE_*`, and `fanoutctl` and `fanout-tools` are packages of their
//! own), free ports and test logs. std, tokio, tracing-subscriber and the broker fixture's
//! `free_port` only.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `bin`, a binary of the workspace, from the test's own profile directory
/// (`target/<profile>/`), where `cargo test --workspace` puts every package's binaries.
///
/// Built first by the same command the test suite runs, `cargo test --workspace --no-run`:
/// a no-op when that command built this test (what CI and `.ci/test` run), and otherwise
/// (`cargo test -p fanout-gateway --test process`) it builds the workspace's tests once, with
/// the same features. Building only `-p fanout-tools` instead would resolve features without
/// the test's dev-dependencies and compile a second copy of tokio and all that uses it, minutes
/// spent inside some test's time limit.
pub fn workspace_bin(bin: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        // target/<profile>/deps/<test> -> target/<profile>
        let dir = exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf();
        // As the suite was built: no profile flag for target/debug (cargo test's default).
        let profile: Vec<String> = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => Vec::new(),
            Some(other) => vec!["--profile".into(), other.into()],
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = std::process::Command::new(cargo);
        // What cargo set for this test (CARGO_MANIFEST_DIR, CARGO_PKG_*, OUT_DIR, ...) must not
        // reach the build: build scripts that read such a variable would see it change and
        // rebuild (ring does), turning a no-op into a minute of compiling.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let set_by_cargo = matches!(
                name.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            ) || name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_BIN_EXE_");
            if set_by_cargo {
                command.env_remove(name.as_ref());
            }
        }
        let status = command
            .args(["test", "--locked", "--quiet", "--workspace", "--no-run"])
            .args(&profile)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo test --workspace --no-run failed");
        dir
    });
    let path = dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "the workspace was built, but {bin} is not at {}", path.display());
    path
}

/// The `fanoutctl` binary (the workspace crate `ctl/`: no librdkafka).
pub fn fanoutctl_bin() -> PathBuf {
    workspace_bin("fanoutctl")
}

/// The developer tools' binary (`tools/`): `dev-kafka`, `subscribe`, `demo`, `bench`.
pub fn tools_bin() -> PathBuf {
    workspace_bin("fanout-tools")
}

/// The service's binary (`serve`, `check-config`), for tests outside its package.
pub fn gateway_bin() -> PathBuf {
    workspace_bin("fanout-gateway")
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

/// A loopback port nothing listens on right now, for a child process to listen on: below the
/// kernel's ephemeral range, so that no test's outgoing connection takes it before the child
/// binds it (the broker fixture's, one rule for every port a test hands out; its doc comment
/// says why).
pub fn free_port() -> u16 {
    fanout_kafka_fixture::free_port()
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

/// A scenario's figures (lost, duplicates, time to resume, what was said): printed with the
/// test's output, and appended, with the test binary's and the test's names, to
/// `target/scenario-figures.txt`, which `.ci/test` empties first and prints last, so one run's
/// figures are read in one place whether the tests passed or not.
pub fn figure(line: String) {
    eprintln!("{line}");
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let Some(target) =
        std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
    else {
        return;
    };
    let entry = format!("{} {test}: {}\n", env!("CARGO_CRATE_NAME"), line.replace('\n', " "));
    if let Ok(mut file) =
        std::fs::OpenOptions::new().create(true).append(true).open(target.join("scenario-figures.txt"))
    {
        use std::io::Write;
        // One write per line: lines of tests that run at once do not interleave.
        let _ = file.write_all(entry.as_bytes());
    }
}
