//! Configuration: flags and `KEYWARD_*` environment variables (through clap), an optional
//! TOML file, and the embedded defaults. A wrong value stops the start with a message that
//! names the setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::Duration;
use serde::Deserialize;

use crate::metrics::KeyLabels;

/// Settings every subcommand shares. Flags win over the environment, which clap folds
/// into the same fields, and both win over the TOML file. Its `Debug` prints neither the
/// master keys nor a database password.
#[derive(Clone, Default, clap::Args)]
pub struct GlobalArgs {
    /// An optional TOML file with any of the settings below.
    #[arg(long, env = "KEYWARD_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Where the embedded database, the development master key and the lock file live.
    #[arg(long, env = "KEYWARD_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// `sqlite://PATH` (the default, in the data dir) or `postgres://…`.
    #[arg(long, env = "KEYWARD_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// The keyring: `version:hex,version:hex`; the first key encrypts.
    #[arg(
        long,
        env = "KEYWARD_MASTER_KEYS",
        global = true,
        hide_env_values = true
    )]
    pub master_keys: Option<String>,
    /// The Ed25519 key that signs audit checkpoints, as a C2SP signer key
    /// `PRIVATE+KEY+<name>+<hash>+<base64>` (`keyward audit generate-checkpoint-key`).
    #[arg(
        long,
        env = "KEYWARD_CHECKPOINT_KEY",
        global = true,
        hide_env_values = true
    )]
    pub checkpoint_key: Option<String>,
    /// A file holding the checkpoint signer key (instead of `--checkpoint-key`).
    #[arg(long, env = "KEYWARD_CHECKPOINT_KEY_FILE", global = true)]
    pub checkpoint_key_file: Option<PathBuf>,
    /// `pretty` (default) or `json`.
    #[arg(long, env = "KEYWARD_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
    /// A tracing filter, e.g. `info` or `keyward=debug`.
    #[arg(long, env = "KEYWARD_LOG", global = true)]
    pub log: Option<String>,
}

