// foundry-gpu view: the page. Tiles come from the server (each pixel summarising all of its
// bytes); this script places them, maps the pointer to offsets with the same Hilbert curve as
// src/curve.rs, and draws outlines, hits, changes and the selection over them.
'use strict';

const TOKEN = new URLSearchParams(location.search).get('token');
const MARKER = 7; // smallest marker drawn, in screen pixels, so a 1-byte change stays visible
const KIND_COLOURS = { changed: '#ff9f1c', inserted: '#4cd964', deleted: '#ff4d4d', moved: '#5ac8fa' };

function apiUrl(path, params) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null) url.searchParams.set(k, v);
  if (TOKEN) url.searchParams.set('token', TOKEN);
  return url.toString();
}

async function getJSON(path, params) {
  const response = await fetch(apiUrl(path, params));
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// The curve of src/curve.rs: (x, y) to the index on a square of side 2^order. Numbers, not
// 32-bit integers, hold the index: a 4 GiB input has 2^32 cells.
function xy2d(order, x, y) {
  let d = 0;
  for (let s = 2 ** (order - 1); s >= 1; s /= 2) {
    const rx = (x & s) > 0 ? 1 : 0;
    const ry = (y & s) > 0 ? 1 : 0;
    d += s * s * ((3 * rx) ^ ry);
    if (ry === 0) {
      if (rx === 1) { x = s - 1 - (x & (s - 1)); y = s - 1 - (y & (s - 1)); }
      const t = x; x = y; y = t;
    }
    x &= s - 1; y &= s - 1;
  }
  return d;
}

function d2xy(order, d) {
  let x = 0, y = 0, t = d;
  for (let s = 1; s < 2 ** order; s *= 2) {
    const rx = 1 & Math.floor(t / 2);
    const ry = 1 & (t ^ rx);
    if (ry === 0) {
      if (rx === 1) { x = s - 1 - x; y = s - 1 - y; }
      const tmp = x; x = y; y = tmp;
    }
    x += s * rx; y += s * ry;
    t = Math.floor(t / 4);
  }
  return [x, y];
}

const hex = (n) => '0x' + n.toString(16);
const el = (id) => document.getElementById(id);

const state = {
  inputs: [], diff: null, legend: null, tileSide: 256,
  palette: 'byteclass', layout: 'brick', outlines: true, entropyEdges: false,
  // The view both panes share (zoom and pan locked): the whole input is `size` screen pixels
  // wide, and the point at fraction (fx, fy) of it is at the pane's centre.
  view: { size: 512, fx: 0.5, fy: 0.5 },
  panes: [], active: 0,
  selection: null, // {pane, start, end, squares}
  hits: [], // per pane: [{offset, squares}]
  changeIndex: -1,
  hoverOffset: null, selectedOffset: null,
  ready: false,
};

class Pane {
  constructor(index, input) {
    this.index = index;
    this.input = input;
    this.changes = []; // [{version, ranges}] announced since load
    this.regions = [];
    this.entropy = [];
    this.hits = [];
    this.tiles = new Map();
    this.el = document.createElement('div');
    this.el.className = 'pane';
    this.el.id = 'pane-' + index;
    this.title = document.createElement('div');
    this.title.className = 'title';
    this.canvas = document.createElement('canvas');
    this.el.append(this.title, this.canvas);
    el('panes').append(this.el);
    this.outlineCanvas = document.createElement('canvas');
  }

  get geometry() { return this.input[state.layout]; }
  get order() { return this.geometry.order; }
  get side() { return 2 ** this.order; }
  get bpp() { return state.layout === 'rts' ? 4 : 1; }
  get width() { return this.el.clientWidth; }
  get height() { return this.el.clientHeight; }
  get cellPx() { return state.view.size / this.side; }
  get left() { return this.width / 2 - state.view.fx * state.view.size; }
  get top() { return this.height / 2 - state.view.fy * state.view.size; }

  // The input offset under client point (px, py) of this pane, or null off the input.
  offsetAt(px, py) {
    const cx = Math.floor((px - this.left) / this.cellPx);
    const cy = Math.floor((py - this.top) / this.cellPx);
    if (cx < 0 || cy < 0 || cx >= this.side || cy >= this.side) return null;
    const offset = xy2d(this.order, cx, cy) * this.bpp;
    return offset < this.input.size ? offset : null;
  }

  // The centre of the cell holding `offset`, in pane pixels.
  pointOf(offset) {
    const [x, y] = d2xy(this.order, Math.floor(offset / this.bpp));
    return [this.left + (x + 0.5) * this.cellPx, this.top + (y + 0.5) * this.cellPx];
  }

  tileBytes(z, x, y) {
    const span = this.order - z;
    const cells = 4 ** span;
    const first = Math.floor(xy2d(this.order, x * 2 ** span, y * 2 ** span) / cells) * cells;
    return [first * this.bpp, (first + cells) * this.bpp];
  }

  // The version to ask a tile at: the last one whose changes touch its bytes.
  tileVersion(z, x, y) {
    const [s, e] = this.tileBytes(z, x, y);
    let version = this.input.version;
    for (const c of this.changes) {
      if (c.ranges.some(([a, b]) => a < e && s < b)) version = Math.max(version, c.version);
    }
    return version;
  }

  tileUrl(z, x, y) {
    return apiUrl(`/api/input/${this.input.id}/tile/${state.layout}/${state.palette}/${z}/${x}/${y}.png`,
      { v: this.tileVersion(z, x, y) });
  }

  placeTile(key, url, left, top, size, zIndex) {
    let img = this.tiles.get(key);
    if (!img) {
      img = new Image();
      img.decoding = 'async';
      img.dataset.key = key;
      state.loading = (state.loading || 0) + 1;
      const done = () => { state.loading -= 1; };
      img.addEventListener('load', done, { once: true });
      img.addEventListener('error', done, { once: true });
      img.src = url;
      this.el.append(img);
      this.tiles.set(key, img);
    } else if (img.dataset.url !== url) {
      img.src = url;
    }
    img.dataset.url = url;
    img.style.left = left + 'px';
    img.style.top = top + 'px';
    img.style.width = size + 'px';
    img.style.height = size + 'px';
    img.style.zIndex = zIndex;
  }

  draw() {
    const maxZoom = this.geometry.max_zoom;
    const z = Math.max(0, Math.min(maxZoom, Math.round(Math.log2(state.view.size / state.tileSide))));
    const n = 2 ** z;
    const tilePx = state.view.size / n;
    const left = this.left, top = this.top;
    const wanted = new Set();
    const prefix = `${state.layout}/${state.palette}/`;
    // The whole input at zoom 0 stays underneath while finer tiles load.
    const bgKey = prefix + '0/0/0';
    wanted.add(bgKey);
    this.placeTile(bgKey, this.tileUrl(0, 0, 0), left, top, state.view.size, 0);
    if (z > 0) {
      const x0 = Math.max(0, Math.floor(-left / tilePx)), x1 = Math.min(n - 1, Math.floor((this.width - left) / tilePx));
      const y0 = Math.max(0, Math.floor(-top / tilePx)), y1 = Math.min(n - 1, Math.floor((this.height - top) / tilePx));
      for (let ty = y0; ty <= y1; ty++) {
        for (let tx = x0; tx <= x1; tx++) {
          const key = `${prefix}${z}/${tx}/${ty}`;
          wanted.add(key);
          this.placeTile(key, this.tileUrl(z, tx, ty), left + tx * tilePx, top + ty * tilePx, tilePx, 1);
        }
      }
    }
    for (const [key, img] of this.tiles) {
      if (!wanted.has(key)) { img.remove(); this.tiles.delete(key); }
    }
    this.title.textContent = `${this.input.label} · ${this.input.size.toLocaleString()} bytes · zoom ${z}/${maxZoom}`;
    this.drawOverlay();
  }

  // Screen rectangle of a square [x, y, w, h] in cells, grown to the marker size when tiny.
  rect(square, marker) {
    const px = this.cellPx;
    let x = this.left + square[0] * px, y = this.top + square[1] * px, w = square[2] * px, h = square[3] * px;
    if (marker && w < MARKER) { x -= (MARKER - w) / 2; y -= (MARKER - h) / 2; w = h = MARKER; }
    return [x, y, w, h];
  }

  visible([x, y, w, h]) { return x + w >= 0 && y + h >= 0 && x <= this.width && y <= this.height; }

  // The outline of a union of squares: strokes of every square, then the squares themselves
  // cut out, so only the edges facing outside remain.
  outline(ctx, squares, colour) {
    const off = this.outlineCanvas;
    if (off.width !== this.canvas.width || off.height !== this.canvas.height) {
      off.width = this.canvas.width; off.height = this.canvas.height;
    }
    const o = off.getContext('2d');
    o.globalCompositeOperation = 'source-over';
    o.clearRect(0, 0, off.width, off.height);
    o.strokeStyle = colour; o.lineWidth = 3;
    for (const s of squares) { const r = this.rect(s); if (this.visible(r)) o.strokeRect(...r); }
    o.globalCompositeOperation = 'destination-out';
    for (const s of squares) { const r = this.rect(s); if (this.visible(r)) o.fillRect(...r); }
    ctx.drawImage(off, 0, 0);
  }

  drawOverlay() {
    const c = this.canvas;
    if (c.width !== this.width || c.height !== this.height) { c.width = this.width; c.height = this.height; }
    const ctx = c.getContext('2d');
    ctx.clearRect(0, 0, c.width, c.height);
    const placed = [];
    if (state.outlines) {
      // The largest visible regions first; labels where they fit and do not overlap.
      const shown = this.regions
        .map((r) => ({ r, area: r.squares.reduce((a, s) => a + s[2] * s[3], 0) * this.cellPx ** 2 }))
        .filter(({ r, area }) => area > 64 && r.squares.some((s) => this.visible(this.rect(s))))
        .sort((a, b) => b.area - a.area)
        .slice(0, 300);
      for (const { r } of shown) {
        this.outline(ctx, r.squares, 'rgba(255,255,255,0.85)');
        const big = r.squares.reduce((a, s) => (s[2] > a[2] ? s : a), r.squares[0]);
        const [x, y, w, h] = this.rect(big);
        const label = r.name.length > 40 ? '…' + r.name.slice(-39) : r.name;
        ctx.font = '12px system-ui, sans-serif';
        const tw = ctx.measureText(label).width + 6;
        const lx = Math.max(0, x + w / 2 - tw / 2), ly = Math.max(0, y + h / 2 - 8);
        const box = [lx, ly, tw, 16];
        if (w > tw && h > 18 && !placed.some((p) => box[0] < p[0] + p[2] && p[0] < box[0] + box[2] && box[1] < p[1] + p[3] && p[1] < box[1] + box[3])) {
          placed.push(box);
          ctx.fillStyle = 'rgba(0,0,0,0.65)'; ctx.fillRect(...box);
          ctx.fillStyle = '#fff'; ctx.fillText(label, lx + 3, ly + 12);
        }
      }
    }
    if (state.entropyEdges) {
      // Constant runs (padding, fills) and high-entropy runs (packed, compressed, keys);
      // the edges of both are where the entropy class changes.
      for (const r of this.entropy) {
        if (r.class === 'normal' || !r.squares.some((s) => this.visible(this.rect(s)))) continue;
        this.outline(ctx, r.squares, r.class === 'high' ? 'rgba(255,80,80,0.95)' : 'rgba(90,170,255,0.95)');
      }
    }
    if (state.diff && state.diff.changes) this.drawChanges(ctx);
    ctx.lineWidth = 2;
    ctx.strokeStyle = '#ff3df5';
    for (const hit of this.hits) for (const s of hit.squares) { const r = this.rect(s, true); if (this.visible(r)) ctx.strokeRect(...r); }
    const sel = state.selection;
    if (sel && sel.pane === this.index) {
      ctx.lineWidth = 2; ctx.strokeStyle = '#ffd400';
      for (const s of sel.squares) { const r = this.rect(s, true); if (this.visible(r)) ctx.strokeRect(...r); }
    }
  }

  drawChanges(ctx) {
    const sideKey = this.index === 0 ? 'a' : 'b';
    state.diff.changes.forEach((change, i) => {
      const side = change[sideKey];
      if (!side) return;
      // A changed or moved range shows on both sides; an insertion on B, a deletion on A.
      ctx.strokeStyle = KIND_COLOURS[change.kind] || '#fff';
      ctx.lineWidth = i === state.changeIndex ? 4 : 1.5;
      for (const s of side.squares) { const r = this.rect(s, true); if (this.visible(r)) ctx.strokeRect(...r); }
    });
  }
}

function drawAll() { for (const p of state.panes) p.draw(); }

function zoomAt(pane, px, py, factor) {
  const v = state.view;
  const minSize = Math.min(pane.width, pane.height) * 0.5;
  const maxSize = pane.side * 64; // 64 screen pixels a cell at the deepest
  const size = Math.max(minSize, Math.min(maxSize, v.size * factor));
  const u = (px - pane.left) / v.size, w = (py - pane.top) / v.size;
  v.size = size;
  v.fx = u - (px - pane.width / 2) / size;
  v.fy = w - (py - pane.height / 2) / size;
  drawAll();
}

function fit(pane) {
  state.view.size = Math.min(pane.width, pane.height) * 0.95;
  state.view.fx = state.view.fy = 0.5;
  drawAll();
}

// Centres the view on squares (in cells of `pane`) and zooms so that they fill half the pane.
function flyTo(pane, squares) {
  if (!squares.length) return;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const [x, y, w, h] of squares) { x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h); }
  const cells = Math.max(x1 - x0, y1 - y0, 1);
  const v = state.view;
  v.size = Math.min(pane.side * 64, (Math.min(pane.width, pane.height) * 0.5 / cells) * pane.side);
  v.fx = (x0 + x1) / 2 / pane.side;
  v.fy = (y0 + y1) / 2 / pane.side;
  drawAll();
}

