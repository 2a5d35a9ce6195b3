//! HTTP/2 and message limits against a real node, with a hand-written
//! HTTP/2 client over real mutual TLS (a well-behaved client library will
//! not send what an attacker sends): an error-reset flood gets GOAWAY,
//! streams past `max_concurrent_streams` are refused, and a gRPC message
//! one byte over the decoding limit is refused from its length prefix
//! alone, before its bytes exist.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{self, DataSpace, NodeDir};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const CONTINUATION: u8 = 0x9;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

/// One HTTP/2 frame as read.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// HTTP/2 spoken by hand over a node's mutual TLS.
struct RawH2 {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl RawH2 {
    /// Connects as `client` and sends the preface and empty SETTINGS.
    fn connect(client: &NodeDir, server: std::net::SocketAddr) -> Self {
        let config: Arc<rustls::ClientConfig> = support::client_config_with(
            &[&rustls::version::TLS13],
            &client.dir.ca_cert(),
            Some(client),
        );
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let conn = rustls::ClientConnection::new(config, name).expect("tls");
        let tcp = TcpStream::connect(server).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut h2 = Self {
            tls: rustls::StreamOwned::new(conn, tcp),
        };
        h2.tls
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .expect("preface");
        h2.frame(SETTINGS, 0, 0, &[]);
        h2
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        assert!(self.try_frame(kind, flags, stream, payload), "write frame");
    }

    /// Writes a frame; false once the server closed the connection.
    fn try_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> bool {
        let len = payload.len() as u32;
        let mut head = [0u8; 9];
        head[..3].copy_from_slice(&len.to_be_bytes()[1..]);
        head[3] = kind;
        head[4] = flags;
        head[5..].copy_from_slice(&stream.to_be_bytes());
        self.tls.write_all(&head).is_ok()
            && self.tls.write_all(payload).is_ok()
            && self.tls.flush().is_ok()
    }

    /// A HPACK block of literal, never-indexed fields (no Huffman).
    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in fields {
            block.push(0x00);
            for s in [name, value] {
                assert!(s.len() < 127);
                block.push(s.len() as u8);
                block.extend_from_slice(s.as_bytes());
            }
        }
        block
    }

    /// HEADERS with literal, never-indexed HPACK fields (no Huffman).
    fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) {
        let block = Self::block(fields);
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        self.frame(HEADERS, flags, stream, &block);
    }

    /// A gRPC request's headers on `stream`.
    fn grpc_call(&mut self, stream: u32, path: &str) {
        self.headers(
            stream,
            &[
                (":method", "POST"),
                (":scheme", "https"),
                (":path", path),
                (":authority", "127.0.0.1"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
            false,
        );
    }

    /// The next frame, answering SETTINGS and PING as a client must;
    /// `None` when the connection closed or went quiet.
    fn next(&mut self) -> Option<Frame> {
        loop {
            let mut head = [0u8; 9];
            self.tls.read_exact(&mut head).ok()?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            self.tls.read_exact(&mut payload).ok()?;
            let f = Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                payload,
            };
            match f.kind {
                SETTINGS if f.flags & ACK == 0 => {
                    self.frame(SETTINGS, ACK, 0, &[]);
                    return Some(f);
                }
                PING if f.flags & ACK == 0 => {
                    let data = f.payload.clone();
                    self.frame(PING, ACK, 0, &data);
                }
                _ => return Some(f),
            }
        }
    }

    /// Reads frames until `want` matches one (or the connection ends).
    fn until(&mut self, mut want: impl FnMut(&Frame) -> bool) -> Option<Frame> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let f = self.next()?;
            if want(&f) {
                return Some(f);
            }
        }
        None
    }
}

fn error_code(payload: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([
        payload[at],
        payload[at + 1],
        payload[at + 2],
        payload[at + 3],
    ])
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("join")
}