/// Settings only `serve` reads. Its `Debug` prints neither the webhook secret nor more of
/// the webhook URL than its origin.
#[derive(Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// The address to listen on.
    #[arg(long, env = "KEYWARD_LISTEN")]
    pub listen: Option<String>,
    /// The longest a key may live, e.g. `180d`.
    #[arg(long, env = "KEYWARD_MAX_KEY_LIFETIME")]
    pub max_key_lifetime: Option<String>,
    /// The most keys one user may hold that are not deleted (1000).
    #[arg(long, env = "KEYWARD_MAX_KEYS_PER_USER")]
    pub max_keys_per_user: Option<String>,
    /// How many usage events may wait for the appender before the proxy waits.
    #[arg(long, env = "KEYWARD_USAGE_QUEUE_CAPACITY")]
    pub usage_queue_capacity: Option<String>,
    /// The most events the appender commits in one transaction.
    #[arg(long, env = "KEYWARD_APPEND_BATCH_MAX")]
    pub append_batch_max: Option<String>,
    /// The largest request body accepted, in bytes.
    #[arg(long, env = "KEYWARD_BODY_LIMIT_BYTES")]
    pub body_limit_bytes: Option<String>,
    /// How long a graceful shutdown waits for in-flight requests, e.g. `30s`.
    #[arg(long, env = "KEYWARD_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// How long a client may take to send a request's head, and to send its first request
    /// after connecting, e.g. `10s`.
    #[arg(long, env = "KEYWARD_HTTP_HEADER_READ_TIMEOUT")]
    pub http_header_read_timeout: Option<String>,
    /// How long a connection with no request in flight stays open after its last
    /// response, e.g. `60s`.
    #[arg(long, env = "KEYWARD_HTTP_IDLE_TIMEOUT")]
    pub http_idle_timeout: Option<String>,
    /// The most client connections open at once; more wait to be accepted.
    #[arg(long, env = "KEYWARD_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
    /// How long connecting to a provider may take, e.g. `10s`.
    #[arg(long, env = "KEYWARD_UPSTREAM_CONNECT_TIMEOUT")]
    pub upstream_connect_timeout: Option<String>,
    /// How long a provider may take to start answering (its response headers), e.g. `300s`.
    #[arg(long, env = "KEYWARD_UPSTREAM_FIRST_BYTE_TIMEOUT")]
    pub upstream_first_byte_timeout: Option<String>,
    /// How long a provider's response may pause between two chunks, e.g. `60s`.
    #[arg(long, env = "KEYWARD_UPSTREAM_IDLE_TIMEOUT")]
    pub upstream_idle_timeout: Option<String>,
    /// The longest a provider's whole answer may take, streamed or not, e.g. `10m`.
    #[arg(long, env = "KEYWARD_UPSTREAM_MAX_DURATION")]
    pub upstream_max_duration: Option<String>,
    /// Failed authentications per second from one IP before the proxy answers 429 without
    /// looking the key up.
    #[arg(long, env = "KEYWARD_AUTH_FAILURES_PER_SECOND")]
    pub auth_failures_per_second: Option<String>,
    /// The window in which a key's refusals for one reason make a single `key.denied`.
    #[arg(long, env = "KEYWARD_DENIED_EVENT_WINDOW")]
    pub denied_event_window: Option<String>,
    /// How long a web console session lasts after sign-in, e.g. `8h`.
    #[arg(long, env = "KEYWARD_SESSION_TTL")]
    pub session_ttl: Option<String>,
    /// Trust `X-Forwarded-Proto: https` from the peer (a TLS-terminating proxy in front of
    /// Keyward) to mark console cookies `Secure`. Off: only the listener's own scheme counts.
    #[arg(long, env = "KEYWARD_TRUST_FORWARDED_PROTO")]
    pub trust_forwarded_proto: Option<String>,
    /// `none` (default) or `key_id`: whether proxy metrics carry a per-key label.
    #[arg(long, env = "KEYWARD_METRICS_KEY_LABELS")]
    pub metrics_key_labels: Option<String>,
    /// `async` (default): a proxied answer is sent while its `key.used` waits for the
    /// next group commit. `durable`: an answer completes only once its `key.used` has
    /// committed; if the commit fails the answer is cut off.
    #[arg(long, env = "KEYWARD_USAGE_DURABILITY")]
    pub usage_durability: Option<String>,
    /// Where expiry notices are POSTed; none are sent without it.
    #[arg(long, env = "KEYWARD_NOTIFY_WEBHOOK_URL")]
    pub notify_webhook_url: Option<String>,
    /// The HMAC-SHA256 key that signs each notice (`x-keyward-signature`).
    #[arg(long, env = "KEYWARD_NOTIFY_WEBHOOK_SECRET", hide_env_values = true)]
    pub notify_webhook_secret: Option<String>,
    /// How long before a key stops working its `expiring` notice goes, e.g. `7d`.
    #[arg(long, env = "KEYWARD_NOTIFY_WITHIN")]
    pub notify_within: Option<String>,
    /// How often the notifier looks for due notices, e.g. `60s`.
    #[arg(long, env = "KEYWARD_NOTIFY_INTERVAL")]
    pub notify_interval: Option<String>,
    /// Loopback and private addresses providers may be reached at: CIDRs or addresses,
    /// comma-separated, e.g. `127.0.0.1/32,10.0.0.0/8`. Empty by default.
    #[arg(long, env = "KEYWARD_UPSTREAM_ALLOW")]
    pub upstream_allow: Option<String>,
    /// Write a projection snapshot to the data dir after this many new events (and at
    /// shutdown), and start from it; `0` turns snapshots off.
    #[arg(long, env = "KEYWARD_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<String>,
    /// How many projection snapshots to keep (the newest), for fast `?as_of=` replays;
    /// older ones are deleted. At least 1.
    #[arg(long, env = "KEYWARD_SNAPSHOTS_KEEP")]
    pub snapshots_keep: Option<String>,
    /// Where signed checkpoints are written: `<data dir>/checkpoints` on SQLite; on
    /// PostgreSQL none are written unless this is set.
    #[arg(long, env = "KEYWARD_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// The checkpoint's origin line (the log's name); defaults to the key's name.
    #[arg(long, env = "KEYWARD_CHECKPOINT_ORIGIN")]
    pub checkpoint_origin: Option<String>,
    /// Write a signed checkpoint after this many new events (100000).
    #[arg(long, env = "KEYWARD_CHECKPOINT_EVERY")]
    pub checkpoint_every: Option<String>,
    /// Write a signed checkpoint at least this often while the log grows, e.g. `60s`.
    #[arg(long, env = "KEYWARD_CHECKPOINT_INTERVAL")]
    pub checkpoint_interval: Option<String>,
    /// Where each new checkpoint is POSTed (a witness or an archive); none without it.
    #[arg(long, env = "KEYWARD_CHECKPOINT_WITNESS_URL")]
    pub checkpoint_witness_url: Option<String>,
    /// The HMAC-SHA256 key that signs each POST to the witness (`x-keyward-signature`).
    #[arg(
        long,
        env = "KEYWARD_CHECKPOINT_WITNESS_SECRET",
        hide_env_values = true
    )]
    pub checkpoint_witness_secret: Option<String>,
    /// Archive the log on a schedule (`audit archive`, run by `serve`): where segments go
    /// (a directory, file://, s3://, gs://, az://). Needs --retain-usage and the
    /// checkpoint key. On PostgreSQL one node at a time archives.
    #[arg(long, env = "KEYWARD_ARCHIVE_TO")]
    pub archive_to: Option<String>,
    /// With --archive-to: usage events older than this (e.g. `90d`) are archived and
    /// pruned, in whole segments.
    #[arg(long, env = "KEYWARD_RETAIN_USAGE")]
    pub retain_usage: Option<String>,
    /// How often the scheduled archive looks for whole segments to archive (`1h`).
    #[arg(long, env = "KEYWARD_ARCHIVE_INTERVAL")]
    pub archive_interval: Option<String>,
    /// Each segment holds 2^LEVEL events (a multiple of 4, default 20).
    #[arg(long, env = "KEYWARD_ARCHIVE_SEGMENT_LEVEL")]
    pub archive_segment_level: Option<String>,
    /// Start even though the audit chain does not verify, or the log is behind or
    /// inconsistent with the newest signed checkpoint. Loudly.
    #[arg(long)]
    pub allow_broken_chain: bool,
}

