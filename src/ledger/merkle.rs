//! RFC 6962 / RFC 9162 Merkle tree hashing and proofs.
//!
//! Leaf hash `SHA-256(0x00 ‖ entry)`, node hash `SHA-256(0x01 ‖ l ‖ r)`,
//! empty root `SHA-256("")`. Proofs are generated from stored hashes of
//! *complete* subtrees (level `l`, index `i` covers leaves
//! `[i·2^l, (i+1)·2^l)`), so a root, an inclusion proof or a consistency
//! proof costs O(log n) reads. Verification is pure and works offline; it
//! follows RFC 9162 §2.1.3.2 and §2.1.4.2 (and transparency-dev's verifier
//! on the edge cases the vectors pin).

use ring::digest;

use crate::digest::Hash;

/// Why a proof could not be made or did not verify.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    /// A leaf index or size is out of range.
    #[error("{0}")]
    Range(String),
    /// A hash has the wrong length.
    #[error("a hash must be 32 bytes, got {0}")]
    HashLength(usize),
    /// The proof does not verify.
    #[error("proof does not verify: {0}")]
    Mismatch(&'static str),
    /// A stored subtree hash is missing (the store is damaged).
    #[error("stored subtree hash missing at level {level}, index {index}")]
    Missing {
        /// Subtree level.
        level: u8,
        /// Subtree index at that level.
        index: u64,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
}

/// SHA-256(0x00 ‖ data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&[0x00]);
    ctx.update(data);
    to_hash(ctx.finish())
}

/// SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    to_hash(ctx.finish())
}

/// The root of the empty tree, SHA-256("").
pub fn empty_root() -> Hash {
    to_hash(digest::digest(&digest::SHA256, b""))
}

fn to_hash(d: digest::Digest) -> Hash {
    let mut h = [0u8; 32];
    h.copy_from_slice(d.as_ref());
    h
}

/// A hash from bytes of the wire, refusing any length but 32.
pub fn hash_from_slice(bytes: &[u8]) -> Result<Hash, ProofError> {
    bytes
        .try_into()
        .map_err(|_| ProofError::HashLength(bytes.len()))
}

/// The root over `leaves` (leaf hashes) by the RFC's recursive
/// definition: the reference the stored-tree code is tested against.
pub fn root_from_leaves(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(
                &root_from_leaves(&leaves[..k]),
                &root_from_leaves(&leaves[k..]),
            )
        }
    }
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Read access to stored complete-subtree hashes.
pub trait SubtreeSource {
    /// The hash of the complete subtree at `level`, `index`.
    fn subtree(&self, level: u8, index: u64) -> Result<Hash, ProofError>;
}

/// The right edge of a tree being built: the hashes of its maximal
/// complete subtrees ("peaks"), largest first. Appending a leaf yields the
/// complete subtrees it completes, which the store must keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (level, hash), levels strictly decreasing.
    peaks: Vec<(u8, Hash)>,
}

impl Frontier {
    /// The frontier of a tree of `size` leaves, read from stored hashes.
    pub fn load(src: &impl SubtreeSource, size: u64) -> Result<Self, ProofError> {
        let mut peaks = Vec::new();
        let mut start = 0u64;
        for level in (0..64u8).rev() {
            if size & (1 << level) != 0 {
                peaks.push((level, src.subtree(level, start >> level)?));
                start += 1 << level;
            }
        }
        Ok(Self { size, peaks })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf; calls `completed(level, index, hash)` for the leaf
    /// and for every subtree it completes.
    pub fn push(&mut self, leaf: Hash, mut completed: impl FnMut(u8, u64, Hash)) {
        let index = self.size;
        completed(0, index, leaf);
        let mut level = 0u8;
        let mut hash = leaf;
        while let Some(&(top_level, top)) = self.peaks.last() {
            if top_level != level {
                break;
            }
            self.peaks.pop();
            hash = node_hash(&top, &hash);
            level += 1;
            completed(level, index >> level, hash);
        }
        self.peaks.push((level, hash));
        self.size += 1;
    }

    /// The root hash of the tree.
    pub fn root(&self) -> Hash {
        let mut iter = self.peaks.iter().rev();
        let Some(&(_, mut root)) = iter.next() else {
            return empty_root();
        };
        for (_, peak) in iter {
            root = node_hash(peak, &root);
        }
        root
    }
}

/// MTH(D\[lo:hi\]) for a range of the RFC recursion (its left parts are
/// aligned complete subtrees): O(log n) reads.
pub fn range_hash(src: &impl SubtreeSource, lo: u64, hi: u64) -> Result<Hash, ProofError> {
    let n = hi - lo;
    if n.is_power_of_two() && lo.is_multiple_of(n) {
        let level = n.trailing_zeros() as u8;
        return src.subtree(level, lo >> level);
    }
    let k = split(n);
    let left = range_hash(src, lo, lo + k)?;
    let right = range_hash(src, lo + k, hi)?;
    Ok(node_hash(&left, &right))
}

/// The root of the first `size` leaves.
pub fn root(src: &impl SubtreeSource, size: u64) -> Result<Hash, ProofError> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(src, 0, size)
}

