//! The `a-to-b.patch` format: a header with both sizes and SHA-256s, then copy and data
//! operations; read with every bound checked, applied only to the A it was made from.

use super::align::PatchOp;
use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// First eight bytes of a patch.
pub const MAGIC: &[u8; 8] = b"FGPATCH1";
const OP_COPY: u8 = 1;
const OP_DATA: u8 = 2;
/// Magic, two sizes, two hashes, the op count.
const HEADER_LEN: u64 = 8 + 8 + 8 + 32 + 32 + 8;

/// A patch read from disk or about to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patch {
    pub a_size: u64,
    pub b_size: u64,
    pub a_sha256: [u8; 32],
    pub b_sha256: [u8; 32],
    pub ops: Vec<PatchOp>,
}

impl Patch {
    /// Bytes [`write_to`](Self::write_to) writes.
    pub fn encoded_len(&self) -> u64 {
        HEADER_LEN
            + self
                .ops
                .iter()
                .map(|op| match op {
                    PatchOp::Copy { .. } => 1 + 8 + 8,
                    PatchOp::Data(d) => 1 + 8 + d.len() as u64,
                })
                .sum::<u64>()
    }

    /// Serialises: magic, a_size, b_size (u64 LE), both hashes, op count, then per op a tag and
    /// either offset+length or length+bytes.
    pub fn write_to(&self, w: &mut dyn Write) -> std::io::Result<()> {
        w.write_all(MAGIC)?;
        w.write_all(&self.a_size.to_le_bytes())?;
        w.write_all(&self.b_size.to_le_bytes())?;
        w.write_all(&self.a_sha256)?;
        w.write_all(&self.b_sha256)?;
        w.write_all(&(self.ops.len() as u64).to_le_bytes())?;
        for op in &self.ops {
            match op {
                PatchOp::Copy { offset, len } => {
                    w.write_all(&[OP_COPY])?;
                    w.write_all(&offset.to_le_bytes())?;
                    w.write_all(&len.to_le_bytes())?;
                }
                PatchOp::Data(bytes) => {
                    w.write_all(&[OP_DATA])?;
                    w.write_all(&(bytes.len() as u64).to_le_bytes())?;
                    w.write_all(bytes)?;
                }
            }
        }
        Ok(())
    }

