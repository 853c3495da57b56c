// fold_rts: linear bytes to a PixelRTS v2 texture chunk (four dense bytes per texel).
// Rust twin: src/kernels/fold_rts.rs. Bindings: 0 params, 1 source words
// (tail zero-padded by the host), 2 the tile table (see xy2d_coarse), 3 the chunk's
// texels, row-major.
// `valid` counts texels that hold source bytes; the rest are zero.

@group(0) @binding(0) var<uniform> params: CurveParams;
@group(0) @binding(1) var<storage, read> source: array<u32>;
@group(0) @binding(2) var<storage, read> tile_index: array<u32, 256>;
@group(0) @binding(3) var<storage, read_write> texels: array<u32>;

// One 16x16 workgroup is one tile of the curve: its first thread runs the levels above
// the tile once (see tile_of in curve.wgsl) and every thread finishes with a lookup.
var<workgroup> tile: vec2<u32>;

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let column = params.origin_x + gid.x;
    let row = params.origin_y + gid.y;
    if (params.order >= 4u && local.x == 0u && local.y == 0u) {
        tile = tile_of(params.order, column, row);
    }
    workgroupBarrier();
    if (gid.x >= params.block_side || gid.y >= params.block_side) { return; }
    var whole = 0u;
    if (params.order < 4u) {
        whole = xy2d(params.order, column, row);
    } else {
        let turned = turn_in_tile(tile.y, local.x, local.y);
        whole = tile.x + tile_index[(turned.y << 4u) | turned.x];
    }
    let d = whole - params.base;
    var pixel = 0u;
    if (d < params.valid) {
        pixel = source[d];
    }
    texels[gid.y * params.block_side + gid.x] = pixel;
}
