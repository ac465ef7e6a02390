//! The command line: `serve`, `bootstrap`, `migrate`, `audit`, `keys`, `providers` and the
//! test tool `mock-provider`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures::TryStreamExt;
use keyward_events::Head;
use keyward_projections::{AsOf, KeyStatus, State};

use serde_json::json;

use crate::config::{Config, GlobalArgs, ServeArgs};
use crate::providers::check::count;
use crate::store::{self, EventFilter, EventStore};

#[derive(Debug, Parser)]
#[command(
    name = "keyward",
    version,
    about = "Event-sourced API key service and LLM gateway"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start: the size of `Serve` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve(ServeArgs),
    /// Create an admin user if missing and a new admin key; prints the secret once on stdout.
    Bootstrap {
        #[arg(long, default_value = "admin")]
        username: String,
        /// Also set the admin's web console password, read as one line from stdin
        /// (12 to 1024 characters).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Apply the database migrations and exit.
    Migrate,
    /// Print the management API's OpenAPI document.
    Openapi,
    /// Verify, replay, export or checkpoint the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Reports on keys, read from the log.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Maintenance of provider credentials.
    Providers {
        #[command(subcommand)]
        command: ProvidersCommand,
    },
    /// A test tool: a mock OpenAI- and Anthropic-compatible provider with canned answers
    /// (chat, streamed or not, embeddings, models, messages, with usage), on loopback only,
    /// to try Keyward with no internet. No model runs.
    MockProvider {
        /// A loopback address and port.
        #[arg(long, default_value = crate::mock_provider::DEFAULT_LISTEN)]
        listen: String,
        /// How long each chat completion takes (`1s`, `250ms`): a whole answer comes after
        /// it, a stream's chunks are spread over it. None by default.
        #[arg(long, value_parser = std_duration)]
        latency: Option<std::time::Duration>,
        /// How many content chunks a streamed reply has (the canned reply's words,
        /// repeated); one per word of it by default.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        chunks: Option<u16>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// Re-encrypt every current provider credential (one `provider.key_updated` each) and
    /// every sealed console password (one `user.updated` each) under the first (newest)
    /// master key of KEYWARD_MASTER_KEYS; afterwards the older master keys
    /// can be removed from the keyring. Takes the data dir's lock: stop `serve` first.
    Reseal,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Active keys, and rotated keys in their grace, that stop working within a window.
    Expiring {
        /// How far ahead to look, e.g. `7d`, `36h`.
        #[arg(long, default_value = "7d")]
        within: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute every hash in order; exits 1 and names the first bad seq if the chain breaks.
    /// With `--export FILE`, verifies an NDJSON export offline instead, with no database
    /// (the same as the `keyward-verify` binary of the keyward-events crate).
    Verify {
        /// A signed checkpoint (a `.note` that `serve` wrote) the log must still agree with:
        /// its signature must verify, the log must reach its size, and its first `size`
        /// events must hash to its root. An unsigned head from `audit checkpoint` (JSON) is
        /// accepted too.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// An export (`audit export`, `GET /api/v1/audit/export`) to verify offline; `-`
        /// reads stdin. Needs no database.
        #[arg(long)]
        export: Option<PathBuf>,
        /// The checkpoint public key (`<name>+<hash>+<base64>`, from `audit public-key`),
        /// or a file holding it.
        #[arg(long)]
        public_key: Option<String>,
        /// With --export: the export must be the whole log from seq 1.
        #[arg(long, requires = "export", conflicts_with = "filtered")]
        complete: bool,
        /// With --export: every event must carry an inclusion proof.
        #[arg(long, requires = "export")]
        filtered: bool,
        /// With --export: refuse lines whose hash cannot be recomputed (schema 1 password
        /// hashes the export redacted).
        #[arg(long, requires = "export")]
        strict: bool,
        /// Also verify the archive (`audit archive --to URL`): every segment decompressed
        /// and checked (chain, root against the store's tree, checkpoint signature against
        /// the checkpoint key or --public-key), and that the segments cover the log from
        /// seq 1 with no gap, overlap or segment missing. A bad segment is named.
        #[arg(long, conflicts_with = "export")]
        archive: Option<String>,
        /// With --archive: the archive alone, with no database (needs --public-key):
        /// every segment, their chaining and coverage, and each root's proof into its
        /// signed checkpoint.
        #[arg(long, requires = "archive", requires = "public_key")]
        offline: bool,
    },
    /// Write the events up to a point as sealed, signed segments (zstd NDJSON) to an
    /// archive (a directory, file://, s3://, gs://, az://), read each back and verify it,
    /// then delete the archived usage events (key.used, key.denied) from the store in one
    /// transaction, keeping their hashes. Lifecycle events stay. Needs the checkpoint key.
    Archive {
        /// Where segments go: a directory, file:///dir, s3://bucket/prefix (AWS_* variables:
        /// AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
        /// AWS_ALLOW_HTTP), gs://bucket/prefix, az://container/prefix.
        #[arg(long)]
        to: String,
        /// Archive up to this seq, rounded down to whole segments.
        #[arg(long, conflicts_with = "before", required_unless_present = "before")]
        until_seq: Option<u64>,
        /// Archive the events that occurred before this RFC 3339 time, rounded down to
        /// whole segments.
        #[arg(long)]
        before: Option<String>,
        /// Each segment holds 2^LEVEL events (a multiple of 4; 20 = 1,048,576).
        #[arg(long, default_value_t = crate::archive::DEFAULT_LEVEL)]
        segment_level: u8,
        #[arg(long, default_value_t = crate::archive::DEFAULT_ZSTD_LEVEL)]
        zstd_level: i32,
        /// Write and verify the segments only; delete nothing.
        #[arg(long)]
        no_prune: bool,
    },
    /// Print the public key that verifies this service's signed checkpoints.
    PublicKey,
    /// Generate a new checkpoint signing key: prints the signer key (a secret, for
    /// KEYWARD_CHECKPOINT_KEY) on the first line and its public key on the second.
    GenerateCheckpointKey {
        /// The key's name, e.g. `keyward/example.com`: no spaces and no `+`.
        #[arg(long)]
        name: String,
    },
    /// The key table as it was at a point in the log.
    Replay {
        /// An RFC 3339 time, e.g. 2026-03-01T00:00:00Z.
        #[arg(long, conflicts_with = "until_seq")]
        as_of: Option<String>,
        #[arg(long)]
        until_seq: Option<u64>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Every event as NDJSON on stdout.
    Export {
        #[arg(long, default_value_t = 0)]
        from_seq: u64,
        /// Only events of this type; may be given more than once.
        #[arg(long = "type")]
        types: Vec<String>,
        /// Start with a checkpoint signed now with the checkpoint key and give each event
        /// its inclusion proof against it, so that a filtered export verifies event by
        /// event offline (`keyward-verify`).
        #[arg(long)]
        with_proofs: bool,
    },
    /// The head seq and hash, for later `audit verify --checkpoint`.
    Checkpoint,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Runs a parsed command line. Returns the process exit code.
/// One line from stdin, checked and hashed with argon2id; the plaintext is zeroed.
fn read_password_stdin() -> anyhow::Result<crate::crypto::PasswordHash> {
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| anyhow::anyhow!("--password-stdin: cannot read stdin: {e}"))?;
    let password = line.trim_end_matches(['\n', '\r']);
    let n = password.chars().count();
    if !(12..=1024).contains(&n) {
        anyhow::bail!("--password-stdin: the password must be 12 to 1024 characters, not {n}");
    }
    crate::crypto::hash_password(password)
        .map(crate::crypto::PasswordHash::new)
        .map_err(|e| anyhow::anyhow!("--password-stdin: cannot hash the password: {e}"))
}

pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve(s) => {
            let config = Config::resolve(&cli.global, &s)?;
            crate::server::serve(config).await?;
            Ok(0)
        }
        Command::Bootstrap {
            username,
            password_stdin,
        } => {
            let password_hash = if password_stdin {
                Some(read_password_stdin()?)
            } else {
                None
            };
            let config = Config::resolve(&cli.global, &ServeArgs::default())?;
            let running = crate::server::start(config).await?;
            let b = crate::bootstrap::bootstrap_with_password(
                &running.state.0.commands,
                &username,
                password_hash,
            )
            .await;
            running.shutdown().await;
            let b = b?;
            println!("{}", b.secret.expose());
            eprintln!(
                "created admin key {} for {username}; the secret above is shown only once",
                b.key_id
            );
            Ok(0)
        }
        Command::MockProvider {
            listen,
            latency,
            chunks,
        } => {
            crate::mock_provider::run(
                &listen,
                latency.unwrap_or_default(),
                chunks.map(usize::from),
            )
            .await?;
            Ok(0)
        }
        Command::Openapi => {
            print!("{}", crate::http::api::openapi_json());
            Ok(0)
        }
        Command::Migrate => {
            let config = Config::resolve(&cli.global, &ServeArgs::default())?;
            let store = open(&config).await?;
            let head = store.head().await?;
            println!(
                "migrations applied; the log holds {}",
                count(head.seq as usize, "event", "events")
            );
            Ok(0)
        }
        // The archive alone: no config, no store.
        Command::Audit {
            command:
                AuditCommand::Verify {
                    archive: Some(url),
                    offline: true,
                    public_key: Some(key),
                    ..
                },
        } => verify_archive_offline(&url, &key).await,
        // Offline: no config, no store.
        Command::Audit {
            command:
                AuditCommand::Verify {
                    export: Some(export),
                    checkpoint,
                    public_key,
                    complete,
                    filtered,
                    strict,
                    archive: _,
                    offline: _,
                },
        } => verify_export_offline(
            &export,
            checkpoint.as_deref(),
            public_key.as_deref(),
            complete,
            filtered,
            strict,
        ),
        Command::Audit {
            command: AuditCommand::GenerateCheckpointKey { name },
        } => {
            let signer = keyward_events::note::NoteSigner::generate(&name)
                .map_err(|e| anyhow::anyhow!("--name {name:?}: {e}"))?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", signer.to_text().as_str())?;
            writeln!(out, "{}", signer.verifier())?;
            eprintln!(
                "the first line is the signer key: a secret, for KEYWARD_CHECKPOINT_KEY (or a file for \
                 --checkpoint-key-file); the second is its public key, for auditors"
            );
            Ok(0)
        }
        Command::Audit {
            command: AuditCommand::PublicKey,
        } => {
            let config = Config::resolve(&cli.global, &ServeArgs::default())?;
            let Some(key) = crate::checkpoint::load_key(&config, false)? else {
                bail!(
                    "no checkpoint key: set KEYWARD_CHECKPOINT_KEY (--checkpoint-key or --checkpoint-key-file); \
                     on SQLite `serve` generates a development key into {}",
                    config
                        .data_dir
                        .join(crate::checkpoint::DEV_KEY_FILE)
                        .display()
                );
            };
            println!("{}", key.verifier());
            Ok(0)
        }
        Command::Audit { command } => {
            let config = Config::resolve(&cli.global, &ServeArgs::default())?;
            let store = open(&config).await?;
            audit(&config, store, command).await
        }
        Command::Providers {
            command: ProvidersCommand::Reseal,
        } => {
            let config = Config::resolve(&cli.global, &ServeArgs::default())?;
            if let Some(path) = config.sqlite_path()
                && !path.exists()
            {
                bail!(
                    "no database at {} (KEYWARD_DATABASE_URL / KEYWARD_DATA_DIR)",
                    path.display()
                );
            }
            // `start` takes the data dir's lock (a running `serve` makes this fail) and
            // checks that every credential opens with the keyring before anything changes.
            let running = crate::server::start(config).await?;
            let outcome = reseal(&running.state).await;
            running.shutdown().await;
            let (resealed, passwords, current) = outcome?;
            println!(
                "resealed {resealed} provider credential(s) under master key version {current}, \
                 and {passwords} console password(s); every current credential and password now uses it, \
                 and older master keys can be removed"
            );
            Ok(0)
        }
        Command::Keys {
            command: KeysCommand::Expiring { within, format },
        } => {
            let window = crate::config::parse_duration(&within)
                .map_err(|e| anyhow::anyhow!("--within {within:?}: {e}"))?;
            let config = Config::resolve(&cli.global, &ServeArgs::default())?;
            let store = open(&config).await?;
            let state = crate::history::replay(store.as_ref(), AsOf::Seq(u64::MAX)).await?;
            print_expiring(&state, chrono::Utc::now(), window, format)?;
            Ok(0)
        }
    }
}

/// Re-encrypts every live credential and console password not sealed under the current
/// master key. Returns how many credentials and passwords were resealed, and the current
/// version.
async fn reseal(state: &crate::AppState) -> anyhow::Result<(usize, usize, u32)> {
    let app = &state.0;
    let current = app.keyring.current().version;
    let stale: Vec<_> = {
        let live = app.live.read();
        let mut v: Vec<_> = live
            .providers
            .iter()
            .filter(|p| !p.is_deleted())
            .filter(|p| {
                p.credential
                    .as_ref()
                    .is_some_and(|c| c.keyring_version != current)
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| a.provider_id.cmp(&b.provider_id));
        v
    };
    let actor = crate::commands::Actor::system();
    for p in &stale {
        let Some(c) = &p.credential else { continue };
        let secret = app
            .keyring
            .open(&p.provider_id, &c.ciphertext, &c.nonce, c.keyring_version)
            .with_context(|| {
                format!(
                    "cannot decrypt the credential of provider {} (master key version {})",
                    p.provider_id, c.keyring_version
                )
            })?;
        app.commands
            .replace_provider_credential(&actor, &p.provider_id, &secret, &app.keyring, None)
            .await
            .with_context(|| format!("cannot reseal provider {}", p.provider_id))?;
        eprintln!(
            "provider {} ({}): master key version {} -> {current}",
            p.provider_id, p.name, c.keyring_version
        );
    }
    // Console passwords are sealed under the keyring too: without this, removing an old
    // master key would lock their users out of the console.
    let stale_users: Vec<_> = {
        let live = app.live.read();
        let mut v: Vec<_> = live
            .users
            .iter()
            .filter(|u| {
                matches!(&u.password, Some(keyward_projections::StoredPassword::Sealed(s))
                    if s.keyring_version != current)
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        v
    };
    for u in &stale_users {
        let Some(keyward_projections::StoredPassword::Sealed(s)) = &u.password else {
            continue;
        };
        let hash = app.keyring.open_password(&u.user_id, s).with_context(|| {
            format!(
                "cannot decrypt the password of user {} (master key version {})",
                u.user_id, s.keyring_version
            )
        })?;
        let patch = crate::commands::UserPatch {
            password_hash: Some(hash),
            ..crate::commands::UserPatch::default()
        };
        app.commands
            .update_user(&actor, &u.user_id, patch)
            .await
            .with_context(|| format!("cannot reseal the password of user {}", u.user_id))?;
        eprintln!(
            "user {} ({}): password, master key version {} -> {current}",
            u.user_id, u.username, s.keyring_version
        );
    }
    Ok((stale.len(), stale_users.len(), current))
}

/// A key owner's username as of the replayed state; the user id if the user is unknown.
fn owner_name(state: &State, id: &str) -> String {
    state
        .users
        .get(id)
        .map_or_else(|| id.to_owned(), |u| u.username.clone())
}

fn print_expiring(
    state: &State,
    now: crate::time::Timestamp,
    window: chrono::Duration,
    format: Format,
) -> anyhow::Result<()> {
    let until = now + window;
    let mut keys: Vec<_> = state
        .keys
        .iter()
        .filter(|k| matches!(k.status(now), KeyStatus::Active | KeyStatus::Grace))
        .filter(|k| k.ends_at() <= until)
        .collect();
    keys.sort_by(|a, b| {
        a.ends_at()
            .cmp(&b.ends_at())
            .then(a.key_id().cmp(b.key_id()))
    });
    let owner = |id: &str| owner_name(state, id);
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            let rows: Vec<_> = keys
                .iter()
                .map(|k| {
                    json!({
                        "key_id": k.key_id(), "name": k.name(), "owner_id": k.owner_id(),
                        "owner": owner(k.owner_id()), "prefix": k.prefix(), "status": k.status(now),
                        "ends_at": crate::time::format(&k.ends_at()),
                        "expires_at": crate::time::format(&k.expires_at),
                        "grace_until": k.grace_until().as_ref().map(crate::time::format),
                        "rotated_to": k.rotated_to(),
                    })
                })
                .collect();
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&json!({
                    "now": crate::time::format(&now), "until": crate::time::format(&until),
                    "head_seq": state.head.seq, "keys": rows,
                }))?
            )?;
        }
        Format::Table => {
            writeln!(
                out,
                "{} key(s) stop working before {}",
                keys.len(),
                crate::time::format(&until)
            )?;
            writeln!(
                out,
                "{:<31} {:<24} {:<16} {:<7} {:<27} PREFIX",
                "KEY", "NAME", "OWNER", "STATUS", "ENDS"
            )?;
            for k in keys {
                let status = if k.status(now) == KeyStatus::Grace {
                    "grace"
                } else {
                    "active"
                };
                let name: String = k.name().chars().take(24).collect();
                let who: String = owner(k.owner_id()).chars().take(16).collect();
                writeln!(
                    out,
                    "{:<31} {:<24} {:<16} {:<7} {:<27} {}",
                    k.key_id(),
                    name,
                    who,
                    status,
                    crate::time::format(&k.ends_at()),
                    k.prefix()
                )?;
            }
        }
    }
    Ok(())
}

