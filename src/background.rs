//! CPU work that must not take the proxy's cores: one thread at the lowest scheduling
//! priority, fed a job at a time.
//!
//! The scheduled archive (`serve --archive-to`) compresses, hashes and verifies millions of
//! events. Run as ordinary async code it held a runtime worker for a page at a time (and
//! for a whole segment's verify), and the proxy's p99 at 5,000 requests a second went from
//! about 10 ms to 400-850 ms while it ran (BENCHMARKS.md, "The proxy while serve
//! archives"). Here that work runs on its own thread at nice 19: the kernel gives it the
//! cores the request path leaves idle, and the runtime's workers are only awaiting it.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::OnceLock;
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

/// The thread's name, as `top -H` and `/proc/<pid>/task/*/comm` show it.
pub const THREAD_NAME: &str = "kw-background";

/// The nice value the thread runs at (the lowest priority a thread can give itself).
pub const NICE: i32 = 19;

static QUEUE: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();

fn queue() -> Option<&'static mpsc::Sender<Job>> {
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let started = std::thread::Builder::new()
                .name(THREAD_NAME.to_owned())
                .spawn(move || {
                    lower_priority();
                    for job in rx {
                        job();
                    }
                });
            match started {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the background thread; its work runs on the blocking pool");
                    None
                }
            }
        })
        .as_ref()
}

/// Lowers the calling thread's scheduling priority to [`NICE`]. On Linux the nice value
/// belongs to a thread, and `setpriority(PRIO_PROCESS, 0, …)` sets the caller's only.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority takes plain integers and touches no memory of ours.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
        if rc != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "cannot lower the background thread's priority"
            );
        }
    }
}

/// Runs `f` on the background thread and waits for it without holding a runtime worker.
/// Jobs run one at a time, in the order given. A panic in `f` is raised again here.
pub async fn run<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    });
    let answer = match queue() {
        Some(q) => match q.send(job) {
            Ok(()) => rx.await,
            Err(mpsc::SendError(job)) => {
                // The thread is gone (it never is: jobs' panics are caught). Run it anyway.
                let _ = tokio::task::spawn_blocking(job).await;
                rx.await
            }
        },
        None => {
            let _ = tokio::task::spawn_blocking(job).await;
            rx.await
        }
    };
    match answer {
        Ok(Ok(r)) => r,
        Ok(Err(panic)) => resume_unwind(panic),
        // The job was dropped unrun: only if its thread died mid-job, which a caught panic
        // cannot cause.
        Err(_) => resume_unwind(Box::new("the background job was dropped unrun")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_one_low_priority_thread_in_order() {
        let before = current_nice();
        let mut seen = Vec::new();
        for i in 0..3 {
            let (name, nice, i) = run(move || {
                let name = std::thread::current().name().map(str::to_owned);
                (name, current_nice(), i)
            })
            .await;
            assert_eq!(name.as_deref(), Some(THREAD_NAME));
            #[cfg(target_os = "linux")]
            assert_eq!(nice, NICE);
            let _ = nice;
            seen.push(i);
        }
        assert_eq!(seen, vec![0, 1, 2]);
        // The caller's own priority is untouched.
        assert_eq!(current_nice(), before);
    }

    #[tokio::test]
    async fn a_panicking_job_panics_its_caller_and_the_thread_lives_on() {
        let caught = tokio::spawn(run(|| -> u8 { std::panic::panic_any("boom") })).await;
        assert!(caught.is_err_and(|e| e.is_panic()));
        assert_eq!(run(|| 7).await, 7);
    }

    fn current_nice() -> i32 {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: getpriority takes plain integers. It may return -1 legitimately, but
            // not for these threads (0 or 19).
            unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
        }
        #[cfg(not(target_os = "linux"))]
        0
    }
}
