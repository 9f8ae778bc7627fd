//! A client that breaks the Subscribe contract gets a status that names the problem, its
//! in-flight deliveries are redelivered, and the gateway goes on serving everyone else.
//!
//! Frames are built by hand here (a pass-through codec sends the bytes as given), so the tests
//! can send what no generated client would: protobuf that does not decode, strings that are
//! not UTF-8, frames over the size limit.

mod support;

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use fanout_client::stream::{self, Subscription};
use fanout_gateway::proto::subscribe_request::Kind;
use fanout_gateway::proto::{Ack, Hello, SubscribeRequest, SubscribeResponse};
use fanout_gateway::stats::Stats;
use prost::Message;
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Sends request bytes as given; decodes responses as the contract's.
#[derive(Default)]
struct RawCodec;

struct RawEncoder;
struct ResponseDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = SubscribeResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ResponseDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = SubscribeResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<SubscribeResponse>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        SubscribeResponse::decode(bytes).map(Some).map_err(|e| Status::internal(e.to_string()))
    }
}

/// A Subscribe stream whose request frames the test writes byte by byte.
struct RawStream {
    requests: mpsc::Sender<Bytes>,
    responses: tonic::Streaming<SubscribeResponse>,
}

impl RawStream {
    /// Opens the stream with a well-formed hello for `ROUTE`.
    async fn open(endpoint: &str, window: u32) -> Self {
        let channel = Channel::from_shared(endpoint.to_string()).expect("endpoint").connect().await.expect("connects");
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.expect("ready");
        let (requests, rx) = mpsc::channel(16);
        let hello = stream::hello(ROUTE, "raw", window);
        requests.send(encode(Kind::Hello(hello))).await.expect("queued");
        let path = http::uri::PathAndQuery::from_static("/fanout.v1.Fanout/Subscribe");
        let responses = grpc
            .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, RawCodec)
            .await
            .expect("subscribed")
            .into_inner();
        Self { requests, responses }
    }

    async fn send(&self, frame: Bytes) {
        self.requests.send(frame).await.expect("the request stream is open");
    }

    /// Deliveries until `count` have arrived.
    async fn receive(&mut self, count: usize) -> Vec<String> {
        let mut ids = Vec::new();
        while ids.len() < count {
            let batch = tokio::time::timeout(Duration::from_secs(20), self.responses.message())
                .await
                .expect("deliveries in time")
                .expect("stream open")
                .expect("not ended");
            ids.extend(batch.deliveries.into_iter().map(|d| stream::id_of(&d)));
        }
        ids
    }

    /// How the server ended the stream: the status (OK when it ended cleanly).
    async fn end(mut self) -> Status {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), self.responses.message()).await {
                Err(_) => panic!("the stream did not end"),
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return Status::ok(""),
                Ok(Err(status)) => return status,
            }
        }
    }
}

fn encode(kind: Kind) -> Bytes {
    SubscribeRequest { kind: Some(kind) }.encode_to_vec().into()
}

/// A SubscribeRequest whose Nack (of handle 1) gives these (not necessarily UTF-8) bytes as
/// its reason.
fn nack_with_raw_reason(reason: &[u8]) -> Bytes {
    let mut nack = vec![0x08, 0x01]; // Nack.ack_id: field 1, varint, 1
    nack.put_u8(0x12); // Nack.reason: field 2, length-delimited
    nack.put_u8(reason.len() as u8);
    nack.extend_from_slice(reason);
    let mut request = Vec::new();
    request.put_u8(0x1a); // SubscribeRequest.nack: field 3, length-delimited
    request.put_u8(nack.len() as u8);
    request.extend_from_slice(&nack);
    request.into()
}

/// Each way of breaking the contract after hello: the stream ends with the status `code`,
/// whose message contains `names`.
struct Case {
    name: &'static str,
    frame: fn() -> Vec<Bytes>,
    code: Code,
    names: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "protobuf that does not decode",
        frame: || vec![Bytes::from_static(&[0xff, 0xff, 0xff, 0xff])],
        code: Code::InvalidArgument,
        names: "could not be decoded",
    },
    Case {
        name: "a nack reason that is not UTF-8",
        frame: || vec![nack_with_raw_reason(&[0x6f, 0xff, 0xfe])],
        code: Code::InvalidArgument,
        names: "UTF-8",
    },
    Case {
        name: "a frame over the size limit",
        // 500 000 handles of 10 bytes each: 5 MB, over the 4 MiB limit.
        frame: || vec![encode(Kind::Ack(Ack { ack_ids: vec![u64::MAX; 500_000] }))],
        code: Code::ResourceExhausted,
        names: "the limit is",
    },
    Case {
        name: "a second hello",
        frame: || vec![encode(Kind::Hello(Hello { route: ROUTE.into(), ..Hello::default() }))],
        code: Code::InvalidArgument,
        names: "hello may be sent only once",
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_end_the_stream_with_a_status_that_names_them_and_lose_nothing() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("hostile");
    let ids = produce(&bootstrap, 40, 8).await;
    let gw = start_gateway(config(&bootstrap, &group)).await;

    for case in CASES {
        // Each bad stream holds deliveries in flight when it breaks: they must come back.
        let mut raw = RawStream::open(&gw.endpoint(), 5).await;
        raw.receive(5).await;
        for frame in (case.frame)() {
            raw.send(frame).await;
        }
        let status = raw.end().await;
        assert_eq!(status.code(), case.code, "{}: {status:?}", case.name);
        assert!(status.message().contains(case.names), "{}: {:?}", case.name, status.message());
        assert!(status.message().contains("redelivered"), "{}: says what happens to in-flight", case.name);
    }

    // A client that half-closes after hello can ack nothing more: told so, not OK.
    let mut raw = RawStream::open(&gw.endpoint(), 5).await;
    raw.receive(5).await;
    let RawStream { requests, responses } = raw;
    drop(requests);
    let status = RawStream { requests: mpsc::channel(1).0, responses }.end().await;
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert!(status.message().contains("closed its side"), "{:?}", status.message());

    // The gateway is still up, and everything the broken streams held is delivered again.
    let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "good", 50)).await.expect("subscribes");
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(receive_and_ack(&mut sub, ids.len()).await, expected, "every message reached the good subscriber");
    eventually(Duration::from_secs(20), "commits reach the high watermarks", || fully_committed(&bootstrap, &group, 2))
        .await;
    gw.shutdown().await;
}