/// Row 10, defence: `max_local_error_reset_streams` (tonic leaves h2's
/// guard off by default). Each request carries an unparseable
/// content-length, a stream error the server answers with RST_STREAM;
/// past the limit it sends GOAWAY (ENHANCE_YOUR_CALM).
#[tokio::test]
async fn threat_10_an_error_reset_flood_gets_goaway() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    let node = support::start(&server, |t| t.max_local_error_reset_streams = 8).await;
    let addr = node.local_addr();
    let (resets, goaway) = blocking(move || {
        let mut h2 = RawH2::connect(&client, addr);
        for i in 0..40u32 {
            let stream = 1 + 2 * i;
            h2.headers(
                stream,
                &[
                    (":method", "POST"),
                    (":scheme", "https"),
                    (":path", "/dataspace.v1.Peering/Hello"),
                    (":authority", "127.0.0.1"),
                    ("content-type", "application/grpc"),
                    ("content-length", "not-a-number"),
                ],
                false,
            );
        }
        let mut resets = 0;
        let goaway = h2.until(|f| {
            resets += usize::from(f.kind == RST_STREAM);
            f.kind == GOAWAY
        });
        (resets, goaway)
    })
    .await;
    let goaway = goaway.expect("GOAWAY after the flood");
    // ENHANCE_YOUR_CALM (the resets themselves may be dropped in favour
    // of the GOAWAY: at most the limit's worth come first).
    assert_eq!(error_code(&goaway.payload, 4), 0xb, "{goaway:?}");
    assert!(resets <= 8, "{resets} resets before GOAWAY");
    node.shutdown().await.expect("stop");
}

/// The gRPC request headers of a Hello call.
const HELLO: [(&str, &str); 6] = [
    (":method", "POST"),
    (":scheme", "https"),
    (":path", "/dataspace.v1.Peering/Hello"),
    (":authority", "127.0.0.1"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
];

/// After a flood on one connection, another client still gets answers.
async fn still_serves(space: &DataSpace, node: &dsnode::node::RunningNode) {
    let conn = support::connect(&space.node("bystander", "consumer"), node).await;
    dsnode::wire::pb::peering_client::PeeringClient::new(conn.channel)
        .hello(dsnode::wire::pb::HelloRequest::default())
        .await
        .expect("the node still answers others");
}

/// One HTTP/2 frame's bytes.
fn frame_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Floods a node over one mutual-TLS HTTP/2 connection: `opening` frames,
/// then `flood(i)` for i = 0, 1, … until `max` were sent or the server
/// closed the connection, while a reader takes every frame the server
/// sends (so its GOAWAY is read before the connection is reset). Returns
/// how many flood frames were written and the GOAWAY's error code.
async fn flood(
    client: &NodeDir,
    addr: std::net::SocketAddr,
    opening: Vec<Vec<u8>>,
    mut flood: impl FnMut(u32) -> Vec<u8>,
    max: u32,
) -> (u32, Option<u32>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = support::client_config_with(
        &[&rustls::version::TLS13],
        &client.dir.ca_cert(),
        Some(client),
    );
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("handshake");
    let (mut read, mut write) = tokio::io::split(tls);
    let (settings_tx, settings_rx) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut settings_tx = Some(settings_tx);
        loop {
            let mut head = [0u8; 9];
            read.read_exact(&mut head).await.ok()?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            read.read_exact(&mut payload).await.ok()?;
            match head[3] {
                SETTINGS if head[4] & ACK == 0 => {
                    if let Some(tx) = settings_tx.take() {
                        let _ = tx.send(());
                    }
                }
                GOAWAY => return Some(error_code(&payload, 4)),
                _ => {}
            }
        }
    });
    let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    start.extend(frame_bytes(SETTINGS, 0, 0, &[]));
    write.write_all(&start).await.expect("preface");
    settings_rx.await.expect("server SETTINGS");
    write
        .write_all(&frame_bytes(SETTINGS, ACK, 0, &[]))
        .await
        .expect("ack");
    for f in opening {
        write.write_all(&f).await.expect("opening frames");
    }
    let mut sent = 0;
    while sent < max && write.write_all(&flood(sent)).await.is_ok() {
        sent += 1;
    }
    let _ = write.flush().await;
    let goaway = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .ok()
        .and_then(|r| r.ok().flatten());
    (sent, goaway)
}

