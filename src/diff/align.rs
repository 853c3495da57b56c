//! Content-defined alignment of two byte strings: both are cut with FastCDC, chunks are matched by
//! xxh3 hash, the longest in-order run of matches is kept in place, and what is left becomes
//! moved, inserted, deleted and changed ranges, plus the copy/data operations of a patch.

use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashMap;
use xxhash_rust::xxh3::xxh3_128;

/// What happened to a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Unchanged,
    Moved,
    Inserted,
    Deleted,
    Changed,
}

/// One range of the comparison. `a` is where it was, `b` where it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeltaRange {
    pub kind: Change,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a: Option<(u64, u64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b: Option<(u64, u64)>,
    /// Changed ranges only: how many of its bytes differ from A's byte at the same place in
    /// the paired range (the rest of a changed range holds equal bytes between the edits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub differing_bytes: Option<u64>,
}

/// Offsets below the shorter length where `a` and `b` hold different bytes: what `cmp -l`
/// counts. Equal eight-byte words are skipped whole.
pub fn count_differing(a: &[u8], b: &[u8]) -> u64 {
    let common = a.len().min(b.len());
    let (a, b) = (&a[..common], &b[..common]);
    let words = common / 8 * 8;
    let mut differing: u64 = a[..words]
        .chunks_exact(8)
        .zip(b[..words].chunks_exact(8))
        .filter(|(x, y)| x != y)
        .map(|(x, y)| x.iter().zip(y).filter(|(p, q)| p != q).count() as u64)
        .sum();
    differing += a[words..]
        .iter()
        .zip(&b[words..])
        .filter(|(x, y)| x != y)
        .count() as u64;
    differing
}

/// How B is rebuilt from A.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatchOp {
    /// Copy `len` bytes of A from `offset`.
    Copy { offset: u64, len: u64 },
    /// Bytes A does not have.
    Data(Vec<u8>),
}

/// The alignment: ranges in B order (deleted ones where they were), and the patch.
#[derive(Clone, Debug, Default)]
pub struct Alignment {
    pub ranges: Vec<DeltaRange>,
    pub ops: Vec<PatchOp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chunk {
    offset: usize,
    len: usize,
    hash: u128,
}

/// FastCDC sizes (min, average, max) for a comparison block: chunks average one block.
fn cdc_sizes(block: usize) -> (u32, u32, u32) {
    let avg = (block as u32).clamp(256, 1 << 20);
    ((avg / 4).max(64), avg, (avg * 4).max(1024))
}

/// Chunks of `data[start..]`, hashed, with offsets in `data`: exactly FastCDC's cut from
/// `start` to the end, made on every core in pieces of at least [`CUT_PIECE`] (see
/// [`cut_in_pieces`]).
fn cut_from(data: &[u8], start: usize, block: usize) -> Vec<Chunk> {
    cut_from_in_pieces(data, start, block, CUT_PIECE)
}

fn cut_from_in_pieces(data: &[u8], start: usize, block: usize, piece: usize) -> Vec<Chunk> {
    let (min, avg, max) = cdc_sizes(block);
    let cutter = fastcdc::v2020::FastCDC::new(data, min, avg, max);
    let cut_one = |at: usize| chunk_at(&cutter, data, at);
    cut_in_pieces(start, data.len(), piece, &cut_one, |from, until| {
        let mut chunks = Vec::new();
        let mut at = from;
        while at < until {
            let chunk = cut_one(at);
            at += chunk.len;
            chunks.push(chunk);
        }
        chunks
    })
}

/// The chunk FastCDC cuts from `at` to the end of `data` (which `cutter` was made over), hashed.
fn chunk_at(cutter: &fastcdc::v2020::FastCDC, data: &[u8], at: usize) -> Chunk {
    let end = cutter.cut(at, data.len() - at).1;
    Chunk {
        offset: at,
        len: end - at,
        hash: xxh3_128(&data[at..end]),
    }
}

/// The smallest piece [`cut_in_pieces`] cuts on its own: large enough that the few chunks cut
/// twice where pieces meet cost nothing.
const CUT_PIECE: usize = 4 << 20;

/// A content-defined cut of `start..len` made on every core. A cut is decided by the bytes
/// from the previous cut on (and how many are left), so a cutter started anywhere makes the
/// same cuts as one from `start` from the first chunk start they share. The range is split
/// into pieces of at least `piece` bytes; `cut_piece(from, until)` cuts one from its own start
/// until a chunk reaches `until`, all pieces in parallel. Then, in order, the cut so far is
/// carried past each piece's start by `cut_one(at)` until it reaches a chunk start of that
/// piece, and that piece's chunks from there on are taken as they are; a cut that passes the
/// last piece's last chunk start without meeting it is carried to the end. (Where none is ever
/// shared, as in long runs of one byte cut at the maximum size from another phase, carrying on
/// is a plain cut of the rest: slower, never wrong.)
fn cut_in_pieces(
    start: usize,
    len: usize,
    piece: usize,
    cut_one: &(impl Fn(usize) -> Chunk + Sync),
    cut_piece: impl Fn(usize, usize) -> Vec<Chunk> + Sync,
) -> Vec<Chunk> {
    let span = len - start;
    let pieces = (span / piece.max(1))
        .min(4 * rayon::current_num_threads())
        .max(1);
    let bounds: Vec<usize> = (0..=pieces).map(|i| start + span * i / pieces).collect();
    let cuts: Vec<Vec<Chunk>> = (0..pieces)
        .into_par_iter()
        .map(|i| cut_piece(bounds[i], bounds[i + 1]))
        .collect();
    let mut cuts = cuts.into_iter();
    let mut chunks = cuts.next().unwrap_or_default();
    for next in cuts {
        let mut at = chunks.last().map_or(start, |c| c.offset + c.len);
        while at < len {
            if let Ok(shared) = next.binary_search_by_key(&at, |c| c.offset) {
                chunks.extend_from_slice(&next[shared..]);
                break;
            }
            if next.last().is_some_and(|c| at > c.offset) {
                break;
            }
            let chunk = cut_one(at);
            at += chunk.len;
            chunks.push(chunk);
        }
    }
    // Past the last piece's last chunk start without meeting it: the rest is cut here.
    let mut at = chunks.last().map_or(start, |c| c.offset + c.len);
    while at < len {
        let chunk = cut_one(at);
        at += chunk.len;
        chunks.push(chunk);
    }
    chunks
}

/// One side cut into content-defined chunks for a given block: what [`align_chunked`] matches.
/// A watch keeps the last state's, so that each event cuts only around what changed.
#[derive(Clone, Debug)]
pub struct Chunking {
    block: usize,
    chunks: Vec<Chunk>,
}

impl Chunking {
    /// `data` cut afresh.
    pub fn of(data: &[u8], block: usize) -> Self {
        Chunking {
            block,
            chunks: cut_from(data, 0, block),
        }
    }

