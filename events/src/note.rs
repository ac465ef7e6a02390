//! Signed checkpoints: the C2SP `signed-note` format with Ed25519 keys, and the
//! `tlog-checkpoint` body it carries.
//!
//! Byte-compatible with Go's `golang.org/x/mod/sumdb/note` (its test vectors are the tests
//! below), so a checkpoint Keyward writes can be checked with any C2SP tool.
//!
//! - A **verifier key** is the text `<name>+<8 hex key hash>+<base64(0x01 || public key)>`.
//! - A **signer key** is `PRIVATE+KEY+<name>+<8 hex key hash>+<base64(0x01 || seed)>`; it
//!   is a secret: its `Debug` prints nothing of it and its memory is zeroed on drop.
//! - The key hash is the first four bytes (big-endian) of
//!   SHA-256(name || "\n" || 0x01 || public key).
//! - A **note** is its text (UTF-8, every line ending in `\n`, no control characters but
//!   `\n`), a blank line, then one or more lines `— <name> <base64(key hash || signature)>`
//!   (U+2014 EM DASH, space). The signature covers the text, final newline included.
//! - A **checkpoint** body is `<origin>\n<tree size>\n<base64 root hash>\n` followed by
//!   optional non-empty extension lines.

use std::collections::HashSet;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::hash::Hash32;

/// The algorithm byte of an Ed25519 key in a note key.
const ALG_ED25519: u8 = 1;
/// A note with more signature lines than this is refused unread (as Go does).
pub const MAX_SIGNATURES: usize = 100;
/// What starts a signature line: U+2014 EM DASH and a space.
pub const SIGNATURE_PREFIX: &str = "\u{2014} ";
const SIGNER_PREFIX: &str = "PRIVATE+KEY+";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A key name is empty, or holds a space or a `+`.
    #[error("invalid key name: a name is non-empty and holds no space and no '+'")]
    InvalidName,
    /// A verifier or signer key text does not parse.
    #[error("malformed key: {0}")]
    MalformedKey(&'static str),
    /// A key's algorithm byte is not Ed25519's (0x01).
    #[error("unknown key algorithm {0}")]
    UnknownAlgorithm(u8),
    /// The key hash in a key text is not the hash of its name and key.
    #[error("key hash does not match the key")]
    KeyHashMismatch,
    /// The note text does not follow the signed-note format.
    #[error("malformed note: {0}")]
    MalformedNote(&'static str),
    /// A known key's signature does not verify: the note was changed or forged.
    #[error("invalid signature for key {name}+{key_hash:08x}")]
    InvalidSignature { name: String, key_hash: u32 },
    /// Two of the verifiers given share a name and key hash.
    #[error("ambiguous key {name}+{key_hash:08x}")]
    AmbiguousKey { name: String, key_hash: u32 },
    /// No signature on the note is by a known key.
    #[error("no signature by a known key (signed by: {})", signed_by(.unknown))]
    NoKnownSignature { unknown: Vec<String> },
    /// The note text is not a tlog checkpoint.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(&'static str),
    /// The system's random source failed while generating a key.
    #[error("no randomness for a new key")]
    Random,
}

fn signed_by(keys: &[String]) -> String {
    if keys.is_empty() {
        "nobody".to_owned()
    } else {
        keys.join(", ")
    }
}

/// Whether `name` may name a key: non-empty, no white space, no `+`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The key hash of a key: the first four bytes of SHA-256(name || "\n" || key), where key
/// is the algorithm byte followed by the public key.
pub fn key_hash(name: &str, alg_and_key: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update(alg_and_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

fn ed25519_key_hash(name: &str, public: &VerifyingKey) -> u32 {
    let mut k = [0u8; 33];
    k[0] = ALG_ED25519;
    k[1..].copy_from_slice(public.as_bytes());
    key_hash(name, &k)
}

fn parse_hash(hex: &str) -> Option<u32> {
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// Splits `<name>+<hash>+<base64>` into its parts, checking name and hash syntax and
/// decoding the key bytes (algorithm byte first).
fn split_key(text: &str) -> Result<(&str, u32, Zeroizing<Vec<u8>>), NoteError> {
    let (name, rest) = text
        .split_once('+')
        .ok_or(NoteError::MalformedKey("expected <name>+<hash>+<key>"))?;
    let (hash_hex, key64) = rest
        .split_once('+')
        .ok_or(NoteError::MalformedKey("expected <name>+<hash>+<key>"))?;
    if !is_valid_name(name) {
        return Err(NoteError::InvalidName);
    }
    let hash =
        parse_hash(hash_hex).ok_or(NoteError::MalformedKey("key hash is not 8 hex digits"))?;
    let key = Zeroizing::new(
        B64.decode(key64)
            .map_err(|_| NoteError::MalformedKey("key is not base64"))?,
    );
    if key.is_empty() {
        return Err(NoteError::MalformedKey("empty key"));
    }
    Ok((name, hash, key))
}

/// A public key that checks signatures on notes.
#[derive(Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_hash: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses a verifier key `<name>+<hash>+<base64(0x01 || public key)>`.
    pub fn from_text(text: &str) -> Result<NoteVerifier, NoteError> {
        let text = text.trim();
        let (name, hash, key) = split_key(text)?;
        if hash != key_hash(name, &key) {
            return Err(NoteError::KeyHashMismatch);
        }
        let (&alg, public) = key
            .split_first()
            .ok_or(NoteError::MalformedKey("empty key"))?;
        if alg != ALG_ED25519 {
            return Err(NoteError::UnknownAlgorithm(alg));
        }
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| NoteError::MalformedKey("an Ed25519 public key is 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&public)
            .map_err(|_| NoteError::MalformedKey("not an Ed25519 public key"))?;
        Ok(NoteVerifier {
            name: name.to_owned(),
            key_hash: hash,
            key,
        })
    }

    /// The verifier key text, `<name>+<hash>+<base64>`.
    pub fn to_text(&self) -> String {
        let mut k = [0u8; 33];
        k[0] = ALG_ED25519;
        k[1..].copy_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.key_hash, B64.encode(k))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_hash(&self) -> u32 {
        self.key_hash
    }

    /// Whether `sig` is this key's signature of `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = Signature::from_slice(sig) else {
            return false;
        };
        self.key.verify_strict(msg, &sig).is_ok()
    }
}

impl fmt::Debug for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoteVerifier({})", self.to_text())
    }
}

