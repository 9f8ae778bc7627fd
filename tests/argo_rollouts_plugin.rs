//! The Argo Rollouts traffic router plugin (argo-rollouts-plugin/, Go): `go vet` and its
//! `go test` suite, which drives the plugin through its go-plugin RPC interface as the
//! Rollouts controller does against the demo gateway (`fanout-tools demo`, started by the Go
//! test), and checks that its generated gRPC stubs still describe proto/. This is how
//! `bash .ci/test` runs them. Go's module cache is the default one; a fresh machine fills it
//! from the Go module proxy, and go.sum pins what comes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[path = "support/bounded.rs"]
mod bounded;
mod support;

use support::tools_bin;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Vet and the suite take about a minute on 2 cores with a warm cache (the RPC test waits
/// for the demo gateway); a cold module cache and build add a few. This bounds a hang.
const LIMIT: Duration = Duration::from_secs(900);

/// protoc of the protoc-bin-vendored crate, which the workspace's build fetched (proto/'s
/// build script uses it), for the Go test that compares the stubs with proto/.
fn protoc() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PROTOC") {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(home.join("registry/src"))
        .ok()?
        .flatten()
        .flat_map(|index| std::fs::read_dir(index.path()).into_iter().flatten().flatten())
        .filter(|krate| krate.file_name().to_string_lossy().starts_with("protoc-bin-vendored-linux-x86_64-"))
        .map(|krate| krate.path().join("bin/protoc"))
        .filter(|bin| bin.exists())
        .collect();
    found.sort();
    found.pop()
}

/// Runs `go ARGS` in argo-rollouts-plugin/ (its own process group, killed with what it
/// started if it outlives LIMIT); panics with its output when it fails.
fn go(args: &[&str], tools: &Path) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new("go");
    command
        .args(args)
        .current_dir(Path::new(ROOT).join("argo-rollouts-plugin"))
        .env("FANOUT_TOOLS", tools)
        // go.mod and go.sum are as committed: a missing requirement fails, nothing is rewritten.
        .env("GOFLAGS", "-mod=readonly -buildvcs=false");
    if let Some(protoc) = protoc() {
        command.env("PROTOC", protoc);
    }
    let what = format!("go {}", args.join(" "));
    let how = "the machine's Go toolchain must be on PATH";
    let bounded::Finished { status, stdout, stderr } = bounded::run(&what, command, dir.path(), LIMIT, how);
    assert!(
        status.success(),
        "{what} failed ({status}; FANOUT_TOOLS={}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        tools.display()
    );
    stdout
}

#[test]
fn the_argo_rollouts_plugin_is_vet_clean_and_passes_its_go_tests_against_the_demo_gateway() {
    let tools = tools_bin();
    go(&["vet", "./..."], &tools);
    // -count=1: the RPC test runs a gateway, which Go's test cache knows nothing of.
    let stdout = go(&["test", "-count=1", "-v", "./..."], &tools);
    println!("{stdout}");
    // Every test ran: none skipped (the demo gateway and protoc are both here).
    let skipped: Vec<&str> = stdout.lines().filter(|l| l.trim_start().starts_with("--- SKIP")).collect();
    assert!(skipped.is_empty(), "Go tests skipped: {skipped:?}\n{stdout}");
    for test in ["TestTheControllerDrivesACanaryThroughTheGateway", "TestStubsMatchTheProtos", "TestWeightsFor"] {
        assert!(stdout.contains(&format!("--- PASS: {test} ")), "{test} did not pass:\n{stdout}");
    }
}
