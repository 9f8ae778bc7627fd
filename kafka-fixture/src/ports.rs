//! Loopback ports for a child process (a broker, a gateway, Redis) to listen on.

use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out: above the well-known and most registered services' ports.
const LOW: u32 = 10_000;

/// A loopback port nothing listens on right now, for a child process to listen on.
///
/// Taken below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`): a port the kernel
/// hands out (`bind(0)`) is also what it gives the next outgoing connection, so a Kafka client or
/// Redis connection of a test running beside this one could take it between its release here and
/// the child's bind ("Address already in use"). Ports below the range are given to no one
/// unasked; each process walks its own stretch of them (from its pid) and skips any in use.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_low > LOW + 1_000 {
        let span = ephemeral_low - LOW;
        let start = std::process::id().wrapping_mul(7_919) % span;
        for _ in 0..span {
            let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return port as u16;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        assert!(std::net::TcpListener::bind(("127.0.0.1", a)).is_ok());
        if let Some(low) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
            .filter(|low| *low > LOW + 1_000)
        {
            assert!(u32::from(a) < low && u32::from(a) >= LOW, "{a} outside {LOW}..{low}");
        }
    }
}