/// The TOML file: the same settings by their long names, with `_` for `-`. No `Debug`: it
/// holds the master keys and the webhook secret.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    master_keys: Option<String>,
    log_format: Option<String>,
    log: Option<String>,
    listen: Option<String>,
    max_key_lifetime: Option<String>,
    max_keys_per_user: Option<usize>,
    usage_queue_capacity: Option<usize>,
    append_batch_max: Option<usize>,
    body_limit_bytes: Option<usize>,
    shutdown_grace: Option<String>,
    http_header_read_timeout: Option<String>,
    http_idle_timeout: Option<String>,
    max_connections: Option<usize>,
    upstream_connect_timeout: Option<String>,
    upstream_first_byte_timeout: Option<String>,
    upstream_idle_timeout: Option<String>,
    upstream_max_duration: Option<String>,
    auth_failures_per_second: Option<u32>,
    denied_event_window: Option<String>,
    session_ttl: Option<String>,
    trust_forwarded_proto: Option<bool>,
    metrics_key_labels: Option<String>,
    usage_durability: Option<String>,
    notify_webhook_url: Option<String>,
    notify_webhook_secret: Option<String>,
    notify_within: Option<String>,
    notify_interval: Option<String>,
    upstream_allow: Option<String>,
    snapshot_every: Option<usize>,
    snapshots_keep: Option<usize>,
    checkpoint_key: Option<String>,
    checkpoint_key_file: Option<PathBuf>,
    checkpoint_dir: Option<PathBuf>,
    checkpoint_origin: Option<String>,
    checkpoint_every: Option<usize>,
    checkpoint_interval: Option<String>,
    checkpoint_witness_url: Option<String>,
    checkpoint_witness_secret: Option<String>,
    archive_to: Option<String>,
    retain_usage: Option<String>,
    archive_interval: Option<String>,
    archive_segment_level: Option<u8>,
}

/// The checkpoint settings of the file, taken out before the rest is read.
#[derive(Default)]
struct FileCheckpoint {
    checkpoint_key: Option<String>,
    checkpoint_key_file: Option<PathBuf>,
    checkpoint_dir: Option<PathBuf>,
    checkpoint_origin: Option<String>,
    checkpoint_every: Option<usize>,
    checkpoint_interval: Option<String>,
    checkpoint_witness_url: Option<String>,
    checkpoint_witness_secret: Option<String>,
}

impl FileCheckpoint {
    fn take(f: &mut FileConfig) -> FileCheckpoint {
        FileCheckpoint {
            checkpoint_key: f.checkpoint_key.take(),
            checkpoint_key_file: f.checkpoint_key_file.take(),
            checkpoint_dir: f.checkpoint_dir.take(),
            checkpoint_origin: f.checkpoint_origin.take(),
            checkpoint_every: f.checkpoint_every.take(),
            checkpoint_interval: f.checkpoint_interval.take(),
            checkpoint_witness_url: f.checkpoint_witness_url.take(),
            checkpoint_witness_secret: f.checkpoint_witness_secret.take(),
        }
    }
}

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

impl std::fmt::Debug for GlobalArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalArgs")
            .field("config", &self.config)
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self
                    .database_url
                    .as_deref()
                    .map(crate::redact::database_url),
            )
            .field("master_keys", &set_or_not(self.master_keys.as_deref()))
            .field(
                "checkpoint_key",
                &set_or_not(self.checkpoint_key.as_deref()),
            )
            .field("checkpoint_key_file", &self.checkpoint_key_file)
            .field("log_format", &self.log_format)
            .field("log", &self.log)
            .finish()
    }
}

