//! Inputs the benches share: executable-like bytes from a seed, so two benches that measure
//! the same shape of data measure the same bytes.

/// `len` bytes like an executable's: a fifth of the 4 KiB pages zero, the rest 7-bit
/// xorshift noise from `seed` (made odd).
pub fn executable_like(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if (i / 4096) % 5 == 0 {
                0
            } else {
                state as u8 & 0x7f
            }
        })
        .collect()
}
