// fold_rts: linear bytes to a PixelRTS v2 texture chunk (four dense bytes per texel).
// Rust twin: src/kernels/fold_rts.rs. Bindings: 0 params, 1 source words
// (tail zero-padded by the host), 2 the chunk's texels, row-major.
// `valid` counts texels that hold source bytes; the rest are zero.

@group(0) @binding(0) var<uniform> params: CurveParams;
@group(0) @binding(1) var<storage, read> source: array<u32>;
@group(0) @binding(2) var<storage, read_write> texels: array<u32>;

@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= params.block_side || gid.y >= params.block_side) { return; }
    let d = xy2d(params.order, params.origin_x + gid.x, params.origin_y + gid.y) - params.base;
    var pixel = 0u;
    if (d < params.valid) {
        pixel = source[d];
    }
    texels[gid.y * params.block_side + gid.x] = pixel;
}