impl std::fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeArgs")
            .field("listen", &self.listen)
            .field(
                "notify_webhook_url",
                &self
                    .notify_webhook_url
                    .as_deref()
                    .map(crate::redact::endpoint),
            )
            .field(
                "notify_webhook_secret",
                &set_or_not(self.notify_webhook_secret.as_deref()),
            )
            .field(
                "checkpoint_witness_url",
                &self
                    .checkpoint_witness_url
                    .as_deref()
                    .map(crate::redact::endpoint),
            )
            .field(
                "checkpoint_witness_secret",
                &set_or_not(self.checkpoint_witness_secret.as_deref()),
            )
            .field("allow_broken_chain", &self.allow_broken_chain)
            .finish_non_exhaustive()
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
    pub fn resolve(g: &GlobalArgs, s: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &g.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad("config", format!("cannot read {}: {e}", path.display())))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| bad("config", format!("{}: {}", path.display(), e.message())))?
            }
            None => FileConfig::default(),
        };
        let mut file = file;
        let file_checkpoint = FileCheckpoint::take(&mut file);

        let data_dir = g
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if data_dir.as_os_str().is_empty() {
            return Err(bad("data-dir", "must not be empty"));
        }
        let database_url = g
            .database_url
            .clone()
            .or(file.database_url)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("keyward.db").display()));
        if crate::store::Backend::of(&database_url).is_none() {
            return Err(bad(
                "database-url",
                "must start with sqlite:// or postgres://",
            ));
        }
        let master_keys = g.master_keys.clone().or(file.master_keys);
        if let Some(spec) = &master_keys {
            crate::crypto::Keyring::parse(spec).map_err(|e| bad("master-keys", e.to_string()))?;
        }
        let log_format = match g.log_format.clone().or(file.log_format).as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(bad(
                    "log-format",
                    format!("{other:?} is neither `pretty` nor `json`"),
                ));
            }
        };
        let log = g
            .log
            .clone()
            .or(file.log)
            .unwrap_or_else(|| "info".to_owned());
        if tracing_subscriber::EnvFilter::try_new(&log).is_err() {
            return Err(bad("log", format!("{log:?} is not a tracing filter")));
        }
        let listen_s = s
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = SocketAddr::from_str(&listen_s).map_err(|_| {
            bad(
                "listen",
                format!("{listen_s:?} is not an address such as {DEFAULT_LISTEN}"),
            )
        })?;
        let lifetime_s = s
            .max_key_lifetime
            .clone()
            .or(file.max_key_lifetime)
            .unwrap_or_else(|| "180d".to_owned());
        let max_key_lifetime =
            parse_duration(&lifetime_s).map_err(|r| bad("max-key-lifetime", r))?;
        let max_keys_per_user = number(
            s.max_keys_per_user.as_deref(),
            file.max_keys_per_user,
            1000,
            "max-keys-per-user",
            1,
            1_000_000,
        )?;
        let usage_queue_capacity = number(
            s.usage_queue_capacity.as_deref(),
            file.usage_queue_capacity,
            65_536,
            "usage-queue-capacity",
            1,
            16_777_216,
        )?;
        let append_batch_max = number(
            s.append_batch_max.as_deref(),
            file.append_batch_max,
            1024,
            "append-batch-max",
            1,
            65_536,
        )?;
        let snapshot_every = number(
            s.snapshot_every.as_deref(),
            file.snapshot_every,
            SNAPSHOT_EVERY_DEFAULT,
            "snapshot-every",
            0,
            usize::MAX,
        )?;
        let snapshots_keep = number(
            s.snapshots_keep.as_deref(),
            file.snapshots_keep,
            SNAPSHOT_KEEP_DEFAULT,
            "snapshots-keep",
            1,
            100_000,
        )?;
        let body_limit_bytes = number(
            s.body_limit_bytes.as_deref(),
            file.body_limit_bytes,
            4 * 1024 * 1024,
            "body-limit-bytes",
            1024,
            1 << 30,
        )?;
        let shutdown_grace = std_duration(
            s.shutdown_grace.as_deref(),
            file.shutdown_grace,
            "30s",
            "shutdown-grace",
        )?;
        let http_header_read_timeout = std_duration(
            s.http_header_read_timeout.as_deref(),
            file.http_header_read_timeout,
            "10s",
            "http-header-read-timeout",
        )?;
        let http_idle_timeout = std_duration(
            s.http_idle_timeout.as_deref(),
            file.http_idle_timeout,
            "60s",
            "http-idle-timeout",
        )?;
        let max_connections = number(
            s.max_connections.as_deref(),
            file.max_connections,
            4096,
            "max-connections",
            1,
            1_000_000,
        )?;
        let upstream_connect_timeout = std_duration(
            s.upstream_connect_timeout.as_deref(),
            file.upstream_connect_timeout,
            "10s",
            "upstream-connect-timeout",
        )?;
        let upstream_first_byte_timeout = std_duration(
            s.upstream_first_byte_timeout.as_deref(),
            file.upstream_first_byte_timeout,
            "300s",
            "upstream-first-byte-timeout",
        )?;
        let upstream_idle_timeout = std_duration(
            s.upstream_idle_timeout.as_deref(),
            file.upstream_idle_timeout,
            "60s",
            "upstream-idle-timeout",
        )?;
        let upstream_max_duration = std_duration(
            s.upstream_max_duration.as_deref(),
            file.upstream_max_duration,
            "600s",
            "upstream-max-duration",
        )?;
        let auth_failures_per_second = number(
            s.auth_failures_per_second.as_deref(),
            file.auth_failures_per_second.map(|n| n as usize),
            10,
            "auth-failures-per-second",
            1,
            1_000_000,
        )? as u32;
        let denied_event_window = std_duration(
            s.denied_event_window.as_deref(),
            file.denied_event_window,
            "60s",
            "denied-event-window",
        )?;
        let session_ttl = std_duration(
            s.session_ttl.as_deref(),
            file.session_ttl,
            "8h",
            "session-ttl",
        )?;
        if session_ttl < std::time::Duration::from_secs(60)
            || session_ttl > std::time::Duration::from_secs(7 * 86_400)
        {
            return Err(bad(
                "session-ttl",
                format!("{session_ttl:?} is outside 1m to 7d"),
            ));
        }
        let trust_forwarded_proto = match s.trust_forwarded_proto.as_deref() {
            None => file.trust_forwarded_proto.unwrap_or(false),
            Some("true" | "1" | "yes") => true,
            Some("false" | "0" | "no") => false,
            Some(other) => {
                return Err(bad(
                    "trust-forwarded-proto",
                    format!("{other:?} is not true or false"),
                ));
            }
        };
        let metrics_key_labels = match s
            .metrics_key_labels
            .clone()
            .or(file.metrics_key_labels)
            .as_deref()
        {
            None | Some("none") => KeyLabels::None,
            Some("key_id") => KeyLabels::KeyId,
            Some(other) => {
                return Err(bad(
                    "metrics-key-labels",
                    format!("{other:?} is neither `none` nor `key_id`"),
                ));
            }
        };
        let usage_durability = match s
            .usage_durability
            .clone()
            .or(file.usage_durability.take())
            .as_deref()
        {
            None | Some("async") => UsageDurability::Async,
            Some("durable") => UsageDurability::Durable,
            Some(other) => {
                return Err(bad(
                    "usage-durability",
                    format!("{other:?} is neither `async` nor `durable`"),
                ));
            }
        };
        let archive = match s.archive_to.clone().or(file.archive_to.take()) {
            None => None,
            Some(to) => {
                let retain = s
                    .retain_usage
                    .clone()
                    .or(file.retain_usage.take())
                    .ok_or_else(|| bad("archive-to", "needs --retain-usage, e.g. 90d"))?;
                let retain = parse_duration(&retain)
                    .map_err(|r| bad("retain-usage", r))?
                    .to_std()
                    .map_err(|_| bad("retain-usage", "must be positive"))?;
                let interval = std_duration(
                    s.archive_interval.as_deref(),
                    file.archive_interval.take(),
                    "1h",
                    "archive-interval",
                )?;
                let level = match s.archive_segment_level.as_deref() {
                    Some(t) => t
                        .parse::<u8>()
                        .map_err(|_| bad("archive-segment-level", "must be a number"))?,
                    None => file.archive_segment_level.unwrap_or(ARCHIVE_LEVEL_DEFAULT),
                };
                if level == 0 || !level.is_multiple_of(4) || level > 40 {
                    return Err(bad(
                        "archive-segment-level",
                        "must be a multiple of 4 from 4 to 40",
                    ));
                }
                Some(ArchiveSchedule {
                    to,
                    retain,
                    interval,
                    level,
                })
            }
        };
        let notify_url = s.notify_webhook_url.clone().or(file.notify_webhook_url);
        let notify_secret = s
            .notify_webhook_secret
            .clone()
            .or(file.notify_webhook_secret);
        let notify_within_s = s
            .notify_within
            .clone()
            .or(file.notify_within)
            .unwrap_or_else(|| "7d".to_owned());
        let notify_within =
            parse_duration(&notify_within_s).map_err(|r| bad("notify-within", r))?;
        let notify_interval = std_duration(
            s.notify_interval.as_deref(),
            file.notify_interval,
            "60s",
            "notify-interval",
        )?;
        let upstream_allow = UpstreamAllow::parse(
            s.upstream_allow
                .as_deref()
                .or(file.upstream_allow.as_deref())
                .unwrap_or(""),
        )
        .map_err(|r| bad("upstream-allow", r))?;
        let checkpoint = resolve_checkpoint(
            g,
            s,
            file_checkpoint,
            &data_dir,
            crate::store::sqlite_path(&database_url).is_some(),
        )?;
        let notify = match (notify_url, notify_secret) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(bad(
                    "notify-webhook-url",
                    "a webhook secret is set but no webhook URL",
                ));
            }
            (Some(_), None) => {
                return Err(bad(
                    "notify-webhook-secret",
                    "the webhook needs a secret to sign its notices",
                ));
            }
            (Some(url), Some(secret)) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(bad(
                        "notify-webhook-url",
                        format!("{url:?} is not an http:// or https:// URL"),
                    ));
                }
                if secret.len() < 16 {
                    return Err(bad(
                        "notify-webhook-secret",
                        "must be at least 16 characters",
                    ));
                }
                Some(NoticeWebhook {
                    url,
                    secret: WebhookSecret::new(secret),
                    within: notify_within,
                    interval: notify_interval,
                })
            }
        };

        Ok(Config {
            data_dir,
            database_url,
            master_keys,
            log_format,
            log,
            listen,
            max_key_lifetime,
            max_keys_per_user,
            usage_queue_capacity,
            append_batch_max,
            body_limit_bytes,
            shutdown_grace,
            http_header_read_timeout,
            http_idle_timeout,
            max_connections,
            upstream_connect_timeout,
            upstream_first_byte_timeout,
            upstream_idle_timeout,
            upstream_max_duration,
            auth_failures_per_second,
            denied_event_window,
            session_ttl,
            trust_forwarded_proto,
            metrics_key_labels,
            usage_durability,
            notify,
            upstream_allow,
            snapshot_every,
            snapshots_keep,
            checkpoint,
            archive,
            allow_broken_chain: s.allow_broken_chain,
        })
    }

    /// The SQLite file the URL names, if the store is SQLite.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        sqlite_path(&self.database_url)
    }
}