/// Row 10, defence: `max_pending_accept_reset_streams` (HTTP/2 rapid
/// reset, CVE-2023-44487). Streams opened and at once reset by the client,
/// thousands a second, cost the server work without ever counting against
/// `max_concurrent_streams`; past the limit the server sends GOAWAY
/// (ENHANCE_YOUR_CALM) and closes.
#[tokio::test]
async fn threat_10_a_rapid_reset_flood_gets_goaway() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    let node = support::start(&server, |t| t.max_pending_accept_reset_streams = 20).await;
    let block = RawH2::block(&HELLO);
    let (sent, goaway) = flood(
        &client,
        node.local_addr(),
        Vec::new(),
        |i| {
            // HEADERS and, right behind, RST_STREAM (CANCEL).
            let stream = 1 + 2 * i;
            let mut pair = frame_bytes(HEADERS, END_HEADERS, stream, &block);
            pair.extend(frame_bytes(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
            pair
        },
        100_000,
    )
    .await;
    assert_eq!(goaway, Some(0xb), "after {sent} reset streams");
    assert!(sent < 100_000, "the server took all {sent}");
    still_serves(&space, &node).await;
    node.shutdown().await.expect("stop");
}

/// Row 10, defence: `max_header_list_size` (16 KiB) and h2's bound on
/// CONTINUATION frames (the 2024 CONTINUATION flood): a header block that
/// never ends (HEADERS without END_HEADERS, then endless CONTINUATION
/// frames) is cut off with GOAWAY, not buffered.
#[tokio::test]
async fn threat_10_a_continuation_flood_gets_goaway() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    let node = support::start(&server, |_| {}).await;
    let filler = RawH2::block(&[("x-filler", &"a".repeat(100))]);
    let (sent, goaway) = flood(
        &client,
        node.local_addr(),
        vec![frame_bytes(HEADERS, 0, 1, &RawH2::block(&HELLO))],
        |_| frame_bytes(CONTINUATION, 0, 1, &filler),
        // Up to 16 MiB of header block, if nothing stops it first.
        (16 << 20) / 112,
    )
    .await;
    let code = goaway.unwrap_or_else(|| panic!("no GOAWAY after {sent} CONTINUATION frames"));
    // PROTOCOL_ERROR, COMPRESSION_ERROR or ENHANCE_YOUR_CALM: cut off.
    assert!([0x1, 0x9, 0xb].contains(&code), "GOAWAY {code:#x}");
    assert!(sent < (16 << 20) / 112, "the server read all {sent} frames");
    still_serves(&space, &node).await;
    node.shutdown().await.expect("stop");
}

/// Row 10, defence: h2's guard against empty DATA frames. Empty DATA
/// frames without END_STREAM carry nothing and consume no flow-control
/// window, so a client could send them forever, costing the server a
/// frame's work each; the server ends such a connection with GOAWAY.
#[tokio::test]
async fn threat_10_an_empty_data_flood_gets_goaway() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    let node = support::start(&server, |_| {}).await;
    let (sent, goaway) = flood(
        &client,
        node.local_addr(),
        vec![frame_bytes(HEADERS, END_HEADERS, 1, &RawH2::block(&HELLO))],
        |_| frame_bytes(DATA, 0, 1, &[]),
        1_000_000,
    )
    .await;
    let code = goaway.unwrap_or_else(|| panic!("no GOAWAY after {sent} empty DATA frames"));
    assert!(sent < 1_000_000, "GOAWAY {code:#x} only after all {sent}");
    still_serves(&space, &node).await;
    node.shutdown().await.expect("stop");
}

/// Row 10, defence: `max_concurrent_streams`. The server announces the
/// limit and refuses the stream past it (REFUSED_STREAM) while the others
/// stay open.
#[tokio::test]
async fn threat_10_streams_past_the_limit_are_refused() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    let node = support::start(&server, |t| t.max_concurrent_streams = 4).await;
    let addr = node.local_addr();
    let (announced, refused) = blocking(move || {
        let mut h2 = RawH2::connect(&client, addr);
        let settings = h2
            .until(|f| f.kind == SETTINGS && f.flags & ACK == 0)
            .expect("server SETTINGS");
        let announced = settings
            .payload
            .chunks_exact(6)
            .find(|s| u16::from_be_bytes([s[0], s[1]]) == 0x3)
            .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
        // Five requests whose bodies never end: all open at once.
        for i in 0..5u32 {
            h2.grpc_call(1 + 2 * i, "/dataspace.v1.Peering/Hello");
        }
        let refused = h2
            .until(|f| f.kind == RST_STREAM)
            .map(|f| (f.stream, error_code(&f.payload, 0)));
        (announced, refused)
    })
    .await;
    assert_eq!(announced, Some(4), "SETTINGS_MAX_CONCURRENT_STREAMS");
    // The fifth stream (id 9), REFUSED_STREAM.
    assert_eq!(refused, Some((9, 0x7)));
    node.shutdown().await.expect("stop");
}

