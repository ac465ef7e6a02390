//! Starting and stopping the service: the data dir and its lock, the keyring, the store,
//! the rebuild of the live projections, the appender, the tail (PostgreSQL), the first-run
//! bootstrap and the HTTP listener with a graceful shutdown.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::bootstrap;
use crate::commands::Commands;
use crate::config::Config;
use crate::crypto::{Keyring, MasterKey};
use crate::http::proxy::Proxy;
use crate::live::{Live, RebuildReport};
use crate::snapshot::{self, Snapshots};
use crate::store::appender::{Appender, AppenderConfig, AppenderHandle};
use crate::store::postgres::PostgresStore;
use crate::store::{self, EventStore};
use crate::tail::{self, TailHandle};
use crate::{App, AppState};

pub const LOCK_FILE: &str = "keyward.lock";
pub const DEV_MASTER_KEY_FILE: &str = "master.key";

/// A started service without its listener: what `serve` runs and what tests drive.
pub struct Running {
    pub state: AppState,
    pub report: RebuildReport,
    /// Where the first run wrote the initial admin key, if this start created it.
    pub initial_key_file: Option<PathBuf>,
    appender: AppenderHandle,
    sweeper: (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ),
    /// Sends expiry notices, when a webhook is configured.
    notifier: Option<tokio::task::JoinHandle<()>>,
    /// The proxy's background upkeep: held-back denials and limit tables.
    proxy_janitor: tokio::task::JoinHandle<()>,
    /// On PostgreSQL: folds other nodes' events into this node's live projections.
    tail: Option<TailHandle>,
    /// The projection snapshot writer, unless snapshots are off.
    snapshots: Option<(Arc<Snapshots>, tokio::task::JoinHandle<()>)>,
    /// After a start from a snapshot: verifies the chain up to it in the background.
    prefix_check: Option<tokio::task::JoinHandle<()>>,
    /// The signed checkpoint writer and its own stop: it writes a last checkpoint once
    /// every queued event is committed.
    checkpoints: Option<(
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    )>,
    /// The scheduled archive (`--archive-to`) and its stop.
    archiver: Option<(
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    )>,
    _lock: Option<File>,
}

impl Running {
    /// Stops taking events and commits everything queued.
    pub async fn shutdown(self) {
        self.state.0.set_ready(false);
        let (stop, task) = self.sweeper;
        let _ = stop.send(true);
        let _ = task.await;
        if let Some(n) = self.notifier {
            let _ = n.await;
        }
        if let Some((stop, task)) = self.archiver {
            let _ = stop.send(true);
            let _ = task.await;
        }
        self.proxy_janitor.abort();
        let _ = self.proxy_janitor.await;
        let app = &self.state.0;
        app.proxy.flush_denials(&app.commands.appender, true).await;
        self.appender.shutdown().await;
        if let Some(tail) = self.tail {
            tail.shutdown().await;
        }
        if let Some((stop, task)) = self.checkpoints {
            let _ = stop.send(true);
            let _ = task.await;
        }
        if let Some(check) = self.prefix_check {
            check.abort();
            let _ = check.await;
        }
        if let Some((snapshots, task)) = self.snapshots {
            let _ = task.await;
            // Everything is committed and folded: the next start reads nothing it need not.
            snapshots.write_if_due(&app.live, 1).await;
        }
    }
}

