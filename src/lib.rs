//! Keyward: an event-sourced API key service and LLM gateway.

pub mod store;

pub mod time {
    pub use keyward_events::time::*;
}
