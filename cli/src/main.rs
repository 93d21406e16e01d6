//! The `chainrule` command-line program.

mod bench;
mod commands;
mod planted;
mod plot;
mod progress;

use clap::Parser;

/// Keeps freed tensor buffers in the heap instead of returning them to the kernel: glibc
/// maps buffers above 128 KiB with `mmap` and unmaps them on free, so every step of a
/// training loop paid page faults on fresh memory (slow on a ballooned VM). With these
/// limits, freed memory is reused by the next step. Every thread allocates from the main
/// heap (one arena): the command runs on a pool thread (`on_the_pool`), whose own arena
/// would be made of 64 MiB heaps that glibc maps and unmaps as a step's buffers come and
/// go (W9's window: page faults on a tenth of its buffers).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: the declaration matches glibc's `int mallopt(int param, int value)`.
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    const M_ARENA_MAX: i32 = -8;
    // SAFETY: mallopt only changes allocator tuning; called before any other thread starts.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, 256 << 20);
        mallopt(M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// Restores the default action of SIGPIPE, which Rust's runtime ignores: output piped
/// into a reader that stops early (`chainrule gradcheck | head`) then ends the process
/// quietly, as it does every Unix tool, instead of `println!` panicking on the closed pipe.
#[cfg(unix)]
fn end_quietly_on_closed_pipe() {
    // SAFETY: the declaration matches C's `sighandler_t signal(int, sighandler_t)` on
    // every Unix target: an `int` and a handler of pointer width (SIG_DFL is 0).
    unsafe extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    // SAFETY: installs the default disposition (no handler code runs in the process);
    // called first thing in main, before any other thread starts.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

#[cfg(not(unix))]
fn end_quietly_on_closed_pipe() {}

/// Runs the command on a worker of rayon's global pool rather than on the main thread.
/// The kernels fork with `rayon::join` many times a training step (each product, the
/// optimizer, every step of a recurrent window). Called from a thread outside the pool, a
/// fork is handed to a sleeping worker while the caller sleeps until it is done: three
/// thread switches per fork, tens of microseconds each on a VM (MNIST's MLP made about
/// 25 switches a step). On a worker, a fork only pushes its second half for the other
/// worker to take. The workers get the main thread's 8 MiB of stack.
fn on_the_pool<R: Send>(run: impl FnOnce() -> R + Send) -> R {
    // an error here means the pool was already built, which leaves it as it is
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(8 << 20)
        .build_global();
    rayon::scope(|_| run())
}

fn main() -> std::process::ExitCode {
    end_quietly_on_closed_pipe();
    keep_freed_memory();
    let args = match commands::Cli::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // one line naming what is wrong (clap adds usage and a hint below it)
            let text = e.render().to_string();
            eprintln!(
                "{}",
                text.lines().next().unwrap_or("error: invalid arguments")
            );
            return std::process::ExitCode::from(2);
        }
    };
    // the learner's page (`serve`) stays on the main thread: its server would hold a
    // worker of the pool for the whole run
    let run = if args.runs_a_server() {
        commands::run(args)
    } else {
        on_the_pool(|| commands::run(args))
    };
    match run {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
