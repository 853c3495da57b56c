// preview_stats: per run of run_len consecutive bytes, byte-class counts,
// fixed-point Shannon entropy and per-channel sums (10 words per run).
// Rust twin: src/kernels/preview_stats.rs. Bindings: 0 params, 1 source words,
// 2 the shared c*log2(c) table, 3 output words. One workgroup per run; all
// arithmetic is integer so both backends give the same words.

struct StatsParams {
    run_len: u32,
    valid_bytes: u32,
    runs: u32,
    groups_x: u32,
    shift: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> params: StatsParams;
@group(0) @binding(1) var<storage, read> source: array<u32>;
@group(0) @binding(2) var<storage, read> nlogn: array<u32>;
@group(0) @binding(3) var<storage, read_write> stats: array<u32>;

var<workgroup> histogram: array<atomic<u32>, 256>;
var<workgroup> totals: array<atomic<u32>, 10>;

fn byte_class(v: u32) -> u32 {
    if (v == 0u) { return 0u; }
    if (v == 9u || v == 10u || v == 13u || (v >= 32u && v <= 126u)) { return 2u; }
    if (v < 32u) { return 1u; }
    if (v == 255u) { return 4u; }
    return 3u;
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let run = wid.y * params.groups_x + wid.x;
    if (run >= params.runs) { return; }
    for (var v = lid; v < 256u; v = v + 64u) {
        atomicStore(&histogram[v], 0u);
    }
    if (lid < 10u) { atomicStore(&totals[lid], 0u); }
    workgroupBarrier();

    let start = min(run * params.run_len, params.valid_bytes);
    let end = min(start + params.run_len, params.valid_bytes);
    var channels = array<u32, 4>(0u, 0u, 0u, 0u);
    for (var i = start + lid; i < end; i = i + 64u) {
        let byte = (source[i >> 2u] >> ((i & 3u) * 8u)) & 0xFFu;
        atomicAdd(&histogram[byte], 1u);
        channels[i & 3u] = channels[i & 3u] + byte;
    }
    for (var c = 0u; c < 4u; c = c + 1u) {
        atomicAdd(&totals[6u + c], channels[c]);
    }
    workgroupBarrier();

    var classes = array<u32, 5>(0u, 0u, 0u, 0u, 0u);
    var sum_nlogn = 0u;
    for (var v = lid; v < 256u; v = v + 64u) {
        let count = atomicLoad(&histogram[v]);
        let kind = byte_class(v);
        classes[kind] = classes[kind] + count;
        sum_nlogn = sum_nlogn + nlogn[count];
    }
    for (var k = 0u; k < 5u; k = k + 1u) {
        atomicAdd(&totals[k], classes[k]);
    }
    atomicAdd(&totals[5], sum_nlogn);
    workgroupBarrier();

    if (lid == 0u) {
        let total = end - start;
        let cap = 8u << params.shift;
        var entropy = 0u;
        if (total > 0u) {
            let all = nlogn[total];
            let summed = atomicLoad(&totals[5]);
            entropy = min(select(0u, (all - summed) / total, all > summed), cap);
        }
        let out = run * 10u;
        for (var k = 0u; k < 10u; k = k + 1u) {
            stats[out + k] = atomicLoad(&totals[k]);
        }
        stats[out + 5u] = entropy;
    }
}