    /// Parses `bytes` (from `path`, named in errors); every length and offset is checked against
    /// the file and the recorded sizes, so no patch can make `apply` read out of bounds.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let bad = |what: String| Error::malformed(path, what);
        let mut at = 0usize;
        let mut take = |n: usize, what: &str| -> Result<&[u8]> {
            let end = at
                .checked_add(n)
                .filter(|&e| e <= bytes.len())
                .ok_or_else(|| bad(format!("ends inside {what} at byte {at}")))?;
            let s = &bytes[at..end];
            at = end;
            Ok(s)
        };
        if take(8, "the magic")? != MAGIC {
            return Err(bad("not a foundry-gpu patch (magic is not FGPATCH1)".into()));
        }
        let u64_at = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8 bytes"));
        let a_size = u64_at(take(8, "the header")?);
        let b_size = u64_at(take(8, "the header")?);
        let a_sha256: [u8; 32] = take(32, "the header")?.try_into().expect("32 bytes");
        let b_sha256: [u8; 32] = take(32, "the header")?.try_into().expect("32 bytes");
        let count = u64_at(take(8, "the header")?);
        // B is written whole: refuse a claimed size past --max-input before any operation.
        let limit = crate::source::max_input();
        if b_size > limit {
            return Err(bad(format!(
                "claims B has {b_size} bytes, more than --max-input allows ({limit} bytes)"
            )));
        }
        // Every operation takes at least 9 bytes of the file.
        let after_header = (bytes.len() as u64).saturating_sub(HEADER_LEN);
        if count > after_header / 9 {
            return Err(bad(format!(
                "claims {count} operations, but only {after_header} bytes follow the header"
            )));
        }
        let mut ops = Vec::new();
        let mut produced = 0u64;
        for n in 0..count {
            let tag = take(1, "an operation")?[0];
            match tag {
                OP_COPY => {
                    let offset = u64_at(take(8, "a copy")?);
                    let len = u64_at(take(8, "a copy")?);
                    if offset.checked_add(len).is_none_or(|end| end > a_size) {
                        return Err(bad(format!(
                            "operation {n} copies {len} bytes at {offset}, past the end of A ({a_size} bytes)"
                        )));
                    }
                    produced = produced.saturating_add(len);
                    ops.push(PatchOp::Copy { offset, len });
                }
                OP_DATA => {
                    let len = u64_at(take(8, "a data operation")?);
                    let len = usize::try_from(len)
                        .map_err(|_| bad(format!("operation {n} is too long")))?;
                    produced = produced.saturating_add(len as u64);
                    ops.push(PatchOp::Data(take(len, "a data operation")?.to_vec()));
                }
                other => return Err(bad(format!("operation {n} has unknown tag {other}"))),
            }
            if produced > b_size {
                return Err(bad(format!(
                    "operations produce more than B's {b_size} bytes"
                )));
            }
        }
        if at != bytes.len() {
            return Err(bad(format!(
                "{} bytes after the last operation",
                bytes.len() - at
            )));
        }
        if produced != b_size {
            return Err(bad(format!(
                "operations produce {produced} bytes, B has {b_size}"
            )));
        }
        Ok(Patch {
            a_size,
            b_size,
            a_sha256,
            b_sha256,
            ops,
        })
    }

    /// Checks that `a` is the A this patch was made from.
    pub fn check_a(&self, a_path: &Path, a: &[u8], patch_path: &Path) -> Result<()> {
        let a_sha = crate::analysis::sha256(a);
        if a.len() as u64 != self.a_size || a_sha != self.a_sha256 {
            return Err(Error::malformed(
                a_path,
                format!(
                    "is not the A this patch was made from (patch {}: {} bytes, SHA-256 {}; this A: {} bytes, SHA-256 {})",
                    patch_path.display(),
                    self.a_size,
                    hex::encode(self.a_sha256),
                    a.len(),
                    hex::encode(a_sha)
                ),
            ));
        }
        Ok(())
    }

    /// Streams B into `out` operation by operation (never more than the `b_size` that
    /// [`Self::parse`] checked), returning the SHA-256 of what was written; B is never held
    /// in memory. The caller compares it with `b_sha256` before keeping the output.
    pub fn write_b(&self, a: &[u8], out: &mut dyn Write) -> std::io::Result<[u8; 32]> {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        let mut written = 0u64;
        for op in &self.ops {
            let piece = match op {
                PatchOp::Copy { offset, len } => {
                    let start = usize::try_from(*offset).unwrap_or(usize::MAX);
                    let end = start.saturating_add(usize::try_from(*len).unwrap_or(usize::MAX));
                    a.get(start..end).ok_or_else(|| {
                        std::io::Error::other(format!(
                            "a copy of {len} bytes at {offset} runs past the end of A"
                        ))
                    })?
                }
                PatchOp::Data(d) => d.as_slice(),
            };
            written = written.saturating_add(piece.len() as u64);
            if written > self.b_size {
                return Err(std::io::Error::other(format!(
                    "the operations produce more than B's {} bytes",
                    self.b_size
                )));
            }
            for chunk in piece.chunks(1 << 20) {
                hasher.update(chunk);
                out.write_all(chunk)?;
            }
        }
        Ok(hasher.finalize().into())
    }

    /// Rebuilds B in memory, checking that `a` is the A this patch was made from and the
    /// result is B.
    pub fn apply(&self, a_path: &Path, a: &[u8], patch_path: &Path) -> Result<Vec<u8>> {
        self.check_a(a_path, a, patch_path)?;
        let mut b = Vec::new();
        let b_sha = self
            .write_b(a, &mut b)
            .map_err(|e| Error::malformed(patch_path, e.to_string()))?;
        self.check_b(patch_path, b_sha)?;
        Ok(b)
    }

    /// Fails unless `b_sha` is the SHA-256 of B the patch records.
    pub fn check_b(&self, patch_path: &Path, b_sha: [u8; 32]) -> Result<()> {
        if b_sha != self.b_sha256 {
            return Err(Error::HashMismatch {
                path: patch_path.to_path_buf(),
                expected: hex::encode(self.b_sha256),
                actual: hex::encode(b_sha),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_truncation_fails_cleanly() {
        let a = b"hello, world".to_vec();
        let b = b"hello there, world!".to_vec();
        let patch = Patch {
            a_size: a.len() as u64,
            b_size: b.len() as u64,
            a_sha256: crate::analysis::sha256(&a),
            b_sha256: crate::analysis::sha256(&b),
            ops: vec![
                PatchOp::Copy { offset: 0, len: 5 },
                PatchOp::Data(b" there".to_vec()),
                PatchOp::Copy { offset: 5, len: 7 },
                PatchOp::Data(b"!".to_vec()),
            ],
        };
        let mut bytes = Vec::new();
        patch.write_to(&mut bytes).unwrap();
        assert_eq!(patch.encoded_len(), bytes.len() as u64);
        let p = Path::new("x.patch");
        let back = Patch::parse(p, &bytes).unwrap();
        assert_eq!(back, patch);
        assert_eq!(back.apply(Path::new("a"), &a, p).unwrap(), b);
        assert!(back.apply(Path::new("a"), b"other", p).is_err());
        for cut in 0..bytes.len() {
            assert!(Patch::parse(p, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut evil = bytes.clone();
        evil[8 + 8 + 8 + 64 + 8 + 1] = 200; // first copy's offset far past A
        assert!(Patch::parse(p, &evil)
            .unwrap_err()
            .to_string()
            .contains("past the end"));
    }
}
