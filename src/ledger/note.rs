//! C2SP signed notes and `tlog-checkpoint` checkpoints.
//!
//! A note is UTF-8 text (every line ending in `\n`), a blank line, and
//! signature lines `— <key name> <base64(key id ‖ Ed25519 signature)>`.
//! The key id is `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]`; a verifier
//! key is published as `<name>+<hex key id>+<base64(0x01 ‖ public key)>`.
//! A checkpoint is a note whose text is `origin\nsize\nbase64(root)\n`,
//! so any transparency-log tooling can check this node's checkpoints.

use data_encoding::BASE64 as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ring::digest;

use crate::digest::Hash;

/// Largest note accepted from the network or disk.
pub const MAX_NOTE_BYTES: usize = 16 << 10;
/// Most signature lines accepted on one note.
const MAX_SIGNATURES: usize = 32;
/// Signature type byte for Ed25519 in key ids and verifier keys.
const ALG_ED25519: u8 = 0x01;
const SIG_PREFIX: &str = "\u{2014} ";

/// Why a note, verifier key or checkpoint was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoteError {
    /// The note is not well formed.
    #[error("malformed signed note: {0}")]
    Malformed(String),
    /// The verifier key is not well formed.
    #[error("malformed verifier key: {0} (expected NAME+HEXKEYID+BASE64KEY)")]
    Vkey(String),
    /// No signature by the expected key verifies.
    #[error("no valid signature by {0} on the note")]
    Unverified(String),
    /// The checkpoint text is not well formed.
    #[error("malformed checkpoint: {0} (expected \"origin\\nsize\\nbase64(root)\\n\")")]
    Checkpoint(String),
}

fn key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(&[0x0A, ALG_ED25519]);
    ctx.update(public_key);
    let d = ctx.finish();
    let mut id = [0u8; 4];
    id.copy_from_slice(&d.as_ref()[..4]);
    id
}

fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('+') && !name.chars().any(char::is_whitespace)
}

/// Signs notes under a key name.
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    id: [u8; 4],
}

impl NoteSigner {
    /// A signer for `name` with `key`.
    pub fn new(name: &str, key: SigningKey) -> Result<Self, NoteError> {
        if !valid_key_name(name) {
            return Err(NoteError::Vkey(format!("invalid key name `{name}`")));
        }
        let id = key_id(name, &key.verifying_key().to_bytes());
        Ok(Self {
            name: name.to_owned(),
            key,
            id,
        })
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// Signs `text` (which must end in a newline) and returns the note.
    pub fn sign(&self, text: &str) -> String {
        format!("{text}\n{}", self.signature_line(text))
    }

    /// Adds this key's signature to a note another key of the same name
    /// signed (a key handing over to its successor signs one checkpoint
    /// with both). The note must be well formed.
    pub fn cosign(&self, note: &str) -> Result<String, NoteError> {
        let (text, _) = split_note(note.as_bytes())?;
        Ok(format!("{note}{}", self.signature_line(text)))
    }

    fn signature_line(&self, text: &str) -> String {
        let sig = self.key.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&self.id);
        blob.extend_from_slice(&sig.to_bytes());
        format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(&blob))
    }

    /// The signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }
}