/// The checkpoint settings. The key is checked to parse here, so that a wrong key stops
/// the start naming the setting (and never quoting the key).
fn resolve_checkpoint(
    g: &GlobalArgs,
    s: &ServeArgs,
    mut file: FileCheckpoint,
    data_dir: &Path,
    sqlite: bool,
) -> Result<CheckpointConfig, ConfigError> {
    let key_text = g.checkpoint_key.clone().or(file.checkpoint_key.take());
    let key_file = g
        .checkpoint_key_file
        .clone()
        .or(file.checkpoint_key_file.take());
    let key = match (key_text, key_file) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "checkpoint-key-file",
                "give the checkpoint key either as text (--checkpoint-key) or as a file, not both",
            ));
        }
        (Some(text), None) => {
            let text = CheckpointKeyText::new(text.trim().to_owned());
            keyward_events::note::NoteSigner::from_text(text.expose())
                .map_err(|e| bad("checkpoint-key", e.to_string()))?;
            Some(text)
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                bad(
                    "checkpoint-key-file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let text = CheckpointKeyText::new(text.trim().to_owned());
            keyward_events::note::NoteSigner::from_text(text.expose())
                .map_err(|e| bad("checkpoint-key-file", format!("{}: {e}", path.display())))?;
            Some(text)
        }
        (None, None) => None,
    };
    let origin = s
        .checkpoint_origin
        .clone()
        .or(file.checkpoint_origin.take());
    if let Some(o) = &origin
        && (o.is_empty() || o.chars().any(char::is_control))
    {
        return Err(bad(
            "checkpoint-origin",
            "must be one non-empty line without control characters",
        ));
    }
    let dir = s
        .checkpoint_dir
        .clone()
        .or(file.checkpoint_dir.take())
        .or_else(|| sqlite.then(|| data_dir.join(CHECKPOINT_DIR)));
    if dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
        return Err(bad("checkpoint-dir", "must not be empty"));
    }
    let every = number(
        s.checkpoint_every.as_deref(),
        file.checkpoint_every,
        DEFAULT_CHECKPOINT_EVERY as usize,
        "checkpoint-every",
        1,
        usize::MAX,
    )? as u64;
    let interval = std_duration(
        s.checkpoint_interval.as_deref(),
        file.checkpoint_interval.take(),
        DEFAULT_CHECKPOINT_INTERVAL,
        "checkpoint-interval",
    )?;
    let url = s
        .checkpoint_witness_url
        .clone()
        .or(file.checkpoint_witness_url.take());
    let secret = s
        .checkpoint_witness_secret
        .clone()
        .or(file.checkpoint_witness_secret.take());
    let witness = match (url, secret) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(bad(
                "checkpoint-witness-url",
                "a witness secret is set but no witness URL",
            ));
        }
        (Some(_), None) => {
            return Err(bad(
                "checkpoint-witness-secret",
                "the witness needs a secret to sign its POSTs",
            ));
        }
        (Some(url), Some(secret)) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(bad(
                    "checkpoint-witness-url",
                    format!(
                        "{:?} is not an http:// or https:// URL",
                        crate::redact::endpoint(&url)
                    ),
                ));
            }
            if secret.len() < 16 {
                return Err(bad(
                    "checkpoint-witness-secret",
                    "must be at least 16 characters",
                ));
            }
            Some(Witness {
                url,
                secret: WebhookSecret::new(secret),
            })
        }
    };
    Ok(CheckpointConfig {
        key,
        origin,
        dir,
        every,
        interval,
        witness,
    })
}

