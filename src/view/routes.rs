//! The viewer's HTTP surface: the page and its embedded assets, the JSON API the page asks
//! (inputs, tiles, locate, hex, search, info, diff) and the event stream of changes; every
//! request checked for its host and token first.

use super::inputs::{Input, Loaded};
use super::tiles::{render_tile, squares, Geometry};
use super::DiffView;
use crate::format::preview::{Palette, CLASS_COLOURS, NO_DATA};
use crate::kernels::preview_stats::CLASS_NAMES;
use crate::kernels::Layout;
use crate::locate::Query;
use axum::extract::{Path as UrlPath, Query as UrlQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

const PAGE_HTML: &str = include_str!("assets/index.html");
const PAGE_JS: &str = include_str!("assets/view.js");
const PAGE_CSS: &str = include_str!("assets/view.css");

/// Bytes of rendered tiles kept (a tile of noise is about 260 KB of PNG, of zeros 1 KB).
const TILE_CACHE_BYTES: usize = 256 << 20;

/// Requests whose work (rendering, searching, analysing) runs at once; the rest wait their
/// turn. Each of them is parallel inside already, and many at once only pile up threads and
/// nest the thread pool's jobs on one stack.
const WORKERS: usize = 2;

/// Most bytes one hex request returns.
const MAX_HEX: u64 = 4096;

/// Most hits one search returns, and the longest pattern.
const MAX_HITS: usize = 1000;
const MAX_PATTERN: usize = 256;

/// Most aligned squares one answer carries (outlines of thousands of files stay drawable).
const MAX_SQUARES: usize = 200_000;

type TileKey = (usize, u64, &'static str, &'static str, u32, u64, u64);

/// A rendered tile: shared by the cache and every response that sends it, never copied.
type TilePng = axum::body::Bytes;

/// Rendered tiles by input, version, layout, palette and position; oldest dropped first.
#[derive(Default)]
struct TileCache {
    tiles: HashMap<TileKey, TilePng>,
    order: VecDeque<TileKey>,
    bytes: usize,
}

impl TileCache {
    fn get(&self, key: &TileKey) -> Option<TilePng> {
        self.tiles.get(key).cloned()
    }

    fn put(&mut self, key: TileKey, png: TilePng) {
        self.bytes += png.len();
        match self.tiles.insert(key, png) {
            Some(old) => self.bytes -= old.len(),
            None => self.order.push_back(key),
        }
        while self.bytes > TILE_CACHE_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(png) = self.tiles.remove(&old) {
                self.bytes -= png.len();
            }
        }
    }
}

/// What every request handler shares.
pub struct AppState {
    inputs: Vec<Arc<Input>>,
    diff: Option<DiffView>,
    token: String,
    /// On loopback: the `HOST:PORT`s accepted as the Host header (a page on another site that
    /// rebinds its name to 127.0.0.1 sends its own name and is refused).
    allowed_hosts: Option<Vec<String>>,
    events: tokio::sync::broadcast::Sender<String>,
    tiles: Mutex<TileCache>,
    work: tokio::sync::Semaphore,
}

impl AppState {
    pub fn new(
        inputs: Vec<Arc<Input>>,
        diff: Option<DiffView>,
        token: String,
        allowed_hosts: Option<Vec<String>>,
        events: tokio::sync::broadcast::Sender<String>,
    ) -> AppState {
        AppState {
            inputs,
            diff,
            token,
            allowed_hosts,
            events,
            tiles: Mutex::new(TileCache::default()),
            work: tokio::sync::Semaphore::new(WORKERS),
        }
    }

    pub fn inputs(&self) -> &[Arc<Input>] {
        &self.inputs
    }

    /// Tells the pages that input `id` is now at `version`, changed in `ranges`.
    pub fn announce(&self, id: usize, version: u64, ranges: Vec<(u64, u64)>) {
        let event = json!({ "input": id, "version": version, "changed": ranges });
        // No page listening is not an error.
        let _ = self.events.send(event.to_string());
    }

    fn input(&self, id: usize) -> Result<&Arc<Input>, ApiError> {
        self.inputs
            .get(id)
            .ok_or_else(|| ApiError::not_found(format!("no input {id}")))
    }
}

