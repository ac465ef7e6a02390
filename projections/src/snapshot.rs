//! A compact binary image of [`State`], so that a start can load the projections as of a
//! seq instead of folding the whole log.
//!
//! The image is a plain description of every record, encoded with postcard (varints, no
//! field names). The indexes (the auth index by secret hash, users by name) are stored as
//! what they hold rather than rebuilt by rule, so a decoded state is equal to the folded
//! one even where the log did something odd (two keys with one hash, a reused username).
//! The `Arc` sharing between a key's two index entries is rebuilt on load.
//!
//! What is deliberately not here: whether the image belongs to a given log, and whether
//! anyone tampered with it. The head it carries is checked against the chain, and the
//! bytes are MACed, by the service that stores it (`src/snapshot.rs`).
//!
//! Unit enums (scope, role, provider kind, expiry reason, notice kind) are written as
//! their variant index: reordering one of them changes the format, so [`FORMAT`] must be
//! bumped, which makes every older image unreadable and the next start fold the log. A
//! test pins those indexes.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{Datelike, NaiveDate};
use keyward_events::time::{self, Timestamp};
use keyward_events::{
    ExpireReason, Hash32, Head, NoticeKind, ProviderKind, Quota, RateLimit, Role, Scope,
    SealedPassword,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::keys::{ByHash, ById, History, Interner, Settings};
use crate::usage::KeyUsage;
use crate::users::StoredPassword;
use crate::{
    DayCounters, KeyRecord, ProviderRecord, SealedCredential, State, UsageTotals, UserRecord,
    Verification,
};

/// The version of the image's layout. Bump it on any change to the structs below or to
/// the order of the enums they carry.
pub const FORMAT: u32 = 2;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SnapshotError {
    #[error("snapshot format {found} is not the supported format {FORMAT}")]
    Format { found: u32 },
    #[error("the snapshot does not decode: {0}")]
    Decode(String),
}

impl State {
    /// The image of this state; [`State::from_snapshot`] gives back an equal state.
    pub fn to_snapshot(&self) -> Vec<u8> {
        let image = Image {
            format: FORMAT,
            head_seq: self.head.seq,
            head_hash: self.head.hash.0,
            keys: self
                .keys
                .by_id
                .iter()
                .map(|k| {
                    let indexed = self
                        .keys
                        .by_hash
                        .get(&k.0.secret_hash)
                        .is_some_and(|h| Arc::ptr_eq(&h.0, &k.0));
                    KeyImage::from_record(&k.0, indexed)
                })
                .collect(),
            usage: self
                .usage
                .by_key
                .iter()
                .map(|(id, u)| UsageImage::from_usage(id, u))
                .collect(),
            providers: self
                .providers
                .by_id
                .values()
                .map(|p| ProviderImage::from_record(p))
                .collect(),
            users: self
                .users
                .by_id
                .values()
                .map(|u| UserImage::from_record(u))
                .collect(),
            usernames: self
                .users
                .by_username
                .iter()
                .map(|(n, id)| (Cow::Borrowed(n.as_str()), Cow::Borrowed(id.as_str())))
                .collect(),
        };
        // Serialising into a Vec fails only on types postcard cannot represent, and every
        // type above is one it can.
        postcard::to_stdvec(&image).unwrap_or_default()
    }

    /// Decodes an image written by [`State::to_snapshot`] with the same [`FORMAT`].
    pub fn from_snapshot(bytes: &[u8]) -> Result<State, SnapshotError> {
        // The format is the first field: read it alone so that an image of another format
        // is named as such rather than reported as garbage.
        let (found, _) = postcard::take_from_bytes::<u32>(bytes)
            .map_err(|e| SnapshotError::Decode(e.to_string()))?;
        if found != FORMAT {
            return Err(SnapshotError::Format { found });
        }
        let image: Image<'_> =
            postcard::from_bytes(bytes).map_err(|e| SnapshotError::Decode(e.to_string()))?;
        let bad = |what: &str| SnapshotError::Decode(what.to_owned());
        let mut state = State {
            head: Head {
                seq: image.head_seq,
                hash: Hash32(image.head_hash),
            },
            ..State::default()
        };
        state.keys.by_id.reserve(image.keys.len());
        for k in image.keys {
            let indexed = k.indexed;
            let rec = k
                .into_record(&mut state.keys.interner)
                .ok_or_else(|| bad("a key record"))?;
            let rec = Arc::new(rec);
            if indexed {
                state.keys.by_hash.insert(ByHash(Arc::clone(&rec)));
            }
            state.keys.by_id.insert(ById(rec));
        }
        state.usage.by_key.reserve(image.usage.len());
        for u in image.usage {
            let (id, usage) = u.into_usage().ok_or_else(|| bad("a usage record"))?;
            state.usage.by_key.insert(id, usage);
        }
        for p in image.providers {
            let rec = p.into_record().ok_or_else(|| bad("a provider record"))?;
            state
                .providers
                .by_id
                .insert(rec.provider_id.clone(), Arc::new(rec));
        }
        for u in image.users {
            let rec = u.into_record().ok_or_else(|| bad("a user record"))?;
            state.users.by_id.insert(rec.user_id.clone(), Arc::new(rec));
        }
        for (name, id) in image.usernames {
            state
                .users
                .by_username
                .insert(name.into_owned(), id.into_owned());
        }
        Ok(state)
    }
}

fn ts(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

fn from_ts(us: i64) -> Option<Timestamp> {
    time::from_micros(us)
}

/// A JSON object as its text: postcard cannot carry a self-describing `Value`.
fn json_text(m: &Map<String, Value>) -> String {
    if m.is_empty() {
        return String::new();
    }
    serde_json::to_string(m).unwrap_or_default()
}

fn from_json_text(s: &str) -> Option<Map<String, Value>> {
    if s.is_empty() {
        return Some(Map::new());
    }
    serde_json::from_str(s).ok()
}

#[derive(Serialize, Deserialize)]
struct Image<'a> {
    format: u32,
    head_seq: u64,
    head_hash: [u8; 32],
    keys: Vec<KeyImage<'a>>,
    usage: Vec<UsageImage<'a>>,
    providers: Vec<ProviderImage<'a>>,
    users: Vec<UserImage<'a>>,
    usernames: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

#[derive(Serialize, Deserialize)]
struct KeyImage<'a> {
    key_id: Cow<'a, str>,
    name: Cow<'a, str>,
    owner_id: Cow<'a, str>,
    provider_ids: Cow<'a, [String]>,
    secret_hash: [u8; 32],
    /// Whether this record holds the auth index entry for its hash.
    indexed: bool,
    prefix: Cow<'a, str>,
    expires_at: i64,
    scopes: Cow<'a, [Scope]>,
    models: Cow<'a, [String]>,
    rate_limit: Option<(u32, u32)>,
    quota: Option<[Option<u64>; 4]>,
    ip_allowlist: Cow<'a, [String]>,
    metadata: String,
    created_at: i64,
    created_by: Cow<'a, str>,
    updated_at: i64,
    rotated_from: Option<Cow<'a, str>>,
    rotated_to: Option<Cow<'a, str>>,
    grace_until: Option<i64>,
    expired: Option<(ExpireReason, i64)>,
    deleted_at: Option<i64>,
    notices: Vec<(NoticeKind, i64)>,
    version: u64,
}

impl<'a> KeyImage<'a> {
    fn from_record(k: &'a KeyRecord, indexed: bool) -> Self {
        KeyImage {
            key_id: Cow::Borrowed(k.key_id()),
            name: Cow::Borrowed(k.name()),
            owner_id: Cow::Borrowed(k.owner_id()),
            provider_ids: Cow::Borrowed(&k.provider_ids),
            secret_hash: k.secret_hash.0,
            indexed,
            prefix: Cow::Borrowed(k.prefix()),
            expires_at: ts(k.expires_at),
            scopes: Cow::Borrowed(k.scopes()),
            models: Cow::Borrowed(k.models()),
            rate_limit: k.rate_limit.map(|r| (r.requests_per_minute, r.burst)),
            quota: k.quota().map(|q| {
                [
                    q.requests_per_day,
                    q.requests_per_month,
                    q.tokens_per_day,
                    q.tokens_per_month,
                ]
            }),
            ip_allowlist: Cow::Borrowed(k.ip_allowlist()),
            metadata: json_text(k.metadata()),
            created_at: ts(k.created_at),
            created_by: Cow::Borrowed(k.created_by()),
            updated_at: ts(k.updated_at),
            rotated_from: k.rotated_from().map(Cow::Borrowed),
            rotated_to: k.rotated_to().map(Cow::Borrowed),
            grace_until: k.grace_until().map(ts),
            expired: k.expired().map(|(r, t)| (r, ts(t))),
            deleted_at: k.deleted_at().map(ts),
            notices: k.notices().iter().map(|(n, t)| (*n, ts(*t))).collect(),
            version: k.version,
        }
    }

    /// Shares the repeated values through `interner`, as the fold does.
    fn into_record(self, interner: &mut Interner) -> Option<KeyRecord> {
        let opt_ts = |t: Option<i64>| t.map(from_ts).map_or(Some(None), |t| t.map(Some));
        let settings = Settings {
            models: self.models.into_owned(),
            quota: self.quota.map(|[rd, rm, td, tm]| Quota {
                requests_per_day: rd,
                requests_per_month: rm,
                tokens_per_day: td,
                tokens_per_month: tm,
            }),
            ip_allowlist: self.ip_allowlist.into_owned(),
            metadata: from_json_text(&self.metadata)?,
        };
        let history = History {
            rotated_from: self.rotated_from.map(Cow::into_owned),
            rotated_to: self.rotated_to.map(Cow::into_owned),
            grace_until: opt_ts(self.grace_until)?,
            expired: match self.expired {
                Some((r, t)) => Some((r, from_ts(t)?)),
                None => None,
            },
            deleted_at: opt_ts(self.deleted_at)?,
            notices: self
                .notices
                .into_iter()
                .map(|(n, t)| from_ts(t).map(|t| (n, t)))
                .collect::<Option<_>>()?,
        };
        Some(KeyRecord {
            key_id: self.key_id.into(),
            name: self.name.into(),
            owner_id: interner.str(&self.owner_id),
            provider_ids: interner.ids(&self.provider_ids),
            secret_hash: Hash32(self.secret_hash),
            prefix: self.prefix.into(),
            expires_at: from_ts(self.expires_at)?,
            scopes: interner.scopes(&self.scopes),
            rate_limit: self
                .rate_limit
                .map(|(requests_per_minute, burst)| RateLimit {
                    requests_per_minute,
                    burst,
                }),
            created_at: from_ts(self.created_at)?,
            created_by: interner.str(&self.created_by),
            updated_at: from_ts(self.updated_at)?,
            settings: settings.boxed(),
            history: history.boxed(),
            version: self.version,
        })
    }
}

type Counters = [u64; 5];

fn counters(c: &DayCounters) -> Counters {
    [
        c.requests,
        c.errors,
        c.denied,
        c.prompt_tokens,
        c.completion_tokens,
    ]
}

fn from_counters(c: Counters) -> DayCounters {
    let [requests, errors, denied, prompt_tokens, completion_tokens] = c;
    DayCounters {
        requests,
        errors,
        denied,
        prompt_tokens,
        completion_tokens,
    }
}

#[derive(Serialize, Deserialize)]
struct UsageImage<'a> {
    key_id: Cow<'a, str>,
    /// requests, errors, denied, prompt tokens, completion tokens, grace requests
    totals: [u64; 6],
    last_used_at: Option<i64>,
    grace_last_used_at: Option<i64>,
    /// Days since the common era.
    days: Vec<(i32, Counters)>,
    months: Vec<((i32, u32), Counters)>,
}

