// fold_brick: linear bytes to a .brick texture chunk (R = G = B = byte, A = 255).
// Rust twin: src/kernels/fold_brick.rs. Bindings: 0 params, 1 source bytes as
// little-endian u32 words, 2 the tile table (see fold_cell in curve.wgsl), 3 the chunk's texels,
// row-major, block_side wide.
// One thread per texel gathers its byte, so no two threads write one word.

@group(0) @binding(0) var<uniform> params: CurveParams;
@group(0) @binding(1) var<storage, read> source: array<u32>;
@group(0) @binding(2) var<storage, read> tile_index: array<u32, 256>;
@group(0) @binding(3) var<storage, read_write> texels: array<u32>;

// One 16x16 workgroup is one tile of the curve (see fold_cell in curve.wgsl).
@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let cell = fold_cell(params.order, params.origin_x + gid.x, params.origin_y + gid.y, local.xy);
    if (gid.x >= params.block_side || gid.y >= params.block_side) { return; }
    var whole = cell.x;
    if (params.order >= 4u) {
        whole = cell.x + tile_index[(cell.z << 4u) | cell.y];
    }
    let d = whole - params.base;
    var pixel = 0xFF000000u;
    if (d < params.valid) {
        let byte = (source[d >> 2u] >> ((d & 3u) * 8u)) & 0xFFu;
        pixel = pixel | byte | (byte << 8u) | (byte << 16u);
    }
    texels[gid.y * params.block_side + gid.x] = pixel;
}
