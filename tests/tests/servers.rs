//! Real servers, traced host-wide from before they start: FastAPI under gunicorn with
//! uvicorn workers (uvloop, httptools), and aiohttp's `web.run_app`. Their start-up
//! hooks block in the loop's first iterations, the stalls that hurt most and that a
//! tracer waiting for a steady state never sees.

use std::{collections::BTreeSet, path::Path, time::Duration};

use blockprobe_tests::{
    Ctx, CtxRef, Proc, ProcessGroup, Python, Stall, marker_line, require_root, script,
};

/// The words after `head` of server.py's first line starting with it:
/// `SERVING <port> <process group>`, `WORKERS <pid>…`, `DONE <path> <ns>…`.
fn words_after(launcher: &Proc, head: &str) -> Option<Vec<String>> {
    (launcher.texts().iter())
        .find_map(|t| t.strip_prefix(head))
        .map(|rest| rest.split_whitespace().map(str::to_owned).collect())
}

/// A server started by server.py: its launcher, its process group (killed when the
/// test ends, also on failure) and its pid.
struct Server {
    launcher: Proc,
    _group: ProcessGroup,
    pid: u32,
}

/// Starts `server.py KIND` on `python` (with the servers' packages) and waits until it
/// serves.
fn start_server(ctx: &CtxRef, python: &Python, kind: &str) -> Server {
    let python = python.clone().with_servers();
    let launcher = ctx.spawn(
        &format!("server.py {kind} ({})", python.label),
        python.command(&script("server.py")).arg(kind),
    );
    let serving = ctx.wait_for("server.py's SERVING line", || {
        words_after(&launcher, "SERVING ")
            .and_then(|w| w.get(1).and_then(|pid| pid.parse::<u32>().ok()))
    });
    Server {
        launcher,
        _group: ProcessGroup(serving),
        pid: serving,
    }
}

/// The stalls of `bp` in `pids` whose culprit is `function`.
fn blamed_on(bp: &Proc, pids: &[u32], function: &str) -> Vec<Stall> {
    (pids.iter())
        .flat_map(|&pid| bp.stalls(pid))
        .filter(|s| s.culprit.as_ref().is_some_and(|c| c.function == function))
        .collect()
}

/// Checks that `stall` is blamed on `function` at its `# BLOCK` line of `file`, is a
/// sleep, and lasted as long as the script's sleep `slept` (not much more). A worker
/// forked by a traced server is traced from its first poll on, when its loop starts:
/// a start-up hook may already be blocking by the time blockprobe attached, and its
/// stall is then timed from the attach, a lower bound (`started_before_tracing`).
fn check_blamed(ctx: &CtxRef, stall: &Stall, file: &Path, function: &str, slept: Duration) {
    let line = marker_line(file, &format!("BLOCK {function}"));
    let slept = slept.as_nanos() as u64;
    let high = slept + slept / 2 + ctx.stolen_ns();
    let low = if stall.started_before_tracing {
        slept / 2
    } else {
        slept
    };
    let culprit_ok = stall.culprit.as_ref().is_some_and(|c| {
        c.function == function && c.file == file.to_string_lossy() && c.line == line
    });
    ctx.ensure(
        culprit_ok && stall.cause == "sleep" && (low..=high).contains(&stall.duration_ns),
        || {
            format!(
                "the stall should be a sleep of {low} to {high} ns blamed on {function} at \
                 line {line}: {stall:#?}"
            )
        },
    );
}