impl<'a> UsageImage<'a> {
    fn from_usage(key_id: &'a str, u: &KeyUsage) -> Self {
        let t = &u.totals;
        UsageImage {
            key_id: Cow::Borrowed(key_id),
            totals: [
                t.requests,
                t.errors,
                t.denied,
                t.prompt_tokens,
                t.completion_tokens,
                t.grace_requests,
            ],
            last_used_at: t.last_used_at.map(ts),
            grace_last_used_at: t.grace_last_used_at.map(ts),
            days: u
                .days
                .iter()
                .map(|(d, c)| (d.num_days_from_ce(), counters(c)))
                .collect(),
            months: u.months.iter().map(|(m, c)| (*m, counters(c))).collect(),
        }
    }

    fn into_usage(self) -> Option<(String, KeyUsage)> {
        let [
            requests,
            errors,
            denied,
            prompt_tokens,
            completion_tokens,
            grace_requests,
        ] = self.totals;
        let opt_ts = |t: Option<i64>| t.map(from_ts).map_or(Some(None), |t| t.map(Some));
        let mut days = Vec::with_capacity(self.days.len());
        for (d, c) in self.days {
            days.push((NaiveDate::from_num_days_from_ce_opt(d)?, from_counters(c)));
        }
        let months = self
            .months
            .into_iter()
            .map(|(m, c)| (m, from_counters(c)))
            .collect();
        Some((
            self.key_id.into_owned(),
            KeyUsage {
                totals: UsageTotals {
                    requests,
                    errors,
                    denied,
                    prompt_tokens,
                    completion_tokens,
                    last_used_at: opt_ts(self.last_used_at)?,
                    grace_requests,
                    grace_last_used_at: opt_ts(self.grace_last_used_at)?,
                },
                days,
                months,
            },
        ))
    }
}