pub async fn start(config: Config) -> anyhow::Result<Running> {
    let sqlite = config.sqlite_path();
    let lock = if sqlite.is_some() {
        create_private_dir(&config.data_dir)?;
        Some(lock_data_dir(&config.data_dir)?)
    } else {
        None
    };
    private_data_files(&config.data_dir);
    let keyring = load_keyring(&config)?;
    let proxy = Proxy::new(&config).context("cannot build the HTTP client for providers")?;
    let cannot_open = || {
        format!(
            "cannot open the event store {}",
            redact_url(&config.database_url)
        )
    };
    // On PostgreSQL the concrete store is kept too: the tail and the first-run lock need it.
    let (store, postgres): (Arc<dyn EventStore>, Option<Arc<PostgresStore>>) =
        if store::is_postgres(&config.database_url) {
            let pg = Arc::new(
                PostgresStore::connect(&config.database_url)
                    .await
                    .with_context(cannot_open)?,
            );
            (pg.clone(), Some(pg))
        } else {
            let store = store::open(&config.database_url)
                .await
                .with_context(cannot_open)?;
            (store, None)
        };
    store.ping().await.with_context(|| {
        format!(
            "the event store {} cannot be written",
            redact_url(&config.database_url)
        )
    })?;

    let checkpoint_start = start_checkpoints(&config, store.as_ref()).await?;

    let snapshot_keys = keyring.snapshot_mac_keys();
    // The newest kept snapshot that passes its checks and that the log holds (each one
    // skipped is logged), else the format-1 file of earlier versions.
    let snapshot = if config.snapshot_every > 0 {
        let kept = crate::history::Kept {
            dir: config.data_dir.clone(),
            keys: snapshot_keys.clone(),
        };
        let found = crate::history::newest_snapshot(store.as_ref(), &kept, u64::MAX, true)
            .await
            .with_context(cannot_open)?;
        if found.is_none() && snapshot::path(&config.data_dir).exists() {
            tracing::warn!(dir = %config.data_dir.display(), "no projection snapshot is usable; folding the whole log");
        }
        found
    } else {
        None
    };
    let (live, report) =
        Live::rebuild_from_loaded(store.clone(), snapshot, config.allow_broken_chain).await?;
    if let Some(seq) = report.broken_at {
        tracing::error!(
            first_bad_seq = seq,
            "THE AUDIT CHAIN IS BROKEN at seq {seq}. Serving anyway because --allow-broken-chain was given. \
             The log cannot be trusted until this is investigated: run `keyward audit verify`."
        );
    }
    tracing::info!(
        events = report.events,
        head_seq = report.head.seq,
        snapshot_seq = report.snapshot.map(|h| h.seq),
        elapsed_ms = report.elapsed.as_millis() as u64,
        "live projections rebuilt"
    );
    check_credentials(&live.read().providers, &keyring)?;
    check_passwords(&live.read().users, &keyring);
    let live = Arc::new(live);
    let (appender, handle) = Appender::spawn(
        store.clone(),
        live.clone(),
        AppenderConfig {
            queue_capacity: config.usage_queue_capacity,
            max_batch: config.append_batch_max,
        },
    );
    let mut commands = Commands::new(live.clone(), appender, keyring.clone()).with_key_policy(
        crate::commands::KeyPolicy {
            max_lifetime: config.max_key_lifetime,
            max_keys_per_user: config.max_keys_per_user,
        },
    );
    if let Some(pg) = &postgres {
        // Uniqueness of names and a user's disable hold across every node of the log.
        commands = commands.with_cluster(pg.clone());
    }

    let tail = postgres
        .as_ref()
        .map(|pg| tail::spawn(pg.clone(), live.clone()));

    let mut initial_key_file = None;
    if report.head.seq == 0 {
        // Of several nodes starting on one empty log, only the first to take the lock
        // bootstraps it; the others find its events when they catch up under the lock.
        let first_run = match &postgres {
            Some(pg) => Some(pg.first_run_lock().await?),
            None => None,
        };
        if first_run.is_some() {
            live.catch_up().await?;
        }
        let bootstrapped = if live.head().seq == 0 {
            Some(bootstrap::bootstrap(&commands, "admin").await)
        } else {
            None
        };
        if let Some(lock) = first_run {
            lock.release().await;
        }
        if let Some(b) = bootstrapped {
            let b = b?;
            create_private_dir(&config.data_dir)?;
            let path = bootstrap::write_secret_file(&config.data_dir, &b.secret)?;
            tracing::info!(user_id = %b.user_id, key_id = %b.key_id, path = %path.display(), "first run: created user `admin` and an admin key");
            initial_key_file = Some(path);
        }
    }

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let snapshots = (config.snapshot_every > 0).then(|| {
        let s = Arc::new(Snapshots::new(
            config.data_dir.clone(),
            snapshot_keys.clone(),
            config.snapshot_every as u64,
            config.snapshots_keep,
            report.snapshot.map_or(0, |h| h.seq),
        ));
        let task = s.clone().spawn(live.clone(), stop_rx.clone());
        (s, task)
    });
    let notifier = config
        .notify
        .clone()
        .map(|hook| crate::notify::spawn(commands.clone(), hook, stop_rx.clone()));
    let sweeper = (stop, crate::sweeper::spawn(commands.clone(), stop_rx));
    let mut checkpoints = None;
    if let Some((key, dir, check)) = &checkpoint_start
        && check.problem.is_none()
    {
        let mut writer = crate::checkpoint::Writer::new(
            &config,
            key.clone(),
            dir.clone(),
            store.clone(),
            live.clone(),
            check.clone(),
        );
        // The log as it starts is published before anything is served.
        writer.write_if_due(true).await;
        let (stop, rx) = tokio::sync::watch::channel(false);
        checkpoints = Some((stop, writer.spawn(rx)));
    }
    let archiver = match &config.archive {
        None => None,
        Some(schedule) => {
            let key = match &checkpoint_start {
                Some((key, _, _)) => Some(key.clone()),
                None => crate::checkpoint::load_key(&config, false)?,
            };
            let Some(key) = key else {
                bail!(
                    "--archive-to needs the checkpoint key (KEYWARD_CHECKPOINT_KEY): each segment carries a signed checkpoint"
                );
            };
            if snapshots.is_none() {
                bail!(
                    "--archive-to needs projection snapshots (--snapshot-every > 0): a start after a prune folds from one"
                );
            }
            let dest = crate::archive::open_destination(&schedule.to)
                .with_context(|| format!("--archive-to {}", schedule.to))?;
            let (stop, rx) = tokio::sync::watch::channel(false);
            let task = crate::archive::spawn_schedule(crate::archive::Scheduled {
                schedule: schedule.clone(),
                dest,
                store: store.clone(),
                postgres: postgres.clone(),
                live: live.clone(),
                kept: crate::history::Kept {
                    dir: config.data_dir.clone(),
                    keys: snapshot_keys.clone(),
                },
                keep: config.snapshots_keep,
                key,
                checkpoint_dir: config.checkpoint.dir.clone(),
                stop: rx,
            });
            Some((stop, task))
        }
    };
    let mut app = App::new(config, store, live, commands, keyring, proxy);
    app.checkpoint_key = checkpoint_start.map(|(key, _, _)| key);
    app.set_ready(true);
    let state = AppState(Arc::new(app));
    let proxy_janitor = crate::http::proxy::spawn_sweeper(state.clone());
    let prefix_check = report
        .snapshot
        .map(|head| tokio::spawn(check_prefix(state.clone(), head)));
    Ok(Running {
        checkpoints,
        snapshots,
        prefix_check,
        state,
        proxy_janitor,
        report,
        initial_key_file,
        appender: handle,
        archiver,
        sweeper,
        notifier,
        tail,
        _lock: lock,
    })
}

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let grace = config.shutdown_grace;
    let running = start(config).await?;
    if let Some(path) = &running.initial_key_file {
        // The path, never the secret.
        println!("Initial admin key written to {}", path.display());
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (KEYWARD_LISTEN / --listen)"))?;
    tracing::info!(%listen, "keyward is serving");
    println!("Keyward listening on http://{listen}");

    let router = crate::app(running.state.clone());
    let state = running.state.clone();
    let fds = crate::http::listener::raise_fd_limit();
    let limits = crate::http::listener::HttpLimits::of(&state.0.config, fds);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = crate::http::listener::serve(listener, router, limits, async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested: draining");
        state.0.set_ready(false);
        let _ = stop_tx.send(true);
    });
    let mut stop_rx2 = stop_rx.clone();
    tokio::select! {
        () = server => {}
        _ = async {
            let _ = stop_rx2.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(?grace, "in-flight requests did not finish within the shutdown grace; closing them"),
    }
    // A store that stays down would hold the drain forever: usage events are never
    // dropped while the process lives. Give it the shutdown grace, then say what is lost.
    let queued = running.state.0.commands.appender.queue_depth();
    if tokio::time::timeout(grace, running.shutdown())
        .await
        .is_err()
    {
        tracing::error!(
            queued,
            "the event store did not take the queued usage events within the shutdown grace; they are lost"
        );
        anyhow::bail!("shutdown: the usage queue could not be drained");
    }
    tracing::info!("usage queue drained; bye");
    Ok(())
}

