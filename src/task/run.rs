//! Running one FoundryTask: each of the seven types mapped onto the engine, and the report
//! (Markdown and JSON) of what was read, written, skipped and found, with the next commands.

use super::{sh_quote, FoundryTask, TaskType};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::fold::{self, human_bytes, FoldOptions, OutputRecord, OutputTarget, SectionChoice};
use crate::format::staged::StagedOutputs;
use crate::llm::LlmClient;
use crate::policy::Policy;
use crate::progress::Progress;
use crate::snapshot::{snapshot, SnapshotOptions, SnapshotReport};
use crate::source::tree::{SkipReason, WalkOptions};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Where a task runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Root of every output (default `out/`).
    pub output_root: PathBuf,
    /// Relative sources resolve against this (the task file's folder).
    pub task_root: PathBuf,
    /// Builder root to publish to, when the task does not name one.
    pub publish: Option<PathBuf>,
    pub llm: TaskLlm,
    /// What tasks may read, write and ask ([`crate::policy`]).
    pub policy: Arc<Policy>,
}

/// How tasks use the language model.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct TaskLlm {
    /// Resolved settings (command line, environment, `foundry.toml`).
    pub config: crate::llm::LlmConfig,
    /// `--llm`: ask about every task's artifacts; `analyze_system` asks regardless.
    pub enabled: bool,
    /// `--llm-model` was given: it wins over a task's `ai_model`.
    pub model_pinned: bool,
    /// `--llm-url` was given: it wins over a task's `llm_url`.
    pub url_pinned: bool,
}

impl TaskLlm {
    /// A client for `task` when it should ask.
    pub fn client_for(&self, task: &FoundryTask) -> Result<Option<Arc<LlmClient>>> {
        if !self.enabled && task.kind != TaskType::AnalyzeSystem {
            return Ok(None);
        }
        LlmClient::new(self.config_for(task)?)
            .map(|c| Some(Arc::new(c)))
            .map_err(Error::Usage)
    }

    /// The settings for `task`: the command line, then the task's own `ai_model` and `llm_url`,
    /// then the environment and `foundry.toml` (already in `config`), then the schema's default
    /// model.
    pub fn config_for(&self, task: &FoundryTask) -> Result<crate::llm::LlmConfig> {
        let config = self.config_unchecked(task)?;
        crate::policy::check_llm_host(&config.url().map_err(Error::Usage)?, &config.allowed_hosts)
            .map_err(|r| r.into_error(Path::new(&format!("task {}", task.task_id))))?;
        Ok(config)
    }

    fn config_unchecked(&self, task: &FoundryTask) -> Result<crate::llm::LlmConfig> {
        let mut config = self.config.clone();
        if !self.model_pinned {
            config.model = task
                .ai_model_given()
                .map(String::from)
                .or(config.model)
                .or_else(|| Some(task.ai_model().to_string()));
        }
        if let Some(url) = extra_str(task, "llm_url").filter(|_| !self.url_pinned) {
            // The token is the operator's: a task that chose the server could have it sent to
            // a listener of its own on loopback.
            if config.token.is_some() {
                return Err(Error::Usage(format!(
                    "task {}: llm_url: this process sends a token (LM_API_TOKEN), so a task may \
                     not choose the server; drop llm_url from the task, or give --llm-url",
                    task.task_id
                )));
            }
            config.base_url = crate::llm::normalise_base_url(&url)
                .map_err(|e| Error::Usage(format!("task {}: llm_url {e}", task.task_id)))?;
        }
        Ok(config)
    }
}

/// One file a task wrote.
#[derive(Clone, Debug, Serialize)]
pub struct Written {
    pub path: PathBuf,
    pub kind: String,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub side: Option<u32>,
}

/// One thing a check found in one file.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub path: PathBuf,
    /// `info` (a fact), `low`, `medium`, `high` or `critical`.
    pub severity: String,
    pub finding: String,
}

/// What a task did: the report, as JSON and as Markdown.
#[derive(Clone, Debug, Serialize)]
pub struct TaskReport {
    pub task_id: String,
    #[serde(rename = "type")]
    pub kind: TaskType,
    pub task_file: PathBuf,
    /// Where the outputs are.
    pub output_dir: PathBuf,
    /// Paths read.
    pub read: Vec<String>,
    pub files_read: u64,
    pub bytes_read: u64,
    pub written: Vec<Written>,
    pub skipped: BTreeMap<String, u64>,
    /// Facts worth a glance: entropy, flags, ELF and module summaries, findings.
    pub highlights: BTreeMap<String, Value>,
    pub notes: Vec<String>,
    pub backend: &'static str,
    /// When the task started, in Unix seconds and as ISO 8601 (UTC).
    pub started_at: f64,
    pub started_at_iso: String,
    pub seconds: f64,
    /// What the checks found, file by file (`analyze_system`, `scan_kernel_modules`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// Exact commands: first the one that writes the same outputs again (with the task's own
    /// options), then ones to look at or unfold them.
    pub next_steps: Vec<String>,
    /// The report itself, `TASK_ID.report.md`.
    pub report_path: PathBuf,
}

/// What a task will read and write, decided and checked against the policy before it runs;
/// `--dry-run` prints it and stops.
#[derive(Clone, Debug, Serialize)]
pub struct TaskPlan {
    pub task_id: String,
    #[serde(rename = "type")]
    pub kind: TaskType,
    /// Every source the task reads (files, or roots of trees).
    pub reads: Vec<PathBuf>,
    /// The folder every output lands in.
    pub output_dir: PathBuf,
    pub publish: Option<PathBuf>,
    /// The language-model server it would ask, if any.
    pub llm: Option<String>,
    pub limits: crate::policy::Limits,
    /// Dry runs of tree tasks: what the walk would fold and leave out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub walk: Option<PlannedWalk>,
    /// The files it writes in `output_dir` (a tree also writes one brick per folded file
    /// under `files/`).
    pub writes: Vec<PathBuf>,
}

/// A tree task's walk, done without reading a byte of any file.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedWalk {
    pub files: u64,
    pub bytes: u64,
    /// The first files in path order.
    pub first_files: Vec<PathBuf>,
    pub skipped: BTreeMap<String, u64>,
    /// Examples of what the policy left out, with the rule.
    pub denied: Vec<String>,
}

