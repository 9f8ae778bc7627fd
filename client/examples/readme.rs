//! The subscriber of the README's "Subscribe" section, as printed there (client/tests/readme.rs
//! keeps the two the same). Run it against the demo: `cargo run --release -p fanout-client
//! --example readme`.

use fanout_client::{shutdown_signal, Delivery, Nack, Replicas, Subscriber};

/// Your service's own work. An error it returns is a retry (a panic too).
async fn save(order: &str) -> std::io::Result<()> {
    println!("saved {order}");
    Ok(())
}

async fn handle(d: Delivery) -> Result<(), Nack> {
    let order = d.value.as_deref().ok_or_else(|| Nack::dead_letter("an order without a body"))?;
    save(std::str::from_utf8(order)?).await?;
    Ok(()) // acked
}

#[tokio::main]
async fn main() -> Result<(), fanout_client::Error> {
    // The demo's gateway. In Kubernetes, every replica behind the headless Service:
    // Replicas::dns("fanout-gateway-headless.shop.svc.cluster.local:50051")
    Subscriber::builder("demo") // pod name and namespace from POD_NAME / POD_NAMESPACE
        .replicas(Replicas::dns("127.0.0.1:50051"))
        .label("track", "stable") // the demo's cohort; in Kubernetes labels are the pod's
        .concurrency(8)
        .build()?
        .run(handle, shutdown_signal()) // returns once drained, or on a refusal (unknown route)
        .await
}