async fn open(config: &Config) -> anyhow::Result<Arc<dyn EventStore>> {
    if let Some(path) = config.sqlite_path()
        && !path.exists()
    {
        bail!(
            "no database at {} (KEYWARD_DATABASE_URL / KEYWARD_DATA_DIR)",
            path.display()
        );
    }
    store::open(&config.database_url).await.with_context(|| {
        format!(
            "cannot open the event store {}",
            crate::server::redact_url(&config.database_url)
        )
    })
}

/// The kept projection snapshots a replay may start from: none when snapshots are off or
/// no keyring is at hand to check their MACs (no `KEYWARD_MASTER_KEYS` and no
/// development key file; a replay never generates one).
fn kept_snapshots(config: &Config) -> Option<crate::history::Kept> {
    if config.snapshot_every == 0 {
        return None;
    }
    if config.master_keys.is_none()
        && (config.sqlite_path().is_none()
            || !config
                .data_dir
                .join(crate::server::DEV_MASTER_KEY_FILE)
                .exists())
    {
        return None;
    }
    let ring = crate::server::load_keyring(config).ok()?;
    Some(crate::history::Kept {
        dir: config.data_dir.clone(),
        keys: ring.snapshot_mac_keys(),
    })
}

/// `audit replay`: from the newest kept snapshot at or before the point, when one is
/// usable. For a time, the timeline of the newest usable snapshot tells which one holds
/// only events that occurred by then; the events after it are read and filtered.
async fn replay_for_cli(
    store: &dyn EventStore,
    config: &Config,
    as_of: AsOf,
) -> anyhow::Result<State> {
    let Some(kept) = kept_snapshots(config) else {
        return crate::history::replay(store, as_of).await;
    };
    let r = match as_of {
        AsOf::Seq(_) => crate::history::replay_with(store, Some(&kept), None, as_of).await?,
        AsOf::Time(t) => {
            match crate::history::newest_snapshot(store, &kept, u64::MAX, false).await? {
                None => crate::history::replay_from(store, None, None, as_of).await?,
                Some(newest) => {
                    let bounds = newest.timeline.bounds(t);
                    if newest.state.head.seq <= bounds.lo {
                        crate::history::replay_from(store, Some(newest.state), Some(bounds), as_of)
                            .await?
                    } else {
                        drop(newest);
                        crate::history::replay_with(store, Some(&kept), Some(bounds), as_of).await?
                    }
                }
            }
        }
    };
    tracing::debug!(from_snapshot = r.from_snapshot, read = r.read, "replayed");
    Ok(r.state)
}

