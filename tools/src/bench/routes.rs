//! Idle routes: what a gateway process costs per route while nothing is produced. Each route is
//! a librdkafka consumer of its own (its threads, its fetch loop, its statistics) and a
//! dispatcher task with its timers, so a gateway with many routes pays for each even when no
//! message flows. The gateway runs as its own `serve` process, measured from /proc.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::memory::{proc_status_kib, serve};
use super::BenchError;

/// What one gateway process with `routes` idle routes costs, measured over a window after
/// the routes joined their groups.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdleRoutes {
    pub routes: usize,
    pub rss_kib: u64,
    pub threads: u64,
    /// CPU (user + system) over the window, in cores.
    pub cores: f64,
}

/// Linux's USER_HZ, the unit of /proc/PID/stat's times: 100 on every architecture Linux
/// exposes to user space, whatever the kernel's own tick.
const USER_HZ: f64 = 100.0;

/// utime + stime of /proc/PID/stat, in seconds (the bench's own process, a broker's JVM, the
/// share-group reader's).
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    parse_stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Fields 14 and 15 of /proc/PID/stat (utime, stime), counted after the command name, which
/// is in parentheses and may hold spaces.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state): utime is field 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// The config of a gateway with `routes` routes over `topic`, each in a group of its own.
fn config(port: u16, bootstrap: &str, group: &str, topic: &str, routes: usize) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace_ms = 1000\n\n\
         [kafka]\nbootstrap_servers = \"{bootstrap}\"\ngroup_id = \"{group}\"\n"
    );
    for i in 0..routes {
        let _ = write!(text, "\n[[routes]]\nname = \"idle-{i}\"\ntopics = [\"{topic}\"]\n");
    }
    text
}

/// Runs `fanout-gateway serve` (`exe`) with `routes` routes over the empty `topic`, waits
/// `settle` for the routes to join their groups, then measures over `window`.
pub async fn idle(
    exe: &std::path::Path,
    bootstrap: &str,
    topic: &str,
    routes: usize,
    settle: Duration,
    window: Duration,
) -> Result<IdleRoutes, BenchError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let group = format!("idle-{routes}-{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("fanout-bench-{group}"));
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("fanout.toml");
    std::fs::write(&config_path, config(port, bootstrap, &group, topic, routes))?;
    let gateway = serve(exe, &config_path, port).await?;
    let pid = gateway.0.id();
    tokio::time::sleep(settle).await;
    let before = cpu_seconds(pid);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let (after, took) = (cpu_seconds(pid), started.elapsed());
    let cores = match (before, after) {
        (Some(b), Some(a)) => (a - b) / took.as_secs_f64(),
        _ => 0.0,
    };
    let measured = IdleRoutes {
        routes,
        rss_kib: proc_status_kib(pid, "VmRSS").unwrap_or(0),
        // The same line format, a count rather than KiB.
        threads: proc_status_kib(pid, "Threads").unwrap_or(0),
        cores,
    };
    drop(gateway);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(measured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (fanout (gw) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0 99 0 0";
        assert_eq!(parse_stat_cpu(stat), Some(3.0), "(250 + 50) ticks of 1/100 s");
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn every_route_has_a_name_and_the_topic() {
        let text = config(1, "b:9092", "g", "idle", 3);
        assert_eq!(text.matches("[[routes]]").count(), 3);
        assert!(text.contains("name = \"idle-2\"") && text.contains("topics = [\"idle\"]"));
    }
}