#[derive(Serialize, Deserialize)]
struct CredentialImage<'a> {
    ciphertext: Cow<'a, str>,
    nonce: Cow<'a, str>,
    keyring_version: u32,
    fingerprint: Cow<'a, str>,
    last4: Cow<'a, str>,
    updated_at: i64,
}

#[derive(Serialize, Deserialize)]
struct VerificationImage<'a> {
    ok: bool,
    status: Option<u16>,
    detail: Option<Cow<'a, str>>,
    at: i64,
}

#[derive(Serialize, Deserialize)]
struct ProviderImage<'a> {
    provider_id: Cow<'a, str>,
    name: Cow<'a, str>,
    kind: ProviderKind,
    base_url: Cow<'a, str>,
    config: String,
    models: Cow<'a, [String]>,
    credential: Option<CredentialImage<'a>>,
    verification: Option<VerificationImage<'a>>,
    created_at: i64,
    updated_at: i64,
    deleted_at: Option<i64>,
    version: u64,
}

impl<'a> ProviderImage<'a> {
    fn from_record(p: &'a ProviderRecord) -> Self {
        ProviderImage {
            provider_id: Cow::Borrowed(&p.provider_id),
            name: Cow::Borrowed(&p.name),
            kind: p.kind,
            base_url: Cow::Borrowed(&p.base_url),
            config: json_text(&p.config),
            models: Cow::Borrowed(&p.models),
            credential: p.credential.as_ref().map(|c| CredentialImage {
                ciphertext: Cow::Borrowed(&c.ciphertext),
                nonce: Cow::Borrowed(&c.nonce),
                keyring_version: c.keyring_version,
                fingerprint: Cow::Borrowed(&c.fingerprint),
                last4: Cow::Borrowed(&c.last4),
                updated_at: ts(c.updated_at),
            }),
            verification: p.verification.as_ref().map(|v| VerificationImage {
                ok: v.ok,
                status: v.status,
                detail: v.detail.as_deref().map(Cow::Borrowed),
                at: ts(v.at),
            }),
            created_at: ts(p.created_at),
            updated_at: ts(p.updated_at),
            deleted_at: p.deleted_at.map(ts),
            version: p.version,
        }
    }

