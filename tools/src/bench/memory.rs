//! Memory: the peak resident set of a gateway process in front of a large backlog and a slow
//! subscriber. The gateway runs as its own `serve` process, so that what is measured is the
//! gateway alone, not the embedded Kafka or the benchmark's producer.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::load::Backlog;
use super::BenchError;
use std::sync::{Arc, OnceLock};

use fanout_client::{Delivery, Nack, Replicas, Subscriber};

/// The slow subscriber's window and time per batch: about 1 000 messages a second, far below
/// what the gateway can fetch, so partitions fill their buffers and pause.
const SLOW_WINDOW: u32 = 10;
const SLOW_WORK: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident set once the gateway listens, before any subscriber.
    pub start_rss_kib: u64,
    /// Peak resident set over the run (VmHWM).
    pub peak_rss_kib: u64,
    /// Messages the slow subscriber got.
    pub delivered: u64,
}

/// Kills the child when dropped, so that no gateway outlives a failed run.
pub(super) struct Gateway(pub(super) Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `fanout-gateway serve` (`exe`) with the config at `config_path` and waits until it
/// listens on `port`.
pub(super) async fn serve(
    exe: &std::path::Path,
    config_path: &std::path::Path,
    port: u16,
) -> Result<Gateway, BenchError> {
    let child = Command::new(exe)
        .args(["serve", "--config"])
        .arg(config_path)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let gateway = Gateway(child);
    let listening_by = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > listening_by {
            return Err(BenchError::Gateway(format!("the gateway process did not listen on port {port} within 30 s")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(gateway)
}

/// Reads a `VmRSS`/`VmHWM`-style line of /proc/PID/status, in KiB.
pub(super) fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, field)
}

pub(super) fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Runs `fanout-gateway serve` (`exe`) against `bootstrap` with
/// `max_uncommitted_per_partition = bound`, attaches one slow subscriber for `duration`, and
/// reports the process's memory.
pub async fn slow_subscriber(
    exe: &std::path::Path,
    bootstrap: &str,
    backlog: &Backlog,
    group: &str,
    bound: usize,
    duration: Duration,
) -> Result<Memory, BenchError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = std::env::temp_dir().join(format!("fanout-bench-{}-{group}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("fanout.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:0"
shutdown_grace_ms = 1000

[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
max_uncommitted_per_partition = {bound}

[[routes]]
name = "slow"
topics = ["{topic}"]
"#,
            topic = backlog.topic
        ),
    )?;
    let gateway = serve(exe, &config_path, port).await?;
    let pid = gateway.0.id();
    let endpoint = format!("http://127.0.0.1:{port}");

    let start_rss_kib = proc_status_kib(pid, "VmRSS").unwrap_or(0);
    // The slow subscriber, on the subscriber library: SLOW_WINDOW handlers of SLOW_WORK each.
    let subscriber = Subscriber::builder("slow")
        .replicas(Replicas::list([endpoint]))
        .name("slow-0")
        .max_in_flight(SLOW_WINDOW)
        .concurrency(SLOW_WINDOW as usize)
        .build()
        .map_err(|e| BenchError::Gateway(e.to_string()))?;
    let stats = subscriber.stats();
    // The run is timed from the first delivery: joining the group is not the subject.
    let started: Arc<OnceLock<Instant>> = Arc::default();
    let first = started.clone();
    let handler = move |_: Delivery| {
        first.get_or_init(Instant::now);
        async {
            tokio::time::sleep(SLOW_WORK).await;
            Ok::<(), Nack>(())
        }
    };
    let give_up = Instant::now() + duration + Duration::from_secs(30);
    let done = async {
        while started.get().is_none_or(|s| s.elapsed() < duration) && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    subscriber.run(handler, done).await.map_err(|e| BenchError::Gateway(e.to_string()))?;
    let delivered = stats.snapshot().received;
    let peak_rss_kib = proc_status_kib(pid, "VmHWM").unwrap_or(0);
    drop(gateway);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Memory { start_rss_kib, peak_rss_kib, delivered })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_fields_of_proc_status() {
        let status = "Name:\tfanout-gateway\nVmHWM:\t  123456 kB\nVmRSS:\t   98765 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(123_456));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(98_765));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }
}
