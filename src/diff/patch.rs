//! The `a-to-b.patch` format. `FGP2` (written): a header with both sizes (varints), the first
//! 4 bytes of A's SHA-256 (to refuse the wrong A before writing anything) and the first 16 of
//! B's (to keep only the right B), the operations as varints until they make B's size (a copy's
//! offset relative to where the previous copy ended), then, to the end of the file, every data
//! operation's bytes together, compressed with zstd when that is smaller (large volumes with
//! all of A as zstd's reference prefix, as `zstd --patch-from` does). `FGPATCH1` (read,
//! for patches made before): fixed-width fields, data inline. Both are read with every bound
//! checked, and applied only to the A they were made from.

use super::align::PatchOp;
use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// First four bytes of a patch this version writes.
pub const MAGIC: &[u8; 4] = b"FGP2";
/// How much of each SHA-256 a version 2 patch records: A's only tells a wrong A early, before
/// anything is written (a wrong A that shared it would still give a B whose hash fails); B's
/// proves the result.
const A_CHECK_BYTES: usize = 4;
const B_CHECK_BYTES: usize = 16;
/// First eight bytes of a patch of the first version, still read.
pub const MAGIC_V1: &[u8; 8] = b"FGPATCH1";
const OP_COPY: u8 = 1;
const OP_DATA: u8 = 2;
/// Version 1: magic, two sizes, two hashes, the op count.
const HEADER_LEN: u64 = 8 + 8 + 8 + 32 + 32 + 8;
/// Bytes of A read at once when applying from a file.
const PIECE: usize = 1 << 20;
/// How the data section of a version 2 patch is stored.
const DATA_RAW: u8 = 0;
const DATA_ZSTD: u8 = 1;
/// zstd with all of A as its reference prefix: the literal bytes of a large change (two
/// releases of a library, where code moved everywhere) still share most of their strings
/// with A, at offsets no content-defined chunk lines up.
const DATA_ZSTD_A_PREFIX: u8 = 2;
/// zstd level for the data section: literal data is small next to what it rebuilds, so a slow,
/// strong level costs little; large literal volumes use a faster one.
const ZSTD_LEVEL_SMALL: i32 = 19;
const ZSTD_LEVEL_LARGE: i32 = 3;
const LARGE_LITERALS: usize = 8 << 20;
/// Level for large literal volumes compressed against A, with long-distance matching. On
/// libLLVM-14 to -15 (108 MB of literals): level 10 gives 25.8 MB in 3.4 s, 12 gives 25.5 MB
/// in 5.8 s, 15 gives 24.3 MB in 29 s; xdelta3 takes 13.8 s for 26.1 MB.
const ZSTD_LEVEL_A_PREFIX: i32 = 12;
/// zstd windows reach 2 GiB at most: A and the literals must fit in one.
const ZSTD_MAX_WINDOW_LOG: u32 = 31;

/// How `encode` may compress a large data section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiteralEffort {
    /// Against A as zstd's prefix (level 12): the smallest patch, several times the time.
    AgainstA,
    /// On their own (level 3): for a watch, where the next event matters more than bytes.
    Fast,
}

/// zstd's window log for a frame that reaches back over `prefix` bytes to the start.
fn window_log_over(prefix: usize, data: usize) -> Option<u32> {
    let reach = (prefix as u64).checked_add(data as u64)?;
    let log = (64 - reach.saturating_sub(1).leading_zeros()).max(10);
    (log <= ZSTD_MAX_WINDOW_LOG).then_some(log)
}

/// `literals` as one zstd frame whose matches may reach into `a`; None when A and the literals
/// do not fit one window or zstd fails.
fn compress_against(a: &[u8], literals: &[u8]) -> Option<Vec<u8>> {
    use zstd::stream::raw::{CParameter, Encoder, InBuffer, Operation, OutBuffer};
    let window_log = window_log_over(a.len(), literals.len())?;
    let mut encoder = Encoder::with_ref_prefix(ZSTD_LEVEL_A_PREFIX, a).ok()?;
    // Told the size, zstd sizes its buffers to the literals, not to the whole window.
    encoder
        .set_pledged_src_size(Some(literals.len() as u64))
        .ok()?;
    encoder
        .set_parameter(CParameter::WindowLog(window_log))
        .ok()?;
    encoder
        .set_parameter(CParameter::EnableLongDistanceMatching(true))
        .ok()?;
    let mut packed = vec![0u8; zstd::zstd_safe::compress_bound(literals.len()) + 1024];
    let mut input = InBuffer::around(literals);
    let mut output = OutBuffer::around(&mut packed[..]);
    while input.pos < literals.len() {
        encoder.run(&mut input, &mut output).ok()?;
    }
    while encoder.finish(&mut output, true).ok()? > 0 {}
    let written = output.pos();
    packed.truncate(written);
    Some(packed)
}

