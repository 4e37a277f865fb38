//! Harness for blockprobe's integration tests: the real binary, real BPF, real Pythons.
//!
//! Run them with `cargo xtask test` (as root). Directly:
//! `BLOCKPROBE_BIN=$PWD/target/debug/blockprobe BLOCKPROBE_PYDEPS=$PWD/target/pydeps
//! cargo test -p blockprobe-tests -- --test-threads=1` (both default to those paths).
//! Tests of a missing full-matrix interpreter (see `blockprobe_pythons`) skip, saying why,
//! unless `BLOCKPROBE_FULL_MATRIX=1`, which `cargo xtask test` sets when all are there.
//!
//! # How a test talks to a scenario script
//!
//! The scripts in `tests/scripts` follow the protocol of `tests/scripts/bptest.py`: each
//! starts its loop(s), prints `LOOP <name> <tid>` per loop and `READY <pid>`, and runs its
//! scenario at once, as real programs block whenever they like. A test about a steady
//! state marks it by starting the script with `BPTEST_GO=1` ([`Python::command`] and
//! [`Blockprobe::steady`] do; [`run_scenario`] does not): the script then waits for `GO` on
//! stdin, which the test sends once blockprobe has reported a `loop` event for every
//! thread the script listed. The script runs its scenario, timing each blocking call itself
//! (`DONE <name> <ns>`), prints `FINISHED`, and stays alive until `QUIT` or the end of its
//! stdin. The test sends `QUIT` only after blockprobe has reported the stalls it expects:
//! blockprobe symbolizes a stall by reading the process's memory, which needs the process.
//!
//! Under `blockprobe run` the script inherits blockprobe's stdin and stdout, so the test
//! writes `GO`/`QUIT` to blockprobe's stdin, and reads the script's lines from
//! blockprobe's stdout: lines that start with `{"event"` are blockprobe's, the others the
//! script's. That only works if every line reaches the pipe in one `write(2)`; a line that
//! is not whole (JSON that does not parse, or `{"event"` inside another line) fails the
//! test.
//!
//! # Waiting
//!
//! Tests never sleep for a fixed time and are never retried. Every wait is for a condition
//! ([`CtxRef::wait_for`]), bounded by [`TIMEOUT`], and fails at once if a process the test
//! still needs exits. A failure message carries everything seen so far: the stdout and
//! stderr of every process the test started. Processes are killed when the test's [`Ctx`]
//! is dropped, also when the test fails.
//!
//! # How long a stall is
//!
//! blockprobe's stall is the off-await part of one loop iteration: from the loop leaving
//! its poller (`epoll_wait` returning) to it coming back. The script's own measurement,
//! `time.monotonic_ns()` taken just before and just after the blocking call, lies inside
//! that interval and reads the same clock (CLOCK_MONOTONIC), so a stall cannot be shorter
//! than it: [`BELOW`] (1 ms) only covers the two sides taking their timestamps at slightly
//! different points (syscall boundaries vs Python calls). A stall is longer only by the few
//! Python lines around the call in the same iteration, and by waiting for the GIL after
//! `epoll_wait` returns when another thread holds it, which the interpreter bounds by its
//! switch interval (5 ms): hence [`ABOVE`] (5 ms), plus the time the stall spent waiting
//! for a CPU (its `runqueue` share, as blockprobe measured it): on a busy machine the loop
//! may be preempted anywhere in the interval, also outside the script's measurement. On a
//! virtual machine the hypervisor may also stop a CPU for a while (steal time), which
//! neither side sees as such: the loop looks on CPU. The test adds the steal time the
//! host reported while it ran ([`CtxRef::stolen_ns`], 0 on a quiet host).
//!
//! So a script times the whole synchronous stretch of its blocking coroutine when that
//! stretch releases the GIL more than once (blocking_recv.py: connect, send, recv).
//!
//! The time a stall spent blocked for its cause (`causes[cause]`) is checked against what
//! the script asked for instead (a 200 ms sleep, a server's 150 ms delay), less
//! [`CAUSE_SLACK`]: the kernel never ends a sleep early, but a server's delay starts when
//! it reads the request, a little before the client enters `recv()` (the client may first
//! wait up to a switch interval for the GIL); and the scheduling delay after a wake-up,
//! which the script's measurement includes, may be accounted to another cause.

//!
//! # Rooms
//!
//! - [`env`](mod@env): paths, root, clocks, steal time, memory;
//! - [`python`]: the interpreters and the matrix macro;
//! - [`events`]: what blockprobe and the scripts print;
//! - [`ctx`]: the test context, its processes, waiting and failing;
//! - [`protocol`]: the steps of the scripts' protocol around blockprobe;
//! - [`checks`]: what the tests demand of blockprobe's output and stalls;
//! - [`blockprobe`]: the one builder of blockprobe's command lines;
//! - [`scenario`]: a whole scenario under `blockprobe run`;
//! - [`pyspy`]: py-spy as an outside oracle.

pub mod blockprobe;
pub mod checks;
pub mod ctx;
pub mod env;
pub mod events;
pub mod protocol;
pub mod pyspy;
pub mod python;
pub mod scenario;

pub use blockprobe::*;
pub use checks::*;
pub use ctx::*;
pub use env::*;
pub use events::*;
pub use python::*;
pub use scenario::*;