function holderItems(list, holders) {
  list.replaceChildren(...holders.map((h) => {
    const li = document.createElement('li');
    const where = h.address != null ? ` at ${hex(h.address)}` : '';
    li.textContent = `${h.kind.replace('elf_', '')} ${h.name} (+${hex(h.offset_inside)})${where}`;
    li.dataset.kind = h.kind;
    return li;
  }));
}

function placementText(report) {
  return report.placements.map((p) => {
    const file = p.file ? p.file.split('/').pop() : (p.layout === 'brick' ? '.brick' : '.rts.png');
    return `${file}${p.part ? ' part ' + p.part : ''}: (${p.x}, ${p.y})${p.layout === 'rts_png' ? ' ch ' + 'RGBA'[p.channel] : ''}`;
  }).join(' · ');
}

let hoverTimer = null;
function showHover(pane, offset) {
  state.hoverOffset = offset;
  if (offset === null) { el('hover-offset').textContent = 'outside the input'; el('hover-holders').replaceChildren(); return; }
  el('hover-offset').textContent = `${pane.input.label}: offset ${hex(offset)} (${offset})`;
  clearTimeout(hoverTimer);
  hoverTimer = setTimeout(async () => {
    try {
      const answer = await getJSON(`/api/input/${pane.input.id}/locate`, { offset });
      if (state.hoverOffset === offset) holderItems(el('hover-holders'), answer.report.holders);
    } catch (e) { /* the input may have shrunk meanwhile */ }
  }, 60);
}