/// Checks `task` against the policy and says what it will read and write.
pub fn plan_task(task: &FoundryTask, opts: &RunOptions) -> Result<TaskPlan> {
    check_task_id(&task.task_id)?;
    let policy = &opts.policy;
    let task_path = PathBuf::from(format!("task {}", task.task_id));
    let limits = policy.limits;
    let sides = [
        ("texture_size", Some(u64::from(task.texture_size))),
        ("max_side", extra_u64(task, "max_side")),
        ("preview_side", extra_u64(task, "preview_side")),
    ];
    for (field, side) in sides {
        if let Some(side) = side.filter(|&s| s > u64::from(limits.max_texture_side)) {
            return Err(Error::Policy {
                path: task_path,
                rule: format!(
                    "max_texture_side: {field} {side} is above {}",
                    limits.max_texture_side
                ),
            });
        }
    }
    let reads: Vec<PathBuf> = if task.kind == TaskType::CrystallizeSystem && !task.paths.is_empty()
    {
        task.paths
            .iter()
            .map(|p| resolve(&opts.task_root, p))
            .collect()
    } else {
        vec![resolve(&opts.task_root, &task.source)]
    };
    for source in &reads {
        policy
            .check_source(&opts.task_root, source)
            .map_err(|r| r.into_error(source))?;
        if let Ok(meta) = std::fs::metadata(source) {
            use std::os::unix::fs::FileTypeExt;
            let kind = meta.file_type();
            // A device is endless (/dev/zero) or somebody's disk, a FIFO blocks a worker: no
            // task reads one, whatever the policy allows.
            let special = if kind.is_block_device() || kind.is_char_device() {
                Some("a device")
            } else if kind.is_fifo() {
                Some("a FIFO")
            } else if kind.is_socket() {
                Some("a socket")
            } else {
                None
            };
            if let Some(special) = special {
                return Err(Error::Policy {
                    path: source.clone(),
                    rule: format!("sources: {special}, and a task reads only files and folders"),
                });
            }
            if meta.is_file() && meta.len() > limits.max_file_bytes {
                return Err(Error::Policy {
                    path: source.clone(),
                    rule: format!(
                        "max_file_bytes: {} bytes is above {}",
                        meta.len(),
                        limits.max_file_bytes
                    ),
                });
            }
        }
    }
    let output_dir = output_dir(task, &opts.output_root);
    policy
        .check_destination(&output_dir)
        .map_err(|r| r.into_error(&output_dir))?;
    let writes_one_file = match task.kind {
        TaskType::ConvertBinary => true,
        TaskType::FoundryV2 => !reads[0].is_dir(),
        _ => false,
    };
    if writes_one_file {
        check_output_stem(task, &reads[0])?;
    }
    let publish = match extra_str(task, "publish") {
        Some(p) => {
            let builder = resolve(&opts.task_root, &p);
            // The operator's own --publish is trusted; a task's must stay in the output root.
            if opts.publish.as_deref() != Some(builder.as_path()) {
                policy
                    .check_destination(&builder)
                    .map_err(|r| r.into_error(&builder))?;
            }
            Some(builder)
        }
        None => opts.publish.clone(),
    };
    let one_file = reads.len() == 1 && reads[0].is_file();
    // Publishing a private file is refused at the publish step, on what was folded; a task
    // learns it here, before it writes anything.
    if publish.is_some() && one_file && !crate::map::private_publish_allowed() {
        use std::os::unix::fs::MetadataExt;
        let mode = std::fs::metadata(&reads[0]).map_or(0o644, |m| m.mode());
        if mode & 0o004 == 0 {
            return Err(Error::Policy {
                path: reads[0].clone(),
                rule: "publish_private: its source is not readable by others; pass \
                       --publish-private or set publish_private = true in the policy to publish it"
                    .into(),
            });
        }
    }
    let mut writes = vec![output_dir.join(format!("{}.report.md", slug(&task.task_id)))];
    match task.kind {
        TaskType::ConvertBinary | TaskType::FoundryV2 | TaskType::WatchPath if one_file => {
            let stem = output_stem(task, &reads[0]);
            for ext in ["brick", "rts.png", "preview.png"] {
                writes.push(output_dir.join(format!("{stem}.{ext}")));
            }
        }
        TaskType::AnalyzeSystem => {
            writes.push(output_dir.join(format!("{}.analysis.json", slug(&task.task_id))))
        }
        TaskType::ScanKernelModules => writes.push(output_dir.join("modules.json")),
        _ => {
            writes.push(output_dir.join("district.json"));
            writes.push(output_dir.join("district.parts.json"));
        }
    }
    let asks = opts.llm.enabled || task.kind == TaskType::AnalyzeSystem;
    let llm = if asks {
        Some(opts.llm.config_for(task)?.base_url)
    } else {
        None
    };
    Ok(TaskPlan {
        task_id: task.task_id.clone(),
        kind: task.kind,
        reads,
        output_dir,
        publish,
        llm,
        limits,
        walk: None,
        writes,
    })
}

/// [`plan_task`], plus the walk a tree task would do: nothing is read or written.
pub fn dry_run(task: &FoundryTask, opts: &RunOptions) -> Result<TaskPlan> {
    let mut plan = plan_task(task, opts)?;
    let roots: Vec<PathBuf> = plan.reads.iter().filter(|r| r.is_dir()).cloned().collect();
    if !roots.is_empty() {
        let walk = crate::source::tree::walk(&roots, &task_walk(task, opts))?;
        plan.walk = Some(PlannedWalk {
            files: walk.files.len() as u64,
            bytes: walk.files.iter().map(|f| f.size).sum(),
            first_files: walk.files.iter().take(20).map(|f| f.abs.clone()).collect(),
            skipped: walk
                .skipped
                .counts
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            denied: walk
                .skipped
                .examples
                .iter()
                .filter_map(|s| match &s.reason {
                    SkipReason::Denied(rule) => Some(format!("{}: {rule}", s.path)),
                    _ => None,
                })
                .take(20)
                .collect(),
        });
    }
    Ok(plan)
}

/// The walk of a tree task: its own filters and limits, capped by the policy's.
fn task_walk(task: &FoundryTask, opts: &RunOptions) -> WalkOptions {
    let limits = opts.policy.limits;
    let cap = |asked: Option<u64>, policy: u64| Some(asked.map_or(policy, |a| a.min(policy)));
    WalkOptions {
        max_files: cap(
            match task.kind {
                TaskType::ConvertDirectory | TaskType::AnalyzeSystem => Some(task.max_files),
                TaskType::FoundryV2 => extra_u64(task, "max_files").or(Some(task.max_files)),
                _ => None,
            },
            limits.max_files_per_task,
        ),
        max_files_per_root: (task.kind == TaskType::CrystallizeSystem)
            .then(|| task.max_files_per_path.unwrap_or(task.max_files)),
        max_bytes: cap(extra_u64(task, "max_bytes"), limits.max_task_bytes),
        include: if task.kind == TaskType::ScanKernelModules {
            vec!["**/*.ko".into()]
        } else {
            extra_list(task, "include")
        },
        exclude: extra_list(task, "exclude"),
        one_file_system: extra_bool(task, "one_file_system"),
        policy: Some(Arc::clone(&opts.policy)),
    }
}

