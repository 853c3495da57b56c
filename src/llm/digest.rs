//! The prompt: local analysis first, then a budgeted digest of the artifact (section table,
//! symbols, strings, short hex windows), cut to fit the model's context with the cuts marked.

use super::redact::{self, add_counts, Counts};
use crate::analysis::local::LocalAnalysis;
use object::{Object, ObjectSection, ObjectSymbol};

/// Bumped whenever the prompt's wording or digest changes; part of the cache key.
pub const PROMPT_VERSION: u32 = 2;

/// Instructions sent as the system message.
pub const SYSTEM_PROMPT: &str = "You describe one file from a Linux system for a visual map of \
the system. Use only the facts given. Answer with one JSON object: summary (one or two plain \
sentences: what the file is and does), tags (up to 8 short lowercase words), risk (low, medium, \
high or critical: how much a security reviewer should worry), warnings (short concerns, may be \
empty).";

/// Binary material is token-dense: about 1.2 characters per token for hex, 1.6 for strings,
/// symbols and tables (measured on LM Studio's tokenizers; see docs).
const CHARS_PER_TOKEN_HEX: f64 = 1.2;
const CHARS_PER_TOKEN_TEXT: f64 = 1.6;
const HEX_WINDOW: usize = 48;

/// A prompt that fits its budget.
#[derive(Clone, Debug)]
pub struct Digest {
    pub text: String,
    pub estimated_tokens: usize,
    /// What was left out, e.g. `"sections: 12 of 30 omitted"`.
    pub omitted: Vec<String>,
    /// Secrets replaced before the text leaves the machine, by kind ([`super::redact`]).
    pub redacted: std::collections::BTreeMap<&'static str, u64>,
}

/// Token estimate for one line of the given kind.
pub fn estimate_tokens(line: &str, hex: bool) -> usize {
    let per = if hex {
        CHARS_PER_TOKEN_HEX
    } else {
        CHARS_PER_TOKEN_TEXT
    };
    ((line.len() + 1) as f64 / per).ceil() as usize
}

struct Builder {
    text: String,
    used: usize,
    budget: usize,
    omitted: Vec<String>,
    redacted: Counts,
}

impl Builder {
    /// Adds text `lines` under `heading`, secrets redacted, while they fit.
    fn group(&mut self, heading: &str, lines: &[String]) {
        if lines.is_empty() {
            return;
        }
        // One pass over the group: a secret may span lines (a key block).
        let (text, counts) = redact::redact(&lines.join("\n"));
        add_counts(&mut self.redacted, &counts);
        let lines: Vec<String> = text.split('\n').map(String::from).collect();
        self.group_redacted(heading, &lines, false);
    }

    /// Adds `lines`, already redacted, under `heading` while they fit; the rest are counted
    /// as omitted.
    fn group_redacted(&mut self, heading: &str, lines: &[String], hex: bool) {
        if lines.is_empty() {
            return;
        }
        let head_cost = estimate_tokens(heading, false);
        if self.used + head_cost > self.budget {
            self.omitted.push(format!(
                "{heading} {} of {} omitted",
                lines.len(),
                lines.len()
            ));
            return;
        }
        let mut taken = 0;
        let mut body = String::new();
        let mut cost = head_cost;
        // Room for the truncation mark, so marking a cut never breaks the budget.
        let mark_cost = estimate_tokens(
            &format!("  [truncated: {heading} 99999 of 99999 omitted]"),
            false,
        );
        for (i, line) in lines.iter().enumerate() {
            let c = estimate_tokens(line, hex) + 1;
            let reserve = if i + 1 < lines.len() { mark_cost } else { 0 };
            if self.used + cost + c + reserve > self.budget {
                break;
            }
            cost += c;
            body.push_str("  ");
            body.push_str(line);
            body.push('\n');
            taken += 1;
        }
        if taken == 0 {
            self.omitted.push(format!(
                "{heading} {} of {} omitted",
                lines.len(),
                lines.len()
            ));
            return;
        }
        self.text.push_str(heading);
        self.text.push('\n');
        self.text.push_str(&body);
        self.used += cost;
        if taken < lines.len() {
            let note = format!(
                "{heading} {} of {} omitted",
                lines.len() - taken,
                lines.len()
            );
            self.text.push_str(&format!("  [truncated: {note}]\n"));
            self.used += mark_cost;
            self.omitted.push(note);
        }
    }
}