// Selects `offset` (and, for a region or a change, its whole range up to `end`, drawn as
// `squares`): its holders and a hex dump around it.
async function select(pane, offset, squares, end) {
  state.selectedOffset = offset;
  const answer = await getJSON(`/api/input/${pane.input.id}/locate`, { offset, layout: state.layout });
  const report = answer.report;
  state.selection = { pane: pane.index, start: report.start, end: end === undefined ? report.end : end, squares: squares || answer.squares };
  el('sel-offset').textContent = `${pane.input.label}: offset ${hex(offset)} (${offset}) · ${placementText(report)}`;
  holderItems(el('sel-holders'), report.holders);
  const dump = await getJSON(`/api/input/${pane.input.id}/hex`, { offset, len: 256 });
  renderHex(dump);
  drawAll();
  showHolder(pane, offset);
}

// The innermost file, mapping or section holding the selected byte: what it is.
async function showHolder(pane, offset) {
  const box = el('holder-info');
  try {
    const found = await getJSON(`/api/input/${pane.input.id}/holder`, { offset });
    if (state.selectedOffset !== offset) return;
    if (!found.holder) { box.replaceChildren(); return; }
    const h = found.holder;
    const dl = document.createElement('dl');
    const add = (k, v) => { if (v === undefined || v === null || v === '') return; const dt = document.createElement('dt'); dt.textContent = k; const dd = document.createElement('dd'); dd.textContent = v; dl.append(dt, dd); };
    add(h.kind.replace('elf_', ''), `${h.name} [${hex(h.start)}, ${hex(h.end)}) · ${(h.end - h.start).toLocaleString()} bytes`);
    const a = found.analysis;
    if (a) { add('its type', a.file_type); add('its entropy', `${a.entropy.toFixed(3)} bits/byte`); add('its strings', a.strings.sample.slice(0, 5).join(' · ')); }
    if (found.record) { add('its sha256', found.record.sha256); add('its flags', (found.record.flags || []).join(', ')); }
    const s = found.semantic;
    if (s) { add('its summary', s.summary); add('its tags', (s.tags || []).join(', ')); add('its risk', s.risk); }
    box.replaceChildren(dl);
  } catch (e) { box.textContent = e.message; }
}

