//! Crash tests in a child process: a test runs its own binary again, filtered to itself, and the
//! child does the writes until a fail point (`gancho_core::failpoint`) stops the process; the
//! parent then reopens what the child left on disk and checks the invariant. The crash is real:
//! the child exits without running a destructor, so nothing is flushed that the protocol did not
//! flush (or, with `crash`, everything written before the point is).

use std::path::{Path, PathBuf};
use std::process::Command;

const CHILD: &str = "GANCHO_CRASH_CHILD";
const DIR: &str = "GANCHO_CRASH_DIR";

/// Runs `child` in a new process of this test binary and expects it to stop at a crash point.
///
/// `module` is the caller's `module_path!()` and `test` the test function's name: together
/// they name the test for the child's test harness. In the child, `child` runs with `dir` and
/// must end at a `crash` or `kill` point: returning is a failure. In the parent, this returns
/// once the child has crashed, with `dir` as the child left it.
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub fn crash_in_child(module: &str, test: &str, dir: &Path, child: impl FnOnce(&Path)) {
    // `crate::a::b` is `a::b::TEST` for the test harness.
    let name = match module.split_once("::") {
        Some((_, path)) => format!("{path}::{test}"),
        None => test.to_owned(),
    };
    if std::env::var(CHILD).ok().as_deref() == Some(name.as_str()) {
        let dir = PathBuf::from(std::env::var_os(DIR).expect("GANCHO_CRASH_DIR"));
        child(&dir);
        eprintln!("the child of {name} returned instead of crashing");
        std::process::exit(1);
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
        .expect("running the crash child");
    assert_eq!(
        out.status.code(),
        Some(gancho_core::failpoint::CRASH_EXIT_CODE),
        "the child of {name} did not stop at a crash point ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
