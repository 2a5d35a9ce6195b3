//! Auditor queries: filters over the entry indices, paginated, examining
//! a bounded number of entries per page so that no query scans the whole
//! log.

use super::entry::{Entry, EntryKind};
use super::store::{BLOCK_BITS, BLOCK_LEN, Block, IndexKey, LedgerStore};
use super::{LedgerError, MAX_PAGE};
use crate::identity::NodeId;

/// Entries a query may examine per page beyond those it returns.
const EXAMINE_PER_PAGE: usize = 10_000;
/// Blocks a query may read per page.
const BLOCKS_PER_PAGE: usize = 1_000;

/// Filters of an auditor query; all optional, all must match.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Entries naming this dataset.
    pub dataset: Option<String>,
    /// Entries naming this node.
    pub party: Option<NodeId>,
    /// Entries of this kind.
    pub kind: Option<EntryKind>,
    /// Entries naming this grant.
    pub grant: Option<String>,
    /// Entries at or after this time (ms).
    pub since_ms: Option<i64>,
    /// Entries before this time (ms).
    pub until_ms: Option<i64>,
}

impl Query {
    /// Whether `e` meets every filter.
    pub fn matches(&self, e: &Entry) -> bool {
        self.dataset
            .as_ref()
            .is_none_or(|d| e.draft.dataset.as_ref() == Some(d))
            && self.party.as_ref().is_none_or(|p| e.names(p))
            && self.kind.is_none_or(|k| e.draft.kind == k)
            && self
                .grant
                .as_ref()
                .is_none_or(|g| e.draft.grant.as_ref() == Some(g))
            && self.since_ms.is_none_or(|t| e.time_ms >= t)
            && self.until_ms.is_none_or(|t| e.time_ms < t)
    }

    /// The index to scan: the most selective one given.
    fn plan(&self) -> Plan {
        if let Some(g) = &self.grant {
            Plan::Index(IndexKey::Grant(g.clone()))
        } else if let Some(d) = &self.dataset {
            Plan::Index(IndexKey::Dataset(d.clone()))
        } else if let Some(p) = &self.party {
            Plan::Index(IndexKey::Party(p.to_string()))
        } else if let Some(k) = self.kind {
            Plan::Index(IndexKey::Kind(k.code()))
        } else if self.since_ms.is_some() || self.until_ms.is_some() {
            Plan::Time
        } else {
            Plan::All
        }
    }
}

enum Plan {
    Index(IndexKey),
    Time,
    All,
}

impl Plan {
    fn tag(&self) -> u8 {
        match self {
            Plan::Index(IndexKey::Dataset(_)) => b'd',
            Plan::Index(IndexKey::Party(_)) => b'p',
            Plan::Index(IndexKey::Kind(_)) => b'k',
            Plan::Index(IndexKey::Grant(_)) => b'g',
            Plan::Time => b't',
            Plan::All => b'a',
        }
    }
}

/// One page of query results, all below the queried tree size.
#[derive(Clone, Debug)]
pub struct Page {
    /// (index, entry bytes).
    pub entries: Vec<(u64, Vec<u8>)>,
    /// Opaque token for the next page, if there may be more.
    pub next: Option<Vec<u8>>,
}

/// Where a scan resumes: an entry index, and for time-ordered scans the
/// time and first index of its run (the time index's key). Token: plan tag
/// ‖ [time ‖ run first] ‖ index.
struct Position {
    time: i64,
    run: u64,
    index: u64,
}

fn parse_token(plan: &Plan, token: &[u8], since: i64) -> Result<Position, LedgerError> {
    let bad = || LedgerError::Range("invalid page token: it does not belong to this query".into());
    if token.first() != Some(&plan.tag()) {
        return Err(bad());
    }
    let word = |at: usize| -> Result<[u8; 8], LedgerError> {
        token
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)
    };
    match (plan, token.len()) {
        (Plan::Time, 25) => Ok(Position {
            time: i64::from_be_bytes(word(1)?),
            run: u64::from_be_bytes(word(9)?),
            index: u64::from_be_bytes(word(17)?),
        }),
        (Plan::Index(_) | Plan::All, 9) => Ok(Position {
            time: since,
            run: 0,
            index: u64::from_be_bytes(word(1)?),
        }),
        _ => Err(bad()),
    }
}

fn token(plan: &Plan, pos: &Position) -> Vec<u8> {
    let mut t = vec![plan.tag()];
    if matches!(plan, Plan::Time) {
        t.extend_from_slice(&pos.time.to_be_bytes());
        t.extend_from_slice(&pos.run.to_be_bytes());
    }
    t.extend_from_slice(&pos.index.to_be_bytes());
    t
}