/// The actor of the reads the command line records.
pub const CLI_ACTOR: &str = "cli";

/// Records a read of the audit history by the command line (an `audit.read`, actor `cli`)
/// before anything of it is printed; a read that cannot be recorded is refused. On SQLite
/// the data dir's lock decides: while `serve` holds it, `serve` alone appends to the chain
/// (a second writer would race its head), so the read is not recorded, and a warning says
/// so; the API's export, which `serve` records, is the way to a recorded copy then.
async fn record_read(
    config: &Config,
    store: &dyn EventStore,
    read: keyward_events::AuditRead,
) -> anyhow::Result<()> {
    let _lock = if config.sqlite_path().is_some() {
        match crate::server::lock_data_dir(&config.data_dir) {
            Ok(f) => Some(f),
            Err(_) => {
                eprintln!(
                    "warning: `serve` is running on this data dir, so this read of the audit history is not recorded in the log; \
                     GET /api/v1/audit/export records the reads it serves"
                );
                return Ok(());
            }
        }
    } else {
        None
    };
    let event = keyward_events::Event::AuditRead(read);
    let ev = keyward_events::NewEvent::new(
        &event,
        keyward_events::ExpectedVersion::Any,
        chrono::Utc::now(),
        CLI_ACTOR,
        None,
    );
    match store.append(vec![vec![ev]]).await {
        Ok(mut results) => match results.pop() {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => bail!("cannot record this read of the audit history: {e}"),
            None => bail!("cannot record this read of the audit history"),
        },
        Err(e) => bail!("cannot record this read of the audit history, so it is refused: {e}"),
    }
}

