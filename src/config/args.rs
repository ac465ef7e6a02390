//! The flags and `KEYWARD_*` environment variables, through clap.

use std::path::PathBuf;

use super::set_or_not;

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
