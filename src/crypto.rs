//! Secrets: the gateway key format, its hash, and the keyring that seals provider
//! credentials with AES-256-GCM.
//!
//! Every type here that holds secret material has a `Debug` that prints nothing of it, so
//! that no `{:?}` in a log line or an error can leak one.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use keyward_events::{Hash32, SealedPassword};
use keyward_projections::{StoredPassword, UserRecord};
use rand::RngCore;
use zeroize::Zeroizing;

pub const SECRET_PREFIX: &str = "kw_";
const BODY_LEN: usize = 43; // base62 of 32 bytes
const CHECK_LEN: usize = 6; // base62 of a CRC32
pub const SECRET_LEN: usize = SECRET_PREFIX.len() + BODY_LEN + CHECK_LEN;
/// How much of a secret the key view shows: `kw_` and the first 8 characters of the body.
pub const DISPLAY_PREFIX_LEN: usize = SECRET_PREFIX.len() + 8;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A gateway key secret: `kw_` + base62(32 random bytes) + base62(CRC32) checksum.
/// Only ever built by [`Secret::generate`] or a successful [`Secret::parse`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a Keyward key starts with kw_")]
    Prefix,
    #[error("a Keyward key is {SECRET_LEN} characters long")]
    Length,
    #[error("a Keyward key holds only letters and digits after kw_")]
    Alphabet,
    #[error("the Keyward key's checksum does not match; it was mistyped or truncated")]
    Checksum,
}

impl Secret {
    pub fn generate() -> Secret {
        let mut raw = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(raw.as_mut());
        let mut s = String::with_capacity(SECRET_LEN);
        s.push_str(SECRET_PREFIX);
        s.push_str(&base62_fixed(raw.as_ref(), BODY_LEN));
        let crc = crc32fast::hash(s.as_bytes());
        s.push_str(&base62_fixed(&crc.to_be_bytes(), CHECK_LEN));
        Secret(Zeroizing::new(s))
    }

    /// Refuses malformed input before any lookup: prefix, length, alphabet and checksum.
    pub fn parse(input: &str) -> Result<Secret, SecretError> {
        check(input)?;
        Ok(Secret(Zeroizing::new(input.to_owned())))
    }

    /// The secret itself. Call sites are few and reviewed: creation responses, the
    /// bootstrap file, and tests.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> Hash32 {
        hash_secret(&self.0)
    }

    pub fn display_prefix(&self) -> String {
        self.0[..DISPLAY_PREFIX_LEN].to_owned()
    }
}

/// Validates a presented key without copying it; the proxy's hot path uses this.
pub fn check(input: &str) -> Result<(), SecretError> {
    let b = input.as_bytes();
    if !input.starts_with(SECRET_PREFIX) {
        return Err(SecretError::Prefix);
    }
    if b.len() != SECRET_LEN {
        return Err(SecretError::Length);
    }
    if !b[SECRET_PREFIX.len()..]
        .iter()
        .all(u8::is_ascii_alphanumeric)
    {
        return Err(SecretError::Alphabet);
    }
    let (payload, check) = b.split_at(SECRET_LEN - CHECK_LEN);
    let crc = crc32fast::hash(payload);
    let mut expected = [0u8; CHECK_LEN];
    base62_fixed_into(&crc.to_be_bytes(), &mut expected);
    if expected != check {
        return Err(SecretError::Checksum);
    }
    Ok(())
}

/// blake3 of the whole secret. The secret has 256 bits of entropy, so an unkeyed hash is
/// enough to make the stored value useless to an attacker.
pub fn hash_secret(secret: &str) -> Hash32 {
    blake3::hash(secret.as_bytes()).into()
}

fn base62_fixed(bytes: &[u8], len: usize) -> String {
    let mut out = vec![b'0'; len];
    base62_fixed_into(bytes, &mut out);
    out.into_iter().map(char::from).collect()
}