function renderHex(dump) {
  const bytes = dump.hex.match(/../g) || [];
  const pre = el('hex');
  pre.replaceChildren();
  for (let row = 0; row < bytes.length; row += 16) {
    const at = dump.start + row;
    pre.append(at.toString(16).padStart(8, '0') + '  ');
    const ascii = [];
    for (let i = row; i < row + 16; i++) {
      const b = bytes[i];
      const text = b === undefined ? '  ' : b;
      if (at + i - row === dump.offset) {
        const span = document.createElement('span'); span.className = 'hl'; span.id = 'hex-hl'; span.textContent = text;
        pre.append(span);
      } else pre.append(text);
      pre.append(i % 16 === 7 ? '  ' : ' ');
      const v = b === undefined ? 32 : parseInt(b, 16);
      ascii.push(v >= 32 && v < 127 ? String.fromCharCode(v) : '.');
    }
    pre.append(' ' + ascii.join('') + '\n');
  }
}

async function loadRegions() {
  await Promise.all(state.panes.map(async (p) => {
    try { p.regions = (await getJSON(`/api/input/${p.input.id}/regions`, { layout: state.layout })).regions; } catch (e) { p.regions = []; }
  }));
}

async function loadEntropy() {
  if (!state.entropyEdges) return;
  await Promise.all(state.panes.map(async (p) => {
    try { p.entropy = (await getJSON(`/api/input/${p.input.id}/entropy`, { layout: state.layout })).regions; } catch (e) { p.entropy = []; }
  }));
}

