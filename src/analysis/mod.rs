//! Local, deterministic facts about a byte string: SHA-256, Shannon entropy, UTF-8 text, ELF magic.

pub mod hardening;
pub mod local;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

/// Facts every fold records in its headers and metadata.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ByteFacts {
    /// Byte count.
    pub size: u64,
    /// Raw SHA-256.
    #[serde(serialize_with = "hex_digest")]
    pub sha256: [u8; 32],
    /// Shannon entropy in bits/byte (0..=8).
    pub entropy: f64,
    /// Valid UTF-8 with no control bytes a text file would not have.
    pub utf8_text: bool,
    /// Starts with the ELF magic.
    pub elf: bool,
}

fn hex_digest<S: serde::Serializer>(digest: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(digest))
}

impl ByteFacts {
    /// Lowercase hex SHA-256.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Byte histogram, counted in parallel for large inputs.
pub fn histogram(data: &[u8]) -> [u64; 256] {
    const CHUNK: usize = 1 << 20;
    let count = |chunk: &[u8]| {
        let mut h = [0u64; 256];
        for &b in chunk {
            h[b as usize] += 1;
        }
        h
    };
    if data.len() <= CHUNK {
        return count(data);
    }
    data.par_chunks(CHUNK).map(count).reduce(
        || [0u64; 256],
        |mut a, b| {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
            a
        },
    )
}

/// Shannon entropy in bits/byte of a histogram.
pub fn entropy_of(histogram: &[u64; 256]) -> f64 {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let total = total as f64;
    let entropy: f64 = histogram
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total;
            -p * p.log2()
        })
        .sum();
    entropy.clamp(0.0, 8.0)
}

/// Shannon entropy in bits/byte of `data`.
pub fn shannon_entropy(data: &[u8]) -> f64 {
    entropy_of(&histogram(data))
}

/// True for non-empty valid UTF-8 whose only control characters are tab,
/// newline, carriage return, form feed and escape (terminal colour codes).
pub fn is_utf8_text(data: &[u8]) -> bool {
    !data.is_empty()
        && std::str::from_utf8(data).is_ok()
        && !data
            .iter()
            .any(|&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0C | 0x1B) || b == 0x7F)
}

/// True when `data` starts with the ELF magic.
pub fn is_elf(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

/// Hashes, measures and classifies `data` (hash and histogram run in parallel).
pub fn byte_facts(data: &[u8]) -> ByteFacts {
    let (sha256, (entropy, utf8_text)) = rayon::join(
        || sha256(data),
        || rayon::join(|| shannon_entropy(data), || is_utf8_text(data)),
    );
    ByteFacts {
        size: data.len() as u64,
        sha256,
        entropy,
        utf8_text,
        elf: is_elf(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_bounds() {
        assert_eq!(shannon_entropy(b""), 0.0);
        assert_eq!(shannon_entropy(&[9; 100]), 0.0);
        let all: Vec<u8> = (0..=255).collect();
        assert!((shannon_entropy(&all) - 8.0).abs() < 1e-12);
    }

    #[test]
    fn text_detection() {
        assert!(is_utf8_text("caf\u{e9}\n\tok\r\n".as_bytes()));
        assert!(!is_utf8_text(b""));
        assert!(!is_utf8_text(b"a\0b"));
        assert!(!is_utf8_text(&[0xC3, 0x28]));
        assert!(is_elf(b"\x7fELF\x02\x01"));
        assert!(!is_elf(b"\x7fEL"));
    }
}
