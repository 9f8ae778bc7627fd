//! A complete subscriber: `cargo run -p fanout-client --example orders -- ROUTE [REPLICA...]`.
//!
//! With no replicas it finds them through `FANOUT_GATEWAY_DNS` (the gateway's headless Service,
//! `host:port`), as it would in Kubernetes (`examples/k8s/subscriber-deployment.yaml`, which
//! also hands it its labels in `FANOUT_LABELS_FILE`); against the demo (`cargo demo`) run
//! `cargo run -p fanout-client --example orders -- demo 127.0.0.1:50051`. Logs go to stderr
//! (`RUST_LOG=info` by default); SIGTERM or Ctrl-C drains and exits 0.

use std::time::Duration;

use fanout_client::{shutdown_signal, Delivery, Nack, Replicas, Subscriber};

/// The service's work: here, parse the value as text and log it. A missing value can never
/// succeed, so it goes to the dead-letter topic; a value that is not UTF-8 is retried (as any
/// error returned with `?`), and a message asking for it is retried later.
async fn handle(delivery: Delivery) -> Result<(), Nack> {
    let Some(value) = delivery.value.as_deref() else {
        return Err(Nack::dead_letter("a tombstone: nothing to process"));
    };
    let text = std::str::from_utf8(value)?;
    if text.contains("\"retry\"") && delivery.attempt < 3 {
        return Err(Nack::retry_after("asked to be retried", Duration::from_secs(1)));
    }
    tracing::info!(
        topic = %delivery.topic,
        partition = delivery.partition,
        offset = delivery.offset,
        attempt = delivery.attempt,
        cohort = %delivery.cohort,
        "{text}"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let route = args.next().ok_or("usage: orders ROUTE [REPLICA...] (or FANOUT_GATEWAY_DNS=host:port)")?;
    let listed: Vec<String> = args.collect();
    let replicas = match std::env::var("FANOUT_GATEWAY_DNS") {
        Ok(name) if listed.is_empty() => Replicas::dns(name),
        _ if listed.is_empty() => return Err("give replicas, or FANOUT_GATEWAY_DNS=host:port".into()),
        _ => Replicas::list(listed),
    };
    let mut builder = Subscriber::builder(route).replicas(replicas).concurrency(8).max_in_flight(100);
    if let Ok(labels) = std::env::var("FANOUT_LABELS_FILE") {
        builder = builder.labels_file(labels);
    }
    let subscriber = builder.build()?;
    let stats = subscriber.stats();
    subscriber.run(handle, shutdown_signal()).await?;
    tracing::info!(stats = ?stats.snapshot(), "drained");
    Ok(())
}
