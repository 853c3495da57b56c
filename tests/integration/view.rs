//! `view`: the server answers only its own host, with the token where one is needed, and only
//! for the inputs it was given; and the page, driven in Debian's real chromium through
//! chromedriver, maps a clicked pixel to its offset, section and bytes, flies to a section,
//! refreshes tiles when the file changes, and steps through a diff.

use crate::harness::{foundry, gcc, s, sample_bytes, wait_for};
use fantoccini::actions::{InputSource, MouseActions, PointerAction, MOUSE_BUTTON_LEFT};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use foundry_gpu::locate::{locate, Query};
use foundry_gpu::view::{start, RunningView, ViewOptions};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One raw HTTP/1.1 GET (the path sent exactly as given, unnormalised): status and body.
fn get(port: u16, host: &str, path: &str) -> (u16, String) {
    request(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
}

fn request(port: u16, raw: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn host(view: &RunningView) -> String {
    format!("127.0.0.1:{}", view.addr.port())
}

/// The token in the URL `view` prints.
fn token(view: &RunningView) -> String {
    view.url
        .split_once("?token=")
        .map(|(_, t)| t.to_string())
        .expect("the printed URL carries the token")
}

/// A GET of the viewer's own API, with its host and token, as its page sends it.
fn api(view: &RunningView, path: &str) -> (u16, String) {
    let joiner = if path.contains('?') { '&' } else { '?' };
    get(
        view.addr.port(),
        &host(view),
        &format!("{path}{joiner}token={}", token(view)),
    )
}

/// A small ELF with a named function and a string in `.rodata`.
fn small_elf(dir: &Path) -> PathBuf {
    gcc(
        dir,
        "#include <stdio.h>\nconst char banner[] = \"foundry-view-banner: the quick brown fox jumps over the lazy dog\";\nint add_numbers(int a, int b) { return a * 31 + b * 17 - (a ^ b); }\nint main(int argc, char **argv) { (void)argv; printf(\"%s %d\\n\", banner, add_numbers(argc, 7)); return 0; }\n",
        "viewed",
        &["-O1", "-g0"],
    )
}

#[test]
fn only_its_own_host_and_only_the_inputs_it_was_given_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("data.bin");
    std::fs::write(&input, sample_bytes(70_000, 9)).unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "do-not-serve-this").unwrap();
    let view = start(std::slice::from_ref(&input), &ViewOptions::default()).unwrap();
    let port = view.addr.port();
    assert!(view.addr.ip().is_loopback(), "{}", view.addr);
    assert_eq!(
        view.url,
        format!("http://127.0.0.1:{port}/?token={}", token(&view))
    );
    assert_eq!(token(&view).len(), 32, "128 random bits in hex");

    // Even on loopback, where every local user can connect, the API needs the token.
    assert_eq!(get(port, &host(&view), "/api/inputs").0, 401);
    assert_eq!(get(port, &host(&view), "/api/input/0/hex?offset=0").0, 401);
    let (status, body) = api(&view, "/api/inputs");
    assert_eq!(status, 200, "{body}");
    let inputs: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(inputs["inputs"][0]["size"], 70_000);
    assert_eq!(get(port, &format!("localhost:{port}"), "/").0, 200);

    // Another name for 127.0.0.1 (DNS rebinding) is refused.
    let (status, body) = get(port, "attacker.example:80", "/api/inputs");
    assert_eq!(status, 403, "{body}");
    assert_eq!(get(port, &format!("127.0.0.1:{}", port + 1), "/").0, 403);

    // No path reaches the file system: traversal, encoded traversal, absolute paths, unknown
    // inputs and the asset folder answer 404 (or 400) and never a file's contents.
    let secret_name = s(&secret);
    for path in [
        "/../../../../etc/passwd".to_string(),
        "/assets/../../../etc/passwd".to_string(),
        "/assets/%2e%2e/%2e%2e/etc/passwd".to_string(),
        format!("/assets/..%2f..%2f..%2f{secret_name}"),
        format!("/{secret_name}"),
        "/api/input/1/info".to_string(),
        "/api/input/0/../1/info".to_string(),
        "/api/input/-1/info".to_string(),
        "/api/input/99999999999999999999/info".to_string(),
        "/api/input/0/tile/brick/byteclass/0/0/..%2f..%2fetc%2fpasswd".to_string(),
        "/api/input/0/tile/brick/../../../etc/passwd/0/0/0.png".to_string(),
        "/src/view/mod.rs".to_string(),
    ] {
        let (status, body) = api(&view, &path);
        assert!(status == 404 || status == 400, "{path}: {status} {body}");
        assert!(
            !body.contains("root:") && !body.contains("do-not-serve"),
            "{path}: {body}"
        );
    }
    // Read-only: nothing but GET is routed.
    let (status, _) = request(
        port,
        &format!("POST /api/inputs?token={} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", token(&view), host(&view)),
    );
    assert_eq!(status, 405);
    // Bad parameters are errors that say what is wrong.
    let (status, body) = api(&view, "/api/input/0/tile/brick/sepia/0/0/0.png");
    assert_eq!(status, 400);
    assert!(body.contains("sepia"), "{body}");
    let (status, body) = api(&view, "/api/input/0/hex?offset=70000");
    assert_eq!(status, 400);
    assert!(body.contains("past the end"), "{body}");
    let (status, body) = api(&view, "/api/input/0/tile/brick/gray/5/0/0.png");
    assert_eq!(status, 400, "{body}");
}

