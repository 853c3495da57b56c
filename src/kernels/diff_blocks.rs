//! CPU twin of `shaders/diff_blocks.wgsl`: per block, how many byte positions and how many
//! 4-byte words (`.rts.png` pixels) differ between two equally long byte strings.

use rayon::prelude::*;

/// Per `block_bytes` block of `a` and `b` (same length; `block_bytes` a multiple of 4), two
/// words: differing bytes, then differing 4-byte words.
pub fn diff_blocks(a: &[u8], b: &[u8], block_bytes: usize) -> Vec<u32> {
    assert_eq!(a.len(), b.len(), "diff_blocks compares equal lengths");
    assert!(block_bytes >= 4 && block_bytes.is_multiple_of(4));
    a.par_chunks(block_bytes)
        .zip(b.par_chunks(block_bytes))
        .flat_map_iter(|(x, y)| count_block(x, y))
        .collect()
}

/// [`count_differences`], or [`count_block_avx2`] where the CPU has AVX2.
fn count_block(x: &[u8], y: &[u8]) -> [u32; 2] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("popcnt")
    {
        // SAFETY: the CPU has AVX2 and POPCNT, checked just above.
        return unsafe { count_block_avx2(x, y) };
    }
    count_differences(x, y)
}

/// [`count_differences`] a 32-byte group at a time: one byte compare and one 4-byte-word
/// compare of the same two loads, each turned into a bit mask and counted. Twice as fast on
/// 1 GiB as the byte lanes compiled for AVX2, which widen their counters through shuffles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
fn count_block_avx2(x: &[u8], y: &[u8]) -> [u32; 2] {
    use std::arch::x86_64::{
        _mm256_castsi256_ps, _mm256_cmpeq_epi32, _mm256_cmpeq_epi8, _mm256_loadu_si256,
        _mm256_movemask_epi8, _mm256_movemask_ps,
    };
    let (xg, xt) = x.as_chunks::<32>();
    let (yg, yt) = y.as_chunks::<32>();
    let (mut same_bytes, mut same_words) = (0u32, 0u32);
    for (p, q) in xg.iter().zip(yg) {
        // SAFETY: each pointer is to a whole 32-byte array; the loads need no alignment.
        let (u, v) = unsafe {
            (
                _mm256_loadu_si256(p.as_ptr().cast()),
                _mm256_loadu_si256(q.as_ptr().cast()),
            )
        };
        same_bytes += (_mm256_movemask_epi8(_mm256_cmpeq_epi8(u, v)) as u32).count_ones();
        let words_equal = _mm256_castsi256_ps(_mm256_cmpeq_epi32(u, v));
        same_words += (_mm256_movemask_ps(words_equal) as u32).count_ones();
    }
    let groups = xg.len().min(yg.len()) as u32;
    let [tail_bytes, tail_words] = count_differences(xt, yt);
    [
        groups * 32 - same_bytes + tail_bytes,
        groups * 8 - same_words + tail_words,
    ]
}

#[inline(always)]
fn count_differences(x: &[u8], y: &[u8]) -> [u32; 2] {
    const LANES: usize = 32;
    let (mut bytes, mut words) = (0u32, 0u32);
    let (xg, xt) = x.as_chunks::<LANES>();
    let (yg, yt) = y.as_chunks::<LANES>();
    // Branch-free comparisons counted in byte-wide lanes of a 32-byte group, widened every 255
    // groups, so the loop vectorises on baseline x86-64: shifted data makes nearly every group
    // differ, a per-byte branch there cost most of a 1 GiB diff's comparison, and a population
    // count of XORed words is a long bit-twiddle without the POPCNT instruction.
    for (xs, ys) in xg.chunks(255).zip(yg.chunks(255)) {
        let mut byte_lanes = [0u8; LANES];
        let mut word_lanes = [0u8; LANES / 4];
        for (p, q) in xs.iter().zip(ys) {
            for i in 0..LANES {
                byte_lanes[i] += u8::from(p[i] != q[i]);
            }
            let (pw, qw) = (p.as_chunks::<4>().0, q.as_chunks::<4>().0);
            for w in 0..LANES / 4 {
                word_lanes[w] += u8::from(u32::from_ne_bytes(pw[w]) != u32::from_ne_bytes(qw[w]));
            }
        }
        bytes += byte_lanes.iter().map(|&n| u32::from(n)).sum::<u32>();
        words += word_lanes.iter().map(|&n| u32::from(n)).sum::<u32>();
    }
    // The tail is under 32 bytes: compare it in words, the last one short.
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
    fn blocks_longer_than_the_lanes_hold_count_every_difference() {
        // 64 KiB blocks where every byte differs: 2,048 groups of 32, past the 255 a byte-wide
        // lane counts before it is widened; then every third byte, and a 5-byte tail.
        let a: Vec<u8> = (0..(3 << 16) + 5).map(|i| i as u8).collect();
        let all: Vec<u8> = a.iter().map(|x| !x).collect();
        let every_third: Vec<u8> = a
            .iter()
            .enumerate()
            .map(|(i, &x)| if i % 3 == 0 { x ^ 1 } else { x })
            .collect();
        let block = 1 << 16;
        assert_eq!(
            diff_blocks(&a, &all, block),
            [65536, 16384, 65536, 16384, 65536, 16384, 5, 2]
        );
        let counts = diff_blocks(&a, &every_third, block);
        let expected = |range: std::ops::Range<usize>| {
            let bytes = range.clone().filter(|i| i % 3 == 0).count() as u32;
            let end = range.end;
            let words = range
                .step_by(4)
                .filter(|w| (*w..(w + 4).min(end)).any(|i| i % 3 == 0))
                .count();
            [bytes, words as u32]
        };
        for (k, pair) in counts.chunks(2).enumerate() {
            let range = k * block..((k + 1) * block).min(a.len());
            assert_eq!(pair, expected(range));
        }
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
