//! The Argo Rollouts traffic router plugin (argo-rollouts-plugin/, Go): `go vet` and its
//! `go test` suite, which drives the plugin through its go-plugin RPC interface as the
//! Rollouts controller does against the demo gateway (`fanout-tools demo`, started by the Go
//! test), and checks that its generated gRPC stubs still describe proto/. This is how
//! `bash .ci/test` runs them. Go's module cache is the default one; a fresh machine fills it
//! from the Go module proxy, and go.sum pins what comes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::tools_bin;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Vet and the suite take about a minute on 2 cores with a warm cache (the RPC test waits
/// for the demo gateway); a cold module cache and build add a few. This bounds a hang.
const LIMIT: Duration = Duration::from_secs(900);

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

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
    let (out, err) = (dir.path().join("go.out"), dir.path().join("go.err"));
    let mut command = Command::new("go");
    command
        .args(args)
        .current_dir(Path::new(ROOT).join("argo-rollouts-plugin"))
        .env("FANOUT_TOOLS", tools)
        // go.mod and go.sum are as committed: a missing requirement fails, nothing is rewritten.
        .env("GOFLAGS", "-mod=readonly -buildvcs=false")
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("stdout file"))
        .stderr(File::create(&err).expect("stderr file"));
    if let Some(protoc) = protoc() {
        command.env("PROTOC", protoc);
    }
    // A process group of its own, so a hung run is killed with the demo gateway it started.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child =
        command.spawn().unwrap_or_else(|e| panic!("cannot run go ({e}); the machine's Go toolchain must be on PATH"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = Command::new("kill").args(["-KILL", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            panic!(
                "go {} still running after {LIMIT:?}; killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
                args.join(" "),
                read(&out),
                read(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, stderr) = (read(&out), read(&err));
    assert!(
        status.success(),
        "go {} failed ({status}; FANOUT_TOOLS={}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        args.join(" "),
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
