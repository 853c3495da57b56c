//! CPU twin of `shaders/diff_blocks.wgsl`: per block, how many byte positions and how many
//! 4-byte words (`.rts.png` pixels) differ between two equally long byte strings.

use rayon::prelude::*;

/// Per `block_bytes` block of `a` and `b` (same length; `block_bytes` a multiple of 4), two
/// words: differing bytes, then differing 4-byte words. Equal eight-byte groups are skipped
/// with one XOR.
pub fn diff_blocks(a: &[u8], b: &[u8], block_bytes: usize) -> Vec<u32> {
    assert_eq!(a.len(), b.len(), "diff_blocks compares equal lengths");
    assert!(block_bytes >= 4 && block_bytes.is_multiple_of(4));
    a.par_chunks(block_bytes)
        .zip(b.par_chunks(block_bytes))
        .flat_map_iter(|(x, y)| count_block(x, y))
        .collect()
}

fn count_block(x: &[u8], y: &[u8]) -> [u32; 2] {
    let (mut bytes, mut words) = (0u32, 0u32);
    let (xw, xt) = x.as_chunks::<8>();
    let (yw, yt) = y.as_chunks::<8>();
    // Branch-free, so the loop vectorises: shifted data makes nearly every group differ, and a
    // per-byte branch there cost most of a 1 GiB diff's comparison.
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    for (p, q) in xw.iter().zip(yw) {
        let d = u64::from_ne_bytes(*p) ^ u64::from_ne_bytes(*q);
        // A byte's top bit ends up set exactly when the byte is not zero.
        let nonzero = (((d & LOW7) + LOW7) | d) & !LOW7;
        bytes += nonzero.count_ones();
        // The two 4-byte words, whichever half of the number each is on this machine.
        words += u32::from(d as u32 != 0) + u32::from((d >> 32) as u32 != 0);
    }
    // The tail is under eight bytes: compare it in words, the last one short.
    for (p, q) in xt.chunks(4).zip(yt.chunks(4)) {
        let n = p.iter().zip(q).filter(|(u, v)| u != v).count() as u32;
        bytes += n;
        words += u32::from(n > 0);
    }
    [bytes, words]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_differing_byte_in_its_block() {
        // 10,005 bytes: the last block ends in a 5-byte tail past the last 8-byte group.
        let a = vec![7u8; 10_005];
        let mut b = a.clone();
        b[0] = 0;
        b[4095] = 1;
        b[4096] = 2;
        b[9_999] = 3;
        b[9_998] = 4;
        b[10_001] = 5; // in the tail's first word
        b[10_004] = 6; // alone in the tail's short last word
        assert_eq!(diff_blocks(&a, &b, 4096), [2, 2, 1, 1, 4, 3]);
        assert_eq!(diff_blocks(&a, &a, 4096), [0; 6]);
    }

    #[test]
    fn every_difference_pattern_of_a_group_is_counted_as_bytes_and_words() {
        // Each of the 256 patterns of which bytes of an 8-byte group differ, each differing
        // byte differing by a value that stresses the bit trick (0x80, 0x01, 0x7f, 0xff).
        for (k, delta) in [0x80u8, 0x01, 0x7f, 0xff].into_iter().enumerate() {
            let a: Vec<u8> = (0..256 * 8).map(|i| (i * 37 + k) as u8).collect();
            let mut b = a.clone();
            let (mut bytes, mut words) = (0u32, 0u32);
            for pattern in 0..256usize {
                for bit in 0..8 {
                    if pattern >> bit & 1 == 1 {
                        b[pattern * 8 + bit] ^= delta;
                    }
                }
                bytes += pattern.count_ones();
                words += u32::from(pattern & 0x0f != 0) + u32::from(pattern & 0xf0 != 0);
            }
            assert_eq!(
                diff_blocks(&a, &b, a.len()),
                [bytes, words],
                "delta {delta:#x}"
            );
        }
    }
}
