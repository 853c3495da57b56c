// unfold_brick: a .brick texture chunk back to linear bytes (red channel).
// Rust twin: src/kernels/unfold_brick.rs. Bindings: 0 params, 1 the chunk's
// texels, 2 output words. One thread per output word gathers its four bytes,
// since WGSL has no byte stores and a shared word would need atomics.

@group(0) @binding(0) var<uniform> params: CurveParams;
@group(0) @binding(1) var<storage, read> texels: array<u32>;
@group(0) @binding(2) var<storage, read_write> words: array<u32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let word = gid.y * params.row_threads + gid.x;
    if (word * 4u >= params.valid) { return; }
    var packed = 0u;
    for (var k = 0u; k < 4u; k = k + 1u) {
        let d = word * 4u + k;
        if (d < params.valid) {
            let at = d2xy(params.order, params.base + d);
            let texel = texels[(at.y - params.origin_y) * params.block_side + (at.x - params.origin_x)];
            packed = packed | ((texel & 0xFFu) << (8u * k));
        }
    }
    words[word] = packed;
}