    /// The block the chunks average.
    pub fn block(&self) -> usize {
        self.block
    }

    /// The chunking of `now`, given this one of an earlier version that differs from `now`
    /// only in `changed` (sorted byte ranges of `now`, past its end for a version that
    /// shrank). FastCDC's cut at `e` reads the bytes from the chunk's start through byte `e`
    /// itself, and it scans pairs of bytes, so the last byte of the data is never a cut: an
    /// old chunk is kept while its end is at least two bytes before the next change (which,
    /// for a version of another length, is at most where the shorter one ends). The cutting
    /// restarts at the start of the first chunk not kept, and stops once a cut past the
    /// change lands on an old boundary. The result is exactly [`Chunking::of`] `now`.
    pub fn recut(&self, now: &[u8], changed: &[std::ops::Range<usize>]) -> Self {
        let old = &self.chunks;
        let old_len = old.last().map_or(0, |c| c.offset + c.len);
        // An old chunk holds in `now` when its bytes are unchanged and its cut was made by its
        // content: the last one was cut by the end of the data, which moved if the length did.
        let holds = |c: &Chunk| {
            let end = c.offset + c.len;
            end <= now.len() && (end < old_len || now.len() == old_len)
        };
        let (min, avg, max) = cdc_sizes(self.block);
        let mut chunks = Vec::with_capacity(old.len());
        // `old[next]` is the first old chunk not yet kept or passed.
        let mut next = 0;
        let mut ranges = changed.iter().filter(|r| !r.is_empty()).peekable();
        while let Some(change) = ranges.next() {
            // Old chunks wholly before the change stay, while they start where the last ended.
            let done = chunks.last().map_or(0, |c: &Chunk| c.offset + c.len);
            while next < old.len()
                && old[next].offset + old[next].len + 1 < change.start
                && holds(&old[next])
            {
                if old[next].offset >= done {
                    chunks.push(old[next]);
                }
                next += 1;
            }
            let start = chunks.last().map_or(0, |c| c.offset + c.len);
            let mut resynced = false;
            let mut until = change.end;
            for c in fastcdc::v2020::FastCDC::new(&now[start..], min, avg, max) {
                let (offset, len) = (start + c.offset, c.length);
                chunks.push(Chunk {
                    offset,
                    len,
                    hash: xxh3_128(&now[offset..offset + len]),
                });
                let end = offset + len;
                // Changes this cut has reached are part of this one.
                while let Some(r) = ranges.next_if(|r| r.start < end) {
                    until = until.max(r.end);
                }
                if end < until {
                    continue;
                }
                while next < old.len() && old[next].offset < end {
                    next += 1;
                }
                if next < old.len() && old[next].offset == end {
                    resynced = true;
                    break;
                }
            }
            if !resynced {
                // Cut to the end of `now`: nothing old is left to keep.
                return Chunking {
                    block: self.block,
                    chunks,
                };
            }
        }
        let done = chunks.last().map_or(0, |c: &Chunk| c.offset + c.len);
        chunks.extend(old[next..].iter().filter(|c| c.offset >= done && holds(c)));
        // Ranges that missed part of a change would leave the end uncovered: cut it afresh.
        let covered = chunks.last().map_or(0, |c: &Chunk| c.offset + c.len);
        if covered < now.len() {
            chunks.extend(cut_from(now, covered, self.block));
        }
        Chunking {
            block: self.block,
            chunks,
        }
    }
}

impl Chunking {
    /// The chunking of `b`, given this one of `a`: exactly [`Chunking::of`] `b`, found mostly by
    /// comparing bytes instead of computing cuts. FastCDC's cut of a chunk is decided by its
    /// bytes and the one after it (at most `max` bytes in all), and otherwise only by how much
    /// data is left, capped at `max`. So where `b` repeats a chunk of `a`, byte for byte through
    /// the byte that decided its cut, and both have at least `max` bytes left, `b` is cut there
    /// at the same length, and the chunk's hash is the same. Where it does not, `b` is cut by
    /// content, and following resumes at the `a` chunk after one whose hash a content cut
    /// matched, or at the `a` chunk that starts where the last shift between them puts it.
    pub fn follow(&self, a: &[u8], b: &[u8]) -> Chunking {
        self.follow_in_pieces(a, b, CUT_PIECE)
    }