/// The SQLite file a database URL names: [`crate::store::sqlite_path`].
pub use crate::store::sqlite_path;

fn number(
    flag: Option<&str>,
    file: Option<usize>,
    default: usize,
    setting: &'static str,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    let v = match flag {
        Some(s) => s
            .trim()
            .parse::<usize>()
            .map_err(|_| bad(setting, format!("{s:?} is not a whole number")))?,
        None => file.unwrap_or(default),
    };
    if !(min..=max).contains(&v) {
        return Err(bad(setting, format!("{v} is outside {min}..={max}")));
    }
    Ok(v)
}

/// A positive duration setting, from the flag or the environment, else the file, else the
/// default.
fn std_duration(
    flag: Option<&str>,
    file: Option<String>,
    default: &str,
    setting: &'static str,
) -> Result<std::time::Duration, ConfigError> {
    let text = flag.map(str::to_owned).or(file);
    let text = text.as_deref().unwrap_or(default);
    parse_duration(text)
        .map_err(|r| bad(setting, r))?
        .to_std()
        .map_err(|_| bad(setting, "must be positive"))
}

/// Parses `90d`, `12h`, `30m`, `45s`, `2w` or `250ms`. A bare number is refused: a unit is
/// required.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30d, 12h, 15m or 45s"))?;
    let max = 100 * 365;
    let d = match unit {
        "ms" if n <= max * 24 * 3600 * 1000 => Duration::milliseconds(n),
        "w" if n <= max / 7 => Duration::weeks(n),
        "d" if n <= max => Duration::days(n),
        "h" if n <= max * 24 => Duration::hours(n),
        "m" if n <= max * 24 * 60 => Duration::minutes(n),
        "s" if n <= max * 24 * 3600 => Duration::seconds(n),
        "w" | "d" | "h" | "m" | "s" | "ms" => {
            return Err(format!("{s:?} is longer than 100 years"));
        }
        _ => {
            return Err(format!(
                "{s:?} is not a duration such as 30d, 12h, 15m or 45s"
            ));
        }
    };
    if n == 0 {
        return Err(format!("{s:?} must be longer than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::resolve(&GlobalArgs::default(), &ServeArgs::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.data_dir, PathBuf::from("./keyward-data"));
        assert_eq!(c.database_url, "sqlite://./keyward-data/keyward.db");
        assert_eq!(c.max_key_lifetime, Duration::days(180));
        assert_eq!(c.max_keys_per_user, 1000);
        assert_eq!(c.log_format, LogFormat::Pretty);
        assert_eq!(
            c.upstream_connect_timeout,
            std::time::Duration::from_secs(10)
        );
        assert_eq!(
            c.upstream_first_byte_timeout,
            std::time::Duration::from_secs(300)
        );
        assert_eq!(c.upstream_idle_timeout, std::time::Duration::from_secs(60));
        assert_eq!(c.upstream_max_duration, std::time::Duration::from_secs(600));
        assert_eq!(c.auth_failures_per_second, 10);
        assert_eq!(c.denied_event_window, std::time::Duration::from_secs(60));
        assert_eq!(c.session_ttl, std::time::Duration::from_secs(8 * 3600));
        assert!(!c.trust_forwarded_proto);
        assert_eq!(
            c.http_header_read_timeout,
            std::time::Duration::from_secs(10)
        );
        assert_eq!(c.http_idle_timeout, std::time::Duration::from_secs(60));
        assert_eq!(c.max_connections, 4096);
    }

    #[test]
    fn listener_settings_are_read_and_checked() {
        let s = ServeArgs {
            http_header_read_timeout: Some("2s".into()),
            http_idle_timeout: Some("500ms".into()),
            max_connections: Some("10".into()),
            ..ServeArgs::default()
        };
        let c = Config::resolve(&GlobalArgs::default(), &s).unwrap();
        assert_eq!(
            c.http_header_read_timeout,
            std::time::Duration::from_secs(2)
        );
        assert_eq!(c.http_idle_timeout, std::time::Duration::from_millis(500));
        assert_eq!(c.max_connections, 10);
        for (s, env) in [
            (
                ServeArgs {
                    http_header_read_timeout: Some("10".into()),
                    ..ServeArgs::default()
                },
                "KEYWARD_HTTP_HEADER_READ_TIMEOUT",
            ),
            (
                ServeArgs {
                    http_idle_timeout: Some("never".into()),
                    ..ServeArgs::default()
                },
                "KEYWARD_HTTP_IDLE_TIMEOUT",
            ),
            (
                ServeArgs {
                    max_connections: Some("0".into()),
                    ..ServeArgs::default()
                },
                "KEYWARD_MAX_CONNECTIONS",
            ),
        ] {
            let e = Config::resolve(&GlobalArgs::default(), &s)
                .unwrap_err()
                .to_string();
            assert!(e.contains(env), "{e}");
        }
    }

    #[test]
    fn console_session_settings_are_read_and_checked() {
        let s = ServeArgs {
            session_ttl: Some("30m".into()),
            trust_forwarded_proto: Some("true".into()),
            ..ServeArgs::default()
        };
        let c = Config::resolve(&GlobalArgs::default(), &s).unwrap();
        assert_eq!(c.session_ttl, std::time::Duration::from_secs(1800));
        assert!(c.trust_forwarded_proto);
        for (ttl, needle) in [
            ("10s", "outside 1m to 7d"),
            ("8d", "outside 1m to 7d"),
            ("soon", ""),
        ] {
            let e = Config::resolve(
                &GlobalArgs::default(),
                &ServeArgs {
                    session_ttl: Some(ttl.into()),
                    ..ServeArgs::default()
                },
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("--session-ttl") && e.contains("KEYWARD_SESSION_TTL"),
                "{e}"
            );
            assert!(e.contains(needle), "{e}");
        }
        let e = Config::resolve(
            &GlobalArgs::default(),
            &ServeArgs {
                trust_forwarded_proto: Some("maybe".into()),
                ..ServeArgs::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--trust-forwarded-proto"), "{e}");
    }

    #[test]
    fn proxy_settings_are_read_and_checked() {
        let s = ServeArgs {
            upstream_idle_timeout: Some("250ms".into()),
            auth_failures_per_second: Some("3".into()),
            ..ServeArgs::default()
        };
        let c = Config::resolve(&GlobalArgs::default(), &s).unwrap();
        assert_eq!(
            c.upstream_idle_timeout,
            std::time::Duration::from_millis(250)
        );
        assert_eq!(c.auth_failures_per_second, 3);
        let s = ServeArgs {
            upstream_first_byte_timeout: Some("soon".into()),
            ..ServeArgs::default()
        };
        let e = Config::resolve(&GlobalArgs::default(), &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("KEYWARD_UPSTREAM_FIRST_BYTE_TIMEOUT"), "{e}");
        let s = ServeArgs {
            auth_failures_per_second: Some("0".into()),
            ..ServeArgs::default()
        };
        let e = Config::resolve(&GlobalArgs::default(), &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("KEYWARD_AUTH_FAILURES_PER_SECOND"), "{e}");
        let s = ServeArgs {
            metrics_key_labels: Some("secret".into()),
            ..ServeArgs::default()
        };
        let e = Config::resolve(&GlobalArgs::default(), &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("KEYWARD_METRICS_KEY_LABELS"), "{e}");
        let s = ServeArgs {
            usage_durability: Some("sync".into()),
            ..ServeArgs::default()
        };
        let e = Config::resolve(&GlobalArgs::default(), &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("KEYWARD_USAGE_DURABILITY"), "{e}");
        assert!(
            e.contains("\"sync\" is neither `async` nor `durable`"),
            "{e}"
        );
        let c = Config::resolve(&GlobalArgs::default(), &ServeArgs::default()).unwrap();
        assert_eq!(c.usage_durability, UsageDurability::Async);
        let s = ServeArgs {
            usage_durability: Some("durable".into()),
            ..ServeArgs::default()
        };
        let c = Config::resolve(&GlobalArgs::default(), &s).unwrap();
        assert_eq!(c.usage_durability, UsageDurability::Durable);
    }

    #[test]
    fn the_upstream_allowlist_is_empty_by_default_and_checked() {
        let c = Config::resolve(&GlobalArgs::default(), &ServeArgs::default()).unwrap();
        assert!(c.upstream_allow.allowlist().is_empty());
        let s = ServeArgs {
            upstream_allow: Some("127.0.0.1/32, 10.0.0.0/8".into()),
            ..ServeArgs::default()
        };
        let c = Config::resolve(&GlobalArgs::default(), &s).unwrap();
        assert_eq!(
            format!("{:?}", c.upstream_allow),
            r#"["127.0.0.1/32", "10.0.0.0/8"]"#
        );
        let s = ServeArgs {
            upstream_allow: Some("10.0.0.0/8,intranet".into()),
            ..ServeArgs::default()
        };
        let e = Config::resolve(&GlobalArgs::default(), &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("KEYWARD_UPSTREAM_ALLOW"), "{e}");
        assert!(e.contains("\"intranet\""), "{e}");
    }

    #[test]
    fn the_archive_schedule_needs_a_retention_and_a_stored_tree_level() {
        let resolve = |to: Option<&str>, retain: Option<&str>, level: Option<&str>| {
            Config::resolve(
                &GlobalArgs::default(),
                &ServeArgs {
                    archive_to: to.map(str::to_owned),
                    retain_usage: retain.map(str::to_owned),
                    archive_segment_level: level.map(str::to_owned),
                    ..ServeArgs::default()
                },
            )
        };
        assert!(resolve(None, None, None).unwrap().archive.is_none());
        let a = resolve(Some("s3://b/p"), Some("90d"), None)
            .unwrap()
            .archive
            .unwrap();
        assert_eq!(a.to, "s3://b/p");
        assert_eq!(a.retain, std::time::Duration::from_secs(90 * 86_400));
        assert_eq!(a.interval, std::time::Duration::from_secs(3600));
        assert_eq!(a.level, ARCHIVE_LEVEL_DEFAULT);
        let e = resolve(Some("s3://b/p"), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--retain-usage"), "{e}");
        let e = resolve(Some("s3://b/p"), Some("90d"), Some("6"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--archive-segment-level"), "{e}");
    }

    #[test]
    fn snapshot_every_defaults_to_a_million_and_zero_turns_snapshots_off() {
        let resolve = |v: Option<&str>| {
            Config::resolve(
                &GlobalArgs::default(),
                &ServeArgs {
                    snapshot_every: v.map(str::to_owned),
                    ..ServeArgs::default()
                },
            )
        };
        assert_eq!(
            resolve(None).unwrap().snapshot_every,
            SNAPSHOT_EVERY_DEFAULT
        );
        assert_eq!(resolve(Some("0")).unwrap().snapshot_every, 0);
        let e = resolve(Some("often")).unwrap_err().to_string();
        assert!(
            e.contains("KEYWARD_SNAPSHOT_EVERY") && e.contains("--snapshot-every"),
            "{e}"
        );
    }

    #[test]
    fn the_notice_webhook_needs_a_url_and_a_secret() {
        let resolve = |s: ServeArgs| Config::resolve(&GlobalArgs::default(), &s);
        assert!(resolve(ServeArgs::default()).unwrap().notify.is_none());
        let e = resolve(ServeArgs {
            notify_webhook_url: Some("https://hooks.example/keyward".into()),
            ..ServeArgs::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("KEYWARD_NOTIFY_WEBHOOK_SECRET"), "{e}");
        let e = resolve(ServeArgs {
            notify_webhook_secret: Some("0123456789abcdef".into()),
            ..ServeArgs::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("KEYWARD_NOTIFY_WEBHOOK_URL"), "{e}");
        let e = resolve(ServeArgs {
            notify_webhook_url: Some("ftp://x".into()),
            notify_webhook_secret: Some("0123456789abcdef".into()),
            ..ServeArgs::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("KEYWARD_NOTIFY_WEBHOOK_URL"), "{e}");
        let e = resolve(ServeArgs {
            notify_webhook_url: Some("https://hooks.example/keyward".into()),
            notify_webhook_secret: Some("short".into()),
            ..ServeArgs::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("at least 16"), "{e}");
        let c = resolve(ServeArgs {
            notify_webhook_url: Some("https://hooks.example/keyward".into()),
            notify_webhook_secret: Some("0123456789abcdef".into()),
            notify_within: Some("3d".into()),
            ..ServeArgs::default()
        })
        .unwrap();
        let hook = c.notify.unwrap();
        assert_eq!(hook.within, Duration::days(3));
        assert_eq!(hook.interval, std::time::Duration::from_secs(60));
        // The secret stays out of Debug output.
        assert!(!format!("{hook:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn a_wrong_value_names_its_setting() {
        let s = ServeArgs {
            listen: Some("nowhere".into()),
            ..ServeArgs::default()
        };
        let e = Config::resolve(&GlobalArgs::default(), &s)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--listen") && e.contains("KEYWARD_LISTEN") && e.contains("nowhere"),
            "{e}"
        );

        let g = GlobalArgs {
            log_format: Some("xml".into()),
            ..GlobalArgs::default()
        };
        let e = Config::resolve(&g, &ServeArgs::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("KEYWARD_LOG_FORMAT"), "{e}");

        let g = GlobalArgs {
            master_keys: Some("1:zz".into()),
            ..GlobalArgs::default()
        };
        let e = Config::resolve(&g, &ServeArgs::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("KEYWARD_MASTER_KEYS") && !e.contains("zz"),
            "{e}"
        );

        let s = ServeArgs {
            max_key_lifetime: Some("180".into()),
            ..ServeArgs::default()
        };
        assert!(
            Config::resolve(&GlobalArgs::default(), &s)
                .unwrap_err()
                .to_string()
                .contains("KEYWARD_MAX_KEY_LIFETIME")
        );

        let s = ServeArgs {
            max_keys_per_user: Some("0".into()),
            ..ServeArgs::default()
        };
        assert!(
            Config::resolve(&GlobalArgs::default(), &s)
                .unwrap_err()
                .to_string()
                .contains("KEYWARD_MAX_KEYS_PER_USER")
        );
    }

    #[test]
    fn the_file_is_read_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.toml");
        std::fs::write(
            &p,
            "listen = \"127.0.0.1:7000\"\nmax_key_lifetime = \"30d\"\nmax_keys_per_user = 50\nupstream_allow = \"192.168.0.0/16\"\n",
        )
        .unwrap();
        let g = GlobalArgs {
            config: Some(p.clone()),
            ..GlobalArgs::default()
        };
        let c = Config::resolve(&g, &ServeArgs::default()).unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.max_keys_per_user, 50);
        assert_eq!(format!("{:?}", c.upstream_allow), r#"["192.168.0.0/16"]"#);
        assert_eq!(c.max_key_lifetime, Duration::days(30));
        // A flag wins over the file.
        let s = ServeArgs {
            listen: Some("127.0.0.1:7001".into()),
            ..ServeArgs::default()
        };
        assert_eq!(Config::resolve(&g, &s).unwrap().listen.port(), 7001);

        std::fs::write(&p, "lissen = \"x\"\n").unwrap();
        let e = Config::resolve(&g, &ServeArgs::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("lissen"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d").unwrap(), Duration::days(30));
        assert_eq!(parse_duration("2w").unwrap(), Duration::days(14));
        assert_eq!(parse_duration("15m").unwrap(), Duration::minutes(15));
        assert_eq!(
            parse_duration("250ms").unwrap(),
            Duration::milliseconds(250)
        );
        for bad in ["", "d", "10", "-1d", "0d", "1y", "99999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