async function loadDiff() {
  if (!state.diff) return;
  state.diff = await getJSON('/api/diff', { layout: state.layout });
  const list = el('change-list');
  list.replaceChildren(...state.diff.changes.map((c, i) => {
    const li = document.createElement('li');
    li.className = 'k-' + c.kind;
    const range = (s) => (s ? `${hex(s.start)}..${hex(s.end)}` : '—');
    li.textContent = `${c.kind} A ${range(c.a)} B ${range(c.b)}`;
    li.addEventListener('click', () => stepTo(i));
    return li;
  }));
  const t = state.diff.totals;
  el('change-totals').textContent = `${state.diff.changes.length} ranges · changed ${t.changed} · inserted ${t.inserted} · deleted ${t.deleted} · moved ${t.moved} bytes`;
  el('changes').hidden = false;
}

function stepTo(i) {
  const changes = state.diff ? state.diff.changes : [];
  if (!changes.length) return;
  state.changeIndex = ((i % changes.length) + changes.length) % changes.length;
  const c = changes[state.changeIndex];
  [...el('change-list').children].forEach((li, k) => li.classList.toggle('current', k === state.changeIndex));
  el('change-list').children[state.changeIndex].scrollIntoView({ block: 'nearest' });
  const onB = c.b ? 1 : 0;
  const side = c.b || c.a;
  flyTo(state.panes[onB], side.squares);
  select(state.panes[onB], side.start, side.squares, side.end).catch(status);
}

function status(text) { el('status').textContent = text instanceof Error ? text.message : text; }

function showLegend() {
  const box = el('legend');
  box.replaceChildren();
  const items = state.palette === 'byteclass' ? state.legend.byteclass
    : state.palette === 'entropy' ? state.legend.entropy.map((e) => ({ ...e, name: e.name + ' bits' })) : [];
  box.append(state.palette === 'gray' ? 'gray: mean byte value' : state.palette === 'rgba' ? 'rgba: mean pixel as stored' : '');
  for (const item of items.concat([{ name: 'no data', colour: state.legend.no_data }])) {
    const sw = document.createElement('span'); sw.className = 'swatch'; sw.style.background = item.colour;
    box.append(sw, item.name);
  }
}