/// The audit path of leaf `index` in the tree of `size` leaves
/// (RFC 6962 §2.1.1 PATH), innermost sibling first.
pub fn inclusion_proof(
    src: &impl SubtreeSource,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError> {
    if index >= size {
        return Err(ProofError::Range(format!(
            "leaf index {index} is not below tree size {size}"
        )));
    }
    let mut proof = Vec::new();
    let (mut lo, mut hi) = (0u64, size);
    let mut siblings = Vec::new();
    while hi - lo > 1 {
        let k = split(hi - lo);
        if index < lo + k {
            siblings.push((lo + k, hi));
            hi = lo + k;
        } else {
            siblings.push((lo, lo + k));
            lo += k;
        }
    }
    for (a, b) in siblings.into_iter().rev() {
        proof.push(range_hash(src, a, b)?);
    }
    Ok(proof)
}

/// The consistency proof from the tree of `old` leaves to the tree of
/// `new` leaves (RFC 6962 §2.1.2 PROOF), 0 < old ≤ new.
pub fn consistency_proof(
    src: &impl SubtreeSource,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, ProofError> {
    if old == 0 || old > new {
        return Err(ProofError::Range(format!(
            "a consistency proof needs 0 < old size ≤ new size; got {old} and {new}"
        )));
    }
    // SUBPROOF(m, D[lo:hi], b), unrolled; proof nodes come out outermost
    // first and are reversed at the end.
    let mut outer = Vec::new();
    let (mut m, mut lo, mut hi, mut complete) = (old, 0u64, new, true);
    loop {
        if lo + m == hi {
            if !complete {
                outer.push((lo, hi));
            }
            break;
        }
        let k = split(hi - lo);
        if m <= k {
            outer.push((lo + k, hi));
            hi = lo + k;
        } else {
            outer.push((lo, lo + k));
            lo += k;
            m -= k;
            complete = false;
        }
    }
    outer
        .into_iter()
        .rev()
        .map(|(a, b)| range_hash(src, a, b))
        .collect()
}

fn hashes(proof: &[impl AsRef<[u8]>]) -> Result<Vec<Hash>, ProofError> {
    proof.iter().map(|p| hash_from_slice(p.as_ref())).collect()
}

/// Verifies that `leaf` is at `index` in the tree of `size` leaves whose
/// root is `root` (RFC 9162 §2.1.3.2). Takes byte slices as they come off
/// the wire: any hash that is not 32 bytes is rejected, never padded.
pub fn verify_inclusion(
    leaf: &[u8],
    index: u64,
    size: u64,
    proof: &[impl AsRef<[u8]>],
    root: &[u8],
) -> Result<(), ProofError> {
    let leaf = hash_from_slice(leaf)?;
    let root = hash_from_slice(root)?;
    let proof = hashes(proof)?;
    if index >= size {
        return Err(ProofError::Range(format!(
            "leaf index {index} is not below tree size {size}"
        )));
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = leaf;
    for p in &proof {
        if snode == 0 {
            return Err(ProofError::Mismatch("proof is longer than the path"));
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Mismatch("proof is shorter than the path"));
    }
    if r != root {
        return Err(ProofError::Mismatch(
            "computed root differs from the expected root",
        ));
    }
    Ok(())
}

/// Verifies that the tree of `old` leaves with root `old_root` is a prefix
/// of the tree of `new` leaves with root `new_root` (RFC 9162 §2.1.4.2).
/// A proof from the empty tree is refused (it proves nothing); for equal
/// sizes the proof must be empty and the roots equal (compared as bytes,
/// as transparency-dev's verifier does). Otherwise any hash that is not
/// 32 bytes is rejected.
pub fn verify_consistency(
    old: u64,
    new: u64,
    proof: &[impl AsRef<[u8]>],
    old_root: &[u8],
    new_root: &[u8],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::Range(format!(
            "old size {old} is larger than new size {new}"
        )));
    }
    if old == 0 {
        return Err(ProofError::Range(
            "no consistency proof exists from the empty tree".into(),
        ));
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::Mismatch("equal sizes need an empty proof"));
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::Mismatch("equal sizes with different roots"))
        };
    }
    let old_root = hash_from_slice(old_root)?;
    let new_root = hash_from_slice(new_root)?;
    let proof = hashes(proof)?;
    if proof.is_empty() {
        return Err(ProofError::Mismatch("empty proof"));
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(old_root);
    }
    path.extend_from_slice(&proof);
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return Err(ProofError::Mismatch("proof is longer than the path"));
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Mismatch("proof is shorter than the path"));
    }
    if fr != old_root {
        return Err(ProofError::Mismatch("proof does not lead to the old root"));
    }
    if sr != new_root {
        return Err(ProofError::Mismatch("proof does not lead to the new root"));
    }
    Ok(())
}

