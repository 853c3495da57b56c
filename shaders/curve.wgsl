// curve.wgsl: the Hilbert curve for every kernel (no entry point; prepended to each kernel).
// Rust twin: src/curve.rs (`d2xy`, `xy2d`), the single source of truth; formats.md §1.

// Curve index to (column, row) on a square of side 2^order.
fn d2xy(order: u32, index: u32) -> vec2<u32> {
    let n = 1u << order;
    var x = 0u;
    var y = 0u;
    var t = index;
    var s = 1u;
    loop {
        if (s >= n) { break; }
        let rx = 1u & (t >> 1u);
        let ry = 1u & (t ^ rx);
        if (ry == 0u) {
            if (rx == 1u) {
                x = s - 1u - x;
                y = s - 1u - y;
            }
            let swapped = x;
            x = y;
            y = swapped;
        }
        x = x + s * rx;
        y = y + s * ry;
        t = t >> 2u;
        s = s << 1u;
    }
    return vec2<u32>(x, y);
}

// The loop of `xy2d` over its levels from the top down to side `last` (a power of two):
// the index those levels give, and the local x and y they leave. With `last` 1 that is the
// whole curve index.
fn xy2d_levels(order: u32, column: u32, row: u32, last: u32) -> vec3<u32> {
    var x = column;
    var y = row;
    var d = 0u;
    var s = (1u << order) >> 1u;
    loop {
        if (s < last) { break; }
        let rx = select(0u, 1u, (x & s) != 0u);
        let ry = select(0u, 1u, (y & s) != 0u);
        d = d + s * s * ((3u * rx) ^ ry);
        x = x & (s - 1u);
        y = y & (s - 1u);
        if (ry == 0u) {
            if (rx == 1u) {
                x = s - 1u - x;
                y = s - 1u - y;
            }
            let swapped = x;
            x = y;
            y = swapped;
        }
        s = s >> 1u;
    }
    return vec3<u32>(d, x, y);
}

// (column, row) to the curve index on a square of side 2^order.
fn xy2d(order: u32, column: u32, row: u32) -> u32 {
    return xy2d_levels(order, column, row, 1u).x;
}

// The levels above a 16x16 tile only. `d + xy2d(4, x, y)` is `xy2d`, so a fold finishes it
// with a table of the 256 local indices (one lookup instead of four levels, and these
// levels take the same branch for every thread of a tile).
fn xy2d_coarse(order: u32, column: u32, row: u32) -> vec3<u32> {
    return xy2d_levels(order, column, row, 16u);
}

// For the 16x16 tile whose top-left pixel is (column, row): the curve index of its
// first cell, and how the levels above it turn its local coordinates. Those levels only
// ever swap x and y or complement both (which commute), so two probes tell which:
// bit 1 complement, bit 0 swap.
fn tile_of(order: u32, column: u32, row: u32) -> vec2<u32> {
    let origin = xy2d_coarse(order, column, row);
    let probe = xy2d_coarse(order, column + 1u, row);
    let complement = select(0u, 2u, origin.y == 15u);
    let swap = select(0u, 1u, probe.y == origin.y);
    return vec2<u32>(origin.x, complement | swap);
}

// Tile-local (x, y) as the levels above the tile leave them (`turn` from tile_of).
fn turn_in_tile(turn: u32, x: u32, y: u32) -> vec2<u32> {
    var tx = x;
    var ty = y;
    if ((turn & 2u) != 0u) {
        tx = 15u - tx;
        ty = 15u - ty;
    }
    if ((turn & 1u) != 0u) {
        let swapped = tx;
        tx = ty;
        ty = swapped;
    }
    return vec2<u32>(tx, ty);
}

// The tile of a fold's workgroup: its first cell's index and turn (see tile_of).
var<workgroup> fold_tile: vec2<u32>;

// For a fold thread's pixel at (column, row), `local` in its 16x16 workgroup (one tile of
// the curve): the tile's first index and the turned local x and y, so that the index is
// `.x + tile_index[(.z << 4) | .y]`. The workgroup's first thread runs the levels above
// the tile once. Orders under 4 have no tile: `.x` is then the whole index. Holds a
// barrier: every thread of the workgroup must call it.
fn fold_cell(order: u32, column: u32, row: u32, local: vec2<u32>) -> vec3<u32> {
    if (order >= 4u && local.x == 0u && local.y == 0u) {
        fold_tile = tile_of(order, column, row);
    }
    workgroupBarrier();
    if (order < 4u) {
        return vec3<u32>(xy2d(order, column, row), 0u, 0u);
    }
    let turned = turn_in_tile(fold_tile.y, local.x, local.y);
    return vec3<u32>(fold_tile.x, turned.x, turned.y);
}

// The parameter block of every fold/unfold kernel. Rust twin: kernels::CurveParams.
struct CurveParams {
    order: u32,
    origin_x: u32,
    origin_y: u32,
    block_side: u32,
    base: u32,
    valid: u32,
    row_threads: u32,
    pad: u32,
}
