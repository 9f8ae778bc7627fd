//! Runs a foreign test suite (pytest, `go test`) to completion within a bound: in a process
//! group of its own, so a hung run is killed with the gateways it started; its stdout and
//! stderr go to files, so both can be read however it ends.

use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a finished run said: its exit status, stdout and stderr.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` (`what` names it in panics) with its output in `dir`; panics with that
/// output if it cannot start or is still running after `limit` (then killed, group and all).
pub fn run(what: &str, mut command: Command, dir: &Path, limit: Duration, how_to_start: &str) -> Finished {
    let (out, err) = (dir.join("run.out"), dir.join("run.err"));
    command
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("stdout file"))
        .stderr(File::create(&err).expect("stderr file"));
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run {what} ({e}); {how_to_start}"));
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = Command::new("kill").args(["-KILL", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            panic!(
                "{what} still running after {limit:?}; killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
                read(&out),
                read(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Finished { status, stdout: read(&out), stderr: read(&err) }
}
