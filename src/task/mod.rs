//! FoundryTask files (formats.md §4): the typed model, read from JSON or YAML, with errors that
//! name the file, the line and column, and the field.

pub mod daemon;
pub mod run;
pub mod worker;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// `2026-12-04T10:15:00Z`: a Unix time (seconds) as people read it, in UTC; for the daemon's
/// lines, `status` and reports.
pub fn iso_time(unix_seconds: f64) -> String {
    let since_epoch =
        std::time::Duration::try_from_secs_f64(unix_seconds.max(0.0)).unwrap_or_default();
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + since_epoch).to_string()
}

/// A word or path written so `sh` reads it back as one argument: as it is when it is plain,
/// else in single quotes.
pub fn sh_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The seven task types of the original schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskType {
    #[serde(rename = "convert_binary")]
    ConvertBinary,
    #[serde(rename = "convert_directory")]
    ConvertDirectory,
    #[serde(rename = "watch_path")]
    WatchPath,
    #[serde(rename = "analyze_system")]
    AnalyzeSystem,
    #[serde(rename = "crystallize_system")]
    CrystallizeSystem,
    #[serde(rename = "foundry-v2")]
    FoundryV2,
    #[serde(rename = "scan_kernel_modules")]
    ScanKernelModules,
}

/// The schema's `ai_model` when a task names none.
pub const DEFAULT_AI_MODEL: &str = "glm-4-9b-0414";

fn default_texture_size() -> u32 {
    256
}

fn default_max_files() -> u64 {
    50
}

/// One task, as the historical files write it. Unknown fields are kept in `extra`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FoundryTask {
    pub task_id: String,
    #[serde(rename = "type")]
    pub kind: TaskType,
    /// Path to read; relative paths resolve against the task root.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Free text for the analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// The model the task names, if it names one; see [`FoundryTask::ai_model`].
    #[serde(default, rename = "ai_model", skip_serializing_if = "Option::is_none")]
    pub ai_model_named: Option<String>,
    #[serde(default = "default_texture_size")]
    pub texture_size: u32,
    #[serde(default = "default_max_files")]
    pub max_files: u64,
    #[serde(default)]
    pub auto_generated: bool,
    /// `crystallize_system`: the roots to fold (else `source`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// `crystallize_system`: a cap per root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_files_per_path: Option<u64>,
    /// Fields this version does not know, kept as written.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl FoundryTask {
    /// The model the task names; a blank `ai_model` names none (no server has a model
    /// called "").
    pub fn ai_model_given(&self) -> Option<&str> {
        self.ai_model_named
            .as_deref()
            .filter(|m| !m.trim().is_empty())
    }

    /// The task's `ai_model`, or the schema's default when it names none (or a blank one).
    pub fn ai_model(&self) -> &str {
        self.ai_model_given().unwrap_or(DEFAULT_AI_MODEL)
    }
}

/// Why a task file cannot be read: the file, where, which field, what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {}{message}", path.display(), field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct TaskError {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub field: Option<String>,
    pub message: String,
}

/// Where `key` is first written as a key in `text` (1-based line and column), for errors
/// found after the syntax was read.
fn locate_key(text: &str, key: &str) -> (usize, usize) {
    for (n, line) in text.lines().enumerate() {
        for pattern in [format!("\"{key}\""), format!("{key}:")] {
            if let Some(col) = line.find(&pattern) {
                let before = &line[..col];
                if before.trim().is_empty() || before.trim_end().ends_with([',', '{']) {
                    return (n + 1, col + 1);
                }
            }
        }
    }
    (1, 1)
}

/// serde's words, in the words of a task file.
fn rephrase(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        if let Some((value, expected)) = rest.split_once("`, expected one of ") {
            return format!(
                "unknown value \"{value}\", expected one of {}",
                expected.replace('`', "")
            );
        }
    }
    message.replace('`', "\"")
}

/// Whether a path names a YAML task (`.yaml`/`.yml`, even with `.done`-style suffixes).
pub fn is_yaml(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.contains(".yaml") || name.contains(".yml")
}