/// Checks notes signed under one key name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    /// A verifier for `name` and a raw Ed25519 public key.
    pub fn new(name: &str, public_key: &[u8; 32]) -> Result<Self, NoteError> {
        if !valid_key_name(name) {
            return Err(NoteError::Vkey(format!("invalid key name `{name}`")));
        }
        let key = VerifyingKey::from_bytes(public_key)
            .map_err(|e| NoteError::Vkey(format!("not an Ed25519 public key: {e}")))?;
        Ok(Self {
            name: name.to_owned(),
            id: key_id(name, public_key),
            key,
        })
    }

    /// Parses a verifier key `<name>+<hex key id>+<base64(0x01 ‖ key)>`,
    /// checking that the key id matches the name and key.
    pub fn from_vkey(vkey: &str) -> Result<Self, NoteError> {
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(hex), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::Vkey(
                "fewer than three '+'-separated parts".into(),
            ));
        };
        let id = data_encoding::HEXLOWER_PERMISSIVE
            .decode(hex.as_bytes())
            .ok()
            .filter(|id| id.len() == 4)
            .ok_or_else(|| NoteError::Vkey(format!("key id `{hex}` is not 8 hex digits")))?;
        let raw = B64
            .decode(key.as_bytes())
            .map_err(|e| NoteError::Vkey(format!("key is not base64: {e}")))?;
        let (Some(&ALG_ED25519), Ok(public)) =
            (raw.first(), <[u8; 32]>::try_from(&raw[1.min(raw.len())..]))
        else {
            return Err(NoteError::Vkey(
                "key is not 0x01 followed by a 32-byte Ed25519 key".into(),
            ));
        };
        let verifier = Self::new(name, &public)?;
        if verifier.id[..] != id[..] {
            return Err(NoteError::Vkey(format!(
                "key id {hex} does not match the name and key (expected {})",
                data_encoding::HEXLOWER.encode(&verifier.id)
            )));
        }
        Ok(verifier)
    }

    /// The verifier key text.
    pub fn vkey(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            data_encoding::HEXLOWER.encode(&self.id),
            B64.encode(&raw)
        )
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Verifies `note` and returns its text. Signatures by other keys are
    /// ignored; at least one by this key must verify, and none by this key
    /// may fail.
    pub fn verify<'a>(&self, note: &'a [u8]) -> Result<&'a str, NoteError> {
        let (text, sigs) = split_note(note)?;
        let mut verified = false;
        for (name, blob) in sigs {
            if name != self.name || blob[..4] != self.id {
                continue;
            }
            let sig = Signature::from_slice(&blob[4..])
                .map_err(|_| NoteError::Malformed("signature is not 64 bytes".into()))?;
            self.key
                .verify_strict(text.as_bytes(), &sig)
                .map_err(|_| NoteError::Unverified(self.name.clone()))?;
            verified = true;
        }
        if verified {
            Ok(text)
        } else {
            Err(NoteError::Unverified(self.name.clone()))
        }
    }
}

/// Splits a note into its text and its (name, key id ‖ signature) lines.
/// A signature line: key name and key id ‖ signature bytes.
type SignatureLine<'a> = (&'a str, Vec<u8>);

/// The text of a note, before any signature is checked (to learn which
/// key must have signed it). Never trust what this returns on its own.
pub(crate) fn unverified_text(note: &[u8]) -> Result<&str, NoteError> {
    Ok(split_note(note)?.0)
}

fn split_note(note: &[u8]) -> Result<(&str, Vec<SignatureLine<'_>>), NoteError> {
    let bad = |m: &str| NoteError::Malformed(m.to_owned());
    if note.len() > MAX_NOTE_BYTES {
        return Err(bad("longer than 16 KiB"));
    }
    let note = std::str::from_utf8(note).map_err(|_| bad("not UTF-8"))?;
    if note.contains('\r') || note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(bad("contains control characters"));
    }
    let split = note
        .rfind("\n\n")
        .ok_or_else(|| bad("no blank line before the signatures"))?;
    let text = &note[..=split];
    let sig_block = &note[split + 2..];
    if text.len() <= 1 {
        return Err(bad("empty text"));
    }
    if !sig_block.ends_with('\n') {
        return Err(bad("signature block does not end with a newline"));
    }
    let mut sigs = Vec::new();
    for line in sig_block[..sig_block.len() - 1].split('\n') {
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or_else(|| bad("signature line does not start with an em dash and a space"))?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or_else(|| bad("signature line has no key name"))?;
        if !valid_key_name(name) {
            return Err(bad("invalid key name on a signature line"));
        }
        let blob = B64
            .decode(b64.as_bytes())
            .map_err(|_| bad("signature is not base64"))?;
        if blob.len() < 5 {
            return Err(bad("signature shorter than a key id"));
        }
        sigs.push((name, blob));
        if sigs.len() > MAX_SIGNATURES {
            return Err(bad("too many signatures"));
        }
    }
    if sigs.is_empty() {
        return Err(bad("no signatures"));
    }
    Ok((text, sigs))
}