    /// [`Chunking::follow`], made on every core in pieces of at least `piece` bytes of `b`
    /// (see [`cut_in_pieces`]).
    fn follow_in_pieces(&self, a: &[u8], b: &[u8], piece: usize) -> Chunking {
        let (min, avg, max) = cdc_sizes(self.block);
        let old = &self.chunks;
        let by_hash: HashMap<u128, usize> = old
            .iter()
            .enumerate()
            .rev()
            .map(|(i, c)| (c.hash, i))
            .collect();
        let start_at = |offset: usize| old.binary_search_by_key(&offset, |c| c.offset).ok();
        let cutter = fastcdc::v2020::FastCDC::new(b, min, avg, max);
        let max = max as usize;
        let cut_one = |at: usize| chunk_at(&cutter, b, at);
        let follow_piece = |from: usize, until: usize| {
            let mut chunks = Vec::new();
            // `next`: the `a` chunk expected at `at`; `shift`: `a` offset minus `b` offset.
            let (mut at, mut next, mut shift) = (from, start_at(from), 0isize);
            while at < until {
                if let Some(c) = next.map(|i| old[i]) {
                    let decided_by = (c.len + 1).min(max);
                    if c.offset + max <= a.len()
                        && at + max <= b.len()
                        && a[c.offset..c.offset + decided_by] == b[at..at + decided_by]
                    {
                        chunks.push(Chunk { offset: at, ..c });
                        at += c.len;
                        next = next.map(|i| i + 1).filter(|&i| i < old.len());
                        continue;
                    }
                }
                let chunk = cut_one(at);
                at += chunk.len;
                next = match by_hash.get(&chunk.hash) {
                    Some(&i) => {
                        shift = old[i].offset as isize - chunk.offset as isize;
                        Some(i + 1).filter(|&i| i < old.len())
                    }
                    None => usize::try_from(at as isize + shift).ok().and_then(start_at),
                };
                chunks.push(chunk);
            }
            chunks
        };
        Chunking {
            block: self.block,
            chunks: cut_in_pieces(0, b.len(), piece, &cut_one, follow_piece),
        }
    }
}

/// Aligns `a` and `b` at about `block`-byte granularity.
pub fn align(a: &[u8], b: &[u8], block: usize) -> Alignment {
    let ca = Chunking::of(a, block);
    let cb = ca.follow(a, b);
    align_chunked(a, &ca, b, &cb)
}

/// [`align`] of sides already cut (both with the same block).
pub fn align_chunked(a: &[u8], a_chunks: &Chunking, b: &[u8], b_chunks: &Chunking) -> Alignment {
    let (ca, cb) = (&a_chunks.chunks, &b_chunks.chunks);
    let mut where_in_a: HashMap<u128, Vec<usize>> = HashMap::new();
    for (i, c) in ca.iter().enumerate() {
        where_in_a.entry(c.hash).or_default().push(i);
    }
    // Each B chunk's best A candidate: the one nearest the same relative position, so repeated
    // content (zero pages) lines up in order instead of pulling matches across the file.
    let candidate: Vec<Option<usize>> = cb
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let list = where_in_a.get(&c.hash)?;
            let expected = j * ca.len() / cb.len().max(1);
            // The list is ascending (built in A order): only the neighbours of `expected` can
            // be nearest, which keeps thousands of identical zero pages from costing n x k.
            let at = list.partition_point(|&i| i < expected);
            list[at.saturating_sub(1)..(at + 1).min(list.len())]
                .iter()
                .copied()
                .min_by_key(|&i| i.abs_diff(expected))
        })
        .collect();
    // B as operations: a copy for each matched chunk (in order or moved), data for the rest;
    // then refined to bytes, and the ranges read off the refined operations.
    let mut ops = Vec::new();
    for (j, c) in cb.iter().enumerate() {
        match candidate[j] {
            Some(i) => push_copy(&mut ops, ca[i].offset as u64, c.len as u64),
            None => push_data(&mut ops, &b[c.offset..c.offset + c.len]),
        }
    }
    let ops = refine(a, ops);
    Alignment {
        ranges: ranges_from_ops(a, b, &ops),
        ops,
    }
}

/// For each copy (A offset, length), in B order: whether it is in place, on the heaviest
/// chain of copies whose A ranges ascend (most bytes kept in order), or moved.
fn in_place(copies: &[(u64, u64)]) -> Vec<bool> {
    // best[i]: bytes of the heaviest ascending chain ending with copy i. A Fenwick tree over
    // the sorted A ends answers "heaviest chain ending at or before this offset" in log time.
    let mut ends: Vec<u64> = copies.iter().map(|&(o, l)| o + l).collect();
    ends.sort_unstable();
    ends.dedup();
    let mut tree: Vec<(u64, usize)> = vec![(0, usize::MAX); ends.len() + 1];
    let mut best = vec![0u64; copies.len()];
    let mut before = vec![usize::MAX; copies.len()];
    for (i, &(offset, len)) in copies.iter().enumerate() {
        // Chains through copies whose A range ends at or before `offset`.
        let mut at = ends.partition_point(|&e| e <= offset);
        let mut found = (0u64, usize::MAX);
        while at > 0 {
            if tree[at].0 > found.0 {
                found = tree[at];
            }
            at &= at - 1;
        }
        best[i] = found.0 + len;
        before[i] = found.1;
        let mut at = ends.partition_point(|&e| e < offset + len) + 1;
        while at < tree.len() {
            if best[i] > tree[at].0 {
                tree[at] = (best[i], i);
            }
            at += at & at.wrapping_neg();
        }
    }
    let mut keep = vec![false; copies.len()];
    let mut at = (0..copies.len())
        .max_by_key(|&i| best[i])
        .unwrap_or(usize::MAX);
    while at != usize::MAX {
        keep[at] = true;
        at = before[at];
    }
    keep
}

