//! Threads for work that must not slow the broker down: plugin chains that
//! have just burnt time failing run their calls here, in the lowest CPU
//! scheduling class (`SCHED_IDLE` on Linux), so the kernel gives the
//! writer, the network tasks and well-behaved chains the CPU first. A plugin that spins to its
//! deadline on every call then takes CPU only when the broker leaves it
//! idle, and acks on other topics keep their latency (issue 12, "other
//! topics keep flowing"). Its own topic waits instead: its calls queue
//! here, one per thread.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// The lane's threads, started on first use: one per CPU, so demoted
/// chains can still use every core the broker leaves idle.
static LANE: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();

/// The work was lost: its thread could not be started or the job panicked.
#[derive(Debug, thiserror::Error)]
#[error("low-priority work did not finish: {0}")]
pub struct Lost(&'static str);

/// Runs `work` on a low-priority thread and waits for its result.
pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Lost> {
    let (reply, answer) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = reply.send(work());
    });
    LANE.get_or_init(start)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send(job)
        .map_err(|_| Lost("no low-priority thread is running"))?;
    answer.await.map_err(|_| Lost("the job panicked"))
}

fn start() -> Mutex<Sender<Job>> {
    let (tx, rx) = channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let threads = thread::available_parallelism().map_or(1, |n| n.get());
    for i in 0..threads {
        let rx = rx.clone();
        let spawned = thread::Builder::new()
            .name(format!("edgebus-low-{i}"))
            .spawn(move || serve(&rx));
        if let Err(error) = spawned {
            tracing::error!(%error, "a low-priority thread did not start");
        }
    }
    Mutex::new(tx)
}

fn serve(jobs: &Mutex<Receiver<Job>>) {
    lower_priority();
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else {
            return;
        };
        // A panicking job drops its reply (the caller sees `Lost`); the
        // thread goes on serving.
        let _ = catch_unwind(AssertUnwindSafe(job));
    }
}

/// Puts the calling thread in the `SCHED_IDLE` class
/// (`sched_setscheduler`, for which libc has no safe wrapper; on Linux pid
/// 0 names the calling thread, not the process). Unlike nice 19, which a
/// waking thread may still wait behind for a scheduler slice (a few ms
/// under EEVDF), an idle-class thread is preempted at once by any other
/// that wakes, so the writer and the network tasks never queue behind it.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param`, which outlives the call,
    // and changes only this thread's scheduling class.
    let done = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if done != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "low-priority thread runs at normal priority"
        );
    }
}

/// Elsewhere the lane's threads keep normal priority.
#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_at_idle_priority_and_survives_a_panicking_job() {
        assert_eq!(run(|| 6 * 7).await.unwrap(), 42);
        #[cfg(target_os = "linux")]
        {
            #[allow(unsafe_code)]
            // SAFETY: sched_getscheduler only reads its argument.
            let policy = run(|| unsafe { libc::sched_getscheduler(0) })
                .await
                .unwrap();
            assert_eq!(policy, libc::SCHED_IDLE);
        }
        let lost = run(|| -> u32 { panic!("a plugin host bug") }).await;
        assert!(lost.is_err());
        let threads = thread::available_parallelism().map_or(1, |n| n.get());
        for _ in 0..threads + 1 {
            assert_eq!(run(|| "still serving").await.unwrap(), "still serving");
        }
    }
}