/// Big-endian base62, left-padded with '0' to exactly `out.len()` digits.
///
/// Works on a copy of the bytes on the stack (at most 32, the longest input), so checking a
/// presented key's CRC does not allocate.
fn base62_fixed_into(bytes: &[u8], out: &mut [u8]) {
    let mut buf = Zeroizing::new([0u8; 32]);
    let num = &mut buf[..bytes.len()];
    num.copy_from_slice(bytes);
    for slot in out.iter_mut().rev() {
        let mut rem: u32 = 0;
        for byte in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*byte);
            *byte = (acc / 62) as u8;
            rem = acc % 62;
        }
        *slot = BASE62[rem as usize];
    }
}

// ---- provider credentials ----

/// A provider's API key in plaintext. Lives only in memory, only as long as a request
/// or a command needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderSecret(Zeroizing<String>);

impl ProviderSecret {
    pub fn new(s: String) -> Self {
        ProviderSecret(Zeroizing::new(s))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The last four characters, for people to recognise which credential is in use.
    pub fn last4(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        chars[chars.len().saturating_sub(4)..].iter().collect()
    }
}

impl fmt::Debug for ProviderSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProviderSecret(<redacted>)")
    }
}

/// One 256-bit master key of the keyring.
#[derive(Clone)]
pub struct MasterKey {
    pub version: u32,
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(v{}, <redacted>)", self.version)
    }
}

impl MasterKey {
    pub fn generate(version: u32) -> MasterKey {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        MasterKey { version, key }
    }

    /// `<version>:<64 hex digits>`, the form `KEYWARD_MASTER_KEYS` and the key file use.
    pub fn to_spec(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{}:{}",
            self.version,
            hex::encode(self.key.as_ref())
        ))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    #[error("the keyring is empty")]
    Empty,
    #[error("keyring entry {0} is not of the form <version>:<64 hex digits>")]
    Malformed(usize),
    #[error("keyring version {0} appears twice")]
    Duplicate(u32),
    #[error(
        "no master key of version {0} in the keyring; it may have been removed before a reseal"
    )]
    UnknownVersion(u32),
    #[error(
        "the credential does not decrypt: the ciphertext was altered, or it belongs to another provider or master key"
    )]
    Decrypt,
    #[error("the sealed credential is malformed")]
    SealedMalformed,
}

/// Master keys by version; the first one encrypts, all decrypt.
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: Vec<MasterKey>,
}

/// A provider credential as it is stored in `provider.key_updated`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext: String,
    pub nonce: String,
    pub keyring_version: u32,
    pub fingerprint: String,
    pub last4: String,
}

