//! The first admin and their key.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{Duration, Utc};
use keyward_events::{Role, Scope};

use crate::commands::{Actor, CommandError, Commands, NewKey};
use crate::crypto::Secret;

pub const INITIAL_ADMIN_KEY_FILE: &str = "initial-admin-key";
pub const ADMIN_KEY_LIFETIME_DAYS: i64 = 30;

pub struct Bootstrapped {
    pub user_id: String,
    pub key_id: String,
    pub secret: Secret,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("user {0:?} exists but is not an admin")]
    NotAdmin(String),
    #[error("--username: {0}")]
    InvalidUsername(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Creates the admin user `username` if missing, and a new `full` admin key for them,
/// in one atomic unit.
pub async fn bootstrap(cmds: &Commands, username: &str) -> Result<Bootstrapped, BootstrapError> {
    bootstrap_with_password(cmds, username, None).await
}

/// As [`bootstrap`], and sets the admin's console password (an argon2id PHC string) in the
/// same unit: on the new user's `user.created`, or a `user.updated` of an existing admin.
pub async fn bootstrap_with_password(
    cmds: &Commands,
    username: &str,
    password_hash: Option<crate::crypto::PasswordHash>,
) -> Result<Bootstrapped, BootstrapError> {
    if let Some(why) = crate::names::username_problem(username) {
        return Err(BootstrapError::InvalidUsername(why));
    }
    let actor = Actor::system();
    let existing = cmds
        .live
        .read()
        .users
        .by_username(username)
        .map(|u| (u.user_id.clone(), u.role, u.version));
    let mut unit = Vec::new();
    let user_id = match existing {
        Some((id, Role::Admin, version)) => {
            if let Some(phc) = password_hash {
                unit.push(cmds.password_set(&actor, &id, version, phc));
            }
            id
        }
        Some(_) => return Err(BootstrapError::NotAdmin(username.to_owned())),
        None => {
            let (ev, id) = cmds.user_created(&actor, username, Role::Admin, password_hash);
            unit.push(ev);
            id
        }
    };
    let (ev, key_id, secret) = cmds.key_created(
        &actor,
        NewKey {
            name: format!("{username} bootstrap key"),
            owner_id: user_id.clone(),
            provider_ids: Vec::new(),
            expires_at: Utc::now() + Duration::days(ADMIN_KEY_LIFETIME_DAYS),
            scopes: vec![Scope::Full],
            models: Vec::new(),
            rate_limit: None,
            quota: None,
            ip_allowlist: Vec::new(),
            metadata: serde_json::Map::new(),
            rotated_from: None,
        },
    );
    unit.push(ev);
    cmds.submit(unit).await?;
    Ok(Bootstrapped {
        user_id,
        key_id,
        secret,
    })
}

/// Writes the secret to `<data dir>/initial-admin-key`, readable by its owner only.
pub fn write_secret_file(data_dir: &Path, secret: &Secret) -> Result<PathBuf, BootstrapError> {
    let path = data_dir.join(INITIAL_ADMIN_KEY_FILE);
    let io = |source| BootstrapError::Io {
        path: path.clone(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    writeln!(f, "{}", secret.expose()).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(path)
}
