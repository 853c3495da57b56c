//! VCDIFF (RFC 3284), the delta format of xdelta3 and open-vcdiff: written from a diff's
//! operations (`diff --vcdiff`), and applied by `patch` (deltas made by `xdelta3 -e`, with its
//! Adler-32 window checksums and its default LZMA secondary compression, included).
//!
//! Every length a delta claims is checked against what is left of the file, against A and
//! against `--max-input` before it is used; a window's target grows only as its instructions
//! really produce bytes.

use super::align::PatchOp;
use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// The first four bytes: `V`, `C`, `D` with their high bits set, and version 0.
pub const MAGIC: [u8; 4] = [0xd6, 0xc3, 0xc4, 0x00];

const VCD_DECOMPRESS: u8 = 0x01;
const VCD_CODETABLE: u8 = 0x02;
/// xdelta3's extension: an application header (file names) follows.
const VCD_APPHEADER: u8 = 0x04;
const VCD_SOURCE: u8 = 0x01;
const VCD_TARGET: u8 = 0x02;
/// xdelta3's (and open-vcdiff's) extension: an Adler-32 of the window's target follows.
const VCD_ADLER32: u8 = 0x04;
/// xdelta3's secondary compressor ids.
const SECONDARY_LZMA: u8 = 2;
/// Target bytes per window this encoder writes (xdelta3 itself uses 8 MiB).
const WINDOW: u64 = 4 << 20;
/// The largest window this reader takes: xdelta3 writes at most 16 MiB, and a window is built
/// in memory before it is checked and written.
const MAX_WINDOW: u64 = 64 << 20;

/// Whether `bytes` begin as a VCDIFF delta.
pub fn is_vcdiff(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Noop,
    Add,
    Run,
    Copy,
}

/// One half of a code table entry: what, how long (0: the size follows), which address mode.
#[derive(Clone, Copy, Debug)]
struct Half {
    kind: Kind,
    size: u8,
    mode: u8,
}

const NOOP: Half = Half {
    kind: Kind::Noop,
    size: 0,
    mode: 0,
};

/// The default code table of RFC 3284 section 5.6, in its order.
fn default_code_table() -> Vec<(Half, Half)> {
    let half = |kind, size, mode| Half { kind, size, mode };
    let mut table = vec![(half(Kind::Run, 0, 0), NOOP)];
    for size in 0..=17 {
        table.push((half(Kind::Add, size, 0), NOOP));
    }
    for mode in 0..9 {
        table.push((half(Kind::Copy, 0, mode), NOOP));
        for size in 4..=18 {
            table.push((half(Kind::Copy, size, mode), NOOP));
        }
    }
    for mode in 0..6 {
        for add in 1..=4 {
            for copy in 4..=6 {
                table.push((half(Kind::Add, add, 0), half(Kind::Copy, copy, mode)));
            }
        }
    }
    for mode in 6..9 {
        for add in 1..=4 {
            table.push((half(Kind::Add, add, 0), half(Kind::Copy, 4, mode)));
        }
    }
    for mode in 0..9 {
        table.push((half(Kind::Copy, 4, mode), half(Kind::Add, 1, 0)));
    }
    debug_assert_eq!(table.len(), 256);
    table
}

/// VCDIFF's integers: base 128, most significant group first, the high bit on all but the last.
fn put_int(out: &mut Vec<u8>, value: u64) {
    let mut groups = [0u8; 10];
    let mut n = 0;
    let mut v = value;
    loop {
        groups[n] = (v & 0x7f) as u8;
        n += 1;
        v >>= 7;
        if v == 0 {
            break;
        }
    }
    for i in (0..n).rev() {
        out.push(groups[i] | if i > 0 { 0x80 } else { 0 });
    }
}