impl Keyring {
    pub fn new(keys: Vec<MasterKey>) -> Result<Keyring, KeyringError> {
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.version == k.version) {
                return Err(KeyringError::Duplicate(k.version));
            }
        }
        Ok(Keyring { keys })
    }

    /// Parses `v:hex[,v:hex…]`; the first entry encrypts.
    pub fn parse(spec: &str) -> Result<Keyring, KeyringError> {
        let mut keys = Vec::new();
        for (i, part) in spec
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .enumerate()
        {
            let (v, h) = part.split_once(':').ok_or(KeyringError::Malformed(i + 1))?;
            let version: u32 = v
                .trim()
                .parse()
                .map_err(|_| KeyringError::Malformed(i + 1))?;
            let mut key = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(h.trim(), key.as_mut())
                .map_err(|_| KeyringError::Malformed(i + 1))?;
            keys.push(MasterKey { version, key });
        }
        Keyring::new(keys)
    }

    pub fn current(&self) -> &MasterKey {
        &self.keys[0]
    }

    pub fn versions(&self) -> Vec<u32> {
        self.keys.iter().map(|k| k.version).collect()
    }

    fn get(&self, version: u32) -> Result<&MasterKey, KeyringError> {
        self.keys
            .iter()
            .find(|k| k.version == version)
            .ok_or(KeyringError::UnknownVersion(version))
    }

    fn aad(provider_id: &str, version: u32) -> Vec<u8> {
        format!("keyward/provider-credential/v1\0{provider_id}\0{version}").into_bytes()
    }

    /// Keyed blake3 of the credential under a key derived from the current master key:
    /// an auditor can see whether a credential went back to an earlier one without
    /// being able to test guesses offline.
    pub fn fingerprint(&self, secret: &ProviderSecret) -> String {
        let fk = blake3::derive_key(
            "keyward 2026 provider credential fingerprint",
            self.current().key.as_ref(),
        );
        blake3::keyed_hash(&fk, secret.expose().as_bytes()).to_hex()[..32].to_owned()
    }

    /// The keys that MAC projection snapshots, one per master key, the current one first:
    /// a snapshot written before a key rotation still verifies under the older key.
    pub fn snapshot_mac_keys(&self) -> SnapshotMacKeys {
        SnapshotMacKeys(
            self.keys
                .iter()
                .map(|k| {
                    Zeroizing::new(blake3::derive_key(
                        "keyward 2026 projection snapshot mac",
                        k.key.as_ref(),
                    ))
                })
                .collect(),
        )
    }

    pub fn seal(&self, provider_id: &str, secret: &ProviderSecret) -> Sealed {
        let mk = self.current();
        let (ciphertext, nonce) = Self::encrypt(
            mk,
            &Self::aad(provider_id, mk.version),
            secret.expose().as_bytes(),
        );
        Sealed {
            ciphertext,
            nonce,
            keyring_version: mk.version,
            fingerprint: self.fingerprint(secret),
            last4: secret.last4(),
        }
    }

    pub fn open(
        &self,
        provider_id: &str,
        ciphertext: &str,
        nonce: &str,
        version: u32,
    ) -> Result<ProviderSecret, KeyringError> {
        let mk = self.get(version)?;
        let pt = Self::decrypt(mk, &Self::aad(provider_id, version), ciphertext, nonce)?;
        let s = std::str::from_utf8(&pt).map_err(|_| KeyringError::Decrypt)?;
        Ok(ProviderSecret::new(s.to_owned()))
    }

    fn password_aad(user_id: &str, version: u32) -> Vec<u8> {
        format!("keyward/password-hash/v1\0{user_id}\0{version}").into_bytes()
    }

    /// Seals a user's password hash for `user.created` / `user.updated`: bound to the
    /// user, so that a sealed hash copied onto another user does not open.
    pub fn seal_password(&self, user_id: &str, hash: &PasswordHash) -> SealedPassword {
        let mk = self.current();
        let (ciphertext, nonce) = Self::encrypt(
            mk,
            &Self::password_aad(user_id, mk.version),
            hash.expose().as_bytes(),
        );
        SealedPassword {
            ciphertext,
            nonce,
            keyring_version: mk.version,
        }
    }

    pub fn open_password(
        &self,
        user_id: &str,
        sealed: &SealedPassword,
    ) -> Result<PasswordHash, KeyringError> {
        let v = sealed.keyring_version;
        let mk = self.get(v)?;
        let pt = Self::decrypt(
            mk,
            &Self::password_aad(user_id, v),
            &sealed.ciphertext,
            &sealed.nonce,
        )?;
        let s = std::str::from_utf8(&pt).map_err(|_| KeyringError::Decrypt)?;
        Ok(PasswordHash::new(s.to_owned()))
    }

    /// The PHC string to verify a sign-in against: a sealed one opened, a schema 1 one as
    /// it was stored. `None` when the user has none or it does not open (a master key
    /// missing from the keyring; logged without the hash).
    pub fn password_of(&self, user: &UserRecord) -> Option<PasswordHash> {
        match user.password.as_ref()? {
            StoredPassword::Legacy(phc) => Some(PasswordHash::new(phc.clone())),
            StoredPassword::Sealed(s) => match self.open_password(&user.user_id, s) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::error!(user_id = %user.user_id, error = %e, "a sealed password does not open with this keyring");
                    None
                }
            },
        }
    }

    /// AES-256-GCM under `mk` with a random nonce: (ciphertext with tag, nonce), hex.
    fn encrypt(mk: &MasterKey, aad: &[u8], msg: &[u8]) -> (String, String) {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let cipher = Aes256Gcm::new(mk.key.as_ref().into());
        // Encryption with a valid 32-byte key and 12-byte nonce cannot fail for inputs
        // far below GCM's length limit; an empty ciphertext would fail to open, loudly.
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg, aad })
            .unwrap_or_default();
        (hex::encode(ct), hex::encode(nonce))
    }

    fn decrypt(
        mk: &MasterKey,
        aad: &[u8],
        ciphertext: &str,
        nonce: &str,
    ) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
        let ct = hex::decode(ciphertext).map_err(|_| KeyringError::SealedMalformed)?;
        let mut n = [0u8; 12];
        hex::decode_to_slice(nonce, &mut n).map_err(|_| KeyringError::SealedMalformed)?;
        let cipher = Aes256Gcm::new(mk.key.as_ref().into());
        Ok(Zeroizing::new(
            cipher
                .decrypt(Nonce::from_slice(&n), Payload { msg: &ct, aad })
                .map_err(|_| KeyringError::Decrypt)?,
        ))
    }
}

