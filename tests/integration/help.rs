//! Help as people read it: wrapped by clap at the terminal's width, options under headings,
//! `--backend` only where an engine runs, and the completion scripts and man pages.

use crate::harness::s;
use std::process::Command;

const COMMANDS: [&str; 18] = [
    "fold",
    "snapshot",
    "mem",
    "run",
    "daemon",
    "status",
    "analyze",
    "watch",
    "diff",
    "patch",
    "locate",
    "view",
    "unfold",
    "info",
    "preview",
    "completions",
    "man",
    "bench",
];

/// `foundry-gpu ARGS` with the terminal `columns` wide (clap reads COLUMNS off a terminal).
fn help_at(args: &[&str], columns: usize) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
        .args(args)
        .env("COLUMNS", columns.to_string())
        .output()
        .unwrap();
    assert!(o.status.success(), "{args:?}");
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn help_is_wrapped_by_clap_at_the_terminal_width_not_by_hand() {
    for columns in [80, 100, 140] {
        for command in COMMANDS {
            for flag in ["-h", "--help"] {
                let text = help_at(&[command, flag], columns);
                let lines: Vec<&str> = text.lines().collect();
                for line in &lines {
                    assert!(
                        line.chars().count() <= columns,
                        "{command} {flag} at {columns} columns: {line:?}"
                    );
                }
                // Prose starts at column 0; within a paragraph, a line is only broken where
                // the next word would not have fit (a hand-made break leaves a short line).
                for pair in lines.windows(2) {
                    let (line, next) = (pair[0], pair[1]);
                    let prose = |l: &str| !l.is_empty() && !l.starts_with(' ') && !l.ends_with(':');
                    if prose(line) && prose(next) {
                        let word = next.split(' ').next().unwrap_or_default();
                        assert!(
                            line.chars().count() + 1 + word.chars().count() > columns,
                            "{command} {flag} at {columns} columns: a hand-wrapped line {line:?} before {next:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn options_stand_under_headings_and_backend_only_where_an_engine_runs() {
    let fold = help_at(&["fold", "--help"], 100);
    for heading in ["Output:", "Preview:", "Tree:", "LLM:", "Watch:", "Engine:"] {
        assert!(
            fold.lines().any(|l| l == heading),
            "fold --help lacks {heading}\n{fold}"
        );
    }
    let under = |text: &str, heading: &str, option: &str| {
        let section = text
            .split(&format!("\n{heading}\n"))
            .nth(1)
            .unwrap_or_default();
        let section = section.split("\n\n\n").next().unwrap_or_default();
        let section: String = section
            .lines()
            .take_while(|l| l.is_empty() || l.starts_with(' '))
            .collect::<Vec<_>>()
            .join("\n");
        section.contains(option)
    };
    assert!(under(&fold, "Output:", "--sections"));
    assert!(under(&fold, "Tree:", "--max-files"));
    assert!(under(&fold, "LLM:", "--llm-url"));
    assert!(under(&fold, "Engine:", "--backend"));
    assert!(
        !under(&fold, "Options:", "--max-files"),
        "tree options under Options"
    );
    for engine in [
        "fold", "snapshot", "mem", "run", "daemon", "watch", "diff", "patch", "unfold", "info",
        "preview",
    ] {
        assert!(
            help_at(&[engine, "--help"], 100).contains("--backend"),
            "{engine}"
        );
    }
    for no_engine in ["status", "analyze", "completions", "man", "bench"] {
        let text = help_at(&[no_engine, "--help"], 100);
        assert!(!text.contains("--backend"), "{no_engine} offers --backend");
    }
    let refused = Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
        .args(["status", "--backend", "cpu"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
}

#[test]
fn completion_scripts_load_in_their_shells() {
    let dir = tempfile::tempdir().unwrap();
    let bash = dir.path().join("foundry-gpu.bash");
    let o = Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(o.status.success());
    std::fs::write(&bash, &o.stdout).unwrap();
    // bash itself sources the script and reports the completion it registered.
    let loaded = Command::new("bash")
        .args([
            "-c",
            &format!("source {} && complete -p foundry-gpu", s(&bash)),
        ])
        .output()
        .unwrap();
    let registered = String::from_utf8_lossy(&loaded.stdout);
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    assert!(registered.contains("foundry-gpu"), "{registered}");
    for (shell, marker) in [
        ("zsh", "#compdef foundry-gpu"),
        ("fish", "complete -c foundry-gpu"),
    ] {
        let script = help_at(&["completions", shell], 100);
        assert!(script.contains(marker), "{shell}");
        assert!(
            script.contains("snapshot"),
            "{shell} completes the commands"
        );
    }
}

#[test]
fn man_pages_for_the_tool_and_each_command() {
    let page = help_at(&["man"], 100);
    assert!(page.contains(".TH foundry-gpu 1"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    help_at(&["man", "-o", s(&out)], 100);
    let mut pages: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    assert_eq!(pages.len(), COMMANDS.len() + 1, "{pages:?}");
    let fold = std::fs::read_to_string(out.join("foundry-gpu-fold.1")).unwrap();
    assert!(fold.contains(".TH foundry-gpu-fold 1"), "{fold}");
    assert!(fold.contains("sections"), "the page holds the options");
}
