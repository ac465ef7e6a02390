//! Configuration: flags and `KEYWARD_*` environment variables (through clap), an optional
//! TOML file, and the embedded defaults. A wrong value stops the start with a message that
//! names the setting.

mod args;
mod file;
mod resolve;

use std::net::SocketAddr;
use std::path::PathBuf;

use chrono::Duration;

use crate::metrics::KeyLabels;

/// The SQLite file a database URL names: [`crate::store::sqlite_path`].
pub use crate::store::sqlite_path;
pub use args::{GlobalArgs, ServeArgs};
pub use resolve::parse_duration;

/// `serve --archive-to URL --retain-usage D`: the scheduled archive.
#[derive(Clone, Debug)]
pub struct ArchiveSchedule {
    pub to: String,
    /// Usage events older than this are archived, in whole segments.
    pub retain: std::time::Duration,
    pub interval: std::time::Duration,
    pub level: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// `--upstream-allow`: the loopback and private ranges a provider may be reached at (the
/// provider layer's egress guard enforces them; link-local and metadata addresses are
/// never allowed, whatever this says).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UpstreamAllow(Vec<ipnet::IpNet>);

impl UpstreamAllow {
    /// CIDRs or single addresses, separated by commas.
    pub fn parse(spec: &str) -> Result<UpstreamAllow, String> {
        let mut allow = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = part
                .parse::<ipnet::IpNet>()
                .or_else(|_| part.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("{part:?} is neither a CIDR such as 10.0.0.0/8 nor an IP"))?;
            allow.push(net.trunc());
        }
        Ok(UpstreamAllow(allow))
    }

    pub fn allowlist(&self) -> &[ipnet::IpNet] {
        &self.0
    }
}

impl std::fmt::Debug for UpstreamAllow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|n| n.to_string()))
            .finish()
    }
}

/// The resolved settings. Its `Debug` prints neither the master keys nor a database
/// password (see the impl below).
#[derive(Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub database_url: String,
    pub master_keys: Option<String>,
    pub log_format: LogFormat,
    pub log: String,
    pub listen: SocketAddr,
    pub max_key_lifetime: Duration,
    /// The most keys one user may hold that are not deleted.
    pub max_keys_per_user: usize,
    pub usage_queue_capacity: usize,
    pub append_batch_max: usize,
    pub body_limit_bytes: usize,
    pub shutdown_grace: std::time::Duration,
    /// A request head must arrive whole within this (and the first request within this
    /// of connecting).
    pub http_header_read_timeout: std::time::Duration,
    /// A connection with nothing in flight is closed this long after its last response.
    pub http_idle_timeout: std::time::Duration,
    /// Open client connections at most; more wait in the accept queue.
    pub max_connections: usize,
    pub upstream_connect_timeout: std::time::Duration,
    pub upstream_first_byte_timeout: std::time::Duration,
    pub upstream_idle_timeout: std::time::Duration,
    /// A provider's answer that keeps coming past this is cut off (504 or a stream error).
    pub upstream_max_duration: std::time::Duration,
    pub auth_failures_per_second: u32,
    pub denied_event_window: std::time::Duration,
    /// How long a console session lasts after sign-in.
    pub session_ttl: std::time::Duration,
    /// Whether `X-Forwarded-Proto: https` marks console cookies `Secure`.
    pub trust_forwarded_proto: bool,
    pub metrics_key_labels: KeyLabels,
    /// Whether an answer waits for its `key.used` to commit.
    pub usage_durability: UsageDurability,
    /// The expiry notice webhook, when one is configured.
    pub notify: Option<NoticeWebhook>,
    /// Loopback and private ranges a provider may be reached at.
    pub upstream_allow: UpstreamAllow,
    /// New events between two projection snapshots; 0 when snapshots are off.
    pub snapshot_every: usize,
    /// Snapshots kept in `<data dir>/snapshots`, the newest; at least 1.
    pub snapshots_keep: usize,
    /// Signed checkpoints: the key, where they go and how often.
    pub checkpoint: CheckpointConfig,
    /// The scheduled archive (`--archive-to`), when one is configured.
    pub archive: Option<ArchiveSchedule>,
    pub allow_broken_chain: bool,
}