/// A one-file task's output name: its `destination` without the format suffix, else the
/// source's file name.
fn output_stem(task: &FoundryTask, source: &Path) -> String {
    let destination = task.destination.clone().unwrap_or_else(|| {
        source
            .file_name()
            .map_or("output".into(), |n| n.to_string_lossy().into_owned())
    });
    destination
        .trim_end_matches(".brick")
        .trim_end_matches(".rts.png")
        .to_string()
}

/// Refuses a one-file task whose output name (see [`output_stem`]) would leave its output
/// folder: absolute, climbing out with `..`, or empty.
fn check_output_stem(task: &FoundryTask, source: &Path) -> Result<()> {
    let stem = output_stem(task, source);
    let escapes = Path::new(&stem).is_absolute()
        || Path::new(&stem)
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if escapes || stem.is_empty() {
        return Err(Error::Usage(format!(
            "task {}: destination {stem:?} must be a relative path inside the output root",
            task.task_id
        )));
    }
    Ok(())
}

/// Confines every write of task work to the output root, the builder root, the task folder
/// and the LLM cache: a folder below none of them is refused on what was opened.
pub fn confine_task_writes(
    output_root: &Path,
    publish: Option<&Path>,
    tasks: Option<&Path>,
    llm: &TaskLlm,
) -> Result<()> {
    let mut roots = vec![output_root.to_path_buf()];
    roots.extend(publish.map(Path::to_path_buf));
    roots.extend(tasks.map(Path::to_path_buf));
    roots.extend(llm.config.cache_dir.clone());
    crate::format::staged::confine_writes(&roots)
}

/// The folder `task`'s outputs land in: `OUTPUT_ROOT/TASK_ID` (made safe as a name).
pub fn output_dir(task: &FoundryTask, output_root: &Path) -> PathBuf {
    output_root.join(slug(&task.task_id))
}

/// The name of `task`'s folder in the output root, once its `task_id` is checked: a daemon
/// makes that folder for a task run as its owner without planning the task itself (planning
/// resolves the task's paths, which must happen with the owner's rights, in the child).
pub fn task_folder_name(task: &FoundryTask) -> Result<String> {
    check_task_id(&task.task_id)?;
    Ok(slug(&task.task_id))
}

/// Refuses a `task_id` that names no folder of its own below the output root: empty, only
/// dots (the root itself or its parent) or with a slash or NUL in it.
fn check_task_id(id: &str) -> Result<()> {
    let problem = if id.is_empty() {
        "is empty"
    } else if id.chars().all(|c| c == '.') {
        "is only dots"
    } else if id.contains(['/', '\0']) {
        "contains a slash or a NUL byte"
    } else if slug(id).is_empty() {
        "leaves no name once its leading dots are dropped"
    } else {
        return Ok(());
    };
    Err(Error::Usage(format!(
        "task_id \"{}\" {problem}: it names the task's own output folder, so it must be a plain name such as \"scan-etc\"",
        id.escape_default()
    )))
}