impl fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// A private key that signs notes. Secret: `Debug` shows only its name and key hash, and
/// the key is zeroed on drop.
pub struct NoteSigner {
    name: String,
    key_hash: u32,
    key: SigningKey,
}

impl NoteSigner {
    /// A new random key named `name`.
    pub fn generate(name: &str) -> Result<NoteSigner, NoteError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(seed.as_mut()).map_err(|_| NoteError::Random)?;
        NoteSigner::from_seed(name, &seed)
    }

    /// The key of an Ed25519 seed (RFC 8032 private key).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<NoteSigner, NoteError> {
        if !is_valid_name(name) {
            return Err(NoteError::InvalidName);
        }
        let key = SigningKey::from_bytes(seed);
        let key_hash = ed25519_key_hash(name, &key.verifying_key());
        Ok(NoteSigner {
            name: name.to_owned(),
            key_hash,
            key,
        })
    }

    /// Parses a signer key `PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>`. Errors
    /// never quote the key.
    pub fn from_text(text: &str) -> Result<NoteSigner, NoteError> {
        let text = text.trim();
        let rest = text
            .strip_prefix(SIGNER_PREFIX)
            .ok_or(NoteError::MalformedKey(
                "a signer key starts with PRIVATE+KEY+",
            ))?;
        let (name, hash, key) = split_key(rest)?;
        let (&alg, seed) = key
            .split_first()
            .ok_or(NoteError::MalformedKey("empty key"))?;
        if alg != ALG_ED25519 {
            return Err(NoteError::UnknownAlgorithm(alg));
        }
        let mut seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| NoteError::MalformedKey("an Ed25519 private key is 32 bytes"))?;
        let signer = NoteSigner::from_seed(name, &seed);
        seed.zeroize();
        let signer = signer?;
        // The hash names the public key: check it once that key is derived.
        if signer.key_hash != hash {
            return Err(NoteError::KeyHashMismatch);
        }
        Ok(signer)
    }

    /// The signer key text. A secret: keep it out of logs.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut k = Zeroizing::new([0u8; 33]);
        k[0] = ALG_ED25519;
        k[1..].copy_from_slice(self.key.as_bytes());
        let b64 = Zeroizing::new(B64.encode(k.as_ref()));
        let mut out = Zeroizing::new(String::with_capacity(SIGNER_PREFIX.len() + 64));
        out.push_str(SIGNER_PREFIX);
        out.push_str(&self.name);
        out.push('+');
        out.push_str(&format!("{:08x}", self.key_hash));
        out.push('+');
        out.push_str(&b64);
        out
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_hash(&self) -> u32 {
        self.key_hash
    }

    /// The matching public key.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key_hash: self.key_hash,
            key: self.key.verifying_key(),
        }
    }

    /// The signature line (without its newline) of `text`.
    fn signature_line(&self, text: &str) -> String {
        let sig = self.key.sign(text.as_bytes());
        let mut raw = Vec::with_capacity(4 + 64);
        raw.extend_from_slice(&self.key_hash.to_be_bytes());
        raw.extend_from_slice(&sig.to_bytes());
        format!("{SIGNATURE_PREFIX}{} {}", self.name, B64.encode(raw))
    }
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_hash", &format_args!("{:08x}", self.key_hash))
            .finish_non_exhaustive()
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_hash: u32,
    /// The base64 of key hash || signature, as on the line.
    pub base64: String,
}

