//! The ledger as C2SP `tlog-tiles`: `/checkpoint` and the hash tiles
//! `/tile/<L>/<N>[.p/<W>]`, served read-only on a listener of their own
//! (`[tiles] listen`, off by default), plain HTTP or TLS, so that any
//! transparency-log tool can read and check a node's log.
//!
//! Hash tiles and checkpoints hold hashes and sizes, not entries, so they
//! may be public (docs/ledger.md says what a leaf hash can still confirm
//! to someone who guesses an entry). Entry bundles (`/tile/entries/…`)
//! hold party and dataset ids: they are not served here (404); auditors
//! read entries over the mutual-TLS port (`Ledger.QueryEntries`), each
//! with its inclusion proof.
//!
//! A tile exists for a size only if the node signed a checkpoint of a
//! size it belongs to: a full tile once a checkpointed tree covers it, a
//! partial tile of width `W` only if some checkpointed size `s` has
//! `⌊s / 256^L⌋ = 256·N + W`. Anything else, and any path not in the
//! spec's exact form, is 404; a tile is at most 256 hashes, read from the
//! stored tree, so every request costs bounded work.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ledger::Ledger;

/// Hashes per full tile (tile height 8).
pub const TILE_WIDTH: u64 = 256;
/// The highest tile level that can hold a hash (256^8 leaves is 2^64).
pub const MAX_LEVEL: u8 = 7;
/// Connections served at once, at most.
const MAX_CONNECTIONS: usize = 64;
/// The longest a connection is served.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// A path of the tiles API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TilePath {
    /// `/checkpoint`.
    Checkpoint,
    /// `/tile/<L>/<N>[.p/<W>]`: level, index, width (256: full).
    Tile {
        /// Tile level (0: leaf hashes).
        level: u8,
        /// Tile index at that level.
        index: u64,
        /// Hashes in it: 256 for a full tile, 1–255 for a partial one.
        width: u16,
    },
}

/// Reads a decimal with no sign and no leading zero (but `0` itself).
fn canonical_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

/// Reads `N` as the spec encodes it: 3-digit groups, all but the last
/// prefixed with `x`, no leading all-zero group.
fn tile_index(groups: &[&str]) -> Option<u64> {
    let (last, rest) = groups.split_last()?;
    if groups.len() > 7 || rest.first().is_some_and(|g| *g == "x000") {
        return None;
    }
    let mut n: u64 = 0;
    for (i, g) in groups.iter().enumerate() {
        let digits = if i + 1 < groups.len() {
            g.strip_prefix('x')?
        } else {
            last
        };
        if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n = n.checked_mul(1000)?.checked_add(digits.parse().ok()?)?;
    }
    Some(n)
}

/// The C2SP path of tile `level`/`index` (width < 256: partial).
pub fn tile_path(level: u8, index: u64, width: u16) -> String {
    let digits = index.to_string();
    let pad = (3 - digits.len() % 3) % 3;
    let padded = format!("{}{digits}", "0".repeat(pad));
    let groups: Vec<&str> = padded
        .as_bytes()
        .chunks(3)
        .map(|c| std::str::from_utf8(c).unwrap_or("000"))
        .collect();
    let mut n = String::new();
    for (i, g) in groups.iter().enumerate() {
        if i + 1 < groups.len() {
            n.push('x');
            n.push_str(g);
            n.push('/');
        } else {
            n.push_str(g);
        }
    }
    if u64::from(width) < TILE_WIDTH {
        format!("/tile/{level}/{n}.p/{width}")
    } else {
        format!("/tile/{level}/{n}")
    }
}

/// Parses a request path; `None` for anything the spec does not name (or
/// names, like entry bundles, but this listener does not serve).
pub fn parse_path(path: &str) -> Option<TilePath> {
    if path == "/checkpoint" {
        return Some(TilePath::Checkpoint);
    }
    let rest = path.strip_prefix("/tile/")?;
    let (level, rest) = rest.split_once('/')?;
    // Level 0–63 in the spec; only 0–7 can hold a hash of a u64-sized
    // tree. `entries` is not a number: entry bundles are not served.
    let level = u8::try_from(canonical_decimal(level)?).ok()?;
    if level > 63 {
        return None;
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let (groups, width): (Vec<&str>, u16) = match segments.as_slice() {
        [head @ .., last, w] if last.ends_with(".p") => {
            let w = u16::try_from(canonical_decimal(w)?).ok()?;
            if !(1..=255).contains(&w) {
                return None;
            }
            let mut g = head.to_vec();
            g.push(last.strip_suffix(".p")?);
            (g, w)
        }
        all => (all.to_vec(), 256),
    };
    Some(TilePath::Tile {
        level,
        index: tile_index(&groups)?,
        width,
    })
}

/// What the listener answers to a path: status, content type, cache
/// policy and body.
fn answer(ledger: &Ledger, path: &str) -> (StatusCode, &'static str, &'static str, Bytes) {
    let not_found = (
        StatusCode::NOT_FOUND,
        "text/plain; charset=utf-8",
        "no-store",
        Bytes::from_static(b"not found\n"),
    );
    match parse_path(path) {
        None => not_found,
        Some(TilePath::Checkpoint) => match ledger.latest() {
            None => not_found,
            Some(cp) => (
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "no-cache",
                Bytes::from(cp.note.clone().into_bytes()),
            ),
        },
        Some(TilePath::Tile {
            level,
            index,
            width,
        }) => match ledger.tile(level, index, width) {
            Ok(Some(hashes)) => (
                StatusCode::OK,
                "application/octet-stream",
                // A tile's bytes never change once it exists.
                "public, max-age=31536000, immutable",
                Bytes::from(hashes.concat()),
            ),
            Ok(None) => not_found,
            Err(e) => {
                tracing::warn!(path, error = %e, "a tile could not be read");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    "no-store",
                    Bytes::from_static(b"the tile could not be read\n"),
                )
            }
        },
    }
}