/// FastAPI under gunicorn, 2 uvicorn workers, host-wide `trace` started first: each
/// worker's lifespan hook blocks 0.3 s at start-up (one stall per worker pid, blamed on
/// `lifespan`); 5 requests to an `async def` endpoint that calls a sync helper give 5
/// stalls blamed on the helper; 5 requests to a plain `def` endpoint, which FastAPI runs
/// in its thread pool, give none.
fn fastapi_under_gunicorn(python: &Python) {
    require_root();
    let ctx = Ctx::new();
    let app = script("fastapi_app.py");
    let bp = ctx.spawn_trace_host();
    let server = start_server(&ctx, python, "gunicorn");
    let workers: Vec<u32> = ctx.wait_for("server.py's WORKERS line", || {
        words_after(&server.launcher, "WORKERS ")
            .map(|w| w.iter().filter_map(|p| p.parse().ok()).collect())
    });
    let lifespans = ctx.wait_for("a lifespan stall in each worker", || {
        let stalls = blamed_on(&bp, &workers, "lifespan");
        (stalls.len() >= workers.len()).then_some(stalls)
    });
    let pids: BTreeSet<u32> = lifespans.iter().map(|s| s.pid).collect();
    ctx.ensure(
        lifespans.len() == workers.len() && pids == workers.iter().copied().collect(),
        || format!("one lifespan stall per worker {workers:?}: {lifespans:#?}"),
    );
    for stall in &lifespans {
        check_blamed(&ctx, stall, &app, "lifespan", Duration::from_millis(300));
    }

    server.launcher.send("GET /async 5");
    ctx.wait_for("the async requests", || {
        words_after(&server.launcher, "DONE /async ")
    });
    let helpers = ctx.wait_for("a stall per async request", || {
        let stalls = blamed_on(&bp, &workers, "render_report");
        (stalls.len() >= 5).then_some(stalls)
    });
    server.launcher.send("GET /sync 5");
    ctx.wait_for("the sync requests", || {
        words_after(&server.launcher, "DONE /sync ")
    });
    // Time for a stall of the last sync request to come in.
    std::thread::sleep(Duration::from_millis(500));
    let helpers_now = blamed_on(&bp, &workers, "render_report").len();
    ctx.ensure(helpers.len() == 5 && helpers_now == 5, || {
        format!("5 stalls blamed on render_report, one per async request: {helpers:#?}")
    });
    for stall in &helpers {
        check_blamed(
            &ctx,
            stall,
            &app,
            "render_report",
            Duration::from_millis(50),
        );
    }
    let in_pool: Vec<Stall> = (workers.iter())
        .flat_map(|&pid| bp.stalls(pid))
        .filter(|s| s.stack.iter().any(|f| f.function == "sync_endpoint"))
        .collect();
    ctx.ensure(in_pool.is_empty(), || {
        format!("the thread pool's sync endpoint blocks no loop: {in_pool:#?}")
    });
    stop(&ctx, &bp, &server);
}

/// aiohttp's `web.run_app`, host-wide `trace` started first: its `on_startup` hook
/// blocks 0.3 s in the loop's first iterations, and that stall is reported.
fn aiohttp_on_startup(python: &Python) {
    require_root();
    let ctx = Ctx::new();
    let app = script("aiohttp_app.py");
    let bp = ctx.spawn_trace_host();
    let server = start_server(&ctx, python, "aiohttp");
    let app_pid = ctx.wait_for("the app's process", || {
        let children = std::fs::read_to_string(format!(
            "/proc/{0}/task/{0}/children",
            server.launcher.pid()
        ))
        .ok()?;
        children.split_whitespace().next()?.parse::<u32>().ok()
    });
    ctx.ensure(app_pid == server.pid, || {
        format!("the app should lead its group {}: {app_pid}", server.pid)
    });
    let stalls = ctx.wait_for("the on_startup stall", || {
        let stalls = blamed_on(&bp, &[app_pid], "on_startup");
        (!stalls.is_empty()).then_some(stalls)
    });
    server.launcher.send("GET / 3");
    ctx.wait_for("the requests", || words_after(&server.launcher, "DONE / "));
    ctx.ensure(stalls.len() == 1, || {
        format!("one on_startup stall: {stalls:#?}")
    });
    check_blamed(
        &ctx,
        &stalls[0],
        &app,
        "on_startup",
        Duration::from_millis(300),
    );
    stop(&ctx, &bp, &server);
}

/// Stops the server (QUIT: the launcher stops its whole group) and the tracer.
fn stop(ctx: &CtxRef, bp: &Proc, server: &Server) {
    server.launcher.send("QUIT");
    server.launcher.close_stdin();
    let status = server.launcher.wait_exit();
    ctx.ensure(status.success(), || {
        format!("server.py exited with {status}")
    });
    ctx.stop_trace(bp);
}

/// The interpreters with the servers' packages (`cargo xtask setup`): pyenv 3.11 on
/// every run, 3.13 in the full matrix.
macro_rules! server_tests {
    ($($scenario:ident),*) => {$(
        mod $scenario {
            #[test]
            fn pyenv_3_11() {
                super::$scenario(&blockprobe_tests::Python::pyenv("3.11.7"));
            }
            #[test]
            fn pyenv_3_13() {
                if let Some(python) = blockprobe_tests::Python::matrix("pyenv_3_13") {
                    super::$scenario(&python);
                }
            }
        }
    )*};
}

server_tests!(fastapi_under_gunicorn, aiohttp_on_startup);