/// An opened note: its text and the signatures found on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, final newline included.
    pub text: String,
    /// Signatures by known keys, each verified.
    pub verified: Vec<NoteSignature>,
    /// Signatures by keys not among the verifiers given (not checked).
    pub unverified: Vec<NoteSignature>,
}

fn check_text_chars(text: &str) -> Result<(), NoteError> {
    if text.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::MalformedNote(
            "control character other than newline",
        ));
    }
    Ok(())
}

/// Signs `text` (ending in a newline) with each signer, and returns the note.
pub fn sign_note(text: &str, signers: &[&NoteSigner]) -> Result<String, NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::MalformedNote("text does not end in a newline"));
    }
    check_text_chars(text)?;
    if text.contains("\n\n") || text.starts_with('\n') {
        return Err(NoteError::MalformedNote("text holds an empty line"));
    }
    if signers.is_empty() {
        return Err(NoteError::MalformedNote("no signer"));
    }
    let mut out = String::with_capacity(text.len() + 1 + signers.len() * 120);
    out.push_str(text);
    out.push('\n');
    for s in signers {
        out.push_str(&s.signature_line(text));
        out.push('\n');
    }
    Ok(out)
}

/// Opens a note: checks its syntax and every signature by a key among `verifiers`.
///
/// Refuses a note with a known key's signature that does not verify, or with no
/// signature by a known key at all. Signatures by other keys are returned unchecked.
pub fn open_note(msg: impl AsRef<[u8]>, verifiers: &[NoteVerifier]) -> Result<Note, NoteError> {
    let msg =
        std::str::from_utf8(msg.as_ref()).map_err(|_| NoteError::MalformedNote("not UTF-8"))?;
    check_text_chars(msg)?;
    let split = msg.rfind("\n\n").ok_or(NoteError::MalformedNote(
        "no blank line before the signatures",
    ))?;
    let (text, sigs) = (&msg[..split + 1], &msg[split + 2..]);
    if sigs.is_empty() || !sigs.ends_with('\n') {
        return Err(NoteError::MalformedNote(
            "signature block missing or not ending in a newline",
        ));
    }
    let mut note = Note {
        text: text.to_owned(),
        verified: Vec::new(),
        unverified: Vec::new(),
    };
    let mut seen = HashSet::new();
    let mut seen_unverified = HashSet::new();
    for (n, line) in sigs[..sigs.len() - 1].split('\n').enumerate() {
        if n >= MAX_SIGNATURES {
            return Err(NoteError::MalformedNote("too many signatures"));
        }
        let rest = line
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or(NoteError::MalformedNote(
                "signature line does not start with '— '",
            ))?;
        let (name, b64) = rest.split_once(' ').unwrap_or((rest, ""));
        let raw = B64
            .decode(b64)
            .map_err(|_| NoteError::MalformedNote("signature is not base64"))?;
        if !is_valid_name(name) || b64.is_empty() || raw.len() < 5 {
            return Err(NoteError::MalformedNote("malformed signature line"));
        }
        let key_hash = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let sig = NoteSignature {
            name: name.to_owned(),
            key_hash,
            base64: b64.to_owned(),
        };
        let mut known = verifiers
            .iter()
            .filter(|v| v.name == name && v.key_hash == key_hash);
        let Some(v) = known.next() else {
            if seen_unverified.insert(line) {
                note.unverified.push(sig);
            }
            continue;
        };
        if known.next().is_some() {
            return Err(NoteError::AmbiguousKey {
                name: name.to_owned(),
                key_hash,
            });
        }
        if !seen.insert((name, key_hash)) {
            continue;
        }
        if !v.verify(text.as_bytes(), &raw[4..]) {
            return Err(NoteError::InvalidSignature {
                name: name.to_owned(),
                key_hash,
            });
        }
        note.verified.push(sig);
    }
    if note.verified.is_empty() {
        return Err(NoteError::NoKnownSignature {
            unknown: note
                .unverified
                .iter()
                .map(|s| format!("{}+{:08x}", s.name, s.key_hash))
                .collect(),
        });
    }
    Ok(note)
}