/// Parses a task from `text`, read from `path` (JSON, or YAML when the name says so).
pub fn parse_task(path: &Path, text: &str) -> Result<FoundryTask, TaskError> {
    let error = |line: usize, column: usize, field: Option<String>, message: String| TaskError {
        path: path.to_path_buf(),
        line,
        column,
        field,
        message,
    };
    let (depth, line) = nesting_estimate(text);
    if depth > MAX_SCANNED_NESTING {
        return Err(error(
            line,
            1,
            None,
            format!(
                "nested more than {MAX_SCANNED_NESTING} levels deep (by a scan before parsing); a task file nests at most {}",
                crate::policy::MAX_TASK_NESTING
            ),
        ));
    }
    let value: Value = if is_yaml(path) {
        serde_yaml_ng::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            error(line, column, None, format!("not valid YAML: {e}"))
        })?
    } else {
        serde_json::from_str(text)
            .map_err(|e| error(e.line(), e.column(), None, format!("not valid JSON: {e}")))?
    };
    let depth = nesting(&value);
    if depth > crate::policy::MAX_TASK_NESTING {
        return Err(error(
            1,
            1,
            None,
            format!(
                "nested {depth} levels deep; a task file nests at most {}",
                crate::policy::MAX_TASK_NESTING
            ),
        ));
    }
    if !value.is_object() {
        return Err(error(
            1,
            1,
            None,
            "a task must be an object of fields".into(),
        ));
    }
    check_numbers(&value).map_err(|(key, message)| {
        let (line, column) = locate_key(text, &key);
        error(line, column, Some(key), message)
    })?;
    serde_path_to_error::deserialize(&value).map_err(|e| {
        let field = e.path().to_string();
        let key = field.split(['.', '[']).next().unwrap_or("").to_string();
        let message = rephrase(&e.inner().to_string());
        // A missing field has no place of its own: point at the start of the task.
        let (line, column) = if key.is_empty() || key == "?" {
            (1, 1)
        } else {
            locate_key(text, &key)
        };
        let field = (!key.is_empty() && key != "?").then_some(field);
        error(line, column, field, message)
    })
}

/// The deepest a task file's text may look to [`nesting_estimate`] before it is refused without
/// being parsed: a parser recursing 100,000 levels deep takes tens of seconds to refuse what
/// this scan refuses in one pass. Well above [`crate::policy::MAX_TASK_NESTING`], which the
/// parsed value is held to, since the scan over-counts (block scalars, odd indentation).
pub const MAX_SCANNED_NESTING: usize = 64;

