// unfold_rts: a PixelRTS v2 texture chunk back to linear bytes (whole texels).
// Rust twin: src/kernels/unfold_rts.rs. Bindings: 0 params, 1 the chunk's
// texels, 2 output words (the host truncates to the byte length).

@group(0) @binding(0) var<uniform> params: CurveParams;
@group(0) @binding(1) var<storage, read> texels: array<u32>;
@group(0) @binding(2) var<storage, read_write> words: array<u32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let d = gid.y * params.row_threads + gid.x;
    if (d >= params.valid) { return; }
    let at = d2xy(params.order, params.base + d);
    words[d] = texels[(at.y - params.origin_y) * params.block_side + (at.x - params.origin_x)];
}