/// Builds the user message for `name` within `budget_tokens`.
pub fn build(
    name: &str,
    data: &[u8],
    analysis: &LocalAnalysis,
    intent: Option<&str>,
    budget_tokens: usize,
) -> Digest {
    let mut b = Builder {
        text: String::new(),
        used: 0,
        budget: budget_tokens,
        omitted: Vec::new(),
        redacted: Counts::new(),
    };
    let mut overview = vec![
        format!("name: {name}"),
        format!(
            "size: {} bytes; type: {}; entropy {:.2} bits/byte",
            analysis.size, analysis.file_type, analysis.entropy
        ),
    ];
    if let Some(intent) = intent {
        overview.push(format!("why it is being mapped: {intent}"));
    }
    if let Some(elf) = &analysis.elf {
        overview.push(format!(
            "ELF {} {}, entry 0x{:x}, {} sections, {} segments",
            elf.architecture, elf.kind, elf.entry, elf.sections, elf.segments
        ));
        if let Some(h) = &elf.hardening {
            overview.push(format!("hardening: {}", h.summary()));
            if !h.wx_segments.is_empty() {
                overview.push(format!(
                    "writable and executable segments: {:?}",
                    h.wx_segments
                ));
            }
            if let Some(r) = h.rpath.as_ref().or(h.runpath.as_ref()) {
                overview.push(format!("RPATH/RUNPATH: {r}"));
            }
        }
        if !elf.high_entropy_sections.is_empty() {
            overview.push(format!(
                "sections with packed-looking entropy: {}",
                elf.high_entropy_sections.join(", ")
            ));
        }
        if let Some(m) = &elf.modinfo {
            overview.push(format!(
                "kernel module {}: license {}, {}",
                m.name.as_deref().unwrap_or("?"),
                m.license.as_deref().unwrap_or("none"),
                m.description.as_deref().unwrap_or("no description")
            ));
        }
    }
    for warning in crate::semantic::local_warnings(analysis) {
        overview.push(format!("local check: {}", warning.text));
    }
    b.group("Facts:", &overview);

    let regions: Vec<String> = analysis
        .entropy_regions
        .iter()
        .filter(|r| r.class != "normal")
        .map(|r| {
            format!(
                "0x{:x}-0x{:x} {} (entropy {:.2})",
                r.start, r.end, r.class, r.entropy
            )
        })
        .collect();
    b.group("Entropy regions that stand out:", &regions);

    let parsed = analysis
        .elf
        .is_some()
        .then(|| object::File::parse(data).ok())
        .flatten();
    if let Some(file) = &parsed {
        let sections: Vec<String> = file
            .sections()
            .filter(|s| s.size() > 0)
            .map(|s| {
                format!(
                    "{} size {} at 0x{:x}",
                    s.name().unwrap_or("?"),
                    s.size(),
                    s.address()
                )
            })
            .collect();
        b.group("Sections:", &sections);
    }
    if let Some(h) = analysis.elf.as_ref().and_then(|e| e.hardening.as_ref()) {
        let mut imports: Vec<String> = h.libraries.iter().map(|l| format!("library {l}")).collect();
        imports.extend(h.imported_sample.iter().cloned());
        b.group("Imports:", &imports);
    }
    if let Some(file) = &parsed {
        let mut exports: Vec<String> = file
            .dynamic_symbols()
            .chain(file.symbols())
            .filter(|s| s.is_definition() && s.is_global())
            .filter_map(|s| s.name().ok().filter(|n| !n.is_empty()).map(String::from))
            .collect();
        exports.sort();
        exports.dedup();
        b.group("Defined symbols:", &exports);
    }
    let s = &analysis.strings;
    let mut notable: Vec<String> = s.urls.iter().map(|u| format!("url {u}")).collect();
    notable.extend(s.paths.iter().map(|p| format!("path {p}")));
    notable.extend(s.ip_like.iter().map(|p| format!("address {p}")));
    b.group("Notable strings:", &notable);
    // Strings and windows come from the same bytes: a secret both show is counted once.
    let mut tally = redact::Tally::default();
    let sample = sample_lines(data, &s.sample, &mut tally);
    b.group_redacted(
        &format!("Strings ({} in all), a sample:", s.count),
        &sample,
        false,
    );
    let windows = hex_windows(data, analysis, parsed.as_ref(), &mut tally);
    add_counts(&mut b.redacted, &tally.counts);
    b.group_redacted("Hex windows:", &windows, true);
    Digest {
        estimated_tokens: b.used,
        text: b.text,
        omitted: b.omitted,
        redacted: b.redacted,
    }
}

