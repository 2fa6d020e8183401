//! Real-browser tests: `static/herald.js` and the demo page in headless Chromium (Debian's `chromium`),
//! driven by playwright-core (npm, pinned in `tests/browser/package-lock.json`), against the real `herald`
//! binary and real `redis-server`s.
//!
//! Each test runs one scenario of `tests/browser/*.mjs` with Node.js (`node tests/browser/run.mjs NAME`),
//! which starts the servers it needs on free loopback ports, drives the pages, checks what they received and
//! stops everything by PID. Screenshots are kept in `target/browser-artifacts/`. The scenarios run one at a
//! time: their timing (a takeover within 5 s) should not compete with each other for the two cores.
//!
//! Nothing is skipped: a missing `node`, `chromium` or `redis-server` fails the test with what to install
//! (`tests/run.sh` installs them all). `npm ci` is run here when `tests/browser/node_modules` is missing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One scenario at a time.
static SERIAL: Mutex<()> = Mutex::new(());
/// Longest a scenario may run before it is killed.
const SCENARIO_LIMIT: Duration = Duration::from_secs(150);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Installs the pinned node packages once.
fn ensure_node_modules() {
    let dir = browser_dir();
    if dir.join("node_modules/playwright-core/package.json").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .unwrap_or_else(|e| panic!("cannot run npm ({e}): install Node.js 20+ and npm (tests/run.sh does)"));
    assert!(status.success(), "npm ci in tests/browser failed: {status}");
}

fn run(scenario: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    ensure_node_modules();
    assert!(
        Path::new("/usr/bin/chromium").exists() || std::env::var_os("CHROMIUM").is_some(),
        "Chromium is missing: install Debian's chromium package (tests/run.sh does), or set CHROMIUM"
    );
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts");
    let mut child = Command::new("node")
        .arg(browser_dir().join("run.mjs"))
        .arg(scenario)
        .env("HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
        .env("HERALD_ARTIFACTS", &artifacts)
        .env("HERALD_SCENARIO_LIMIT_MS", (SCENARIO_LIMIT.as_millis() - 5000).to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): install Node.js 20+ (tests/run.sh does)"));
    let mut stdout = child.stdout.take().expect("stdout piped");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + SCENARIO_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().expect("wait for node");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    print!("{out}");
    eprint!("{err}");
    assert!(status.success(), "browser scenario {scenario} failed ({status}):\n{out}\n{err}");
}

#[test]
fn events_reach_the_page() {
    run("events_reach_the_page");
}

#[test]
fn subscribe_unsubscribe_under_load() {
    run("subscribe_unsubscribe_under_load");
}

#[test]
fn subscribe_unsubscribe_shared() {
    run("subscribe_unsubscribe_shared");
}

#[test]
fn reset_reaches_the_app() {
    run("reset_reaches_the_app");
}

#[test]
fn restart_on_redis_resumes() {
    run("restart_on_redis_resumes");
}

#[test]
fn retry_503_during_shutdown() {
    run("retry_503_during_shutdown");
}

#[test]
fn token_expiry_401_retried() {
    run("token_expiry_401_retried");
}

#[test]
fn tabs_share_one_stream() {
    run("tabs_share_one_stream");
}

#[test]
fn tab_joining_with_older_id() {
    run("tab_joining_with_older_id");
}

#[test]
fn tabs_without_web_locks() {
    run("tabs_without_web_locks");
}

#[test]
fn shared_403_stays_with_its_tab() {
    run("shared_403_stays_with_its_tab");
}

#[test]
fn demo_windows_stay_in_sync() {
    run("demo_windows_stay_in_sync");
}

#[test]
fn demo_memory_restart_shows_reset() {
    run("demo_memory_restart_shows_reset");
}
