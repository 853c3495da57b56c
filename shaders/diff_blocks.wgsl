// diff_blocks: per block of block_bytes bytes, how many byte positions differ
// between A and B, and how many 4-byte words (.rts.png pixels) do (two words
// per block). Rust twin: src/kernels/diff_blocks.rs.
// Bindings: 0 params, 1 A words, 2 B words, 3 output counts. One workgroup per
// block; 64 threads stride its words and reduce through a workgroup atomic.
// Both inputs are zero-padded to whole words identically, so padding never counts.

struct DiffParams {
    block_bytes: u32,
    valid_bytes: u32,
    blocks: u32,
    groups_x: u32,
}

@group(0) @binding(0) var<uniform> params: DiffParams;
@group(0) @binding(1) var<storage, read> a: array<u32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read_write> counts: array<u32>;

var<workgroup> total: atomic<u32>;
var<workgroup> total_words: atomic<u32>;

fn differing_bytes(x: u32) -> u32 {
    return select(0u, 1u, (x & 0xFFu) != 0u)
        + select(0u, 1u, (x & 0xFF00u) != 0u)
        + select(0u, 1u, (x & 0xFF0000u) != 0u)
        + select(0u, 1u, (x & 0xFF000000u) != 0u);
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let block = wid.y * params.groups_x + wid.x;
    if (block >= params.blocks) { return; }
    if (lid == 0u) {
        atomicStore(&total, 0u);
        atomicStore(&total_words, 0u);
    }
    workgroupBarrier();
    let start = block * params.block_bytes;
    let end = min(start + params.block_bytes, params.valid_bytes);
    let first_word = start >> 2u;
    let end_word = (end + 3u) >> 2u;
    var mine = 0u;
    var mine_words = 0u;
    for (var w = first_word + lid; w < end_word; w = w + 64u) {
        let n = differing_bytes(a[w] ^ b[w]);
        mine = mine + n;
        mine_words = mine_words + select(0u, 1u, n != 0u);
    }
    atomicAdd(&total, mine);
    atomicAdd(&total_words, mine_words);
    workgroupBarrier();
    if (lid == 0u) {
        counts[block * 2u] = atomicLoad(&total);
        counts[block * 2u + 1u] = atomicLoad(&total_words);
    }
}