async function showInfo(pane) {
  const body = el('info-body');
  body.textContent = 'analysing…';
  try {
    const info = await getJSON(`/api/input/${pane.input.id}/info`);
    const dl = document.createElement('dl');
    const add = (k, v) => { if (v === undefined || v === null || v === '') return; const dt = document.createElement('dt'); dt.textContent = k; const dd = document.createElement('dd'); dd.textContent = v; dl.append(dt, dd); };
    const a = info.analysis;
    add('path', info.path); add('kind', info.kind); add('size', `${info.size.toLocaleString()} bytes`); add('sha256', info.sha256);
    add('file type', a.file_type); add('entropy', `${a.entropy.toFixed(3)} bits/byte`);
    if (a.elf) add('ELF', Object.entries(a.elf).filter(([, v]) => typeof v !== 'object').map(([k, v]) => `${k}: ${v}`).join(', '));
    add('strings', `${a.strings.count} of 6+ characters; ${a.strings.sample.slice(0, 5).join(' · ')}`);
    if (a.strings.urls.length) add('URLs', a.strings.urls.slice(0, 5).join(' '));
    if (info.members !== null) add('members', info.members);
    const s = info.semantic;
    if (s) { add('summary', s.summary); add('tags', (s.tags || []).join(', ')); add('risk', s.risk); }
    else add('language model', 'no semantic metadata in this input (fold with --llm to add it)');
    body.replaceChildren(dl);
  } catch (e) { body.textContent = e.message; }
}

function bindPane(pane) {
  let drag = null;
  pane.el.addEventListener('pointerdown', (e) => { state.active = pane.index; drag = { x: e.clientX, y: e.clientY, moved: false }; pane.el.setPointerCapture(e.pointerId); });
  pane.el.addEventListener('pointermove', (e) => {
    const r = pane.el.getBoundingClientRect();
    if (drag) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (drag.moved || Math.abs(dx) + Math.abs(dy) > 3) {
        drag.moved = true;
        state.view.fx -= dx / state.view.size; state.view.fy -= dy / state.view.size;
        drag.x = e.clientX; drag.y = e.clientY;
        drawAll();
      }
    }
    showHover(pane, pane.offsetAt(e.clientX - r.left, e.clientY - r.top));
  });
  pane.el.addEventListener('pointerup', (e) => {
    const r = pane.el.getBoundingClientRect();
    if (drag && !drag.moved) {
      const offset = pane.offsetAt(e.clientX - r.left, e.clientY - r.top);
      if (offset !== null) select(pane, offset).catch(status);
    }
    drag = null;
  });
  pane.el.addEventListener('wheel', (e) => {
    e.preventDefault();
    const r = pane.el.getBoundingClientRect();
    zoomAt(pane, e.clientX - r.left, e.clientY - r.top, Math.pow(1.0015, -e.deltaY * (e.ctrlKey ? 4 : 1)));
  }, { passive: false });
}

