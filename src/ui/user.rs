//! The signed-in console user, as pages show it and the session extractors produce it.
//! Both `pages` and `session` use it; it uses neither.

use keyward_events::Role;

use crate::http::caller::Caller;

/// The name of the hidden form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "csrf";

/// The signed-in console user: a session cookie, never an API key.
#[derive(Clone)]
pub struct ConsoleUser {
    pub caller: Caller,
    pub csrf: String,
    pub token: String,
}

/// The session token and the CSRF token are secrets: `Debug` shows the user only.
impl std::fmt::Debug for ConsoleUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleUser")
            .field("user_id", &self.caller.user_id)
            .field("role", &self.caller.role)
            .finish_non_exhaustive()
    }
}

impl ConsoleUser {
    pub fn is_admin(&self) -> bool {
        self.caller.role == Role::Admin
    }

    /// An auditor: every page it may see is read-only.
    pub fn is_auditor(&self) -> bool {
        self.caller.is_auditor()
    }

    /// An admin or an auditor: sees every key, log row and event.
    pub fn reads_everything(&self) -> bool {
        self.caller.reads_everything()
    }
}