/// Writes B (`b`, which `ops` rebuild from A) as VCDIFF: windows of up to [`WINDOW`] target
/// bytes, each with the stretch of A its copies read as its source segment and an Adler-32 of
/// its target; no secondary compression, the default code table.
pub fn encode(b: &[u8], ops: &[PatchOp]) -> Vec<u8> {
    let b_size = b.len() as u64;
    let mut out = MAGIC.to_vec();
    out.push(0); // no secondary compressor, no code table, no application header
    let mut pieces = ops.iter().map(|op| match op {
        PatchOp::Copy { offset, len } => (Some(*offset), *len, &[][..]),
        PatchOp::Data(data) => (None, data.len() as u64, data.as_slice()),
    });
    let mut carried: Option<(Option<u64>, u64, &[u8])> = None;
    let mut written = 0u64;
    while written < b_size {
        let window_len = WINDOW.min(b_size - written);
        // This window's pieces: operations cut at its end.
        let mut window: Vec<(Option<u64>, u64, &[u8])> = Vec::new();
        let mut filled = 0u64;
        while filled < window_len {
            let Some((copy, len, data)) = carried.take().or_else(|| pieces.next()) else {
                break;
            };
            let take = len.min(window_len - filled);
            window.push((copy, take, &data[..data.len().min(take as usize)]));
            if take < len {
                let rest_data = if data.is_empty() {
                    data
                } else {
                    &data[take as usize..]
                };
                carried = Some((copy.map(|o| o + take), len - take, rest_data));
            }
            filled += take;
        }
        let (seg_start, seg_end) = window
            .iter()
            .filter_map(|&(copy, len, _)| copy.map(|o| (o, o + len)))
            .fold((u64::MAX, 0), |(s, e), (o, end)| (s.min(o), e.max(end)));
        let has_source = seg_start < seg_end;
        let (mut data, mut inst, mut addr) = (Vec::new(), Vec::new(), Vec::new());
        for &(copy, len, bytes) in &window {
            if len == 0 {
                continue;
            }
            match copy {
                None => {
                    if len <= 17 {
                        inst.push(1 + len as u8);
                    } else {
                        inst.push(1);
                        put_int(&mut inst, len);
                    }
                    data.extend_from_slice(bytes);
                }
                Some(offset) => {
                    // Mode 0 (VCD_SELF): the address as a number, from the segment's start.
                    if (4..=18).contains(&len) {
                        inst.push(20 + (len - 4) as u8);
                    } else {
                        inst.push(19);
                        put_int(&mut inst, len);
                    }
                    put_int(&mut addr, offset - seg_start);
                }
            }
        }
        let source_bit = if has_source { VCD_SOURCE } else { 0 };
        out.push(source_bit | VCD_ADLER32);
        if has_source {
            put_int(&mut out, seg_end - seg_start);
            put_int(&mut out, seg_start);
        }
        let mut delta = Vec::new();
        put_int(&mut delta, filled);
        delta.push(0); // no section compressed
        put_int(&mut delta, data.len() as u64);
        put_int(&mut delta, inst.len() as u64);
        put_int(&mut delta, addr.len() as u64);
        let window_bytes = &b[written as usize..(written + filled) as usize];
        delta.extend_from_slice(&zlib_rs::adler32::adler32(1, window_bytes).to_be_bytes());
        delta.extend_from_slice(&data);
        delta.extend_from_slice(&inst);
        delta.extend_from_slice(&addr);
        put_int(&mut out, delta.len() as u64);
        out.extend_from_slice(&delta);
        written += filled;
        if filled < window_len {
            break; // the operations ended early: the caller's sizes disagree
        }
    }
    out
}

/// What applying a VCDIFF did.
#[derive(Clone, Debug)]
pub struct Applied {
    pub b_size: u64,
    pub sha256: [u8; 32],
    pub windows: u64,
    /// Windows whose Adler-32 the delta recorded and the result matched.
    pub checksums_verified: u64,
}

/// Reads a VCDIFF front to back; every read past the end is an error naming the part.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn bad(&self, what: String) -> Error {
        Error::malformed(self.path, format!("VCDIFF: {what}"))
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.at.checked_add(n))
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| self.bad(format!("ends inside {what} at byte {}", self.at)))?;
        let piece = &self.bytes[self.at..end];
        self.at = end;
        Ok(piece)
    }

    fn byte(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn int(&mut self, what: &str) -> Result<u64> {
        let mut value = 0u64;
        for _ in 0..10 {
            let byte = self.byte(what)?;
            if value >> 57 != 0 {
                break;
            }
            value = (value << 7) | u64::from(byte & 0x7f);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.bad(format!("{what}: a number past 2^64")))
    }
}

/// The address caches of RFC 3284 section 5.1 (4 near slots, 3 x 256 same slots).
struct Caches {
    near: [u64; 4],
    next: usize,
    same: Vec<u64>,
}

impl Caches {
    fn new() -> Self {
        Caches {
            near: [0; 4],
            next: 0,
            same: vec![0; 3 * 256],
        }
    }

    fn update(&mut self, addr: u64) {
        self.near[self.next] = addr;
        self.next = (self.next + 1) % 4;
        self.same[(addr % (3 * 256)) as usize] = addr;
    }
}