/// An error answered as JSON `{"error": ...}`.
struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }
    fn not_found(message: impl Into<String>) -> Self {
        ApiError(StatusCode::NOT_FOUND, message.into())
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        ApiError::bad(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Runs `job` on a blocking thread once one of the [`WORKERS`] turns is free.
async fn work<T: Send + 'static>(
    state: &AppState,
    job: impl FnOnce() -> T + Send + 'static,
) -> ApiResult<T> {
    let _turn = state
        .work
        .acquire()
        .await
        .map_err(|_| ApiError::bad("the viewer is stopping"))?;
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| ApiError::bad(format!("the work failed: {e}")))
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/assets/view.js", get(|| asset("text/javascript", PAGE_JS)))
        .route("/assets/view.css", get(|| asset("text/css", PAGE_CSS)))
        .route("/api/inputs", get(list_inputs))
        .route(
            "/api/input/{id}/tile/{layout}/{palette}/{z}/{x}/{y}",
            get(tile),
        )
        .route("/api/input/{id}/locate", get(locate))
        .route("/api/input/{id}/hex", get(hex_dump))
        .route("/api/input/{id}/regions", get(regions))
        .route("/api/input/{id}/search", get(search))
        .route("/api/input/{id}/info", get(info))
        .route("/api/input/{id}/holder", get(holder))
        .route("/api/input/{id}/entropy", get(entropy))
        .route("/api/diff", get(diff))
        .route("/api/events", get(events))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            guard,
        ))
        .with_state(state)
}

/// Refuses a request whose Host is not this loopback server's, or that lacks the token.
async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(allowed) = &state.allowed_hosts {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !allowed.iter().any(|name| name == host) {
            return ApiError(
                StatusCode::FORBIDDEN,
                format!("host {host:?} is not this viewer's"),
            )
            .into_response();
        }
    }
    // The page and its scripts are the same for everyone and name no input; the API answers
    // only with the token.
    let is_api = request.uri().path().starts_with("/api/");
    if is_api {
        let token = &state.token;
        let given = request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .or_else(|| {
                request
                    .headers()
                    .get("x-foundry-token")
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return ApiError(StatusCode::UNAUTHORIZED, "a valid token is required".into())
                .into_response();
        }
    }
    next.run(request).await
}

/// Compares without stopping at the first differing byte, so timing tells nothing of a token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE_HTML).await
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

fn layout_named(name: &str) -> ApiResult<(Layout, &'static str)> {
    match name {
        "brick" => Ok((Layout::Brick, "brick")),
        "rts" => Ok((Layout::Rts, "rts")),
        other => Err(ApiError::bad(format!(
            "layout {other:?} is neither brick nor rts"
        ))),
    }
}

/// The `layout=` of an API request: `brick` when not given.
fn layout_param(name: Option<&str>) -> ApiResult<Layout> {
    Ok(layout_named(name.unwrap_or("brick"))?.0)
}

fn palette_named(name: &str) -> ApiResult<(Palette, &'static str)> {
    match name {
        "byteclass" => Ok((Palette::Byteclass, "byteclass")),
        "entropy" => Ok((Palette::Entropy, "entropy")),
        "gray" => Ok((Palette::Gray, "gray")),
        "rgba" => Ok((Palette::Rgba, "rgba")),
        other => Err(ApiError::bad(format!(
            "palette {other:?} is not byteclass, entropy, gray or rgba"
        ))),
    }
}

fn hex_colour(rgb: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", rgb[0], rgb[1], rgb[2])
}

#[derive(Serialize)]
struct InputSummary {
    id: usize,
    label: String,
    path: String,
    kind: &'static str,
    size: u64,
    version: u64,
    brick: GeometrySummary,
    rts: GeometrySummary,
}

#[derive(Serialize)]
struct GeometrySummary {
    order: u32,
    max_zoom: u32,
}

impl From<Geometry> for GeometrySummary {
    fn from(g: Geometry) -> Self {
        GeometrySummary {
            order: g.order,
            max_zoom: g.max_zoom(),
        }
    }
}

fn summary(input: &Input) -> InputSummary {
    let now = input.now();
    let size = now.bytes.len() as u64;
    InputSummary {
        id: input.id,
        label: input.label.clone(),
        path: input.path.display().to_string(),
        kind: now.kind,
        size,
        version: now.version,
        brick: Geometry::of(size, Layout::Brick).into(),
        rts: Geometry::of(size, Layout::Rts).into(),
    }
}