/// The checkpoint key, and the start check of the log against the newest signed checkpoint
/// (see [`crate::checkpoint`]). `None` when no checkpoints are written (PostgreSQL without
/// a key or a directory), with a warning.
async fn start_checkpoints(
    config: &Config,
    store: &dyn EventStore,
) -> anyhow::Result<
    Option<(
        Arc<crate::checkpoint::CheckpointKey>,
        PathBuf,
        crate::checkpoint::StartCheck,
    )>,
> {
    let key = crate::checkpoint::load_key(config, true)?;
    let (key, dir) = match (key, &config.checkpoint.dir) {
        (Some(key), Some(dir)) => (key, dir.clone()),
        (None, _) => {
            tracing::warn!(
                "no checkpoint key (KEYWARD_CHECKPOINT_KEY): no signed checkpoints are written, and the log is not checked against any at start"
            );
            return Ok(None);
        }
        (Some(_), None) => {
            tracing::warn!(
                "no checkpoint directory (KEYWARD_CHECKPOINT_DIR): no signed checkpoints are written, and the log is not checked against any at start"
            );
            return Ok(None);
        }
    };
    let check =
        crate::checkpoint::check_at_start(store, &key, &dir, config.allow_broken_chain).await?;
    match (&check.problem, &check.checked) {
        (Some(problem), _) => tracing::error!(
            problem = %problem,
            "THE LOG DISAGREES WITH ITS NEWEST SIGNED CHECKPOINT: {problem}. Serving anyway because \
             --allow-broken-chain was given; no new checkpoint is signed while it disagrees. \
             The log cannot be trusted until this is investigated."
        ),
        (None, Some((path, cp))) => tracing::info!(
            size = cp.size,
            path = %path.display(),
            "the log is consistent with its newest signed checkpoint"
        ),
        (None, None) => {}
    }
    Ok(Some((key, dir, check)))
}