async fn audit(
    config: &Config,
    store: Arc<dyn EventStore>,
    command: AuditCommand,
) -> anyhow::Result<i32> {
    match command {
        AuditCommand::Verify {
            archive: Some(url),
            public_key,
            checkpoint,
            ..
        } => verify_with_archive(config, store, &url, public_key, checkpoint).await,
        AuditCommand::Verify {
            checkpoint: Some(path),
            public_key,
            ..
        } if !is_json_head(&path) => verify_signed(config, store, &path, public_key).await,
        AuditCommand::Verify { checkpoint, .. } => verify(store, checkpoint).await,
        AuditCommand::Archive {
            to,
            until_seq,
            before,
            segment_level,
            zstd_level,
            no_prune,
        } => {
            let before = before
                .map(|t| {
                    crate::time::parse(&t)
                        .with_context(|| format!("--before {t:?} is not an RFC 3339 time"))
                })
                .transpose()?;
            let req = crate::archive::ArchiveRequest {
                until_seq,
                before,
                level: segment_level,
                zstd_level,
                no_prune,
                actor: CLI_ACTOR.to_owned(),
            };
            archive(config, store, &to, &req).await
        }
        AuditCommand::PublicKey | AuditCommand::GenerateCheckpointKey { .. } => {
            bail!("handled before the store is opened")
        }
        AuditCommand::Replay {
            as_of,
            until_seq,
            format,
        } => {
            let as_of = match (as_of, until_seq) {
                (Some(t), _) => AsOf::Time(
                    crate::time::parse(&t)
                        .with_context(|| format!("--as-of {t:?} is not an RFC 3339 time"))?,
                ),
                (None, Some(n)) => AsOf::Seq(n),
                (None, None) => AsOf::Seq(u64::MAX),
            };
            let filter = match as_of {
                AsOf::Time(t) => Some(format!("as_of={}", crate::time::format(&t))),
                AsOf::Seq(u64::MAX) => None,
                AsOf::Seq(n) => Some(format!("until_seq={n}")),
            };
            let head = store.head().await?.seq;
            record_read(
                config,
                store.as_ref(),
                keyward_events::AuditRead {
                    user_id: None,
                    kind: match as_of {
                        AsOf::Time(_) => keyward_events::AuditReadKind::AsOf,
                        AsOf::Seq(_) => keyward_events::AuditReadKind::Replay,
                    },
                    filter,
                    after_seq: None,
                    until_seq: Some(match as_of {
                        AsOf::Seq(n) => n.min(head),
                        AsOf::Time(_) => head,
                    }),
                },
            )
            .await?;
            let state = replay_for_cli(store.as_ref(), config, as_of).await?;
            let at = match as_of {
                AsOf::Time(t) => t,
                // The whole log: the table now.
                AsOf::Seq(u64::MAX) => chrono::Utc::now(),
                // Up to a seq: the table when that event was written, so statuses are
                // those it had then.
                AsOf::Seq(_) => match state.head.seq {
                    0 => chrono::Utc::now(),
                    n => store
                        .read_from(n - 1, 1)
                        .await?
                        .first()
                        .map_or_else(chrono::Utc::now, |e| e.occurred_at),
                },
            };
            print_keys(&state, at, format)?;
            Ok(0)
        }
        AuditCommand::Export {
            from_seq,
            types,
            with_proofs,
        } => {
            let signed = if with_proofs {
                let Some(key) = crate::checkpoint::load_key(config, false)? else {
                    bail!(
                        "--with-proofs needs the checkpoint key: set KEYWARD_CHECKPOINT_KEY \
                         (--checkpoint-key or --checkpoint-key-file); on SQLite `serve` generates \
                         a development key into {}",
                        config
                            .data_dir
                            .join(crate::checkpoint::DEV_KEY_FILE)
                            .display()
                    );
                };
                let size = store.tree_size().await?;
                let dir = config.checkpoint.dir.clone();
                Some(
                    crate::checkpoint::sign_for_export(store.as_ref(), &key, dir.as_deref(), size)
                        .await
                        .context("cannot sign a checkpoint for the export")?,
                )
            } else {
                None
            };
            let head = match &signed {
                Some((cp, _)) => cp.size,
                None => store.head().await?.seq,
            };
            let mut filter: Vec<(&str, String)> = Vec::new();
            if from_seq > 0 {
                filter.push(("from_seq", from_seq.to_string()));
            }
            if with_proofs {
                filter.push(("with_proofs", "true".to_owned()));
            }
            filter.extend(types.iter().map(|t| ("type", t.clone())));
            record_read(
                config,
                store.as_ref(),
                keyward_events::AuditRead {
                    user_id: None,
                    kind: keyward_events::AuditReadKind::Export,
                    filter: (!filter.is_empty())
                        .then(|| serde_urlencoded::to_string(&filter).unwrap_or_default()),
                    after_seq: Some(from_seq.saturating_sub(1)),
                    until_seq: Some(head),
                },
            )
            .await?;
            if let Some(last) = store.archived_segments().await?.last()
                && from_seq <= last.last_seq
            {
                eprintln!(
                    "warning: the usage events (key.used, key.denied) of seqs 1 to {} were archived and pruned from the store: \
                     this export has gaps there, so it verifies as a filtered export (give --with-proofs); \
                     the archive's segments hold them (`audit verify --archive URL`)",
                    last.last_seq
                );
            }
            export(store, from_seq, head, types, signed).await?;
            Ok(0)
        }
        AuditCommand::Checkpoint => {
            let cp = crate::audit::checkpoint(store.as_ref()).await?;
            let cp = json!({ "seq": cp.head.seq, "hash": cp.head.hash, "at": crate::time::format(&cp.at) });
            println!("{cp}");
            Ok(0)
        }
    }
}

