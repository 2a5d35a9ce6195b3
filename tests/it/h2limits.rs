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
        let len = payload.len() as u32;
        let mut head = [0u8; 9];
        head[..3].copy_from_slice(&len.to_be_bytes()[1..]);
        head[3] = kind;
        head[4] = flags;
        head[5..].copy_from_slice(&stream.to_be_bytes());
        self.tls.write_all(&head).expect("write frame header");
        self.tls.write_all(payload).expect("write frame payload");
        self.tls.flush().expect("flush");
    }

    /// HEADERS with literal, never-indexed HPACK fields (no Huffman).
    fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) {
        let mut block = Vec::new();
        for (name, value) in fields {
            block.push(0x00);
            for s in [name, value] {
                assert!(s.len() < 127);
                block.push(s.len() as u8);
                block.extend_from_slice(s.as_bytes());
            }
        }
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
    std::fs::write(publisher.dir.config(), "listen = \"127.0.0.1:0\"\n").expect("config");
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