#[test]
fn off_loopback_every_api_request_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("data.bin");
    std::fs::write(&input, sample_bytes(5000, 1)).unwrap();
    let options = ViewOptions {
        bind: Some("0.0.0.0".parse().unwrap()),
        ..ViewOptions::default()
    };
    let view = start(&[input], &options).unwrap();
    let port = view.addr.port();
    let token = token(&view);
    let any_host = "192.0.2.1:1";
    assert_eq!(get(port, any_host, "/api/inputs").0, 401);
    assert_eq!(get(port, any_host, "/api/inputs?token=wrong").0, 401);
    assert_eq!(
        get(
            port,
            any_host,
            &format!("/api/inputs?token={}", &token[..31])
        )
        .0,
        401
    );
    assert_eq!(
        get(port, any_host, &format!("/api/inputs?token={token}")).0,
        200
    );
    assert_eq!(
        get(
            port,
            any_host,
            &format!("/api/input/0/tile/brick/gray/0/0/0.png?token={token}")
        )
        .0,
        200
    );
    // The page itself names nothing and loads without it; its requests carry the token.
    assert_eq!(get(port, any_host, "/").0, 200);
    // A second viewer makes up a different token.
    let dir2 = tempfile::tempdir().unwrap();
    let other = dir2.path().join("x");
    std::fs::write(&other, b"x").unwrap();
    let second = start(&[other], &options).unwrap();
    assert!(!second.url.ends_with(&token));
}