/// xdelta3's LZMA secondary compression: one LZMA2 stream per kind of section (data,
/// instructions, addresses) runs on across all windows, each section flushed, so each kind keeps
/// its decoder (and its dictionary) from window to window. Only the first section of a kind
/// begins with the xz stream and block headers, which name the dictionary; the stream is never
/// finished (no end marker, index or footer).
#[derive(Default)]
struct Secondary {
    decoders: [Option<liblzma::stream::Stream>; 3],
}

impl Secondary {
    /// Section `kind` (0 data, 1 instructions, 2 addresses) of a window as it was before
    /// compression: `raw` holds its size, then its part of the LZMA2 stream; it may not
    /// exceed `limit`.
    fn section<'a>(
        &mut self,
        path: &Path,
        raw: &'a [u8],
        compressed: bool,
        secondary: Option<u8>,
        kind: usize,
        limit: u64,
    ) -> Result<std::borrow::Cow<'a, [u8]>> {
        if !compressed {
            return Ok(std::borrow::Cow::Borrowed(raw));
        }
        let what = ["data", "instructions", "addresses"][kind];
        let bad = |why: String| Error::malformed(path, format!("VCDIFF: the {what} section {why}"));
        if secondary != Some(SECONDARY_LZMA) {
            return Err(bad(format!(
                "is compressed with secondary compressor {secondary:?}; only xdelta3's lzma (2) is read"
            )));
        }
        let mut reader = Reader {
            bytes: raw,
            at: 0,
            path,
        };
        let size = reader.int(what)?;
        if size > limit {
            return Err(bad(format!(
                "claims {size} bytes once decompressed, more than the window allows ({limit})"
            )));
        }
        let mut input = &raw[reader.at..];
        if self.decoders[kind].is_none() {
            let (props, header_len) = lzma2_block_start(input).map_err(|why| bad(why.into()))?;
            let mut filters = liblzma::stream::Filters::new();
            filters
                .lzma2_properties(&[props])
                .map_err(|e| bad(format!("has LZMA2 properties it cannot use: {e}")))?;
            let decoder = liblzma::stream::Stream::new_raw_decoder(&filters)
                .map_err(|e| bad(format!("cannot start its LZMA2 decoder: {e}")))?;
            self.decoders[kind] = Some(decoder);
            input = &input[header_len..];
        }
        let decoder = self.decoders[kind].as_mut().expect("made above");
        let mut out = Vec::with_capacity(size as usize);
        loop {
            let (before_in, before_out) = (decoder.total_in(), out.len());
            let status = decoder
                .process_vec(input, &mut out, liblzma::stream::Action::Run)
                .map_err(|e| bad(format!("does not decompress: {e}")))?;
            input = &input[(decoder.total_in() - before_in) as usize..];
            let stuck = decoder.total_in() == before_in && out.len() == before_out;
            if input.is_empty()
                || out.len() == out.capacity()
                || stuck
                || status == liblzma::stream::Status::StreamEnd
            {
                break;
            }
        }
        if out.len() as u64 != size || !input.is_empty() {
            return Err(bad(format!(
                "decompresses to {} bytes with {} left over, not the {size} it claims",
                out.len(),
                input.len()
            )));
        }
        Ok(std::borrow::Cow::Owned(out))
    }
}

/// The LZMA2 properties byte and the length of the xz stream header and block header at the
/// start of `stream` (one LZMA2 filter, as xdelta3 writes).
fn lzma2_block_start(stream: &[u8]) -> std::result::Result<(u8, usize), &'static str> {
    const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
    const STREAM_HEADER: usize = 12;
    if !stream.starts_with(XZ_MAGIC) {
        return Err("does not begin an xz stream");
    }
    let block = stream
        .get(STREAM_HEADER..)
        .filter(|b| b.len() >= 2)
        .ok_or("ends inside the xz stream header")?;
    let header_len = (usize::from(block[0]) + 1) * 4;
    let header = block
        .get(..header_len)
        .ok_or("ends inside the xz block header")?;
    let flags = header[1];
    if flags & 0x03 != 0 {
        return Err("has an xz filter chain other than LZMA2 alone");
    }
    let mut at = 2;
    // Optional compressed and uncompressed sizes: xz's little-endian base-128 numbers.
    for present in [flags & 0x40 != 0, flags & 0x80 != 0] {
        if present {
            while header.get(at).ok_or("ends inside the xz block header")? & 0x80 != 0 {
                at += 1;
            }
            at += 1;
        }
    }
    // The filter: id 0x21 (LZMA2), one byte of properties.
    match header.get(at..at + 3) {
        Some([0x21, 0x01, props]) => Ok((*props, STREAM_HEADER + header_len)),
        _ => Err("has an xz filter other than LZMA2"),
    }
}

