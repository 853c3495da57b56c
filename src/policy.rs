//! The policy task-driven work obeys (`[policy]` in `foundry.toml`, or `--policy FILE`): which
//! sources may be read, which are denied whatever else allows them, where outputs may land,
//! how much a task may read, whether process memory may be read, and which LLM hosts may be
//! asked. Anyone who can write the task folder can drop a task, so the defaults are narrow.
//!
//! Paths are judged twice, as written (made absolute and normalised without touching the file
//! system) and as resolved (`canonicalize`, every symlink followed): a denial of either wins,
//! and only the resolved path counts for being inside an allowed root, so a symlink cannot
//! carry a task out of what it may read.

use crate::error::{Error, Result};
use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use std::path::{Component, Path, PathBuf};

/// Read-only system roots a task may read by default, besides its own task folder.
pub const DEFAULT_ALLOWED_ROOTS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/opt", "/boot", "/proc", "/sys",
];

/// Paths (and everything below them) denied by default. `~` is the daemon user's home.
pub const DEFAULT_DENIED: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/ssh/ssh_host_*_key",
    "/etc/ssl/private",
    "/root",
    "~/.ssh",
    "**/.ssh",
    "**/.gnupg",
    "**/id_rsa",
    "**/id_dsa",
    "**/id_ecdsa",
    "**/id_ed25519",
    "**/id_ecdsa_sk",
    "**/id_ed25519_sk",
    "**/*.key",
    "**/*.p12",
    "**/*.pfx",
    // `**`: a thread's files (`/proc/PID/task/TID/...`) expose the same as its process's.
    "/proc/**/environ",
    "/proc/kcore",
    "/dev/mem",
    "/dev/kmem",
    "/dev/port",
];

/// Paths that expose another process's memory (or one of its threads', below `task/TID`);
/// denied to tasks unless `process_memory_for_tasks = true`.
pub const PROCESS_MEMORY_PATHS: &[&str] =
    &["/proc/**/mem", "/proc/**/map_files", "/proc/**/pagemap"];

/// Default limits on what one task may do.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 4 << 30;
pub const DEFAULT_MAX_TASK_BYTES: u64 = 16 << 30;
pub const DEFAULT_MAX_FILES_PER_TASK: u64 = 200_000;
pub const DEFAULT_MAX_TEXTURE_SIDE: u32 = 16_384;
/// Task files are a few hundred bytes; a megabyte is already absurd.
pub const DEFAULT_MAX_TASK_FILE_BYTES: u64 = 1 << 20;
/// Objects and lists nested deeper than this in a task file are refused.
pub const MAX_TASK_NESTING: usize = 16;

/// The `[policy]` table of `foundry.toml` (or a `--policy` file holding one); every key optional.
#[derive(Clone, Debug, Default, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// Source roots allowed in addition to the defaults and the task folder.
    #[serde(default)]
    pub allow: Vec<String>,
    /// When set, replaces [`DEFAULT_ALLOWED_ROOTS`] (the task folder stays allowed).
    pub allow_only: Option<Vec<String>>,
    /// Patterns denied in addition to [`DEFAULT_DENIED`].
    #[serde(default)]
    pub deny: Vec<String>,
    /// Default denials to lift, each written exactly as in [`DEFAULT_DENIED`].
    #[serde(default)]
    pub undeny: Vec<String>,
    /// Every task output (and every publish) must stay below this; default: the `--output` root.
    pub output_root: Option<PathBuf>,
    pub max_file_bytes: Option<u64>,
    pub max_task_bytes: Option<u64>,
    pub max_files_per_task: Option<u64>,
    pub max_texture_side: Option<u32>,
    pub max_task_file_bytes: Option<u64>,
    /// May tasks read process memory (`/proc/PID/mem` and friends)? Default false.
    pub process_memory_for_tasks: Option<bool>,
    /// May the interactive `mem` command read process memory? Default true.
    pub process_memory_interactive: Option<bool>,
    /// LLM hosts other than loopback that may be asked (exact host names or addresses).
    #[serde(default)]
    pub llm_hosts: Vec<String>,
    /// May a publish copy tiles of sources others cannot read (no o+r) or of process memory
    /// into the builder root? Default false (as `--publish-private`).
    pub publish_private: Option<bool>,
}