/// Inverse of [`compress_against`]: at most `expected` bytes are ever produced.
fn decompress_against(a: &[u8], packed: &[u8], expected: u64) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::{DCtx, DParameter};
    let error = |code| std::io::Error::other(zstd::zstd_safe::get_error_name(code));
    let mut context = DCtx::create();
    context
        .set_parameter(DParameter::WindowLogMax(ZSTD_MAX_WINDOW_LOG))
        .map_err(error)?;
    context.ref_prefix(a).map_err(error)?;
    // One-shot decoding into a buffer of the expected size: a frame claiming more fails
    // ("destination buffer too small") instead of growing it. A size the machine cannot
    // give is an error, not an abort.
    let mut out = Vec::new();
    out.try_reserve_exact(usize::try_from(expected).map_err(std::io::Error::other)?)
        .map_err(std::io::Error::other)?;
    context.decompress(&mut out, packed).map_err(error)?;
    Ok(out)
}

/// A patch read from disk or about to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patch {
    pub a_size: u64,
    pub b_size: u64,
    /// A's SHA-256, or as much of its start as the patch records.
    pub a_sha256: Vec<u8>,
    /// B's SHA-256, or as much of its start as the patch records.
    pub b_sha256: Vec<u8>,
    pub ops: Vec<PatchOp>,
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Zigzag: small negative and positive numbers both take few bytes.
fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Reads a version 2 patch front to back; every read past the end is an error naming the part.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                Error::malformed(self.path, format!("ends inside {what} at byte {}", self.at))
            })?;
        let piece = &self.bytes[self.at..end];
        self.at = end;
        Ok(piece)
    }

    /// An unsigned LEB128 number of at most 64 bits.
    fn varint(&mut self, what: &str) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1, what)?[0];
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Error::malformed(
            self.path,
            format!("{what}: a number past 2^64"),
        ))
    }
}

