//! The Python subscriber library (clients/python, `fanout_subscriber`): its pytest suite, unit
//! tests and tests against the demo gateway (`fanout-tools demo`, started by the suite's own
//! fixture; `fanoutctl` drains a subscriber as an operator would), run with the venv's Python as
//! CI has it. This is how `bash .ci/test` runs pytest.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::{fanoutctl_bin, python, tools_bin};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The whole suite takes well under a minute on 2 cores; this bounds a hang.
const LIMIT: Duration = Duration::from_secs(600);

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn the_python_library_passes_its_pytest_suite_against_the_demo_gateway() {
    let tools = tools_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (dir.path().join("pytest.out"), dir.path().join("pytest.err"));
    let mut command = Command::new(python());
    command
        .args(["-m", "pytest", "clients/python/tests", "-q", "-p", "no:cacheprovider"])
        .current_dir(ROOT)
        .env("FANOUT_TOOLS", &tools)
        .env("FANOUTCTL", fanoutctl_bin())
        // No __pycache__ written into the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPATH")
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("stdout file"))
        .stderr(File::create(&err).expect("stderr file"));
    // A process group of its own, so a hung run is killed with the demo gateways it started.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().unwrap_or_else(|e| {
        panic!("cannot run {} -m pytest ({e}); .ci/setup makes target/ci-venv with pytest", python())
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = Command::new("kill").args(["-KILL", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            panic!(
                "pytest still running after {LIMIT:?}; killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
                read(&out),
                read(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, stderr) = (read(&out), read(&err));
    println!("{stdout}");
    assert!(
        status.success(),
        "pytest failed ({status}; FANOUT_TOOLS={}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        tools.display()
    );
    let summary = stdout.lines().rev().find(|l| l.contains(" passed")).unwrap_or_default();
    assert!(!summary.contains("skipped") && !summary.contains("deselected"), "every test ran: {summary}\n{stdout}");
}
