//! `foundry-gpu view`: a local web server showing any input as a deep-zoom Hilbert map in the
//! browser: tiles rendered on demand, pixel to bytes and bytes to pixel, search, the analysis,
//! diffs side by side, and live tiles while the input changes.
//!
//! It serves only the inputs it was given, addressed by number (no path ever comes from a
//! request), read-only, on loopback unless told otherwise, and always with a token.

pub mod inputs;
mod routes;
pub mod tiles;

use crate::error::{Error, Result};
use inputs::Input;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How `view` serves.
#[derive(Clone, Debug)]
pub struct ViewOptions {
    /// Where to listen: `127.0.0.1` on `port` unless given.
    pub bind: Option<IpAddr>,
    /// 0 for a free port.
    pub port: u16,
    /// The token every API request must carry (`?token=`); made up when none is given.
    pub token: Option<String>,
    /// Compare the two inputs and show them side by side.
    pub diff: bool,
    /// How often the inputs' paths are checked for a new state.
    pub poll: Duration,
    /// How long a connection may take to send a request's headers, counted from when the
    /// server starts waiting for them (a new connection, or one idle after a response).
    pub header_timeout: Duration,
    /// The most connections served at once; one past that is closed as it is accepted.
    pub max_connections: usize,
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions {
            bind: None,
            port: 0,
            token: None,
            diff: false,
            poll: Duration::from_millis(250),
            header_timeout: Duration::from_secs(10),
            max_connections: 256,
        }
    }
}

/// A comparison of the two inputs, made when the viewer starts.
pub struct DiffView {
    pub report: crate::diff::DiffReport,
}

/// A running viewer.
pub struct RunningView {
    /// The address to open: `http://HOST:PORT/`, with `?token=` when one is needed.
    pub url: String,
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    stop_polling: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<Result<()>>>,
    poller: Option<std::thread::JoinHandle<()>>,
}

impl RunningView {
    /// Serves until `stop` turns true (checked every 100 ms), then shuts down.
    pub fn serve_until(mut self, stop: &AtomicBool) -> Result<()> {
        while !stop.load(Ordering::Relaxed) {
            if self.server.as_ref().is_some_and(|s| s.is_finished()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.shut_down()
    }

    /// Stops the server and the poller, and waits for both.
    pub fn shut_down(&mut self) -> Result<()> {
        self.stop_polling.store(true, Ordering::Relaxed);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // The poller is not waited for: a read of an input can block (a path swapped for
        // a FIFO between the checks and the open), and must not keep the viewer from
        // stopping. It ends at its next turn.
        drop(self.poller.take());
        match self.server.take() {
            Some(server) => server
                .join()
                .unwrap_or_else(|_| Err(Error::Usage("the viewer's server panicked".into()))),
            None => Ok(()),
        }
    }
}

impl Drop for RunningView {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}

/// Shortest token `--token` may give.
const MIN_TOKEN: usize = 16;

/// A token given with `--token`: long enough, and of characters a URL carries as they are.
fn check_token(token: &str) -> Result<String> {
    let plain = token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if token.len() < MIN_TOKEN || !plain {
        return Err(Error::Usage(format!(
            "--token must be at least {MIN_TOKEN} characters of A-Z, a-z, 0-9, -, ., _ and ~ (it goes into the URL as it is)"
        )));
    }
    Ok(token.to_string())
}

/// A token of 128 random bits, in hex.
fn new_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())
        .map_err(|e| Error::Usage(format!("no random bytes for a token: {e}")))?;
    Ok(hex::encode(bytes))
}

/// Most tiles of a builder root one viewer shows (each is read when the viewer starts).
const MAX_BUILDER_TILES: usize = 1000;

/// The inputs a list of paths names: a diff folder (`diff.json`) stands for its two sides, a
/// map builder root (`map/manifest.json`) for its tiles.
fn expand_paths(paths: &[PathBuf], diff: bool) -> Result<(Vec<PathBuf>, bool)> {
    if let [one] = paths {
        let table = one.join("diff.json");
        if one.is_dir() && table.is_file() {
            let (file, meta) = crate::source::open_input(&table)?;
            if meta.len() > 64 << 20 {
                return Err(Error::malformed(&table, "is larger than 64 MiB"));
            }
            let report: serde_json::Value = serde_json::from_reader(std::io::BufReader::new(file))
                .map_err(|e| Error::malformed(&table, format!("is not JSON: {e}")))?;
            let side = |key: &str| {
                let named = report[key]["path"]
                    .as_str()
                    .map(PathBuf::from)
                    .ok_or_else(|| Error::malformed(&table, format!("names no {key}.path")))?;
                // `diff` records its sides as given: a relative one from the folder it ran
                // in, tried here from the current folder, then from the diff folder's.
                let path = if named.is_relative() && !named.exists() {
                    one.parent().unwrap_or(Path::new(".")).join(&named)
                } else {
                    named
                };
                // Only a file or a folder: diff.json naming a device would have the viewer
                // read it to --max-input at every start.
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() || m.is_dir() => Ok(path),
                    Ok(_) => Err(Error::malformed(
                        &table,
                        format!(
                            "names {} as {key}, which is neither a file nor a folder",
                            path.display()
                        ),
                    )),
                    Err(e) => Err(Error::io(&path, "open", e)),
                }
            };
            return Ok((vec![side("a")?, side("b")?], true));
        }
    }
    // A map builder root: the `.rts.png` tiles published into it, waiting or processed.
    if let [one] = paths {
        if one.join("map").join("manifest.json").is_file() {
            let mut tiles = Vec::new();
            for folder in ["queue", "processed"] {
                let Ok(entries) = std::fs::read_dir(one.join(folder)) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let is_tile = entry.file_name().to_string_lossy().ends_with(".rts.png")
                        && entry.file_type().is_ok_and(|t| t.is_file());
                    if is_tile {
                        tiles.push(entry.path());
                    }
                }
            }
            tiles.sort();
            if tiles.is_empty() || tiles.len() > MAX_BUILDER_TILES {
                return Err(Error::Usage(format!(
                    "{} is a map builder root with {} tiles in queue/ and processed/; view takes 1 to {MAX_BUILDER_TILES} of them (name the ones to see)",
                    one.display(),
                    tiles.len()
                )));
            }
            return Ok((tiles, false));
        }
    }
    if diff && paths.len() != 2 {
        return Err(Error::Usage(format!(
            "--diff compares two inputs, and {} were given",
            paths.len()
        )));
    }
    Ok((paths.to_vec(), diff))
}