/// A tree head: the origin (log name), size and root hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name, e.g. `dsnode/dsn1…`.
    pub origin: String,
    /// Number of entries.
    pub size: u64,
    /// RFC 6962 root of the first `size` entries.
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint's note text.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(&self.root)
        )
    }

    /// Parses a checkpoint's note text (extension lines are allowed and
    /// ignored, as C2SP tlog-checkpoint specifies).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let bad = |m: &str| NoteError::Checkpoint(m.to_owned());
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin"))?;
        let size = lines.next().ok_or_else(|| bad("no size"))?;
        // Decimal without sign or leading zeros: one encoding per value.
        if size.is_empty()
            || (size.len() > 1 && size.starts_with('0'))
            || !size.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad("size is not a decimal number"));
        }
        let size: u64 = size.parse().map_err(|_| bad("size out of range"))?;
        let root = lines.next().ok_or_else(|| bad("no root hash"))?;
        let root = B64
            .decode(root.as_bytes())
            .map_err(|_| bad("root is not base64"))?;
        let root: Hash = root
            .as_slice()
            .try_into()
            .map_err(|_| bad("root is not 32 bytes"))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

/// A checkpoint with its signed note, verified (or made by this node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The parsed tree head.
    pub checkpoint: Checkpoint,
    /// The signed note, as published.
    pub note: String,
}

impl SignedCheckpoint {
    /// Signs `checkpoint`.
    pub fn sign(checkpoint: Checkpoint, signer: &NoteSigner) -> Self {
        let note = signer.sign(&checkpoint.text());
        Self { checkpoint, note }
    }

    /// Verifies a note with `verifier`, parses it as a checkpoint and
    /// checks that its origin is the verifier's name.
    pub fn verify(note: &[u8], verifier: &NoteVerifier) -> Result<Self, NoteError> {
        let text = verifier.verify(note)?;
        let checkpoint = Checkpoint::parse(text)?;
        if checkpoint.origin != verifier.name() {
            return Err(NoteError::Checkpoint(format!(
                "origin `{}` is not the log `{}`",
                checkpoint.origin,
                verifier.name()
            )));
        }
        Ok(Self {
            checkpoint,
            note: text_to_note(note),
        })
    }
}

fn text_to_note(note: &[u8]) -> String {
    String::from_utf8_lossy(note).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_and_rejects_changes() {
        let key = SigningKey::from_bytes(&[9u8; 32]);
        let signer = NoteSigner::new("dsnode/test", key).expect("signer");
        let verifier = NoteVerifier::from_vkey(&signer.verifier().vkey()).expect("vkey");
        let cp = Checkpoint {
            origin: "dsnode/test".into(),
            size: 42,
            root: [7u8; 32],
        };
        let signed = SignedCheckpoint::sign(cp.clone(), &signer);
        let back = SignedCheckpoint::verify(signed.note.as_bytes(), &verifier).expect("verify");
        assert_eq!(back.checkpoint, cp);
        let bytes = signed.note.as_bytes();
        for i in 0..bytes.len() {
            let mut changed = bytes.to_vec();
            changed[i] ^= 0x01;
            assert!(
                SignedCheckpoint::verify(&changed, &verifier).is_err(),
                "flipped byte {i} accepted"
            );
        }
    }

    #[test]
    fn checkpoint_text_is_strict() {
        assert!(Checkpoint::parse("o\n01\nAAAA\n").is_err());
        assert!(Checkpoint::parse("o\n-1\nAAAA\n").is_err());
        assert!(Checkpoint::parse("o\n1\nAAAA\n").is_err(), "short root");
        assert!(Checkpoint::parse("\n1\n").is_err());
    }
}