/// A gRPC message frame: compression flag, length, message.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.extend_from_slice(message);
    frame.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_streams_and_resets_leave_the_gateway_serving() {
    const STREAMS: usize = 2_000;
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("flood");
    let ids = produce(&bootstrap, 100, 10).await;
    let mut config = config(&bootstrap, &group);
    config.server.max_streams_per_connection = 50;
    let gw = start_gateway(config).await;
    let stats = gw.stats();

    // Raw HTTP/2: open Subscribe streams with a hello and reset each at once ("rapid reset"),
    // far more of them than the connection may hold at a time.
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.expect("connects");
    let (mut h2, connection) = h2::client::handshake(tcp).await.expect("http/2");
    let driver = tokio::spawn(connection);
    let hello = encode(Kind::Hello(stream::hello(ROUTE, "flood", 10)));
    let subscribe = || {
        http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/fanout.v1.Fanout/Subscribe", gw.addr()))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request")
    };
    // One stream answered first: by then the server's SETTINGS (its stream limit) are known.
    let (response, mut body) = h2.send_request(subscribe(), false).expect("first stream");
    body.send_data(grpc_frame(&hello), false).expect("hello sent");
    assert_eq!(response.await.expect("response headers").status(), http::StatusCode::OK);
    body.send_reset(h2::Reason::CANCEL);
    let mut opened = 0;
    for _ in 0..STREAMS {
        let Ok(ready) = h2.clone().ready().await else { break }; // the server may end the connection
        h2 = ready;
        let Ok((_response, mut body)) = h2.send_request(subscribe(), false) else { break };
        let _ = body.send_data(grpc_frame(&hello), false);
        body.send_reset(h2::Reason::CANCEL);
        opened += 1;
    }
    let max_streams = h2.current_max_send_streams();
    eprintln!(
        "flood: {opened} of {STREAMS} streams opened and reset before the server ended the connection; it allowed \
         {max_streams} at a time"
    );
    assert!(opened > 50, "the flood got going ({opened} streams)");
    assert!(max_streams <= 50, "the server's stream limit reached the client: {max_streams}");
    drop(h2);
    driver.abort();

    // The gateway is up, no flooded session lingers, and a real subscriber gets everything.
    eventually(Duration::from_secs(20), "flooded sessions are gone", || Stats::get(&stats.sessions) == 0).await;
    let mut sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "good", 100)).await.expect("subscribes");
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(receive_and_ack(&mut sub, ids.len()).await, expected, "every message reached the good subscriber, once");
    eventually(Duration::from_secs(20), "commits reach the high watermarks", || fully_committed(&bootstrap, &group, 2))
        .await;
    gw.shutdown().await;
}

/// The status a Subscribe call gets when its first request frame is `first` (bytes as given).
async fn first_frame_status(endpoint: &str, first: Bytes) -> Status {
    let channel = Channel::from_shared(endpoint.to_string()).expect("endpoint").connect().await.expect("connects");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let (requests, rx) = mpsc::channel(1);
    requests.send(first).await.expect("queued");
    let path = http::uri::PathAndQuery::from_static("/fanout.v1.Fanout/Subscribe");
    let call = grpc.streaming(tonic::Request::new(ReceiverStream::new(rx)), path, RawCodec);
    let status = match tokio::time::timeout(Duration::from_secs(20), call).await.expect("answered in time") {
        Err(status) => status,
        Ok(response) => RawStream { requests, responses: response.into_inner() }.end().await,
    };
    status
}