async fn list_inputs(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let inputs: Vec<InputSummary> = state.inputs.iter().map(|i| summary(i)).collect();
    let classes: Vec<_> = CLASS_NAMES
        .iter()
        .zip(CLASS_COLOURS)
        .map(|(name, rgb)| json!({ "name": name, "colour": hex_colour(rgb) }))
        .collect();
    let entropy: Vec<_> = (0..=8)
        .map(|bits| {
            let rgb = crate::format::preview::entropy_colour(f64::from(bits) / 8.0);
            json!({ "name": format!("{bits}"), "colour": hex_colour(rgb) })
        })
        .collect();
    Json(json!({
        "inputs": inputs,
        "diff": state.diff.is_some(),
        "tile_side": super::tiles::TILE_SIDE,
        "legend": { "byteclass": classes, "entropy": entropy, "no_data": hex_colour(NO_DATA) },
    }))
}

/// The geometry of an input's state in a layout.
fn geometry(loaded: &Loaded, layout: Layout) -> Geometry {
    Geometry::of(loaded.bytes.len() as u64, layout)
}

async fn tile(
    State(state): State<Arc<AppState>>,
    UrlPath((id, layout, palette, z, x, y)): UrlPath<(usize, String, String, u32, u64, String)>,
    UrlQuery(query): UrlQuery<HashMap<String, String>>,
) -> ApiResult<Response> {
    let input = Arc::clone(state.input(id)?);
    let (layout, layout_name) = layout_named(&layout)?;
    let (palette, palette_name) = palette_named(&palette)?;
    let y: u64 = y
        .strip_suffix(".png")
        .unwrap_or(&y)
        .parse()
        .map_err(|_| ApiError::bad("the tile's row is not a number"))?;
    // The page asks with the version it knows changed this tile last; a tile of an older
    // version kept here still shows the same bytes, as nothing changed over it since.
    // Never a version past the one shown: a tile asked for ahead would be kept under a
    // version whose bytes it does not show.
    let shown = input.now().version;
    let version = query
        .get("v")
        .and_then(|v| v.parse().ok())
        .map_or(shown, |v: u64| v.min(shown));
    let key = (id, version, layout_name, palette_name, z, x, y);
    let cached = state
        .tiles
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key);
    let png = match cached {
        Some(png) => png,
        None => {
            let loaded = input.now();
            let png = work(&state, move || -> crate::Result<Vec<u8>> {
                let image =
                    render_tile(&loaded.bytes, geometry(&loaded, layout), palette, z, x, y)?;
                let mut png = Vec::with_capacity(64 << 10);
                crate::format::preview::write_png(&mut png, &image)
                    .map_err(|e| crate::Error::Usage(format!("tile PNG: {e}")))?;
                // The cache counts lengths: a tile of zeros must not keep 64 KiB.
                png.shrink_to_fit();
                Ok(png)
            })
            .await??;
            let png = TilePng::from(png);
            state
                .tiles
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .put(key, png.clone());
            png
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        png,
    )
        .into_response())
}

#[derive(Deserialize)]
struct LocateParams {
    /// An offset, an address (`@0x...`), or a name (section, symbol, file, mapping).
    q: Option<String>,
    offset: Option<u64>,
    layout: Option<String>,
}

/// Parses the go-to box: `0x1f00` or `7936` is an offset, `@0x7f..` an address, anything else
/// a name.
fn parse_goto(text: &str) -> Query {
    let text = text.trim();
    let number = |t: &str| match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    };
    if let Some(address) = text.strip_prefix('@').and_then(number) {
        return Query::Address(address);
    }
    match number(text) {
        Some(offset) => Query::Offset(offset),
        None => Query::Region(text.to_string()),
    }
}

async fn locate(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<usize>,
    UrlQuery(params): UrlQuery<LocateParams>,
) -> ApiResult<Json<serde_json::Value>> {
    let input = state.input(id)?;
    let loaded = input.now();
    let query = match (params.offset, &params.q) {
        (Some(offset), _) => Query::Offset(offset),
        (None, Some(q)) if !q.trim().is_empty() => parse_goto(q),
        _ => return Err(ApiError::bad("give offset= or q=")),
    };
    let layout = layout_param(params.layout.as_deref())?;
    let report = loaded.map.answer(&input.path, query)?;
    let mut squares = squares(geometry(&loaded, layout), report.start, report.end);
    squares.truncate(MAX_SQUARES);
    Ok(Json(
        json!({ "report": report, "squares": squares, "version": loaded.version }),
    ))
}

#[derive(Deserialize)]
struct HexParams {
    offset: u64,
    len: Option<u64>,
}