/// How deep `text` (JSON or YAML) may nest, never less than the truth, in one pass without
/// recursion, and the line where it is deepest: open `[`/`{` outside quotes and comments, plus
/// the block levels of YAML (the indentation stack, each `- ` counting as one more level).
pub fn nesting_estimate(text: &str) -> (usize, usize) {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let (mut deepest, mut deepest_line) = (0usize, 1usize);
    let mut quote: Option<char> = None;
    for (n, line) in text.lines().enumerate() {
        let body = line.trim_start_matches(' ');
        if flow == 0 && quote.is_none() && !body.is_empty() && !body.starts_with('#') {
            // Block structure: each `- ` opens one more level, at its own column.
            let mut column = line.len() - body.len();
            let mut rest = body;
            let mut columns = vec![column];
            while let Some(after) = rest.strip_prefix("- ") {
                let inner = after.trim_start_matches(' ');
                column += rest.len() - inner.len();
                rest = inner;
                if rest.is_empty() {
                    break;
                }
                columns.push(column);
            }
            while indents.last().is_some_and(|&top| top > columns[0]) {
                indents.pop();
            }
            for c in columns {
                if indents.last().is_none_or(|&top| top < c) {
                    indents.push(c);
                }
            }
        }
        let mut escaped = false;
        for c in line.chars() {
            match quote {
                Some(q) => {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' && q == '"' {
                        escaped = true;
                    } else if c == q {
                        quote = None;
                    }
                }
                None => match c {
                    '"' | '\'' => quote = Some(c),
                    '#' => break,
                    '[' | '{' => {
                        flow += 1;
                        if indents.len() + flow > deepest {
                            (deepest, deepest_line) = (indents.len() + flow, n + 1);
                        }
                    }
                    ']' | '}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
        }
        if indents.len() + flow > deepest {
            (deepest, deepest_line) = (indents.len() + flow, n + 1);
        }
    }
    (deepest, deepest_line)
}

/// The numbers a task gives for times and counts, each a whole number in a sane range: an
/// `interval_ms` of 2^64 is refused here, not left to overflow a duration in the daemon.
/// Returns the field and what is wrong.
fn check_numbers(value: &Value) -> std::result::Result<(), (String, String)> {
    const DAY_MS: u64 = 24 * 60 * 60 * 1000;
    const COUNT: u64 = 1_000_000_000;
    // Sides (`max_side`, `preview_side`) are held to the policy's max_texture_side when planned.
    let bounds: [(&str, u64, u64, &str); 6] = [
        ("interval_ms", 1, DAY_MS, " milliseconds (one day)"),
        ("max_cycles", 1, COUNT, ""),
        ("max_refolds", 0, COUNT, ""),
        ("max_files", 0, COUNT, ""),
        ("max_files_per_path", 0, COUNT, ""),
        ("max_bytes", 0, 1 << 50, " bytes"),
    ];
    for (key, least, most, unit) in bounds {
        let Some(given) = value.get(key) else {
            continue;
        };
        if !given.as_u64().is_some_and(|n| (least..=most).contains(&n)) {
            return Err((
                key.to_string(),
                format!("{given} is not a whole number from {least} to {most}{unit}"),
            ));
        }
    }
    if let (Some(interval), Some(cycles)) = (
        value.get("interval_ms").and_then(Value::as_u64),
        value.get("max_cycles").and_then(Value::as_u64),
    ) {
        const YEAR_MS: u64 = 366 * DAY_MS;
        if interval.saturating_mul(cycles) > YEAR_MS {
            return Err((
                "max_cycles".into(),
                format!("{cycles} cycles of {interval} ms last more than a year"),
            ));
        }
    }
    Ok(())
}

/// A task file as read from the descriptor it was opened as: its text, and who owns it (the
/// daemon runs a task with its owner's rights, [`worker`]).
#[derive(Clone, Debug)]
pub struct TaskFileText {
    pub text: String,
    pub owner_uid: u32,
    pub owner_gid: u32,
}

/// Reads the task file `name` in the open folder `folder` (shown as `shown` in errors): opened
/// once, the kernel refusing a symlink that leads out of the folder and any magic link, never
/// waiting on a FIFO; then judged on what was opened (a regular file of at most `max_bytes`)
/// and read from that descriptor. A symlink is taken only when its owner is the owner of the
/// file it leads to, so nobody can hand in another user's file as their task.
pub fn read_task_file_at(
    folder: BorrowedFd<'_>,
    name: &str,
    shown: &Path,
    max_bytes: u64,
) -> crate::Result<TaskFileText> {
    use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
    let refused = |rule: String| crate::Error::Policy {
        path: shown.to_path_buf(),
        rule,
    };
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let opened = match rustix::fs::openat2(folder, name, flags, Mode::empty(), resolve) {
        // Kernels before 5.6 have no openat2: open, then judge where it really is.
        Err(rustix::io::Errno::NOSYS) => rustix::fs::openat(folder, name, flags, Mode::empty())
            .and_then(|fd| {
                let real = |fd: BorrowedFd<'_>| {
                    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                        .map_err(|_| rustix::io::Errno::XDEV)
                };
                if real(fd.as_fd())?.starts_with(real(folder)?) {
                    Ok(fd)
                } else {
                    Err(rustix::io::Errno::XDEV)
                }
            }),
        other => other,
    };
    let file = match opened {
        Ok(fd) => std::fs::File::from(fd),
        Err(rustix::io::Errno::XDEV) => {
            return Err(refused(
                "task files: a symlink (or `..`) leading outside the task folder".into(),
            ))
        }
        Err(e) => return Err(crate::Error::io(shown, "read", e.into())),
    };
    let opened = rustix::fs::fstat(&file).map_err(|e| crate::Error::io(shown, "read", e.into()))?;
    let named = rustix::fs::statat(folder, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| crate::Error::io(shown, "read", e.into()))?;
    let is_link =
        rustix::fs::FileType::from_raw_mode(named.st_mode) == rustix::fs::FileType::Symlink;
    if is_link && named.st_uid != opened.st_uid {
        return Err(refused(format!(
            "task files: a symlink owned by uid {} to a file owned by uid {}",
            named.st_uid, opened.st_uid
        )));
    }
    if !is_link && (named.st_dev, named.st_ino) != (opened.st_dev, opened.st_ino) {
        return Err(crate::Error::malformed(
            shown,
            "was replaced while it was being opened",
        ));
    }
    read_opened_task(file, &opened, shown, max_bytes)
}

