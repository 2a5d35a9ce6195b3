//! What one certified peer may cost this node (`[limits]`), so that it
//! cannot degrade the node for the others:
//!
//! - [`PeerLimits::admit_write`]: a token bucket per peer for the calls
//!   that write to the ledger. Without it one consumer, with no grant at
//!   all, grew a publisher's ledger by 2,146 refusals a second.
//! - [`PeerLimits::denial`]: identical refusals from one peer within a
//!   window are recorded once, and the repeats as one more entry with
//!   their count ([`PeerLimits::flush_denials`]), so the ledger still
//!   tells the truth at a bounded cost. Refusals that are not identical
//!   (each with another purpose) are recorded at a lower rate of their
//!   own; past it the call is refused by the limit, undecided.
//! - The cap on live grants per grantee is the grant book's
//!   ([`super::book::GrantBook::reserve_live`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::digest::Hash;
use crate::identity::NodeId;
use crate::ledger::entry::EntryDraft;
use crate::ledger::{Ledger, LedgerError};
use crate::runtime::config::LimitsConfig;

/// Peers (write buckets) or refusal windows kept at most; past it the
/// oldest idle ones are dropped (a dropped bucket was full anyway, a
/// dropped window had no repeats).
const MAX_TRACKED: usize = 100_000;

/// A call refused by a per-peer limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Limited {
    /// Which limit (a metrics label).
    pub limit: &'static str,
    /// What the limit is, for the caller.
    pub message: String,
    /// When a retry may succeed, if the limit is a rate.
    pub retry_after: Option<Duration>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Where identical refusals are being counted.
struct Window {
    /// When the first refusal of the window was recorded.
    opened: Instant,
    opened_at: time::OffsetDateTime,
    /// Its entry.
    index: u64,
    /// Refusals since, not recorded yet.
    repeats: u64,
    /// The entry the repeats will be recorded as (detail without count).
    draft: EntryDraft,
}

/// What to do with a refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum DenialRecord {
    /// Record it now (the first of its window), then call
    /// [`PeerLimits::denial_recorded`] with its index.
    Now,
    /// Counted in the open window of an identical refusal: record nothing
    /// now.
    Counted,
    /// The peer has had too many refusals recorded lately (`[limits]
    /// peer_denial_rate`): answer the limit, not the refusal, and record
    /// nothing.
    Limited(Limited),
}

/// Per-peer limits of one node.
pub struct PeerLimits {
    config: LimitsConfig,
    own: NodeId,
    writes: Mutex<HashMap<NodeId, Bucket>>,
    /// Refusals recorded, by peer (a bucket of their own).
    recorded: Mutex<HashMap<NodeId, Bucket>>,
    denials: Mutex<HashMap<Hash, Window>>,
    /// Fetch streams open, by peer.
    streams: Arc<Mutex<HashMap<NodeId, usize>>>,
    /// KiB of chunks fetch streams may hold, node-wide.
    buffer: Arc<tokio::sync::Semaphore>,
}

/// A fetch stream's place: counted against its peer's streams, with the
/// memory it may hold reserved; both given back when dropped.
pub struct StreamSlot {
    streams: Arc<Mutex<HashMap<NodeId, usize>>>,
    peer: Option<NodeId>,
    _reserved: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(peer) = &self.peer {
            let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = streams.get_mut(peer) {
                *n -= 1;
                if *n == 0 {
                    streams.remove(peer);
                }
            }
        }
    }
}

impl PeerLimits {
    /// Limits as `config` sets them; `own` (this node) is never limited.
    pub fn new(config: LimitsConfig, own: NodeId) -> Self {
        Self {
            config,
            own,
            writes: Mutex::default(),
            recorded: Mutex::default(),
            denials: Mutex::default(),
            streams: Arc::default(),
            buffer: Arc::new(tokio::sync::Semaphore::new(
                config.fetch_buffer_mib as usize * 1024,
            )),
        }
    }

    /// A place for a fetch stream of `who` that may hold `bytes` of chunks
    /// at once, or a refusal naming the limit: `who` has
    /// `max_fetch_streams_per_peer` open, or the node's `fetch_buffer_mib`
    /// is taken by other streams. This node's own streams are not limited.
    pub fn open_stream(&self, who: &NodeId, bytes: usize) -> Result<StreamSlot, Limited> {
        if *who == self.own {
            return Ok(StreamSlot {
                streams: self.streams.clone(),
                peer: None,
                _reserved: None,
            });
        }
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        let reserved = self.buffer.clone().try_acquire_many_owned(kib).map_err(|_| Limited {
            limit: "fetch_buffer",
            message: format!(
                "this node's fetch buffer ({} MiB, [limits] fetch_buffer_mib) is taken by other transfers; retry later",
                self.config.fetch_buffer_mib
            ),
            retry_after: Some(Duration::from_secs(1)),
        })?;
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let open = streams.entry(who.clone()).or_default();
        if *open >= self.config.max_fetch_streams_per_peer {
            return Err(Limited {
                limit: "fetch_streams",
                message: format!(
                    "{who} already has {open} fetch streams open to this node, its limit ([limits] max_fetch_streams_per_peer); let some finish"
                ),
                retry_after: None,
            });
        }
        *open += 1;
        Ok(StreamSlot {
            streams: self.streams.clone(),
            peer: Some(who.clone()),
            _reserved: Some(reserved),
        })
    }

