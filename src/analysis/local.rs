//! Local analysis, always on and needing no server: file type by content, entropy regions with
//! abrupt changes, ELF facts and hardening, `.modinfo`, and a printable-strings summary.

use super::hardening::{hardening, Hardening};
use super::{byte_facts, entropy_of};
use crate::source::elf::ModInfo;
use object::{Object, ObjectSection, ObjectSegment};
use rayon::prelude::*;
use serde::Serialize;

/// Block size the entropy profile is measured in.
pub const ENTROPY_BLOCK: usize = 4096;

/// A run of blocks of one entropy class.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EntropyRegion {
    pub start: u64,
    pub end: u64,
    /// Mean entropy of the region, bits/byte.
    pub entropy: f64,
    /// `constant` (< 0.5: zero padding and fills), `high` (> 7.2: packed, compressed or
    /// encrypted), or `normal`.
    pub class: &'static str,
}

/// Printable ASCII runs of at least 6 characters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StringsSummary {
    pub count: usize,
    pub sample: Vec<String>,
    pub urls: Vec<String>,
    pub paths: Vec<String>,
    pub ip_like: Vec<String>,
}

/// ELF facts for the analysis.
#[derive(Clone, Debug, Serialize)]
pub struct ElfFacts {
    pub architecture: String,
    pub kind: String,
    pub entry: u64,
    pub sections: usize,
    pub segments: usize,
    pub hardening: Option<Hardening>,
    /// Sections of 4 KiB or more whose entropy is typical of packing (> 7.2).
    pub high_entropy_sections: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modinfo: Option<ModInfo>,
}

/// Everything the local analysis finds; deterministic for the same bytes.
#[derive(Clone, Debug, Serialize)]
pub struct LocalAnalysis {
    pub size: u64,
    pub sha256: String,
    pub entropy: f64,
    /// elf, script, text, compressed, image, unknown.
    pub file_type: &'static str,
    pub entropy_regions: Vec<EntropyRegion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elf: Option<ElfFacts>,
    pub strings: StringsSummary,
}

/// The file type, judged by content.
pub fn file_type(data: &[u8], utf8_text: bool) -> &'static str {
    const COMPRESSED: [&[u8]; 6] = [
        b"\x1f\x8b",
        b"\xfd7zXZ\x00",
        b"\x28\xb5\x2f\xfd",
        b"BZh",
        b"PK\x03\x04",
        b"7z\xbc\xaf",
    ];
    const IMAGES: [&[u8]; 4] = [b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"V2BR"];
    if crate::analysis::is_elf(data) {
        "elf"
    } else if data.starts_with(b"#!") {
        "script"
    } else if COMPRESSED.iter().any(|m| data.starts_with(m)) {
        "compressed"
    } else if IMAGES.iter().any(|m| data.starts_with(m)) {
        "image"
    } else if utf8_text {
        "text"
    } else {
        "unknown"
    }
}

fn class_of(entropy: f64) -> &'static str {
    if entropy < 0.5 {
        "constant"
    } else if entropy > 7.2 {
        "high"
    } else {
        "normal"
    }
}

/// Byte histogram of one block (at most [`ENTROPY_BLOCK`] bytes, so each count fits 16 bits).
fn block_histogram(block: &[u8]) -> [u16; 256] {
    let mut h = [0u16; 256];
    block.iter().for_each(|&b| h[b as usize] += 1);
    h
}

/// Entropy per block, merged into runs of one class: each boundary is an abrupt change.
pub fn entropy_regions(data: &[u8]) -> Vec<EntropyRegion> {
    let per_block: Vec<(f64, usize)> = data
        .par_chunks(ENTROPY_BLOCK)
        .map(|block| block_entropy(&block_histogram(block)))
        .collect();
    regions_of_blocks(&per_block)
}

/// A block's entropy and byte count, from its histogram.
fn block_entropy(histogram: &[u16; 256]) -> (f64, usize) {
    let len = histogram.iter().map(|&c| usize::from(c)).sum();
    (entropy_of(&histogram.map(u64::from)), len)
}

