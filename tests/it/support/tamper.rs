//! Editing a stopped node's store behind its back, as an attacker (or a
//! disk, or a careless operator) with write access would: entries
//! rewritten or deleted in their blocks, a whole history re-signed, a
//! store copied to be rolled back to later.

use std::path::Path;
use std::time::Duration;

use dsnode::runtime::config::DataDir;

/// Rewrites entry `index` of the (closed) ledger in `dir` behind the
/// ledger's back, as an attacker with write access to the store would:
/// `change` edits the entry; with `fix_leaf` the block's stored leaf hash
/// is recomputed too, so only the deeper checks can catch it.
pub(crate) fn rewrite_entry(
    dir: &Path,
    index: u64,
    fix_leaf: bool,
    change: impl FnOnce(&mut dsnode::ledger::entry::Entry),
) {
    use dsnode::ledger::entry::Entry;
    edit_block(dir, index, |block, k| {
        let mut entry = Entry::decode(&block.entries[k]).expect("entry");
        change(&mut entry);
        block.entries[k] = entry.encode().expect("encode");
        if fix_leaf {
            block.leaves[k] = dsnode::ledger::merkle::leaf_hash(&block.entries[k]);
        }
    });
}

/// Edits, behind the ledger's back, the stored block holding entry
/// `index` of the (closed) ledger in `dir`; `edit` gets the block and the
/// entry's offset in it.
fn edit_block(dir: &Path, index: u64, edit: impl FnOnce(&mut dsnode::ledger::store::Block, usize)) {
    use dsnode::ledger::store::{BLOCK_BITS, LedgerStore, SledStore};
    let store = open_raw(dir);
    let b = index >> BLOCK_BITS;
    let mut block = store.block(b).expect("read").expect("block");
    edit(&mut block, (index - (b << BLOCK_BITS)) as usize);
    let (entries_key, leaves_key) = SledStore::block_keys(b);
    store
        .dangerous_overwrite(&entries_key, &block.encode_entries())
        .expect("overwrite");
    store
        .dangerous_overwrite(&leaves_key, &block.encode_leaves())
        .expect("overwrite");
}

/// Rewrites entry `index` as [`rewrite_entry`] does with its leaf hash,
/// and then every stored subtree hash above it, so the stored tree is
/// consistent again (only the signed checkpoints, and the verified mark,
/// still hold the old root).
pub(crate) fn rewrite_entry_and_tree(
    dir: &Path,
    index: u64,
    change: impl FnOnce(&mut dsnode::ledger::entry::Entry),
) {
    use dsnode::ledger::store::{LedgerStore, STORED_LEVEL, SledStore};
    rewrite_entry(dir, index, true, change);
    let store = open_raw(dir);
    let mut frontier = dsnode::ledger::merkle::Frontier::default();
    let mut next = 0;
    loop {
        let page = store.blocks(next, 64).expect("blocks");
        let Some(&(last, _)) = page.last() else { break };
        for (_, block) in &page {
            for leaf in &block.leaves {
                frontier.push(*leaf, |level, i, hash| {
                    if level >= STORED_LEVEL {
                        store
                            .dangerous_overwrite(&SledStore::subtree_key(level, i), &hash)
                            .expect("overwrite");
                    }
                });
            }
        }
        next = last + 1;
    }
}

/// A record of the (closed) ledger in `dir` (see `Ledger::append_with_record`).
pub(crate) fn read_record(dir: &Path, name: &str) -> Option<Vec<u8>> {
    use dsnode::ledger::store::LedgerStore;
    open_raw(dir).record(name.as_bytes()).expect("read")
}

/// Replaces a record of the (closed) ledger in `dir` behind its back.
pub(crate) fn rewrite_record(dir: &Path, name: &str, value: &[u8]) {
    use dsnode::ledger::store::SledStore;
    open_raw(dir)
        .dangerous_overwrite(&SledStore::record_key(name.as_bytes()), value)
        .expect("overwrite");
}