impl Patch {
    /// The patch as written ([`MAGIC`]): header, operations, data section. `a` is the A the
    /// operations copy from, which a large data section may be compressed against.
    pub fn encode(&self, a: &[u8], effort: LiteralEffort) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        put_varint(&mut out, self.a_size);
        put_varint(&mut out, self.b_size);
        out.extend_from_slice(&self.a_sha256[..A_CHECK_BYTES]);
        out.extend_from_slice(&self.b_sha256[..B_CHECK_BYTES]);
        let mut literals = Vec::new();
        let mut copy_end = 0u64;
        for op in &self.ops {
            match op {
                PatchOp::Copy { offset, len } => {
                    put_varint(&mut out, len << 1);
                    put_varint(&mut out, zigzag(*offset as i64 - copy_end as i64));
                    copy_end = offset + len;
                }
                PatchOp::Data(bytes) => {
                    put_varint(&mut out, ((bytes.len() as u64) << 1) | 1);
                    literals.extend_from_slice(bytes);
                }
            }
        }
        // The data section runs to the end of the file: its length is never written.
        let large = literals.len() > LARGE_LITERALS;
        if large && effort == LiteralEffort::AgainstA && a.len() as u64 == self.a_size {
            if let Some(packed) = compress_against(a, &literals) {
                if packed.len() < literals.len() {
                    out.push(DATA_ZSTD_A_PREFIX);
                    out.extend_from_slice(&packed);
                    return out;
                }
            }
        }
        let level = if large {
            ZSTD_LEVEL_LARGE
        } else {
            ZSTD_LEVEL_SMALL
        };
        match zstd::bulk::compress(&literals, level) {
            Ok(packed) if packed.len() < literals.len() => {
                out.push(DATA_ZSTD);
                out.extend_from_slice(&packed);
            }
            _ => {
                out.push(DATA_RAW);
                out.extend_from_slice(&literals);
            }
        }
        out
    }

    /// Parses `bytes` (from `path`, named in errors); every length and offset is checked against
    /// the file and the recorded sizes, so no patch can make `apply` read out of bounds. `a` is
    /// needed only by a data section compressed against A ([`refers_to_a`]).
    pub fn parse(path: &Path, bytes: &[u8], a: Option<&GivenA>) -> Result<Self> {
        if bytes.starts_with(MAGIC) {
            return Self::parse_v2(path, bytes, a);
        }
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
        if take(8, "the magic")? != MAGIC_V1 {
            return Err(bad(
                "not a foundry-gpu patch (magic is not FGPATCH2 or FGPATCH1)".into(),
            ));
        }
        let u64_at = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8 bytes"));
        let a_size = u64_at(take(8, "the header")?);
        let b_size = u64_at(take(8, "the header")?);
        let a_sha256 = take(32, "the header")?.to_vec();
        let b_sha256 = take(32, "the header")?.to_vec();
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

    /// Parses a version 2 patch, every claimed size checked against the file, A and B before
    /// anything that size is allocated; the data section grows only as it really decompresses.
    fn parse_v2(path: &Path, bytes: &[u8], a: Option<&GivenA>) -> Result<Self> {
        let bad = |what: String| Error::malformed(path, what);
        let V2Layout {
            a_size,
            b_size,
            a_sha256,
            b_sha256,
            pending,
            literal_total,
            codec,
            data_at,
            ..
        } = V2Layout::read_keeping_ops(path, bytes)?;
        let section = &bytes[data_at..];
        let data_lens = || {
            pending.iter().filter_map(|op| match op {
                Pending::Data(len) => Some(*len),
                Pending::Copy { .. } => None,
            })
        };
        // Each data operation's bytes are decoded into their own buffer, never into one
        // buffer of all of them first: the literals are held once (a 120 KB patch may
        // decompress to gigabytes, up to B's size).
        let mut pieces = match codec {
            DATA_RAW => read_pieces(path, section, data_lens(), literal_total)?,
            DATA_ZSTD => {
                let decoder = zstd::stream::read::Decoder::with_buffer(section)
                    .map_err(|e| bad(format!("its data section: {e}")))?;
                read_pieces(path, decoder, data_lens(), literal_total)?
            }
            DATA_ZSTD_A_PREFIX => {
                let a = a.ok_or_else(|| {
                    bad("its data section is compressed against A, and A was not given".into())
                })?;
                // Decoding against another A would give other literals: say which A is wrong.
                check_a_is(a_size, &a_sha256, a, path)?;
                let literals =
                    decompress_against(a.bytes, section, literal_total).map_err(|e| {
                        bad(format!(
                            "its data section does not decompress against this A: {e}"
                        ))
                    })?;
                if literals.len() as u64 != literal_total {
                    return Err(bad(format!(
                        "its data section holds {} bytes, the operations take {literal_total}",
                        literals.len()
                    )));
                }
                split_pieces(literals, data_lens())
            }
            other => return Err(bad(format!("its data section has unknown codec {other}"))),
        }
        .into_iter();
        let ops = pending
            .into_iter()
            .map(|op| match op {
                Pending::Copy { offset, len } => PatchOp::Copy { offset, len },
                Pending::Data(_) => PatchOp::Data(pieces.next().expect("one piece a data op")),
            })
            .collect();
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
        let given = GivenA {
            path: a_path,
            bytes: a,
            sha256: crate::analysis::sha256(a),
        };
        self.check_given_a(&given, patch_path)
    }

    /// [`Self::check_a`] for an A whose SHA-256 is already known.
    pub fn check_given_a(&self, a: &GivenA, patch_path: &Path) -> Result<()> {
        check_a_is(self.a_size, &self.a_sha256, a, patch_path)
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

    /// Checks, reading it piece by piece, that the file `a` (of `a_path`) is the A this patch
    /// was made from.
    pub fn check_a_file(&self, a_path: &Path, a: &std::fs::File, patch_path: &Path) -> Result<()> {
        use sha2::Digest;
        use std::os::unix::fs::FileExt;
        let size = a
            .metadata()
            .map_err(|e| Error::io(a_path, "read", e))?
            .len();
        let mut hasher = sha2::Sha256::new();
        let mut buffer = vec![0u8; PIECE.min(size as usize)];
        let mut at = 0u64;
        while at < size {
            let n = buffer.len().min((size - at) as usize);
            a.read_exact_at(&mut buffer[..n], at)
                .map_err(|e| Error::io(a_path, "read", e))?;
            hasher.update(&buffer[..n]);
            at += n as u64;
        }
        let a_sha: [u8; 32] = hasher.finalize().into();
        if size != self.a_size || !a_sha.starts_with(&self.a_sha256) {
            return Err(Error::malformed(
                a_path,
                format!(
                    "is not the A this patch was made from (patch {}: {} bytes, SHA-256 {}...; this A: {size} bytes, SHA-256 {})",
                    patch_path.display(),
                    self.a_size,
                    hex::encode(&self.a_sha256),
                    hex::encode(a_sha)
                ),
            ));
        }
        Ok(())
    }

    /// [`Self::write_b`] reading A's copies from the file `a` with `pread`, a piece at a time:
    /// memory stays at one piece and the patch, whatever A's size.
    pub fn write_b_from_file(
        &self,
        a: &std::fs::File,
        out: &mut dyn Write,
    ) -> std::io::Result<[u8; 32]> {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        let mut buffer = vec![0u8; PIECE];
        let mut written = 0u64;
        for op in &self.ops {
            let len = match op {
                PatchOp::Copy { len, .. } => *len,
                PatchOp::Data(d) => d.len() as u64,
            };
            written = written.saturating_add(len);
            if written > self.b_size {
                return Err(std::io::Error::other(format!(
                    "the operations produce more than B's {} bytes",
                    self.b_size
                )));
            }
            match op {
                PatchOp::Copy { offset, len } => {
                    copy_from_a(a, *offset, *len, &mut buffer, &mut hasher, out).map_err(|e| {
                        match e {
                            CopyError::ReadA { error, .. } | CopyError::Write(error) => error,
                        }
                    })?;
                }
                PatchOp::Data(d) => {
                    hasher.update(d);
                    out.write_all(d)?;
                }
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
        if !b_sha.starts_with(&self.b_sha256) {
            return Err(Error::HashMismatch {
                path: patch_path.to_path_buf(),
                expected: hex::encode(&self.b_sha256),
                actual: hex::encode(b_sha),
            });
        }
        Ok(())
    }
}

/// The A a patch is applied to, as read: where it came from (for errors), its bytes and their
/// SHA-256.
pub struct GivenA<'a> {
    pub path: &'a Path,
    pub bytes: &'a [u8],
    pub sha256: [u8; 32],
}

/// Fails unless `a` has the size and SHA-256 (or its recorded start) a patch records.
fn check_a_is(a_size: u64, a_sha256: &[u8], a: &GivenA, patch_path: &Path) -> Result<()> {
    if a.bytes.len() as u64 != a_size || !a.sha256.starts_with(a_sha256) {
        return Err(Error::malformed(
            a.path,
            format!(
                "is not the A this patch was made from (patch {}: {a_size} bytes, SHA-256 {}; this A: {} bytes, SHA-256 {})",
                patch_path.display(),
                hex::encode(a_sha256),
                a.bytes.len(),
                hex::encode(a.sha256)
            ),
        ));
    }
    Ok(())
}

/// The data operations' bytes, `lens` of them in turn, read from a data section (`reader`,
/// decompressing where it is compressed) that must hold exactly `total` bytes. A piece's
/// buffer is reserved fallibly and filled only as the section really yields bytes.
fn read_pieces(
    path: &Path,
    mut reader: impl std::io::Read,
    lens: impl Iterator<Item = u64>,
    total: u64,
) -> Result<Vec<Vec<u8>>> {
    use std::io::Read;
    let bad = |what: String| Error::malformed(path, what);
    let broken = |e: std::io::Error| bad(format!("its data section does not decompress: {e}"));
    let mut pieces = Vec::new();
    let mut held = 0u64;
    for len in lens {
        let mut piece = Vec::new();
        piece
            .try_reserve_exact(usize::try_from(len).unwrap_or(usize::MAX))
            .map_err(|e| bad(format!("a data operation of {len} bytes: {e}")))?;
        (&mut reader)
            .take(len)
            .read_to_end(&mut piece)
            .map_err(broken)?;
        held += piece.len() as u64;
        if (piece.len() as u64) < len {
            return Err(bad(format!(
                "its data section holds {held} bytes, the operations take {total}"
            )));
        }
        pieces.push(piece);
    }
    let mut beyond = Vec::new();
    reader.take(1).read_to_end(&mut beyond).map_err(broken)?;
    if !beyond.is_empty() {
        return Err(bad(format!(
            "its data section holds more than the {total} bytes the operations take"
        )));
    }
    Ok(pieces)
}

/// `literals` cut into the data operations' pieces (`lens`, which sum to its length). Cut from
/// the end, and the buffer shrunk every [`SHRINK_STEP`] bytes (the allocator returns the tail
/// of a large buffer without copying), so the literals are held about once, not twice.
fn split_pieces(mut literals: Vec<u8>, lens: impl DoubleEndedIterator<Item = u64>) -> Vec<Vec<u8>> {
    const SHRINK_STEP: usize = 8 << 20;
    let mut pieces: Vec<Vec<u8>> = lens
        .rev()
        .map(|len| {
            let at = literals.len() - len as usize;
            let piece = literals[at..].to_vec();
            literals.truncate(at);
            if literals.capacity() - literals.len() >= SHRINK_STEP {
                literals.shrink_to_fit();
            }
            piece
        })
        .collect();
    pieces.reverse();
    pieces
}

/// What failed while copying a range of A into B.
enum CopyError {
    /// Reading A, for the piece ending at byte `end`.
    ReadA {
        error: std::io::Error,
        end: u64,
    },
    Write(std::io::Error),
}

/// Copies `len` bytes of the file `a` from `offset` into `out`, a piece of `buffer` at a time
/// (read with `pread`), each piece hashed into `hasher` as it goes: a copy operation applied
/// without A in memory.
fn copy_from_a(
    a: &std::fs::File,
    offset: u64,
    len: u64,
    buffer: &mut [u8],
    hasher: &mut sha2::Sha256,
    out: &mut dyn Write,
) -> std::result::Result<(), CopyError> {
    use sha2::Digest;
    use std::os::unix::fs::FileExt;
    let (mut at, end) = (offset, offset + len);
    while at < end {
        let n = buffer.len().min((end - at) as usize);
        a.read_exact_at(&mut buffer[..n], at)
            .map_err(|error| CopyError::ReadA {
                error,
                end: at + n as u64,
            })?;
        hasher.update(&buffer[..n]);
        out.write_all(&buffer[..n]).map_err(CopyError::Write)?;
        at += n as u64;
    }
    Ok(())
}

/// An operation before the data section is read: data operations hold only their lengths.
enum Pending {
    Copy { offset: u64, len: u64 },
    Data(u64),
}

/// A version 2 patch up to its data section: everything but the literal bytes, checked.
struct V2Layout {
    a_size: u64,
    b_size: u64,
    a_sha256: Vec<u8>,
    b_sha256: Vec<u8>,
    /// The operations, when asked for ([`V2Layout::read_keeping_ops`]).
    pending: Vec<Pending>,
    /// Where the operations start.
    ops_at: usize,
    literal_total: u64,
    codec: u8,
    /// Where the data section starts; it runs to the end of the file.
    data_at: usize,
}

/// The operations of a version 2 patch, read one at a time and each checked: against A's size
/// (copies), B's size (what they produce) and the file (every varint). Read once to check
/// the patch and again, from the same bytes, to apply it: nothing holds them all.
struct OpReader<'a> {
    cursor: Cursor<'a>,
    a_size: u64,
    b_size: u64,
    produced: u64,
    copy_end: u64,
    count: u64,
}

impl OpReader<'_> {
    /// The next operation, or `None` once they make B's size. Each produces at least one byte
    /// and takes at least one byte of the file, so the count cannot run away.
    fn next_op(&mut self) -> Result<Option<Pending>> {
        let path = self.cursor.path;
        let bad = |what: String| Error::malformed(path, what);
        if self.produced >= self.b_size {
            return Ok(None);
        }
        let head = self.cursor.varint("an operation")?;
        let len = head >> 1;
        if len == 0 {
            return Err(bad(format!("operation {} is empty", self.count)));
        }
        self.count += 1;
        self.produced = self.produced.saturating_add(len);
        if self.produced > self.b_size {
            return Err(bad(format!(
                "operations produce more than B's {} bytes",
                self.b_size
            )));
        }
        if head & 1 == 1 {
            return Ok(Some(Pending::Data(len)));
        }
        let delta = unzigzag(self.cursor.varint("a copy")?);
        let offset = i128::from(self.copy_end) + i128::from(delta);
        let end = offset + i128::from(len);
        if offset < 0 || end > i128::from(self.a_size) {
            return Err(bad(format!(
                "operation {} copies {len} bytes at {offset}, past the end of A ({} bytes)",
                self.count, self.a_size
            )));
        }
        self.copy_end = end as u64;
        Ok(Some(Pending::Copy {
            offset: offset as u64,
            len,
        }))
    }
}