/// Prefixes that name a kind of credential rather than any part of its secret.
const KNOWN_CREDENTIAL_PREFIXES: &[&str] = &["sk-", "gsk", "xai", "AIz"];

/// Masks a credential for display: its first three characters when they are a known,
/// non-secret prefix such as `sk-`, then `…` and the last four: `sk-…abcd` or `…abcd`.
pub fn mask(secret: Option<&ProviderSecret>, last4: &str) -> String {
    let prefix = secret
        .map(ProviderSecret::expose)
        .and_then(|s| {
            KNOWN_CREDENTIAL_PREFIXES
                .iter()
                .find(|p| s.starts_with(**p))
        })
        .copied()
        .unwrap_or("");
    format!("{prefix}…{last4}")
}

// ---- passwords ----

/// A password's argon2id PHC string. It enters the log only sealed
/// ([`Keyring::seal_password`]), and its `Debug` prints nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(Zeroizing<String>);

impl PasswordHash {
    pub fn new(phc: String) -> PasswordHash {
        PasswordHash(Zeroizing::new(phc))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for PasswordHash {
    fn from(phc: String) -> Self {
        PasswordHash::new(phc)
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// Hashes a password with argon2id (its default parameters: 19 MiB, 2 passes) and a
/// random salt, as a PHC string. Slow on purpose: call it off the async runtime.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether `password` matches a PHC string from [`hash_password`].
pub fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_parse_and_have_the_documented_shape() {
        for _ in 0..200 {
            let s = Secret::generate();
            assert_eq!(s.expose().len(), SECRET_LEN);
            assert!(s.expose().starts_with("kw_"));
            assert_eq!(Secret::parse(s.expose()).unwrap(), s);
            assert_eq!(s.display_prefix().len(), 11);
        }
    }

    #[test]
    fn malformed_secrets_are_refused_with_their_reason() {
        let good = Secret::generate();
        let g = good.expose();
        assert_eq!(Secret::parse("sk-abc").unwrap_err(), SecretError::Prefix);
        assert_eq!(
            Secret::parse(&g[..SECRET_LEN - 1]).unwrap_err(),
            SecretError::Length
        );
        let mut bad = g.to_owned();
        bad.replace_range(5..6, "-");
        assert_eq!(Secret::parse(&bad).unwrap_err(), SecretError::Alphabet);
        // One changed character in the body breaks the checksum.
        let mut flipped = g.as_bytes().to_vec();
        flipped[10] = if flipped[10] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            Secret::parse(std::str::from_utf8(&flipped).unwrap()).unwrap_err(),
            SecretError::Checksum
        );
    }

    #[test]
    fn debug_prints_no_secret() {
        let s = Secret::generate();
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        let p = ProviderSecret::new("sk-live-1234567890".into());
        assert!(!format!("{p:?}").contains("1234"));
        let k = MasterKey::generate(3);
        assert_eq!(format!("{k:?}"), "MasterKey(v3, <redacted>)");
    }

    #[test]
    fn base62_matches_a_known_value() {
        assert_eq!(base62_fixed(&[0, 0, 0, 61], 3), "00z");
        assert_eq!(base62_fixed(&[0, 0, 0, 62], 3), "010");
        assert_eq!(base62_fixed(&u32::MAX.to_be_bytes(), 6), "4gfFC3");
    }

    #[test]
    fn seal_and_open_round_trip_and_bind_the_provider() {
        let ring = Keyring::new(vec![MasterKey::generate(1)]).unwrap();
        let secret = ProviderSecret::new("sk-test-abcd".into());
        let s = ring.seal("prv_1", &secret);
        assert_eq!(s.last4, "abcd");
        assert_eq!(
            ring.open("prv_1", &s.ciphertext, &s.nonce, 1).unwrap(),
            secret
        );
        assert_eq!(
            ring.open("prv_2", &s.ciphertext, &s.nonce, 1).unwrap_err(),
            KeyringError::Decrypt
        );
        let mut tampered = hex::decode(&s.ciphertext).unwrap();
        tampered[0] ^= 1;
        assert_eq!(
            ring.open("prv_1", &hex::encode(tampered), &s.nonce, 1)
                .unwrap_err(),
            KeyringError::Decrypt
        );
        assert_eq!(
            ring.open("prv_1", &s.ciphertext, &s.nonce, 9).unwrap_err(),
            KeyringError::UnknownVersion(9)
        );
    }

    #[test]
    fn a_rotated_keyring_still_opens_old_credentials() {
        let old = MasterKey::generate(1);
        let ring1 = Keyring::new(vec![old.clone()]).unwrap();
        let s = ring1.seal("prv_1", &ProviderSecret::new("sk-old".into()));
        let ring2 = Keyring::parse(&format!(
            "{},{}",
            MasterKey::generate(2).to_spec().as_str(),
            old.to_spec().as_str()
        ))
        .unwrap();
        assert_eq!(ring2.current().version, 2);
        assert_eq!(
            ring2
                .open("prv_1", &s.ciphertext, &s.nonce, 1)
                .unwrap()
                .expose(),
            "sk-old"
        );
        assert_eq!(
            ring2
                .seal("prv_1", &ProviderSecret::new("x".into()))
                .keyring_version,
            2
        );
    }

    #[test]
    fn masks_show_only_a_known_prefix_and_the_last_four() {
        let openai = ProviderSecret::new("sk-proj-0123456789abcd".into());
        assert_eq!(mask(Some(&openai), &openai.last4()), "sk-…abcd");
        let other = ProviderSecret::new("token-0123456789wxyz".into());
        assert_eq!(mask(Some(&other), &other.last4()), "…wxyz");
        assert_eq!(mask(None, "wxyz"), "…wxyz");
    }

    #[test]
    fn passwords_hash_to_argon2id_phc_strings() {
        let phc = hash_password("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        assert!(!phc.contains("correct horse"));
        assert!(verify_password("correct horse battery", &phc));
        assert!(!verify_password("wrong horse battery", &phc));
        assert_ne!(hash_password("correct horse battery").unwrap(), phc);
    }

    #[test]
    fn keyring_specs_are_validated() {
        assert_eq!(Keyring::parse("").unwrap_err(), KeyringError::Empty);
        assert_eq!(
            Keyring::parse("1:abcd").unwrap_err(),
            KeyringError::Malformed(1)
        );
        let k = MasterKey::generate(1).to_spec();
        assert_eq!(
            Keyring::parse(&format!("{},{}", k.as_str(), k.as_str())).unwrap_err(),
            KeyringError::Duplicate(1)
        );
    }
}

/// Keys derived from the keyring for MACing projection snapshots. Its `Debug` prints
/// nothing.
#[derive(Clone)]
pub struct SnapshotMacKeys(Vec<Zeroizing<[u8; 32]>>);

impl SnapshotMacKeys {
    /// The key new snapshots are MACed with.
    pub fn current(&self) -> Option<&[u8; 32]> {
        self.0.first().map(|k| &**k)
    }

    /// Every key a stored snapshot may have been MACed with.
    pub fn all(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.0.iter().map(|k| &**k)
    }
}

impl fmt::Debug for SnapshotMacKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SnapshotMacKeys(..)")
    }
}