/// Whether the server closed `stream` within `within`: reading ends (or is reset) instead of
/// waiting. Whatever the server sends first (a response's head) is read past.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn a_client_that_sends_no_headers_is_closed_and_connections_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("data.bin");
    std::fs::write(&input, sample_bytes(5000, 1)).unwrap();
    let connect = |view: &RunningView| TcpStream::connect(("127.0.0.1", view.addr.port())).unwrap();
    let quick = start(
        std::slice::from_ref(&input),
        &ViewOptions {
            header_timeout: Duration::from_millis(500),
            ..ViewOptions::default()
        },
    )
    .unwrap();
    // Nothing sent, and half a request line: both closed once their time is up.
    let mut silent = connect(&quick);
    let mut slow = connect(&quick);
    slow.write_all(b"GET /api/inputs HTTP/1.1\r\n").unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(10)));
    assert!(closed_within(&mut slow, Duration::from_secs(10)));
    // The page's event stream, once its headers are in, is held past that time.
    let mut events = connect(&quick);
    let head = format!(
        "GET /api/events?token={} HTTP/1.1\r\nHost: {}\r\n\r\n",
        token(&quick),
        host(&quick)
    );
    events.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!closed_within(&mut events, Duration::from_millis(500)));

    // At most `max_connections` at once: with three held (and a long time for headers), a
    // fourth is closed as it is accepted; once they go, requests are served again.
    let capped = start(
        &[input],
        &ViewOptions {
            max_connections: 3,
            header_timeout: Duration::from_secs(60),
            ..ViewOptions::default()
        },
    )
    .unwrap();
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect(&capped)).collect();
    let mut fourth = connect(&capped);
    assert!(closed_within(&mut fourth, Duration::from_secs(10)));
    // Still open: only the one past the cap was closed.
    assert!(!closed_within(&mut held[0], Duration::from_millis(300)));
    drop(held);
    // Until the server has seen them close, a new connection may be closed too (or reset).
    let inputs = format!(
        "GET /api/inputs?token={} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        token(&capped),
        host(&capped)
    );
    wait_for(
        Duration::from_secs(10),
        "a request served after the held connections closed",
        || {
            let mut stream = connect(&capped);
            let mut response = Vec::new();
            stream.write_all(inputs.as_bytes()).is_ok()
                && stream.read_to_end(&mut response).is_ok()
                && response.starts_with(b"HTTP/1.1 200")
        },
    );
}

#[test]
fn a_path_swapped_for_a_symlink_or_a_fifo_is_not_read_and_a_real_rewrite_is() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("viewed.bin");
    std::fs::write(&input, sample_bytes(40_000, 3)).unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "the-secret-the-viewer-must-not-serve").unwrap();
    let options = ViewOptions {
        poll: Duration::from_millis(20),
        ..ViewOptions::default()
    };
    let view = start(std::slice::from_ref(&input), &options).unwrap();
    let version = |view: &RunningView| -> u64 {
        let (_, body) = api(view, "/api/inputs");
        serde_json::from_str::<Value>(&body).unwrap()["inputs"][0]["version"]
            .as_u64()
            .unwrap()
    };
    // A symlink to another file renamed over the input: never read.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    std::fs::rename(&link, &input).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(version(&view), 1);
    let (_, body) = api(&view, "/api/input/0/search?text=the-secret");
    assert!(body.contains("\"count\":0"), "{body}");
    // A FIFO renamed over it: not opened (the poller would wait for a writer), not read.
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    std::fs::rename(&fifo, &input).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(version(&view), 1);
    // A regular file renamed over it, as editors and `watch` write: the next state.
    let fresh = dir.path().join("fresh");
    std::fs::write(&fresh, sample_bytes(40_000, 4)).unwrap();
    std::fs::rename(&fresh, &input).unwrap();
    wait_for(Duration::from_secs(10), "the rewrite read", || {
        version(&view) == 2
    });
    // The viewer still stops at once.
    let started = std::time::Instant::now();
    drop(view);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn the_api_locates_as_locate_does_and_names_sections_of_a_folded_elf() {
    let dir = tempfile::tempdir().unwrap();
    let elf = small_elf(dir.path());
    let out = dir.path().join("out");
    let folded = foundry(&["fold", s(&elf), "-o", s(&out), "--backend", "cpu"]);
    assert!(
        folded.status.success(),
        "{}",
        String::from_utf8_lossy(&folded.stderr)
    );
    let image = out.join("viewed.rts.png");
    let text = locate(&elf, Query::Region(".text".into())).unwrap();
    let view = start(std::slice::from_ref(&image), &ViewOptions::default()).unwrap();
    let offset = text.start + 3;
    let (status, body) = api(&view, &format!("/api/input/0/locate?offset={offset}"));
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    // The .rts.png's own pixel, as `locate` of the .rts.png gives it.
    let direct = locate(&image, Query::Offset(offset)).unwrap();
    assert_eq!(
        answer["report"]["placements"][0]["x"],
        direct.placements[0].x
    );
    assert_eq!(
        answer["report"]["placements"][0]["y"],
        direct.placements[0].y
    );
    // Its bytes decoded, the viewer names the section the input's ELF header gives.
    let holders: Vec<&str> = answer["report"]["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert!(holders.contains(&".text"), "{holders:?}");
    let (_, body) = api(&view, "/api/input/0/locate?q=add_numbers");
    let symbol: Value = serde_json::from_str(&body).unwrap();
    let expected = locate(&elf, Query::Region("add_numbers".into())).unwrap();
    assert_eq!(symbol["report"]["start"], expected.start, "{body}");
    assert_eq!(symbol["report"]["end"], expected.end);
    // The search finds the banner where it is in the file.
    let data = std::fs::read(&elf).unwrap();
    let at = data
        .windows(19)
        .position(|w| w == b"foundry-view-banner")
        .unwrap();
    let (_, body) = api(&view, "/api/input/0/search?text=foundry-view-banner");
    let found: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(found["count"], 1, "{body}");
    assert_eq!(found["hits"][0]["offset"], at);
    let (_, body) = api(&view, "/api/input/0/search?hex=7f454c46");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["hits"][0]["offset"],
        0
    );
    // The hex dump holds the file's bytes.
    let (_, body) = api(&view, &format!("/api/input/0/hex?offset={at}&len=64"));
    let dump: Value = serde_json::from_str(&body).unwrap();
    let start = dump["start"].as_u64().unwrap() as usize;
    let bytes = hex::decode(dump["hex"].as_str().unwrap()).unwrap();
    assert_eq!(bytes, data[start..start + bytes.len()]);
    assert!(start <= at && at < start + bytes.len());
}

