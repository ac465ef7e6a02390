//! The console's server-side state on this node: its sessions (by the hash of their token)
//! and the sign-in throttles. No HTML here: the pages, cookies and extractors are in
//! `crate::ui`; `App` holds this, so it sits in `http`, which imports nothing of `ui`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::config::Config;

const MAX_SESSIONS: usize = 100_000;
/// Sessions one user may hold on a node; a new sign-in past it ends their oldest.
const MAX_SESSIONS_PER_USER: usize = 32;

/// A random token, hex: 256 bits from the OS RNG.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

pub(crate) fn hash_token(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// Equal in constant time (for equal lengths; the length of a token is not a secret).
pub fn tokens_match(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A tag of the user's stored password at sign-in (its sealed ciphertext, which a new
/// password always changes): a new password ends the session.
pub(crate) fn password_tag(phc: Option<&str>) -> [u8; 32] {
    *blake3::hash(phc.unwrap_or("").as_bytes()).as_bytes()
}

pub(crate) struct Session {
    pub(crate) user_id: String,
    pub(crate) csrf: String,
    pub(crate) password_tag: [u8; 32],
    pub(crate) expires: Instant,
}

/// The console's server-side state on this node.
pub struct Console {
    pub(crate) sessions: Mutex<HashMap<[u8; 32], Session>>,
    ttl: Duration,
    pub(crate) trust_forwarded_proto: bool,
    /// Sign-in and set-up attempts per client (an IPv4 address or an IPv6 /64).
    by_client: Cells<Option<IpAddr>>,
    /// Sign-in attempts per (username, client): a guesser from one place locks out only
    /// that pair, never the user everywhere. The username is held as a keyed hash.
    by_user: Cells<([u8; 16], Option<IpAddr>)>,
    /// Keys the username hashes above and the fingerprints in log lines. Random per
    /// process: a fingerprint cannot be looked up in a table of common names.
    name_key: [u8; 32],
    /// argon2 runs (sign-in checks, set-up hashes) at once: one per core.
    password_work: Arc<tokio::sync::Semaphore>,
}

/// Sign-in attempts allowed per username and client: 5 at once, then one a minute.
const USER_BURST: u32 = 5;
const USER_PERIOD: Duration = Duration::from_secs(60);
/// Per client (an office behind one NAT signs in together): 20, then one every 3 s.
const CLIENT_BURST: u32 = 20;
const CLIENT_PERIOD: Duration = Duration::from_secs(3);
/// The most clients and (username, client) pairs tracked at once. Each entry is a few
/// dozen bytes; past the cap, once the entries that have refilled are dropped, a new
/// client is refused until one ages out (at most `burst × period` after its last attempt).
const CELLS_MAX: usize = 65_536;
/// How long a sign-in waits for a free argon2 slot before it is told to come back.
const PASSWORD_WORK_WAIT: Duration = Duration::from_secs(2);

/// What a throttle says about one more attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Refused; `log` is true for the first refusal of a run, so that a flood of refused
    /// attempts writes one log line, not one each.
    No {
        log: bool,
    },
}

struct Cell {
    /// GCRA's theoretical arrival time: the bucket is full again at `tat`.
    tat: Instant,
    refused: bool,
}

/// A keyed GCRA throttle with a hard cap on its entries. An entry whose bucket has
/// refilled says nothing a fresh one would not, so it is dropped on the next sweep (at
/// most a minute later, or at once when the table is full).
struct Cells<K> {
    /// The entries, when they were last swept, and whether "full" was logged since.
    map: Mutex<(HashMap<K, Cell>, Instant, bool)>,
    period: Duration,
    /// How far ahead of now `tat` may be and still admit: `period × (burst - 1)`.
    tolerance: Duration,
    cap: usize,
}

const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl<K: std::hash::Hash + Eq> Cells<K> {
    fn new(period: Duration, burst: u32, cap: usize) -> Cells<K> {
        Cells {
            map: Mutex::new((HashMap::new(), Instant::now(), false)),
            period,
            tolerance: period.saturating_mul(burst.saturating_sub(1)),
            cap,
        }
    }

    fn check(&self, key: K, now: Instant) -> Admit {
        let mut guard = self.map.lock();
        let (map, swept, told) = &mut *guard;
        if map.len() >= self.cap || now.saturating_duration_since(*swept) >= SWEEP_EVERY {
            map.retain(|_, c| c.tat > now);
            *swept = now;
            *told = false;
        }
        if map.len() >= self.cap && !map.contains_key(&key) {
            if !*told {
                *told = true;
                tracing::warn!(
                    entries = map.len(),
                    "a console sign-in throttle table is full: new clients are refused until entries age out"
                );
            }
            return Admit::No { log: false };
        }
        let cell = map.entry(key).or_insert(Cell {
            tat: now,
            refused: false,
        });
        let tat = cell.tat.max(now);
        if tat.saturating_duration_since(now) > self.tolerance {
            let log = !cell.refused;
            cell.refused = true;
            return Admit::No { log };
        }
        cell.tat = tat + self.period;
        cell.refused = false;
        Admit::Yes
    }

    fn forget(&self, key: &K) {
        self.map.lock().0.remove(key);
    }

    fn len(&self) -> usize {
        self.map.lock().0.len()
    }
}

/// The client a throttle counts: the address, with IPv6 grouped by /64 as the proxy does.
fn client_of(ip: Option<IpAddr>) -> Option<IpAddr> {
    ip.map(crate::http::proxy::limits::client_prefix)
}

/// Refused for lack of a free argon2 slot: the caller answers 503 and asks for a retry.
#[derive(Debug)]
pub struct Busy;

impl Console {
    pub fn new(config: &Config) -> Console {
        let mut name_key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut name_key);
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Console {
            sessions: Mutex::new(HashMap::new()),
            ttl: config.session_ttl,
            trust_forwarded_proto: config.trust_forwarded_proto,
            by_client: Cells::new(CLIENT_PERIOD, CLIENT_BURST, CELLS_MAX),
            by_user: Cells::new(USER_PERIOD, USER_BURST, CELLS_MAX),
            name_key,
            password_work: Arc::new(tokio::sync::Semaphore::new(cores.max(1))),
        }
    }

    /// Whether one more sign-in or set-up attempt from this client may be looked at.
    /// Checked first, before anything about the attempt is stored.
    pub fn admit_client(&self, ip: Option<IpAddr>) -> Admit {
        self.by_client.check(client_of(ip), Instant::now())
    }

    /// Whether one more sign-in attempt for `username` from this client may be checked.
    pub fn admit_user(&self, username: &str, ip: Option<IpAddr>) -> Admit {
        self.by_user
            .check((self.name_hash(username), client_of(ip)), Instant::now())
    }

    /// A successful sign-in clears its own (username, client) count.
    pub fn signed_in(&self, username: &str, ip: Option<IpAddr>) {
        self.by_user
            .forget(&(self.name_hash(username), client_of(ip)));
    }

    fn name_hash(&self, username: &str) -> [u8; 16] {
        let h = blake3::keyed_hash(&self.name_key, username.to_lowercase().as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.as_bytes()[..16]);
        out
    }

    /// What a log line says about a username that is not a known user's: 12 hex digits
    /// of a keyed hash. The same name gives the same fingerprint in this process, so the
    /// attempts on one name can be told apart from a spray, but the name (perhaps a
    /// password typed in the wrong field) is not in the log, nor can a name forge a line.
    pub fn fingerprint(&self, username: &str) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.name_key);
        h.update(b"log fingerprint\0");
        h.update(username.to_lowercase().as_bytes());
        hex::encode(&h.finalize().as_bytes()[..6])
    }

    /// What `user.signed_in` and `user.signed_out` record of a session: 16 hex digits of a
    /// hash of its token keyed with this process's secret. The two events of one session
    /// carry the same label; the label cannot be turned back into the token, nor a token
    /// guessed from it.
    pub fn session_label(&self, token: &str) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.name_key);
        h.update(b"session label\0");
        h.update(token.as_bytes());
        hex::encode(&h.finalize().as_bytes()[..8])
    }

    /// Entries in the (client, (username, client)) throttle tables (for tests and
    /// operators).
    pub fn throttle_entries(&self) -> (usize, usize) {
        (self.by_client.len(), self.by_user.len())
    }

    /// The argon2 slots (for tests and operators: a test holds them all to show what a
    /// sign-in does when they are taken).
    pub fn password_slots(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.password_work
    }

    /// Runs argon2 work off the async runtime, at most one per core at once. A caller
    /// waits up to two seconds for a slot, then gets [`Busy`]: work beyond what the
    /// cores can do only grows a queue.
    pub async fn password_work<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let permit = tokio::time::timeout(
            PASSWORD_WORK_WAIT,
            self.password_work.clone().acquire_owned(),
        )
        .await
        .map_err(|_| Busy)?
        .map_err(|_| Busy)?;
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|_| Busy)?;
        Ok(out)
    }

    /// Starts a session; returns the cookie value, which is never stored.
    pub fn create(&self, user_id: &str, password_hash: Option<&str>) -> String {
        let token = random_token();
        let now = Instant::now();
        let mut s = self.sessions.lock();
        if s.len() >= MAX_SESSIONS {
            s.retain(|_, v| v.expires > now);
        }
        // One user signing in again and again (a script, a shared account) holds at most
        // MAX_SESSIONS_PER_USER; the table as a whole at most MAX_SESSIONS, the session
        // closest to its end giving way.
        let theirs = s.iter().filter(|(_, v)| v.user_id == user_id);
        let evict = if theirs.clone().count() >= MAX_SESSIONS_PER_USER {
            theirs.min_by_key(|(_, v)| v.expires).map(|(k, _)| *k)
        } else if s.len() >= MAX_SESSIONS {
            s.iter().min_by_key(|(_, v)| v.expires).map(|(k, _)| *k)
        } else {
            None
        };
        if let Some(k) = evict {
            s.remove(&k);
        }
        s.insert(
            hash_token(&token),
            Session {
                user_id: user_id.to_owned(),
                csrf: random_token(),
                password_tag: password_tag(password_hash),
                expires: now + self.ttl,
            },
        );
        token
    }

    pub fn destroy(&self, token: &str) {
        self.sessions.lock().remove(&hash_token(token));
    }

    /// How many sessions this node holds for a user (for tests and operators).
    pub fn sessions_of(&self, user_id: &str) -> usize {
        let now = Instant::now();
        self.sessions
            .lock()
            .values()
            .filter(|s| s.user_id == user_id && s.expires > now)
            .count()
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_table_has_a_hard_cap_and_forgets_refilled_entries() {
        let cells: Cells<u32> = Cells::new(Duration::from_secs(3), 2, 3);
        let t0 = Instant::now();
        for k in 0..3 {
            assert_eq!(cells.check(k, t0), Admit::Yes);
        }
        // Full of live entries: a fourth client is refused, the known ones go on.
        assert_eq!(cells.check(3, t0), Admit::No { log: false });
        assert_eq!(cells.check(0, t0), Admit::Yes);
        assert_eq!(cells.check(0, t0), Admit::No { log: true });
        assert_eq!(cells.check(0, t0), Admit::No { log: false });
        assert_eq!(cells.len(), 3);
        // Once their buckets refill the entries say nothing and make room.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(cells.check(3, later), Admit::Yes);
        assert_eq!(cells.len(), 1);
        // Left alone, entries are swept within a minute whatever the table's size.
        let much_later = later + SWEEP_EVERY;
        assert_eq!(cells.check(4, much_later), Admit::Yes);
        assert_eq!(cells.len(), 1);
    }

    #[test]
    fn one_user_holds_a_bounded_number_of_sessions() {
        let config = Config::resolve(
            &crate::config::GlobalArgs::default(),
            &crate::config::ServeArgs::default(),
        )
        .unwrap();
        let c = Console::new(&config);
        let first = c.create("usr_1", None);
        for _ in 0..(MAX_SESSIONS_PER_USER + 8) {
            c.create("usr_1", None);
        }
        c.create("usr_2", None);
        assert_eq!(c.sessions_of("usr_1"), MAX_SESSIONS_PER_USER);
        assert_eq!(c.sessions_of("usr_2"), 1);
        // The oldest gave way.
        assert!(!c.sessions.lock().contains_key(&hash_token(&first)));
    }

    #[test]
    fn fingerprints_hide_the_name_and_tell_names_apart() {
        let config = Config::resolve(
            &crate::config::GlobalArgs::default(),
            &crate::config::ServeArgs::default(),
        )
        .unwrap();
        let c = Console::new(&config);
        let fp = c.fingerprint("Alice");
        assert_eq!(fp.len(), 12);
        assert!(fp.chars().all(|ch| ch.is_ascii_hexdigit()));
        assert_eq!(fp, c.fingerprint("alice"));
        assert_ne!(fp, c.fingerprint("alice2"));
        // Keyed per process: another node (or a restart) gives another fingerprint.
        assert_ne!(fp, Console::new(&config).fingerprint("alice"));
    }
}