/// Whether a `--checkpoint` file is the unsigned JSON head of `audit checkpoint` rather
/// than a signed note.
fn is_json_head(path: &std::path::Path) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|b| b.iter().find(|c| !c.is_ascii_whitespace()).copied())
        == Some(b'{')
}

/// `audit verify --checkpoint NOTE`: the note's signature, then the chain, then that the
/// log reaches the checkpoint's size and its first `size` events hash to its root.
async fn verify_signed(
    config: &Config,
    store: Arc<dyn EventStore>,
    path: &std::path::Path,
    public_key: Option<String>,
) -> anyhow::Result<i32> {
    let verifier = match public_key {
        Some(arg) => keyward_events::note::NoteVerifier::from_text(&public_key_text(&arg)?)
            .map_err(|e| anyhow::anyhow!("--public-key: {e}"))?,
        None => match crate::checkpoint::load_key(config, false)? {
            Some(key) => key.verifier(),
            None => bail!(
                "no public key to check the checkpoint with: give --public-key, or configure KEYWARD_CHECKPOINT_KEY"
            ),
        },
    };
    let cp = match crate::checkpoint::open_file(path, &[verifier]) {
        Ok(cp) => cp,
        Err(e) => {
            println!("FAILED: {e:#}");
            return Ok(1);
        }
    };
    let report = crate::audit::verify_chain(store.as_ref(), None).await?;
    if let Some(f) = &report.failure {
        println!("FAILED: {}", f.reason);
        return Ok(1);
    }
    let file = path.display().to_string();
    let consistency = crate::checkpoint::consistency(store.as_ref(), &cp).await?;
    if let Some(problem) = consistency.problem(&cp, &file) {
        println!("FAILED: {problem}");
        return Ok(1);
    }
    // The store's own tree must prove it too: the RFC 9162 consistency proof from the
    // checkpoint's size to the head, checked against the checkpoint's root.
    if cp.size > 0 && report.head.seq >= cp.size {
        let proven = match crate::audit::consistency(store.as_ref(), cp.size, report.head.seq).await
        {
            Ok(c) => keyward_events::merkle::verify_consistency(
                c.from, c.to, &cp.root, &c.to_root, &c.proof,
            )
            .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = proven {
            println!(
                "FAILED: the store's Merkle tree does not prove the head consistent with the checkpoint {file}: {e}"
            );
            return Ok(1);
        }
    }
    println!(
        "ok: {} verified; head seq {} hash {}; consistent with the signed checkpoint {file} ({} of {}, root {})",
        count(report.checked as usize, "event", "events"),
        report.head.seq,
        report.head.hash,
        count(cp.size as usize, "event", "events"),
        cp.origin,
        cp.root.to_hex()
    );
    Ok(0)
}

/// The checkpoint public key: `--public-key` (text or file), else the configured key's.
fn checkpoint_verifier(
    config: &Config,
    public_key: Option<String>,
) -> anyhow::Result<keyward_events::note::NoteVerifier> {
    match public_key {
        Some(arg) => keyward_events::note::NoteVerifier::from_text(&public_key_text(&arg)?)
            .map_err(|e| anyhow::anyhow!("--public-key: {e}")),
        None => match crate::checkpoint::load_key(config, false)? {
            Some(key) => Ok(key.verifier()),
            None => bail!(
                "no public key to check the archive's checkpoints with: give --public-key, or configure KEYWARD_CHECKPOINT_KEY"
            ),
        },
    }
}

/// `audit archive`: segments written, read back and verified, then the prune.
async fn archive(
    config: &Config,
    store: Arc<dyn EventStore>,
    to: &str,
    req: &crate::archive::ArchiveRequest,
) -> anyhow::Result<i32> {
    let Some(key) = crate::checkpoint::load_key(config, false)? else {
        bail!(
            "the archive signs each segment's checkpoint and there is no checkpoint key: set KEYWARD_CHECKPOINT_KEY \
             (--checkpoint-key or --checkpoint-key-file); on SQLite `serve` generates a development key into {}",
            config
                .data_dir
                .join(crate::checkpoint::DEV_KEY_FILE)
                .display()
        );
    };
    // On SQLite `serve` alone appends while it holds the data dir: a prune (a delete and
    // an append) from here would race its head. Held to the end.
    let _lock = if config.sqlite_path().is_some() && !req.no_prune {
        Some(crate::server::lock_data_dir(&config.data_dir).map_err(|_| {
            anyhow::anyhow!(
                "`serve` is running on the data dir {}: stop it to archive and prune from the command line \
                 (or archive with --no-prune, which deletes nothing)",
                config.data_dir.display()
            )
        })?)
    } else {
        None
    };
    let dest = crate::archive::open_destination(to)?;
    let store_ref = store.as_ref();
    // Before anything is deleted: a projection snapshot at the last seq pruned, so that a
    // start folds the counters from it, never across the hole, and an as-of to any point
    // after the pruned range starts from it.
    let snapshot = async |last_pruned: u64| -> anyhow::Result<()> {
        let Some(kept) = kept_snapshots(config) else {
            bail!(
                "no projection snapshot can be taken (snapshots are off, or no master key is at hand to MAC it): \
                 refusing to prune, since a start could not fold the counters across the pruned events; \
                 the segments were written and verified"
            );
        };
        crate::archive::snapshot_at(store_ref, &kept, config.snapshots_keep, last_pruned).await
    };
    let report = crate::archive::run(
        store_ref,
        &dest,
        &key,
        config.checkpoint.dir.as_deref(),
        req,
        snapshot,
    )
    .await?;
    for name in &report.written {
        println!("verified {name}");
    }
    if req.no_prune {
        println!(
            "{} written and verified in {}; nothing pruned (--no-prune)",
            count(report.written.len(), "segment", "segments"),
            dest.url
        );
    } else if report.pruned_segments.is_empty() {
        println!(
            "nothing to prune: the archive covers up to seq {} (whole segments of {} events only)",
            report.covered,
            1u64 << req.level
        );
    } else {
        println!(
            "pruned {} from {}; the archive covers up to seq {}",
            count(report.pruned_events as usize, "usage event", "usage events"),
            count(report.pruned_segments.len(), "segment", "segments"),
            report.covered
        );
    }
    if !report.written.is_empty() {
        println!(
            "{} compressed; written in {:.1} s, read back and verified in {:.1} s, snapshot {:.1} s, pruned in {:.1} s",
            human_bytes(report.bytes),
            report.write.as_secs_f64(),
            report.verify.as_secs_f64(),
            report.snapshot.as_secs_f64(),
            report.prune.as_secs_f64()
        );
    }
    Ok(0)
}

/// `audit verify --archive URL`: the store's chain (across the pruned holes), then every
/// segment of the archive. Exits 1 naming each bad segment.
async fn verify_with_archive(
    config: &Config,
    store: Arc<dyn EventStore>,
    url: &str,
    public_key: Option<String>,
    checkpoint: Option<PathBuf>,
) -> anyhow::Result<i32> {
    let verifier = checkpoint_verifier(config, public_key.clone())?;
    if let Some(path) = &checkpoint {
        let code = if is_json_head(path) {
            verify(store.clone(), checkpoint.clone()).await?
        } else {
            verify_signed(config, store.clone(), path, public_key).await?
        };
        if code != 0 {
            return Ok(code);
        }
    }
    let report = crate::audit::verify_chain(store.as_ref(), None).await?;
    if let Some(f) = &report.failure {
        println!("FAILED: {}", f.reason);
        return Ok(1);
    }
    let dest = crate::archive::open_destination(url)?;
    let (problems, segments, events, _) =
        crate::archive::verify_archive(Some(store.as_ref()), &dest, &verifier).await?;
    if !problems.is_empty() {
        for p in &problems {
            println!("FAILED: {p}");
        }
        return Ok(1);
    }
    println!(
        "ok: {} in the store verified ({} pruned, crossed by their kept hashes); {} in {} of the archive {url} verified; head seq {} hash {}",
        count(report.checked as usize, "event", "events"),
        report.pruned,
        count(events as usize, "event", "events"),
        count(segments as usize, "segment", "segments"),
        report.head.seq,
        report.head.hash
    );
    Ok(0)
}

/// `audit verify --archive URL --offline --public-key KEY`: the archive with no database.
async fn verify_archive_offline(url: &str, public_key: &str) -> anyhow::Result<i32> {
    let verifier = keyward_events::note::NoteVerifier::from_text(&public_key_text(public_key)?)
        .map_err(|e| anyhow::anyhow!("--public-key: {e}"))?;
    let dest = crate::archive::open_destination(url)?;
    let (problems, segments, events, covered) =
        crate::archive::verify_archive(None, &dest, &verifier).await?;
    if !problems.is_empty() {
        for p in &problems {
            println!("FAILED: {p}");
        }
        return Ok(1);
    }
    println!(
        "ok: {} in {} of the archive {url} verified, seqs 1 to {covered}, signed by {} \
         (offline: the store was not compared)",
        count(events as usize, "event", "events"),
        count(segments as usize, "segment", "segments"),
        verifier.name()
    );
    Ok(0)
}

async fn verify(store: Arc<dyn EventStore>, checkpoint: Option<PathBuf>) -> anyhow::Result<i32> {
    let cp: Option<Head> = match checkpoint {
        Some(p) => {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a checkpoint", p.display()))?,
            )
        }
        None => None,
    };
    let report = crate::audit::verify_chain(store.as_ref(), cp).await?;
    if let Some(f) = &report.failure {
        println!("FAILED: {}", f.reason);
        return Ok(1);
    }
    let pruned = if report.pruned > 0 {
        format!(
            " ({} archived, crossed by their kept hashes; `audit verify --archive URL` checks the segments)",
            count(report.pruned as usize, "pruned event", "pruned events")
        )
    } else {
        String::new()
    };
    println!(
        "ok: {} verified{pruned}; head seq {} hash {}",
        count(report.checked as usize, "event", "events"),
        report.head.seq,
        report.head.hash
    );
    Ok(0)
}