    /// The limits in force.
    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// Takes one token from `who`'s bucket for a call that writes to the
    /// ledger, or says when one will be there.
    pub fn admit_write(&self, who: &NodeId, now: Instant) -> Result<(), Limited> {
        if *who == self.own {
            return Ok(());
        }
        take(
            &self.writes,
            who,
            self.config.peer_write_rate,
            self.config.peer_write_burst,
            now,
        )
        .map_err(|wait| Limited {
            limit: "peer_writes",
            message: format!(
                "too many calls that write to this node's ledger from {who}: at most {} a second, {} at once ([limits] peer_write_rate, peer_write_burst); retry in {} ms",
                self.config.peer_write_rate,
                self.config.peer_write_burst,
                wait.as_millis().max(1)
            ),
            retry_after: Some(wait),
        })
    }

    /// Whether a refusal of `who` (`key`: a hash of peer, dataset,
    /// purpose, actions and reasons) is recorded now, counted in the open
    /// window of an identical one, or refused by `who`'s rate of recorded
    /// refusals. `draft` is the entry it would be recorded as. A window
    /// that has ended is closed first: its repeats are returned, as an
    /// entry to record before this one.
    pub fn denial(
        &self,
        who: &NodeId,
        key: Hash,
        draft: &EntryDraft,
        now: Instant,
        now_at: time::OffsetDateTime,
    ) -> (DenialRecord, Option<EntryDraft>) {
        let admitted = || -> Result<(), Limited> {
            if *who == self.own {
                return Ok(());
            }
            take(
                &self.recorded,
                who,
                self.config.peer_denial_rate,
                self.config.peer_denial_burst,
                now,
            )
            .map_err(|wait| Limited {
                limit: "peer_denials",
                message: format!(
                    "too many refused requests from {who}: at most {} a second are decided, {} at once, beyond identical repeats ([limits] peer_denial_rate, peer_denial_burst); retry in {} ms",
                    self.config.peer_denial_rate,
                    self.config.peer_denial_burst,
                    wait.as_millis().max(1)
                ),
                retry_after: Some(wait),
            })
        };
        if self.config.denial_window.is_zero() {
            return match admitted() {
                Ok(()) => (DenialRecord::Now, None),
                Err(l) => (DenialRecord::Limited(l), None),
            };
        }
        let mut denials = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        let mut closed = None;
        if let Some(w) = denials.get_mut(&key) {
            if now.saturating_duration_since(w.opened) < self.config.denial_window {
                w.repeats += 1;
                return (DenialRecord::Counted, None);
            }
            closed = denials.remove(&key).and_then(|w| repeats_entry(&w, now_at));
        }
        if let Err(l) = admitted() {
            return (DenialRecord::Limited(l), closed);
        }
        if denials.len() >= MAX_TRACKED {
            // Too many distinct refusals to track: record each.
            return (DenialRecord::Now, closed);
        }
        denials.insert(
            key,
            Window {
                opened: now,
                opened_at: now_at,
                index: u64::MAX,
                repeats: 0,
                draft: draft.clone(),
            },
        );
        (DenialRecord::Now, closed)
    }

    /// Notes the index the first refusal of `key`'s window was recorded at.
    pub fn denial_recorded(&self, key: &Hash, index: u64) {
        let mut denials = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = denials.get_mut(key) {
            w.index = index;
        }
    }