fn resolve(root: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

/// A task id made safe for a file or folder name.
fn slug(id: &str) -> String {
    let s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.trim_start_matches('.').to_string()
}

fn record(o: &OutputRecord) -> Written {
    Written {
        path: o.path.clone(),
        kind: o.kind.to_string(),
        bytes: o.bytes,
        side: o.side,
    }
}

/// The `extra` field `key` as a string / number / bool, for `foundry-v2` options.
fn extra_str(task: &FoundryTask, key: &str) -> Option<String> {
    task.extra
        .get(key)
        .and_then(Value::as_str)
        .map(String::from)
}
fn extra_u64(task: &FoundryTask, key: &str) -> Option<u64> {
    task.extra.get(key).and_then(Value::as_u64)
}
fn extra_bool(task: &FoundryTask, key: &str) -> bool {
    task.extra
        .get(key)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}
fn extra_list(task: &FoundryTask, key: &str) -> Vec<String> {
    task.extra
        .get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `task` (read from `task_file`) and writes its report beside the outputs.
pub fn run_task(
    backend: &Backend,
    task: &FoundryTask,
    task_file: &Path,
    opts: &RunOptions,
    progress: &dyn Progress,
) -> Result<TaskReport> {
    let started = Instant::now();
    let started_at = crate::map::unix_now();
    let plan = plan_task(task, opts)?;
    let source = resolve(&opts.task_root, &task.source);
    let out_dir = plan.output_dir.clone();
    let publish = plan.publish.clone();
    let mut report = TaskReport {
        task_id: task.task_id.clone(),
        kind: task.kind,
        task_file: task_file.to_path_buf(),
        output_dir: out_dir.clone(),
        read: vec![source.to_string_lossy().into_owned()],
        files_read: 0,
        bytes_read: 0,
        written: Vec::new(),
        skipped: BTreeMap::new(),
        highlights: BTreeMap::new(),
        notes: Vec::new(),
        backend: backend.label(),
        started_at,
        started_at_iso: super::iso_time(started_at),
        seconds: 0.0,
        findings: Vec::new(),
        next_steps: Vec::new(),
        report_path: out_dir.join(format!("{}.report.md", slug(&task.task_id))),
    };
    let meta = std::fs::metadata(&source).map_err(|e| Error::io(&source, "read", e))?;
    if task.kind == TaskType::ConvertBinary && meta.is_dir() {
        return Err(Error::malformed(
            &source,
            "is a directory; convert_binary takes one file (use convert_directory)",
        ));
    }
    let llm = opts.llm.client_for(task)?;
    let one_file = task.kind == TaskType::ConvertBinary
        || (task.kind == TaskType::FoundryV2 && !meta.is_dir());
    match task.kind {
        _ if one_file => convert_file(
            backend,
            task,
            &source,
            &FileSinks {
                out_dir: &out_dir,
                publish: publish.as_deref(),
                llm,
            },
            &mut report,
            progress,
        )?,
        // convert_binary always takes the arm above; the rest fold trees.
        TaskType::ConvertBinary
        | TaskType::ConvertDirectory
        | TaskType::CrystallizeSystem
        | TaskType::FoundryV2 => {
            let roots = plan.reads.clone();
            report.read = roots
                .iter()
                .map(|r| r.to_string_lossy().into_owned())
                .collect();
            let walk = task_walk(task, opts);
            let snap_opts = SnapshotOptions {
                walk,
                // Opt-in, as on the command line; `no_file_bricks` (the old opt-out) is the
                // default now and still read.
                file_bricks: extra_bool(task, "file_bricks") && !extra_bool(task, "no_file_bricks"),
                district_brick: extra_bool(task, "district_brick"),
                publish: publish.clone(),
                llm: llm.clone(),
                ..Default::default()
            };
            let snap = snapshot(backend, &roots, &out_dir, &snap_opts, progress)?;
            record_snapshot(&snap, &mut report)?;
        }
        TaskType::AnalyzeSystem => analyze(
            task,
            &source,
            &out_dir,
            &task_walk(task, opts),
            llm,
            &mut report,
        )?,
        TaskType::ScanKernelModules => scan_modules(
            backend,
            &source,
            &task_walk(task, opts),
            &out_dir,
            publish.as_deref(),
            llm,
            &mut report,
        )?,
        TaskType::WatchPath => watch(
            backend,
            task,
            &FileSinks {
                out_dir: &out_dir,
                publish: publish.as_deref(),
                llm,
            },
            &source,
            &opts.policy,
            &mut report,
        )?,
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.next_steps = next_steps(task, &report, opts, publish.as_deref(), one_file);
    write_report(&report)?;
    Ok(report)
}

/// Where a single-file task's results go, and who describes them.
struct FileSinks<'a> {
    out_dir: &'a Path,
    publish: Option<&'a Path>,
    llm: Option<Arc<LlmClient>>,
}

/// `convert_binary` (and `foundry-v2` on a file): brick, `.rts.png` and previews.
fn convert_file(
    backend: &Backend,
    task: &FoundryTask,
    source: &Path,
    sinks: &FileSinks<'_>,
    report: &mut TaskReport,
    progress: &dyn Progress,
) -> Result<()> {
    let (out_dir, publish) = (sinks.out_dir, sinks.publish);
    // plan_task (run before this) refused a destination that leaves the output folder.
    let stem = output_stem(task, source);
    let dest_path = out_dir.join(&stem);
    let opts = FoldOptions {
        texture_size: Some(task.texture_size),
        // plan_task already refused sides above the policy's limit, so these fit in u32.
        max_side: extra_u64(task, "max_side").map_or(crate::fold::DEFAULT_MAX_SIDE, |v| {
            v.min(u64::from(u32::MAX)) as u32
        }),
        preview_side: extra_u64(task, "preview_side")
            .map_or(crate::fold::DEFAULT_PREVIEW_SIDE, |v| {
                v.min(u64::from(u32::MAX)) as u32
            }),
        legend: extra_bool(task, "legend"),
        sidecars: extra_bool(task, "sidecars"),
        sections: extra_str(task, "sections")
            .map_or(SectionChoice::None, |s| SectionChoice::parse(&s)),
        palette: match extra_str(task, "palette").as_deref() {
            Some("entropy") => crate::format::preview::Palette::Entropy,
            Some("gray") => crate::format::preview::Palette::Gray,
            Some("rgba") => crate::format::preview::Palette::Rgba,
            _ => crate::format::preview::Palette::Byteclass,
        },
        name: dest_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned()),
        llm: sinks.llm.clone(),
        intent: task.intent.clone(),
        ..Default::default()
    };
    let dir = dest_path.parent().unwrap_or(out_dir).to_path_buf();
    let folded = fold::fold_file(
        backend,
        source,
        &OutputTarget::Directory(dir),
        &opts,
        progress,
    )?;
    report.files_read = 1;
    report.bytes_read = folded.source.size;
    report.written.extend(folded.outputs.iter().map(record));
    report.notes.extend(folded.notes.iter().cloned());
    report
        .highlights
        .insert("sha256".into(), json!(folded.source.sha256_hex()));
    report.highlights.insert(
        "entropy_bits_per_byte".into(),
        json!((folded.source.entropy * 1000.0).round() / 1000.0),
    );
    report
        .highlights
        .insert("flags".into(), json!(folded.flags));
    record_semantic(&folded.semantic, report);
    if let Some(e) = &folded.elf {
        report.highlights.insert(
            "elf".into(),
            json!({"class": e.class, "kind": e.kind, "machine": e.machine, "sections": e.sections.len(), "stripped": e.stripped}),
        );
    }
    if let Some(builder) = publish {
        let published = fold::publish(&folded, builder)?;
        report
            .highlights
            .insert("published".into(), json!(published.placed));
    }
    Ok(())
}

/// The model's verdict (or why there is none) and the local risk, as report highlights.
fn record_semantic(semantic: &Value, report: &mut TaskReport) {
    report
        .highlights
        .insert("local_risk".into(), semantic["analysis"]["risk"].clone());
    let llm = &semantic["llm"];
    match llm["status"].as_str() {
        Some("answered" | "cached") => {
            for key in ["summary", "risk", "tags", "model"] {
                report
                    .highlights
                    .insert(format!("llm_{key}"), semantic[key].clone());
            }
        }
        Some("off") | None => {}
        Some(status) => {
            report.notes.push(format!(
                "language model {status}: {}",
                llm["reason"].as_str().unwrap_or("no reason given")
            ));
        }
    }
}

/// Renames `staged` into place and lists what landed in the report.
fn commit_into(staged: StagedOutputs, kind: &str, report: &mut TaskReport) -> Result<()> {
    for w in staged.commit()? {
        report.written.push(Written {
            path: w.path,
            kind: kind.into(),
            bytes: w.bytes,
            side: None,
        });
    }
    Ok(())
}

/// What `district.json` names as written: the district's parts, and each file's brick (or
/// parts index) and tile.
#[derive(serde::Deserialize)]
struct DistrictOutputs {
    parts: Vec<NamedOutputs>,
    files: Vec<NamedOutputs>,
}

/// A part's or a file's outputs, relative to the snapshot's folder.
#[derive(serde::Deserialize)]
struct NamedOutputs {
    #[serde(default)]
    brick: Option<String>,
    #[serde(default)]
    rts_png: Option<String>,
}

/// Every file a snapshot wrote, as its own index names them: `district.json`, the parts index,
/// the district's parts, and each file's brick (a big file's parts index and parts) and tile,
/// with the sidecars beside them.
fn snapshot_outputs(snap: &SnapshotReport) -> Result<Vec<Written>> {
    let out = &snap.output;
    let mut written = Vec::new();
    let mut add = |path: PathBuf, kind: &str| {
        // A file listed here was just written by this snapshot; one that is gone already was
        // moved by someone else, and a size of 0 says so.
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        written.push(Written {
            path,
            kind: kind.into(),
            bytes,
            side: None,
        });
    };
    let index_text = std::fs::read_to_string(&snap.district_index)
        .map_err(|e| Error::io(&snap.district_index, "read", e))?;
    let index: DistrictOutputs = serde_json::from_str(&index_text).map_err(|e| {
        Error::malformed(&snap.district_index, format!("not a district index: {e}"))
    })?;
    add(snap.district_index.clone(), "district_index");
    add(snap.parts_index.clone(), "parts_index");
    let add_brick = |add: &mut dyn FnMut(PathBuf, &str), brick: PathBuf, kind: &str| {
        let sidecar = crate::format::brick::sidecar_path(&brick);
        add(brick, kind);
        if sidecar.exists() {
            add(sidecar, "brick_sidecar");
        }
    };
    let add_png = |add: &mut dyn FnMut(PathBuf, &str), png: PathBuf, kind: &str| {
        let sidecars = crate::format::rts_png::sidecar_paths(&png);
        add(png, kind);
        for sidecar in sidecars.into_iter().filter(|s| s.exists()) {
            add(sidecar, "rts_sidecar");
        }
    };
    for part in &index.parts {
        if let Some(b) = &part.brick {
            add_brick(&mut add, out.join(b), "district_brick");
        }
        if let Some(p) = &part.rts_png {
            add_png(&mut add, out.join(p), "district_rts_png");
        }
    }
    for file in &index.files {
        match &file.brick {
            Some(b) if b.ends_with(".parts.json") => {
                let parts_path = out.join(b);
                let parts = crate::format::parts::PartsIndex::read(&parts_path)?;
                let dir = parts_path.parent().unwrap_or(out).to_path_buf();
                add(parts_path, "file_parts_index");
                for part in &parts.parts {
                    if let Some(b) = &part.brick {
                        add_brick(&mut add, dir.join(b), "file_brick");
                    }
                    if let Some(p) = &part.rts_png {
                        add_png(&mut add, dir.join(p), "file_rts_png");
                    }
                }
            }
            Some(b) => add_brick(&mut add, out.join(b), "file_brick"),
            None => {}
        }
        if let Some(p) = &file.rts_png {
            add_png(&mut add, out.join(p), "file_rts_png");
        }
    }
    Ok(written)
}

fn record_snapshot(snap: &SnapshotReport, report: &mut TaskReport) -> Result<()> {
    if let Some(t) = &snap.llm {
        report.highlights.insert("llm".into(), json!(t));
    }
    report.files_read = snap.files;
    report.bytes_read = snap.bytes;
    report.skipped = snap
        .skipped
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    report.written.extend(snapshot_outputs(snap)?);
    report
        .highlights
        .insert("district_parts".into(), json!(snap.district_parts));
    report
        .highlights
        .insert("symlinks".into(), json!(snap.symlinks));
    report.highlights.insert(
        "files_per_second".into(),
        json!(snap.files_per_second.round()),
    );
    if let Some(p) = &snap.published {
        report
            .highlights
            .insert("published_tiles".into(), json!(p.tiles));
    }
    Ok(())
}

/// `analyze_system`: local analysis of every file, and the language model's view of each.
fn analyze(
    task: &FoundryTask,
    source: &Path,
    out_dir: &Path,
    walk_opts: &WalkOptions,
    llm: Option<Arc<LlmClient>>,
    report: &mut TaskReport,
) -> Result<()> {
    let mut files = Vec::new();
    if source.is_dir() {
        let walk = crate::source::tree::walk(&[source.to_path_buf()], walk_opts)?;
        report.skipped = walk
            .skipped
            .counts
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        files.extend(walk.files.into_iter().map(|f| f.abs));
    } else {
        files.push(source.to_path_buf());
    }
    let mut read = Vec::new();
    for path in &files {
        match crate::source::read_input(path) {
            Ok(bytes) => {
                let analysis = crate::analysis::local::analyze(&bytes);
                report.files_read += 1;
                report.bytes_read += analysis.size;
                read.push((path, bytes, analysis));
            }
            Err(e) => report.notes.push(format!("not analysed: {e}")),
        }
    }
    let names: Vec<String> = read
        .iter()
        .map(|(p, _, _)| {
            p.strip_prefix(source)
                .ok()
                .filter(|r| !r.as_os_str().is_empty())
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let outcomes = match &llm {
        Some(client) => {
            let requests: Vec<_> = read
                .iter()
                .zip(&names)
                .map(|((_, bytes, analysis), name)| crate::llm::ArtifactRequest {
                    name,
                    data: bytes,
                    analysis,
                    intent: task.intent.as_deref(),
                })
                .collect();
            client
                .describe_all(&requests)
                .into_iter()
                .map(Some)
                .collect()
        }
        None => vec![None; read.len()],
    };
    let mut answered = 0;
    let mut entries = Vec::new();
    for ((path, _, analysis), outcome) in read.iter().zip(&outcomes) {
        answered += usize::from(outcome.as_ref().is_some_and(|o| o.answer.is_some()));
        let answer = outcome.as_ref().and_then(|o| o.answer.as_ref());
        report
            .findings
            .extend(analysis_findings(path, analysis, answer));
        entries.push(json!({"path": path, "analysis": analysis,
            "semantic": crate::semantic::semantic_json(analysis, outcome.as_ref())}));
    }
    let by = if answered > 0 {
        format!(
            "local analysis and the language model ({answered} of {} files answered)",
            read.len()
        )
    } else {
        "local analysis only (no answer from the language model; see notes)".to_string()
    };
    if let Some(o) = outcomes.iter().flatten().find(|o| o.answer.is_none()) {
        report.notes.push(format!(
            "language model {}: {}",
            o.status,
            o.reason.as_deref().unwrap_or("no reason given")
        ));
    }
    let analysis = json!({"task_id": task.task_id, "source": source, "intent": task.intent,
        "analysis_by": by, "files": entries});
    let path = out_dir.join(format!("{}.analysis.json", slug(&task.task_id)));
    let text = serde_json::to_string_pretty(&analysis).expect("analysis serialises");
    // The analysis quotes strings of every file read: as private as the most private of them,
    // in the source's group.
    let mode = read
        .iter()
        .fold(crate::policy::output_mode_of(source), |m, (p, _, _)| {
            m & crate::policy::output_mode_of(p)
        });
    let mut staged = StagedOutputs::new()
        .with_mode(mode)
        .with_group(crate::policy::output_group_of(source));
    staged.write(&path, |w| w.write_all(text.as_bytes()))?;
    commit_into(staged, "analysis", report)?;
    report.highlights.insert("analysis_by".into(), json!(by));
    if let Some(intent) = &task.intent {
        report.highlights.insert("intent".into(), json!(intent));
    }
    Ok(())
}

/// What the analysis of one file found, for the report: a line of facts (type, size, entropy,
/// the ELF's hardening and libraries, telling strings), each local warning with its severity,
/// and the model's verdict and warnings when it answered.
fn analysis_findings(
    path: &Path,
    a: &crate::analysis::local::LocalAnalysis,
    answer: Option<&crate::llm::reply::Answer>,
) -> Vec<Finding> {
    let mut found = Vec::new();
    let mut add = |severity: &str, finding: String| {
        found.push(Finding {
            path: path.to_path_buf(),
            severity: severity.into(),
            finding,
        })
    };
    add(
        "info",
        format!(
            "{}, {}, entropy {:.2} bits/byte",
            a.file_type,
            human_bytes(a.size),
            a.entropy
        ),
    );
    if let Some(elf) = &a.elf {
        let mut facts = format!("ELF {} {}", elf.architecture, elf.kind);
        if let Some(h) = &elf.hardening {
            facts += &format!("; {}", h.summary());
            if !h.libraries.is_empty() {
                facts += &format!("; needs {}", h.libraries.join(", "));
            }
        }
        add("info", facts);
    }
    let s = &a.strings;
    for (what, list) in [("URLs", &s.urls), ("IP-like strings", &s.ip_like)] {
        if !list.is_empty() {
            // Strings come from the file: control bytes (terminal escapes) are not passed on.
            let mut shown: Vec<String> = list
                .iter()
                .map(|t| t.chars().filter(|c| !c.is_control()).collect())
                .collect();
            shown.dedup();
            shown.truncate(5);
            add(
                "info",
                format!("{} {what}: {}", list.len(), shown.join(", ")),
            );
        }
    }
    let warnings = crate::semantic::local_warnings(a);
    if warnings.is_empty() {
        add("low", "no warnings from the local checks".into());
    }
    for w in warnings {
        add(w.kind.severity(), w.text);
    }
    if let Some(answer) = answer {
        let severity = match answer.risk.as_str() {
            risk @ ("low" | "medium" | "high" | "critical") => risk,
            _ => "info",
        };
        add(
            severity,
            format!("language model (risk {}): {}", answer.risk, answer.summary),
        );
        for w in &answer.warnings {
            add("info", format!("language model warns: {w}"));
        }
    }
    found
}

/// Whether `error` is about reading `source` itself (not about writing an output).
fn is_about(error: &Error, source: &Path) -> bool {
    matches!(error, Error::Io { path, .. } | Error::Malformed { path, .. } if path == source)
}

/// `scan_kernel_modules`: every `.ko` under `source`, findings per module, and
/// `metadata/silicon_district.json` in the map's shape.
fn scan_modules(
    backend: &Backend,
    source: &Path,
    walk_opts: &WalkOptions,
    out_dir: &Path,
    publish: Option<&Path>,
    llm: Option<Arc<LlmClient>>,
    report: &mut TaskReport,
) -> Result<()> {
    let walk = crate::source::tree::walk(&[source.to_path_buf()], walk_opts)?;
    let mut modules = Vec::new();
    let (mut critical, mut high, mut medium, mut low) = (0u64, 0u64, 0u64, 0u64);
    let mut kernel_version = String::new();
    let mut flagged = 0u64;
    let mut unreadable = Vec::new();
    for file in &walk.files {
        let folded = match fold::fold_file(
            backend,
            &file.abs,
            &OutputTarget::Directory(out_dir.join("modules")),
            &FoldOptions {
                llm: llm.clone(),
                ..Default::default()
            },
            &crate::progress::Silent,
        ) {
            Ok(folded) => folded,
            // One module that cannot be read must not cost the scan of the others; a failure
            // to write the outputs still fails the task.
            Err(e) if is_about(&e, &file.abs) => {
                unreadable.push(json!({"path": file.abs, "error": e.to_string()}));
                continue;
            }
            Err(e) => return Err(e),
        };
        report.files_read += 1;
        report.bytes_read += folded.source.size;
        report.written.extend(folded.outputs.iter().map(record));
        let modinfo = folded
            .elf
            .as_ref()
            .and_then(|e| e.modinfo.clone())
            .unwrap_or_default();
        let mut findings: Vec<(&str, String)> = Vec::new();
        match modinfo.license.as_deref() {
            None => findings.push(("medium", "no license: loading it taints the kernel".into())),
            Some(l)
                if ![
                    "GPL",
                    "GPL v2",
                    "GPL and additional rights",
                    "Dual BSD/GPL",
                    "Dual MIT/GPL",
                    "Dual MPL/GPL",
                ]
                .contains(&l) =>
            {
                findings.push((
                    "medium",
                    "proprietary license: loading it taints the kernel".into(),
                ))
            }
            _ => {}
        }
        if !modinfo.other.contains_key("intree") {
            findings.push(("low", "out-of-tree module".into()));
        }
        if modinfo.vermagic.is_none() {
            findings.push(("low", "no vermagic".into()));
        }
        // The same risk checks as any ELF: W+X segments and packed sections weigh most.
        // (The licence is judged above, against the accepted list.)
        for w in crate::semantic::local_warnings(&folded.analysis)
            .into_iter()
            .filter(|w| w.kind != crate::semantic::WarningKind::UnlicensedModule)
        {
            findings.push((w.kind.severity(), w.text));
        }
        if let Some(risk @ ("high" | "critical")) = folded.semantic["risk"].as_str() {
            findings.push((
                if risk == "critical" {
                    "critical"
                } else {
                    "high"
                },
                format!(
                    "language model rates it {risk}: {}",
                    folded.semantic["summary"].as_str().unwrap_or_default()
                ),
            ));
        }
        if let Some(v) = &modinfo.vermagic {
            kernel_version = v.split_whitespace().next().unwrap_or_default().to_string();
        }
        let count = |level: &str| findings.iter().filter(|(s, _)| *s == level).count() as u64;
        critical += count("critical");
        high += count("high");
        medium += count("medium");
        low += count("low");
        flagged += u64::from(findings.iter().any(|(s, _)| *s != "low"));
        report
            .findings
            .extend(findings.iter().map(|(severity, finding)| Finding {
                path: file.abs.clone(),
                severity: severity.to_string(),
                finding: finding.clone(),
            }));
        modules.push(json!({"path": file.abs, "modinfo": modinfo, "semantic": folded.semantic,
            "findings": findings.iter().map(|(s, f)| json!({"severity": s, "finding": f})).collect::<Vec<_>>()}));
    }
    if !unreadable.is_empty() {
        report.notes.push(format!(
            "{} module(s) could not be read; modules.json lists them under \"unreadable\"",
            unreadable.len()
        ));
    }
    let total = modules.len() as u64;
    let risk = if total == 0 {
        0
    } else {
        ((critical * 40 + high * 20 + medium * 10 + low * 2) * 100 / (total * 12)).min(100)
    };
    let now = crate::map::unix_now();
    // The map reads exactly this shape at tile (-10,-10); local findings carry no CVE ids.
    let district = json!({"security": {"last_scan": now, "risk_score": risk, "vulnerable_drivers": flagged,
        "total_drivers": total, "critical_vulns": critical, "high_vulns": high, "medium_vulns": medium, "low_vulns": low,
        "kernel_version": kernel_version, "top_vulnerabilities": []}});
    let mut staged = StagedOutputs::new();
    let findings_path = out_dir.join("modules.json");
    let text = serde_json::to_string_pretty(&json!({"modules": modules, "unreadable": unreadable}))
        .expect("findings serialise");
    staged.write(&findings_path, |w| w.write_all(text.as_bytes()))?;
    let silicon = serde_json::to_string_pretty(&district).expect("district serialises");
    let mut targets = vec![out_dir.join("metadata/silicon_district.json")];
    if let Some(builder) = publish {
        targets.push(builder.join("metadata/silicon_district.json"));
    }
    for t in &targets {
        staged.write(t, |w| w.write_all(silicon.as_bytes()))?;
    }
    commit_into(staged, "metadata", report)?;
    report.skipped = walk
        .skipped
        .counts
        .iter()
        .filter(|(k, _)| **k != "excluded")
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    if !unreadable.is_empty() {
        *report.skipped.entry("unreadable".into()).or_default() += unreadable.len() as u64;
    }
    report.highlights.insert("modules".into(), json!(total));
    report.highlights.insert("risk_score".into(), json!(risk));
    report.highlights.insert(
        "analysis_by".into(),
        json!(if llm.is_some() {
            "local checks (license, in-tree, vermagic, W+X, packing) and the language model"
        } else {
            "local checks (license, in-tree, vermagic, W+X, packing)"
        }),
    );
    Ok(())
}

/// `watch_path`: keeps `source` folded as it changes (see [`crate::watch`]) until stopped, or
/// for `max_cycles` polling intervals when the task sets it.
fn watch(
    backend: &Backend,
    task: &FoundryTask,
    sinks: &FileSinks<'_>,
    source: &Path,
    policy: &Arc<Policy>,
    report: &mut TaskReport,
) -> Result<()> {
    let out_dir = sinks.out_dir;
    let interval = std::time::Duration::from_millis(extra_u64(task, "interval_ms").unwrap_or(1000));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(signal, std::sync::Arc::clone(&stop));
    }
    let opts = crate::watch::WatchOptions {
        output: out_dir.to_path_buf(),
        interval,
        debounce: crate::process_memory::parse_duration(crate::watch::DEFAULT_DEBOUNCE)
            .expect("the default parses"),
        max_delay: crate::process_memory::parse_duration(crate::watch::DEFAULT_MAX_DELAY)
            .expect("the default parses"),
        // Resolved like every task's: against the task root, else `--publish`.
        publish: sinks.publish.map(Path::to_path_buf),
        versioned: extra_bool(task, "versioned"),
        fold: FoldOptions {
            texture_size: Some(task.texture_size),
            llm: sinks.llm.clone(),
            intent: task.intent.clone(),
            ..Default::default()
        },
        max_refolds: extra_u64(task, "max_refolds"),
        policy: Some(Arc::clone(policy)),
        // Task parsing bounds both numbers; saturate anyway so no task can overflow a duration.
        duration: extra_u64(task, "max_cycles")
            .map(|n| interval.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))),
    };
    let mut events = Vec::new();
    let summary = crate::watch::watch(backend, &[source.to_path_buf()], &opts, &stop, &mut |e| {
        events.push(e.clone())
    })?;
    for e in &events {
        match e.kind {
            "refolded" => {
                report.files_read += 1;
                report.bytes_read += e.size.unwrap_or(0);
            }
            kind => report.notes.push(format!(
                "{} {kind}{}",
                e.path.display(),
                e.error
                    .as_ref()
                    .map(|m| format!(": {m} (retried on the next change)"))
                    .unwrap_or_default()
            )),
        }
    }
    if let Some(last) = events.iter().rev().find(|e| e.kind == "refolded") {
        for o in &last.outputs {
            let bytes = std::fs::metadata(o).map_or(0, |m| m.len());
            let name = o.to_string_lossy();
            // The kinds a fold's outputs have, so the next steps find them.
            let kind = [
                (".brick", "brick"),
                (".rts.png", "rts_png"),
                (".preview.png", "preview"),
            ]
            .iter()
            .find(|(ext, _)| name.ends_with(ext))
            .map_or("watch", |(_, kind)| kind);
            report.written.push(Written {
                path: o.clone(),
                kind: kind.into(),
                bytes,
                side: None,
            });
        }
    }
    // Every re-fold after the first also writes its diff against the one before, into one
    // folder per watched file, which the last diff left as it is.
    let diff_dirs: std::collections::BTreeSet<&PathBuf> =
        events.iter().filter_map(|e| e.diff.as_ref()).collect();
    for dir in diff_dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, "read", e))?
            .flatten()
            .map(|entry| entry.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for path in files {
            let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
            report.written.push(Written {
                path,
                kind: "diff".into(),
                bytes,
                side: None,
            });
        }
    }
    report
        .highlights
        .insert("refolds".into(), json!(summary.refolds));
    report
        .highlights
        .insert("failures".into(), json!(summary.failures));
    report
        .highlights
        .insert("vanished".into(), json!(summary.vanished));
    Ok(())
}

