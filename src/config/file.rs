//! The optional TOML file: its settings, and reading it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, bad};

/// The TOML file: the same settings by their long names, with `_` for `-`. No `Debug`: it
/// holds the master keys and the webhook secret.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) data_dir: Option<PathBuf>,
    pub(super) database_url: Option<String>,
    pub(super) master_keys: Option<String>,
    pub(super) log_format: Option<String>,
    pub(super) log: Option<String>,
    pub(super) listen: Option<String>,
    pub(super) max_key_lifetime: Option<String>,
    pub(super) max_keys_per_user: Option<usize>,
    pub(super) usage_queue_capacity: Option<usize>,
    pub(super) append_batch_max: Option<usize>,
    pub(super) body_limit_bytes: Option<usize>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) http_header_read_timeout: Option<String>,
    pub(super) http_idle_timeout: Option<String>,
    pub(super) max_connections: Option<usize>,
    pub(super) upstream_connect_timeout: Option<String>,
    pub(super) upstream_first_byte_timeout: Option<String>,
    pub(super) upstream_idle_timeout: Option<String>,
    pub(super) upstream_max_duration: Option<String>,
    pub(super) auth_failures_per_second: Option<u32>,
    pub(super) denied_event_window: Option<String>,
    pub(super) session_ttl: Option<String>,
    pub(super) trust_forwarded_proto: Option<bool>,
    pub(super) metrics_key_labels: Option<String>,
    pub(super) usage_durability: Option<String>,
    pub(super) notify_webhook_url: Option<String>,
    pub(super) notify_webhook_secret: Option<String>,
    pub(super) notify_within: Option<String>,
    pub(super) notify_interval: Option<String>,
    pub(super) upstream_allow: Option<String>,
    pub(super) snapshot_every: Option<usize>,
    pub(super) snapshots_keep: Option<usize>,
    pub(super) checkpoint_key: Option<String>,
    pub(super) checkpoint_key_file: Option<PathBuf>,
    pub(super) checkpoint_dir: Option<PathBuf>,
    pub(super) checkpoint_origin: Option<String>,
    pub(super) checkpoint_every: Option<usize>,
    pub(super) checkpoint_interval: Option<String>,
    pub(super) checkpoint_witness_url: Option<String>,
    pub(super) checkpoint_witness_secret: Option<String>,
    pub(super) archive_to: Option<String>,
    pub(super) retain_usage: Option<String>,
    pub(super) archive_interval: Option<String>,
    pub(super) archive_segment_level: Option<u8>,
}

/// The checkpoint settings of the file, taken out before the rest is read.
#[derive(Default)]
pub(super) struct FileCheckpoint {
    pub(super) checkpoint_key: Option<String>,
    pub(super) checkpoint_key_file: Option<PathBuf>,
    pub(super) checkpoint_dir: Option<PathBuf>,
    pub(super) checkpoint_origin: Option<String>,
    pub(super) checkpoint_every: Option<usize>,
    pub(super) checkpoint_interval: Option<String>,
    pub(super) checkpoint_witness_url: Option<String>,
    pub(super) checkpoint_witness_secret: Option<String>,
}

impl FileCheckpoint {
    pub(super) fn take(f: &mut FileConfig) -> FileCheckpoint {
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

impl FileConfig {
    /// The file `--config` names, read and parsed; every setting unset without one.
    pub(super) fn read(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
        Ok(match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad("config", format!("cannot read {}: {e}", path.display())))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| bad("config", format!("{}: {}", path.display(), e.message())))?
            }
            None => FileConfig::default(),
        })
    }
}