fn print_keys(state: &State, at: crate::time::Timestamp, format: Format) -> anyhow::Result<()> {
    let mut keys: Vec<_> = state.keys.iter().collect();
    keys.sort_by(|a, b| a.key_id().cmp(b.key_id()));
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            let rows: Vec<_> = keys
                .iter()
                .map(|k| {
                    json!({
                        "key_id": k.key_id(), "name": k.name(), "owner_id": k.owner_id(),
                        "owner": owner_name(state, k.owner_id()), "prefix": k.prefix(),
                        "status": k.status(at), "expires_at": crate::time::format(&k.expires_at),
                        "scopes": k.scopes(), "provider_ids": k.provider_ids().collect::<Vec<_>>(),
                    })
                })
                .collect();
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(
                    &json!({ "as_of": crate::time::format(&at), "head_seq": state.head.seq, "keys": rows })
                )?
            )?;
        }
        Format::Table => {
            writeln!(
                out,
                "as of {} (seq {})",
                crate::time::format(&at),
                state.head.seq
            )?;
            writeln!(
                out,
                "{:<31} {:<24} {:<16} {:<8} {:<27} PREFIX",
                "KEY", "NAME", "OWNER", "STATUS", "EXPIRES"
            )?;
            for k in keys {
                let status = match k.status(at) {
                    KeyStatus::Active => "active",
                    KeyStatus::Grace => "grace",
                    KeyStatus::Expired => "expired",
                    KeyStatus::Deleted => "deleted",
                };
                let name: String = k.name().chars().take(24).collect();
                let who: String = owner_name(state, k.owner_id()).chars().take(16).collect();
                writeln!(
                    out,
                    "{:<31} {:<24} {:<16} {:<8} {:<27} {}",
                    k.key_id(),
                    name,
                    who,
                    status,
                    crate::time::format(&k.expires_at),
                    k.prefix()
                )?;
            }
        }
    }
    Ok(())
}