/// When a proxied answer may complete relative to the commit of its `key.used`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UsageDurability {
    /// The answer is sent while the event waits in the appender's queue: a crash can lose
    /// the uses of the last few milliseconds (RELIABILITY.md measures how many).
    #[default]
    Async,
    /// A non-streamed answer is sent, and a stream's end (its final event and the end of
    /// its body), only once the event has committed; a failed commit cuts the answer off.
    Durable,
}

/// The checkpoint signer key text. Its `Debug` prints nothing; zeroed on drop.
#[derive(Clone)]
pub struct CheckpointKeyText(zeroize::Zeroizing<String>);

impl CheckpointKeyText {
    pub fn new(s: String) -> Self {
        CheckpointKeyText(zeroize::Zeroizing::new(s))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for CheckpointKeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckpointKeyText(<redacted>)")
    }
}

/// Signed checkpoints (see `crate::checkpoint`).
#[derive(Clone, Debug)]
pub struct CheckpointConfig {
    /// The configured signer key (flag, variable or key file), already checked to parse.
    /// `None`: on SQLite the development key `<data dir>/checkpoint.key` is used (made on
    /// first start); on PostgreSQL no checkpoints are written.
    pub key: Option<CheckpointKeyText>,
    /// The origin line; `None`: the key's name.
    pub origin: Option<String>,
    /// Where checkpoints are written; `None`: none are written (PostgreSQL without
    /// `--checkpoint-dir`).
    pub dir: Option<PathBuf>,
    /// New events that make a checkpoint due.
    pub every: u64,
    /// Time after which a checkpoint is due if the log grew at all.
    pub interval: std::time::Duration,
    /// Where each checkpoint is POSTed, signed like the expiry notices.
    pub witness: Option<Witness>,
}

/// A URL each new checkpoint is POSTed to. Its `Debug` shows only the URL's origin.
#[derive(Clone)]
pub struct Witness {
    pub url: String,
    pub secret: WebhookSecret,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("url", &crate::redact::endpoint(&self.url))
            .field("secret", &self.secret)
            .finish()
    }
}

pub const DEFAULT_CHECKPOINT_EVERY: u64 = 100_000;
pub const DEFAULT_CHECKPOINT_INTERVAL: &str = "60s";

/// The key that signs expiry notices. Its `Debug` prints nothing.
#[derive(Clone)]
pub struct WebhookSecret(zeroize::Zeroizing<String>);

impl WebhookSecret {
    pub fn new(s: String) -> Self {
        WebhookSecret(zeroize::Zeroizing::new(s))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// Where expiry notices go, and when. Its `Debug` shows only the URL's origin: a
/// webhook's path or query often is its secret.
#[derive(Clone)]
pub struct NoticeWebhook {
    pub url: String,
    pub secret: WebhookSecret,
    /// How long before a key stops working its `expiring` notice goes.
    pub within: Duration,
    /// How often the notifier looks for due notices.
    pub interval: std::time::Duration,
}

/// What `Debug` shows of a secret setting: whether it is set, never its value.
fn set_or_not(v: Option<&str>) -> &'static str {
    match v {
        Some(_) => "<redacted>",
        None => "<unset>",
    }
}

impl std::fmt::Debug for NoticeWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoticeWebhook")
            .field("url", &crate::redact::endpoint(&self.url))
            .field("secret", &self.secret)
            .field("within", &self.within)
            .field("interval", &self.interval)
            .finish()
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &crate::redact::database_url(&self.database_url),
            )
            .field("master_keys", &set_or_not(self.master_keys.as_deref()))
            .field("log_format", &self.log_format)
            .field("log", &self.log)
            .field("listen", &self.listen)
            .field("max_key_lifetime", &self.max_key_lifetime)
            .field("notify", &self.notify)
            .field("upstream_allow", &self.upstream_allow)
            .field("snapshot_every", &self.snapshot_every)
            .field("snapshots_keep", &self.snapshots_keep)
            .field("checkpoint", &self.checkpoint)
            .field("allow_broken_chain", &self.allow_broken_chain)
            .finish_non_exhaustive()
    }
}