fn respond<B>(ledger: &Ledger, req: &Request<B>) -> Response<http_body_util::Full<Bytes>> {
    let (status, kind, cache, body) = if req.method() == Method::GET || req.method() == Method::HEAD
    {
        answer(ledger, req.uri().path())
    } else {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "no-store",
            Bytes::from_static(b"GET or HEAD only\n"),
        )
    };
    let len = body.len();
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        body
    };
    let mut r = Response::new(http_body_util::Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    // Public hashes: any page may read them (as static tile hosts do).
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// Serves the tiles of `ledger` on `listener` (over TLS with `tls`) until
/// `stop`.
pub async fn serve(
    listener: TcpListener,
    ledger: Ledger,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req| {
        let ledger = ledger.clone();
        async move {
            // Reading a tile touches the store: off the runtime.
            let r = tokio::task::spawn_blocking(move || respond(&ledger, &req)).await;
            Ok::<_, Infallible>(r.unwrap_or_else(|_| {
                let mut r = Response::new(http_body_util::Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                r
            }))
        }
    });
    let limits = crate::runtime::http::Limits {
        max_connections: MAX_CONNECTIONS,
        header_timeout: Duration::from_secs(10),
        max_buf_size: 16 * 1024,
        lifetime: CONNECTION_LIFETIME,
        keep_alive: true,
    };
    crate::runtime::http::serve(listener, tls, limits, service, stop, "tiles").await;
}

/// The address a tiles listener is bound to, for logs.
pub fn describe(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}/", if tls { "https" } else { "http" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_exactly_as_the_spec_writes_them() {
        let tile = |level, index, width| {
            Some(TilePath::Tile {
                level,
                index,
                width,
            })
        };
        assert_eq!(parse_path("/checkpoint"), Some(TilePath::Checkpoint));
        assert_eq!(parse_path("/tile/0/000"), tile(0, 0, 256));
        assert_eq!(parse_path("/tile/0/x001/234"), tile(0, 1234, 256));
        assert_eq!(
            parse_path("/tile/1/x001/x234/067.p/8"),
            tile(1, 1_234_067, 8)
        );
        assert_eq!(parse_path("/tile/0/005.p/255"), tile(0, 5, 255));
        for bad in [
            "/checkpoint/",
            "/tile/0/0",
            "/tile/0/0000",
            "/tile/0/x000/001",
            "/tile/00/000",
            "/tile/-1/000",
            "/tile/64/000",
            "/tile/0/001/234",
            "/tile/0/x01/234",
            "/tile/0/000.p/0",
            "/tile/0/000.p/256",
            "/tile/0/000.p/08",
            "/tile/0/000.p",
            "/tile/0/000.p/",
            "/tile/entries/000",
            "/tile/0/../checkpoint",
            "/tile/0/x999/x999/x999/x999/x999/x999/999",
            "/tile/0/x999/x999/x999/x999/x999/x999/x999/999",
            "/tile/99999999999999999999999/000",
            "/tile/0/%30%30%30",
            "",
            "/",
        ] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn tile_paths_round_trip() {
        for (level, index, width) in [
            (0u8, 0u64, 256u16),
            (0, 5, 17),
            (1, 1234, 256),
            (2, 1_234_067, 1),
            (7, 999_999_999, 255),
            (0, u64::MAX / 1000, 256),
        ] {
            let p = tile_path(level, index, width);
            assert_eq!(
                parse_path(&p),
                Some(TilePath::Tile {
                    level,
                    index,
                    width
                }),
                "{p}"
            );
        }
        assert_eq!(tile_path(0, 1234, 256), "/tile/0/x001/234");
        assert_eq!(tile_path(1, 67, 5), "/tile/1/067.p/5");
    }
}