/// The events after `from_seq - 1` up to `until` (the head before this read was
/// recorded: the record is not part of the export).
async fn export(
    store: Arc<dyn EventStore>,
    from_seq: u64,
    until: u64,
    types: Vec<String>,
    signed: Option<(keyward_events::note::Checkpoint, String)>,
) -> anyhow::Result<()> {
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(until.saturating_sub(from_seq));
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} events ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let filter = EventFilter {
        after_seq: from_seq.saturating_sub(1),
        until_seq: Some(until),
        types,
        ..EventFilter::default()
    };
    let mut after = filter.after_seq;
    let store_ref = store.clone();
    let mut pages = std::pin::pin!(crate::audit::pages(store, filter, crate::audit::PAGE));
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if let Some((_, note)) = &signed {
        writeln!(out, "{}", keyward_events::export::checkpoint_line(note))?;
    }
    while let Some(page) = pages.try_next().await? {
        let Some(last) = page.last() else { break };
        let advanced = last.seq.saturating_sub(after);
        after = last.seq;
        match &signed {
            None => {
                for env in &page {
                    serde_json::to_writer(&mut out, &*keyward_events::upcast::readable(env))?;
                    out.write_all(b"\n")?;
                }
            }
            Some((cp, _)) => {
                let proofs =
                    crate::audit::inclusion_proofs(store_ref.as_ref(), &page, cp.size, &cp.root)
                        .await?;
                for (env, proof) in page.iter().zip(&proofs) {
                    keyward_events::export::write_event_line(
                        &mut out,
                        &keyward_events::upcast::readable(env),
                        Some(proof),
                    )?;
                }
            }
        }
        if let Some(b) = &bar {
            b.inc(advanced);
        }
    }
    out.flush()?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