/// A file holding only a policy: `[policy]` or the keys at top level.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    policy: PolicySettings,
}

/// Reads a `--policy` file: a `[policy]` table, or its keys at top level. The file's shape is
/// decided first, so a misspelled key is reported as itself (with its line), not as the
/// other shape's "unknown field `policy`".
pub fn read_settings(path: &Path) -> Result<PolicySettings> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "read", e))?;
    let bad = |e: toml::de::Error| Error::malformed(path, e.to_string().trim_end().to_string());
    let table: toml::Table = toml::from_str(&text).map_err(bad)?;
    if table.contains_key("policy") {
        toml::from_str::<PolicyFile>(&text)
            .map(|file| file.policy)
            .map_err(bad)
    } else {
        toml::from_str::<PolicySettings>(&text).map_err(bad)
    }
}

/// The deny rules: the patterns as written, and one set matching them all in a pass (a walk
/// asks for every file and each of its folders).
#[derive(Clone, Debug)]
struct DenyRules {
    patterns: Vec<String>,
    set: GlobSet,
}

/// Limits on one task.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Limits {
    pub max_file_bytes: u64,
    pub max_task_bytes: u64,
    pub max_files_per_task: u64,
    pub max_texture_side: u32,
    pub max_task_file_bytes: u64,
}

/// The policy in force, with every path made absolute.
#[derive(Clone, Debug)]
pub struct Policy {
    allowed_roots: Vec<PathBuf>,
    deny: DenyRules,
    /// Resolved output root; every destination must resolve below it.
    pub output_root: PathBuf,
    pub limits: Limits,
    pub process_memory_for_tasks: bool,
    pub process_memory_interactive: bool,
    pub llm_hosts: Vec<String>,
    /// The settings it was made from (a daemon hands them to the tasks it runs as their owners).
    pub settings: PolicySettings,
}

/// Why a path was refused: the rule, in the words of the policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub rule: String,
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

fn expand_home(pattern: &str) -> Option<String> {
    match pattern.strip_prefix("~/") {
        Some(rest) => home().map(|h| format!("{}/{rest}", h.to_string_lossy())),
        None => Some(pattern.to_string()),
    }
}

/// `path` made absolute against `base` (itself against the working folder when relative),
/// `.` and `..` resolved by name only.
pub fn lexical_absolute(base: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else if base.is_absolute() {
        base.join(path)
    } else {
        // Never judged as if it began at `/`: a working folder that cannot be read gives a
        // path below no allowed root, so the judgement fails closed.
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/nonexistent-working-folder"))
            .join(base)
            .join(path)
    };
    let mut out = PathBuf::from("/");
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// `path` made absolute against the working folder, `.` and `..` resolved by name only. A
/// relative path fails when the working folder cannot be read (it was deleted): guessing one
/// could widen what a policy allows or where writes may land.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(lexical_absolute(Path::new("/"), path));
    }
    let cwd = std::env::current_dir().map_err(|e| Error::io(".", "read", e))?;
    Ok(lexical_absolute(&cwd, path))
}

