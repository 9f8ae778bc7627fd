//! The Python subscriber library (clients/python, `fanout_subscriber`): its pytest suite, unit
//! tests and tests against the demo gateway (`fanout-tools demo`, started by the suite's own
//! fixture; `fanoutctl` drains a subscriber as an operator would), run with the venv's Python as
//! CI has it. This is how `bash .ci/test` runs pytest.

use std::process::Command;
use std::time::Duration;

#[path = "support/bounded.rs"]
mod bounded;
mod support;

use support::{fanoutctl_bin, python, tools_bin};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The whole suite takes well under a minute on 2 cores; this bounds a hang.
const LIMIT: Duration = Duration::from_secs(600);

#[test]
fn the_python_library_passes_its_pytest_suite_against_the_demo_gateway() {
    let tools = tools_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(python());
    command
        .args(["-m", "pytest", "clients/python/tests", "-q", "-p", "no:cacheprovider"])
        .current_dir(ROOT)
        .env("FANOUT_TOOLS", &tools)
        .env("FANOUTCTL", fanoutctl_bin())
        // No __pycache__ written into the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTHONPATH");
    let how = ".ci/setup makes target/ci-venv with pytest";
    let bounded::Finished { status, stdout, stderr } = bounded::run("pytest", command, dir.path(), LIMIT, how);
    println!("{stdout}");
    assert!(
        status.success(),
        "pytest failed ({status}; FANOUT_TOOLS={}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        tools.display()
    );
    let summary = stdout.lines().rev().find(|l| l.contains(" passed")).unwrap_or_default();
    assert!(!summary.contains("skipped") && !summary.contains("deselected"), "every test ran: {summary}\n{stdout}");
}