/// Judges an opened task file on its `fstat` and reads its text, at most `max_bytes`.
fn read_opened_task(
    file: std::fs::File,
    opened: &rustix::fs::Stat,
    shown: &Path,
    max_bytes: u64,
) -> crate::Result<TaskFileText> {
    use std::io::Read;
    if rustix::fs::FileType::from_raw_mode(opened.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(crate::Error::malformed(
            shown,
            "is not a regular file (task files are; a FIFO, device or folder is refused)",
        ));
    }
    if opened.st_size as u64 > max_bytes {
        return Err(crate::Error::Policy {
            path: shown.to_path_buf(),
            rule: format!("max_task_file_bytes: the file is larger than {max_bytes} bytes"),
        });
    }
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| crate::Error::io(shown, "read", e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(crate::Error::Policy {
            path: shown.to_path_buf(),
            rule: format!("max_task_file_bytes: the file is larger than {max_bytes} bytes"),
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        crate::Error::malformed(
            shown,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })?;
    Ok(TaskFileText {
        text,
        owner_uid: opened.st_uid,
        owner_gid: opened.st_gid,
    })
}

/// Reads the text of the task file at `path` (named `name` in errors): at most `max_bytes`,
/// and, when `folder` is given, opened beneath that folder ([`read_task_file_at`]); otherwise
/// (`run FILE`, the user's own file) following the user's symlinks, but never blocking.
fn read_task_text(
    path: &Path,
    name: &Path,
    folder: Option<&Path>,
    max_bytes: u64,
) -> crate::Result<TaskFileText> {
    use rustix::fs::{Mode, OFlags};
    if let Some(folder) = folder {
        let inside = path
            .strip_prefix(folder)
            .ok()
            .and_then(Path::to_str)
            .map(str::to_string)
            .ok_or_else(|| {
                crate::Error::Usage(format!(
                    "{}: not a name inside the task folder {}",
                    path.display(),
                    folder.display()
                ))
            })?;
        let dir = rustix::fs::open(
            folder,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| crate::Error::io(folder, "open folder", e.into()))?;
        return read_task_file_at(dir.as_fd(), &inside, name, max_bytes);
    }
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let file = rustix::fs::open(path, flags, Mode::empty())
        .map(std::fs::File::from)
        .map_err(|e| crate::Error::io(name, "read", e.into()))?;
    let opened = rustix::fs::fstat(&file).map_err(|e| crate::Error::io(name, "read", e.into()))?;
    read_opened_task(file, &opened, name, max_bytes)
}

/// How deeply objects and lists nest in `value` (a scalar is 0).
fn nesting(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

/// Reads and parses the task file at `path`, named `name` in errors (the daemon reads a claimed
/// file under its original name): at most `max_bytes` (the policy's `max_task_file_bytes`), and,
/// when `folder` is given, never through a symlink that resolves outside it. `run`, the daemon
/// and its `--dry-run` all read tasks here, so all obey the same limits.
pub fn read_task(
    path: &Path,
    name: &Path,
    folder: Option<&Path>,
    max_bytes: u64,
) -> crate::Result<FoundryTask> {
    let file = read_task_text(path, name, folder, max_bytes)?;
    Ok(parse_task(name, &file.text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> Result<FoundryTask, TaskError> {
        parse_task(Path::new(name), text)
    }

    #[test]
    fn times_and_quoting() {
        assert_eq!(iso_time(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(1_796_379_300.4), "2026-12-04T10:15:00Z");
        assert_eq!(sh_quote("out/a.brick"), "out/a.brick");
        assert_eq!(sh_quote("my file"), "'my file'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn defaults_and_unknown_fields() {
        let t = parse("a.task.json", r#"{"task_id": "t", "type": "crystallize_system", "source": "/", "paths": ["/bin"], "max_files_per_path": 10, "colour": "blue"}"#).unwrap();
        assert_eq!(t.kind, TaskType::CrystallizeSystem);
        assert_eq!(
            (t.texture_size, t.max_files, t.ai_model(), t.auto_generated),
            (256, 50, "glm-4-9b-0414", false)
        );
        assert_eq!(t.paths, ["/bin"]);
        assert_eq!(t.extra["colour"], "blue");
        let yaml = parse(
            "a.task.yaml",
            "task_id: t\ntype: foundry-v2\nsource: /etc\ntexture_size: 512\n",
        )
        .unwrap();
        assert_eq!((yaml.kind, yaml.texture_size), (TaskType::FoundryV2, 512));
    }

    #[test]
    fn nesting_is_estimated_never_below_the_truth() {
        assert_eq!(nesting_estimate("task_id: t\ntype: x\n").0, 1);
        assert_eq!(nesting_estimate("a:\n  b:\n    c: 1\nd: 2\n").0, 3);
        assert_eq!(nesting_estimate("a:\n- - - x\n").0, 4);
        // The line itself counts as a block level: one over, never under.
        assert_eq!(nesting_estimate(r#"{"a": [[{"b": "]]]"}]], "c": 1}"#).0, 5);
        assert_eq!(nesting_estimate("a: [1, 2] # [[[[\n").0, 2);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(nesting_estimate(&deep).0, 100_001);
        let e = parse("d.task.yaml", &format!("x: {deep}\n")).unwrap_err();
        assert!(e.message.contains("nested more than 64 levels"), "{e}");
        let stairs: String = (0..100)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert!(nesting_estimate(&stairs).0 >= 100);
        assert!(parse("s.task.yaml", &stairs).is_err());
    }

    #[test]
    fn times_and_counts_are_bounded() {
        let task = |extra: &str| {
            parse(
                "w.task.json",
                &format!(r#"{{"task_id": "t", "type": "watch_path", "source": "a"{extra}}}"#),
            )
        };
        assert!(task(r#", "interval_ms": 500, "max_cycles": 3"#).is_ok());
        for (extra, field) in [
            (r#", "interval_ms": 18446744073709551615"#, "interval_ms"),
            (r#", "interval_ms": 0"#, "interval_ms"),
            (r#", "interval_ms": "soon""#, "interval_ms"),
            (r#", "max_cycles": -1"#, "max_cycles"),
            (
                r#", "interval_ms": 86400000, "max_cycles": 1000"#,
                "max_cycles",
            ),
            (r#", "max_refolds": 1e30"#, "max_refolds"),
        ] {
            let e = task(extra).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{extra}: {e}");
            assert!(e.to_string().starts_with("w.task.json:"), "{e}");
        }
    }

    #[test]
    fn errors_name_line_column_and_field() {
        let text = "{\n  \"task_id\": \"t\",\n  \"type\": \"convert_binarry\",\n  \"source\": \"/bin/ls\"\n}";
        let e = parse("x.task.json", text).unwrap_err();
        assert_eq!((e.line, e.column), (3, 3));
        assert_eq!(e.field.as_deref(), Some("type"));
        assert!(e.to_string().starts_with("x.task.json:3:3: type: unknown value \"convert_binarry\", expected one of convert_binary,"), "{e}");
        let e = parse(
            "y.task.yaml",
            "task_id: t\ntype: convert_binary\nsource: a\ntexture_size: big\n",
        )
        .unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (4, Some("texture_size")));
        assert!(e.message.contains("invalid type"), "{e}");
        let e = parse(
            "z.task.json",
            r#"{"task_id": "t", "type": "convert_binary"}"#,
        )
        .unwrap_err();
        assert!(e.message.contains("missing field \"source\""), "{e}");
        let e = parse("s.task.json", "{\"task_id\": \"t\",\n  oops").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.starts_with("not valid JSON"));
        let e = parse("s.task.yaml", "task_id: [unclosed\n").unwrap_err();
        assert!(e.message.starts_with("not valid YAML"));
        let e = parse("n.task.json", r#"{"task_id": "t", "type": "convert_binary", "source": "a", "texture_size": 1099511627776}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("texture_size"));
    }
}