/// Reads entries, keeping the last decoded block.
struct BlockReader<'a> {
    store: &'a dyn LedgerStore,
    cached: Option<(u64, Block)>,
    loads: usize,
}

impl BlockReader<'_> {
    fn entry(&mut self, index: u64) -> Result<Option<Vec<u8>>, LedgerError> {
        let b = index >> BLOCK_BITS;
        if self.cached.as_ref().is_none_or(|(cb, _)| *cb != b) {
            let Some(block) = self.store.block(b)? else {
                return Ok(None);
            };
            self.loads += 1;
            self.cached = Some((b, block));
        }
        let offset = (index & (BLOCK_LEN - 1)) as usize;
        Ok(self
            .cached
            .as_ref()
            .and_then(|(_, block)| block.entries.get(offset).cloned()))
    }
}

/// A candidate: entry index, and for time scans its run's time and first
/// index.
type Candidate = (u64, i64, u64);

/// Candidate entries in scan order from `pos`, at most about `chunk` of
/// them, and whether the index has nothing after them.
fn candidates(
    store: &dyn LedgerStore,
    plan: &Plan,
    pos: &Position,
    chunk: usize,
) -> Result<(Vec<Candidate>, bool), LedgerError> {
    let mut out = Vec::new();
    let exhausted;
    match plan {
        Plan::Index(key) => {
            let postings = store.scan_postings(key, pos.index >> BLOCK_BITS, chunk / 8 + 1)?;
            exhausted = postings.len() < chunk / 8 + 1;
            for (block, mut bits) in postings {
                let Some(base) = block.checked_mul(BLOCK_LEN) else {
                    break;
                };
                while bits != 0 {
                    let index = base + u64::from(bits.trailing_zeros());
                    bits &= bits - 1;
                    if index >= pos.index {
                        out.push((index, 0, 0));
                    }
                }
            }
        }
        Plan::All => {
            let end = pos.index.saturating_add(chunk as u64);
            out.extend((pos.index..end).map(|i| (i, 0, 0)));
            exhausted = false;
        }
        Plan::Time => {
            let runs = store.scan_time((pos.time, pos.run), chunk / 64 + 1)?;
            exhausted = runs.len() < chunk / 64 + 1;
            for (time, first, last) in runs {
                let resumed = time == pos.time && first == pos.run;
                let start = if resumed { first.max(pos.index) } else { first };
                out.extend((start..=last).map(|i| (i, time, first)));
            }
        }
    }
    Ok((out, exhausted))
}

/// One page of entries matching `query`, below `size`, in index order
/// (time order for time-only queries).
pub fn run(
    store: &dyn LedgerStore,
    query: &Query,
    page_token: Option<&[u8]>,
    limit: usize,
    size: u64,
) -> Result<Page, LedgerError> {
    let limit = limit.clamp(1, MAX_PAGE);
    let plan = query.plan();
    let since = query.since_ms.unwrap_or(i64::MIN);
    let mut pos = match page_token {
        Some(t) => parse_token(&plan, t, since)?,
        None => Position {
            time: since,
            run: 0,
            index: 0,
        },
    };
    let mut reader = BlockReader {
        store,
        cached: None,
        loads: 0,
    };
    let mut entries = Vec::new();
    let mut examined = 0usize;
    loop {
        let (batch, exhausted) = candidates(store, &plan, &pos, 512)?;
        if batch.is_empty() {
            return Ok(Page {
                entries,
                next: None,
            });
        }
        for (index, time, run) in batch {
            let time_ordered = matches!(plan, Plan::Time);
            if time_ordered && query.until_ms.is_some_and(|u| time >= u) {
                return Ok(Page {
                    entries,
                    next: None,
                });
            }
            if !time_ordered && index >= size {
                return Ok(Page {
                    entries,
                    next: None,
                });
            }
            if entries.len() >= limit
                || examined >= EXAMINE_PER_PAGE
                || reader.loads >= BLOCKS_PER_PAGE
            {
                // Resume after the last examined entry: the token names no
                // entry the caller has not been shown.
                return Ok(Page {
                    entries,
                    next: Some(token(&plan, &pos)),
                });
            }
            examined += 1;
            if index < size
                && let Some(bytes) = reader.entry(index)?
                && query.matches(&Entry::decode(&bytes)?)
            {
                entries.push((index, bytes));
            }
            pos = Position {
                time,
                run,
                index: index.saturating_add(1),
            };
        }
        if exhausted {
            return Ok(Page {
                entries,
                next: None,
            });
        }
    }
}