fn markdown(r: &TaskReport) -> String {
    let mut md = format!(
        "# Task `{}` ({})\n\n",
        r.task_id,
        serde_json::to_value(r.kind)
            .expect("type")
            .as_str()
            .unwrap_or("?")
    );
    md += &format!(
        "Task file: `{}`. Started {}. Backend: {}. Time: {:.2} s.\n\n",
        r.task_file.display(),
        r.started_at_iso,
        r.backend,
        r.seconds
    );
    md += "## Read\n\n";
    for p in &r.read {
        md += &format!("- `{p}`\n");
    }
    md += &format!(
        "\n{} file(s), {}.\n\n## Written\n\n| file | kind | size | texture |\n|---|---|---:|---|\n",
        r.files_read,
        human_bytes(r.bytes_read)
    );
    for w in &r.written {
        let side = w.side.map(|s| format!("{s}x{s}")).unwrap_or_default();
        md += &format!(
            "| `{}` | {} | {} | {} |\n",
            w.path.display(),
            w.kind,
            human_bytes(w.bytes),
            side
        );
    }
    md += &format!(
        "\n{} file(s) written, and this report: `{}`.\n",
        r.written.len(),
        r.report_path.display()
    );
    md += "\n## Skipped\n\n";
    if r.skipped.is_empty() {
        md += "Nothing.\n";
    }
    for (reason, n) in &r.skipped {
        md += &format!("- {reason}: {n}\n");
    }
    md += "\n## Metadata highlights\n\n";
    for (k, v) in &r.highlights {
        md += &format!("- **{k}**: {v}\n");
    }
    if !r.findings.is_empty() {
        md += "\n## Findings\n";
        let mut last: Option<&Path> = None;
        for f in &r.findings {
            if last != Some(f.path.as_path()) {
                md += &format!("\n### `{}`\n\n", f.path.display());
                last = Some(&f.path);
            }
            md += &format!("- {}: {}\n", f.severity, f.finding);
        }
    }
    if !r.notes.is_empty() {
        md += "\n## Notes\n\n";
        for n in &r.notes {
            md += &format!("- {n}\n");
        }
    }
    md += "\n## Next steps\n\nThe first command writes the same outputs again, with the task's options.\n\n```sh\n";
    for s in &r.next_steps {
        md += &format!("{s}\n");
    }
    md += "```\n";
    md
}