/// Applies the VCDIFF `delta` (read from `path`) to `a`, writing B into `out` window by window
/// and returning its size and SHA-256. Windows copying from earlier target windows
/// (`VCD_TARGET`) and application-defined code tables are refused with a clear error.
pub fn apply(path: &Path, a: &[u8], delta: &[u8], out: &mut dyn Write) -> Result<Applied> {
    use sha2::Digest;
    let mut r = Reader {
        bytes: delta,
        at: 0,
        path,
    };
    if r.take(4, "the magic")? != MAGIC {
        return Err(r.bad("not a VCDIFF delta of version 0".into()));
    }
    let header = r.byte("the header")?;
    if header & !(VCD_DECOMPRESS | VCD_CODETABLE | VCD_APPHEADER) != 0 {
        return Err(r.bad(format!("unknown header indicator bits {header:#04x}")));
    }
    let secondary = if header & VCD_DECOMPRESS != 0 {
        Some(r.byte("the secondary compressor id")?)
    } else {
        None
    };
    if header & VCD_CODETABLE != 0 {
        return Err(r.bad("uses its own code table, which this reader does not take".into()));
    }
    if header & VCD_APPHEADER != 0 {
        let len = r.int("the application header")?;
        r.take(len, "the application header")?;
    }
    let table = default_code_table();
    let limit = crate::source::max_input();
    let mut hasher = sha2::Sha256::new();
    let (mut b_size, mut windows, mut verified) = (0u64, 0u64, 0u64);
    let mut decoders = Secondary::default();
    while r.left() > 0 {
        let indicator = r.byte("a window")?;
        if indicator & !(VCD_SOURCE | VCD_TARGET | VCD_ADLER32) != 0 {
            return Err(r.bad(format!(
                "window {windows}: unknown indicator bits {indicator:#04x}"
            )));
        }
        if indicator & VCD_TARGET != 0 {
            return Err(r.bad(format!(
                "window {windows} copies from earlier output (VCD_TARGET), which this reader does not take"
            )));
        }
        let (seg_len, seg_pos) = if indicator & VCD_SOURCE != 0 {
            let len = r.int("a source segment")?;
            let pos = r.int("a source segment")?;
            if pos.checked_add(len).is_none_or(|end| end > a.len() as u64) {
                return Err(r.bad(format!(
                    "window {windows} reads {len} bytes of A at {pos}, past its end ({} bytes)",
                    a.len()
                )));
            }
            (len, pos)
        } else {
            (0, 0)
        };
        let source = &a[seg_pos as usize..(seg_pos + seg_len) as usize];
        let delta_len = r.int("a window's length")?;
        if delta_len > r.left() as u64 {
            return Err(r.bad(format!(
                "window {windows} claims {delta_len} bytes, {} are left",
                r.left()
            )));
        }
        let target_len = r.int("a window's target length")?;
        if target_len > MAX_WINDOW {
            return Err(r.bad(format!(
                "window {windows} claims {target_len} bytes; windows of more than {MAX_WINDOW} are refused"
            )));
        }
        if b_size.saturating_add(target_len) > limit {
            return Err(r.bad(format!(
                "B grows past --max-input ({limit} bytes) in window {windows}"
            )));
        }
        let compressed = r.byte("a window's delta indicator")?;
        let data_len = r.int("a window's data length")?;
        let inst_len = r.int("a window's instructions length")?;
        let addr_len = r.int("a window's addresses length")?;
        let checksum = if indicator & VCD_ADLER32 != 0 {
            let b = r.take(4, "a window's checksum")?;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        } else {
            None
        };
        // Instructions and addresses are at most a few bytes per target byte.
        let section_limit = target_len.saturating_mul(2).saturating_add(64);
        let data = decoders.section(
            path,
            r.take(data_len, "a data section")?,
            compressed & 1 != 0,
            secondary,
            0,
            target_len,
        )?;
        let inst = decoders.section(
            path,
            r.take(inst_len, "an instructions section")?,
            compressed & 2 != 0,
            secondary,
            1,
            section_limit,
        )?;
        let addr = decoders.section(
            path,
            r.take(addr_len, "an addresses section")?,
            compressed & 4 != 0,
            secondary,
            2,
            section_limit,
        )?;
        let target = run_window(
            path, windows, &table, source, &data, &inst, &addr, target_len,
        )?;
        if let Some(expected) = checksum {
            let actual = zlib_rs::adler32::adler32(1, &target);
            if actual != expected {
                return Err(r.bad(format!(
                    "window {windows} rebuilds bytes whose Adler-32 is {actual:08x}, not the \
                     {expected:08x} it records (is A the file the delta was made from?)"
                )));
            }
            verified += 1;
        }
        hasher.update(&target);
        out.write_all(&target)
            .map_err(|e| Error::io(path, "write the result of", e))?;
        b_size += target_len;
        windows += 1;
    }
    Ok(Applied {
        b_size,
        sha256: hasher.finalize().into(),
        windows,
        checksums_verified: verified,
    })
}