/// A tlog checkpoint: the head of the Merkle tree over the first `size` events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, e.g. `keyward/example.com`.
    pub origin: String,
    /// The tree size: the number of events covered (events seq 1..=size).
    pub size: u64,
    /// The RFC 6962 root of the tree of `size` leaves.
    pub root: Hash32,
    /// Optional extension lines (none written by Keyward today).
    pub extensions: Vec<String>,
}

fn valid_line(line: &str) -> bool {
    !line.is_empty() && !line.chars().any(|c| c < ' ')
}

impl Checkpoint {
    pub fn new(origin: impl Into<String>, size: u64, root: Hash32) -> Checkpoint {
        Checkpoint {
            origin: origin.into(),
            size,
            root,
            extensions: Vec::new(),
        }
    }

    /// The note text: origin, size and base64 root, one per line, then the extensions.
    pub fn body(&self) -> Result<String, NoteError> {
        if !valid_line(&self.origin) {
            return Err(NoteError::MalformedCheckpoint(
                "origin is empty or holds a control character",
            ));
        }
        if !self.extensions.iter().all(|e| valid_line(e)) {
            return Err(NoteError::MalformedCheckpoint(
                "an extension line is empty or holds a control character",
            ));
        }
        let mut out = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root.0)
        );
        for e in &self.extensions {
            out.push_str(e);
            out.push('\n');
        }
        Ok(out)
    }

    /// Parses a checkpoint body (the text of an opened note).
    pub fn parse(body: &str) -> Result<Checkpoint, NoteError> {
        let lines = body
            .strip_suffix('\n')
            .ok_or(NoteError::MalformedCheckpoint("does not end in a newline"))?;
        let mut lines = lines.split('\n');
        let origin = lines.next().unwrap_or_default();
        let size = lines.next().unwrap_or_default();
        let root = lines
            .next()
            .ok_or(NoteError::MalformedCheckpoint("fewer than three lines"))?;
        if !valid_line(origin) {
            return Err(NoteError::MalformedCheckpoint("empty origin"));
        }
        let size_ok = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit())
            && (size == "0" || !size.starts_with('0'));
        let size =
            size.parse::<u64>()
                .ok()
                .filter(|_| size_ok)
                .ok_or(NoteError::MalformedCheckpoint(
                    "tree size is not a decimal number without leading zeros",
                ))?;
        let root = B64
            .decode(root)
            .ok()
            .and_then(|b| Hash32::from_slice(&b))
            .ok_or(NoteError::MalformedCheckpoint(
                "root hash is not the base64 of 32 bytes",
            ))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if !extensions.iter().all(|e| valid_line(e)) {
            return Err(NoteError::MalformedCheckpoint("empty extension line"));
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    /// Signs this checkpoint: the note text to publish.
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, NoteError> {
        sign(&self.body()?, signer)
    }
}