impl V2Layout {
    /// The layout, its operations checked but not kept.
    fn read(path: &Path, bytes: &[u8]) -> Result<Self> {
        Self::read_ops(path, bytes, false)
    }

    /// The layout with its operations.
    fn read_keeping_ops(path: &Path, bytes: &[u8]) -> Result<Self> {
        Self::read_ops(path, bytes, true)
    }

    fn read_ops(path: &Path, bytes: &[u8], keep_ops: bool) -> Result<Self> {
        let bad = |what: String| Error::malformed(path, what);
        let mut reader = Cursor {
            bytes,
            at: MAGIC.len(),
            path,
        };
        let a_size = reader.varint("the header")?;
        let b_size = reader.varint("the header")?;
        let limit = crate::source::max_input();
        if b_size > limit {
            return Err(bad(format!(
                "claims B has {b_size} bytes, more than --max-input allows ({limit} bytes)"
            )));
        }
        let a_sha256 = reader.take(A_CHECK_BYTES, "the header")?.to_vec();
        let b_sha256 = reader.take(B_CHECK_BYTES, "the header")?.to_vec();
        let ops_at = reader.at;
        let mut ops = OpReader {
            cursor: reader,
            a_size,
            b_size,
            produced: 0,
            copy_end: 0,
            count: 0,
        };
        let (mut pending, mut literal_total) = (Vec::new(), 0u64);
        while let Some(op) = ops.next_op()? {
            if let Pending::Data(len) = op {
                literal_total += len;
            }
            if keep_ops {
                pending.push(op);
            }
        }
        let mut reader = ops.cursor;
        let codec = reader.take(1, "the data section")?[0];
        Ok(V2Layout {
            a_size,
            b_size,
            a_sha256,
            b_sha256,
            pending,
            ops_at,
            literal_total,
            codec,
            data_at: reader.at,
        })
    }

