//! A headless Chromium driven through WebDriver: `chromedriver` on a free port, started here
//! and killed when the `Browser` is dropped. Screenshots go to `target/screenshots/`.

use std::path::PathBuf;
use std::process::Stdio;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::helpers::wait_until;

pub struct Browser {
    pub client: Client,
    // Killed on drop (kill_on_drop), so a failing test leaves no driver behind.
    _driver: tokio::process::Child,
}

impl Browser {
    /// Chromium in English (`Accept-Language: en`), 1280 px wide.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver runs (scripts/install-deps installs chromium-driver)");
        wait_until("chromedriver listens", async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", "--lang=en-US", "--hide-scrollbars"],
                "prefs": {"intl.accept_languages": "en-US,en"}
            }),
        );
        // reqwest brings ring and fantoccini aws-lc: rustls then needs to be told which to use.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = ClientBuilder::rustls()
            .unwrap()
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session starts");
        Self {
            client,
            _driver: driver,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("page loads");
    }

    pub async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_owned()
    }

    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} is on the page: {e}"))
            .text()
            .await
            .unwrap()
    }

    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} is on the page: {e}"))
            .attr(name)
            .await
            .unwrap()
    }

    /// After a click that leads elsewhere: until the browser is at `path`.
    pub async fn wait_path(&self, path: &str) {
        wait_until(&format!("the browser is at {path}"), async || {
            self.path().await == path
        })
        .await;
    }

    /// After a form is sent: until the page that answers has `css`.
    pub async fn wait_for(&self, css: &str) {
        wait_until(&format!("{css} is on the page"), async || {
            self.count(css).await > 0
        })
        .await;
    }

    pub async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} is on the page: {e}"))
            .click()
            .await
            .unwrap();
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .send_keys(text)
            .await
            .unwrap();
    }

    /// The page's visible text, leaving out what is marked `lang="en"` on purpose (Kiva's words
    /// and the gateway's recorded reasons, quoted as they were written).
    pub async fn text_outside_quotes(&self) -> String {
        let value = self
            .client
            .execute(
                "const b = document.body.cloneNode(true);
                 b.querySelectorAll('[lang=en]').forEach(e => e.remove());
                 document.documentElement.appendChild(b); const t = b.innerText; b.remove(); return t;",
                vec![],
            )
            .await
            .unwrap();
        value.as_str().unwrap_or_default().to_owned()
    }

    pub async fn cookie(&self, name: &str) -> Option<String> {
        self.client
            .get_all_cookies()
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.name() == name)
            .map(|c| c.value().to_owned())
    }

    /// A PNG of the page as it is now, as `target/screenshots/{name}.png`.
    pub async fn screenshot(&self, name: &str) {
        // The whole page, not only the window: grow the window to the page, then shrink back.
        let size = self
            .client
            .execute(
                "return [window.innerWidth, document.documentElement.scrollHeight];",
                vec![],
            )
            .await
            .unwrap();
        let (width, height) = (
            size[0].as_u64().unwrap() as u32,
            size[1].as_u64().unwrap() as u32,
        );
        self.client
            .set_window_size(width, height.clamp(600, 5000))
            .await
            .unwrap();
        let png = self.client.screenshot().await.expect("screenshot");
        self.client.set_window_size(width, 1000).await.unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}