/// The raw store of a closed ledger (retrying while sled still holds the
/// lock of the handle just closed).
fn open_raw(dir: &Path) -> dsnode::ledger::store::SledStore {
    use dsnode::ledger::store::{SledStore, StoreError};
    (0..200)
        .find_map(|_| match SledStore::open(dir) {
            Ok(s) => Some(s),
            Err(StoreError::Locked { .. }) => {
                std::thread::sleep(Duration::from_millis(20));
                None
            }
            Err(e) => panic!("raw store: {e}"),
        })
        .expect("the store stays locked")
}

/// Deletes entry `index` from its block of the (closed) ledger in `dir`,
/// as an attacker with write access to the store would: the entries after
/// it in the block move up one place.
pub(crate) fn delete_entry(dir: &Path, index: u64) {
    edit_block(dir, index, |block, k| {
        block.entries.remove(k);
        block.leaves.remove(k);
    });
}

/// Opens a closed node's ledger (retrying while sled still holds the lock
/// of the handle just closed).
pub(crate) fn open_ledger(dir: &Path, key: &dsnode::identity::NodeKey) -> dsnode::ledger::Ledger {
    use dsnode::ledger::{Ledger, LedgerError, LedgerOptions};
    for _ in 0..200 {
        match Ledger::open(dir, key.signing_key().clone(), LedgerOptions::default()) {
            Ok((ledger, _)) => return ledger,
            Err(LedgerError::Store(dsnode::ledger::store::StoreError::Locked { .. })) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("open {}: {e}", dir.display()),
        }
    }
    panic!("{} stays locked", dir.display());
}

/// The size of a stopped node's ledger.
pub(crate) async fn ledger_size(dir: &DataDir) -> u64 {
    let key = dsnode::identity::NodeKey::load(&dir.key()).expect("key");
    let ledger = open_ledger(&dir.ledger(), &key);
    let size = ledger.latest().map_or(0, |c| c.checkpoint.size);
    ledger.close().await;
    size
}

/// The test-only history hook: rewrites a stopped node's ledger keeping
/// the entries `keep` accepts (re-appended one by one, so every size has a
/// checkpoint), then other entries up to `size` entries, every checkpoint
/// signed with the node's own key: a node signing a second history (a
/// fork), or one that dropped an entry. Its record of witnesses'
/// cosignatures goes too, as a node hiding that would do.
pub(crate) async fn rewrite_history(
    dir: &DataDir,
    keep: impl Fn(&dsnode::ledger::entry::Entry) -> bool,
    size: u64,
) {
    use dsnode::ledger::entry::{Entry, EntryDraft, EntryKind};
    let key = dsnode::identity::NodeKey::load(&dir.key()).expect("key");
    let old = open_ledger(&dir.ledger(), &key);
    let all = old.entries(0, 1000).expect("entries");
    old.close().await;
    drop(old);
    let rewritten_dir = dir.root().join("ledger.rewritten");
    let rewritten = open_ledger(&rewritten_dir, &key);
    let mut n = 0;
    for (_, bytes) in all {
        let entry = Entry::decode(&bytes).expect("entry");
        if keep(&entry) {
            rewritten.append(entry.draft).await.expect("replay");
            n += 1;
        }
    }
    while n < size {
        let mut draft = EntryDraft::new(EntryKind::NodeStarted);
        draft.detail = format!("rewritten history {n}");
        rewritten.append(draft).await.expect("append");
        n += 1;
    }
    rewritten.close().await;
    drop(rewritten);
    std::fs::remove_dir_all(dir.ledger()).expect("remove");
    std::fs::rename(&rewritten_dir, dir.ledger()).expect("swap");
    std::fs::remove_dir_all(dir.witness()).expect("hide cosignatures");
}

/// Copies the directory `from` (a store, a ledger) to `to`, recursively:
/// a backup to roll a node back to.
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("ls") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