/// Runs one window's instructions: the window's target, exactly `target_len` bytes.
#[allow(clippy::too_many_arguments)]
fn run_window(
    path: &Path,
    window: u64,
    table: &[(Half, Half)],
    source: &[u8],
    data: &[u8],
    inst: &[u8],
    addr: &[u8],
    target_len: u64,
) -> Result<Vec<u8>> {
    let bad = |what: String| Error::malformed(path, format!("VCDIFF: window {window}: {what}"));
    let mut insts = Reader {
        bytes: inst,
        at: 0,
        path,
    };
    let mut addrs = Reader {
        bytes: addr,
        at: 0,
        path,
    };
    let mut data_at = 0usize;
    let mut caches = Caches::new();
    let seg_len = source.len() as u64;
    let mut target: Vec<u8> = Vec::new();
    while insts.left() > 0 {
        let code = insts.byte("an instruction")?;
        let (first, second) = table[code as usize];
        for half in [first, second] {
            if half.kind == Kind::Noop {
                continue;
            }
            let size = if half.size == 0 {
                insts.int("an instruction's size")?
            } else {
                u64::from(half.size)
            };
            if size > target_len - target.len() as u64 {
                return Err(bad(format!(
                    "instructions produce more than its {target_len} bytes"
                )));
            }
            let size_usize = size as usize;
            match half.kind {
                Kind::Add => {
                    let bytes = data
                        .get(data_at..data_at + size_usize)
                        .ok_or_else(|| bad("an ADD reads past its data section".into()))?;
                    target.extend_from_slice(bytes);
                    data_at += size_usize;
                }
                Kind::Run => {
                    let byte = *data
                        .get(data_at)
                        .ok_or_else(|| bad("a RUN reads past its data section".into()))?;
                    target.resize(target.len() + size_usize, byte);
                    data_at += 1;
                }
                Kind::Copy => {
                    let here = seg_len + target.len() as u64;
                    let address = match half.mode {
                        0 => addrs.int("an address")?,
                        1 => here
                            .checked_sub(addrs.int("an address")?)
                            .ok_or_else(|| bad("an address before the segment".into()))?,
                        m @ 2..=5 => caches.near[m as usize - 2]
                            .checked_add(addrs.int("an address")?)
                            .ok_or_else(|| bad("an address past 2^64".into()))?,
                        m => {
                            let slot = (m as usize - 6) * 256 + addrs.byte("an address")? as usize;
                            caches.same[slot]
                        }
                    };
                    if address >= here {
                        return Err(bad(format!(
                            "a COPY from {address}, not before the current position {here}"
                        )));
                    }
                    caches.update(address);
                    copy_into(&mut target, source, address, size_usize);
                }
                Kind::Noop => {}
            }
        }
    }
    if target.len() as u64 != target_len {
        return Err(bad(format!(
            "instructions produce {} bytes, the window has {target_len}",
            target.len()
        )));
    }
    if data_at != data.len() {
        return Err(bad(format!(
            "{} bytes of its data section are never used",
            data.len() - data_at
        )));
    }
    Ok(target)
}