    /// Forgets `key`'s window (its first refusal could not be recorded).
    pub fn denial_failed(&self, key: &Hash) {
        self.denials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Records the repeats of every window that has ended (every window,
    /// if `all`: at a clean stop), one entry per window with repeats.
    /// Returns how many refusals those entries stand for.
    pub async fn flush_denials(
        &self,
        ledger: &Ledger,
        now: Instant,
        now_at: time::OffsetDateTime,
        all: bool,
    ) -> Result<u64, LedgerError> {
        let drafts: Vec<(EntryDraft, u64)> = {
            let mut denials = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
            let window = self.config.denial_window;
            let ended: Vec<Hash> = denials
                .iter()
                .filter(|(_, w)| all || now.saturating_duration_since(w.opened) >= window)
                .map(|(k, _)| *k)
                .collect();
            ended
                .iter()
                .filter_map(|k| denials.remove(k))
                .filter_map(|w| repeats_entry(&w, now_at).map(|d| (d, w.repeats)))
                .collect()
        };
        let mut recorded = 0;
        for (draft, repeats) in drafts {
            ledger.append(draft).await?;
            recorded += repeats;
        }
        Ok(recorded)
    }
}

/// The entry recording a window's repeats, if it had any.
fn repeats_entry(w: &Window, until: time::OffsetDateTime) -> Option<EntryDraft> {
    if w.repeats == 0 {
        return None;
    }
    let mut draft = w.draft.clone();
    let first = if w.index == u64::MAX {
        String::new()
    } else {
        format!(" as entry {}", w.index)
    };
    draft.detail = format!(
        "the same refusal{first} {} more time(s) from {} to {}: {}",
        w.repeats,
        crate::exchange::grant::time_text(unix_ms(w.opened_at)),
        crate::exchange::grant::time_text(unix_ms(until)),
        w.draft.detail
    );
    Some(draft)
}

fn unix_ms(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Takes a token from `who`'s bucket in `buckets` (`rate` a second, at
/// most `burst`), or says how long until one is there.
fn take(
    buckets: &Mutex<HashMap<NodeId, Bucket>>,
    who: &NodeId,
    rate: u32,
    burst: u32,
    now: Instant,
) -> Result<(), Duration> {
    let (rate, burst) = (f64::from(rate), f64::from(burst));
    let mut buckets = buckets.lock().unwrap_or_else(PoisonError::into_inner);
    if buckets.len() >= MAX_TRACKED && !buckets.contains_key(who) {
        // Buckets idle long enough to be full again cost nothing to drop.
        let full = Duration::from_secs_f64(burst / rate);
        buckets.retain(|_, b| now.saturating_duration_since(b.at) < full);
    }
    let bucket = buckets.entry(who.clone()).or_insert(Bucket {
        tokens: burst,
        at: now,
    });
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
    bucket.at = now;
    if bucket.tokens >= 1.0 {
        bucket.tokens -= 1.0;
        return Ok(());
    }
    Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
}

/// The key identical refusals share.
pub fn denial_key(parts: &[&str]) -> Hash {
    let mut bytes = Vec::new();
    for p in parts {
        bytes.extend_from_slice(&(p.len() as u64).to_be_bytes());
        bytes.extend_from_slice(p.as_bytes());
    }
    crate::digest::sha256(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::entry::EntryKind;

    fn node(n: u8) -> NodeId {
        NodeId::from_public_key(&[n; 32])
    }

    fn limits(window: Duration) -> PeerLimits {
        PeerLimits::new(
            LimitsConfig {
                peer_write_rate: 10,
                peer_write_burst: 3,
                peer_denial_rate: 2,
                peer_denial_burst: 3,
                denial_window: window,
                max_live_grants_per_peer: 5,
                max_fetch_streams_per_peer: 2,
                fetch_buffer_mib: 96,
            },
            node(0),
        )
    }

    #[test]
    fn a_peer_gets_its_burst_then_its_rate_and_others_are_unaffected() {
        let l = limits(Duration::ZERO);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.admit_write(&node(1), t0).expect("within the burst");
        }
        let refused = l.admit_write(&node(1), t0).expect_err("burst spent");
        assert_eq!(refused.limit, "peer_writes");
        assert_eq!(refused.retry_after, Some(Duration::from_millis(100)));
        assert!(
            refused.message.contains("retry in 100 ms"),
            "{}",
            refused.message
        );
        // Another peer, and this node itself, are not held back.
        l.admit_write(&node(2), t0).expect("another peer");
        for _ in 0..10 {
            l.admit_write(&node(0), t0).expect("own node");
        }
        // 100 ms later one token is back, not two.
        let t1 = t0 + Duration::from_millis(100);
        l.admit_write(&node(1), t1).expect("refilled");
        assert!(l.admit_write(&node(1), t1).is_err());
        // A long quiet spell refills the burst, no more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            l.admit_write(&node(1), t2).expect("burst again");
        }
        assert!(l.admit_write(&node(1), t2).is_err());
    }

    #[test]
    fn fetch_streams_are_capped_per_peer_and_their_memory_node_wide() {
        let l = limits(Duration::ZERO);
        let mib = 1 << 20;
        let a1 = l.open_stream(&node(1), 10 * mib).expect("first");
        let a2 = l.open_stream(&node(1), 10 * mib).expect("second");
        let refused = l.open_stream(&node(1), 10 * mib).err().expect("third");
        assert_eq!(refused.limit, "fetch_streams");
        assert!(
            refused.message.contains("already has 2 fetch streams open"),
            "{}",
            refused.message
        );
        // A stream that ends gives its place back.
        drop(a1);
        let a3 = l.open_stream(&node(1), 10 * mib).expect("after one ended");
        // Node-wide: 96 MiB, 20 taken; 80 more do not fit.
        let refused = l
            .open_stream(&node(2), 80 * mib)
            .err()
            .expect("over the buffer");
        assert_eq!(refused.limit, "fetch_buffer");
        let b = l.open_stream(&node(2), 66 * mib).expect("fits");
        drop((a2, a3, b));
        l.open_stream(&node(3), 96 * mib)
            .expect("all of it, once given back");
        // This node's own streams are not limited.
        let own: Vec<_> = (0..5)
            .map(|_| l.open_stream(&node(0), 96 * mib).expect("own"))
            .collect();
        assert_eq!(own.len(), 5);
    }

    #[test]
    fn identical_refusals_in_a_window_are_counted_and_then_recorded_once() {
        let l = limits(Duration::from_secs(60));
        let t0 = Instant::now();
        let at = time::OffsetDateTime::UNIX_EPOCH;
        let mut draft = EntryDraft::new(EntryKind::AccessDenied);
        draft.detail = "purpose marketing: not allowed".into();
        let peer = node(1);
        let key = denial_key(&["peer", "ds", "marketing"]);
        let other = denial_key(&["peer", "ds", "research"]);
        assert_eq!(
            l.denial(&peer, key, &draft, t0, at),
            (DenialRecord::Now, None)
        );
        l.denial_recorded(&key, 41);
        for _ in 0..5 {
            assert_eq!(
                l.denial(&peer, key, &draft, t0 + Duration::from_secs(1), at)
                    .0,
                DenialRecord::Counted
            );
        }
        // Another refusal is its own window.
        assert_eq!(l.denial(&peer, other, &draft, t0, at).0, DenialRecord::Now);
        // After the window, the next identical refusal is recorded, after
        // an entry for the 5 repeats.
        let (record, closed) = l.denial(&peer, key, &draft, t0 + Duration::from_secs(61), at);
        assert_eq!(record, DenialRecord::Now);
        let closed = closed.expect("the repeats");
        assert!(
            closed
                .detail
                .starts_with("the same refusal as entry 41 5 more time(s) from 1970-01-01"),
            "{}",
            closed.detail
        );
        assert!(
            closed.detail.ends_with(": purpose marketing: not allowed"),
            "{}",
            closed.detail
        );
        // A zero window records each, up to the peer's rate of recorded
        // refusals.
        let each = limits(Duration::ZERO);
        for _ in 0..3 {
            assert_eq!(each.denial(&peer, key, &draft, t0, at).0, DenialRecord::Now);
        }
        assert!(matches!(
            each.denial(&peer, key, &draft, t0, at).0,
            DenialRecord::Limited(_)
        ));
    }

    /// Refusals that differ (another purpose each time) are not
    /// coalesced: they are recorded at `peer_denial_rate` (after a burst
    /// of `peer_denial_burst`), and past it refused by the limit, with no
    /// window opened. Identical repeats stay counted; other peers and this
    /// node are not affected.
    #[test]
    fn distinct_refusals_are_recorded_at_their_own_rate() {
        let l = limits(Duration::from_secs(60));
        let t0 = Instant::now();
        let at = time::OffsetDateTime::UNIX_EPOCH;
        let draft = EntryDraft::new(EntryKind::AccessDenied);
        let peer = node(1);
        let key = |i: u32| denial_key(&["peer", "ds", &format!("purpose-{i}")]);
        for i in 0..3 {
            assert_eq!(l.denial(&peer, key(i), &draft, t0, at).0, DenialRecord::Now);
        }
        let DenialRecord::Limited(limited) = l.denial(&peer, key(3), &draft, t0, at).0 else {
            panic!("past the burst");
        };
        assert_eq!(limited.limit, "peer_denials");
        assert!(
            limited.message.contains("peer_denial_rate"),
            "{}",
            limited.message
        );
        assert_eq!(limited.retry_after, Some(Duration::from_millis(500)));
        // No window was opened for the refused one: once a token is back
        // it is recorded, not counted.
        let later = t0 + Duration::from_millis(500);
        assert_eq!(
            l.denial(&peer, key(3), &draft, later, at).0,
            DenialRecord::Now
        );
        // An identical repeat is counted, whatever the rate.
        assert_eq!(
            l.denial(&peer, key(0), &draft, later, at).0,
            DenialRecord::Counted
        );
        // Others are not affected.
        assert_eq!(
            l.denial(&node(2), key(9), &draft, later, at).0,
            DenialRecord::Now
        );
        for i in 10..20 {
            assert_eq!(
                l.denial(&node(0), key(i), &draft, later, at).0,
                DenialRecord::Now
            );
        }
    }
}