#[test]
fn the_command_prints_its_url_and_refuses_what_it_cannot_show() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("x.bin");
    std::fs::write(&input, sample_bytes(9000, 4)).unwrap();
    let mut child = crate::harness::foundry_cmd()
        .args(["view", s(&input), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let printed: Value = serde_json::from_str(&line).unwrap();
    let url = printed["url"].as_str().unwrap().to_string();
    let port: u16 = url
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (status, body) = get(port, &format!("127.0.0.1:{port}"), "/");
    assert_eq!(status, 200);
    assert!(body.contains("foundry-gpu view"));
    // SIGINT stops it cleanly.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = crate::harness::wait_exit(&mut child, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");

    let missing = foundry(&["view", s(&dir.path().join("nope"))]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope"));
    let one = foundry(&["view", s(&input), "--diff"]);
    assert!(!one.status.success());
    assert!(String::from_utf8_lossy(&one.stderr).contains("--diff compares two inputs"));
    // A token anyone could guess, or one a URL would mangle, is refused.
    for weak in ["", "short", "has space in it 1234", "percent%20and&amp1234"] {
        let o = foundry(&["view", s(&input), "--token", weak]);
        assert!(!o.status.success(), "--token {weak:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("--token must be"),
            "{weak:?}"
        );
    }
}

/// chromedriver and the chromium it drives, headless, with a fresh profile.
struct Browser {
    driver: Child,
    client: Client,
    runtime: tokio::runtime::Runtime,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts the browser, or `None` (and says why) where chromium or chromedriver is missing
    /// and FOUNDRY_TEST_BROWSER is not `require`.
    fn start() -> Option<Browser> {
        let required = std::env::var("FOUNDRY_TEST_BROWSER").as_deref() == Ok("require");
        let have = |p: &str| Path::new(p).exists();
        if !have("/usr/bin/chromedriver") || !have("/usr/bin/chromium") {
            assert!(!required, "FOUNDRY_TEST_BROWSER=require, and /usr/bin/chromium or /usr/bin/chromedriver is missing");
            eprintln!("skipped: the browser tests need Debian's chromium and chromium-driver (.ci/run installs them)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        wait_for(Duration::from_secs(30), "chromedriver listening", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let profile = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1400,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        });
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(capabilities.as_object().unwrap().clone());
        let client = runtime
            .block_on(builder.connect(&format!("http://127.0.0.1:{port}")))
            .expect("a chromium session");
        Some(Browser {
            driver,
            client,
            runtime,
            _profile: profile,
        })
    }

    fn run<T>(&self, future: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(future)
    }

    fn js(&self, script: &str) -> Value {
        self.run(self.client.execute(script, vec![]))
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// Waits until `script` (an expression) is truthy.
    fn wait_js(&self, what: &str, script: &str) {
        let expression = format!("return !!({script});");
        for _ in 0..300 {
            if self.js(&expression) == json!(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}: {script}");
    }

    fn open(&self, url: &str) {
        self.run(self.client.goto(url)).unwrap();
        self.wait_js(
            "the page to be ready",
            "window.foundryView && foundryView.state.ready",
        );
        self.settle();
    }

    /// Waits until no tile is loading.
    fn settle(&self) {
        self.wait_js("tiles to load", "foundryView.tilesLoading() === 0");
    }

    fn text(&self, css: &str) -> String {
        self.run(async { self.client.find(Locator::Css(css)).await?.text().await })
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    fn keys(&self, css: &str, keys: &str) {
        self.run(async {
            self.client
                .find(Locator::Css(css))
                .await?
                .send_keys(keys)
                .await
        })
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    }

    /// Moves the mouse to the viewport point `(x, y)` and clicks there.
    fn click_at(&self, x: f64, y: f64) {
        let mouse = MouseActions::new("mouse".into())
            .then(PointerAction::MoveTo {
                duration: Some(Duration::from_millis(50)),
                x,
                y,
            })
            .then(PointerAction::Down {
                button: MOUSE_BUTTON_LEFT,
            })
            .then(PointerAction::Up {
                button: MOUSE_BUTTON_LEFT,
            });
        self.run(self.client.perform_actions(mouse)).unwrap();
    }

    fn screenshot(&self, name: &str) -> Vec<u8> {
        let png = self.run(self.client.screenshot()).unwrap();
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&target, &png).unwrap();
        png
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let client = self.client.clone();
        let _ = self.runtime.block_on(client.close());
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Clicks the element `css` names.
async fn click_element(client: &Client, css: &str) -> Result<(), fantoccini::error::CmdError> {
    client.find(Locator::Css(css)).await?.click().await
}

/// Zooms in with the `+` key until a cell is at least `px` screen pixels wide.
fn zoom_until_cells_are(browser: &Browser, px: f64) {
    for _ in 0..40 {
        let cell = browser.js("const p = foundryView.state.panes[0]; return p.cellPx;");
        if cell.as_f64().unwrap() >= px {
            return;
        }
        browser.keys("body", "+");
    }
    panic!("could not zoom to {px} px a cell");
}

#[test]
fn in_a_real_browser_a_clicked_pixel_shows_its_offset_section_and_bytes() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let elf = small_elf(dir.path());
    let data = std::fs::read(&elf).unwrap();
    let out = dir.path().join("out");
    assert!(
        foundry(&["fold", s(&elf), "-o", s(&out), "--backend", "cpu"])
            .status
            .success()
    );
    let view = start(&[out.join("viewed.rts.png")], &ViewOptions::default()).unwrap();
    browser.open(&view.url);

    // Zoom on a byte inside add_numbers and click its pixel.
    let symbol = locate(&elf, Query::Region("add_numbers".into())).unwrap();
    let offset = symbol.start + 2;
    zoom_until_cells_are(&browser, 12.0);
    browser.js(&format!("foundryView.centreOn(0, {offset});"));
    browser.settle();
    let point = browser.js(&format!("return foundryView.pointOf(0, {offset});"));
    let (x, y) = (point[0].as_f64().unwrap(), point[1].as_f64().unwrap());
    // The page maps that point back to the same offset (the curve agrees both ways).
    assert_eq!(
        browser.js(&format!("return foundryView.offsetAt(0, {x}, {y});")),
        json!(offset)
    );
    browser.click_at(x.round(), y.round());
    let hex_offset = format!("0x{offset:x}");
    browser.wait_js(
        "the selection panel",
        &format!("document.getElementById('sel-offset').textContent.includes('{hex_offset} ')"),
    );
    assert!(
        browser.text("#hover-offset").contains(&hex_offset),
        "the hover panel shows the offset too"
    );
    browser.wait_js(
        "the holders",
        "document.querySelectorAll('#sel-holders li').length >= 2",
    );
    let holders = browser.text("#sel-holders");
    assert!(holders.contains(".text"), "{holders}");
    assert!(holders.contains("add_numbers (+0x2)"), "{holders}");
    assert_eq!(
        browser.text("#hex-hl"),
        format!("{:02x}", data[offset as usize])
    );
    // What holds it: the section's own analysis in the "What it is" panel.
    browser.wait_js(
        "the holder panel",
        "document.getElementById('holder-info').textContent.includes('.text [')",
    );
    // The row holding it is the file's bytes at that row's offset.
    let hex_text = browser.text("#hex");
    let row_start = offset / 16 * 16;
    let row = hex_text
        .lines()
        .find(|l| l.starts_with(&format!("{row_start:08x}")))
        .unwrap_or_else(|| panic!("no row {row_start:08x} in {hex_text}"));
    let expected: Vec<String> = data[row_start as usize..row_start as usize + 8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(row.contains(&expected.join(" ")), "{row} vs {expected:?}");

    // Entropy edges: the box loads the input's entropy regions and draws them.
    browser
        .run(async { click_element(&browser.client, "#entropy-edges").await })
        .unwrap();
    browser.wait_js(
        "the entropy regions",
        "foundryView.state.panes[0].entropy.length > 0",
    );

    // Type a section's name: the view flies there and outlines it.
    let rodata = locate(&elf, Query::Region(".rodata".into())).unwrap();
    browser.js("foundryView.zoomAt(0, 1/50);");
    browser.keys("#goto", &format!(".rodata{}", char::from(Key::Enter)));
    browser.wait_js(
        "the selection of .rodata",
        &format!(
            "foundryView.state.selection && foundryView.state.selection.start === {}",
            rodata.start
        ),
    );
    assert_eq!(
        browser.js("return foundryView.state.selection.end;"),
        json!(rodata.end)
    );
    let inside = browser.js(
        "const p = foundryView.state.panes[0]; return foundryView.state.selection.squares.every((s) => { const [x, y, w, h] = p.rect(s); return x >= 0 && y >= 0 && x + w <= p.width && y + h <= p.height; });",
    );
    assert_eq!(inside, json!(true), "every square of .rodata is in view");
    let centre = browser
        .js("const p = foundryView.state.panes[0]; return p.offsetAt(p.width / 2, p.height / 2);");
    let centre = centre.as_u64().unwrap_or(u64::MAX);
    let span = rodata.end - rodata.start;
    assert!(
        centre + 4 * span >= rodata.start && centre <= rodata.end + 4 * span,
        "the view is centred near .rodata ({}..{}), at {centre}",
        rodata.start,
        rodata.end
    );
    browser.settle();
    let shot = browser.screenshot("view-elf.png");
    // The README's picture is made by this test: FOUNDRY_VIEW_SCREENSHOT names where it goes.
    if let Ok(target) = std::env::var("FOUNDRY_VIEW_SCREENSHOT") {
        std::fs::write(target, &shot).unwrap();
    }
    let decoded = png::Decoder::new(std::io::Cursor::new(&shot))
        .read_info()
        .unwrap();
    assert_eq!(decoded.info().width, 1400);
}

#[test]
fn in_a_real_browser_tiles_follow_the_file_and_a_diff_steps_through_its_changes() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();

    // Live: a viewed file rewritten in the middle refreshes the tiles over the change.
    let live = dir.path().join("live.bin");
    let mut data = sample_bytes(1 << 20, 5);
    std::fs::write(&live, &data).unwrap();
    let view = start(std::slice::from_ref(&live), &ViewOptions::default()).unwrap();
    browser.open(&view.url);
    zoom_until_cells_are(&browser, 0.5);
    browser.js("foundryView.centreOn(0, 600000);");
    browser.settle();
    let before =
        browser.js("return [...document.querySelectorAll('.pane img')].map((i) => i.src);");
    data[600_000..604_096].fill(0);
    let staged = dir.path().join("live.bin.new");
    std::fs::write(&staged, &data).unwrap();
    std::fs::rename(&staged, &live).unwrap();
    browser.wait_js(
        "the change event",
        "foundryView.state.panes[0].changes.length === 1",
    );
    assert_eq!(
        browser.js("return foundryView.state.panes[0].changes[0].ranges;"),
        json!([[598016, 606208]])
    );
    browser.settle();
    let after = browser.js("return [...document.querySelectorAll('.pane img')].map((i) => i.src);");
    let refreshed: Vec<&Value> = after
        .as_array()
        .unwrap()
        .iter()
        .filter(|src| src.as_str().unwrap().contains("v=2"))
        .collect();
    assert!(!refreshed.is_empty(), "no tile refreshed: {after}");
    assert!(
        refreshed.len() < after.as_array().unwrap().len(),
        "only tiles over the change refresh: {after}"
    );
    assert_ne!(before, after);
    drop(view);

    // Diff: A and B side by side; n and p step through the changes in order.
    let a = dir.path().join("a.bin");
    let b = dir.path().join("b.bin");
    let a_bytes = sample_bytes(300_000, 6);
    let mut b_bytes = a_bytes.clone();
    b_bytes[40_000..40_004].copy_from_slice(b"EDIT");
    b_bytes.splice(200_000..200_000, std::iter::repeat_n(0xAB, 5000));
    std::fs::write(&a, &a_bytes).unwrap();
    std::fs::write(&b, &b_bytes).unwrap();
    let view = start(
        &[a, b],
        &ViewOptions {
            diff: true,
            ..ViewOptions::default()
        },
    )
    .unwrap();
    browser.open(&view.url);
    assert_eq!(
        browser.js("return foundryView.state.panes.length;"),
        json!(2)
    );
    let changes = browser.js("return foundryView.state.diff.changes.map((c) => [c.kind, c.b && c.b.start, c.b && c.b.end]);");
    let changes = changes.as_array().unwrap().clone();
    assert!(changes.len() >= 2, "{changes:?}");
    let first_b = changes[0][1].as_u64().unwrap();
    assert!(
        first_b <= 40_000 && changes[0][2].as_u64().unwrap() >= 40_004,
        "{changes:?}"
    );
    let inserted = changes
        .iter()
        .find(|c| c[0] == "inserted")
        .expect("an inserted range");
    assert!(
        inserted[1].as_u64().unwrap() <= 200_000 && inserted[2].as_u64().unwrap() >= 205_000,
        "{changes:?}"
    );
    browser.keys("body", "n");
    browser.wait_js(
        "the first change",
        "document.querySelector('#change-list li.current') !== null",
    );
    assert_eq!(
        browser.js("return foundryView.state.changeIndex;"),
        json!(0)
    );
    browser.wait_js(
        "the first change selected",
        &format!("document.getElementById('sel-offset').textContent.includes('0x{first_b:x} ')"),
    );
    browser.keys("body", "n");
    browser.wait_js("the second change", "foundryView.state.changeIndex === 1");
    let second_b = changes[1][1].as_u64().unwrap();
    browser.wait_js(
        "the second change selected",
        &format!("document.getElementById('sel-offset').textContent.includes('0x{second_b:x} ')"),
    );
    browser.keys("body", "p");
    browser.wait_js("back to the first", "foundryView.state.changeIndex === 0");
    // Zoom and pan are locked: both panes show the same fraction of their inputs.
    let locked = browser.js("const [a, b] = foundryView.state.panes; return [a.left / a.width, b.left / b.width, a.top, b.top];");
    assert_eq!(locked[2], locked[3], "{locked}");
    browser.settle();
    browser.screenshot("view-diff.png");
}

#[test]
fn a_snapshot_names_the_file_under_a_byte_and_says_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("a.bin"), sample_bytes(20_000, 2)).unwrap();
    std::fs::write(
        tree.join("notes.txt"),
        "plain words for the viewer\n".repeat(300),
    )
    .unwrap();
    let snap = dir.path().join("snap");
    let made = foundry(&["snapshot", s(&tree), "-o", s(&snap), "--backend", "cpu"]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let notes = locate(&snap, Query::Region("notes.txt".into())).unwrap();
    let view = start(std::slice::from_ref(&snap), &ViewOptions::default()).unwrap();
    let (status, body) = api(
        &view,
        &format!("/api/input/0/holder?offset={}", notes.start + 10),
    );
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer["holder"]["name"]
            .as_str()
            .unwrap()
            .ends_with("/notes.txt"),
        "{body}"
    );
    assert_eq!(answer["holder"]["start"], notes.start);
    assert_eq!(answer["analysis"]["file_type"], "text", "{body}");
    let expected = foundry_gpu::analysis::sha256(&std::fs::read(tree.join("notes.txt")).unwrap());
    assert_eq!(answer["record"]["sha256"], hex::encode(expected));
    let (_, body) = api(&view, "/api/inputs");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["inputs"][0]["kind"],
        "district"
    );
}

#[test]
fn entropy_edges_are_where_the_class_of_4_kib_blocks_changes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mixed.bin");
    let mut data = vec![0u8; 16 << 10];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    data.extend((0..32 << 10).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    }));
    data.extend(b"text of ordinary words, repeated. ".repeat(500));
    std::fs::write(&input, &data).unwrap();
    let view = start(std::slice::from_ref(&input), &ViewOptions::default()).unwrap();
    let (status, body) = api(&view, "/api/input/0/entropy");
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let regions: Vec<(String, u64, u64)> = answer["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["class"].as_str().unwrap().to_string(),
                r["start"].as_u64().unwrap(),
                r["end"].as_u64().unwrap(),
            )
        })
        .collect();
    let len = data.len() as u64;
    assert_eq!(
        regions,
        vec![
            ("constant".to_string(), 0, 16 << 10),
            ("high".to_string(), 16 << 10, 48 << 10),
            ("normal".to_string(), 48 << 10, len),
        ]
    );
    // Each region's squares cover exactly its bytes (one byte a cell).
    for r in answer["regions"].as_array().unwrap() {
        let cells: u64 = r["squares"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[2].as_u64().unwrap() * s[3].as_u64().unwrap())
            .sum();
        assert_eq!(
            cells,
            r["end"].as_u64().unwrap() - r["start"].as_u64().unwrap()
        );
    }
}

