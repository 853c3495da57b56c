//! The `semantic` metadata a brick carries: a compact digest of the local analysis with its own
//! warnings and risk, plus the language model's summary, tags, risk and warnings when one answered,
//! or the reason it did not.

use crate::analysis::local::LocalAnalysis;
use crate::llm::LlmOutcome;
use serde_json::{json, Value};

/// Characters of `description` the map shows.
pub const MAP_DESCRIPTION_CHARS: usize = 40;

/// What a local warning is about; its severity follows from the kind, not from its wording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarningKind {
    WritableExecutable,
    ExecutableStack,
    Rpath,
    NoRelro,
    NoCanary,
    Packed,
    UnlicensedModule,
    HighEntropyData,
}

impl WarningKind {
    /// W+X memory and packed code are what malware and exploits look like; the rest are
    /// weaker hardening.
    pub fn severity(self) -> &'static str {
        match self {
            WarningKind::WritableExecutable | WarningKind::Packed => "high",
            _ => "medium",
        }
    }
}

/// One finding of the local checks, with its text for people and the prompt.
#[derive(Clone, Debug)]
pub struct LocalWarning {
    pub kind: WarningKind,
    pub text: String,
}

/// Findings of the local checks a reviewer would want flagged, most serious first.
pub fn local_warnings(a: &LocalAnalysis) -> Vec<LocalWarning> {
    let mut w = Vec::new();
    let mut push = |kind, text: String| w.push(LocalWarning { kind, text });
    if let Some(elf) = &a.elf {
        if let Some(h) = &elf.hardening {
            if !h.wx_segments.is_empty() {
                push(
                    WarningKind::WritableExecutable,
                    format!(
                        "{} segment(s) both writable and executable",
                        h.wx_segments.len()
                    ),
                );
            }
            if !h.nx {
                push(
                    WarningKind::ExecutableStack,
                    "executable stack (no NX)".into(),
                );
            }
            if h.rpath.is_some() || h.runpath.is_some() {
                push(
                    WarningKind::Rpath,
                    "RPATH/RUNPATH set: library search can be redirected".into(),
                );
            }
            let executable_kind = elf.kind == "Executable" || elf.kind == "Dynamic";
            if executable_kind && h.relro == "none" {
                push(WarningKind::NoRelro, "no RELRO".into());
            }
            if executable_kind && !h.stack_canary && !h.stripped && elf.modinfo.is_none() {
                push(WarningKind::NoCanary, "no stack canary".into());
            }
        }
        if !elf.high_entropy_sections.is_empty() {
            push(
                WarningKind::Packed,
                format!(
                    "packed-looking sections: {}",
                    elf.high_entropy_sections.join(", ")
                ),
            );
        }
        if let Some(m) = &elf.modinfo {
            if m.license.is_none() {
                push(
                    WarningKind::UnlicensedModule,
                    "kernel module without a license (taints the kernel)".into(),
                );
            }
        }
    }
    let high: u64 = a
        .entropy_regions
        .iter()
        .filter(|r| r.class == "high")
        .map(|r| r.end - r.start)
        .sum();
    if a.file_type == "elf" && high >= 16 * 1024 {
        push(
            WarningKind::HighEntropyData,
            format!(
                "{} of high-entropy data inside an executable",
                crate::fold::human_bytes(high)
            ),
        );
    }
    w
}

/// `low`, `medium` or `high`, from the local warnings alone.
pub fn local_risk(warnings: &[LocalWarning]) -> &'static str {
    if warnings.iter().any(|w| w.kind.severity() == "high") {
        "high"
    } else if warnings.is_empty() {
        "low"
    } else {
        "medium"
    }
}