/// The report's next steps: first the command that writes the same outputs again with the
/// task's own options, then commands to look at and unfold them, and the report itself.
fn next_steps(
    task: &FoundryTask,
    r: &TaskReport,
    opts: &RunOptions,
    publish: Option<&Path>,
    one_file: bool,
) -> Vec<String> {
    let q = |p: &Path| sh_quote(&p.to_string_lossy());
    let find = |kind: &str| {
        r.written
            .iter()
            .find(|w| w.kind == kind)
            .map(|w| w.path.clone())
    };
    let mut steps = vec![reproduce_command(task, r, opts, publish, one_file)];
    if let Some(brick) = find("brick") {
        steps.push(format!("foundry-gpu info {}", q(&brick)));
        steps.push(format!(
            "foundry-gpu unfold {} -o {}",
            q(&brick),
            q(&brick.with_extension("bin"))
        ));
    }
    if let Some(png) = find("rts_png") {
        let entropy = format!(
            "{}.entropy.png",
            png.to_string_lossy().trim_end_matches(".rts.png")
        );
        steps.push(format!(
            "foundry-gpu preview {} --palette entropy --legend -o {}",
            q(&png),
            sh_quote(&entropy)
        ));
    }
    if let Some(parts) = find("parts_index") {
        steps.push(format!(
            "foundry-gpu unfold {} -o {}",
            q(&parts),
            q(&r.output_dir.join("district.bin"))
        ));
    }
    steps.push(format!("cat {}", q(&r.report_path)));
    steps
}

