//! The gateway key parser: `crypto::check` and `Secret::parse`.
//!
//! - Both agree on every input, and never panic.
//! - An error's text is one of four fixed sentences, so it never quotes the input.
//! - An independent model of the format (written here, not shared with `src/`) builds a
//!   valid key from the fuzz bytes: the parser accepts it, and refuses every single
//!   character substitution of it, since a CRC32 catches every 8-bit burst.
//! - A parsed secret's `Debug` prints nothing of it.
#![no_main]

use keyward::crypto::{self, SECRET_LEN, SECRET_PREFIX, Secret, SecretError};
use libfuzzer_sys::fuzz_target;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Big-endian base62 of `bytes`, left-padded with '0' to `len` digits, by schoolbook
/// long division one byte at a time.
fn base62(bytes: &[u8], len: usize) -> Vec<u8> {
    let mut num = bytes.to_vec();
    let mut out = vec![b'0'; len];
    for slot in out.iter_mut().rev() {
        let mut rem = 0u32;
        for b in num.iter_mut() {
            let acc = rem * 256 + u32::from(*b);
            *b = (acc / 62) as u8;
            rem = acc % 62;
        }
        *slot = BASE62[rem as usize];
    }
    out
}

fn model_key(raw: &[u8; 32]) -> String {
    let mut s = SECRET_PREFIX.as_bytes().to_vec();
    s.extend(base62(raw, 43));
    let crc = crc32fast::hash(&s);
    s.extend(base62(&crc.to_be_bytes(), 6));
    String::from_utf8(s).unwrap()
}

/// An error's text is one of four fixed sentences: nothing of the input can be in it.
fn assert_quiet(e: &SecretError) {
    let fixed = [
        SecretError::Prefix,
        SecretError::Length,
        SecretError::Alphabet,
        SecretError::Checksum,
    ]
    .map(|v| (v.to_string(), format!("{v:?}")));
    let shown = (e.to_string(), format!("{e:?}"));
    assert!(
        fixed.contains(&shown),
        "an error with input-dependent text: {shown:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    let checked = crypto::check(&input);
    match Secret::parse(&input) {
        Ok(secret) => {
            assert_eq!(checked, Ok(()));
            assert_eq!(secret.expose(), input);
            assert_eq!(input.len(), SECRET_LEN);
            assert_eq!(secret.hash(), crypto::hash_secret(&input));
            assert!(input.starts_with(&secret.display_prefix()));
            assert!(!format!("{secret:?}").contains(&input[SECRET_PREFIX.len()..]));
        }
        Err(e) => {
            assert_eq!(checked, Err(e));
            assert_quiet(&e);
        }
    }

    if data.len() >= 34 {
        let raw: [u8; 32] = data[..32].try_into().unwrap();
        let key = model_key(&raw);
        assert_eq!(key.len(), SECRET_LEN);
        let secret = Secret::parse(&key).expect("a key built by the model parses");
        assert_eq!(secret.expose(), key);

        let pos = SECRET_PREFIX.len() + usize::from(data[32]) % (SECRET_LEN - SECRET_PREFIX.len());
        let mut bent = key.clone().into_bytes();
        let replacement = BASE62[usize::from(data[33]) % 62];
        if bent[pos] != replacement {
            bent[pos] = replacement;
            let bent = String::from_utf8(bent).unwrap();
            assert_eq!(crypto::check(&bent), Err(SecretError::Checksum));
            assert_eq!(Secret::parse(&bent).map(|_| ()), Err(SecretError::Checksum));
        }
    }
});