    fn into_record(self) -> Option<ProviderRecord> {
        let credential = match self.credential {
            Some(c) => Some(SealedCredential {
                ciphertext: c.ciphertext.into_owned(),
                nonce: c.nonce.into_owned(),
                keyring_version: c.keyring_version,
                fingerprint: c.fingerprint.into_owned(),
                last4: c.last4.into_owned(),
                updated_at: from_ts(c.updated_at)?,
            }),
            None => None,
        };
        let verification = match self.verification {
            Some(v) => Some(Verification {
                ok: v.ok,
                status: v.status,
                detail: v.detail.map(Cow::into_owned),
                at: from_ts(v.at)?,
            }),
            None => None,
        };
        Some(ProviderRecord {
            provider_id: self.provider_id.into_owned(),
            name: self.name.into_owned(),
            kind: self.kind,
            base_url: self.base_url.into_owned(),
            config: from_json_text(&self.config)?,
            models: self.models.into_owned(),
            credential,
            verification,
            created_at: from_ts(self.created_at)?,
            updated_at: from_ts(self.updated_at)?,
            deleted_at: match self.deleted_at {
                Some(t) => Some(from_ts(t)?),
                None => None,
            },
            version: self.version,
        })
    }
}

/// A user's password in the image; written by variant index, like the enums above.
#[derive(Serialize, Deserialize)]
enum PasswordImage<'a> {
    Sealed {
        ciphertext: Cow<'a, str>,
        nonce: Cow<'a, str>,
        keyring_version: u32,
    },
    Legacy(Cow<'a, str>),
}