/// [`entropy_regions`] from each block's (entropy, byte count).
fn regions_of_blocks(per_block: &[(f64, usize)]) -> Vec<EntropyRegion> {
    let mut regions: Vec<(EntropyRegion, f64)> = Vec::new();
    for (i, &(e, len)) in per_block.iter().enumerate() {
        let start = (i * ENTROPY_BLOCK) as u64;
        let end = start + len as u64;
        match regions.last_mut() {
            Some((r, sum)) if r.class == class_of(e) => {
                r.end = end;
                *sum += e * len as f64;
            }
            _ => regions.push((
                EntropyRegion {
                    start,
                    end,
                    entropy: 0.0,
                    class: class_of(e),
                },
                e * len as f64,
            )),
        }
    }
    regions
        .into_iter()
        .map(|(mut r, sum)| {
            r.entropy = (sum / (r.end - r.start) as f64 * 1000.0).round() / 1000.0;
            r
        })
        .collect()
}

fn ip_like(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.parse::<u16>().is_ok_and(|n| n <= 255))
}

const SAMPLE_MAX: usize = 12;
const NOTABLE_MAX: usize = 20;
/// Strings are summarised in pieces of about this size, in parallel.
const STRINGS_PIECE: usize = 1 << 20;

fn printable(b: u8) -> bool {
    (0x20..0x7f).contains(&b)
}

/// Printable strings of `data`, summarised: pieces cut only at non-printable bytes (so no
/// string is split) are scanned in parallel and merged in order, so the result is the same
/// as one pass.
pub fn strings_summary(data: &[u8]) -> StringsSummary {
    let pieces: Vec<StringsSummary> = string_pieces(data)
        .par_windows(2)
        .map(|w| strings_in(&data[w[0]..w[1]]))
        .collect();
    merge_strings(pieces)
}

/// Where [`strings_summary`] cuts `data` into pieces: about every [`STRINGS_PIECE`] bytes, at
/// a non-printable byte. Starts with 0 and ends with the length.
fn string_pieces(data: &[u8]) -> Vec<usize> {
    let mut cuts = vec![0];
    while let Some(&last) = cuts.last() {
        let target = last + STRINGS_PIECE;
        if target >= data.len() {
            break;
        }
        let cut = data[target..]
            .iter()
            .position(|&b| !printable(b))
            .map_or(data.len(), |p| target + p);
        cuts.push(cut);
    }
    cuts.push(data.len());
    cuts
}

/// The pieces' summaries merged in order: the same as one pass over their bytes.
fn merge_strings(pieces: impl IntoIterator<Item = StringsSummary>) -> StringsSummary {
    let mut summary = StringsSummary::default();
    for piece in pieces {
        summary.count += piece.count;
        for (all, more, max) in [
            (&mut summary.sample, piece.sample, SAMPLE_MAX),
            (&mut summary.urls, piece.urls, NOTABLE_MAX),
            (&mut summary.paths, piece.paths, NOTABLE_MAX),
            (&mut summary.ip_like, piece.ip_like, NOTABLE_MAX),
        ] {
            let room = max.saturating_sub(all.len());
            all.extend(more.into_iter().take(room));
        }
    }
    summary
}