/// The comparison's ranges, read off refined operations: copies on the heaviest ascending chain
/// are unchanged, other copies moved (one range each, with both offsets); data between two
/// in-place copies pairs with the stretch of A between them that no copy took (changed, and
/// the longer side's rest inserted or deleted); stretches of A no copy took are deleted.
fn ranges_from_ops(a: &[u8], b: &[u8], ops: &[PatchOp]) -> Vec<DeltaRange> {
    let copies: Vec<(u64, u64)> = ops
        .iter()
        .filter_map(|op| match op {
            PatchOp::Copy { offset, len } => Some((*offset, *len)),
            PatchOp::Data(_) => None,
        })
        .collect();
    let keep = in_place(&copies);
    // What of A some copy takes, as sorted disjoint ranges.
    let mut taken: Vec<(u64, u64)> = copies.iter().map(|&(o, l)| (o, o + l)).collect();
    taken.sort_unstable();
    let mut covered: Vec<(u64, u64)> = Vec::with_capacity(taken.len());
    for (start, end) in taken {
        match covered.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => covered.push((start, end)),
        }
    }
    // The stretches of A in [from, to) that no copy takes.
    let gaps = |from: u64, to: u64| -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = from;
        let first = covered.partition_point(|&(_, end)| end <= from);
        for &(start, end) in &covered[first..] {
            if start >= to {
                break;
            }
            if start > at {
                out.push((at, start));
            }
            at = at.max(end);
        }
        if at < to {
            out.push((at, to));
        }
        out
    };
    let mut ranges = Vec::new();
    let mut pending: Option<(u64, u64)> = None;
    let flush = |ranges: &mut Vec<DeltaRange>,
                 pending: &mut Option<(u64, u64)>,
                 a_gaps: Vec<(u64, u64)>| {
        let mut a_gaps = a_gaps.into_iter();
        match (pending.take(), a_gaps.next()) {
            (Some(b_span), Some(a_span)) => replaced(ranges, a, b, a_span, b_span),
            (Some(b_span), None) => push_range(ranges, Change::Inserted, None, Some(b_span)),
            (None, Some(a_span)) => push_range(ranges, Change::Deleted, Some(a_span), None),
            (None, None) => {}
        }
        for a_span in a_gaps {
            push_range(ranges, Change::Deleted, Some(a_span), None);
        }
    };
    let (mut next_a, mut at_b, mut copy_index) = (0u64, 0u64, 0usize);
    for op in ops {
        match op {
            PatchOp::Copy { offset, len } => {
                let b_span = (at_b, at_b + len);
                let a_span = (*offset, offset + len);
                if keep[copy_index] {
                    flush(&mut ranges, &mut pending, gaps(next_a, *offset));
                    next_a = offset + len;
                    push_range(&mut ranges, Change::Unchanged, Some(a_span), Some(b_span));
                } else {
                    flush(&mut ranges, &mut pending, Vec::new());
                    ranges.push(DeltaRange {
                        kind: Change::Moved,
                        a: Some(a_span),
                        b: Some(b_span),
                        differing_bytes: None,
                    });
                }
                copy_index += 1;
                at_b += len;
            }
            PatchOp::Data(data) => {
                let end = at_b + data.len() as u64;
                pending = Some(pending.map_or((at_b, end), |(start, _)| (start, end)));
                at_b = end;
            }
        }
    }
    flush(&mut ranges, &mut pending, gaps(next_a, a.len() as u64));
    ranges
}

