//! Keeping a second worker of rayon's pool awake through a stretch of many small forks
//! (a training step, a Hessian-vector product): woken from sleep for each fork, it would
//! start tens of microseconds late on a small virtual machine.

use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `work` on the calling thread while another worker of the pool waits actively,
/// running forked halves as they appear, until `work` returns (or panics). With one
/// thread in the pool, runs `work` alone. The trainer runs each step this way; a loop of
/// one's own that makes many products of a few hundred microseconds or less gains from
/// it too, at the cost of a core kept busy while `work` runs.
///
/// The waiting worker is a job spawned before `work` starts, so it is the oldest job on
/// the calling worker's deque: thieves take the oldest first, so it is taken before any
/// half that `work` forks, and the calling worker never runs it itself while `work`
/// waits for a stolen half (which would wait for `work` to end).
pub fn with_a_worker_awake<R>(work: impl FnOnce() -> R) -> R {
    if rayon::current_num_threads() < 2 {
        return work();
    }
    let done = AtomicBool::new(false);
    /// Tells the waiting worker to stop, also when `work` panics.
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    rayon::in_place_scope(|s| {
        s.spawn(|_| {
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::hint::spin_loop();
                }
            }
        });
        let _done = Done(&done);
        work()
    })
}
