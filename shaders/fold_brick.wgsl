// fold_brick: linear bytes to a .brick texture chunk (R = G = B = byte, A = 255).
// Rust twin: src/kernels/fold_brick.rs. Bindings: 0 params, 1 source bytes as
// little-endian u32 words, 2 the tile table of xy2d_tiled, 3 the chunk's texels,
// row-major, block_side wide.
// One thread per texel gathers its byte, so no two threads write one word.

@group(0) @binding(0) var<uniform> params: CurveParams;
@group(0) @binding(1) var<storage, read> source: array<u32>;
@group(0) @binding(2) var<storage, read> tile_index: array<u32, 256>;
@group(0) @binding(3) var<storage, read_write> texels: array<u32>;

@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= params.block_side || gid.y >= params.block_side) { return; }
    let column = params.origin_x + gid.x;
    let row = params.origin_y + gid.y;
    var whole = 0u;
    if (params.order < 4u) {
        whole = xy2d(params.order, column, row);
    } else {
        let coarse = xy2d_coarse(params.order, column, row);
        whole = coarse.x + tile_index[(coarse.z << 4u) | coarse.y];
    }
    let d = whole - params.base;
    var pixel = 0xFF000000u;
    if (d < params.valid) {
        let byte = (source[d >> 2u] >> ((d & 3u) * 8u)) & 0xFFu;
        pixel = pixel | byte | (byte << 8u) | (byte << 16u);
    }
    texels[gid.y * params.block_side + gid.x] = pixel;
}