/// The sampled strings, each redacted where it lies in `data`: judged with the bytes around
/// it (a `password=` or PEM header before it) and in full (the sample keeps only a string's
/// first 80 bytes, which may end inside a secret).
fn sample_lines(data: &[u8], sample: &[String], tally: &mut redact::Tally) -> Vec<String> {
    let printable = |b: &u8| (0x20..0x7f).contains(b);
    let mut cursor = 0;
    sample
        .iter()
        .map(|string| {
            let needle = string.as_bytes();
            // The samples are the first strings in order: each lies after the last one's run.
            let at = (!needle.is_empty() && cursor <= data.len())
                .then(|| {
                    data[cursor..]
                        .windows(needle.len())
                        .position(|w| w == needle)
                        .map(|p| cursor + p)
                })
                .flatten();
            match at {
                Some(at) => {
                    cursor = at + data[at..].iter().take_while(|b| printable(b)).count();
                    redact::redact_bytes(data, at..at + needle.len(), tally)
                }
                // Not in the bytes (it should be): judged alone.
                None => {
                    let (line, found) = redact::redact(string);
                    add_counts(&mut tally.counts, &found);
                    line
                }
            }
        })
        .collect()
}

/// Short hex windows: the file start, the entry point, and the start of each region whose
/// entropy stands out. Secret bytes in a window (judged as text with the bytes around it) are
/// replaced by `*` (hex `2a`) before encoding, and the line says so.
fn hex_windows(
    data: &[u8],
    analysis: &LocalAnalysis,
    elf: Option<&object::File>,
    tally: &mut redact::Tally,
) -> Vec<String> {
    let mut starts: Vec<(String, usize)> = vec![("start".into(), 0)];
    if let Some(file) = elf {
        let entry = file.entry();
        // A crafted file can put a section anywhere in the address space: no sum may overflow.
        let offset = file.sections().find_map(|s| {
            let (addr, size) = (s.address(), s.size());
            let (file_offset, _) = s.file_range()?;
            let inside = entry >= addr && entry - addr < size;
            inside
                .then(|| file_offset.checked_add(entry - addr))
                .flatten()
                .and_then(|o| usize::try_from(o).ok())
        });
        if let Some(o) = offset {
            starts.push(("entry".into(), o));
        }
    }
    for r in analysis
        .entropy_regions
        .iter()
        .filter(|r| r.class == "high")
    {
        starts.push(("high region".into(), r.start as usize));
    }
    starts
        .into_iter()
        .filter(|(_, o)| *o < data.len())
        .map(|(label, o)| {
            let end = (o + HEX_WINDOW).min(data.len());
            let bytes = redact::blank_bytes(data, o..end, tally);
            let note = if bytes[..] == data[o..end] {
                ""
            } else {
                " (secret bytes redacted as 2a)"
            };
            format!("{label} @0x{o:x}: {}{note}", hex::encode(bytes))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::local::analyze;

    #[test]
    fn the_digest_keeps_to_its_budget_and_marks_cuts() {
        let mut data = b"\x00".repeat(100);
        for i in 0..400 {
            data.extend(format!(" string number {i} /usr/lib/x{i}/y\x00").bytes());
        }
        let analysis = analyze(&data);
        let big = build("x", &data, &analysis, Some("testing"), 100_000);
        assert!(big.omitted.is_empty(), "{:?}", big.omitted);
        let small = build("x", &data, &analysis, Some("testing"), 300);
        assert!(small.estimated_tokens <= 300);
        assert!(!small.omitted.is_empty());
        assert!(small.text.contains("[truncated:"), "{}", small.text);
        assert!(small.text.contains("why it is being mapped: testing"));
        // The whole text, costed at the denser text rate, stays within the budget.
        assert!(small.text.len() as f64 / CHARS_PER_TOKEN_TEXT <= 300.0);
    }
}