#[derive(Serialize, Deserialize)]
struct UserImage<'a> {
    user_id: Cow<'a, str>,
    username: Cow<'a, str>,
    role: Role,
    password: Option<PasswordImage<'a>>,
    disabled: bool,
    created_at: i64,
    updated_at: i64,
    version: u64,
}

impl<'a> UserImage<'a> {
    fn from_record(u: &'a UserRecord) -> Self {
        UserImage {
            user_id: Cow::Borrowed(&u.user_id),
            username: Cow::Borrowed(&u.username),
            role: u.role,
            password: u.password.as_ref().map(|p| match p {
                StoredPassword::Sealed(s) => PasswordImage::Sealed {
                    ciphertext: Cow::Borrowed(&s.ciphertext),
                    nonce: Cow::Borrowed(&s.nonce),
                    keyring_version: s.keyring_version,
                },
                StoredPassword::Legacy(phc) => PasswordImage::Legacy(Cow::Borrowed(phc)),
            }),
            disabled: u.disabled,
            created_at: ts(u.created_at),
            updated_at: ts(u.updated_at),
            version: u.version,
        }
    }

    fn into_record(self) -> Option<UserRecord> {
        Some(UserRecord {
            user_id: self.user_id.into_owned(),
            username: self.username.into_owned(),
            role: self.role,
            password: self.password.map(|p| match p {
                PasswordImage::Sealed {
                    ciphertext,
                    nonce,
                    keyring_version,
                } => StoredPassword::Sealed(SealedPassword {
                    ciphertext: ciphertext.into_owned(),
                    nonce: nonce.into_owned(),
                    keyring_version,
                }),
                PasswordImage::Legacy(phc) => StoredPassword::Legacy(phc.into_owned()),
            }),
            disabled: self.disabled,
            created_at: from_ts(self.created_at)?,
            updated_at: from_ts(self.updated_at)?,
            version: self.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The image writes these enums as their variant index: a reordering must bump FORMAT.
    #[test]
    fn enum_indexes_are_pinned() {
        fn idx<T: Serialize>(v: T) -> u8 {
            postcard::to_stdvec(&v).unwrap()[0]
        }
        let got = [
            idx(Scope::Read),
            idx(Scope::Chat),
            idx(Scope::Full),
            idx(Role::Admin),
            idx(Role::User),
            idx(ProviderKind::Openai),
            idx(ProviderKind::AzureOpenai),
            idx(ProviderKind::Anthropic),
            idx(ProviderKind::Gemini),
            idx(ProviderKind::Groq),
            idx(ProviderKind::OpenaiCompatible),
            idx(ProviderKind::Bedrock),
            idx(ProviderKind::Vertex),
            idx(ExpireReason::Manual),
            idx(ExpireReason::Scheduled),
            idx(ExpireReason::Rotated),
            idx(ExpireReason::OwnerDisabled),
            idx(NoticeKind::Expiring),
            idx(NoticeKind::Expired),
            idx(NoticeKind::GraceInUse),
        ];
        assert_eq!(
            got,
            [0, 1, 2, 0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 0, 1, 2],
            "an enum in the snapshot changed order: bump snapshot::FORMAT"
        );
    }

    /// The fold shares an owner, creator, provider list and scope list among the keys that
    /// have them; a loaded image must too, or a restart would take more memory.
    #[test]
    fn repeated_values_are_shared_after_a_load() {
        use keyward_events::{Envelope, Event, ExpectedVersion, KeyCreated, NewEvent};

        let now = chrono::Utc::now();
        let mut envs: Vec<Envelope> = Vec::new();
        for id in ["key_a", "key_b"] {
            let e = Event::KeyCreated(KeyCreated {
                key_id: id.into(),
                name: id.into(),
                owner_id: "usr_a".into(),
                provider_ids: vec!["prv_a".into(), "prv_b".into()],
                secret_hash: Hash32([id.as_bytes()[4]; 32]).to_hex(),
                prefix: "kw_x".into(),
                expires_at: now,
                scopes: vec![Scope::Chat, Scope::Read],
                models: vec![],
                rate_limit: None,
                quota: None,
                ip_allowlist: vec![],
                metadata: Map::new(),
                rotated_from: None,
            });
            let prev = envs.last().map_or(Hash32::ZERO, |e| e.hash);
            let seq = envs.len() as u64 + 1;
            envs.push(
                NewEvent::new(&e, ExpectedVersion::Any, now, "usr_admin", None).seal(seq, 1, prev),
            );
        }
        let mut folded = State::default();
        folded.apply_all(&envs).unwrap();
        let loaded = State::from_snapshot(&folded.to_snapshot()).unwrap();
        assert_eq!(loaded, folded);
        for s in [&folded, &loaded] {
            let (a, b) = (s.keys.get("key_a").unwrap(), s.keys.get("key_b").unwrap());
            assert!(Arc::ptr_eq(&a.owner_id, &b.owner_id));
            assert!(Arc::ptr_eq(&a.created_by, &b.created_by));
            assert!(Arc::ptr_eq(&a.provider_ids, &b.provider_ids));
            assert!(Arc::ptr_eq(&a.scopes, &b.scopes));
        }
    }

    #[test]
    fn an_empty_state_round_trips() {
        let s = State::default();
        assert_eq!(State::from_snapshot(&s.to_snapshot()).unwrap(), s);
    }

    #[test]
    fn another_format_is_named() {
        let mut b = State::default().to_snapshot();
        b[0] = 9;
        assert_eq!(
            State::from_snapshot(&b),
            Err(SnapshotError::Format { found: 9 })
        );
    }

    #[test]
    fn a_truncated_image_is_refused() {
        let b = State::default().to_snapshot();
        assert!(matches!(
            State::from_snapshot(&b[..b.len() - 1]),
            Err(SnapshotError::Decode(_))
        ));
    }
}