/// The local analysis cut down to what fits in a PNG text chunk.
pub fn analysis_digest(a: &LocalAnalysis) -> Value {
    let warnings = local_warnings(a);
    let mut d = json!({
        "file_type": a.file_type,
        "entropy": a.entropy,
        "entropy_regions": {
            "high": a.entropy_regions.iter().filter(|r| r.class == "high").count(),
            "constant": a.entropy_regions.iter().filter(|r| r.class == "constant").count(),
        },
        "strings": {"count": a.strings.count, "urls": a.strings.urls.iter().take(3).collect::<Vec<_>>(),
                    "paths": a.strings.paths.iter().take(3).collect::<Vec<_>>(),
                    "ip_like": a.strings.ip_like.iter().take(3).collect::<Vec<_>>()},
        "risk": local_risk(&warnings),
        "warnings": warnings.iter().map(|w| &w.text).collect::<Vec<_>>(),
    });
    if let Some(elf) = &a.elf {
        let mut e = json!({"architecture": elf.architecture, "kind": elf.kind, "entry": elf.entry});
        if let Some(h) = &elf.hardening {
            e["hardening"] = json!({"relro": h.relro, "canary": h.stack_canary, "nx": h.nx, "pie": h.pie,
                "fortify": h.fortify, "stripped": h.stripped, "wx_segments": h.wx_segments.len()});
            e["libraries"] = json!(h.libraries.iter().take(8).collect::<Vec<_>>());
        }
        if let Some(m) = &elf.modinfo {
            e["modinfo"] = json!({"name": m.name, "license": m.license, "vermagic": m.vermagic});
        }
        d["elf"] = e;
    }
    d
}

/// `semantic` for a brick: the local digest, the model's answer (or why there is none), and
/// when it was made.
pub fn semantic_json(analysis: &LocalAnalysis, llm: Option<&LlmOutcome>) -> Value {
    // Local analysis is a function of the bytes, so without an answer the metadata carries no
    // time and the same file folds to the same bytes; an answer keeps the time it was made.
    let mut s = json!({"analysis": analysis_digest(analysis)});
    match llm {
        None => s["llm"] = json!({"status": "off", "reason": "not requested (use --llm)"}),
        Some(outcome) => {
            s["llm"] = serde_json::to_value(outcome).expect("outcome serialises");
            if let Some(answer) = &outcome.answer {
                if let Some(t) = outcome.generated_at {
                    s["generated_at"] = json!((t * 1000.0).round() / 1000.0);
                }
                s["model"] = json!(outcome.model);
                s["summary"] = json!(answer.summary);
                s["tags"] = json!(answer.tags);
                s["risk"] = json!(answer.risk);
                s["warnings"] = json!(answer.warnings);
            }
        }
    }
    s
}

/// The map's `description`: the model's summary cut at a word boundary to what the map shows,
/// or `fallback` when there is no summary.
pub fn description(llm: Option<&LlmOutcome>, fallback: &str) -> String {
    let Some(summary) = llm
        .and_then(|o| o.answer.as_ref())
        .map(|a| a.summary.trim())
        .filter(|s| !s.is_empty())
    else {
        return fallback.to_string();
    };
    let sentence = summary.split(". ").next().unwrap_or(summary);
    if sentence.chars().count() <= MAP_DESCRIPTION_CHARS {
        return sentence.trim_end_matches('.').to_string();
    }
    let mut cut = String::new();
    for word in sentence.split_whitespace() {
        if cut.chars().count() + word.chars().count() + 1 > MAP_DESCRIPTION_CHARS - 3 {
            break;
        }
        if !cut.is_empty() {
            cut.push(' ');
        }
        cut.push_str(word);
    }
    if cut.is_empty() {
        cut = sentence.chars().take(MAP_DESCRIPTION_CHARS - 3).collect();
    }
    format!("{cut}...")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::Answer;

    fn outcome(summary: &str) -> LlmOutcome {
        LlmOutcome {
            status: "answered",
            error: None,
            reason: None,
            server: "http://x".into(),
            requested_model: Some("m".into()),
            model: Some("m".into()),
            generated_at: Some(1.0),
            answer: Some(Answer {
                summary: summary.into(),
                tags: vec![],
                risk: "low".into(),
                warnings: vec![],
            }),
            requests: 1,
            prompt_tokens_estimated: None,
            prompt_budget_tokens: None,
            digest_omitted: vec![],
            redacted: Default::default(),
            seconds: 0.0,
        }
    }

    #[test]
    fn descriptions_fit_the_map() {
        assert_eq!(description(None, "data, 1 KiB"), "data, 1 KiB");
        assert_eq!(
            description(Some(&outcome("A small tool. It lists.")), "f"),
            "A small tool"
        );
        let long = description(
            Some(&outcome(
                "The GNU coreutils directory listing program with colour support",
            )),
            "f",
        );
        assert!(long.chars().count() <= MAP_DESCRIPTION_CHARS, "{long}");
        assert!(long.ends_with("...") && long.starts_with("The GNU coreutils"));
    }
}