/// Row 9, defence: `max_decoding_message_size`. A gRPC message that
/// announces one byte more than the limit is refused from its 5-byte
/// prefix alone (RESOURCE_EXHAUSTED): its bytes are never sent, so they
/// cannot have been buffered. At the limit the same call is read whole.
#[tokio::test]
async fn threat_09_a_message_over_the_limit_is_refused_from_its_prefix() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    let limit = 64 << 10;
    let node = support::start(&server, |t| t.max_decoding_message_size = limit).await;
    let addr = node.local_addr();
    let status = blocking(move || {
        let mut h2 = RawH2::connect(&client, addr);
        h2.grpc_call(1, "/dataspace.v1.Peering/Hello");
        let mut prefix = vec![0u8];
        prefix.extend_from_slice(&(limit as u32 + 1).to_be_bytes());
        h2.frame(DATA, 0, 1, &prefix);
        // The call is answered and ended (trailers-only HEADERS with
        // END_STREAM) although its body never came: it was refused from
        // the prefix. (The code, HPACK-coded here, is read through tonic
        // below.)
        h2.until(|f| f.kind == HEADERS && f.stream == 1 && f.flags & END_STREAM != 0)
            .is_some()
    })
    .await;
    assert!(status, "no answer before the body");
    // Read through tonic: the same refusal, with its message.
    let conn = support::connect(&space.node("caller", "consumer"), &node).await;
    let err = dsnode::wire::pb::peering_client::PeeringClient::new(conn.channel)
        .hello(dsnode::wire::pb::HelloRequest {
            software_version: "x".repeat(limit + 1),
        })
        .await
        .expect_err("over the limit");
    // tonic's code for a message over the limit.
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{}", err.message());
    assert!(
        err.message().contains("message length too large"),
        "{}",
        err.message()
    );
    node.shutdown().await.expect("stop");
}

/// VmRSS of a process, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// Defence: HTTP/2 flow control and a two-message queue per stream. A
/// grantee that opens a fetch of 64 MiB and stops reading after the first
/// chunk costs the serving process a bounded amount of memory (windows
/// and two chunks), not the dataset.
#[tokio::test]
async fn a_client_that_stops_reading_does_not_grow_the_server() {
    use dsnode::wire::pb;
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let consumer = crate::support::consumer_in(&space, "acme", "CN-HE");
    std::fs::write(
        publisher.dir.config(),
        "listen = \"127.0.0.1:0\"\n[transport]\ndrain_deadline = \"2s\"\n",
    )
    .expect("config");
    let mut served = crate::support::Served::start_serving(publisher.dir.root());
    let addr = served.addr;
    let own = support::connect_addr(&publisher, addr).await;
    let content: Vec<u8> = (0..64u8).flat_map(|i| vec![i; 1 << 20]).collect();
    let h =
        crate::support::flows::header("Big", crate::support::flows::POLICY, content.len() as u64);
    let ds = crate::support::flows::publish_via(&own, h, &content)
        .await
        .expect("publish")
        .dataset_id;
    let con_node = support::start(&consumer, |_| {}).await;
    let grant = crate::support::flows::granted(&consumer, &con_node, &ds, addr).await;
    let pid = served.child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss(pid);

    let conn = support::connect_addr(&consumer, addr).await;
    let mut stream = pb::exchange_client::ExchangeClient::new(conn.channel)
        .max_decoding_message_size(2 << 20)
        .fetch(pb::FetchRequest {
            grant_id: grant,
            resume: None,
            ..Default::default()
        })
        .await
        .expect("fetch")
        .into_inner();
    stream.message().await.expect("header");
    stream.message().await.expect("chunk 0");
    // Stop reading; give the server every chance to run ahead.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stalled = rss(pid);
    let growth = stalled.saturating_sub(before);
    assert!(
        growth < 32 << 20,
        "the server grew by {} MiB for a reader that stopped (before {} MiB)",
        growth >> 20,
        before >> 20
    );
    drop(stream);
    served.signal("TERM");
    let _ = served.child.wait();
    con_node.shutdown().await.expect("stop");
}