/// Appends `size` bytes from `address` in the source segment followed by the target so far
/// (RFC 3284's one address space; a copy may run on into bytes it is itself producing).
fn copy_into(target: &mut Vec<u8>, source: &[u8], address: u64, size: usize) {
    let seg_len = source.len() as u64;
    let mut at = address;
    let mut left = size;
    if at < seg_len {
        let n = left.min((seg_len - at) as usize);
        target.extend_from_slice(&source[at as usize..at as usize + n]);
        at += n as u64;
        left -= n;
    }
    while left > 0 {
        let from = (at - seg_len) as usize;
        // What exists already can be copied at once; a copy of itself repeats it.
        let n = left.min(target.len() - from);
        target.extend_from_within(from..from + n);
        at += n as u64;
        left -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_code_table_is_rfc_3284s() {
        let table = default_code_table();
        assert_eq!(table.len(), 256);
        assert_eq!(table[0].0.kind, Kind::Run);
        assert_eq!((table[18].0.kind, table[18].0.size), (Kind::Add, 17));
        assert_eq!(
            (table[19].0.kind, table[19].0.size, table[19].0.mode),
            (Kind::Copy, 0, 0)
        );
        assert_eq!((table[162].0.size, table[162].0.mode), (18, 8));
        let (add, copy) = table[163];
        assert_eq!((add.size, copy.size, copy.mode), (1, 4, 0));
        let (add, copy) = table[235];
        assert_eq!((add.size, copy.size, copy.mode), (1, 4, 6));
        let (copy, add) = table[255];
        assert_eq!(
            (copy.kind, copy.mode, add.kind, add.size),
            (Kind::Copy, 8, Kind::Add, 1)
        );
    }

    #[test]
    fn integers_round_trip_most_significant_first() {
        for value in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut bytes = Vec::new();
            put_int(&mut bytes, value);
            let mut r = Reader {
                bytes: &bytes,
                at: 0,
                path: Path::new("x"),
            };
            assert_eq!(r.int("n").unwrap(), value);
            assert_eq!(r.left(), 0);
        }
        let mut bytes = Vec::new();
        put_int(&mut bytes, 128);
        assert_eq!(bytes, [0x81, 0x00]);
    }

    #[test]
    fn encode_then_apply_and_every_truncation_fails() {
        let a: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut b = a[..100_000].to_vec();
        b.extend_from_slice(b"inserted bytes");
        b.extend_from_slice(&a[150_000..]);
        let ops = super::super::align::align(&a, &b, 4096).ops;
        let delta = encode(&b, &ops);
        let mut out = Vec::new();
        let applied = apply(Path::new("d.vcdiff"), &a, &delta, &mut out).unwrap();
        assert_eq!(out, b);
        assert_eq!(applied.b_size, b.len() as u64);
        // (Cut between windows, a VCDIFF is a shorter B: the format records no total size.)
        for cut in [6, delta.len() / 2, delta.len() - 1] {
            assert!(apply(Path::new("d"), &a, &delta[..cut], &mut Vec::new()).is_err());
        }
        // A shorter A than the segment claims is refused before any copy.
        let err = apply(Path::new("d"), &a[..1000], &delta, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("past its end"), "{err}");
    }

    /// A delta of one window of `target_len` bytes with the instructions `inst` and data `data`.
    fn one_window(target_len: u64, data: &[u8], inst: &[u8]) -> Vec<u8> {
        let mut delta = MAGIC.to_vec();
        delta.push(0);
        delta.push(0); // no source
        let mut body = Vec::new();
        put_int(&mut body, target_len);
        body.push(0);
        put_int(&mut body, data.len() as u64);
        put_int(&mut body, inst.len() as u64);
        put_int(&mut body, 0);
        body.extend_from_slice(data);
        body.extend_from_slice(inst);
        put_int(&mut delta, body.len() as u64);
        delta.extend_from_slice(&body);
        delta
    }

    #[test]
    fn sizes_a_delta_claims_are_refused_before_they_are_built() {
        let p = Path::new("evil.vcdiff");
        // ADD 1, then RUN of 2^64-1: refused, no overflow.
        let mut inst = vec![2u8, 0];
        put_int(&mut inst, u64::MAX);
        let err = apply(p, &[], &one_window(10, b"ab", &inst), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("more than its 10 bytes"), "{err}");
        // A 4 GiB window made by one RUN: refused before anything is built.
        let mut inst = vec![0u8];
        put_int(&mut inst, (4 << 30) - 1);
        let err = apply(
            p,
            &[],
            &one_window((4 << 30) - 1, b"x", &inst),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("windows of more than"), "{err}");
    }

    #[test]
    fn a_copy_may_repeat_what_it_is_producing() {
        let mut target = b"ab".to_vec();
        copy_into(&mut target, &[], 0, 7);
        assert_eq!(target, b"ababababa");
    }
}