/// One piece's strings, one pass over the bytes: [`strings_by_mask`], compiled for AVX2 where
/// the CPU has it (1.45x faster again on 64 MiB of a real library).
fn strings_in(data: &[u8]) -> StringsSummary {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("bmi1")
        && std::arch::is_x86_feature_detected!("lzcnt")
    {
        // SAFETY: the CPU has AVX2, BMI1 and LZCNT, checked just above.
        return unsafe { strings_by_mask_avx2(data) };
    }
    strings_by_mask(data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,bmi1,lzcnt")]
fn strings_by_mask_avx2(data: &[u8]) -> StringsSummary {
    strings_by_mask(data)
}

/// Printable runs found 64 bytes at a time from a bit mask of which bytes are printable,
/// instead of a branch a byte (3x faster on a real library): a block that is all printable
/// continues the run; otherwise its first non-printable byte ends the run carried in, and of
/// the others only those with six printable bytes just before them can end a string (bit `z`
/// of `!mask & (six << 6)`, where `six` marks the starts of six printable bytes in a row).
#[inline(always)]
fn strings_by_mask(data: &[u8]) -> StringsSummary {
    let mut summary = StringsSummary::default();
    // Where the run of printable bytes being read began.
    let mut start = 0;
    let (blocks, tail) = data.as_chunks::<64>();
    for (k, block) in blocks.iter().enumerate() {
        let base = k * 64;
        let mut mask = 0u64;
        for (i, &b) in block.iter().enumerate() {
            mask |= u64::from(printable(b)) << i;
        }
        if mask == u64::MAX {
            continue;
        }
        let stops = !mask;
        let first = stops.trailing_zeros() as usize;
        take_string(&mut summary, &data[start..base + first]);
        let six = mask & (mask >> 1) & (mask >> 2) & (mask >> 3) & (mask >> 4) & (mask >> 5);
        let mut closing = stops & (six << 6) & !(1u64 << first);
        while closing != 0 {
            let stop = closing.trailing_zeros() as usize;
            closing &= closing - 1;
            // A stop below this one exists: `first` is.
            let begun = 64 - (stops & ((1u64 << stop) - 1)).leading_zeros() as usize;
            take_string(&mut summary, &data[base + begun..base + stop]);
        }
        start = base + 64 - stops.leading_zeros() as usize;
    }
    let tail_base = data.len() - tail.len();
    for (i, &b) in tail.iter().enumerate() {
        if !printable(b) {
            take_string(&mut summary, &data[start..tail_base + i]);
            start = tail_base + i + 1;
        }
    }
    take_string(&mut summary, &data[start..]);
    summary
}

/// Counts `run`, a whole run of printable bytes, as a string if it is one (six bytes or more),
/// and keeps it as a sample, URL, path or IP-like word while there is room.
fn take_string(summary: &mut StringsSummary, run: &[u8]) {
    if run.len() < 6 {
        return;
    }
    summary.count += 1;
    if summary.sample.len() < SAMPLE_MAX {
        summary
            .sample
            .push(String::from_utf8_lossy(&run[..run.len().min(80)]).into_owned());
    }
    // URLs and paths hold a '/', IP-like strings a '.': most strings have neither and need no
    // closer look.
    if !run.iter().any(|&b| b == b'/' || b == b'.') {
        return;
    }
    let s = std::str::from_utf8(run).expect("printable ASCII is UTF-8");
    for word in s.split_whitespace() {
        let word = word.trim_matches(|c: char| "\"'(),;<>".contains(c));
        if word.contains("://") && summary.urls.len() < NOTABLE_MAX {
            summary.urls.push(word.to_string());
        } else if word.starts_with('/')
            && word[1..].contains('/')
            && summary.paths.len() < NOTABLE_MAX
        {
            summary.paths.push(word.to_string());
        } else if ip_like(word) && summary.ip_like.len() < NOTABLE_MAX {
            summary.ip_like.push(word.to_string());
        }
    }
}

/// The run-by-run reading [`strings_by_mask`] replaces: a branch a byte. Kept as the reference
/// the tests compare it with.
#[cfg(test)]
fn strings_byte_by_byte(data: &[u8]) -> StringsSummary {
    let mut summary = StringsSummary::default();
    let mut start = 0;
    for (i, &b) in data.iter().chain(std::iter::once(&0u8)).enumerate() {
        if !printable(b) {
            take_string(&mut summary, &data[start..i]);
            start = i + 1;
        }
    }
    summary
}

fn elf_facts(data: &[u8]) -> Option<ElfFacts> {
    let file = object::File::parse(data).ok()?;
    let high_entropy_sections = file
        .sections()
        .filter_map(|s| {
            let bytes = s.data().ok()?;
            (bytes.len() >= 4096 && super::shannon_entropy(bytes) > 7.2)
                .then(|| s.name().unwrap_or("?").to_string())
        })
        .collect();
    let modinfo = file
        .section_by_name(".modinfo")
        .and_then(|s| s.data().ok())
        .map(crate::source::elf::parse_modinfo);
    Some(ElfFacts {
        architecture: format!("{:?}", file.architecture()),
        kind: format!("{:?}", file.kind()),
        entry: file.entry(),
        sections: file.sections().count(),
        segments: file.segments().filter(|s| s.size() > 0).count(),
        hardening: hardening(data),
        high_entropy_sections,
        modinfo,
    })
}

/// Runs every local check on `data`.
pub fn analyze(data: &[u8]) -> LocalAnalysis {
    analyze_with_facts(data).0
}

/// [`analyze`], also handing back the byte facts it computed (SHA-256, entropy), so a fold
/// need not hash the same bytes twice.
pub fn analyze_with_facts(data: &[u8]) -> (LocalAnalysis, crate::analysis::ByteFacts) {
    let facts = byte_facts(data);
    let analysis = assemble(data, &facts, entropy_regions(data), strings_summary(data));
    (analysis, facts)
}

/// [`analyze`] of `data` whose entropy regions ([`entropy_regions`]) are already known.
pub fn analyze_with_entropy_regions(
    data: &[u8],
    entropy_regions: Vec<EntropyRegion>,
) -> LocalAnalysis {
    let (facts, strings) = rayon::join(|| byte_facts(data), || strings_summary(data));
    assemble(data, &facts, entropy_regions, strings)
}

/// The analysis of `data` from its byte facts, entropy regions and strings summary.
fn assemble(
    data: &[u8],
    facts: &crate::analysis::ByteFacts,
    entropy_regions: Vec<EntropyRegion>,
    strings: StringsSummary,
) -> LocalAnalysis {
    LocalAnalysis {
        size: facts.size,
        sha256: facts.sha256_hex(),
        entropy: (facts.entropy * 1000.0).round() / 1000.0,
        file_type: file_type(data, facts.utf8_text),
        entropy_regions,
        elf: facts.elf.then(|| elf_facts(data)).flatten(),
        strings,
    }
}

/// What an analysis keeps so that the analysis of an edited version redoes only the blocks and
/// strings pieces that hold changed bytes (watch mode): each block's byte histogram (512 bytes
/// per 4 KiB) and each strings piece's summary.
#[derive(Default)]
pub struct KeptAnalysis {
    blocks: Vec<[u16; 256]>,
    /// Each block's (entropy, byte count).
    entropies: Vec<(f64, usize)>,
    pieces: Vec<(std::ops::Range<usize>, StringsSummary)>,
}

/// [`analyze_with_facts`], reusing `kept` from the analysis of an earlier version when
/// `changed` gives the byte ranges that differ from it (as [`crate::fold::changed_pages`]
/// finds them, the stretch past the shorter version included). The result is the same as a
/// fresh analysis; `kept` is refilled for the next call.
pub fn analyze_reusing(
    data: &[u8],
    changed: Option<&[std::ops::Range<usize>]>,
    kept: &mut KeptAnalysis,
) -> (LocalAnalysis, crate::analysis::ByteFacts) {
    // A range ending where a change starts counts as touched: a version that shrank has its
    // tail change start at its new end, inside its last (now shorter) block.
    let touches = |range: &std::ops::Range<usize>| {
        changed.is_none_or(|c| {
            c.iter()
                .any(|d| d.start <= range.end && range.start < d.end)
        })
    };
    let block_count = data.len().div_ceil(ENTROPY_BLOCK);
    kept.blocks.resize(block_count, [0; 256]);
    kept.entropies.resize(block_count, (0.0, 0));
    kept.blocks
        .par_iter_mut()
        .zip(kept.entropies.par_iter_mut())
        .enumerate()
        .for_each(|(i, (histogram, entropy))| {
            let range = i * ENTROPY_BLOCK..((i + 1) * ENTROPY_BLOCK).min(data.len());
            if touches(&range) {
                *histogram = block_histogram(&data[range]);
                *entropy = block_entropy(histogram);
            }
        });
    let cuts = string_pieces(data);
    let previous = std::mem::take(&mut kept.pieces);
    kept.pieces = cuts
        .par_windows(2)
        .map(|w| {
            let range = w[0]..w[1];
            let unchanged = (!touches(&range))
                .then(|| previous.iter().find(|(r, _)| *r == range))
                .flatten();
            let summary = match unchanged {
                Some((_, summary)) => summary.clone(),
                None => strings_in(&data[range.clone()]),
            };
            (range, summary)
        })
        .collect();
    let mut whole = [0u64; 256];
    for block in &kept.blocks {
        whole
            .iter_mut()
            .zip(block)
            .for_each(|(w, &c)| *w += u64::from(c));
    }
    let (sha256, utf8_text) = rayon::join(
        || crate::analysis::sha256(data),
        || crate::analysis::is_utf8_text(data),
    );
    let facts = crate::analysis::ByteFacts {
        size: data.len() as u64,
        sha256,
        entropy: entropy_of(&whole),
        utf8_text,
        elf: crate::analysis::is_elf(data),
    };
    let analysis = assemble(
        data,
        &facts,
        regions_of_blocks(&kept.entropies),
        merge_strings(kept.pieces.iter().map(|(_, s)| s.clone())),
    );
    (analysis, facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One edit of a test's bytes.
    type Edit = dyn Fn(&mut Vec<u8>);

    #[test]
    fn an_analysis_reusing_the_last_one_matches_a_fresh_one() {
        // 3 MiB: three strings pieces, 768 blocks; text with random and zero stretches.
        let mut x = 1u32;
        let text = b"see http://example.org/a and /usr/lib/x at 10.0.0.1 ok ";
        let mut data: Vec<u8> = (0..3usize << 20)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                match (i / 70_000) % 3 {
                    0 => (x >> 16) as u8,
                    1 => text[i % text.len()],
                    _ => 0,
                }
            })
            .collect();
        let as_json = |(a, f): (LocalAnalysis, crate::analysis::ByteFacts)| {
            (
                serde_json::to_value(a).unwrap(),
                f.sha256,
                f.entropy.to_bits(),
                f.utf8_text,
            )
        };
        let mut kept = KeptAnalysis::default();
        assert_eq!(
            as_json(analyze_reusing(&data, None, &mut kept)),
            as_json(analyze_with_facts(&data))
        );
        let edits: [&Edit; 6] = [
            // A non-printable byte inside text: one string becomes two.
            &|d| d[70_000 + 500] = 0,
            // Text written over random bytes, across a piece's usual cut.
            &|d| d[(1 << 20) - 100..(1 << 20) + 4000].fill(b'z'),
            &|d| d[2_000_000..2_004_096].fill(0xFF),
            &|d| d.truncate(3_000_001),
            &|d| d.extend(b"grown by a tail of text /etc/passwd".repeat(300)),
            &|d| d.truncate((1 << 20) + 3),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let previous = data.clone();
            edit(&mut data);
            let changed = crate::fold::changed_pages(&previous, &data, 4096);
            assert_eq!(
                as_json(analyze_reusing(&data, Some(&changed), &mut kept)),
                as_json(analyze_with_facts(&data)),
                "edit {i}"
            );
        }
        // The comparison can fail: told nothing changed, a reused analysis is stale.
        let previous = data.clone();
        data[5000..9096].fill(b'q');
        let mut stale = KeptAnalysis::default();
        analyze_reusing(&previous, None, &mut stale);
        assert_ne!(
            as_json(analyze_reusing(&data, Some(&[]), &mut stale)).0,
            as_json(analyze_with_facts(&data)).0
        );
    }

    #[test]
    fn regions_find_abrupt_changes() {
        let mut data = vec![0u8; 8192];
        let mut x = 1u32;
        data.extend((0..8192).map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        }));
        data.extend(b"plain text here. ".repeat(500));
        let r = entropy_regions(&data);
        assert_eq!(
            r.iter().map(|r| r.class).collect::<Vec<_>>(),
            ["constant", "high", "normal"]
        );
        assert_eq!((r[1].start, r[1].end), (8192, 16384));
    }

    #[test]
    fn strings_found_by_mask_are_those_found_byte_by_byte() {
        // Runs of every length from 0 to 140 around 64-byte block edges, stops of every kind,
        // a last block cut short, and a run that ends the data.
        let mut random = crate::diff::align::tests::noise(1 << 16, 7)
            .into_iter()
            .cycle();
        let mut next = move || u64::from_le_bytes(std::array::from_fn(|_| random.next().unwrap()));
        for trial in 0..400 {
            let len = trial * 7 % 900;
            let mut data: Vec<u8> = (0..len)
                .map(|_| match next() % 9 {
                    0 => 0,
                    1 => 0x7f,
                    2 => 0x1f,
                    3 => 0xff,
                    4 => b'/',
                    5 => b'.',
                    _ => b'a' + (next() % 26) as u8,
                })
                .collect();
            if trial % 3 == 0 {
                let at = (next() as usize) % (data.len() + 1);
                let run = (next() % 141) as usize;
                data.splice(at..at, std::iter::repeat_n(b'x', run));
            }
            let (by_mask, by_byte) = (strings_by_mask(&data), strings_byte_by_byte(&data));
            assert_eq!(by_mask.count, by_byte.count, "trial {trial}");
            assert_eq!(by_mask.sample, by_byte.sample, "trial {trial}");
            assert_eq!(strings_in(&data).count, by_byte.count, "trial {trial}");
        }
        // A real-looking mix, long: the same summary both ways, and not a trivial one.
        let text = b"GLIBC_2.34 /usr/lib/x86_64 http://example.org/a 10.1.2.3 \x01\x02ab\x00";
        let data = text.repeat(5000);
        let (by_mask, by_byte) = (strings_by_mask(&data), strings_byte_by_byte(&data));
        assert_eq!(by_mask.count, 5000);
        assert_eq!(
            (by_mask.sample, by_mask.urls, by_mask.paths, by_mask.ip_like),
            (by_byte.sample, by_byte.urls, by_byte.paths, by_byte.ip_like)
        );
    }

    #[test]
    fn strings_in_pieces_match_one_pass() {
        let mut data = Vec::new();
        for i in 0..300_000u32 {
            data.extend(
                format!(
                    "word{i} http://h{i}.example/x /usr/lib/{i}/a 10.0.{}.{}",
                    i % 256,
                    i % 7
                )
                .bytes(),
            );
            data.push((i % 5) as u8);
        }
        assert!(data.len() > 3 * STRINGS_PIECE);
        let whole = strings_in(&data);
        let merged = strings_summary(&data);
        assert_eq!(merged.count, whole.count);
        assert_eq!(merged.sample, whole.sample);
        assert_eq!(
            (merged.urls, merged.paths, merged.ip_like),
            (whole.urls, whole.paths, whole.ip_like)
        );
    }

    #[test]
    fn types_and_strings() {
        assert_eq!(file_type(b"#!/bin/sh\n", true), "script");
        assert_eq!(file_type(b"\x1f\x8b\x08", false), "compressed");
        assert_eq!(file_type(b"\x89PNG\r\n", false), "image");
        assert_eq!(file_type(b"hello", true), "text");
        let s = strings_summary(
            b"\x00see https://example.org/x and /etc/passwd at 10.0.0.1 ok\x00ab\x00",
        );
        assert_eq!(s.count, 1);
        assert_eq!(s.urls, ["https://example.org/x"]);
        assert_eq!(s.paths, ["/etc/passwd"]);
        assert_eq!(s.ip_like, ["10.0.0.1"]);
    }
}