/// Verifies the chain under the snapshot this node started from, while it serves. A break
/// there means the stored log was altered after the snapshot was written: the live state
/// (from the MACed snapshot) is still the one the chain had, but the audit log is not, so
/// the node says so loudly and, unless `--allow-broken-chain`, stops reporting ready.
async fn check_prefix(state: AppState, head: keyward_events::Head) {
    let app = &state.0;
    let started = std::time::Instant::now();
    match crate::live::verify_prefix(app.store.as_ref(), head).await {
        Ok((checked, timeline)) => {
            app.live.fill_timeline(&timeline);
            app.live.mark_verified();
            tracing::info!(
                checked,
                snapshot_seq = head.seq,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "verified the chain under the projection snapshot"
            );
        }
        Err(brk) => {
            tracing::error!(
                first_bad_seq = brk.seq(),
                error = %brk,
                "THE AUDIT CHAIN IS BROKEN under the projection snapshot this node started from. \
                 Run `keyward audit verify`."
            );
            if !app.config.allow_broken_chain {
                app.set_ready(false);
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(dir).with_context(|| {
            format!(
                "cannot create the data dir {} (KEYWARD_DATA_DIR / --data-dir)",
                dir.display()
            )
        })?;
    }
    Ok(())
}

/// Every file Keyward writes in the data dir, other than the database's own (which the
/// SQLite store makes private when it opens them, see
/// [`crate::store::sqlite::private_files`]).
pub const DATA_DIR_FILES: &[&str] = &[
    LOCK_FILE,
    DEV_MASTER_KEY_FILE,
    bootstrap::INITIAL_ADMIN_KEY_FILE,
    snapshot::FILE,
    crate::checkpoint::DEV_KEY_FILE,
];

/// Sets every file of [`DATA_DIR_FILES`] that exists to 0600: a data dir made by hand, or
/// by an older build, may hold them readable by other local users. Files Keyward creates
/// are created 0600 in the first place. A failure is logged, not fatal.
pub fn private_data_files(dir: &Path) {
    #[cfg(unix)]
    for path in DATA_DIR_FILES.iter().map(|name| dir.join(name)).chain(
        snapshot::kept(dir)
            .into_iter()
            .map(|seq| snapshot::kept_path(dir, seq)),
    ) {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.permissions().mode() & 0o077 != 0
            && let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot make the file private (0600)");
        }
    }
}

/// One `serve` per data dir: a second one would race the first for the SQLite writer and
/// the hash chain's head.
pub(crate) fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join(LOCK_FILE);
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let f = opts
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another keyward process is serving the data dir {} (it holds {}); stop it first",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// The keyring from `KEYWARD_MASTER_KEYS`, or, on the embedded default only, a
/// development key generated into the data dir.
pub fn load_keyring(config: &Config) -> anyhow::Result<Keyring> {
    if let Some(spec) = &config.master_keys {
        return Keyring::parse(spec).context("invalid KEYWARD_MASTER_KEYS");
    }
    if config.sqlite_path().is_none() {
        bail!(
            "KEYWARD_MASTER_KEYS (--master-keys) is required with PostgreSQL: every node must share the keyring"
        );
    }
    let path = config.data_dir.join(DEV_MASTER_KEY_FILE);
    if path.exists() {
        let spec = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let ring = Keyring::parse(spec.trim())
            .with_context(|| format!("{} is not a valid master key file", path.display()))?;
        tracing::warn!(path = %path.display(), "using the development master key file; set KEYWARD_MASTER_KEYS in production");
        return Ok(ring);
    }
    create_private_dir(&config.data_dir)?;
    let key = MasterKey::generate(1);
    let spec = key.to_spec();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    std::io::Write::write_all(&mut f, spec.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::warn!(path = %path.display(), "generated a development master key; this is for development only: set KEYWARD_MASTER_KEYS in production");
    Keyring::new(vec![key]).context("keyring")
}

/// Every live provider credential must open with this keyring before anything is served:
/// a wrong or missing master key stops the start here, naming the provider and the key
/// version, instead of every proxied request failing later.
pub fn check_credentials(
    providers: &keyward_projections::Providers,
    keyring: &Keyring,
) -> anyhow::Result<()> {
    let mut sorted: Vec<_> = providers
        .iter()
        .filter(|p| !p.is_deleted())
        .filter_map(|p| p.credential.as_ref().map(|c| (p, c)))
        .collect();
    sorted.sort_by(|a, b| a.0.provider_id.cmp(&b.0.provider_id));
    for (p, c) in sorted {
        if let Err(e) = keyring.open(&p.provider_id, &c.ciphertext, &c.nonce, c.keyring_version) {
            bail!(
                "cannot decrypt the credential of provider {} ({}) sealed with master key version {}: {e}. \
                 Check KEYWARD_MASTER_KEYS (--master-keys): it holds versions {:?}",
                p.provider_id,
                p.name,
                c.keyring_version,
                keyring.versions()
            );
        }
    }
    Ok(())
}

/// Console passwords are sealed under the keyring too. One that does not open only keeps
/// its user out of the console (keys keep working), so the start goes on, with a warning
/// that names the user and the key version and never the hash.
fn check_passwords(users: &keyward_projections::Users, keyring: &Keyring) {
    for u in users.iter() {
        if let Some(keyward_projections::StoredPassword::Sealed(s)) = &u.password
            && let Err(e) = keyring.open_password(&u.user_id, s)
        {
            tracing::warn!(
                user_id = %u.user_id,
                keyring_version = s.keyring_version,
                error = %e,
                "a console password does not open with KEYWARD_MASTER_KEYS: this user cannot sign in to the console until it is set again"
            );
        }
    }
}

/// A database URL for messages: its password, in the user info or as `?password=`, and
/// any query value not known to be plain, replaced by `***`.
pub fn redact_url(url: &str) -> String {
    crate::redact::database_url(url)
}
