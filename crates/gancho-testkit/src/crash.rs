//! Crash tests in a child process: a test runs its own binary again, filtered to itself, and the
//! child does the writes until a fail point (`gancho_core::failpoint`) stops the process; the
//! parent then reopens what the child left on disk and checks the invariant. The crash is real:
//! the child exits without running a destructor, so nothing is flushed that the protocol did not
//! flush (or, with `crash`, everything written before the point is). [`run_in_child`] runs a
//! test alone in a child process, for tests that set fail points to hold a thread while they look.

use std::path::{Path, PathBuf};
use std::process::Command;

const CHILD: &str = "GANCHO_CRASH_CHILD";
const DIR: &str = "GANCHO_CRASH_DIR";
/// Written in the folder by a child that ran its test to the end.
const PASSED: &str = ".child-passed";

/// Runs `child` in a new process of this test binary and expects it to stop at a crash point.
///
/// `module` is the caller's `module_path!()` and `test` the test function's name: together
/// they name the test for the child's test harness. In the child, `child` runs with `dir` and
/// must end at a `crash` or `kill` point: returning is a failure. In the parent, this returns
/// once the child has crashed, with `dir` as the child left it.
pub fn crash_in_child(module: &str, test: &str, dir: &Path, child: impl FnOnce(&Path)) {
    in_child(
        module,
        test,
        dir,
        child,
        Some(gancho_core::failpoint::CRASH_EXIT_CODE),
    );
}

/// Runs `child` in a new process of this test binary, alone: fail points are global to a
/// process, so a test that sets one (to hold a thread while it looks) must not share its
/// process with other tests. Returns once the child passed.
pub fn run_in_child(module: &str, test: &str, dir: &Path, child: impl FnOnce(&Path)) {
    in_child(module, test, dir, child, None);
}

#[allow(clippy::unwrap_used, clippy::expect_used)]
fn in_child(module: &str, test: &str, dir: &Path, child: impl FnOnce(&Path), crash: Option<i32>) {
    // `crate::a::b` is `a::b::TEST` for the test harness.
    let name = match module.split_once("::") {
        Some((_, path)) => format!("{path}::{test}"),
        None => test.to_owned(),
    };
    if std::env::var(CHILD).ok().as_deref() == Some(name.as_str()) {
        let dir = PathBuf::from(std::env::var_os(DIR).expect("GANCHO_CRASH_DIR"));
        child(&dir);
        if crash.is_some() {
            eprintln!("the child of {name} returned instead of crashing");
            std::process::exit(1);
        }
        // Proof that the child ran the test (a filter that matched nothing also exits 0).
        std::fs::write(dir.join(PASSED), name.as_bytes()).expect("writing the child's mark");
        std::process::exit(0);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new(exe)
        .args([
            name.as_str(),
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, &name)
        .env(DIR, dir)
        .env_remove("GANCHO_FAILPOINTS")
        .output()
        .expect("running the child test");
    assert_eq!(
        out.status.code(),
        Some(crash.unwrap_or(0)),
        "the child of {name} {} ({}):\n{}{}",
        if crash.is_some() {
            "did not stop at a crash point"
        } else {
            "failed"
        },
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if crash.is_none() {
        assert!(
            dir.join(PASSED).exists(),
            "the child of {name} did not run it:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