/// Complete-subtree hashes kept in memory: for tests, benchmarks and
/// offline verification of small trees.
#[derive(Clone, Debug, Default)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
    frontier: Frontier,
}

impl MemoryTree {
    /// A tree over these leaf hashes.
    pub fn from_leaves(leaves: impl IntoIterator<Item = Hash>) -> Self {
        let mut tree = Self::default();
        for leaf in leaves {
            tree.push(leaf);
        }
        tree
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let levels = &mut self.levels;
        self.frontier.push(leaf, |level, index, hash| {
            let level = usize::from(level);
            if levels.len() <= level {
                levels.resize_with(level + 1, Vec::new);
            }
            debug_assert_eq!(levels[level].len() as u64, index);
            levels[level].push(hash);
        });
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// The current root.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }
}

impl SubtreeSource for MemoryTree {
    fn subtree(&self, level: u8, index: u64) -> Result<Hash, ProofError> {
        self.levels
            .get(usize::from(level))
            .and_then(|l| l.get(usize::try_from(index).ok()?))
            .copied()
            .ok_or(ProofError::Missing { level, index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// Flips one bit of a proof (chosen by `seed`); `None` for an empty one.
    fn flipped(proof: &[Hash], seed: u64) -> Option<Vec<Hash>> {
        if proof.is_empty() {
            return None;
        }
        let mut bad = proof.to_vec();
        let bit = (seed as usize) % (bad.len() * 256);
        bad[bit / 256][(bit % 256) / 8] ^= 1 << (bit % 8);
        Some(bad)
    }

    /// Every n ≤ 300: stored-tree roots equal the recursive reference,
    /// every inclusion and consistency proof verifies, and a flipped bit in
    /// any of them is rejected.
    #[test]
    fn all_small_trees_and_all_proofs() {
        let all = leaves(300);
        let mut tree = MemoryTree::default();
        let mut roots = vec![empty_root()];
        for (i, leaf) in all.iter().enumerate() {
            tree.push(*leaf);
            let n = i as u64 + 1;
            let reference = root_from_leaves(&all[..=i]);
            assert_eq!(tree.root(), reference, "frontier root at {n}");
            assert_eq!(
                root(&tree, n).expect("root"),
                reference,
                "stored root at {n}"
            );
            roots.push(reference);
        }
        for n in 1..=300u64 {
            for m in 0..n {
                let proof = inclusion_proof(&tree, m, n).expect("inclusion");
                verify_inclusion(&all[m as usize], m, n, &proof, &roots[n as usize])
                    .unwrap_or_else(|e| panic!("inclusion {m} in {n}: {e}"));
                if let Some(bad) = flipped(&proof, m * 7919 + n) {
                    assert!(
                        verify_inclusion(&all[m as usize], m, n, &bad, &roots[n as usize]).is_err(),
                        "flipped inclusion proof {m} in {n} accepted"
                    );
                }
            }
            for m in 1..=n {
                let proof = consistency_proof(&tree, m, n).expect("consistency");
                verify_consistency(m, n, &proof, &roots[m as usize], &roots[n as usize])
                    .unwrap_or_else(|e| panic!("consistency {m} → {n}: {e}"));
                if let Some(bad) = flipped(&proof, m * 104_729 + n) {
                    assert!(
                        verify_consistency(m, n, &bad, &roots[m as usize], &roots[n as usize])
                            .is_err(),
                        "flipped consistency proof {m} → {n} accepted"
                    );
                }
            }
        }
    }

    #[test]
    fn frontier_reloads_from_stored_hashes() {
        let tree = MemoryTree::from_leaves(leaves(77));
        let loaded = Frontier::load(&tree, 77).expect("load");
        assert_eq!(loaded.root(), tree.root());
        assert_eq!(loaded, tree.frontier);
    }
}
