//! Resolution: the flags and the environment, the file and the defaults, turned into a
//! [`Config`], each value checked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::Duration;

use super::file::{FileCheckpoint, FileConfig};
use super::{
    ARCHIVE_LEVEL_DEFAULT, ArchiveSchedule, CHECKPOINT_DIR, CheckpointConfig, CheckpointKeyText,
    Config, ConfigError, DEFAULT_CHECKPOINT_EVERY, DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_DATA_DIR,
    DEFAULT_LISTEN, GlobalArgs, LogFormat, NoticeWebhook, SNAPSHOT_EVERY_DEFAULT,
    SNAPSHOT_KEEP_DEFAULT, ServeArgs, UpstreamAllow, UsageDurability, WebhookSecret, Witness, bad,
};
use crate::metrics::KeyLabels;

impl Config {
    pub fn resolve(g: &GlobalArgs, s: &ServeArgs) -> Result<Config, ConfigError> {
        let mut file = FileConfig::read(g.config.as_deref())?;
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
            16_384,
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
        assert_eq!(c.max_connections, 16_384);
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
