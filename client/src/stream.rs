//! One `Fanout.Subscribe` stream to one gateway replica, acked by hand.
//!
//! [`crate::Subscriber`] is what a service uses; this is the wire underneath it, public for
//! tools and tests that need the protocol's detail (a hello of their own, acks by record,
//! malformed sequences). Nothing here reconnects.

use std::collections::HashMap;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use fanout_proto::v1::fanout_client::FanoutClient;
use fanout_proto::v1::subscribe_request::Kind;
use fanout_proto::v1::{Ack, Credit, Delivery, Disposition, Drain, Extend, Hello, Nack, SubscribeRequest};

/// Why a raw stream could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not valid or does not answer.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint as given.
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The gateway refused the stream.
    #[error("subscription refused: {0}")]
    Refused(#[source] Status),
    /// The stream has ended; nothing more can be sent on it.
    #[error("the stream is closed")]
    Closed,
    /// The token cannot be sent as metadata.
    #[error("the token is not a valid metadata value (a projected token is base64url text)")]
    BadToken,
    /// A TLS file named in [`ClientTls`] cannot be read.
    #[error("{what}: cannot read {path}: {source}")]
    TlsFile {
        /// Which file: the field and its command-line flag.
        what: &'static str,
        /// The path given.
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// TLS toward the gateway: the CA that signed its certificate, and for mTLS the client's own
/// certificate and key (PEM files).
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// The CA that signed the gateway's certificate (PEM).
    pub ca_file: Option<String>,
    /// mTLS: this subscriber's certificate (PEM), with `key_file`.
    pub cert_file: Option<String>,
    /// mTLS: this subscriber's private key (PEM), with `cert_file`.
    pub key_file: Option<String>,
    /// The name the gateway's certificate must carry, when it is not the endpoint's host.
    pub domain: Option<String>,
}

impl ClientTls {
    /// tonic's TLS settings from these files; an unreadable file is an error naming its option.
    pub fn config(&self) -> Result<tonic::transport::ClientTlsConfig, ClientError> {
        let read = |what: &'static str, path: &str| {
            std::fs::read(path).map_err(|source| ClientError::TlsFile { what, path: path.to_string(), source })
        };
        let mut config = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &self.ca_file {
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(read("ca_file (--tls-ca)", ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            config = config.identity(tonic::transport::Identity::from_pem(
                read("cert_file (--tls-cert)", cert)?,
                read("key_file (--tls-key)", key)?,
            ));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        Ok(config)
    }
}

/// A channel to `endpoint` (`http://` or `https://host:port`), over TLS when `tls` is given.
pub async fn channel(endpoint: &str, tls: Option<&ClientTls>) -> Result<tonic::transport::Channel, ClientError> {
    let fail = |source| ClientError::Connect { endpoint: endpoint.to_string(), source };
    // TLS needs the https scheme; `http://host:port` with TLS options means the same address.
    let address = match (tls, endpoint.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => endpoint.to_string(),
    };
    let mut target = tonic::transport::Endpoint::from_shared(address).map_err(fail)?;
    if let Some(tls) = tls {
        target = target.tls_config(tls.config()?).map_err(fail)?;
    }
    target.connect().await.map_err(fail)
}

/// One open subscription.
///
/// Deliveries are acked by their `ack_id`; for the tools' and tests' convenience the
/// subscription also remembers, per received record (`topic/partition/offset`, see [`id_of`]),
/// the handle of its latest delivery, so [`Subscription::ack`] and the nacks take those ids.
pub struct Subscription {
    deliveries: tonic::Streaming<fanout_proto::v1::SubscribeResponse>,
    requests: mpsc::Sender<SubscribeRequest>,
    handles: parking_lot::Mutex<HashMap<String, u64>>,
}

/// A delivery's record as `topic/partition/offset`: the same across redeliveries.
pub fn id_of(d: &Delivery) -> String {
    format!("{}/{}/{}", d.topic, d.partition, d.offset)
}

impl Subscription {
    /// Connects to `endpoint` (`http://host:port`) and sends `hello`.
    pub async fn connect(endpoint: &str, hello: Hello) -> Result<Self, ClientError> {
        let mut client = FanoutClient::connect(endpoint.to_string())
            .await
            .map_err(|source| ClientError::Connect { endpoint: endpoint.to_string(), source })?;
        Self::open(&mut client, hello).await
    }

    /// Connects to `endpoint` over TLS (see [`ClientTls`]) and sends `hello`.
    pub async fn connect_tls(endpoint: &str, hello: Hello, tls: &ClientTls) -> Result<Self, ClientError> {
        let mut client = FanoutClient::new(channel(endpoint, Some(tls)).await?);
        Self::open(&mut client, hello).await
    }

    /// Opens a subscription on an existing channel.
    pub async fn open(client: &mut FanoutClient<tonic::transport::Channel>, hello: Hello) -> Result<Self, ClientError> {
        Self::open_with_token(client, hello, None).await
    }

    /// Opens a subscription that presents `token` (the pod's projected ServiceAccount token,
    /// for routes with `identity = "token"`) as `authorization: Bearer` metadata.
    pub async fn open_with_token(
        client: &mut FanoutClient<tonic::transport::Channel>,
        hello: Hello,
        token: Option<&str>,
    ) -> Result<Self, ClientError> {
        // Acks are small; 1024 queued requests is far more than a window's worth of batches.
        let (requests, rx) = mpsc::channel(1_024);
        requests.send(SubscribeRequest { kind: Some(Kind::Hello(hello)) }).await.map_err(|_| ClientError::Closed)?;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            let value = format!("Bearer {}", token.trim()).parse().map_err(|_| ClientError::BadToken)?;
            request.metadata_mut().insert("authorization", value);
        }
        let deliveries = client.subscribe(request).await.map_err(ClientError::Refused)?.into_inner();
        Ok(Self { deliveries, requests, handles: parking_lot::Mutex::new(HashMap::new()) })
    }

    /// The next batch of deliveries; `Ok(None)` when the server ended the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<Vec<Delivery>>, Status> {
        let Some(response) = self.deliveries.message().await? else { return Ok(None) };
        let mut handles = self.handles.lock();
        for d in &response.deliveries {
            handles.insert(id_of(d), d.ack_id);
        }
        Ok(Some(response.deliveries))
    }

    /// The next batch without remembering ids: for callers that ack by handle only.
    pub async fn next_raw(&mut self) -> Result<Option<Vec<Delivery>>, Status> {
        Ok(self.deliveries.message().await?.map(|r| r.deliveries))
    }

    /// The handles of these record ids' latest deliveries, forgotten once taken; ids never
    /// received (or already settled) have none and are left out.
    fn take_handles(&self, ids: &[String]) -> Vec<u64> {
        let mut handles = self.handles.lock();
        ids.iter().filter_map(|id| handles.remove(id)).collect()
    }

    /// Sends an arbitrary request (tests use it to send malformed sequences).
    pub async fn send(&self, kind: Kind) -> Result<(), ClientError> {
        self.requests.send(SubscribeRequest { kind: Some(kind) }).await.map_err(|_| ClientError::Closed)
    }

    /// Acks deliveries by record id ([`id_of`]).
    pub async fn ack(&self, ids: Vec<String>) -> Result<(), ClientError> {
        let ack_ids = self.take_handles(&ids);
        self.ack_ids(ack_ids).await
    }

    /// Acks deliveries by their `ack_id`.
    pub async fn ack_ids(&self, ack_ids: Vec<u64>) -> Result<(), ClientError> {
        self.send(Kind::Ack(Ack { ack_ids })).await
    }

    /// Asks for another attempt after the route's backoff.
    pub async fn nack(&self, delivery_id: String, reason: &str) -> Result<(), ClientError> {
        self.nack_with(delivery_id, reason, Disposition::Retry, None).await
    }

    /// Asks for another attempt after `retry_after`, not the route's backoff.
    pub async fn nack_after(
        &self,
        delivery_id: String,
        reason: &str,
        retry_after: std::time::Duration,
    ) -> Result<(), ClientError> {
        self.nack_with(delivery_id, reason, Disposition::Retry, Some(retry_after)).await
    }

    /// Gives up on a delivery: it goes to the route's dead-letter topic.
    pub async fn dead_letter(&self, delivery_id: String, reason: &str) -> Result<(), ClientError> {
        self.nack_with(delivery_id, reason, Disposition::DeadLetter, None).await
    }

    async fn nack_with(
        &self,
        delivery_id: String,
        reason: &str,
        disposition: Disposition,
        retry_after: Option<std::time::Duration>,
    ) -> Result<(), ClientError> {
        let Some(ack_id) = self.take_handles(std::slice::from_ref(&delivery_id)).pop() else { return Ok(()) };
        self.send(Kind::Nack(Nack {
            ack_id,
            reason: reason.to_string(),
            disposition: disposition as i32,
            retry_after: retry_after.and_then(|d| prost_types::Duration::try_from(d).ok()),
        }))
        .await
    }

    /// Moves the ack deadline of deliveries still being worked on, by record id ([`id_of`]):
    /// each becomes `extension` from now, up to the route's `max_lease_ms` after it was sent.
    /// The ids stay known, to be acked or nacked later.
    pub async fn extend(&self, ids: &[String], extension: std::time::Duration) -> Result<(), ClientError> {
        let ack_ids: Vec<u64> = {
            let handles = self.handles.lock();
            ids.iter().filter_map(|id| handles.get(id).copied()).collect()
        };
        self.extend_ids(ack_ids, extension).await
    }

    /// Moves the ack deadline of deliveries by their `ack_id`.
    pub async fn extend_ids(&self, ack_ids: Vec<u64>, extension: std::time::Duration) -> Result<(), ClientError> {
        // Longer than the contract's limit (which the gateway cuts it to anyway), or too long
        // to encode: the limit, never "nothing", which would give the deliveries back.
        let extension = extension.min(crate::lease::MAX_EXTENSION);
        let extension = prost_types::Duration::try_from(extension).ok();
        self.send(Kind::Extend(Extend { ack_ids, extension })).await
    }

    /// Raises this stream's window by `additional`.
    pub async fn credit(&self, additional: u32) -> Result<(), ClientError> {
        self.send(Kind::Credit(Credit { additional })).await
    }

    /// Asks the gateway to send nothing new and end the stream once what is in flight settles.
    pub async fn drain(&self) -> Result<(), ClientError> {
        self.send(Kind::Drain(Drain {})).await
    }
}

/// A hello for `route` with a window of `max_in_flight`.
pub fn hello(route: &str, name: &str, max_in_flight: u32) -> Hello {
    Hello { route: route.to_string(), pod_name: name.to_string(), max_in_flight, ..Hello::default() }
}