/// `audit verify --export`: the offline verifier of the keyward-events crate, with no
/// config and no store. Exits 1 naming the first bad seq.
/// `--public-key`: the key's text, or a file holding it.
fn public_key_text(k: &str) -> anyhow::Result<String> {
    let path = std::path::Path::new(k);
    if path.is_file() {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .with_context(|| format!("cannot read the public key {k}"))
    } else {
        Ok(k.trim().to_owned())
    }
}

fn verify_export_offline(
    export: &std::path::Path,
    checkpoint: Option<&std::path::Path>,
    public_key: Option<&str>,
    complete: bool,
    filtered: bool,
    strict: bool,
) -> anyhow::Result<i32> {
    use keyward_events::verify::{Mode, Options};
    let checkpoint = checkpoint
        .map(|p| {
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the checkpoint {}", p.display()))
        })
        .transpose()?;
    let public_key = public_key.map(public_key_text).transpose()?;
    let opts = Options {
        mode: match (complete, filtered) {
            (true, _) => Mode::Complete,
            (_, true) => Mode::Filtered,
            _ => Mode::Auto,
        },
        checkpoint,
        public_key,
        strict,
    };
    let result = if export == std::path::Path::new("-") {
        keyward_events::verify::verify_export(std::io::stdin().lock(), &opts)
    } else {
        let f = std::fs::File::open(export)
            .with_context(|| format!("cannot open the export {}", export.display()))?;
        keyward_events::verify::verify_export(std::io::BufReader::with_capacity(1 << 20, f), &opts)
    };
    match result {
        Ok(report) => {
            print!("{report}");
            Ok(0)
        }
        Err(e) => {
            match e.seq() {
                Some(seq) => println!("FAILED at seq {seq}: {e}"),
                None => println!("FAILED: {e}"),
            }
            println!("({} events passed before the failure)", e.checked);
            Ok(1)
        }
    }
}

/// Bytes for a message: `812 B`, `74.1 MB`.
fn human_bytes(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.2} GB", n as f64 / 1e9),
    }
}

/// A duration flag (`1s`, `250ms`) as a `std::time::Duration`.
fn std_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration(s)?
        .to_std()
        .map_err(|_| format!("{s:?} must not be negative"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn mock_provider_takes_a_latency_with_a_unit() {
        let cli = Cli::try_parse_from(["keyward", "mock-provider", "--latency", "250ms"]).unwrap();
        match cli.command {
            Command::MockProvider { latency, .. } => {
                assert_eq!(latency, Some(std::time::Duration::from_millis(250)));
            }
            other => panic!("{other:?}"),
        }
        let e = Cli::try_parse_from(["keyward", "mock-provider", "--latency", "5"]).unwrap_err();
        assert!(e.to_string().contains("--latency"), "{e}");
    }

    #[test]
    fn mock_provider_takes_a_positive_chunk_count() {
        let cli = Cli::try_parse_from(["keyward", "mock-provider", "--chunks", "50"]).unwrap();
        match cli.command {
            Command::MockProvider { chunks, .. } => assert_eq!(chunks, Some(50)),
            other => panic!("{other:?}"),
        }
        for bad in ["0", "-1", "many", "70000"] {
            let arg = format!("--chunks={bad}");
            let e = Cli::try_parse_from(["keyward", "mock-provider", arg.as_str()]).unwrap_err();
            assert!(e.to_string().contains("--chunks"), "{bad}: {e}");
        }
    }
}