/// Signs a note body with one key.
pub fn sign(body: &str, signer: &NoteSigner) -> Result<String, NoteError> {
    sign_note(body, &[signer])
}

/// Opens a signed checkpoint: verifies it (see [`open_note`]) and parses its body.
/// Returns the body text and the checkpoint.
pub fn open(
    note: impl AsRef<[u8]>,
    verifiers: &[NoteVerifier],
) -> Result<(String, Checkpoint), NoteError> {
    let note = open_note(note, verifiers)?;
    let checkpoint = Checkpoint::parse(&note.text)?;
    Ok((note.text, checkpoint))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    // golang.org/x/mod/sumdb/note test vectors.
    const PETER_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const PETER_SIG: &str = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    fn peter() -> NoteVerifier {
        NoteVerifier::from_text(PETER_VKEY).unwrap()
    }

    fn enoch() -> NoteVerifier {
        NoteVerifier::from_text(ENOCH_VKEY).unwrap()
    }

    #[test]
    fn go_vector_keys_parse_and_round_trip() {
        let v = peter();
        assert_eq!(v.name(), "PeterNeumann");
        assert_eq!(v.key_hash(), 0xc74f20a3);
        assert_eq!(v.to_text(), PETER_VKEY);
        let s = NoteSigner::from_text(PETER_SKEY).unwrap();
        assert_eq!(s.key_hash(), 0xc74f20a3);
        assert_eq!(s.verifier(), v);
        assert_eq!(s.to_text().as_str(), PETER_SKEY);
    }

    #[test]
    fn go_vector_sign_matches_byte_for_byte() {
        let s = NoteSigner::from_text(PETER_SKEY).unwrap();
        let msg = sign(TEXT, &s).unwrap();
        assert_eq!(msg, format!("{TEXT}\n{PETER_SIG}"));
    }

    #[test]
    fn go_vector_open_one_known_one_unknown() {
        let msg = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
        let n = open_note(&msg, &[peter()]).unwrap();
        assert_eq!(n.text, TEXT);
        assert_eq!(n.verified.len(), 1);
        assert_eq!(n.verified[0].name, "PeterNeumann");
        assert_eq!(n.verified[0].key_hash, 0xc74f20a3);
        assert_eq!(n.unverified.len(), 1);
        assert_eq!(n.unverified[0].key_hash, 0xaf0cfe78);

        let n = open_note(&msg, &[peter(), enoch()]).unwrap();
        assert_eq!(n.verified.len(), 2);
        assert!(n.unverified.is_empty());

        let err = open_note(&msg, &[]).unwrap_err();
        assert_eq!(
            err,
            NoteError::NoKnownSignature {
                unknown: vec!["PeterNeumann+c74f20a3".into(), "EnochRoot+af0cfe78".into()]
            }
        );
        assert!(err.to_string().contains("PeterNeumann+c74f20a3"));
    }

    #[test]
    fn duplicated_verifier_is_ambiguous_only_when_used() {
        let msg = format!("{TEXT}\n{ENOCH_SIG}");
        assert!(matches!(
            open_note(&msg, &[enoch(), peter(), enoch()]),
            Err(NoteError::AmbiguousKey { .. })
        ));
        let msg = format!("{TEXT}\n{PETER_SIG}");
        open_note(&msg, &[enoch(), peter(), enoch()]).unwrap();
    }

    #[test]
    fn too_many_signatures_are_refused() {
        let msg = format!("{TEXT}\n{}", PETER_SIG.repeat(101));
        assert_eq!(
            open_note(&msg, &[peter()]),
            Err(NoteError::MalformedNote("too many signatures"))
        );
        let msg = format!("{TEXT}\n{}", PETER_SIG.repeat(100));
        assert_eq!(open_note(&msg, &[peter()]).unwrap().verified.len(), 1);
    }

    #[test]
    fn forged_signature_is_refused() {
        let bad = format!("{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
        let msg = format!("{TEXT}\n{bad}");
        assert_eq!(
            open_note(&msg, &[peter()]),
            Err(NoteError::InvalidSignature {
                name: "PeterNeumann".into(),
                key_hash: 0xc74f20a3
            })
        );
    }

    #[test]
    fn go_vector_malformed_notes() {
        let bad = [
            TEXT.to_owned(),
            format!("{TEXT}\n"),
            format!("{TEXT}\n{}", &PETER_SIG[..PETER_SIG.len() - 1]),
            format!("\x01{TEXT}\n{PETER_SIG}"),
            format!(
                "{TEXT}\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
            ),
            format!("{TEXT}\n{PETER_SIG}Unexpected line.\n"),
            format!("{TEXT}\n- PeterNeumann x08go/ZJku\n"),
        ];
        for msg in bad {
            assert!(
                matches!(
                    open_note(&msg, &[peter()]),
                    Err(NoteError::MalformedNote(_))
                ),
                "{msg:?}"
            );
        }
        let mut bytes = format!("{TEXT}\n{PETER_SIG}").into_bytes();
        bytes.insert(0, 0xff);
        assert_eq!(
            open_note(&bytes, &[peter()]),
            Err(NoteError::MalformedNote("not UTF-8"))
        );
    }

    #[test]
    fn changed_body_fails() {
        let s = NoteSigner::from_text(PETER_SKEY).unwrap();
        let msg = sign(TEXT, &s).unwrap();
        let changed = msg.replacen("answer", "Answer", 1);
        assert!(matches!(
            open_note(&changed, &[peter()]),
            Err(NoteError::InvalidSignature { .. })
        ));
    }

    #[test]
    fn verifier_key_manglings_are_refused() {
        let b = PETER_VKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if i != 0 || j != b.len() {
                    let k = std::str::from_utf8(&b[i..j]).unwrap();
                    assert!(NoteVerifier::from_text(k).is_err(), "{k}");
                }
            }
        }
        let mut b = b.to_vec();
        for i in 0..b.len() {
            b[i] += 1;
            let k = String::from_utf8(b.clone()).unwrap();
            assert!(NoteVerifier::from_text(&k).is_err(), "{k}");
            b[i] -= 1;
        }
        // Wrong key length, unknown algorithm, each with an adjusted key hash.
        assert!(
            NoteVerifier::from_text(
                "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
            )
            .is_err()
        );
        assert_eq!(
            NoteVerifier::from_text(
                "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            ),
            Err(NoteError::UnknownAlgorithm(0x65))
        );
    }

    #[test]
    fn signer_key_manglings_are_refused() {
        let b = PETER_SKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if i == 0 && j == b.len() {
                    continue;
                }
                let k = std::str::from_utf8(&b[i..j]).unwrap();
                // Surrounding white space is trimmed; that is not a mangling.
                if k.trim() == PETER_SKEY {
                    continue;
                }
                assert!(NoteSigner::from_text(k).is_err(), "{k}");
            }
        }
        let mut b = b.to_vec();
        for i in 0..b.len() {
            b[i] += 1;
            let k = String::from_utf8(b.clone()).unwrap();
            assert!(NoteSigner::from_text(&k).is_err(), "{k}");
            b[i] -= 1;
        }
    }

    #[test]
    fn signer_debug_and_errors_hold_no_secret() {
        let s = NoteSigner::from_text(PETER_SKEY).unwrap();
        let dbg = format!("{s:?}");
        assert!(dbg.contains("PeterNeumann"));
        assert!(!dbg.contains("AYEKFALV"), "{dbg}");
        let bad = PETER_SKEY.replace("c74f20a3", "c74f20a4");
        let err = NoteSigner::from_text(&bad).unwrap_err();
        assert_eq!(err, NoteError::KeyHashMismatch);
        assert!(!err.to_string().contains("AYEKFALV"));
    }

    #[test]
    fn generated_keys_sign_and_verify() {
        let s = NoteSigner::generate("keyward/example.com").unwrap();
        let v = NoteVerifier::from_text(&s.verifier().to_text()).unwrap();
        assert_eq!(v, s.verifier());
        let again = NoteSigner::from_text(&s.to_text()).unwrap();
        assert_eq!(again.verifier(), v);
        let cp = Checkpoint::new("keyward/example.com", 7, Hash32([9; 32]));
        let note = cp.sign(&s).unwrap();
        let (body, opened) = open(&note, &[v]).unwrap();
        assert_eq!(opened, cp);
        assert_eq!(body, cp.body().unwrap());
        assert!(matches!(
            NoteSigner::generate("bad name"),
            Err(NoteError::InvalidName)
        ));
        assert!(matches!(
            NoteSigner::generate("a+b"),
            Err(NoteError::InvalidName)
        ));
    }

    #[test]
    fn a_note_signed_by_another_key_fails() {
        let s = NoteSigner::generate("keyward/example.com").unwrap();
        let other = NoteSigner::generate("keyward/example.com").unwrap();
        let note = Checkpoint::new("keyward/example.com", 1, Hash32([1; 32]))
            .sign(&other)
            .unwrap();
        // Same name, different key: the key hash differs, so the signature is unknown.
        assert!(matches!(
            open(&note, &[s.verifier()]),
            Err(NoteError::NoKnownSignature { .. })
        ));
        // Same name and key hash claimed, signed with another key: invalid.
        let (text, line) = note.split_once("\n\n").unwrap();
        let b64 = line.trim_end().rsplit_once(' ').unwrap().1;
        let mut raw = B64.decode(b64).unwrap();
        raw[..4].copy_from_slice(&s.key_hash().to_be_bytes());
        let forged = format!(
            "{text}\n\n{SIGNATURE_PREFIX}keyward/example.com {}\n",
            B64.encode(&raw)
        );
        assert_eq!(
            open(&forged, &[s.verifier()]),
            Err(NoteError::InvalidSignature {
                name: "keyward/example.com".into(),
                key_hash: s.key_hash()
            })
        );
    }

    #[test]
    fn c2sp_checkpoint_example_parses() {
        let body =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let cp = Checkpoint::parse(body).unwrap();
        assert_eq!(cp.origin, "example.com/behind-the-sofa");
        assert_eq!(cp.size, 20852163);
        assert_eq!(cp.body().unwrap(), body);
        let ext = format!("{body}extension one\n");
        let cp = Checkpoint::parse(&ext).unwrap();
        assert_eq!(cp.extensions, vec!["extension one".to_owned()]);
        assert_eq!(cp.body().unwrap(), ext);
    }

    #[test]
    fn malformed_checkpoints_are_refused() {
        let root = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=";
        let bad = [
            format!("o\n1\n{root}"),
            "o\n1\n".to_owned(),
            format!("\n1\n{root}\n"),
            format!("o\n01\n{root}\n"),
            format!("o\n+1\n{root}\n"),
            format!("o\n-1\n{root}\n"),
            format!("o\n 1\n{root}\n"),
            format!("o\n18446744073709551616\n{root}\n"),
            "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I\n".to_owned(),
            "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2=\n".to_owned(),
            "o\n1\nAAAA\n".to_owned(),
            format!("o\n1\n{root}\n\n"),
            format!("o\n1\n{root}\next\n\n"),
        ];
        for b in bad {
            assert!(
                matches!(
                    Checkpoint::parse(&b),
                    Err(NoteError::MalformedCheckpoint(_))
                ),
                "{b:?}"
            );
        }
        assert_eq!(
            Checkpoint::parse(&format!("o\n0\n{root}\n")).unwrap().size,
            0
        );
        assert!(
            Checkpoint::new("two\nlines", 1, Hash32::ZERO)
                .body()
                .is_err()
        );
        let mut cp = Checkpoint::new("o", 1, Hash32::ZERO);
        cp.extensions.push(String::new());
        assert!(cp.body().is_err());
    }

    #[test]
    fn a_note_with_a_checkpoint_that_does_not_parse_is_refused() {
        let s = NoteSigner::generate("k").unwrap();
        let note = sign("just text\n", &s).unwrap();
        assert!(matches!(
            open(&note, &[s.verifier()]),
            Err(NoteError::MalformedCheckpoint(_))
        ));
        assert!(sign("no newline", &s).is_err());
        assert!(sign("a\n\nb\n", &s).is_err());
    }
}
