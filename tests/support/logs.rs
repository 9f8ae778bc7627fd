//! The gateway's log as text, for tests that assert on what an operator reads in it: every
//! line also goes to the test's output (shown when it fails, or with `--nocapture`).

use std::io::Write;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

/// Everything logged in this test binary since [`Logs::capture`] first ran.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        eprint!("{}", String::from_utf8_lossy(buf));
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// The binary's log subscriber (installed by the first call; later calls share it): the
    /// gateway's lines at INFO and above, librdkafka's at WARN and above, without colours.
    pub fn capture() -> Self {
        static LOGS: OnceLock<Logs> = OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            let writer = logs.clone();
            tracing_subscriber::fmt()
                .with_env_filter("fanout_gateway=info,librdkafka=warn")
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .try_init()
                .expect("no other log subscriber in this test binary");
            logs
        })
        .clone()
    }

    /// The lines logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }

    /// The lines logged so far at `level` (`WARN`, `ERROR`) that contain every one of `words`.
    pub fn lines_with(&self, level: &str, words: &[&str]) -> Vec<String> {
        let level = format!(" {level} ");
        self.text()
            .lines()
            .filter(|line| line.contains(&level) && words.iter().all(|w| line.contains(w)))
            .map(str::to_string)
            .collect()
    }
}
