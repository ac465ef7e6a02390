//! The log at a past moment: the projections rebuilt from the events up to a seq or a time.

use anyhow::Context;
use keyward_projections::{AsOf, State};

use crate::store::EventStore;

const PAGE: usize = 10_000;

/// Folds the log up to `as_of`, page by page.
pub async fn replay(store: &dyn EventStore, as_of: AsOf) -> anyhow::Result<State> {
    let mut state = State::default();
    let mut after = 0;
    loop {
        let page = store.read_from(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for env in &page {
            match as_of {
                AsOf::Seq(n) if env.seq > n => return Ok(state),
                AsOf::Seq(_) => state.apply(env)?,
                AsOf::Time(t) if env.occurred_at > t => {}
                AsOf::Time(_) => {
                    let ev = env.decode().with_context(|| format!("seq {}", env.seq))?;
                    state.apply_decoded(env, &ev);
                }
            }
        }
    }
    Ok(state)
}