/// Reads the inputs, starts the server on its own thread and returns at once.
pub fn start(paths: &[PathBuf], options: &ViewOptions) -> Result<RunningView> {
    if paths.is_empty() {
        return Err(Error::Usage("view needs at least one input".into()));
    }
    let (paths, diff) = expand_paths(paths, options.diff)?;
    let (inputs, diff): (Vec<Arc<Input>>, _) = if diff {
        // Both sides are read once, as `diff` reads them, compared, and then shown.
        let cpu = crate::backend::Backend::Cpu;
        let options = crate::diff::DiffOptions::default();
        let (a, b, report) = Input::open_compared(&paths[0], &paths[1], |a, b| {
            Ok(crate::diff::compare(&cpu, a, b, &options, None)?.0)
        })?;
        (vec![Arc::new(a), Arc::new(b)], Some(DiffView { report }))
    } else {
        let inputs = paths
            .iter()
            .enumerate()
            .map(|(id, path)| Input::open(id, path).map(Arc::new))
            .collect::<Result<_>>()?;
        (inputs, None)
    };

    let ip = options.bind.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    // A token even on loopback: every local user can reach 127.0.0.1, and what the viewer
    // serves is what its own user may read.
    let token = match &options.token {
        Some(token) => check_token(token)?,
        None => new_token()?,
    };
    let listener = std::net::TcpListener::bind((ip, options.port))
        .map_err(|e| Error::Usage(format!("cannot listen on {ip}:{}: {e}", options.port)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Usage(format!("no address for the listener: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Usage(format!("cannot make the listener non-blocking: {e}")))?;
    let host = match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    let url = format!("http://{host}:{}/?token={token}", addr.port());
    // On loopback, the names a page of this viewer is reached by (a page of another site
    // that rebinds its own name to 127.0.0.1 sends that name, and is refused).
    let allowed_hosts = ip.is_loopback().then(|| {
        [
            "127.0.0.1".to_string(),
            "localhost".into(),
            "[::1]".into(),
            host.clone(),
        ]
        .iter()
        .map(|name| format!("{name}:{}", addr.port()))
        .collect()
    });

    let (events, _) = tokio::sync::broadcast::channel(64);
    let state = Arc::new(routes::AppState::new(
        inputs.clone(),
        diff,
        token,
        allowed_hosts,
        events.clone(),
    ));
    let stop_polling = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = Arc::clone(&stop_polling);
        let state = Arc::clone(&state);
        let every = options.poll;
        std::thread::Builder::new()
            .name("view-poll".into())
            .spawn(move || poll_inputs(&state, every, &stop))
            .map_err(|e| Error::Usage(format!("cannot start the viewer's poller: {e}")))?
    };
    let limits = ConnectionLimits {
        header_timeout: options.header_timeout,
        max_connections: options.max_connections.max(1),
    };
    let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::Builder::new()
        .name("view-http".into())
        .spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| Error::Usage(format!("no runtime for the viewer: {e}")))?;
            let served = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .map_err(|e| Error::Usage(format!("cannot serve on the listener: {e}")))?;
                // Not a graceful shutdown: a page's event stream never ends by itself, so
                // waiting for open connections would wait for the browser to close.
                tokio::select! {
                    () = serve_connections(listener, routes::router(state), limits) => Ok(()),
                    _ = shutdown_rx => Ok(()),
                }
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
            served
        })
        .map_err(|e| Error::Usage(format!("cannot start the viewer's server: {e}")))?;
    Ok(RunningView {
        url,
        addr,
        shutdown: Some(shutdown),
        stop_polling,
        server: Some(server),
        poller: Some(poller),
    })
}

/// What [`serve_connections`] allows each client.
#[derive(Clone, Copy)]
struct ConnectionLimits {
    header_timeout: Duration,
    max_connections: usize,
}

/// Serves `router` on `listener`, one task a connection, with the limits `axum::serve` does not
/// set: at most `max_connections` at once (one more is closed as it is accepted, so a process
/// that opens connections and sends nothing cannot use up the descriptors), and each request's
/// headers within `header_timeout` (a connection that sends nothing, or its headers a byte at a
/// time, is closed). A response, however long (the event stream), is not timed.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
) {
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of descriptors, or a connection reset before it was taken: wait, go on.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            continue;
        };
        // Tiles are small responses a page waits on: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            // A client that left, or took too long over its headers, is nothing to report.
            drop(served);
            drop(permit);
        });
    }
}

/// Checks every input's path each `every`; a new state is announced to the pages as the byte
/// ranges that changed, so they fetch again only the tiles over them.
fn poll_inputs(state: &routes::AppState, every: Duration, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(every);
        for input in state.inputs() {
            if let Some((version, changed)) = input.refresh() {
                state.announce(input.id, version, changed);
            }
        }
    }
}