function bindControls() {
  el('palette').addEventListener('change', (e) => { state.palette = e.target.value; showLegend(); drawAll(); });
  el('layout').addEventListener('change', async (e) => {
    const pane = state.panes[state.active];
    const frac = [state.view.fx, state.view.fy];
    state.layout = e.target.value;
    state.selection = null;
    await Promise.all([loadRegions(), loadDiff(), loadEntropy()]);
    state.view.fx = frac[0]; state.view.fy = frac[1];
    fit(pane);
  });
  el('outlines').addEventListener('change', (e) => { state.outlines = e.target.checked; drawAll(); });
  el('entropy-edges').addEventListener('change', async (e) => {
    state.entropyEdges = e.target.checked;
    await loadEntropy();
    drawAll();
  });
  el('input').addEventListener('change', (e) => { setInputs([Number(e.target.value)]); });
  el('goto').addEventListener('keydown', async (e) => {
    if (e.key !== 'Enter') return;
    const pane = state.panes[state.active];
    try {
      const answer = await getJSON(`/api/input/${pane.input.id}/locate`, { q: e.target.value, layout: state.layout });
      flyTo(pane, answer.squares);
      await select(pane, answer.report.start, answer.squares, answer.report.end);
      status(`${e.target.value}: ${hex(answer.report.start)}..${hex(answer.report.end)}`);
    } catch (err) { status(err); }
  });
  el('search').addEventListener('keydown', async (e) => {
    if (e.key !== 'Enter') return;
    const text = e.target.value;
    const params = text.startsWith('hex:') ? { hex: text.slice(4) } : { text };
    try {
      let total = 0;
      for (const pane of state.panes) {
        const found = await getJSON(`/api/input/${pane.input.id}/search`, { ...params, layout: state.layout });
        pane.hits = found.hits;
        total += found.count;
      }
      status(`${total} hits${total > 1000 ? ' (first 1000 marked)' : ''}`);
      drawAll();
    } catch (err) { status(err); }
  });
  document.addEventListener('keydown', (e) => {
    if (e.target.tagName === 'INPUT') return;
    const pane = state.panes[state.active];
    const step = 60 / state.view.size;
    switch (e.key) {
      case '+': case '=': zoomAt(pane, pane.width / 2, pane.height / 2, 1.5); break;
      case '-': zoomAt(pane, pane.width / 2, pane.height / 2, 1 / 1.5); break;
      case '0': fit(pane); break;
      case 'ArrowLeft': state.view.fx -= step; drawAll(); break;
      case 'ArrowRight': state.view.fx += step; drawAll(); break;
      case 'ArrowUp': state.view.fy -= step; drawAll(); break;
      case 'ArrowDown': state.view.fy += step; drawAll(); break;
      case 'n': stepTo(state.changeIndex + 1); break;
      case 'p': stepTo(state.changeIndex - 1); break;
      default: return;
    }
    e.preventDefault();
  });
  window.addEventListener('resize', drawAll);
}

async function setInputs(ids) {
  for (const p of state.panes) p.el.remove();
  state.panes = ids.map((id, i) => new Pane(i, state.inputs[id]));
  state.panes.forEach(bindPane);
  state.active = 0;
  await Promise.all([loadRegions(), loadEntropy()]);
  fit(state.panes[0]);
  showInfo(state.panes[0]);
}

function listen() {
  const events = new EventSource(apiUrl('/api/events'));
  events.addEventListener('change', async (e) => {
    const change = JSON.parse(e.data);
    const fresh = (await getJSON('/api/inputs')).inputs[change.input];
    for (const pane of state.panes) {
      if (pane.input.id !== change.input) continue;
      const resized = fresh.size !== pane.input.size;
      pane.changes.push({ version: change.version, ranges: change.changed });
      if (resized) { pane.input = fresh; pane.changes = []; }
    }
    state.inputs[change.input] = fresh;
    await Promise.all([loadRegions(), loadEntropy()]);
    status(`${fresh.label} changed: version ${change.version}, ${change.changed.length} ranges`);
    drawAll();
  });
}

async function main() {
  const list = await getJSON('/api/inputs');
  state.inputs = list.inputs;
  state.legend = list.legend;
  state.tileSide = list.tile_side;
  state.diff = list.diff ? {} : null;
  const select = el('input');
  select.replaceChildren(...list.inputs.map((i) => { const o = document.createElement('option'); o.value = i.id; o.textContent = `${i.label} (${i.kind})`; return o; }));
  select.hidden = list.diff || list.inputs.length < 2;
  bindControls();
  showLegend();
  await setInputs(list.diff ? [0, 1] : [0]);
  await loadDiff();
  drawAll();
  listen();
  state.ready = true;
}

// For tests and for the console: the state and the mapping both ways.
window.foundryView = {
  state,
  pointOf: (paneIndex, offset) => {
    const pane = state.panes[paneIndex];
    const [x, y] = pane.pointOf(offset);
    const r = pane.el.getBoundingClientRect();
    return [r.left + x, r.top + y];
  },
  offsetAt: (paneIndex, clientX, clientY) => {
    const pane = state.panes[paneIndex];
    const r = pane.el.getBoundingClientRect();
    return pane.offsetAt(clientX - r.left, clientY - r.top);
  },
  zoomAt: (paneIndex, factor) => { const p = state.panes[paneIndex]; zoomAt(p, p.width / 2, p.height / 2, factor); },
  centreOn: (paneIndex, offset) => {
    const p = state.panes[paneIndex];
    const [x, y] = d2xy(p.order, Math.floor(offset / p.bpp));
    state.view.fx = (x + 0.5) / p.side; state.view.fy = (y + 0.5) / p.side;
    drawAll();
  },
  tilesLoading: () => state.loading || 0,
};

main().catch(status);