async fn hex_dump(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<usize>,
    UrlQuery(params): UrlQuery<HexParams>,
) -> ApiResult<Json<serde_json::Value>> {
    let loaded = state.input(id)?.now();
    let bytes = &loaded.bytes;
    let size = bytes.len() as u64;
    if params.offset >= size {
        return Err(ApiError::bad(format!(
            "offset {} is past the end ({size} bytes)",
            params.offset
        )));
    }
    let len = params.len.unwrap_or(256).clamp(1, MAX_HEX);
    // Rows of 16, the asked offset in the middle where the input allows.
    let start = (params.offset.saturating_sub(len / 2)) / 16 * 16;
    let end = (start + len).min(size);
    Ok(Json(json!({
        "start": start,
        "offset": params.offset,
        "hex": hex::encode(&bytes[start as usize..end as usize]),
        "version": loaded.version,
    })))
}

#[derive(Deserialize)]
struct RegionParams {
    layout: Option<String>,
    /// Also the ELF symbols (thousands in a large binary; off for outlines).
    symbols: Option<bool>,
}

async fn regions(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<usize>,
    UrlQuery(params): UrlQuery<RegionParams>,
) -> ApiResult<Json<serde_json::Value>> {
    let loaded = state.input(id)?.now();
    let layout = layout_param(params.layout.as_deref())?;
    let with_symbols = params.symbols.unwrap_or(false);
    // A snapshot's table can name a million files: built off the server's threads.
    let answer = work(&state, move || {
        let geometry = geometry(&loaded, layout);
        let mut budget = MAX_SQUARES;
        let mut list = Vec::new();
        let mut left_out = 0usize;
        for (range, kind, address) in loaded.map.regions() {
            if kind == "elf_symbol" && !with_symbols {
                continue;
            }
            let squares = squares(geometry, range.start, range.end);
            if squares.len() > budget {
                left_out += 1;
                continue;
            }
            budget -= squares.len();
            list.push(json!({
                "kind": kind,
                "name": range.name,
                "start": range.start,
                "end": range.end,
                "address": address,
                "squares": squares,
            }));
        }
        json!({ "regions": list, "left_out": left_out, "version": loaded.version })
    })
    .await?;
    Ok(Json(answer))
}

/// The entropy regions whose edges the page draws: runs of 4 KiB blocks of one class
/// (constant, normal, high), each with its squares.
async fn entropy(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<usize>,
    UrlQuery(params): UrlQuery<RegionParams>,
) -> ApiResult<Json<serde_json::Value>> {
    let loaded = state.input(id)?.now();
    let layout = layout_param(params.layout.as_deref())?;
    let answer = work(&state, move || {
        let geometry = geometry(&loaded, layout);
        let mut budget = MAX_SQUARES;
        let regions: Vec<_> = loaded
            .entropy_regions()
            .iter()
            .map_while(|r| {
                let squares = squares(geometry, r.start, r.end);
                budget = budget.checked_sub(squares.len())?;
                Some(json!({
                    "start": r.start, "end": r.end, "entropy": r.entropy,
                    "class": r.class, "squares": squares,
                }))
            })
            .collect();
        json!({ "regions": regions, "version": loaded.version })
    })
    .await?;
    Ok(Json(answer))
}

#[derive(Deserialize)]
struct SearchParams {
    text: Option<String>,
    hex: Option<String>,
    layout: Option<String>,
}

async fn search(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<usize>,
    UrlQuery(params): UrlQuery<SearchParams>,
) -> ApiResult<Json<serde_json::Value>> {
    let loaded = state.input(id)?.now();
    let layout = layout_param(params.layout.as_deref())?;
    let pattern: Vec<u8> = match (&params.text, &params.hex) {
        (Some(text), None) => text.as_bytes().to_vec(),
        (None, Some(digits)) => {
            let digits: String = digits.chars().filter(|c| !c.is_whitespace()).collect();
            hex::decode(&digits)
                .map_err(|e| ApiError::bad(format!("{digits:?} is not hex bytes: {e}")))?
        }
        _ => return Err(ApiError::bad("give text= or hex=")),
    };
    if pattern.is_empty() || pattern.len() > MAX_PATTERN {
        return Err(ApiError::bad(format!(
            "a pattern is 1 to {MAX_PATTERN} bytes; this one is {}",
            pattern.len()
        )));
    }
    let found = work(&state, move || {
        let geometry = geometry(&loaded, layout);
        let mut hits = Vec::new();
        let mut count = 0u64;
        for at in memchr::memmem::find_iter(&loaded.bytes, &pattern) {
            count += 1;
            if hits.len() < MAX_HITS {
                let (start, end) = (at as u64, (at + pattern.len()) as u64);
                hits.push(json!({ "offset": start, "squares": squares(geometry, start, end) }));
            }
        }
        json!({ "hits": hits, "count": count, "len": pattern.len(), "version": loaded.version })
    })
    .await?;
    Ok(Json(found))
}

