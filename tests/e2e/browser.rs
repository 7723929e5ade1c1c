//! A real browser for the dashboard's tests: Debian's `chromium`, headless, driven through
//! `chromedriver` (WebDriver) with fantoccini. The test starts chromedriver itself on a free
//! port and stops it when done. Where chromium or chromedriver is not installed, the test
//! says it skipped and why, unless `GANCHO_REQUIRE_BROWSER=1` (CI installs both and sets it),
//! where that is a failure.

use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};

use crate::support::Reaped;

/// The first of `names` found in `PATH`.
fn find(names: &[&str]) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|p| p.is_file())
}

/// chromium and chromedriver, if both are installed; `None` after saying the test skips,
/// unless `GANCHO_REQUIRE_BROWSER=1`, which makes their absence a failure.
fn installed() -> Option<(PathBuf, PathBuf)> {
    let browser = find(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = find(&["chromedriver"]);
    match (browser, driver) {
        (Some(browser), Some(driver)) => Some((browser, driver)),
        (browser, _) => {
            let missing = if browser.is_none() {
                "chromium"
            } else {
                "chromedriver"
            };
            assert!(
                std::env::var("GANCHO_REQUIRE_BROWSER").as_deref() != Ok("1"),
                "GANCHO_REQUIRE_BROWSER=1 but {missing} is not installed (apt-get install chromium chromium-driver)"
            );
            eprintln!(
                "skipped: {missing} is not installed (apt-get install chromium chromium-driver)"
            );
            None
        }
    }
}

/// Held by the test that has the browser.
static ONE_BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A headless chromium session, and where its screenshots go.
pub struct Browser {
    pub client: Client,
    /// The test's output folder for screenshots (`CARGO_TARGET_TMPDIR/browser-screenshots/TEST`).
    pub shots: PathBuf,
}

/// Runs `test` with a browser, on a runtime of its own; skips (saying so) when no browser is
/// installed. The browser is closed after the test, whether it passed or not (a panic is
/// carried on once it is).
pub fn with_browser<F, Fut>(name: &str, test: F)
where
    F: FnOnce(Browser) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some((chromium, chromedriver)) = installed() else {
        return;
    };
    // One browser at a time: chromium is heavy for a 2-core machine, and the tests time
    // what they see.
    let _one_at_a_time = ONE_BROWSER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (_driver, addr) = start_driver(&chromedriver).await;
        let profile = tempfile::tempdir().unwrap();
        let client = connect(addr, &chromium, profile.path()).await;
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("browser-screenshots")
            .join(name);
        std::fs::create_dir_all(&shots).unwrap();
        eprintln!("screenshots in {}", shots.display());
        let browser = Browser {
            client: client.clone(),
            shots,
        };
        let outcome = tokio::spawn(test(browser)).await;
        let _ = client.close().await;
        if let Err(err) = outcome {
            if err.is_panic() {
                std::panic::resume_unwind(err.into_panic());
            }
            panic!("the browser test did not finish: {err}");
        }
    });
}

/// Starts chromedriver on a free port; tries another if the one found was taken meanwhile
/// (chromedriver then exits).
async fn start_driver(chromedriver: &Path) -> (Reaped, SocketAddr) {
    for _ in 0..5 {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut driver = Reaped(
            Command::new(chromedriver)
                .arg(format!("--port={}", addr.port()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(addr).is_ok() {
                return (driver, addr);
            }
            if driver.try_wait().unwrap().is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("chromedriver did not start on any of 5 ports");
}

/// A WebDriver session of a headless chromium with its profile in `profile`.
async fn connect(driver: SocketAddr, chromium: &Path, profile: &Path) -> Client {
    let mut capabilities = Capabilities::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://{driver}"))
        .await
        .unwrap()
}

impl Browser {
    /// Saves a screenshot of the page as `NAME.png` in the test's output folder.
    pub async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// The visible text of the page (read in one script, so a page being replaced cannot
    /// leave a stale element in between; empty while there is no body).
    pub async fn text(&self) -> String {
        let text = self
            .eval("return document.body ? document.body.innerText : '';")
            .await;
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Waits up to `timeout` for `ready` (given the page's text) to hold; false if it never
    /// did.
    pub async fn wait_text(&self, timeout: Duration, ready: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(&self.text().await) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element `css` finds (a link or a button that loads a page), then waits for
    /// the page it loads: a marker set on the old page is gone and the new one is loaded.
    pub async fn click(&self, css: &str) {
        self.eval("window.__gancho_old_page = true; return null;")
            .await;
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("{css}: {err}"))
            .click()
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let loaded = self
                .client
                .execute(
                    "return !window.__gancho_old_page && document.readyState === 'complete';",
                    vec![],
                )
                .await;
            // Between the pages there may be no document to ask.
            if loaded.is_ok_and(|v| v == true) {
                return;
            }
            assert!(Instant::now() < deadline, "clicking {css} loaded no page");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Types `text` into the field `css` finds.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("{css}: {err}"));
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// What axe-core (`tests/fixtures/axe`) finds against WCAG 2.0 and 2.1, levels A and AA,
    /// on the page: one line per rule broken, with the elements that break it.
    pub async fn accessibility_violations(&self) -> Vec<String> {
        let axe = std::fs::read_to_string(
            crate::support::repo_root().join("tests/fixtures/axe/axe.min.js"),
        )
        .unwrap();
        self.client
            .execute(&format!("{axe}\nreturn null;"), vec![])
            .await
            .unwrap();
        let found = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, { runOnly: { type: 'tag',
                     values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } })
                   .then(r => done(r.violations.map(v => v.id + ': ' + v.help + ' (' +
                       v.nodes.map(n => n.target.join(' ')).join(', ') + ')')))
                   .catch(e => done(['axe failed: ' + e]));",
                vec![],
            )
            .await
            .unwrap();
        serde_json::from_value(found).unwrap()
    }

    /// Runs `script` in the page; its result.
    pub async fn eval(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, vec![]).await.unwrap()
    }
}