/// The resolved form of `path`, or of its nearest existing ancestor with the rest appended
/// (an output that does not exist yet resolves through the folders that do).
pub fn resolve_existing(path: &Path) -> PathBuf {
    let mut missing = Vec::new();
    let mut at = path.to_path_buf();
    loop {
        if let Ok(real) = at.canonicalize() {
            return missing.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (at.file_name().map(|n| n.to_os_string()), at.parent()) {
            (Some(name), Some(parent)) => {
                missing.push(name);
                at = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

impl Policy {
    /// The policy from `settings`, for tasks from `task_root` writing under `output_root`.
    pub fn new(settings: &PolicySettings, task_root: &Path, output_root: &Path) -> Result<Self> {
        let mut allowed: Vec<PathBuf> = match &settings.allow_only {
            Some(list) => list.iter().map(PathBuf::from).collect(),
            None => DEFAULT_ALLOWED_ROOTS.iter().map(PathBuf::from).collect(),
        };
        allowed.extend(settings.allow.iter().map(PathBuf::from));
        allowed.push(task_root.to_path_buf());
        let allowed_roots = allowed
            .iter()
            .filter_map(|p| expand_home(&p.to_string_lossy()))
            .map(|p| absolute(Path::new(&p)).map(|a| resolve_existing(&a)))
            .collect::<Result<Vec<_>>>()?;
        for lifted in &settings.undeny {
            if !DEFAULT_DENIED.contains(&lifted.as_str()) {
                return Err(Error::Usage(format!(
                    "policy undeny {lifted:?} is not one of the default denials ({})",
                    DEFAULT_DENIED.join(", ")
                )));
            }
        }
        let process_memory_for_tasks = settings.process_memory_for_tasks.unwrap_or(false);
        let mut patterns: Vec<&str> = DEFAULT_DENIED
            .iter()
            .copied()
            .filter(|d| !settings.undeny.iter().any(|u| u == d))
            .collect();
        if !process_memory_for_tasks {
            patterns.extend(PROCESS_MEMORY_PATHS);
        }
        patterns.extend(settings.deny.iter().map(String::as_str));
        let mut kept = Vec::new();
        let mut set = GlobSetBuilder::new();
        for pattern in patterns {
            let Some(expanded) = expand_home(pattern) else {
                continue; // `~/...` with no home: nothing to deny there.
            };
            set.add(
                GlobBuilder::new(&expanded)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| Error::Usage(format!("policy deny {pattern:?}: {e}")))?,
            );
            kept.push(pattern.to_string());
        }
        let deny = DenyRules {
            set: set
                .build()
                .map_err(|e| Error::Usage(format!("policy deny: {e}")))?,
            patterns: kept,
        };
        let output_root = resolve_existing(&absolute(
            settings.output_root.as_deref().unwrap_or(output_root),
        )?);
        let limits = Limits {
            max_file_bytes: settings.max_file_bytes.unwrap_or(DEFAULT_MAX_FILE_BYTES),
            max_task_bytes: settings.max_task_bytes.unwrap_or(DEFAULT_MAX_TASK_BYTES),
            max_files_per_task: settings
                .max_files_per_task
                .unwrap_or(DEFAULT_MAX_FILES_PER_TASK),
            max_texture_side: settings
                .max_texture_side
                .unwrap_or(DEFAULT_MAX_TEXTURE_SIDE),
            max_task_file_bytes: settings
                .max_task_file_bytes
                .unwrap_or(DEFAULT_MAX_TASK_FILE_BYTES),
        };
        Ok(Policy {
            allowed_roots,
            deny,
            output_root,
            limits,
            process_memory_for_tasks,
            process_memory_interactive: settings.process_memory_interactive.unwrap_or(true),
            llm_hosts: settings.llm_hosts.clone(),
            settings: settings.clone(),
        })
    }

    /// The deny rule that matches `path` or one of its ancestors.
    pub fn denied(&self, path: &Path) -> Option<Refusal> {
        path.ancestors().find_map(|p| {
            // Nearly every path a walk asks about is allowed: `is_match` settles those without
            // listing the matching rules, which allocates.
            let candidate = Candidate::new(p);
            if !self.deny.set.is_match_candidate(&candidate) {
                return None;
            }
            let first = self
                .deny
                .set
                .matches_candidate(&candidate)
                .into_iter()
                .min()?;
            Some(Refusal {
                rule: format!("deny {:?}", self.deny.patterns[first]),
            })
        })
    }

    /// Whether a task may read `path` (absolute or relative to `base`): not denied as written
    /// or as resolved, and resolved inside an allowed root.
    pub fn check_source(&self, base: &Path, path: &Path) -> std::result::Result<(), Refusal> {
        let written = lexical_absolute(base, path);
        let resolved = resolve_existing(&written);
        if let Some(refusal) = self.denied(&written).or_else(|| self.denied(&resolved)) {
            return Err(refusal);
        }
        if self
            .allowed_roots
            .iter()
            .any(|root| resolved.starts_with(root))
        {
            Ok(())
        } else {
            Err(Refusal {
                rule: format!(
                    "allow: {} is not below an allowed root ({})",
                    resolved.display(),
                    self.allowed_roots
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        }
    }

    /// Whether a task may write `path`: resolved (through every existing folder and symlink)
    /// below the output root.
    pub fn check_destination(&self, path: &Path) -> std::result::Result<PathBuf, Refusal> {
        let written = absolute(path).map_err(|e| Refusal {
            rule: format!("output_root: {e}"),
        })?;
        let resolved = resolve_existing(&written);
        if resolved.starts_with(&self.output_root) {
            Ok(resolved)
        } else {
            Err(Refusal {
                rule: format!(
                    "output_root: {} resolves outside {}",
                    resolved.display(),
                    self.output_root.display()
                ),
            })
        }
    }
}

/// Task work reads only what this policy allows, judged on the real path of what was opened
/// (`source::confine`): no deny rule matches it, and it lies below an allowed root.
impl crate::source::confine::ReadJudge for Policy {
    fn judge(&self, real: &Path) -> std::result::Result<(), String> {
        if let Some(refusal) = self.denied(real) {
            return Err(refusal.rule);
        }
        if self.allowed_roots.iter().any(|root| real.starts_with(root)) {
            Ok(())
        } else {
            Err(format!(
                "allow: {} is not below an allowed root",
                real.display()
            ))
        }
    }
}

/// Whether `host` is loopback: `localhost` and `*.localhost`, `127.0.0.0/8`, `::1` (also as
/// `::ffff:127.x.y.z`). `0.0.0.0` and `::` are not: they mean "any address".
fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Whether `host` is the policy's `llm_hosts` entry `entry` (a name, any case, trailing dot or
/// not; or an address, IPv6 with or without brackets).
fn host_is_entry(host: &url::Host<&str>, entry: &str) -> bool {
    let entry = entry.trim();
    match host {
        url::Host::Domain(name) => name
            .trim_end_matches('.')
            .eq_ignore_ascii_case(entry.trim_end_matches('.')),
        url::Host::Ipv4(ip) => entry.parse::<std::net::Ipv4Addr>().is_ok_and(|e| e == *ip),
        url::Host::Ipv6(ip) => entry
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|e| e == *ip),
    }
}

/// Whether the client may send digests to `url`, judged on the URL exactly as the HTTP client
/// parsed it: http(s) only, no user name or password, and a host that is loopback or one of
/// `allowed`.
pub fn check_llm_host(url: &reqwest::Url, allowed: &[String]) -> std::result::Result<(), Refusal> {
    let refuse = |why: String| Err(Refusal { rule: why });
    if !matches!(url.scheme(), "http" | "https") {
        return refuse(format!("llm_url: scheme {:?} is not http", url.scheme()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return refuse(
            "llm_url: a user name or password in the URL is refused (put a token in LM_API_TOKEN)"
                .into(),
        );
    }
    let Some(host) = url.host() else {
        return refuse("llm_url: the URL names no host".into());
    };
    if is_loopback_host(&host) || allowed.iter().any(|a| host_is_entry(&host, a)) {
        Ok(())
    } else {
        refuse(format!(
            "llm_hosts: \"{host}\" is not loopback and not in the policy's llm_hosts"
        ))
    }
}

/// Output file mode for a source with `source_mode`: what the source hid stays hidden.
/// The owner may read and write; the group and others may read exactly when they may read
/// the source (`0644`, `0640`, `0604` or `0600`). Nothing is ever executable.
pub fn output_mode(source_mode: u32) -> u32 {
    0o600 | (source_mode & 0o044)
}

/// The group of the file at `path`, for outputs that keep their source's group.
pub fn output_group_of(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.gid())
}

/// [`output_mode`] of the file at `path`; `0600` when it cannot be read (gone, or hidden).
pub fn output_mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0o600, |m| output_mode(m.mode()))
}

impl Refusal {
    /// The error a refused task fails with.
    pub fn into_error(self, path: &Path) -> Error {
        Error::Policy {
            path: path.to_path_buf(),
            rule: self.rule,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(settings: PolicySettings, task_root: &Path, out: &Path) -> Policy {
        Policy::new(&settings, task_root, out).unwrap()
    }

    #[test]
    fn denials_win_over_allowed_roots_and_cover_what_lies_below() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(PolicySettings::default(), dir.path(), dir.path());
        let root = Path::new("/");
        assert!(p.check_source(root, Path::new("/etc/passwd")).is_ok());
        let shadow = p.check_source(root, Path::new("/etc/shadow")).unwrap_err();
        assert_eq!(shadow.rule, "deny \"/etc/shadow\"");
        assert!(p
            .check_source(root, Path::new("/etc/../etc/gshadow"))
            .is_err());
        assert!(p.check_source(root, Path::new("/proc/1/environ")).is_err());
        assert!(p.check_source(root, Path::new("/proc/self/mem")).is_err());
        assert!(p.check_source(root, Path::new("/proc/kcore")).is_err());
        assert!(p.check_source(root, Path::new("/root/notes.txt")).is_err());
        let key = dir.path().join("site.key");
        assert!(p
            .check_source(root, &key)
            .unwrap_err()
            .rule
            .contains("*.key"));
        let ssh = dir.path().join("home/u/.ssh/config");
        assert!(p.check_source(root, &ssh).is_err());
        assert!(
            p.check_source(root, Path::new("/home")).is_err(),
            "not allowed"
        );
        assert!(p.check_source(dir.path(), Path::new("data.bin")).is_ok());
    }

    #[test]
    fn process_memory_and_environments_are_denied_for_threads_too() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(PolicySettings::default(), dir.path(), dir.path());
        let root = Path::new("/");
        for name in ["mem", "environ", "pagemap", "map_files/7f00-7f01"] {
            for process in [
                "/proc/1",
                "/proc/self",
                "/proc/1/task/1",
                "/proc/self/task/42",
            ] {
                let path = format!("{process}/{name}");
                assert!(p.check_source(root, Path::new(&path)).is_err(), "{path}");
            }
        }
        assert!(p.check_source(root, Path::new("/proc/1/maps")).is_ok());
        assert!(p
            .check_source(root, Path::new("/proc/1/task/1/maps"))
            .is_ok());
        let memory_allowed = PolicySettings {
            process_memory_for_tasks: Some(true),
            ..Default::default()
        };
        let p = policy(memory_allowed, dir.path(), dir.path());
        assert!(p
            .check_source(root, Path::new("/proc/1/task/1/mem"))
            .is_ok());
        assert!(p
            .check_source(root, Path::new("/proc/1/task/1/environ"))
            .is_err());
        let environ_lifted = PolicySettings {
            undeny: vec!["/proc/**/environ".into()],
            ..Default::default()
        };
        let p = policy(environ_lifted, dir.path(), dir.path());
        assert!(p
            .check_source(root, Path::new("/proc/1/task/1/environ"))
            .is_ok());
        let old_spelling = PolicySettings {
            undeny: vec!["/proc/*/environ".into()],
            ..Default::default()
        };
        assert!(Policy::new(&old_spelling, dir.path(), dir.path()).is_err());
    }

    #[test]
    fn a_symlink_out_of_the_allowed_roots_is_judged_by_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = dir.path().join("tasks");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&tasks).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), tasks.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", tasks.join("shadow")).unwrap();
        let p = policy(PolicySettings::default(), &tasks, dir.path());
        assert!(p
            .check_source(&tasks, Path::new("link"))
            .unwrap_err()
            .rule
            .starts_with("allow:"));
        assert!(p
            .check_source(&tasks, Path::new("shadow"))
            .unwrap_err()
            .rule
            .contains("shadow"));
    }

    #[test]
    fn settings_widen_and_narrow() {
        let dir = tempfile::tempdir().unwrap();
        let settings = PolicySettings {
            allow: vec!["/home".into()],
            undeny: vec!["/etc/shadow".into()],
            deny: vec!["/etc/hostname".into()],
            process_memory_for_tasks: Some(true),
            ..Default::default()
        };
        let p = policy(settings, dir.path(), dir.path());
        let root = Path::new("/");
        assert!(p.check_source(root, Path::new("/home/x")).is_ok());
        assert!(p.check_source(root, Path::new("/etc/shadow")).is_ok());
        assert!(p.check_source(root, Path::new("/etc/gshadow")).is_err());
        assert!(p.check_source(root, Path::new("/etc/hostname")).is_err());
        assert!(p.check_source(root, Path::new("/proc/self/mem")).is_ok());
        let typo = PolicySettings {
            undeny: vec!["/etc/shadw".into()],
            ..Default::default()
        };
        assert!(Policy::new(&typo, dir.path(), dir.path()).is_err());
    }

    #[test]
    fn paths_are_made_absolute_against_the_working_folder_by_name() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            absolute(Path::new("/a/./b/../c")).unwrap(),
            Path::new("/a/c")
        );
        assert_eq!(absolute(Path::new("x/./y")).unwrap(), cwd.join("x/y"));
        assert_eq!(
            absolute(Path::new("x/../../y")).unwrap(),
            cwd.parent().unwrap_or(&cwd).join("y")
        );
    }

    #[test]
    fn destinations_resolve_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        std::os::unix::fs::symlink("/tmp", out.join("escape")).unwrap();
        let p = policy(PolicySettings::default(), dir.path(), &out);
        assert!(p.check_destination(&out.join("task/x.brick")).is_ok());
        assert!(p.check_destination(&out.join("../x.brick")).is_err());
        assert!(p.check_destination(&out.join("escape/x.brick")).is_err());
        assert!(p.check_destination(Path::new("/etc/x")).is_err());
    }

    #[test]
    fn a_policy_file_error_names_the_file_and_the_misspelled_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        let read = |text: &str| {
            std::fs::write(&path, text).unwrap();
            read_settings(&path)
        };
        let table = read("[policy]\nmax_file_bytes = 10\n").unwrap();
        assert_eq!(table.max_file_bytes, Some(10));
        let top_level = read("max_file_bytes = 20\n").unwrap();
        assert_eq!(top_level.max_file_bytes, Some(20));
        for text in ["[policy]\nalow = [\"/srv\"]\n", "alow = [\"/srv\"]\n"] {
            let error = read(text).unwrap_err().to_string();
            assert!(
                error.contains(&path.display().to_string()) && error.contains("alow"),
                "{text:?}: {error}"
            );
            assert!(!error.contains("unknown field `policy`"), "{error}");
        }
        let beside = read("[policy]\nmax_file_bytes = 10\n[llm]\nmodel = \"m\"\n")
            .unwrap_err()
            .to_string();
        assert!(beside.contains("llm"), "{beside}");
    }

    fn check(url: &str, allowed: &[&str]) -> std::result::Result<(), Refusal> {
        let url = reqwest::Url::parse(url).unwrap();
        let allowed: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        check_llm_host(&url, &allowed)
    }

    #[test]
    fn llm_hosts_are_loopback_unless_listed() {
        for ok in [
            "http://127.0.0.1:1234",
            "http://localhost:1234",
            "http://LOCALHOST:1234",
            "http://localhost.:1234",
            "http://lm.localhost:1234",
            "http://[::1]:8080/v1",
            "http://127.8.9.10",
            "http://127.0.0.1.:1234",
            // The url crate reads decimal and octal forms: these are 127.0.0.1.
            "http://2130706433:1234",
            "http://0177.0.0.1:1234",
            "http://[::ffff:127.0.0.1]:1234",
        ] {
            assert!(check(ok, &[]).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.5:1234",
            "http://example.com",
            "http://localhost.evil.com",
            "http://127.0.0.1.evil.com",
            "http://0.0.0.0:1234",
            "http://[::]:1234",
            "http://[::ffff:10.0.0.1]",
            "http://user@192.168.1.2:1234",
            "http://user:pw@127.0.0.1:1234",
            "http://127.0.0.1@10.0.0.5:1234",
            "http://0.0.0.0:18765\\@127.0.0.1",
            "ftp://127.0.0.1/",
        ] {
            assert!(check(bad, &[]).is_err(), "{bad}");
        }
        assert!(check("http://gpu-box:1234", &["gpu-box"]).is_ok());
        assert!(check("http://GPU-Box.:1234", &["gpu-box"]).is_ok());
        assert!(check("http://10.0.0.7:1234", &["10.0.0.7"]).is_ok());
        assert!(check("http://[fd00::7]:1234", &["[fd00::7]"]).is_ok());
        assert!(check("http://gpu-box.evil.com", &["gpu-box"]).is_err());
    }

    #[test]
    fn output_modes_keep_what_the_source_hid() {
        assert_eq!(output_mode(0o100644), 0o644);
        assert_eq!(output_mode(0o100640), 0o640);
        assert_eq!(output_mode(0o100600), 0o600);
        assert_eq!(output_mode(0o100400), 0o600);
        assert_eq!(output_mode(0o100755), 0o644);
        // Readable by others but not by the group: the group must not gain a read.
        assert_eq!(output_mode(0o100604), 0o604);
        assert_eq!(output_mode(0o100705), 0o604);
    }
}