    /// The operations again, from `bytes` (the same patch), one at a time.
    fn ops<'a>(&self, path: &'a Path, bytes: &'a [u8]) -> OpReader<'a> {
        OpReader {
            cursor: Cursor {
                bytes,
                at: self.ops_at,
                path,
            },
            a_size: self.a_size,
            b_size: self.b_size,
            produced: 0,
            copy_end: 0,
            count: 0,
        }
    }
}

/// Whether the patch in `bytes` needs all of A in memory to be read: its data section is
/// compressed against A. Malformed patches answer false, and [`Patch::parse`] says why.
pub fn refers_to_a(path: &Path, bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
        && V2Layout::read(path, bytes).is_ok_and(|layout| layout.codec == DATA_ZSTD_A_PREFIX)
}

/// A version 2 patch whose data section is stored plain or compressed alone, applied as it is
/// read: each data operation's bytes are decompressed straight into B, so memory stays at
/// one piece, zstd's window and the patch file, whatever the literals add up to.
pub struct StreamingPatch<'a> {
    /// Sizes and SHA-256 prefixes, no operations: what [`Patch::check_a_file`] and
    /// [`Patch::check_b`] read.
    pub header: Patch,
    path: &'a Path,
    /// The whole patch: its operations are read again from it as B is written.
    bytes: &'a [u8],
    layout: V2Layout,
}