/// One gRPC call made with the `h2` crate (no gRPC library between: the
/// body's bytes are exactly `message`, and the headers exactly
/// `headers`); returns the answer's `grpc-status` and `grpc-message`.
async fn raw_grpc(
    client: &NodeDir,
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    message: Vec<u8>,
) -> (String, String) {
    let config = support::client_config_with(
        &[&rustls::version::TLS13],
        &client.dir.ca_cert(),
        Some(client),
    );
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("handshake");
    let (mut h2, connection) = h2::client::handshake(tls).await.expect("h2");
    tokio::spawn(connection);
    let mut request = http::Request::post(format!("https://127.0.0.1{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let (response, mut body) = h2
        .send_request(request.body(()).expect("request"), false)
        .expect("send");
    body.send_data(message.into(), true).expect("body");
    let response = response.await.expect("response");
    let (parts, mut stream) = response.into_parts();
    let mut fields = parts.headers;
    if !fields.contains_key("grpc-status") {
        while let Some(data) = stream.data().await {
            let _ = data.expect("data");
        }
        fields = stream
            .trailers()
            .await
            .expect("trailers")
            .expect("trailers");
    }
    let get = |k: &str| {
        fields
            .get(k)
            .map(|v| {
                percent_encoding::percent_decode(v.as_bytes())
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default()
    };
    (get("grpc-status"), get("grpc-message"))
}

/// A gRPC message frame: the compressed flag, the length, the bytes.
fn grpc_frame(compressed: bool, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(compressed)];
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Row 9, defence: compression is not compiled in (tonic without its
/// `gzip`/`zstd` features), so a message flagged compressed is refused
/// from its flag: nothing is inflated, and a decompression bomb costs the
/// node its 5-byte prefix. The bomb here is a real gzip stream of 64 MiB
/// of zeros in 64 KiB: fixed-Huffman blocks of one literal and length-258
/// copies.
#[tokio::test]
async fn threat_09_a_compressed_message_is_refused_before_it_is_inflated() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    let node = support::start(&server, |_| {}).await;
    let (status, message) = raw_grpc(
        &client,
        node.local_addr(),
        "/dataspace.v1.Peering/Hello",
        &[("grpc-encoding", "gzip")],
        grpc_frame(true, &gzip_bomb(64 << 20)),
    )
    .await;
    // UNIMPLEMENTED: the encoding is not supported.
    assert_eq!(status, "12", "{message}");
    assert!(message.contains("gzip"), "{message}");
    node.shutdown().await.expect("stop");
}

/// A gzip member whose deflate data inflates to `size` zero bytes (about
/// 1/1000 of it): one literal 0, then copies of 258 bytes at distance 1,
/// in one fixed-Huffman block.
fn gzip_bomb(size: usize) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        /// `len` bits of `value`, least significant first.
        fn put(&mut self, value: u64, len: u32) {
            self.acc |= value << self.n;
            self.n += len;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// A Huffman code, most significant bit first.
        fn code(&mut self, code: u64, len: u32) {
            let reversed = (0..len).fold(0, |r, i| r | (((code >> i) & 1) << (len - 1 - i)));
            self.put(reversed, len);
        }
    }
    let mut b = Bits {
        out: vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff],
        acc: 0,
        n: 0,
    };
    b.put(1, 1); // BFINAL
    b.put(1, 2); // BTYPE = fixed Huffman
    b.code(0x30, 8); // literal 0
    let copies = (size - 1) / 258;
    for _ in 0..copies {
        b.code(0b1100_0101, 8); // length code 285: 258
        b.code(0, 5); // distance code 0: 1
    }
    let rest = size - 1 - copies * 258;
    for _ in 0..rest {
        b.code(0x30, 8);
    }
    b.code(0, 7); // end of block (256)
    if b.n > 0 {
        b.put(0, 8 - b.n);
    }
    // CRC-32 of the zeros is not computed: the node must refuse before
    // it would ever get that far.
    b.out.extend_from_slice(&[0, 0, 0, 0]);
    b.out.extend_from_slice(&(size as u32).to_le_bytes());
    b.out
}

/// Row 9, defence: prost's recursion limit (100). A HelloRequest carrying
/// an unknown field of 10,000 nested groups (which a decoder must walk to
/// skip) is refused INVALID_ARGUMENT, not walked to the bottom of the
/// stack.
#[tokio::test]
async fn threat_09_deep_nesting_is_refused_as_bad_input() {
    let space = DataSpace::new();
    let server = space.node("server", "publisher");
    let client = space.node("client", "consumer");
    let node = support::start(&server, |_| {}).await;
    let depth = 10_000;
    let mut nested = Vec::new();
    for _ in 0..depth {
        nested.extend_from_slice(&[0x9b, 0x06]); // field 99, start group
    }
    for _ in 0..depth {
        nested.extend_from_slice(&[0x9c, 0x06]); // field 99, end group
    }
    let (status, message) = raw_grpc(
        &client,
        node.local_addr(),
        "/dataspace.v1.Peering/Hello",
        &[],
        grpc_frame(false, &nested),
    )
    .await;
    assert_eq!(status, "3", "{message}");
    assert!(message.contains("recursion limit"), "{message}");
    still_serves(&space, &node).await;
    node.shutdown().await.expect("stop");
}

/// A policy with no limit on fetches (each of the 600 streams below
/// opens a transfer of its own).
const UNLIMITED: &str = r#"classification = "general"

[[permission]]
actions = ["read"]
purpose = ["research"]
roles = ["consumer"]
regions = ["CN-HE"]
grant_ttl = "1d"
"#;

/// Issue 20, finding 6. Defences: `[limits] max_fetch_streams_per_peer`
/// and `fetch_buffer_mib` (`exchange::limits::PeerLimits::open_stream`,
/// taken in `Publisher::serve` before anything is recorded). One grantee
/// with 600 concurrent fetch streams that it did not read drove the
/// publisher to 3.78 GB; now 16 of them are served (each holding at most
/// its read-ahead and queue, reserved from a node-wide budget), the other
/// 584 are refused at once naming the limit, and another grantee still
/// fetches.
#[tokio::test]
async fn six_hundred_fetch_streams_of_one_grantee_hold_a_bounded_share_of_memory() {
    use dsnode::wire::pb;
    let space = DataSpace::new();
    let publisher = space.node("city-transport", "publisher");
    let consumer = crate::support::consumer_in(&space, "acme", "CN-HE");
    let other = crate::support::consumer_in(&space, "beta", "CN-HE");
    std::fs::write(
        publisher.dir.config(),
        "listen = \"127.0.0.1:0\"\n[transport]\ndrain_deadline = \"2s\"\n\
         [limits]\npeer_write_rate = 10000\npeer_write_burst = 10000\n",
    )
    .expect("config");
    let served = crate::support::Served::start_serving(publisher.dir.root());
    let addr = served.addr;
    let own = support::connect_addr(&publisher, addr).await;
    let content: Vec<u8> = (0..32u8).flat_map(|i| vec![i; 1 << 20]).collect();
    let h = crate::support::flows::header("Big", UNLIMITED, content.len() as u64);
    let ds = crate::support::flows::publish_via(&own, h, &content)
        .await
        .expect("publish")
        .dataset_id;
    let con_node = support::start(&consumer, |_| {}).await;
    let grant = crate::support::flows::granted(&consumer, &con_node, &ds, addr).await;
    let pid = served.child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss(pid);

    // 600 streams over 10 connections, none of them read.
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(support::connect_addr(&consumer, addr).await);
    }
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..600 {
        let channel = conns[i % conns.len()].channel.clone();
        let grant = grant.clone();
        calls.spawn(async move {
            // Answered (response headers, which flow control does not
            // hold back) once the publisher took the stream; never read.
            pb::exchange_client::ExchangeClient::new(channel)
                .max_decoding_message_size(2 << 20)
                .fetch(pb::FetchRequest {
                    grant_id: grant,
                    ..Default::default()
                })
                .await
                .map(tonic::Response::into_inner)
        });
    }
    let (mut open, mut refused) = (Vec::new(), 0);
    while let Some(call) = calls.join_next().await {
        match call.expect("join") {
            Ok(stream) => open.push(stream),
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{}", e.message());
                assert!(
                    e.message().contains("max_fetch_streams_per_peer"),
                    "{}",
                    e.message()
                );
                refused += 1;
            }
        }
    }
    assert_eq!((open.len(), refused), (16, 584));
    let mut peak = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(rss(pid));
    }
    let growth = peak.saturating_sub(before);
    assert!(
        growth < 160 << 20,
        "600 streams grew the publisher by {} MiB",
        growth >> 20
    );

    // Another grantee is not crowded out.
    let other_node = support::start(&other, |_| {}).await;
    let other_grant = crate::support::flows::granted(&other, &other_node, &ds, addr).await;
    let mut stream =
        pb::exchange_client::ExchangeClient::new(support::connect_addr(&other, addr).await.channel)
            .max_decoding_message_size(2 << 20)
            .fetch(pb::FetchRequest {
                grant_id: other_grant,
                ..Default::default()
            })
            .await
            .expect("another grantee's fetch")
            .into_inner();
    let mut chunks = 0;
    while stream.message().await.expect("chunk").is_some() {
        chunks += 1;
    }
    assert_eq!(chunks, 33, "header and 32 chunks");

    drop(open);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss(pid);
    eprintln!(
        "publisher RSS: {} MiB before, {} MiB peak with 600 streams asked (16 served), {} MiB after they ended",
        before >> 20,
        peak >> 20,
        after >> 20
    );
    served.terminate_cleanly();
    for n in [con_node, other_node] {
        n.shutdown().await.expect("stop");
    }
}