/// The one command that writes `task`'s outputs again, byte for byte, with its own options:
/// `fold` for one file or a watch, `snapshot` for a tree, and `run` of the task file itself when
/// no other command can say everything the task did (the policy left files out of a tree,
/// per-path caps, the analysis and module scans).
fn reproduce_command(
    task: &FoundryTask,
    r: &TaskReport,
    opts: &RunOptions,
    publish: Option<&Path>,
    one_file: bool,
) -> String {
    let q = |p: &Path| sh_quote(&p.to_string_lossy());
    let mut cmd;
    let source = r.read.first().map(PathBuf::from).unwrap_or_default();
    // Only `run` applies the policy: a tree it left files out of has no `snapshot` twin.
    let denied = [
        SkipReason::Denied(String::new()),
        SkipReason::OverMaxFileBytes(0),
    ]
    .iter()
    .any(|reason| r.skipped.contains_key(reason.key()));
    match task.kind {
        _ if one_file => {
            let dest = r.output_dir.join(output_stem(task, &source));
            let name = dest.file_name().unwrap_or_default();
            cmd = format!(
                "foundry-gpu fold {} -o {}",
                q(&source),
                q(dest.parent().unwrap_or(&r.output_dir))
            );
            if Some(name) != source.file_name() {
                cmd += &format!(" --name {}", sh_quote(&name.to_string_lossy()));
            }
            cmd += &format!(" --texture-size {}", task.texture_size);
            for (field, option) in [
                ("max_side", "--max-side"),
                ("preview_side", "--preview-side"),
            ] {
                if let Some(v) = extra_u64(task, field) {
                    cmd += &format!(" {option} {v}");
                }
            }
            if let Some(p @ ("entropy" | "gray" | "rgba")) = extra_str(task, "palette").as_deref() {
                cmd += &format!(" --palette {p}");
            }
            for flag in ["legend", "sidecars"] {
                if extra_bool(task, flag) {
                    cmd += &format!(" --{flag}");
                }
            }
            if let Some(sections) = extra_str(task, "sections") {
                cmd += &format!(" --sections {}", sh_quote(&sections));
            }
        }
        TaskType::WatchPath => {
            let interval = extra_u64(task, "interval_ms").unwrap_or(1000);
            cmd = format!(
                "foundry-gpu fold {} -o {} --watch --texture-size {} --interval {interval}ms",
                q(&source),
                q(&r.output_dir),
                task.texture_size
            );
            if let Some(n) = extra_u64(task, "max_refolds") {
                cmd += &format!(" --max-refolds {n}");
            }
            if let Some(n) = extra_u64(task, "max_cycles") {
                cmd += &format!(" --duration {}ms", interval.saturating_mul(n));
            }
            if extra_bool(task, "versioned") {
                cmd += " --versioned";
            }
        }
        TaskType::ConvertDirectory | TaskType::FoundryV2 if !denied => {
            let walk = task_walk(task, opts);
            cmd = "foundry-gpu snapshot".to_string();
            for root in &r.read {
                cmd += &format!(" {}", sh_quote(root));
            }
            cmd += &format!(" -o {}", q(&r.output_dir));
            if let Some(n) = walk.max_files {
                cmd += &format!(" --max-files {n}");
            }
            if let Some(n) = walk.max_bytes {
                cmd += &format!(" --max-bytes {n}");
            }
            for (option, globs) in [("--include", &walk.include), ("--exclude", &walk.exclude)] {
                for glob in globs {
                    cmd += &format!(" {option} {}", sh_quote(glob));
                }
            }
            if walk.one_file_system {
                cmd += " --one-file-system";
            }
            if extra_bool(task, "file_bricks") && !extra_bool(task, "no_file_bricks") {
                cmd += " --file-bricks";
            }
            if extra_bool(task, "district_brick") {
                cmd += " --district-brick";
            }
        }
        _ => {
            // `run` applies the policy and every option itself; --publish only when the
            // operator gave it (a task's own `publish` field travels in the task file).
            cmd = format!(
                "foundry-gpu run {} --output-root {}",
                q(&r.task_file),
                q(&opts.output_root)
            );
            if let Some(p) = &opts.publish {
                cmd += &format!(" --publish {}", q(p));
            }
            if opts.llm.enabled {
                cmd += " --llm";
            }
            return cmd;
        }
    }
    if let Some(p) = publish {
        cmd += &format!(" --publish {}", q(p));
    }
    if opts.llm.enabled {
        cmd += " --llm";
    }
    cmd
}

fn write_report(r: &TaskReport) -> Result<()> {
    let text = markdown(r);
    let mut staged = StagedOutputs::new();
    staged.write(&r.report_path, |w| w.write_all(text.as_bytes()))?;
    staged.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{parse_task, DEFAULT_AI_MODEL};

    fn task_naming_model(model: &str) -> FoundryTask {
        let text = format!(
            r#"{{"task_id": "t", "type": "analyze_system", "source": "a", "ai_model": "{model}"}}"#
        );
        parse_task(Path::new("t.task.json"), &text).unwrap()
    }

    #[test]
    fn a_blank_ai_model_falls_back_to_the_default_model() {
        let llm = TaskLlm::default();
        for blank in ["", "   "] {
            let config = llm.config_for(&task_naming_model(blank)).unwrap();
            assert_eq!(config.model.as_deref(), Some(DEFAULT_AI_MODEL), "{blank:?}");
        }
        let named = llm.config_for(&task_naming_model("qwen3-8b")).unwrap();
        assert_eq!(named.model.as_deref(), Some("qwen3-8b"));
    }
}