/// A setting with a wrong value: names the flag, the variable and the file key.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting} (--{flag} / {env} / `{key}` in the config file): {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub flag: &'static str,
    pub env: &'static str,
    pub key: &'static str,
    pub reason: String,
}

fn bad(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    let flag = setting;
    let env: &'static str = match setting {
        "data-dir" => "KEYWARD_DATA_DIR",
        "database-url" => "KEYWARD_DATABASE_URL",
        "master-keys" => "KEYWARD_MASTER_KEYS",
        "log-format" => "KEYWARD_LOG_FORMAT",
        "log" => "KEYWARD_LOG",
        "listen" => "KEYWARD_LISTEN",
        "max-key-lifetime" => "KEYWARD_MAX_KEY_LIFETIME",
        "max-keys-per-user" => "KEYWARD_MAX_KEYS_PER_USER",
        "usage-queue-capacity" => "KEYWARD_USAGE_QUEUE_CAPACITY",
        "append-batch-max" => "KEYWARD_APPEND_BATCH_MAX",
        "body-limit-bytes" => "KEYWARD_BODY_LIMIT_BYTES",
        "shutdown-grace" => "KEYWARD_SHUTDOWN_GRACE",
        "http-header-read-timeout" => "KEYWARD_HTTP_HEADER_READ_TIMEOUT",
        "http-idle-timeout" => "KEYWARD_HTTP_IDLE_TIMEOUT",
        "max-connections" => "KEYWARD_MAX_CONNECTIONS",
        "upstream-connect-timeout" => "KEYWARD_UPSTREAM_CONNECT_TIMEOUT",
        "upstream-first-byte-timeout" => "KEYWARD_UPSTREAM_FIRST_BYTE_TIMEOUT",
        "upstream-idle-timeout" => "KEYWARD_UPSTREAM_IDLE_TIMEOUT",
        "upstream-max-duration" => "KEYWARD_UPSTREAM_MAX_DURATION",
        "auth-failures-per-second" => "KEYWARD_AUTH_FAILURES_PER_SECOND",
        "denied-event-window" => "KEYWARD_DENIED_EVENT_WINDOW",
        "session-ttl" => "KEYWARD_SESSION_TTL",
        "trust-forwarded-proto" => "KEYWARD_TRUST_FORWARDED_PROTO",
        "metrics-key-labels" => "KEYWARD_METRICS_KEY_LABELS",
        "usage-durability" => "KEYWARD_USAGE_DURABILITY",
        "notify-webhook-url" => "KEYWARD_NOTIFY_WEBHOOK_URL",
        "notify-webhook-secret" => "KEYWARD_NOTIFY_WEBHOOK_SECRET",
        "notify-within" => "KEYWARD_NOTIFY_WITHIN",
        "notify-interval" => "KEYWARD_NOTIFY_INTERVAL",
        "upstream-allow" => "KEYWARD_UPSTREAM_ALLOW",
        "snapshot-every" => "KEYWARD_SNAPSHOT_EVERY",
        "snapshots-keep" => "KEYWARD_SNAPSHOTS_KEEP",
        "checkpoint-key" => "KEYWARD_CHECKPOINT_KEY",
        "checkpoint-key-file" => "KEYWARD_CHECKPOINT_KEY_FILE",
        "checkpoint-dir" => "KEYWARD_CHECKPOINT_DIR",
        "checkpoint-origin" => "KEYWARD_CHECKPOINT_ORIGIN",
        "checkpoint-every" => "KEYWARD_CHECKPOINT_EVERY",
        "checkpoint-interval" => "KEYWARD_CHECKPOINT_INTERVAL",
        "checkpoint-witness-url" => "KEYWARD_CHECKPOINT_WITNESS_URL",
        "checkpoint-witness-secret" => "KEYWARD_CHECKPOINT_WITNESS_SECRET",
        "config" => "KEYWARD_CONFIG",
        _ => "",
    };
    let key: &'static str = match setting {
        "data-dir" => "data_dir",
        "database-url" => "database_url",
        "master-keys" => "master_keys",
        "log-format" => "log_format",
        "max-key-lifetime" => "max_key_lifetime",
        "max-keys-per-user" => "max_keys_per_user",
        "usage-queue-capacity" => "usage_queue_capacity",
        "append-batch-max" => "append_batch_max",
        "body-limit-bytes" => "body_limit_bytes",
        "shutdown-grace" => "shutdown_grace",
        "http-header-read-timeout" => "http_header_read_timeout",
        "http-idle-timeout" => "http_idle_timeout",
        "max-connections" => "max_connections",
        "upstream-connect-timeout" => "upstream_connect_timeout",
        "upstream-first-byte-timeout" => "upstream_first_byte_timeout",
        "upstream-idle-timeout" => "upstream_idle_timeout",
        "upstream-max-duration" => "upstream_max_duration",
        "auth-failures-per-second" => "auth_failures_per_second",
        "denied-event-window" => "denied_event_window",
        "session-ttl" => "session_ttl",
        "trust-forwarded-proto" => "trust_forwarded_proto",
        "metrics-key-labels" => "metrics_key_labels",
        "usage-durability" => "usage_durability",
        "notify-webhook-url" => "notify_webhook_url",
        "notify-webhook-secret" => "notify_webhook_secret",
        "notify-within" => "notify_within",
        "notify-interval" => "notify_interval",
        "upstream-allow" => "upstream_allow",
        "snapshot-every" => "snapshot_every",
        "snapshots-keep" => "snapshots_keep",
        "checkpoint-key" => "checkpoint_key",
        "checkpoint-key-file" => "checkpoint_key_file",
        "checkpoint-dir" => "checkpoint_dir",
        "checkpoint-origin" => "checkpoint_origin",
        "checkpoint-every" => "checkpoint_every",
        "checkpoint-interval" => "checkpoint_interval",
        "archive-to" => "archive_to",
        "retain-usage" => "retain_usage",
        "archive-interval" => "archive_interval",
        "archive-segment-level" => "archive_segment_level",
        "checkpoint-witness-url" => "checkpoint_witness_url",
        "checkpoint-witness-secret" => "checkpoint_witness_secret",
        other => other,
    };
    ConfigError {
        setting,
        flag,
        env,
        key,
        reason: reason.into(),
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9090";
/// New events between two snapshots unless configured. An as-of replay folds at most this
/// many events on top of a kept snapshot (about 0.6 s on the reference VM at 100,000, ~6 s
/// at 1,000,000), and a restart after `kill -9` as many.
pub const SNAPSHOT_EVERY_DEFAULT: usize = 100_000;
/// How many snapshots are kept unless configured: with [`SNAPSHOT_EVERY_DEFAULT`], the
/// newest 6.4 million events are answered from a snapshot.
pub const SNAPSHOT_KEEP_DEFAULT: usize = 64;
/// An archive segment's level unless configured: 2^20 = 1,048,576 events a segment.
pub const ARCHIVE_LEVEL_DEFAULT: u8 = 20;
/// The checkpoint directory's default name, in the data dir (SQLite).
pub const CHECKPOINT_DIR: &str = "checkpoints";
pub const DEFAULT_DATA_DIR: &str = "./keyward-data";

impl Config {
    /// The SQLite file the URL names, if the store is SQLite.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        sqlite_path(&self.database_url)
    }
}