async fn info(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<usize>,
) -> ApiResult<Json<serde_json::Value>> {
    let input = state.input(id)?;
    let loaded = input.now();
    let path = input.path.display().to_string();
    let answer = work(&state, move || {
        // The entropy regions are the ones the edges endpoint keeps; the hash is the
        // analysis's own.
        let analysis = crate::analysis::local::analyze_with_entropy_regions(
            &loaded.bytes,
            loaded.entropy_regions().to_vec(),
        );
        let semantic = loaded
            .metadata
            .as_ref()
            .and_then(|m| m.get("semantic").cloned());
        json!({
            "path": path,
            "kind": loaded.kind,
            "size": loaded.bytes.len(),
            "sha256": analysis.sha256,
            "analysis": analysis,
            "semantic": semantic,
            "metadata": loaded.metadata,
            "members": loaded.members,
            "version": loaded.version,
        })
    })
    .await?;
    Ok(Json(answer))
}

/// The largest holder (file, mapping, section) whose bytes the holder panel analyses.
const MAX_HOLDER_ANALYSIS: u64 = 256 << 20;

#[derive(Deserialize)]
struct OffsetParam {
    offset: u64,
}

/// What the innermost file, mapping or section holding `offset` is: its local analysis, and
/// for a snapshot's file its `district.json` entry (with `--llm`, the model's `semantic`).
async fn holder(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<usize>,
    UrlQuery(params): UrlQuery<OffsetParam>,
) -> ApiResult<Json<serde_json::Value>> {
    let loaded = state.input(id)?.now();
    let found = loaded
        .map
        .regions()
        .filter(|(range, kind, _)| {
            *kind != "elf_symbol" && (range.start..range.end).contains(&params.offset)
        })
        .min_by_key(|(range, _, _)| range.end - range.start)
        .map(|(range, kind, _)| (range.clone(), kind));
    let Some((range, kind)) = found else {
        return Ok(Json(json!({ "holder": null })));
    };
    let answer = work(&state, move || {
        let length = range.end - range.start;
        let analysis = (length <= MAX_HOLDER_ANALYSIS).then(|| {
            crate::analysis::local::analyze(&loaded.bytes[range.start as usize..range.end as usize])
        });
        let record = loaded.records.get(&range.name).cloned();
        let semantic = record.as_ref().and_then(|r| r.get("semantic").cloned());
        json!({
            "holder": { "kind": kind, "name": range.name, "start": range.start, "end": range.end },
            "analysis": analysis,
            "record": record,
            "semantic": semantic,
        })
    })
    .await?;
    Ok(Json(answer))
}

#[derive(Deserialize)]
struct DiffParams {
    layout: Option<String>,
}

async fn diff(
    State(state): State<Arc<AppState>>,
    UrlQuery(params): UrlQuery<DiffParams>,
) -> ApiResult<Json<serde_json::Value>> {
    if state.diff.is_none() {
        return Err(ApiError::not_found("this viewer shows no diff"));
    }
    let layout = layout_param(params.layout.as_deref())?;
    let shared = Arc::clone(&state);
    let answer = work(&state, move || {
        let Some(diff) = &shared.diff else {
            return json!({});
        };
        let (a, b) = (shared.inputs[0].now(), shared.inputs[1].now());
        let (ga, gb) = (geometry(&a, layout), geometry(&b, layout));
        let mut budget = MAX_SQUARES;
        let mut side = |range: Option<(u64, u64)>, g: Geometry| {
            range.map(|(s, e)| {
                let mut sq = squares(g, s, e);
                sq.truncate(budget);
                budget -= sq.len();
                json!({ "start": s, "end": e, "squares": sq })
            })
        };
        let changes: Vec<_> = diff
            .report
            .ranges
            .iter()
            .map(|r| {
                json!({
                    "kind": r.kind,
                    "a": side(r.a, ga),
                    "b": side(r.b, gb),
                    "differing_bytes": r.differing_bytes,
                })
            })
            .collect();
        json!({
            "changes": changes,
            "ranges_omitted": diff.report.ranges_omitted,
            "totals": diff.report.totals,
            "difference": diff.report.difference,
        })
    })
    .await?;
    Ok(Json(answer))
}

async fn events(
    State(state): State<Arc<AppState>>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let receiver = state.events.subscribe();
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(message) => {
                    return Some((Ok(Event::default().event("change").data(message)), receiver))
                }
                // A page too slow to read every event still gets the later ones.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