impl<'a> StreamingPatch<'a> {
    /// The patch in `bytes` (from `path`), checked up to its data section; `None` when it
    /// must be read whole instead ([`Patch::parse`]): a version 1 patch, a data section
    /// compressed against A, or an unknown codec (which `parse` names).
    pub fn read(path: &'a Path, bytes: &'a [u8]) -> Result<Option<Self>> {
        if !bytes.starts_with(MAGIC) {
            return Ok(None);
        }
        let layout = V2Layout::read(path, bytes)?;
        if !matches!(layout.codec, DATA_RAW | DATA_ZSTD) {
            return Ok(None);
        }
        Ok(Some(StreamingPatch {
            header: Patch {
                a_size: layout.a_size,
                b_size: layout.b_size,
                a_sha256: layout.a_sha256.clone(),
                b_sha256: layout.b_sha256.clone(),
                ops: Vec::new(),
            },
            path,
            bytes,
            layout,
        }))
    }

    /// Writes B to `out` (named `out_path` in errors), copies read from the file `a` (of
    /// `a_path`) with `pread` and data decompressed as it is needed; returns B's SHA-256 for
    /// the caller to check before keeping the output. A data section shorter or longer than
    /// the operations take, or one that does not decompress, is the patch's error.
    pub fn write_b_from_file(
        &self,
        a_path: &Path,
        a: &std::fs::File,
        out_path: &Path,
        out: &mut dyn Write,
    ) -> Result<[u8; 32]> {
        use sha2::Digest;
        use std::io::Read;
        let bad = |what: String| Error::malformed(self.path, what);
        let broken = |e: std::io::Error| bad(format!("its data section does not decompress: {e}"));
        let section = &self.bytes[self.layout.data_at..];
        let literal_total = self.layout.literal_total;
        let mut data: Box<dyn Read> = match self.layout.codec {
            DATA_ZSTD => Box::new(
                zstd::stream::read::Decoder::with_buffer(section)
                    .map_err(|e| bad(format!("its data section: {e}")))?,
            ),
            _ => Box::new(section),
        };
        let mut hasher = sha2::Sha256::new();
        let mut buffer = vec![0u8; PIECE];
        let mut held = 0u64;
        let mut ops = self.layout.ops(self.path, self.bytes);
        while let Some(op) = ops.next_op()? {
            match op {
                Pending::Copy { offset, len } => {
                    copy_from_a(a, offset, len, &mut buffer, &mut hasher, out).map_err(
                        |e| match e {
                            CopyError::ReadA { error, end }
                                if error.kind() == std::io::ErrorKind::UnexpectedEof =>
                            {
                                Error::malformed(
                                    a_path,
                                    format!("changed while the patch was applied: it ended before byte {end}"),
                                )
                            }
                            CopyError::ReadA { error, .. } => Error::io(a_path, "read", error),
                            CopyError::Write(error) => Error::io(out_path, "write", error),
                        },
                    )?;
                }
                Pending::Data(len) => {
                    let mut left = len;
                    while left > 0 {
                        let want = PIECE.min(left as usize);
                        let got = (&mut data)
                            .take(want as u64)
                            .read(&mut buffer[..want])
                            .map_err(broken)?;
                        if got == 0 {
                            return Err(bad(format!(
                                "its data section holds {held} bytes, the operations take {literal_total}"
                            )));
                        }
                        held += got as u64;
                        hasher.update(&buffer[..got]);
                        out.write_all(&buffer[..got])
                            .map_err(|e| Error::io(out_path, "write", e))?;
                        left -= got as u64;
                    }
                }
            }
        }
        let mut beyond = Vec::new();
        data.take(1).read_to_end(&mut beyond).map_err(broken)?;
        if !beyond.is_empty() {
            return Err(bad(format!(
                "its data section holds more than the {literal_total} bytes the operations take"
            )));
        }
        Ok(hasher.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patch of `ops` from `a` to `b`, with both whole hashes.
    fn patch_of(a: &[u8], b: &[u8], ops: Vec<PatchOp>) -> Patch {
        Patch {
            a_size: a.len() as u64,
            b_size: b.len() as u64,
            a_sha256: crate::analysis::sha256(a).to_vec(),
            b_sha256: crate::analysis::sha256(b).to_vec(),
            ops,
        }
    }

    #[test]
    fn streaming_applies_what_parse_applies_and_refuses_what_it_refuses() {
        let p = Path::new("p.patch");
        let a: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut b = a[..8_000].to_vec();
        b.extend(std::iter::repeat_n(b'x', 5_000));
        b.extend_from_slice(&a[9_000..]);
        b.extend_from_slice(b"tail");
        let patch = patch_of(
            &a,
            &b,
            vec![
                PatchOp::Copy {
                    offset: 0,
                    len: 8_000,
                },
                PatchOp::Data(vec![b'x'; 5_000]),
                PatchOp::Copy {
                    offset: 9_000,
                    len: 11_000,
                },
                PatchOp::Data(b"tail".to_vec()),
            ],
        );
        let bytes = patch.encode(&a, LiteralEffort::AgainstA);
        assert_eq!(V2Layout::read(p, &bytes).unwrap().codec, DATA_ZSTD);
        let dir = tempfile::tempdir().unwrap();
        let a_path = dir.path().join("a");
        std::fs::write(&a_path, &a).unwrap();
        let a_file = std::fs::File::open(&a_path).unwrap();
        let streamed = |bytes: &[u8]| -> Result<Vec<u8>> {
            let streaming = StreamingPatch::read(p, bytes)?
                .ok_or_else(|| Error::malformed(p, "not a streamable patch"))?;
            let mut out = Vec::new();
            let sha = streaming.write_b_from_file(&a_path, &a_file, Path::new("b"), &mut out)?;
            streaming.header.check_b(p, sha)?;
            Ok(out)
        };
        assert_eq!(streamed(&bytes).unwrap(), b);
        // Every cut is refused by both readers: by the layout check, or once the data section
        // runs short or its frame breaks.
        for cut in 0..bytes.len() {
            let short = &bytes[..cut];
            assert!(Patch::parse(p, short, None).is_err(), "cut at {cut}");
            assert!(streamed(short).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn round_trip_and_every_truncation_fails_cleanly() {
        let a = b"hello, world".to_vec();
        let b = b"hello there, world!".to_vec();
        let patch = patch_of(
            &a,
            &b,
            vec![
                PatchOp::Copy { offset: 0, len: 5 },
                PatchOp::Data(b" there".to_vec()),
                PatchOp::Copy { offset: 5, len: 7 },
                PatchOp::Data(b"!".to_vec()),
            ],
        );
        let bytes = patch.encode(&a, LiteralEffort::AgainstA);
        let p = Path::new("x.patch");
        let back = Patch::parse(p, &bytes, None).unwrap();
        assert_eq!((back.a_size, back.b_size), (patch.a_size, patch.b_size));
        assert_eq!(back.ops, patch.ops);
        assert_eq!(back.a_sha256, patch.a_sha256[..A_CHECK_BYTES]);
        assert_eq!(back.b_sha256, patch.b_sha256[..B_CHECK_BYTES]);
        assert_eq!(back.apply(Path::new("a"), &a, p).unwrap(), b);
        assert!(back.apply(Path::new("a"), b"other", p).is_err());
        for cut in 0..bytes.len() {
            assert!(
                Patch::parse(p, &bytes[..cut], None).is_err(),
                "cut at {cut}"
            );
        }
        let mut evil = patch.clone();
        evil.ops[2] = PatchOp::Copy { offset: 9, len: 7 }; // past A's 12 bytes
        let evil = evil.encode(&a, LiteralEffort::AgainstA);
        assert!(Patch::parse(p, &evil, None)
            .unwrap_err()
            .to_string()
            .contains("past the end"));
        // A data section that decompresses to far more than the operations take is cut off
        // after one byte too many, never inflated whole.
        let mut bytes = MAGIC.to_vec();
        put_varint(&mut bytes, a.len() as u64);
        put_varint(&mut bytes, b.len() as u64);
        bytes.extend_from_slice(&patch.a_sha256[..A_CHECK_BYTES]);
        bytes.extend_from_slice(&patch.b_sha256[..B_CHECK_BYTES]);
        put_varint(&mut bytes, ((b.len() as u64) << 1) | 1);
        let header = bytes.clone();
        let packed = zstd::bulk::compress(&vec![0u8; 50 << 20], 19).unwrap();
        bytes.push(DATA_ZSTD);
        bytes.extend_from_slice(&packed);
        let err = Patch::parse(p, &bytes, None).unwrap_err().to_string();
        assert!(
            err.contains("data section holds more than the 19 bytes"),
            "{err}"
        );
        // A data section shorter than the operations take.
        let mut short = header;
        short.push(DATA_RAW);
        short.extend_from_slice(b"abc");
        let err = Patch::parse(p, &short, None).unwrap_err().to_string();
        assert!(err.contains("data section holds 3 bytes"), "{err}");
        // A version 1 patch (fixed-width fields, data inline) still reads and applies.
        let mut v1 = MAGIC_V1.to_vec();
        v1.extend_from_slice(&(a.len() as u64).to_le_bytes());
        v1.extend_from_slice(&(b.len() as u64).to_le_bytes());
        v1.extend_from_slice(&patch.a_sha256);
        v1.extend_from_slice(&patch.b_sha256);
        v1.extend_from_slice(&4u64.to_le_bytes());
        for op in &patch.ops {
            match op {
                PatchOp::Copy { offset, len } => {
                    v1.push(OP_COPY);
                    v1.extend_from_slice(&offset.to_le_bytes());
                    v1.extend_from_slice(&len.to_le_bytes());
                }
                PatchOp::Data(d) => {
                    v1.push(OP_DATA);
                    v1.extend_from_slice(&(d.len() as u64).to_le_bytes());
                    v1.extend_from_slice(d);
                }
            }
        }
        assert_eq!(Patch::parse(p, &v1, None).unwrap(), patch);
        let mut evil_v1 = v1.clone();
        evil_v1[8 + 8 + 8 + 64 + 8 + 1] = 200; // first copy's offset far past A
        assert!(Patch::parse(p, &evil_v1, None)
            .unwrap_err()
            .to_string()
            .contains("past the end"));
    }

    use crate::diff::align::tests::noise;

    #[test]
    fn a_large_data_section_is_compressed_against_a_and_needs_that_a() {
        // B is A's 1 KiB blocks in reverse order: no content-defined chunk of A lines up, so
        // the alignment would hand all of B over as literals; each one is somewhere in A.
        let a = noise(9 << 20, 7);
        let b: Vec<u8> = a.rchunks(1024).flatten().copied().collect();
        let patch = patch_of(&a, &b, vec![PatchOp::Data(b.clone())]);
        let p = Path::new("big.patch");
        let against_a = patch.encode(&a, LiteralEffort::AgainstA);
        let fast = patch.encode(&a, LiteralEffort::Fast);
        assert!(refers_to_a(p, &against_a) && !refers_to_a(p, &fast));
        // Alone, noise does not compress; against A, each 1 KiB block is one match.
        assert!(fast.len() > b.len(), "{} bytes", fast.len());
        assert!(against_a.len() < b.len() / 50, "{} bytes", against_a.len());
        fn given(bytes: &[u8]) -> GivenA<'_> {
            GivenA {
                path: Path::new("a"),
                bytes,
                sha256: crate::analysis::sha256(bytes),
            }
        }
        let back = Patch::parse(p, &against_a, Some(&given(&a))).unwrap();
        assert_eq!(back.apply(Path::new("a"), &a, p).unwrap(), b);
        assert_eq!(
            Patch::parse(p, &fast, None).unwrap().ops,
            back.ops,
            "both data sections hold the same literals"
        );
        let err = Patch::parse(p, &against_a, None).unwrap_err().to_string();
        assert!(err.contains("compressed against A"), "{err}");
        // Another A, even of the right size, is named before anything decodes against it.
        let other = noise(a.len(), 8);
        for wrong in [&a[1..], &other[..]] {
            let err = Patch::parse(p, &against_a, Some(&given(wrong)))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("is not the A this patch was made from"),
                "{err}"
            );
        }
        for cut in [against_a.len() - 1, against_a.len() / 2] {
            assert!(Patch::parse(p, &against_a[..cut], Some(&given(&a))).is_err());
        }
        // A frame claiming more literals than the operations take is refused, not inflated.
        let mut short = patch.clone();
        short.b_size -= 1024;
        short.ops = vec![PatchOp::Data(b[..b.len() - 1024].to_vec())];
        let short_bytes = short.encode(&a, LiteralEffort::AgainstA);
        let short_data = V2Layout::read(p, &short_bytes).unwrap().data_at;
        let whole_data = V2Layout::read(p, &against_a).unwrap().data_at;
        let mut lying = short_bytes[..short_data].to_vec();
        lying.extend_from_slice(&against_a[whole_data..]);
        let err = Patch::parse(p, &lying, Some(&given(&a)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not decompress"), "{err}");
    }
}