/// Content replaced between two anchors: the bytes both ends share are unchanged, as much of
/// the middle as both sides have is changed, and the longer side's rest was inserted or deleted.
/// Chunks are kilobytes; this trims a one-byte edit down to the bytes that really differ.
fn replaced(
    ranges: &mut Vec<DeltaRange>,
    a: &[u8],
    b: &[u8],
    a_span: (u64, u64),
    b_span: (u64, u64),
) {
    let sa = &a[a_span.0 as usize..a_span.1 as usize];
    let sb = &b[b_span.0 as usize..b_span.1 as usize];
    let prefix = sa.iter().zip(sb).take_while(|(x, y)| x == y).count() as u64;
    let suffix = sa[prefix as usize..]
        .iter()
        .rev()
        .zip(sb[prefix as usize..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count() as u64;
    if prefix > 0 {
        push_range(
            ranges,
            Change::Unchanged,
            Some((a_span.0, a_span.0 + prefix)),
            Some((b_span.0, b_span.0 + prefix)),
        );
    }
    let (a0, a1) = (a_span.0 + prefix, a_span.1 - suffix);
    let (b0, b1) = (b_span.0 + prefix, b_span.1 - suffix);
    let common = (a1 - a0).min(b1 - b0);
    if common > 0 {
        let differing = count_differing(
            &a[a0 as usize..(a0 + common) as usize],
            &b[b0 as usize..(b0 + common) as usize],
        );
        ranges.push(DeltaRange {
            kind: Change::Changed,
            a: Some((a0, a0 + common)),
            b: Some((b0, b0 + common)),
            differing_bytes: Some(differing),
        });
    }
    if a0 + common < a1 {
        ranges.push(DeltaRange {
            kind: Change::Deleted,
            a: Some((a0 + common, a1)),
            b: None,
            differing_bytes: None,
        });
    }
    if b0 + common < b1 {
        ranges.push(DeltaRange {
            kind: Change::Inserted,
            a: None,
            b: Some((b0 + common, b1)),
            differing_bytes: None,
        });
    }
    if suffix > 0 {
        push_range(
            ranges,
            Change::Unchanged,
            Some((a_span.1 - suffix, a_span.1)),
            Some((b_span.1 - suffix, b_span.1)),
        );
    }
}

/// Appends a range, merging it into the previous one when they continue each other.
fn push_range(
    ranges: &mut Vec<DeltaRange>,
    kind: Change,
    a: Option<(u64, u64)>,
    b: Option<(u64, u64)>,
) {
    if let Some(last) = ranges.last_mut() {
        let continues = |x: Option<(u64, u64)>, y: Option<(u64, u64)>| match (x, y) {
            (Some((_, end)), Some((start, _))) => end == start,
            (None, None) => true,
            _ => false,
        };
        if last.kind == kind && continues(last.a, a) && continues(last.b, b) {
            if let (Some(la), Some(na)) = (&mut last.a, a) {
                la.1 = na.1;
            }
            if let (Some(lb), Some(nb)) = (&mut last.b, b) {
                lb.1 = nb.1;
            }
            return;
        }
    }
    ranges.push(DeltaRange {
        kind,
        a,
        b,
        differing_bytes: None,
    });
}

fn push_copy(ops: &mut Vec<PatchOp>, offset: u64, len: u64) {
    if let Some(PatchOp::Copy { offset: o, len: l }) = ops.last_mut() {
        if *o + *l == offset {
            *l += len;
            return;
        }
    }
    ops.push(PatchOp::Copy { offset, len });
}

fn push_data(ops: &mut Vec<PatchOp>, bytes: &[u8]) {
    if let Some(PatchOp::Data(d)) = ops.last_mut() {
        d.extend_from_slice(bytes);
        return;
    }
    ops.push(PatchOp::Data(bytes.to_vec()));
}

/// Shortest run of equal bytes worth a copy inside literal data: a copy costs a few bytes of
/// operations, so a shorter run is cheaper kept literal.
const MIN_COPY: usize = 24;

/// Refines chunk-sized operations to bytes. Each literal between two copies is first eaten from
/// both ends by the copies around it (the bytes just after the previous copy's A range, and
/// just before the next one's, that equal its own); what is left is scanned under both
/// copies' alignments, and every run of [`MIN_COPY`] or more equal bytes becomes a copy. An
/// overwrite inside a chunk then costs its own bytes, an insertion exactly what was inserted.
pub fn refine(a: &[u8], ops: Vec<PatchOp>) -> Vec<PatchOp> {
    let mut ops = ops;
    let mut out: Vec<PatchOp> = Vec::with_capacity(ops.len());
    for i in 0..ops.len() {
        let op = std::mem::replace(&mut ops[i], PatchOp::Data(Vec::new()));
        let data = match op {
            PatchOp::Copy { offset, len } => {
                if len > 0 {
                    push_copy(&mut out, offset, len);
                }
                continue;
            }
            PatchOp::Data(data) => data,
        };
        // Where A goes on after the previous copy, and where the next copy's A range begins.
        let after_previous = match out.last() {
            Some(PatchOp::Copy { offset, len }) => Some((offset + len) as usize),
            _ => None,
        };
        let before_next = match ops.get(i + 1) {
            Some(PatchOp::Copy { offset, .. }) => Some(*offset as usize),
            _ => None,
        };
        let prefix = after_previous.map_or(0, |at| {
            a.get(at..)
                .unwrap_or_default()
                .iter()
                .zip(&data)
                .take_while(|(x, y)| x == y)
                .count()
        });
        if prefix > 0 {
            let at = after_previous.expect("a prefix has a previous copy");
            push_copy(&mut out, at as u64, prefix as u64);
        }
        let rest = &data[prefix..];
        let suffix = before_next.map_or(0, |end| {
            a[..end.min(a.len())]
                .iter()
                .rev()
                .zip(rest.iter().rev())
                .take_while(|(x, y)| x == y)
                .count()
        });
        let middle = &rest[..rest.len() - suffix];
        // The A offset of `middle[0]` under each neighbour's alignment.
        let first = after_previous.map(|at| at + prefix);
        let second = before_next.and_then(|end| (end - suffix).checked_sub(middle.len()));
        copy_runs(a, middle, first, second, &mut out);
        if suffix > 0 {
            if let Some(PatchOp::Copy { offset, len }) = ops.get_mut(i + 1) {
                *offset -= suffix as u64;
                *len += suffix as u64;
            }
        }
    }
    out
}

/// Emits `middle` as copies of every run of at least [`MIN_COPY`] bytes that equals A at
/// `first + k` or `second + k`, and literal data between them.
fn copy_runs(
    a: &[u8],
    middle: &[u8],
    first: Option<usize>,
    second: Option<usize>,
    out: &mut Vec<PatchOp>,
) {
    let run_at = |base: Option<usize>, k: usize| -> usize {
        let Some(start) = base.and_then(|b| b.checked_add(k)) else {
            return 0;
        };
        a.get(start..)
            .unwrap_or_default()
            .iter()
            .zip(&middle[k..])
            .take_while(|(x, y)| x == y)
            .count()
    };
    let mut literal_from = 0;
    let mut k = 0;
    while k < middle.len() {
        let (r1, r2) = (run_at(first, k), run_at(second, k));
        let (run, base) = if r1 >= r2 { (r1, first) } else { (r2, second) };
        if run >= MIN_COPY {
            if literal_from < k {
                push_data(out, &middle[literal_from..k]);
            }
            let base = base.expect("a run has a base");
            push_copy(out, (base + k) as u64, run as u64);
            k += run;
            literal_from = k;
        } else {
            // Neither alignment holds here for long: skip past where both runs broke.
            k += r1.max(r2).max(1);
        }
    }
    if literal_from < middle.len() {
        push_data(out, &middle[literal_from..]);
    }
}

/// Rebuilds B from A and the operations (bounds already checked by the patch reader).
pub fn apply(a: &[u8], ops: &[PatchOp]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            PatchOp::Copy { offset, len } => {
                out.extend_from_slice(&a[*offset as usize..(*offset + *len) as usize])
            }
            PatchOp::Data(d) => out.extend_from_slice(d),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic bytes no compressor shrinks alone.
    pub(crate) fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    /// 3 MiB of noise with a zero stretch (cut at the maximum size) and a stretch of text.
    fn noise_zeros_and_text(seed: u64) -> Vec<u8> {
        let mut base = noise(3 << 20, seed);
        base[1 << 20..(1 << 20) + 300_000].fill(0);
        for (i, byte) in base[2 << 20..(2 << 20) + 200_000].iter_mut().enumerate() {
            *byte = b"a line of text\n"[i % 15];
        }
        base
    }

    #[test]
    fn a_recut_around_changes_is_a_fresh_cut() {
        let base = noise_zeros_and_text(5);
        type Edit = Box<dyn Fn(&mut Vec<u8>)>;
        let edits: Vec<(&str, Edit)> = vec![
            ("one byte", Box::new(|d| d[500_000] ^= 1)),
            ("in the zeros", Box::new(|d| d[(1 << 20) + 5000] = 7)),
            (
                "two far apart",
                Box::new(|d| {
                    d[10] ^= 1;
                    d[3_000_000] ^= 1;
                }),
            ),
            (
                "a fill of 40 KiB",
                Box::new(|d| d[700_000..741_000].fill(3)),
            ),
            ("the last byte", Box::new(|d| *d.last_mut().unwrap() ^= 1)),
            ("truncated", Box::new(|d| d.truncate(2_000_001))),
            (
                "grown",
                Box::new(|d| d.extend_from_slice(&noise(70_000, 9))),
            ),
            ("shrunk to 100 bytes", Box::new(|d| d.truncate(100))),
            ("emptied", Box::new(|d| d.clear())),
        ];
        let block = 4096;
        for (what, edit) in &edits {
            let mut now = base.clone();
            edit(&mut now);
            let changed = crate::fold::changed_pages(&base, &now, 4096);
            let recut = Chunking::of(&base, block).recut(&now, &changed);
            assert!(recut.chunks == Chunking::of(&now, block).chunks, "{what}");
        }
        // The byte at a cut, and a version cut off one byte past a cut: both decide that cut.
        let fresh = Chunking::of(&base, block);
        for c in &fresh.chunks[1..40] {
            let mut now = base.clone();
            now[c.offset] ^= 0x5a;
            let recut = fresh.recut(&now, std::slice::from_ref(&(c.offset..c.offset + 1)));
            assert!(
                recut.chunks == Chunking::of(&now, block).chunks,
                "byte at {}",
                c.offset
            );
            let shorter = &base[..c.offset + 1];
            let recut = fresh.recut(shorter, std::slice::from_ref(&(shorter.len()..base.len())));
            assert!(
                recut.chunks == Chunking::of(shorter, block).chunks,
                "cut at {}",
                c.offset
            );
        }
        // Told nothing changed, a recut keeps the old cuts: the comparison above can fail.
        let mut now = base.clone();
        now[700_000..741_000].fill(3);
        let stale = Chunking::of(&base, block).recut(&now, &[]);
        assert!(stale.chunks != Chunking::of(&now, block).chunks);
    }

    #[test]
    fn a_cut_made_in_pieces_is_a_cut_from_the_start() {
        // Noise, a long zero run (cut at the maximum size, from whatever phase), text, and a
        // run of one byte at the very end.
        let mut data = noise(3 << 20, 13);
        data[600_000..1_400_000].fill(0);
        for (i, byte) in data[2 << 20..(2 << 20) + 300_000].iter_mut().enumerate() {
            *byte = b"text, and more text\n"[i % 20];
        }
        let len = data.len();
        data[len - 70_000..].fill(0xFF);
        for block in [256, 4096, 65536] {
            for start in [0, 1, 100_000] {
                let (min, avg, max) = cdc_sizes(block);
                let whole: Vec<usize> = fastcdc::v2020::FastCDC::new(&data[start..], min, avg, max)
                    .map(|c| start + c.offset + c.length)
                    .collect();
                for piece in [1000, 77_777, 1 << 20, usize::MAX] {
                    let chunks = cut_from_in_pieces(&data, start, block, piece);
                    let ends: Vec<usize> = chunks.iter().map(|c| c.offset + c.len).collect();
                    assert!(ends == whole, "block {block}, start {start}, piece {piece}");
                    let hashed = chunks
                        .iter()
                        .all(|c| c.hash == xxh3_128(&data[c.offset..][..c.len]));
                    assert!(hashed, "block {block}, start {start}, piece {piece}");
                }
            }
        }
        assert!(cut_from_in_pieces(&data, len, 4096, 1000).is_empty());
        assert!(cut_from_in_pieces(&[], 0, 4096, 1000).is_empty());
        // A piece that starts in the zero run, in another phase than the cut from the start,
        // cuts elsewhere until the run ends: taken as they are, its cuts would be wrong.
        let (min, avg, max) = cdc_sizes(4096);
        let whole: Vec<usize> = cut_from_in_pieces(&data, 0, 4096, usize::MAX)
            .iter()
            .map(|c| c.offset + c.len)
            .collect();
        let from_the_zeros = fastcdc::v2020::FastCDC::new(&data[700_001..], min, avg, max)
            .map(|c| 700_001 + c.offset + c.length)
            .take(3);
        assert!(from_the_zeros
            .into_iter()
            .all(|end| whole.binary_search(&end).is_err()));
    }

    /// Bytes made of stretches of noise and of one repeated byte (cut at the maximum size).
    fn stretches() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop::collection::vec((any::<bool>(), 1usize..6000, any::<u8>()), 0..20).prop_map(|parts| {
            let mut data = Vec::new();
            for (i, (repeated, len, byte)) in parts.into_iter().enumerate() {
                if repeated {
                    data.extend(std::iter::repeat_n(byte, len));
                } else {
                    data.extend(noise(len, i as u64 * 31 + u64::from(byte)));
                }
            }
            data
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Any A, any B made from it by overwrites, insertions, deletions and moves, any piece
        /// size: A cut in pieces, and B followed in pieces, are the cuts from the start.
        #[test]
        fn cuts_in_pieces_and_followed_are_fresh_cuts(
            a in stretches(),
            edits in proptest::collection::vec(
                (0usize..4, proptest::prelude::any::<proptest::sample::Index>(), 0usize..5000, proptest::prelude::any::<proptest::sample::Index>()),
                0..6,
            ),
            piece in 300usize..20_000,
            block in proptest::sample::select(vec![256usize, 1024, 4096]),
        ) {
            let mut b = a.clone();
            for (kind, at, len, to) in edits {
                let at = at.index(b.len() + 1);
                let end = (at + len).min(b.len());
                match kind {
                    0 => b[at..end].iter_mut().for_each(|x| *x = x.wrapping_add(1)),
                    1 => drop(b.splice(at..at, noise(len, len as u64))),
                    2 => drop(b.drain(at..end)),
                    _ => {
                        let moved: Vec<u8> = b.drain(at..end).collect();
                        let to = to.index(b.len() + 1);
                        drop(b.splice(to..to, moved));
                    }
                }
            }
            let cut_a = Chunking::of(&a, block);
            let in_pieces = cut_from_in_pieces(&a, 0, block, piece);
            proptest::prop_assert!(in_pieces == cut_a.chunks);
            let followed = cut_a.follow_in_pieces(&a, &b, piece);
            let fresh = Chunking::of(&b, block).chunks;
            proptest::prop_assert!(followed.chunks == fresh);
        }
    }

    #[test]
    fn a_cut_that_follows_another_side_is_a_fresh_cut() {
        let base = noise_zeros_and_text(7);
        type Edit = Box<dyn Fn(&mut Vec<u8>)>;
        let edits: Vec<(&str, Edit)> = vec![
            ("nothing", Box::new(|_| {})),
            ("one byte", Box::new(|d| d[500_000] ^= 1)),
            ("in the zeros", Box::new(|d| d[(1 << 20) + 5000] = 7)),
            (
                "12 KiB inserted",
                Box::new(|d| {
                    d.splice(1_500_000..1_500_000, noise(12 << 10, 3));
                }),
            ),
            (
                "5 bytes deleted",
                Box::new(|d| {
                    d.drain(900_000..900_005);
                }),
            ),
            (
                "1 MiB moved to the end",
                Box::new(|d| {
                    let block: Vec<u8> = d.drain(300_000..300_000 + (1 << 20)).collect();
                    d.extend_from_slice(&block);
                }),
            ),
            ("the last byte", Box::new(|d| *d.last_mut().unwrap() ^= 1)),
            ("truncated", Box::new(|d| d.truncate(2_000_001))),
            (
                "grown",
                Box::new(|d| d.extend_from_slice(&noise(70_000, 9))),
            ),
            ("other bytes", Box::new(|d| *d = noise(d.len(), 11))),
            ("shrunk to 100 bytes", Box::new(|d| d.truncate(100))),
            ("emptied", Box::new(|d| d.clear())),
        ];
        for block in [256, 4096] {
            let cut = Chunking::of(&base, block);
            for (what, edit) in &edits {
                let mut now = base.clone();
                edit(&mut now);
                let fresh = Chunking::of(&now, block).chunks;
                for piece in [10_000, 333_333, usize::MAX] {
                    let followed = cut.follow_in_pieces(&base, &now, piece);
                    assert!(
                        followed.chunks == fresh,
                        "{what}, block {block}, piece {piece}"
                    );
                }
            }
            // The byte that decided a cut, changed: the cut moves, and following sees it.
            for c in &cut.chunks[1..40] {
                let mut now = base.clone();
                now[c.offset] ^= 0x5a;
                let followed = cut.follow(&base, &now);
                assert!(followed.chunks == Chunking::of(&now, block).chunks);
            }
            // Following an empty side cuts by content alone.
            let empty = Chunking::of(&[], block);
            assert!(empty.follow(&[], &base).chunks == cut.chunks);
        }
        // Followed with the wrong side's bytes, the cuts are wrong: the comparison can fail.
        let mut now = base.clone();
        now[700_000..741_000].fill(3);
        let wrong = Chunking::of(&base, 4096).follow(&now, &now);
        assert!(wrong.chunks != Chunking::of(&now, 4096).chunks);
    }

    fn total(al: &Alignment, kind: Change) -> u64 {
        al.ranges
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.b.or(r.a).map_or(0, |(s, e)| e - s))
            .sum()
    }

    /// Bytes the patch carries as data.
    fn literal_bytes(ops: &[PatchOp]) -> usize {
        ops.iter()
            .map(|op| match op {
                PatchOp::Data(d) => d.len(),
                PatchOp::Copy { .. } => 0,
            })
            .sum()
    }

    #[test]
    fn patches_carry_only_the_bytes_that_changed() {
        let a = noise(4 << 20, 7);
        // Scattered 4 KiB overwrites: the data is exactly the overwritten bytes.
        let mut b = a.clone();
        for at in [100_000usize, 1_234_567, 2_500_001, 3_999_000] {
            b[at..at + 4096].copy_from_slice(&noise(4096, at as u64));
        }
        let al = align(&a, &b, 4096);
        assert_eq!(apply(&a, &al.ops), b);
        assert_eq!(literal_bytes(&al.ops), 4 * 4096, "{:?}", al.ops.len());
        // An insertion: exactly what was inserted.
        let mut c = a[..2_000_003].to_vec();
        c.extend(noise(12_288, 9));
        c.extend_from_slice(&a[2_000_003..]);
        let al = align(&a, &c, 4096);
        assert_eq!(apply(&a, &al.ops), c);
        assert_eq!(literal_bytes(&al.ops), 12_288);
        // A block moved from 1/8 to 7/8: copies only (a few boundary bytes at most).
        let (from, len) = (a.len() / 8, 256 << 10);
        let mut d = a[..from].to_vec();
        d.extend_from_slice(&a[from + len..a.len() * 7 / 8]);
        d.extend_from_slice(&a[from..from + len]);
        d.extend_from_slice(&a[a.len() * 7 / 8..]);
        let al = align(&a, &d, 4096);
        assert_eq!(apply(&a, &al.ops), d);
        assert!(literal_bytes(&al.ops) < 64, "{}", literal_bytes(&al.ops));
        // Four bytes changed: four bytes of data.
        let mut e = a.clone();
        e[3_000_000..3_000_004].copy_from_slice(b"\x00\x01\x02\x03");
        let al = align(&a, &e, 4096);
        assert_eq!(apply(&a, &al.ops), e);
        assert!(literal_bytes(&al.ops) <= 4, "{}", literal_bytes(&al.ops));
    }

    #[test]
    fn an_insertion_shifts_nothing_else() {
        let a = noise(1 << 20, 1);
        let mut b = a[..300_000].to_vec();
        b.extend(noise(10_000, 2));
        b.extend_from_slice(&a[300_000..]);
        let al = align(&a, &b, 4096);
        assert_eq!(apply(&a, &al.ops), b);
        // Only the chunks around the edit differ; the other megabyte lines up.
        assert!(
            total(&al, Change::Unchanged) > 1_000_000,
            "{:?}",
            &al.ranges
        );
        assert_eq!(total(&al, Change::Moved), 0);
        // The 10 KB inserted, plus at most the chunks cut around it.
        let new = total(&al, Change::Inserted) + total(&al, Change::Changed);
        assert!(
            (10_000..10_000 + 3 * 16_384).contains(&new),
            "{new}: {:?}",
            al.ranges
        );
    }

    #[test]
    fn moved_blocks_are_found_and_deletions_reported() {
        let a = noise(1 << 20, 3);
        // B: the last 200 KB moved to the front, and 100 KB in the middle deleted.
        let mut b = a[848_576..].to_vec();
        b.extend_from_slice(&a[..400_000]);
        b.extend_from_slice(&a[500_000..848_576]);
        let al = align(&a, &b, 4096);
        assert_eq!(apply(&a, &al.ops), b);
        assert!(total(&al, Change::Moved) > 150_000, "{:?}", al.ranges);
        // The deleted 100 KB, give or take the chunks at its edges; moved content is not
        // also reported as deleted from where it was.
        let deleted = total(&al, Change::Deleted);
        assert!(
            (80_000..130_000).contains(&deleted),
            "{deleted}: {:?}",
            al.ranges
        );
    }

    #[test]
    fn identical_and_empty_inputs() {
        let a = noise(100_000, 5);
        let al = align(&a, &a, 4096);
        assert_eq!(al.ranges.len(), 1);
        assert_eq!(al.ranges[0].kind, Change::Unchanged);
        assert_eq!(apply(&a, &al.ops), a);
        let al = align(&[], &a, 4096);
        assert_eq!(al.ranges[0].kind, Change::Inserted);
        assert_eq!(apply(&[], &al.ops), a);
        let al = align(&a, &[], 4096);
        assert_eq!(al.ranges[0].kind, Change::Deleted);
        assert!(apply(&a, &al.ops).is_empty());
    }

    #[test]
    fn a_small_edit_is_trimmed_to_the_bytes_that_differ() {
        let a = noise(200_000, 9);
        let mut b = a.clone();
        b[100_000..100_010].copy_from_slice(&[0; 10]);
        let al = align(&a, &b, 4096);
        assert_eq!(total(&al, Change::Changed), 10, "{:?}", al.ranges);
        assert_eq!(total(&al, Change::Unchanged), 200_000 - 10);
        assert_eq!(apply(&a, &al.ops), b);
    }

    #[test]
    fn a_changed_range_counts_only_the_bytes_that_differ() {
        let a = noise(200_000, 11);
        let mut b = a.clone();
        // Two one-byte edits 100 bytes apart: two changed ranges of one byte each (the 99
        // bytes between them are copied).
        b[100_000] ^= 0xff;
        b[100_100] ^= 0x01;
        let al = align(&a, &b, 4096);
        let changed: Vec<&DeltaRange> = al
            .ranges
            .iter()
            .filter(|r| r.kind == Change::Changed)
            .collect();
        assert_eq!(changed.len(), 2, "{:?}", al.ranges);
        assert_eq!(changed[0].b, Some((100_000, 100_001)));
        assert_eq!(changed[1].b, Some((100_100, 100_101)));
        assert_eq!(changed[0].differing_bytes, Some(1));
        assert_eq!(count_differing(&a, &b), 2);
        assert_eq!(count_differing(&a[..7], &b[..3]), 0);
    }

    #[test]
    fn the_heaviest_ascending_chain_stays_in_place() {
        // Three small copies ascend, one large copy breaks them: bytes decide, not counts.
        let copies = [(0, 10), (1000, 5000), (20, 10), (40, 10), (6000, 10)];
        assert_eq!(in_place(&copies), [true, true, false, false, true]);
        let copies = [(0, 10), (1000, 50), (20, 10), (40, 10), (6000, 10)];
        assert_eq!(in_place(&copies), [true, true, false, false, true]);
        let copies = [(0, 10), (1000, 5), (20, 10), (40, 10), (6000, 10)];
        assert_eq!(in_place(&copies), [true, false, true, true, true]);
    }

    /// A range as (kind, A range, B range).
    type Seen = (Change, Option<(u64, u64)>, Option<(u64, u64)>);

    /// The ranges other than unchanged ones.
    fn changes(al: &Alignment) -> Vec<Seen> {
        al.ranges
            .iter()
            .filter(|r| r.kind != Change::Unchanged)
            .map(|r| (r.kind, r.a, r.b))
            .collect()
    }

    #[test]
    fn reports_are_exact() {
        let n = 4 << 20;
        let a = noise(n, 11);
        // Every byte of an overwrite differs from A's, so no edge of it could be kept.
        let flipped = |r: std::ops::Range<usize>| a[r].iter().map(|x| !x).collect::<Vec<u8>>();
        let mut b = a.clone();
        b[1_000_000..1_004_096].copy_from_slice(&flipped(1_000_000..1_004_096));
        let al = align(&a, &b, 4096);
        assert_eq!(
            changes(&al),
            [(
                Change::Changed,
                Some((1_000_000, 1_004_096)),
                Some((1_000_000, 1_004_096))
            )]
        );
        assert_eq!(
            al.ranges
                .iter()
                .find(|r| r.kind == Change::Changed)
                .unwrap()
                .differing_bytes,
            Some(4096)
        );
        // A 12 KiB insertion is one inserted range.
        let mut c = a[..2_000_000].to_vec();
        c.extend(noise(12_288, 12).iter().map(|x| x | 1));
        c.extend_from_slice(&a[2_000_000..]);
        // (The inserted bytes' ends differ from A's bytes on both sides of the cut.)
        c[2_000_000] = !a[2_000_000];
        c[2_012_287] = !a[1_999_999];
        let al = align(&a, &c, 4096);
        assert_eq!(
            changes(&al),
            [(Change::Inserted, None, Some((2_000_000, 2_012_288)))]
        );
        // 100 KB deleted is one deleted range.
        let mut d = a[..3_000_000].to_vec();
        d.extend_from_slice(&a[3_100_000..]);
        let al = align(&a, &d, 4096);
        assert_eq!(
            changes(&al),
            [(Change::Deleted, Some((3_000_000, 3_100_000)), None)]
        );
        // 1 MiB moved from 1/8 to 7/8 is one move with both offsets, nothing deleted.
        let (from, len, to) = (n / 8, 1 << 20, n * 7 / 8);
        let mut e = a[..from].to_vec();
        e.extend_from_slice(&a[from + len..to]);
        e.extend_from_slice(&a[from..from + len]);
        e.extend_from_slice(&a[to..]);
        let al = align(&a, &e, 4096);
        let (from, len, to) = (from as u64, len as u64, to as u64);
        assert_eq!(
            changes(&al),
            [(
                Change::Moved,
                Some((from, from + len)),
                Some((to - len, to))
            )]
        );
    }
}