#[test]
fn a_map_builder_root_is_viewed_as_the_tiles_published_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let builder = dir.path().join("builder");
    let input = dir.path().join("published.bin");
    let data = sample_bytes(30_000, 8);
    std::fs::write(&input, &data).unwrap();
    let out = dir.path().join("out");
    let o = foundry(&["fold", s(&input), "-o", s(&out), "--publish", s(&builder)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let view = start(std::slice::from_ref(&builder), &ViewOptions::default()).unwrap();
    let (_, body) = api(&view, "/api/inputs");
    let inputs: Value = serde_json::from_str(&body).unwrap();
    let inputs = inputs["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 1, "{inputs:?}");
    assert_eq!(inputs[0]["kind"], "rts_png");
    assert!(
        inputs[0]["path"].as_str().unwrap().contains("/queue/"),
        "{inputs:?}"
    );
    // The tile decodes to the published bytes.
    let (_, body) = api(&view, "/api/input/0/hex?offset=1000&len=16");
    let dump: Value = serde_json::from_str(&body).unwrap();
    let first = dump["start"].as_u64().unwrap() as usize;
    assert_eq!(
        hex::decode(dump["hex"].as_str().unwrap()).unwrap(),
        data[first..first + 16]
    );
    // An empty builder root is an error that says so.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("map")).unwrap();
    std::fs::write(empty.join("map/manifest.json"), "{}").unwrap();
    let refused = start(std::slice::from_ref(&empty), &ViewOptions::default())
        .err()
        .unwrap();
    assert!(
        refused
            .to_string()
            .contains("map builder root with 0 tiles"),
        "{refused}"
    );
}