/// A Hello for the route from a pod of this name with these labels.
fn hello_frame(pod_name: &str, labels: impl IntoIterator<Item = (String, String)>) -> Bytes {
    encode(Kind::Hello(Hello {
        route: ROUTE.into(),
        pod_name: pod_name.into(),
        labels: labels.into_iter().collect(),
        max_in_flight: 10,
        ..Hello::default()
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hellos_no_pod_could_send_are_refused_and_never_reach_the_metrics() {
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("hostile-hello");
    let gw = start_gateway(config(&bootstrap, &group)).await;
    let endpoint = gw.endpoint();

    // A pod name that would write a series of its own into /metrics (D1).
    let forged = "x\"} 1\nfanout_ready 0\nfanout_partition_lag{route=\"orders\"";
    let status = first_frame_status(&endpoint, hello_frame(forged, [])).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("Hello.pod_name is not a pod name"), "{:?}", status.message());
    // Names and labels bounded as Kubernetes bounds them (D3).
    let long_label = [("track".to_string(), "v".repeat(1 << 20))];
    let status = first_frame_status(&endpoint, hello_frame("orders-1", long_label)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("Hello.labels[\"track\"] is not a label value"), "{:?}", status.message());
    let many = (0..1_000).map(|i| (format!("k{i}"), "v".to_string()));
    let status = first_frame_status(&endpoint, hello_frame("orders-1", many)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("at most 64"), "{:?}", status.message());
    let status = first_frame_status(&endpoint, hello_frame(&"a".repeat(100_000), [])).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // A first frame that does not decode, or is over the limit, gets the documented codes (D6).
    let status = first_frame_status(&endpoint, Bytes::from_static(&[0xff, 0xff, 0xff, 0xff])).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("could not be decoded"), "{:?}", status.message());
    let huge = [("track".to_string(), "v".repeat(5 << 20))];
    let status = first_frame_status(&endpoint, hello_frame("orders-1", huge)).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Two streams under one name (two processes with the same pod name) are one series, not
    // a duplicate that would make Prometheus refuse the whole scrape.
    let twin = || stream::hello(ROUTE, "orders-twin", 10);
    let _a = Subscription::connect(&endpoint, twin()).await.expect("subscribes");
    let _b = Subscription::connect(&endpoint, twin()).await.expect("subscribes");
    let (text, samples) = scrape(gw.admin_addr()).await;
    assert_eq!(promtool_check(&text), "", "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("fanout_ready ")).count(), 1, "one readiness sample: {text}");
    assert!(!text.contains("orders\"\n") && !text.contains("x\""), "nothing of the forged hello: {text}");
    let window = samples.iter().find(|(k, _)| k.starts_with("fanout_subscriber_window{") && k.contains("orders-twin"));
    assert_eq!(window.map(|(_, v)| *v), Some(20.0), "the twins' windows added up: {text}");
    // Every series is one the gateway declares.
    let declared: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        assert!(declared.iter().any(|d| name.starts_with(d)), "a series nobody declared: {line}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_sockets_on_the_admin_port_are_capped_and_closed_and_subscribers_still_connect() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SOCKETS: usize = 300;
    init_logs();
    let cluster = mock_cluster(2);
    let bootstrap = cluster.bootstrap_servers();
    let group = unique_group("hostile-admin");
    let mut config = config(&bootstrap, &group);
    config.server.max_connections = 100;
    config.server.idle_timeout_ms = 1_000;
    let gw = start_gateway(config).await;
    let admin = gw.admin_addr();

    // Half say nothing, half dribble a request head a byte at a time (slowloris).
    let mut sockets = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS {
        sockets.push(tokio::net::TcpStream::connect(admin).await.expect("connects"));
    }
    let (silent, slow) = sockets.split_at_mut(SOCKETS / 2);
    for s in slow.iter_mut() {
        let _ = s.write_all(b"GET /metr").await;
    }
    // The Subscribe port serves meanwhile.
    let _sub = Subscription::connect(&gw.endpoint(), stream::hello(ROUTE, "good", 10)).await.expect("subscribes");
    // Every silent socket is closed: at once past the cap, after the idle timeout otherwise.
    for (i, s) in silent.iter_mut().enumerate() {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "silent socket {i} still open: {read:?}");
    }
    drop(sockets);
    // With the sockets gone, the admin port answers again.
    let (code, _) = http_get(admin, "/healthz").await;
    assert_eq!(code, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_admin_path_is_not_found_and_grpc_keeps_unimplemented() {
    init_logs();
    let cluster = mock_cluster(1);
    let bootstrap = cluster.bootstrap_servers();
    let gw = start_gateway(config(&bootstrap, &unique_group("hostile-404"))).await;
    for path in ["/livez", "/anything", "/metrics/extra"] {
        let (code, body) = http_get(gw.admin_addr(), path).await;
        assert_eq!(code, 404, "{path}: {body}");
    }
    assert_eq!(http_get(gw.admin_addr(), "/healthz").await.0, 200);
    // A gRPC call of a method nobody serves is still UNIMPLEMENTED, not a 404.
    let channel = Channel::from_shared(gw.admin_endpoint()).expect("endpoint").connect().await.expect("connects");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Nothing");
    let answer = grpc.unary(tonic::Request::new(Bytes::new()), path, RawCodec).await;
    assert_eq!(answer.expect_err("no such method").code(), Code::Unimplemented);
    gw.shutdown().await;
}
