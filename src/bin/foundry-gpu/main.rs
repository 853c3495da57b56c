//! The `foundry-gpu` command line: arguments, progress bars, output and exit codes; the work is in the library.

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use foundry_gpu::backend::{bench, Backend, BackendChoice, GpuOptions};
use foundry_gpu::fold::{
    self, human_bytes, FoldOptions, OutputTarget, SectionChoice, DEFAULT_MAX_SIDE,
    DEFAULT_PREVIEW_SIDE,
};
use foundry_gpu::format::preview::Palette;
use foundry_gpu::format::rts_png::PngCompression;
use foundry_gpu::llm::{LlmClient, LlmConfig, LlmOverrides};
use foundry_gpu::process_memory::{self, MemOptions};
use foundry_gpu::progress::Progress;
use foundry_gpu::snapshot::{self, SnapshotOptions};
use foundry_gpu::source::tree::WalkOptions;
use foundry_gpu::task::run::TaskLlm;
use foundry_gpu::Error;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "foundry-gpu",
    version,
    about = "Fold Linux artifacts into Hilbert-curve textures (.brick, .rts.png) and back, bit for bit.",
    after_help = "Examples:\n  foundry-gpu fold /usr/bin/ls -o out/\n  foundry-gpu unfold out/ls.rts.png -o ls.bin\n  foundry-gpu info out/ls.brick\n  foundry-gpu preview out/ls.rts.png --palette entropy -o ls-entropy.png\n\nExit codes: 0 success, 1 the work failed (hash mismatch, GPU error, write error, invalid verdict), 2 bad usage or unreadable/malformed input."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// The engine the command chose (`--backend` of the commands that run one); not an option here.
    #[arg(skip = BackendChoice::Auto)]
    backend: BackendChoice,
    /// The command's `--gpu-timeout`; not an option here.
    #[arg(skip)]
    gpu_timeout: Option<std::time::Duration>,
    /// Print the result as JSON on stdout (no progress bar).
    #[arg(long, global = true)]
    json: bool,
    /// Say which backend and adapter did the work, and other details, on stderr.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// No progress bar.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Most bytes one input may hold (e.g. 512MiB, 16GiB); streams and devices such as /dev/zero are refused past it.
    #[arg(long, global = true, value_name = "SIZE", value_parser = foundry_gpu::source::parse_size, default_value = "4GiB", help_heading = "Input")]
    max_input: u64,
    /// Let --publish copy tiles of sources others cannot read (no o+r) and of process memory into the builder root (the policy's publish_private).
    #[arg(long, global = true)]
    publish_private: bool,
}

/// Which texture `locate --pixel` reads.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LocateLayout {
    Brick,
    #[value(name = "rts-png")]
    RtsPng,
}

/// `--offset`: decimal, or hexadecimal after `0x`.
fn parse_offset(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text:?} is not an offset (decimal, or hex with 0x): {e}"))
}

/// `--pixel X,Y`.
fn parse_pixel(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{text:?} is not a pixel: give X,Y (e.g. 100,37)");
    let (x, y) = text.split_once(',').ok_or_else(bad)?;
    Ok((
        x.trim().parse().map_err(|_| bad())?,
        y.trim().parse().map_err(|_| bad())?,
    ))
}

/// What `fold X -o -` writes to standard output.
#[derive(Clone, Copy, clap::ValueEnum)]
enum StreamFormat {
    Brick,
    #[value(name = "rts.png")]
    RtsPng,
    Png,
}

/// Which engine folds, unfolds and compares: only on the commands that run one.
#[derive(Args, Clone, Copy)]
#[command(next_help_heading = "Engine")]
struct EngineArgs {
    /// Which engine folds, unfolds and compares (auto: each kernel where `bench --calibrate` measured it faster).
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Longest any one GPU wait may take before the command fails (e.g. 30s); default 120s.
    #[arg(long, value_name = "DURATION", value_parser = process_memory::parse_duration)]
    gpu_timeout: Option<std::time::Duration>,
}

#[derive(Subcommand)]
enum Command {
    /// Fold a file into NAME.brick, NAME.rts.png and NAME.preview.png (or the one file -o names); a directory as `snapshot` does.
    #[command(
        after_help = "Examples:\n  foundry-gpu fold /usr/bin/ls -o out/            # out/ls.brick, out/ls.rts.png, out/ls.preview.png\n  foundry-gpu fold hello.txt -o hello.brick --texture-size 8\n  foundry-gpu fold /proc/meminfo -o meminfo.rts.png\n  foundry-gpu fold big.img -o out/ --max-side 4096   # parts + big.img.parts.json\n  foundry-gpu fold /usr/bin/ls -o out/ --sections .text,.rodata   # + ls.text.brick ...\n  foundry-gpu fold /proc/meminfo -o - --format rts.png > meminfo.rts.png\n\nIf -o ends in .brick, .rts.png or .png only that file is written; -o - --format F streams that one file to stdout; otherwise -o is a directory. Inputs larger than one --max-side texture are split into parts with an index NAME.parts.json."
    )]
    Fold {
        /// File to fold (read into memory, up to --max-input; /proc, /sys, devices and FIFOs are read to EOF).
        input: PathBuf,
        /// Output directory, or one .brick / .rts.png / .png file, or - for standard output (with --format).
        #[arg(short, long, help_heading = "Output")]
        output: PathBuf,
        /// With -o -: the one file to write to standard output.
        #[arg(long, value_enum, help_heading = "Output")]
        format: Option<StreamFormat>,
        /// Texture side to use; grown to the next power of two that fits (with a note), never truncating.
        #[arg(long, help_heading = "Output")]
        texture_size: Option<u32>,
        /// Largest texture side; bigger inputs are split into parts.
        #[arg(long, default_value_t = DEFAULT_MAX_SIDE, help_heading = "Output")]
        max_side: u32,
        #[command(flatten)]
        look: PreviewArgs,
        /// Deflate effort for .rts.png.
        #[arg(long, value_enum, default_value_t = PngCompression::Fast, help_heading = "Output")]
        compression: PngCompression,
        /// Also write both .rts.png sidecars (X.rts.meta.json and X.rts.png.meta.json).
        #[arg(long, help_heading = "Output")]
        sidecars: bool,
        /// ELF only: also fold these sections into NAME.SECTION.brick ("all", or ".text,.data").
        #[arg(long, value_name = "all|LIST", help_heading = "Output")]
        sections: Option<String>,
        /// With -o DIR: name the outputs NAME.brick, NAME.rts.png, ... instead of after INPUT.
        #[arg(long, conflicts_with = "watch", help_heading = "Output")]
        name: Option<String>,
        /// Ask the language-model server for a summary, tags, risk and warnings (under `semantic`; implies --sidecars).
        #[arg(long, help_heading = "LLM")]
        llm: bool,
        #[command(flatten)]
        server: LlmServerArgs,
        #[command(flatten)]
        tree: TreeArgs,
        /// Keep folding as INPUT changes (see `watch`); -o is a directory.
        #[arg(long, help_heading = "Watch")]
        watch: bool,
        #[command(flatten)]
        live: LiveArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Fold one or more directory trees: a brick per file, one district of them all, an index.
    #[command(
        after_help = "Examples:\n  foundry-gpu snapshot /etc -o etc-snap/\n  foundry-gpu snapshot / -o rootfs/ --one-file-system --exclude 'proc/**' --max-bytes 2000000000\n  foundry-gpu snapshot /usr/bin /usr/lib -o usr/ --include '*.so*' --no-file-bricks\n\nOUT gets files/ROOT/PATH.brick for each file, district.NNN.brick/.rts.png (all files in path order), district.parts.json (unfold it to get the concatenation back) and district.json (file -> bytes and pixels). Symlinks are recorded, never followed; unreadable, special, sparse and vanished files are skipped and counted."
    )]
    Snapshot {
        /// Directories to fold, each becoming a contiguous region of the district.
        #[arg(required = true)]
        roots: Vec<PathBuf>,
        #[command(flatten)]
        district: DistrictArgs,
        #[command(flatten)]
        tree: TreeArgs,
        /// Ask the language-model server about every file (answers land in district.json).
        #[arg(long, help_heading = "LLM")]
        llm: bool,
        #[command(flatten)]
        server: LlmServerArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Fold a running process's memory: a brick per mapping, one address-space district, a region table.
    #[command(
        after_help = "Examples:\n  foundry-gpu mem $$ -o shell-mem/\n  foundry-gpu mem 1234 -o snap/ --max-mapping-bytes 268435456 --no-mapping-bricks\n\nOUT gets mappings/NNNN-START-LABEL.brick, address-space.NNN.brick/.rts.png (readable mappings in address order), address-space.parts.json, regions.json (address range, permissions, path, offset in the district, or why it was skipped) and address-space.preview.png with every mapping outlined and labelled. Reading another user's process needs ptrace rights (same user and kernel.yama.ptrace_scope, or root); [vvar] and guard pages are skipped with a reason."
    )]
    Mem {
        /// Process ID.
        pid: u32,
        #[command(flatten)]
        district: DistrictArgs,
        /// Mappings larger than this are listed but not read.
        #[arg(long, default_value_t = 1 << 30)]
        max_mapping_bytes: u64,
        /// Stop reading mappings once the district holds this many bytes.
        #[arg(long, default_value_t = 4 << 30)]
        max_bytes: u64,
        /// Write only the district, not a brick per mapping.
        #[arg(long)]
        no_mapping_bricks: bool,
        /// Publish the address-space parts to this Geometry OS builder root.
        #[arg(long, value_name = "BUILDER_ROOT")]
        publish: Option<PathBuf>,
        /// Preview side in pixels (power of two, 16..=8192).
        #[arg(long, default_value_t = DEFAULT_PREVIEW_SIDE)]
        preview_side: u32,
        /// Take a series: a snapshot this often (e.g. 1s, 500ms) into OUT/NNN/, with a diff between each pair.
        #[arg(long, value_parser = process_memory::parse_duration, requires = "count", help_heading = "Series")]
        every: Option<std::time::Duration>,
        /// Snapshots in the series.
        #[arg(long, help_heading = "Series")]
        count: Option<usize>,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Run one FoundryTask file (JSON or YAML) and write TASK_ID.report.md beside its outputs.
    #[command(after_help = "Examples:
  foundry-gpu run openspec/tasks/examples/convert_binary.task.json
  foundry-gpu run task.yaml --output-root /srv/foundry/out --json
  foundry-gpu run scan.task.json --publish systems/builder

Types: convert_binary, convert_directory, crystallize_system, analyze_system (local heuristics), scan_kernel_modules (+ metadata/silicon_district.json), watch_path (re-folds on change until Ctrl-C, max_refolds or max_cycles), foundry-v2 (any source; CLI options as task fields: max_side, preview_side, palette, legend, sidecars, sections, max_files, max_bytes, include, exclude, one_file_system, file_bricks, district_brick, publish). Outputs go to OUTPUT_ROOT/TASK_ID/. Relative sources resolve against the task file's folder.")]
    Run {
        /// The task file.
        task: PathBuf,
        /// Root of all outputs.
        #[arg(long, default_value = "out")]
        output_root: PathBuf,
        /// Publish results to this Geometry OS builder root (a task's own `publish` field wins).
        #[arg(long, value_name = "BUILDER_ROOT")]
        publish: Option<PathBuf>,
        /// Ask the language-model server about every task's artifacts (analyze_system always does).
        #[arg(long, help_heading = "LLM")]
        llm: bool,
        #[command(flatten)]
        server: LlmServerArgs,
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Run every task dropped into a folder, each exactly once, until SIGINT/SIGTERM.
    #[command(
        after_help = "Examples:\n  foundry-gpu daemon\n  foundry-gpu daemon --tasks /srv/tasks --jobs 2 --output-root /srv/out\n  foundry-gpu daemon --exit-when-idle        # batch: run what is there, then exit\n\nPending: STEM.task.json or STEM.task.yaml. Running: STEM.task.json.claimed-DAEMON-aN (claimed first in the daemon's journal, .foundry/claims/; the name is only shown). Done: STEM.task.task.json.done with STEM.report.md beside it. Failed: STEM.task.json.failed with STEM.error.json. A task whose daemon died (kill -9) is re-run by the next daemon, up to 3 attempts. Nothing is deleted. SIGINT/SIGTERM finish the current task and exit 0. `foundry-gpu status` reads .foundry/status.json."
    )]
    Daemon {
        /// The task folder.
        #[arg(long, default_value = foundry_gpu::task::daemon::DEFAULT_TASKS)]
        tasks: PathBuf,
        /// Tasks run at once.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Root of all outputs.
        #[arg(long, default_value = "out")]
        output_root: PathBuf,
        /// Rescan the folder this often (milliseconds), besides file-system events.
        #[arg(long, default_value_t = 1000)]
        poll_ms: u64,
        /// Exit once no task is pending or running.
        #[arg(long)]
        exit_when_idle: bool,
        /// Run every task with the daemon's own rights, not its task file owner's (see README "Security model").
        #[arg(long)]
        run_as_daemon_user: bool,
        /// Make the task folder when it is missing (else a missing folder is an error).
        #[arg(long)]
        create: bool,
        /// Publish results to this Geometry OS builder root.
        #[arg(long, value_name = "BUILDER_ROOT")]
        publish: Option<PathBuf>,
        /// Ask the language-model server about every task's artifacts (analyze_system always does).
        #[arg(long, help_heading = "LLM")]
        llm: bool,
        #[command(flatten)]
        server: LlmServerArgs,
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Show the daemon's status: pending, running, done and failed tasks, the current one, the last error.
    #[command(
        after_help = "Examples:\n  foundry-gpu status\n  foundry-gpu status --tasks /srv/tasks --json"
    )]
    Status {
        /// The task folder.
        #[arg(long, default_value = foundry_gpu::task::daemon::DEFAULT_TASKS)]
        tasks: PathBuf,
    },
    /// Local analysis of a file: type, entropy regions, ELF hardening (like checksec), strings.
    #[command(
        after_help = "Examples:\n  foundry-gpu analyze /usr/bin/ls\n  foundry-gpu analyze module.ko --json\n\nThe local part is deterministic and offline. The language-model part asks the server (default http://localhost:1234, see --llm-url) unless --no-llm; when the server is absent or fails, the output says why under \"llm\" and the local analysis still stands."
    )]
    Analyze {
        /// The file to analyse.
        input: PathBuf,
        /// Local analysis only; do not ask the language-model server.
        #[arg(long, help_heading = "LLM")]
        no_llm: bool,
        #[command(flatten)]
        server: LlmServerArgs,
    },
    /// Keep bricks in step with files, trees, /proc and /sys files as they change.
    #[command(
        after_help = "Examples:\n  foundry-gpu watch /etc/hosts -o live/\n  foundry-gpu watch /proc/meminfo --interval 1s --publish systems/builder -o live/\n  foundry-gpu watch src/ -o live/ --versioned --json\n\nFiles are watched through their directory (notify, debounced), so deletion, re-creation, renames and symlink swaps are seen; /proc and /sys are polled every --interval. Each change re-folds only the changed file, atomically, and writes NAME.diff/ against the previous state. Outputs under OUT never trigger a re-fold. A failed re-fold is reported and retried on the next change. Ctrl-C stops."
    )]
    Watch {
        /// Files, directories, or /proc and /sys files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Output directory.
        #[arg(short, long)]
        output: PathBuf,
        /// Publish every re-fold to this builder root (the manifest timestamp grows each time).
        #[arg(long, value_name = "BUILDER_ROOT")]
        publish: Option<PathBuf>,
        #[command(flatten)]
        live: LiveArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Where a byte of an input lands in its textures, or which bytes a pixel holds, and what holds them.
    #[command(
        after_help = "Examples:\n  foundry-gpu locate /usr/bin/ls --offset 0x4020\n  foundry-gpu locate out/ls.brick --pixel 100,37\n  foundry-gpu locate out/big.parts.json --offset 300000000 --json\n  foundry-gpu locate snap/ --offset 123456        # which file holds this byte of the district\n  foundry-gpu locate mem/000/ --pixel 5,9 --layout rts-png\n  foundry-gpu locate /usr/bin/ls --region .text    # the squares .text covers in each texture\n  foundry-gpu locate mem/000/ --address 0x7f3a12345678\n\nA plain file is mapped as `fold` with default options would fold it, and its ELF sections are named. A .brick pixel holds one byte; a .rts.png pixel four (channels R, G, B, A in order)."
    )]
    #[command(
        group(clap::ArgGroup::new("what").required(true)),
        override_usage = "foundry-gpu locate [OPTIONS] <INPUT> <WHAT>\n       WHAT: --offset N | --address A | --region NAME | --pixel X,Y"
    )]
    Locate {
        /// A file, .brick, .rts.png, parts index, tree snapshot folder or memory snapshot folder.
        input: PathBuf,
        /// A byte offset of the input: decimal, or hex with 0x.
        #[arg(long, value_parser = parse_offset, group = "what")]
        offset: Option<u64>,
        /// A virtual address of a memory snapshot (decimal, or hex with 0x).
        #[arg(long, value_parser = parse_offset, group = "what")]
        address: Option<u64>,
        /// A named region: an ELF section (.text) or symbol (main), a snapshot's file (its path, or its end after a /), a mapping's path; prints the squares it covers.
        #[arg(long, group = "what")]
        region: Option<String>,
        /// A pixel X,Y of one texture (see --layout and --part).
        #[arg(long, value_parser = parse_pixel, group = "what")]
        pixel: Option<(u32, u32)>,
        /// With --pixel, which texture: the .brick's (the default where there is one) or the .rts.png's.
        #[arg(long, value_enum)]
        layout: Option<LocateLayout>,
        /// With --pixel, the part of an input split into parts.
        #[arg(long, default_value_t = 0)]
        part: usize,
    },
    /// Show inputs as a deep-zoom map in the browser: hover for offsets, click for hex, go to sections, diffs side by side.
    #[command(
        after_help = "Examples:\n  foundry-gpu view /usr/bin/ls --open\n  foundry-gpu view out/ls.rts.png snap/ mem/000/     # pick one in the page\n  foundry-gpu view old/ls new/ls --diff             # side by side, n / p step through the changes\n  foundry-gpu view ls-delta/                        # a diff folder: its A and B\n  foundry-gpu view disk.img --bind 0.0.0.0 --port 8080   # listen beyond loopback; the URL holds the token\n\nServes 127.0.0.1 on a free port unless told otherwise, only the inputs given, read-only; prints the URL (with the token every API request needs) and serves until Ctrl-C. Tiles follow the input: a file rewritten, or an output `watch` replaces, refreshes the changed tiles in the page."
    )]
    View {
        /// Files, .brick, .rts.png, parts indexes, tree or memory snapshot folders, a diff folder, or a map builder root.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Port to listen on (0: a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Address to listen on instead of 127.0.0.1.
        #[arg(long)]
        bind: Option<std::net::IpAddr>,
        /// The token every API request must carry (?token=), at least 16 URL-safe characters; made up when not given.
        #[arg(long)]
        token: Option<String>,
        /// Compare the two inputs and show them side by side, zoom and pan locked.
        #[arg(long)]
        diff: bool,
        /// Open the page in the browser ($BROWSER, else xdg-open).
        #[arg(long)]
        open: bool,
    },
    /// Compare two states: files, bricks/.rts.png, tree snapshots or memory snapshots.
    #[command(
        after_help = "Examples:\n  foundry-gpu diff old/ls new/ls -o ls-delta/\n  foundry-gpu diff snap-monday/ snap-tuesday/ -o week/ --json\n  foundry-gpu diff mem/000/ mem/001/ -o mem/diff-000-001/\n\nOUT gets delta.png (B in byte-class colours, unchanged dimmed, changed yellow, inserted green, moved purple), diff.json (block compare, inserted/deleted/moved/changed ranges, per-region and per-file counts) and a-to-b.patch (foundry-gpu patch A a-to-b.patch -o B rebuilds B bit for bit)."
    )]
    Diff {
        /// The older state.
        a: PathBuf,
        /// The newer state.
        b: PathBuf,
        /// Output directory.
        #[arg(short, long)]
        output: PathBuf,
        /// Comparison block in bytes (power of two, 64..=1048576); also the average chunk size.
        #[arg(long, default_value_t = foundry_gpu::diff::DEFAULT_BLOCK)]
        block: usize,
        /// delta.png side in pixels (power of two, 16..=8192).
        #[arg(long, default_value_t = DEFAULT_PREVIEW_SIDE)]
        preview_side: u32,
        /// Also write a-to-b.vcdiff (RFC 3284 VCDIFF), which `xdelta3 -d -s A` applies.
        #[arg(long)]
        vcdiff: bool,
        /// Compress more than 8 MiB of literal bytes alone (zstd level 3) instead of against A:
        /// seconds faster on a big change, a larger patch (what `watch` writes)
        #[arg(long)]
        fast_patch: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Rebuild B from A and a patch made by `diff` (checking both SHA-256s), or a VCDIFF delta made by `xdelta3 -e` or `diff --vcdiff`.
    #[command(
        after_help = "Examples:\n  foundry-gpu patch old/ls ls-delta/a-to-b.patch -o ls.new\n  foundry-gpu patch old/ls ls.xdelta -o ls.new      # made by xdelta3 -e -s old/ls new/ls ls.xdelta\n\nA is read as diff read it (a brick or snapshot gives the bytes it holds). Nothing is written unless A is the patch's A and the result is the patch's B."
    )]
    Patch {
        /// The older state the patch was made from.
        a: PathBuf,
        /// The patch (a-to-b.patch), or a VCDIFF delta (a-to-b.vcdiff, xdelta3's output).
        patch: PathBuf,
        /// File to write, or - for standard output.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Rebuild the original bytes from a .brick, .rts.png or NAME.parts.json, verifying SHA-256.
    #[command(
        after_help = "Examples:\n  foundry-gpu unfold out/ls.brick -o ls.bin\n  foundry-gpu unfold out/big.img.parts.json -o big.img\n\nNothing is written unless every SHA-256 matches."
    )]
    Unfold {
        /// A .brick, .rts.png or parts index.
        input: PathBuf,
        /// File to write, or - for standard output.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Show a brick's header or metadata, capacity, entropy, and whether it is valid.
    #[command(
        after_help = "Examples:\n  foundry-gpu info out/ls.brick\n  foundry-gpu info out/ls.rts.png --json\n\nExit code 1 when the verdict is invalid."
    )]
    Info {
        /// A .brick, .rts.png or parts index.
        input: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Render a preview PNG of a .brick, .rts.png or any file.
    #[command(
        after_help = "Examples:\n  foundry-gpu preview out/ls.brick -o ls.png\n  foundry-gpu preview out/ls.rts.png --palette entropy --legend -o ls-entropy.png"
    )]
    Preview {
        /// A .brick, .rts.png or any other file (shown as it would fold into a .brick).
        input: PathBuf,
        /// PNG to write, or - for standard output.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        look: PreviewArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Print a completion script for a shell.
    #[command(
        after_help = "Examples:\n  foundry-gpu completions bash > /etc/bash_completion.d/foundry-gpu\n  foundry-gpu completions zsh > \"${fpath[1]}/_foundry-gpu\"\n  foundry-gpu completions fish > ~/.config/fish/completions/foundry-gpu.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page, or write one per command into a folder.
    #[command(
        after_help = "Examples:\n  foundry-gpu man | man -l -\n  foundry-gpu man -o /usr/local/share/man/man1   # foundry-gpu.1, foundry-gpu-fold.1, ..."
    )]
    Man {
        /// Folder for foundry-gpu.1 and foundry-gpu-COMMAND.1 [default: foundry-gpu.1 on stdout].
        #[arg(short, long, value_name = "DIR")]
        output: Option<PathBuf>,
    },
    /// Measure the GPU against the CPU twins: GB/s per kernel, upload, readback, end to end; --calibrate stores where the auto engine runs each kernel.
    #[command(
        after_help = "Examples:\n  foundry-gpu bench                      # 256 MiB, table on stdout\n  foundry-gpu bench --size 1GiB --json > gpu.json\n  foundry-gpu bench --calibrate          # then the auto engine uses the GPU where it won\n\nThe calibration is cached per adapter in $FOUNDRY_GPU_CALIBRATION, else $XDG_CACHE_HOME/foundry-gpu/calibration.json (~/.cache/...)."
    )]
    Bench {
        /// Input size of the kernel and end-to-end rows, 4KiB to 1GiB (e.g. 64MiB).
        #[arg(long, value_name = "SIZE", value_parser = foundry_gpu::source::parse_size, default_value = "256MiB")]
        size: u64,
        /// Each figure is the best of this many runs.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
        repeats: u64,
        /// Also time every kernel at sizes from 4 KiB up to --calibrate-max and store the crossovers.
        #[arg(long)]
        calibrate: bool,
        /// Largest size the calibration samples.
        #[arg(long, value_name = "SIZE", value_parser = foundry_gpu::source::parse_size, default_value = "64MiB")]
        calibrate_max: u64,
        /// Longest any one GPU wait may take (e.g. 30s); default 120s.
        #[arg(long, value_name = "DURATION", value_parser = process_memory::parse_duration)]
        gpu_timeout: Option<std::time::Duration>,
        /// Also write the report as JSON to this file (the table still goes to stdout).
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// One daemon task, run as its owner: reads the job from stdin, prints the outcome (the daemon starts it).
    #[command(hide = true)]
    TaskWorker,
}

impl Command {
    /// The engine options of a command that runs an engine.
    fn engine_args(&self) -> Option<&EngineArgs> {
        match self {
            Command::Fold { engine, .. }
            | Command::Snapshot { engine, .. }
            | Command::Mem { engine, .. }
            | Command::Run { engine, .. }
            | Command::Daemon { engine, .. }
            | Command::Watch { engine, .. }
            | Command::Diff { engine, .. }
            | Command::Patch { engine, .. }
            | Command::Unfold { engine, .. }
            | Command::Info { engine, .. }
            | Command::Preview { engine, .. } => Some(engine),
            _ => None,
        }
    }

    /// The `--backend` of a command that runs an engine; `auto` for the others.
    fn engine(&self) -> BackendChoice {
        self.engine_args()
            .map_or(BackendChoice::Auto, |engine| engine.backend)
    }

    /// The `--gpu-timeout` of a command that runs an engine (or measures one).
    fn gpu_timeout(&self) -> Option<std::time::Duration> {
        match self {
            Command::Bench { gpu_timeout, .. } => *gpu_timeout,
            _ => self.engine_args().and_then(|engine| engine.gpu_timeout),
        }
    }
}

/// How a watch runs (`watch`, `fold --watch`).
#[derive(Args, Clone)]
#[command(next_help_heading = "Watch")]
struct LiveArgs {
    /// Poll period for /proc and /sys (and a stat check of watched files), e.g. 1s, 250ms.
    #[arg(long, value_parser = process_memory::parse_duration, default_value = "1s")]
    interval: std::time::Duration,
    /// A path is re-folded once its events have been quiet this long.
    #[arg(long, value_parser = process_memory::parse_duration, default_value = foundry_gpu::watch::DEFAULT_DEBOUNCE)]
    debounce: std::time::Duration,
    /// A path that never goes quiet is still re-folded this often.
    #[arg(long, value_parser = process_memory::parse_duration, default_value = foundry_gpu::watch::DEFAULT_MAX_DELAY)]
    max_delay: std::time::Duration,
    /// Name each re-fold NAME.vN.* (for readers that cache textures by path).
    #[arg(long)]
    versioned: bool,
    /// Stop after this many re-folds.
    #[arg(long)]
    max_refolds: Option<u64>,
    /// Stop after this long (e.g. 10m).
    #[arg(long, value_parser = process_memory::parse_duration)]
    duration: Option<std::time::Duration>,
}

impl LiveArgs {
    fn options(
        &self,
        output: &Path,
        publish: Option<PathBuf>,
        fold: FoldOptions,
    ) -> foundry_gpu::watch::WatchOptions {
        foundry_gpu::watch::WatchOptions {
            policy: None,
            output: output.to_path_buf(),
            interval: self.interval,
            debounce: self.debounce,
            max_delay: self.max_delay,
            publish,
            versioned: self.versioned,
            fold,
            max_refolds: self.max_refolds,
            duration: self.duration,
        }
    }
}

/// Runs a watch until Ctrl-C/SIGTERM or a limit, printing each event (a JSON line with --json).
fn run_watch(
    global: &Global,
    paths: &[PathBuf],
    opts: &foundry_gpu::watch::WatchOptions,
) -> Result<ExitCode, Error> {
    let backend = open_backend(global)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(signal, Arc::clone(&stop));
    }
    let json = global.json;
    let summary = foundry_gpu::watch::watch(&backend, paths, opts, &stop, &mut |event| {
        if json {
            println!(
                "{}",
                serde_json::to_string(event).expect("event serialises")
            );
        } else {
            match event.kind {
                "refolded" => println!(
                    "{} v{} {} in {:.0} ms{}{}",
                    event.path.display(),
                    event.version,
                    human_bytes(event.size.unwrap_or(0)),
                    event.latency_seconds * 1000.0,
                    event
                        .percent_different
                        .map(|p| format!(", {p:.2} % different"))
                        .unwrap_or_default(),
                    event
                        .refolded
                        .map(|r| format!(", re-folded {} of {} pages", r.pages, r.of_pages))
                        .unwrap_or_default()
                ),
                kind => println!(
                    "{} {kind}{}",
                    event.path.display(),
                    event
                        .error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
            }
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    })?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&summary).expect("summary serialises")
        );
    } else {
        println!(
            "watched {:.1} s: {} re-fold(s), {} failed, {} vanished",
            summary.seconds, summary.refolds, summary.failures, summary.vanished
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The policy tasks obey (`run`, `daemon`).
#[derive(Args, Clone)]
#[command(next_help_heading = "Policy")]
struct PolicyArgs {
    /// Policy file (a [policy] table) [default: the [policy] table of --config or ./foundry.toml, else the built-in defaults; see README "Security model"].
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Print what each task would read and write, checked against the policy; run nothing.
    #[arg(long)]
    dry_run: bool,
}

impl PolicyArgs {
    /// The policy for tasks from `task_root` writing below `output_root`.
    fn load(
        &self,
        server: &LlmServerArgs,
        task_root: &Path,
        output_root: &Path,
    ) -> Result<Arc<foundry_gpu::policy::Policy>, Error> {
        let settings = match &self.policy {
            Some(file) => foundry_gpu::policy::read_settings(file)?,
            None => foundry_gpu::config::load(server.config.as_deref())?.policy,
        };
        if settings.publish_private == Some(true) {
            foundry_gpu::map::allow_private_publish(true);
        }
        let policy = Arc::new(foundry_gpu::policy::Policy::new(
            &settings,
            task_root,
            output_root,
        )?);
        // From here on, every input this process reads is judged by the policy on the object
        // it opened, not on the path a task wrote.
        foundry_gpu::source::confine::confine_reads(policy.clone());
        Ok(policy)
    }

    /// The LLM settings and the policy together: the policy names the hosts it may ask.
    fn task_llm(
        &self,
        server: &LlmServerArgs,
        llm: bool,
        policy: &foundry_gpu::policy::Policy,
    ) -> Result<TaskLlm, Error> {
        let mut config = server.resolve()?;
        config.allowed_hosts = policy.llm_hosts.clone();
        Ok(TaskLlm {
            config,
            enabled: llm,
            model_pinned: server.llm_model.is_some(),
            url_pinned: server.llm_url.is_some(),
        })
    }
}

fn print_plan(plan: &foundry_gpu::task::run::TaskPlan, json: bool) {
    if json {
        print_json(plan);
        return;
    }
    println!(
        "task {} ({:?}): allowed by the policy",
        plan.task_id, plan.kind
    );
    for read in &plan.reads {
        println!("  reads:   {}", read.display());
    }
    if let Some(walk) = &plan.walk {
        println!(
            "  walk:    {} files, {}",
            walk.files,
            human_bytes(walk.bytes)
        );
        for file in &walk.first_files {
            println!("           {}", file.display());
        }
        for (reason, count) in &walk.skipped {
            println!("  skips:   {count} {reason}");
        }
        for denied in &walk.denied {
            println!("  denied:  {denied}");
        }
    }
    println!("  writes:  {}/", plan.output_dir.display());
    for file in &plan.writes {
        println!("           {}", file.display());
    }
    if let Some(p) = &plan.publish {
        println!("  publish: {}", p.display());
    }
    if let Some(url) = &plan.llm {
        println!("  asks:    {url}");
    }
}

/// `daemon --dry-run`: every pending task's plan (or why the policy refuses it); nothing is
/// claimed, read or written.
fn daemon_dry_run(
    tasks: &Path,
    output_root: &Path,
    publish: Option<PathBuf>,
    llm: TaskLlm,
    policy: Arc<foundry_gpu::policy::Policy>,
    json: bool,
) -> Result<ExitCode, Error> {
    use foundry_gpu::task::daemon::{task_state, TaskState};
    let mut names: Vec<String> = std::fs::read_dir(tasks)
        .map_err(|e| Error::io(tasks, "read", e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| matches!(task_state(n), Some(TaskState::Pending { .. })))
        .collect();
    names.sort();
    let opts = foundry_gpu::task::run::RunOptions {
        output_root: output_root.to_path_buf(),
        task_root: tasks.to_path_buf(),
        publish,
        llm,
        policy: Arc::clone(&policy),
    };
    let mut plans = Vec::new();
    for name in &names {
        let path = tasks.join(name);
        let plan = foundry_gpu::task::read_task(
            &path,
            &path,
            Some(tasks),
            policy.limits.max_task_file_bytes,
        )
        .and_then(|task| foundry_gpu::task::run::dry_run(&task, &opts));
        match plan {
            Ok(plan) if json => plans.push(serde_json::json!({"task_file": path, "plan": plan})),
            Ok(plan) => print_plan(&plan, false),
            Err(e) if json => {
                plans.push(serde_json::json!({"task_file": path, "refused": e.to_string()}))
            }
            Err(e) => println!("{name}: would fail: {e}"),
        }
    }
    if json {
        print_json(&plans);
    } else if names.is_empty() {
        println!("{}: no pending tasks", tasks.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Which language-model server to ask and how (`fold`, `run`, `daemon`, `analyze`).
#[derive(Args, Clone)]
#[command(next_help_heading = "LLM")]
struct LlmServerArgs {
    /// LM Studio / OpenAI-compatible base URL; wins over a task's llm_url, which wins over FOUNDRY_LLM_URL [default: http://localhost:1234].
    #[arg(long, value_name = "URL")]
    llm_url: Option<String>,
    /// Model to ask; wins over a task's ai_model, which wins over FOUNDRY_LLM_MODEL and foundry.toml [default: the server's first; for tasks, glm-4-9b-0414].
    #[arg(long, value_name = "NAME")]
    llm_model: Option<String>,
    /// Answer cache [default: ~/.cache/foundry-gpu/llm; env FOUNDRY_LLM_CACHE].
    #[arg(long, value_name = "DIR")]
    llm_cache: Option<PathBuf>,
    /// Always ask the server; neither read nor write the answer cache.
    #[arg(long)]
    no_llm_cache: bool,
    /// Settings file with an [llm] table [default: ./foundry.toml when present].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl LlmServerArgs {
    /// Command line over environment over `foundry.toml` over defaults.
    fn resolve(&self) -> Result<LlmConfig, Error> {
        let file = foundry_gpu::config::load(self.config.as_deref())?;
        let overrides = LlmOverrides {
            base_url: self.llm_url.clone(),
            model: self.llm_model.clone(),
            cache_dir: self.llm_cache.clone(),
            no_cache: self.no_llm_cache,
        };
        let mut config = LlmConfig::resolve(&file.llm, &|k| std::env::var(k).ok(), &overrides)
            .map_err(|e| match &file.source {
                Some(path) => Error::malformed(path, e),
                None => Error::Usage(e),
            })?;
        config.allowed_hosts = file.policy.llm_hosts;
        Ok(config)
    }

    /// The client when `--llm` asked for one.
    fn client_if(&self, llm: bool) -> Result<Option<Arc<LlmClient>>, Error> {
        llm.then(|| self.client()).transpose()
    }

    fn client(&self) -> Result<Arc<LlmClient>, Error> {
        LlmClient::new(self.resolve()?)
            .map(Arc::new)
            .map_err(Error::Usage)
    }
}

/// Where a district goes and how it is cut (`snapshot`, `mem`).
#[derive(Args)]
#[command(next_help_heading = "Output")]
struct DistrictArgs {
    /// Output directory.
    #[arg(short, long)]
    output: PathBuf,
    /// Largest texture side; the district is split into parts of this side.
    #[arg(long, default_value_t = DEFAULT_MAX_SIDE)]
    max_side: u32,
    /// Deflate effort for the district's .rts.png parts.
    #[arg(long, value_enum, default_value_t = PngCompression::Fast)]
    compression: PngCompression,
}

/// Options for directory trees (`fold DIR`, `snapshot`).
#[derive(Args)]
#[command(next_help_heading = "Tree")]
struct TreeArgs {
    /// Fold at most this many files (the first in path order).
    #[arg(long)]
    max_files: Option<u64>,
    /// Stop adding files once their sizes reach this many bytes.
    #[arg(long)]
    max_bytes: Option<u64>,
    /// Only files whose path below the root matches (repeatable), e.g. '**/*.so'.
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// Leave out files and directories whose path below the root matches (repeatable).
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Stay on each root's file system.
    #[arg(long)]
    one_file_system: bool,
    /// Also write a brick per file (files/ROOT/PATH.brick): 4 bytes a byte, padded to a square.
    #[arg(long)]
    file_bricks: bool,
    /// The default now (kept so that older scripts still run).
    #[arg(long, hide = true, conflicts_with = "file_bricks")]
    no_file_bricks: bool,
    /// Also write the district's parts as .brick (4 bytes a byte; the .rts.png parts hold the same bytes).
    #[arg(long)]
    district_brick: bool,
    /// Publish the .rts.png tiles to this Geometry OS builder root (queue/ + map/manifest.json).
    #[arg(long, value_name = "BUILDER_ROOT")]
    publish: Option<PathBuf>,
}

impl TreeArgs {
    fn options(&self, max_side: u32, compression: PngCompression) -> SnapshotOptions {
        SnapshotOptions {
            walk: WalkOptions {
                max_files: self.max_files,
                max_files_per_root: None,
                max_bytes: self.max_bytes,
                include: self.include.clone(),
                exclude: self.exclude.clone(),
                one_file_system: self.one_file_system,
                policy: None,
            },
            max_side,
            compression,
            file_bricks: self.file_bricks,
            district_brick: self.district_brick,
            publish: self.publish.clone(),
            llm: None,
        }
    }
}

/// How previews look (`fold`, `preview`).
#[derive(Args)]
#[command(next_help_heading = "Preview")]
struct PreviewArgs {
    /// Preview colours.
    #[arg(long, value_enum, default_value_t = Palette::Byteclass)]
    palette: Palette,
    /// Preview side in pixels (power of two, 16..=8192); each pixel summarises its whole byte range.
    #[arg(long, default_value_t = DEFAULT_PREVIEW_SIDE)]
    preview_side: u32,
    /// Add a legend strip under the preview.
    #[arg(long)]
    legend: bool,
}

/// An indicatif bar, drawn only on a terminal; tree walks add files and files/s.
struct Bar {
    bar: ProgressBar,
    stage: std::sync::Mutex<String>,
    files: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
}

impl Bar {
    fn new(enabled: bool) -> Self {
        let target = if enabled && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        Bar {
            bar,
            stage: Default::default(),
            files: Default::default(),
            started: std::time::Instant::now(),
        }
    }
}

impl Progress for Bar {
    fn stage(&self, name: &str, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(0);
        self.bar.set_message(name.to_string());
        *self.stage.lock().expect("stage") = name.to_string();
    }
    fn advance(&self, done: u64) {
        self.bar.inc(done);
    }
    fn files(&self, done: u64) {
        use std::sync::atomic::Ordering;
        let files = self.files.fetch_add(done, Ordering::Relaxed) + done;
        let rate = files as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let stage = self.stage.lock().expect("stage").clone();
        self.bar
            .set_message(format!("{stage} {files} files {rate:.0}/s"));
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("reports serialise")
    );
}

fn open_backend(global: &Global) -> Result<Backend, Error> {
    let options = GpuOptions {
        wait_timeout: global.gpu_timeout,
        ..GpuOptions::default()
    };
    let backend = Backend::select(global.backend, &options)?;
    if global.verbose {
        match backend.adapter() {
            Some(a) => eprintln!(
                "backend: {} on {} ({}, {})",
                backend.label(),
                a.name,
                a.driver,
                a.backend
            ),
            None => eprintln!("backend: cpu ({} threads)", rayon::current_num_threads()),
        }
    }
    Ok(backend)
}

/// The inputs the user named directly: the only ones that may be FIFOs.
fn named_inputs(command: &Command) -> Vec<&Path> {
    match command {
        Command::Fold { input, .. }
        | Command::Analyze { input, .. }
        | Command::Unfold { input, .. }
        | Command::Preview { input, .. } => vec![input],
        Command::Diff { a, b, .. } => vec![a, b],
        Command::Patch { a, patch, .. } => vec![a, patch],
        _ => Vec::new(),
    }
}

/// Prints a line of the report on stdout, or on stderr when stdout carries the output (`-o -`).
fn say(stdout_taken: bool, line: std::fmt::Arguments) {
    if stdout_taken {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// [`print_json`], on stderr when stdout carries the output (`-o -`).
fn print_json_beside(stdout_taken: bool, value: &impl serde::Serialize) {
    let text = serde_json::to_string_pretty(value).expect("reports serialise");
    say(stdout_taken, format_args!("{text}"));
}

/// `fold`'s target: `-o -` needs `--format`, and `--format` goes only with `-o -`.
fn fold_target(output: &Path, format: Option<StreamFormat>) -> Result<OutputTarget, Error> {
    let stdout = foundry_gpu::format::staged::is_stdout(output);
    match (stdout, format) {
        (true, Some(StreamFormat::Brick)) => Ok(OutputTarget::Brick(output.into())),
        (true, Some(StreamFormat::RtsPng)) => Ok(OutputTarget::RtsPng(output.into())),
        (true, Some(StreamFormat::Png)) => Ok(OutputTarget::Preview(output.into())),
        (true, None) => Err(Error::Usage(
            "-o - writes one file to standard output: say which with --format brick, rts.png or png".into(),
        )),
        (false, Some(_)) => Err(Error::Usage(
            "--format goes with -o -; for a file, end -o in .brick, .rts.png or .png".into(),
        )),
        (false, None) => Ok(OutputTarget::from_path(output)),
    }
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    let global = &cli.global;
    foundry_gpu::source::set_max_input(global.max_input);
    foundry_gpu::map::allow_private_publish(global.publish_private);
    foundry_gpu::source::name_inputs(named_inputs(&cli.command));
    let bar = Bar::new(!global.json && !global.quiet);
    match cli.command {
        Command::TaskWorker => {
            drop(bar);
            foundry_gpu::task::worker::serve_one_job()
                .map_err(|e| Error::io("stdout", "write", e))?;
        }
        Command::Bench {
            size,
            repeats,
            calibrate,
            calibrate_max,
            report: report_path,
            ..
        } => {
            drop(bar);
            if report_path.as_deref() == Some(Path::new("-")) {
                return Err(Error::Usage(
                    "bench --report takes a file; --json prints the report on stdout".into(),
                ));
            }
            let options = GpuOptions {
                wait_timeout: global.gpu_timeout,
                ..GpuOptions::default()
            };
            let device = foundry_gpu::backend::GpuBackend::open(&options)?;
            let report = bench::run(
                &device,
                &bench::BenchOptions {
                    bytes: usize::try_from(size).unwrap_or(usize::MAX),
                    repeats: repeats as usize,
                    calibrate,
                    calibrate_max_bytes: usize::try_from(calibrate_max).unwrap_or(usize::MAX),
                },
            )?;
            if let Some(path) = &report_path {
                let text = serde_json::to_string_pretty(&report).expect("reports serialise");
                let mut staged = foundry_gpu::format::staged::StagedOutputs::new();
                staged.write(path, |w| w.write_all(text.as_bytes()))?;
                staged.commit()?;
            }
            if global.json {
                print_json(&report);
            } else {
                print!("{}", bench::render_table(&report));
            }
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "foundry-gpu",
                &mut std::io::stdout(),
            );
        }
        Command::Man { output: None } => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| Error::io("stdout", "write", e))?;
        }
        Command::Man {
            output: Some(folder),
        } => {
            // One page for the tool and one per command, written as every output is: staged,
            // then renamed into place together.
            let mut tool = Cli::command();
            tool.build();
            let mut pages = vec![("foundry-gpu".to_string(), tool.clone())];
            for command in tool
                .get_subcommands()
                .filter(|c| !c.is_hide_set() && c.get_name() != "help")
            {
                let name = format!("foundry-gpu-{}", command.get_name());
                let page = command.clone().name(name.clone());
                pages.push((name, page.version(env!("CARGO_PKG_VERSION"))));
            }
            let mut staged = foundry_gpu::format::staged::StagedOutputs::new();
            for (name, page) in pages {
                staged.write(&folder.join(format!("{name}.1")), |w| {
                    clap_mangen::Man::new(page).render(w)
                })?;
            }
            staged.commit()?;
        }
        Command::Fold {
            input,
            output,
            format,
            texture_size,
            max_side,
            look,
            compression,
            sidecars,
            sections,
            name,
            llm,
            server,
            tree,
            watch,
            live,
            ..
        } => {
            if let Some(name) = &name {
                fold::check_output_name(name, &input, &OutputTarget::from_path(&output))?;
            }
            let opts = FoldOptions {
                texture_size,
                max_side,
                palette: look.palette,
                preview_side: look.preview_side,
                legend: look.legend,
                compression,
                sidecars,
                sections: sections
                    .as_deref()
                    .map_or(SectionChoice::None, SectionChoice::parse),
                name,
                llm: server.client_if(llm)?,
                intent: None,
                output_mode: None,
            };
            let target = fold_target(&output, format)?;
            let streamed = target.is_stdout();
            if streamed && (watch || input.is_dir() || tree.publish.is_some()) {
                return Err(Error::Usage(
                    "-o - streams one file folded from one input; --watch, a directory input and --publish write files".into(),
                ));
            }
            if watch {
                drop(bar);
                let live = live.options(&output, tree.publish.clone(), opts);
                return run_watch(global, &[input], &live);
            }
            if input.is_dir() {
                let backend = open_backend(global)?;
                let snapshot_opts = snapshot::SnapshotOptions {
                    llm: opts.llm,
                    ..tree.options(max_side, compression)
                };
                let report = snapshot::snapshot(&backend, &[input], &output, &snapshot_opts, &bar)?;
                drop(bar);
                print_snapshot(global, &report);
                return Ok(ExitCode::SUCCESS);
            }
            let backend = open_backend(global)?;
            let report = fold::fold_file(&backend, &input, &target, &opts, &bar)?;
            drop(bar);
            if let Some(builder) = &tree.publish {
                let published = fold::publish(&report, builder)?;
                if !global.json {
                    println!(
                        "published {} tile(s) to {}",
                        published.tiles,
                        published.manifest.display()
                    );
                }
            }
            if global.json {
                print_json_beside(streamed, &report);
            } else {
                say(
                    streamed,
                    format_args!(
                        "folded {} ({}, {:.2} bits/byte{}{}) on {} in {:.2} s",
                        input.display(),
                        human_bytes(report.source.size),
                        report.source.entropy,
                        if report.flags.is_empty() { "" } else { ", " },
                        report.flags.join(" "),
                        report.backend,
                        report.seconds
                    ),
                );
                for o in &report.outputs {
                    let side = o.side.map(|s| format!("{s}x{s}")).unwrap_or_default();
                    say(
                        streamed,
                        format_args!(
                            "  {:<16} {:<11} {:>10}  {}",
                            o.kind,
                            side,
                            human_bytes(o.bytes),
                            o.path.display()
                        ),
                    );
                }
                // Standard output carries the texture: the summary stays off it.
                if !streamed {
                    print_semantic(&report.semantic);
                }
                for note in &report.notes {
                    eprintln!("note: {note}");
                }
            }
        }
        Command::Snapshot {
            roots,
            district,
            tree,
            llm,
            server,
            ..
        } => {
            let backend = open_backend(global)?;
            let mut opts = tree.options(district.max_side, district.compression);
            opts.llm = server.client_if(llm)?;
            let report = snapshot::snapshot(&backend, &roots, &district.output, &opts, &bar)?;
            drop(bar);
            print_snapshot(global, &report);
        }
        Command::Mem {
            pid,
            district,
            max_mapping_bytes,
            max_bytes,
            no_mapping_bricks,
            preview_side,
            publish,
            every,
            count,
            ..
        } => {
            let policy = foundry_gpu::config::load(None)?.policy;
            if policy.process_memory_interactive == Some(false) {
                return Err(Error::Policy {
                    path: PathBuf::from(format!("/proc/{pid}/mem")),
                    rule: "process_memory_interactive = false (foundry.toml [policy])".into(),
                });
            }
            let backend = open_backend(global)?;
            let opts = MemOptions {
                max_side: district.max_side,
                compression: district.compression,
                max_mapping_bytes,
                max_bytes,
                mapping_bricks: !no_mapping_bricks,
                preview_side,
                publish,
            };
            if let Some(count) = count {
                let every = every.unwrap_or(std::time::Duration::from_secs(1));
                let series = process_memory::snapshot_series(
                    &backend,
                    pid,
                    &district.output,
                    &opts,
                    every,
                    count,
                    &bar,
                )?;
                drop(bar);
                if global.json {
                    print_json(&series);
                } else {
                    println!(
                        "{} snapshot(s) of process {pid} in {} ({:.1} s); change detection: {}",
                        series.steps.len(),
                        district.output.display(),
                        series.seconds,
                        series.change_detection
                    );
                    for step in &series.steps {
                        match (&step.diff, &step.stopped) {
                            (_, Some(why)) => println!("  {:03}  stopped: {why}", step.index),
                            (Some(d), None) => println!(
                                "  {:03}  {}  {} bytes differ in place ({:.2} %){}, {} mapping(s) appeared, {} disappeared, {} changed  ({})",
                                step.index,
                                human_bytes(step.bytes),
                                step.bytes_differ.unwrap_or(0),
                                step.percent_different.unwrap_or(0.0),
                                step.content.as_ref().map_or(String::new(), |t| format!(
                                    "; by content {} changed, {} inserted, {} deleted, {} moved",
                                    human_bytes(t.changed),
                                    human_bytes(t.inserted),
                                    human_bytes(t.deleted),
                                    human_bytes(t.moved)
                                )),
                                step.mappings_appeared.as_ref().map_or(0, Vec::len),
                                step.mappings_disappeared.as_ref().map_or(0, Vec::len),
                                step.mappings_changed.unwrap_or(0),
                                d.display()
                            ),
                            (None, None) => {
                                println!("  {:03}  {}", step.index, human_bytes(step.bytes))
                            }
                        }
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            let report =
                process_memory::snapshot_process(&backend, pid, &district.output, &opts, &bar)?;
            drop(bar);
            if global.json {
                print_json(&report);
            } else {
                println!(
                    "read {} of {} mappings of process {} ({}) on {} in {:.2} s",
                    report.read,
                    report.mappings,
                    pid,
                    human_bytes(report.bytes),
                    report.backend,
                    report.seconds
                );
                println!("  regions: {}", report.regions.display());
                if let Some(p) = &report.preview {
                    println!("  preview: {}", p.display());
                }
                for note in &report.notes {
                    eprintln!("note: {note}");
                }
            }
        }
        Command::Run {
            task,
            output_root,
            publish,
            llm,
            server,
            policy,
            ..
        } => {
            let task_root = task
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            foundry_gpu::format::staged::check_output_dir(&output_root)?;
            // Absolute once, here: a relative task folder must not be joined twice when a
            // source is judged (`run ../tasks/x.task.json`, a service started in `/`).
            let task_root = foundry_gpu::policy::absolute(&task_root)?;
            // The policy first: its max_task_file_bytes bounds the read of the task file.
            let rules = policy.load(&server, &task_root, &output_root)?;
            let parsed =
                foundry_gpu::task::read_task(&task, &task, None, rules.limits.max_task_file_bytes)?;
            let task_llm = policy.task_llm(&server, llm, &rules)?;
            let opts = foundry_gpu::task::run::RunOptions {
                output_root,
                task_root,
                publish,
                llm: task_llm,
                policy: rules,
            };
            if policy.dry_run {
                drop(bar);
                print_plan(
                    &foundry_gpu::task::run::dry_run(&parsed, &opts)?,
                    global.json,
                );
                return Ok(ExitCode::SUCCESS);
            }
            foundry_gpu::task::run::confine_task_writes(
                &opts.output_root,
                opts.publish.as_deref(),
                None,
                &opts.llm,
            )?;
            let backend = open_backend(global)?;
            let report = foundry_gpu::task::run::run_task(&backend, &parsed, &task, &opts, &bar)?;
            drop(bar);
            if global.json {
                print_json(&report);
            } else {
                print!(
                    "{}",
                    std::fs::read_to_string(&report.report_path).unwrap_or_default()
                );
            }
        }
        Command::Daemon {
            tasks,
            jobs,
            output_root,
            poll_ms,
            exit_when_idle,
            run_as_daemon_user,
            create,
            publish,
            llm,
            server,
            policy,
            ..
        } => {
            drop(bar);
            foundry_gpu::task::daemon::check_task_folder(&tasks, create && !policy.dry_run)?;
            foundry_gpu::format::staged::check_output_dir(&output_root)?;
            let tasks = foundry_gpu::policy::absolute(&tasks)?;
            let rules = policy.load(&server, &tasks, &output_root)?;
            let task_llm = policy.task_llm(&server, llm, &rules)?;
            if policy.dry_run {
                return daemon_dry_run(&tasks, &output_root, publish, task_llm, rules, global.json);
            }
            foundry_gpu::task::run::confine_task_writes(
                &output_root,
                publish.as_deref(),
                Some(&tasks),
                &task_llm,
            )?;
            let backend = open_backend(global)?;
            let opts = foundry_gpu::task::daemon::DaemonOptions {
                tasks,
                output_root,
                jobs,
                poll: std::time::Duration::from_millis(poll_ms),
                exit_when_idle,
                publish,
                llm: task_llm,
                policy: rules,
                events: None,
                rights: if run_as_daemon_user {
                    foundry_gpu::task::worker::TaskRights::Daemon
                } else {
                    foundry_gpu::task::worker::TaskRights::TaskOwner
                },
                worker_exe: std::env::current_exe().ok(),
            };
            // One line per task started and ended, on stderr (stdout keeps the summary or the
            // JSON); -q silences them.
            let (opts, printer) = if global.quiet {
                (opts, None)
            } else {
                let (sender, events) = std::sync::mpsc::channel();
                let printer = std::thread::spawn(move || {
                    use std::io::Write;
                    for event in events {
                        let _ = writeln!(std::io::stderr(), "{event}");
                    }
                });
                (
                    foundry_gpu::task::daemon::DaemonOptions {
                        events: Some(sender),
                        ..opts
                    },
                    Some(printer),
                )
            };
            let status = foundry_gpu::task::daemon::run_daemon(&backend, opts);
            if let Some(printer) = printer {
                // The sender went with the options: the printer ends once every line is out.
                let _ = printer.join();
            }
            let status = status?;
            // Written, not printed: stdout may be a pipe closed long ago (the daemon ignores
            // SIGPIPE), and the tasks are done whatever happens to this line.
            use std::io::Write;
            let _ = if global.json {
                writeln!(
                    std::io::stdout(),
                    "{}",
                    serde_json::to_string_pretty(&status).expect("status serialises")
                )
            } else {
                writeln!(
                    std::io::stdout(),
                    "daemon stopped: {} done, {} failed, {} pending",
                    status.done,
                    status.failed,
                    status.pending
                )
            };
        }
        Command::Status { tasks } => {
            drop(bar);
            let status = foundry_gpu::task::daemon::read_status(&tasks)?;
            if global.json {
                print_json(&status);
            } else {
                println!(
                    "{}: {} pending, {} running, {} done, {} failed",
                    tasks.display(),
                    status.pending,
                    status.running,
                    status.done,
                    status.failed
                );
                if !status.current.is_empty() {
                    println!("  current: {}", status.current.join(", "));
                }
                if let Some(e) = &status.last_error {
                    println!("  last error: {e}");
                }
                if status.daemon_pid != 0 {
                    println!(
                        "  last daemon: pid {}, status written {}",
                        status.daemon_pid,
                        foundry_gpu::task::iso_time(status.updated_at)
                    );
                }
            }
        }
        Command::Analyze {
            input,
            no_llm,
            server,
        } => {
            drop(bar);
            let data = foundry_gpu::source::read_input(&input)?;
            let analysis = foundry_gpu::analysis::local::analyze(&data);
            let outcome = if no_llm {
                None
            } else {
                let client = server.client()?;
                let name = input
                    .file_name()
                    .map_or("input".into(), |n| n.to_string_lossy().into_owned());
                Some(client.describe(foundry_gpu::llm::ArtifactRequest {
                    name: &name,
                    data: &data,
                    analysis: &analysis,
                    intent: None,
                }))
            };
            let semantic = foundry_gpu::semantic::semantic_json(&analysis, outcome.as_ref());
            if global.json {
                print_json(&serde_json::json!({"input": input, "analysis": analysis,
                    "semantic": semantic}));
            } else {
                print_analysis(&input, &analysis);
                print_semantic(&semantic);
            }
        }
        Command::Watch {
            paths,
            output,
            publish,
            live,
            ..
        } => {
            drop(bar);
            let opts = live.options(&output, publish, FoldOptions::default());
            return run_watch(global, &paths, &opts);
        }
        Command::Diff {
            a,
            b,
            output,
            block,
            preview_side,
            vcdiff,
            fast_patch,
            ..
        } => {
            let backend = open_backend(global)?;
            let opts = foundry_gpu::diff::DiffOptions {
                block,
                preview_side,
                vcdiff,
                literal_effort: if fast_patch {
                    foundry_gpu::diff::patch::LiteralEffort::Fast
                } else {
                    foundry_gpu::diff::patch::LiteralEffort::AgainstA
                },
            };
            let report = foundry_gpu::diff::diff(&backend, &a, &b, &output, &opts)?;
            drop(bar);
            if global.json {
                print_json(&report);
            } else {
                print_diff(&report);
            }
        }
        Command::View {
            inputs,
            port,
            bind,
            token,
            diff,
            open,
        } => {
            let options = foundry_gpu::view::ViewOptions {
                bind,
                port,
                token,
                diff,
                ..Default::default()
            };
            let view = foundry_gpu::view::start(&inputs, &options)?;
            drop(bar);
            if global.json {
                println!("{}", serde_json::json!({ "url": view.url }));
            } else {
                println!("foundry-gpu view: {} (Ctrl-C stops)", view.url);
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
            if open {
                open_in_browser(&view.url);
            }
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                let _ = signal_hook::flag::register(signal, Arc::clone(&stop));
            }
            view.serve_until(&stop)?;
        }
        Command::Locate {
            input,
            offset,
            address,
            region,
            pixel,
            layout,
            part,
        } => {
            use foundry_gpu::locate::Query;
            let query = match (offset, address, region, pixel) {
                (Some(offset), ..) => Query::Offset(offset),
                (_, Some(address), ..) => Query::Address(address),
                (_, _, Some(name), _) => Query::Region(name),
                (.., Some((x, y))) => Query::Pixel {
                    x,
                    y,
                    layout: layout.map(|l| match l {
                        LocateLayout::Brick => foundry_gpu::kernels::Layout::Brick,
                        LocateLayout::RtsPng => foundry_gpu::kernels::Layout::Rts,
                    }),
                    part,
                },
                _ => unreachable!("clap requires one of --offset, --address, --region, --pixel"),
            };
            let report = foundry_gpu::locate::locate(&input, query)?;
            drop(bar);
            if global.json {
                print_json(&report);
            } else {
                print_locate(&report);
            }
        }
        Command::Patch {
            a, patch, output, ..
        } => {
            let backend = open_backend(global)?;
            let report = foundry_gpu::diff::apply_patch(&backend, &a, &patch, &output)?;
            drop(bar);
            let streamed = foundry_gpu::format::staged::is_stdout(&output);
            if global.json {
                print_json_beside(streamed, &report);
            } else {
                say(
                    streamed,
                    format_args!(
                        "patched {} with {} -> {} ({}, SHA-256 {}{})",
                        a.display(),
                        patch.display(),
                        output.display(),
                        human_bytes(report.size),
                        report.sha256,
                        if report.verified {
                            " verified"
                        } else {
                            "; the delta records no checksum to verify it by"
                        }
                    ),
                );
            }
        }
        Command::Unfold { input, output, .. } => {
            let backend = open_backend(global)?;
            let report = fold::unfold_file(&backend, &input, &output, &bar)?;
            drop(bar);
            let streamed = foundry_gpu::format::staged::is_stdout(&output);
            if global.json {
                print_json_beside(streamed, &report);
            } else {
                say(
                    streamed,
                    format_args!(
                        "unfolded {} -> {} ({}, SHA-256 {} verified)",
                        input.display(),
                        output.display(),
                        human_bytes(report.size),
                        report.sha256
                    ),
                );
            }
        }
        Command::Info { input, .. } => {
            let backend = open_backend(global)?;
            let report = fold::info(&backend, &input)?;
            drop(bar);
            if global.json {
                print_json(&report);
            } else {
                print_info(&report);
            }
            if !report.valid {
                return Ok(ExitCode::from(EXIT_FAILED));
            }
        }
        Command::Preview {
            input,
            output,
            look,
            ..
        } => {
            let backend = open_backend(global)?;
            let record = fold::preview_file(
                &backend,
                &input,
                &output,
                look.palette,
                look.preview_side,
                look.legend,
            )?;
            drop(bar);
            let streamed = foundry_gpu::format::staged::is_stdout(&output);
            if global.json {
                print_json_beside(streamed, &record);
            } else {
                say(
                    streamed,
                    format_args!(
                        "preview {} -> {} ({})",
                        input.display(),
                        output.display(),
                        human_bytes(record.bytes)
                    ),
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_snapshot(global: &Global, r: &snapshot::SnapshotReport) {
    if global.json {
        print_json(r);
        return;
    }
    let roots: Vec<String> = r.roots.iter().map(|p| p.display().to_string()).collect();
    println!(
        "folded {} files ({}) from {} on {} in {:.1} s: {:.0} files/s, {:.1} MB/s",
        r.files,
        human_bytes(r.bytes),
        roots.join(", "),
        r.backend,
        r.seconds,
        r.files_per_second,
        r.megabytes_per_second
    );
    if let Some(t) = &r.llm {
        println!(
            "  llm: {} answered, {} from the cache, {} without an answer{}",
            t.answered,
            t.cached,
            t.unanswered,
            t.first_reason
                .as_ref()
                .map(|r| format!(" (first: {r})"))
                .unwrap_or_default()
        );
    }
    println!(
        "  wrote {} into {} ({:.2}x what it read)",
        human_bytes(r.bytes_written),
        r.output.display(),
        r.written_per_byte_read
    );
    let skipped: u64 = r.skipped.values().sum();
    if skipped > 0 {
        let reasons: Vec<String> = r.skipped.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  skipped {skipped}: {}", reasons.join(", "));
    }
    if r.symlinks > 0 {
        println!("  symlinks recorded (not followed): {}", r.symlinks);
    }
    if r.changed_while_read > 0 {
        println!(
            "  changed while read (folded as read): {}",
            r.changed_while_read
        );
    }
    println!(
        "  district: {} part(s), index {}",
        r.district_parts,
        r.district_index.display()
    );
    println!(
        "  unfold the concatenation with: foundry-gpu unfold {} -o FILE",
        r.parts_index.display()
    );
}

fn print_analysis(input: &Path, a: &foundry_gpu::analysis::local::LocalAnalysis) {
    println!(
        "{}: {} ({}, {:.3} bits/byte)",
        input.display(),
        a.file_type,
        human_bytes(a.size),
        a.entropy
    );
    println!("  sha256     {}", a.sha256);
    for r in &a.entropy_regions {
        println!(
            "  {:>10}..{:<10} {:<8} {:.2} bits/byte",
            r.start, r.end, r.class, r.entropy
        );
    }
    if let Some(e) = &a.elf {
        println!(
            "  elf        {} {} entry 0x{:x}, {} sections, {} segments",
            e.architecture, e.kind, e.entry, e.sections, e.segments
        );
        if let Some(h) = &e.hardening {
            println!(
                "  hardening  RELRO {}  canary {}  NX {}  PIE {}  FORTIFY {}  stripped {}",
                h.relro, h.stack_canary, h.nx, h.pie, h.fortify, h.stripped
            );
            if let Some(r) = &h.rpath {
                println!("  RPATH      {r}");
            }
            if let Some(r) = &h.runpath {
                println!("  RUNPATH    {r}");
            }
            if !h.wx_segments.is_empty() {
                println!("  W+X        LOAD segments {:?}", h.wx_segments);
            }
            println!("  libraries  {}", h.libraries.join(", "));
            println!("  imports    {} symbols", h.imported_symbols);
        }
        if !e.high_entropy_sections.is_empty() {
            println!("  packed?    {}", e.high_entropy_sections.join(", "));
        }
    }
    println!(
        "  strings    {} (urls {}, paths {}, ip-like {})",
        a.strings.count,
        a.strings.urls.len(),
        a.strings.paths.len(),
        a.strings.ip_like.len()
    );
}

/// The model's answer, or why there is none, and the local warnings.
fn print_semantic(semantic: &serde_json::Value) {
    let local = &semantic["analysis"];
    for w in local["warnings"].as_array().into_iter().flatten() {
        println!("  warning    {}", w.as_str().unwrap_or_default());
    }
    println!(
        "  local risk {}",
        local["risk"].as_str().unwrap_or("unknown")
    );
    let llm = &semantic["llm"];
    match llm["status"].as_str().unwrap_or("off") {
        "answered" | "cached" => {
            println!(
                "  llm        {} by {} ({})",
                llm["status"].as_str().unwrap_or_default(),
                semantic["model"].as_str().unwrap_or("?"),
                llm["server"].as_str().unwrap_or_default()
            );
            println!(
                "  summary    {}",
                semantic["summary"].as_str().unwrap_or_default()
            );
            let tags: Vec<&str> = semantic["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str())
                .collect();
            println!("  tags       {}", tags.join(", "));
            println!(
                "  risk       {}",
                semantic["risk"].as_str().unwrap_or_default()
            );
            for w in semantic["warnings"].as_array().into_iter().flatten() {
                println!("  llm warns  {}", w.as_str().unwrap_or_default());
            }
        }
        "off" => {}
        status => println!(
            "  llm        {status}: {}",
            llm["reason"].as_str().unwrap_or("no reason given")
        ),
    }
}

/// Starts the user's browser on `url`; says so when none starts.
fn open_in_browser(url: &str) {
    let browser = std::env::var_os("BROWSER").unwrap_or_else(|| "xdg-open".into());
    if let Err(e) = std::process::Command::new(&browser)
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        eprintln!(
            "foundry-gpu: could not start {}: {e}; open {url} yourself",
            browser.to_string_lossy()
        );
    }
}

fn print_locate(r: &foundry_gpu::locate::LocateReport) {
    let what = if r.end == r.start + 1 {
        format!("byte {} (0x{:x})", r.start, r.start)
    } else if r.end > r.start {
        format!(
            "bytes {}..{} (0x{:x}..0x{:x})",
            r.start, r.end, r.start, r.end
        )
    } else {
        "padding (no byte of the input)".to_string()
    };
    println!(
        "{} ({}, {}): {what}",
        r.input.display(),
        r.kind,
        human_bytes(r.size)
    );
    for p in &r.placements {
        let t = &p.texture;
        let name = t.file.as_ref().map_or_else(
            || match t.layout {
                foundry_gpu::kernels::Layout::Brick => "the .brick fold writes".to_string(),
                foundry_gpu::kernels::Layout::Rts => "the .rts.png fold writes".to_string(),
            },
            |f| f.display().to_string(),
        );
        let channel = match t.layout {
            foundry_gpu::kernels::Layout::Rts => {
                format!(", channel {}", ["R", "G", "B", "A"][usize::from(p.channel)])
            }
            foundry_gpu::kernels::Layout::Brick => String::new(),
        };
        println!(
            "  {name} (part {}, {}x{}): pixel {},{}{channel}",
            t.part, t.side, t.side, p.x, p.y
        );
        if !p.squares.is_empty() {
            let shown: Vec<String> = p
                .squares
                .iter()
                .take(8)
                .map(|[x, y, w, h]| format!("{w}x{h} at {x},{y}"))
                .collect();
            let more = p.squares.len().saturating_sub(shown.len());
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            println!("    covers {}{more}", shown.join(", "));
        }
    }
    for h in &r.holders {
        let address = h
            .address
            .map_or(String::new(), |a| format!(", address 0x{a:x}"));
        println!(
            "  in {} {} [0x{:x}, 0x{:x}), {} bytes in{address}",
            h.kind.replace('_', " "),
            h.name,
            h.start,
            h.end,
            h.offset_inside
        );
    }
}

fn print_diff(r: &foundry_gpu::diff::DiffReport) {
    let t = &r.totals;
    let d = &r.difference;
    let past_end = if d.past_shorter_end == 0 {
        String::new()
    } else {
        format!(
            ": {} of the {} both have, and {} only the longer side has",
            d.differing_in_common, d.common_bytes, d.past_shorter_end
        )
    };
    println!(
        "{} ({}) -> {} ({}) on {} in {:.2} s: {} bytes differ ({:.2} %){past_end}",
        r.a.path.display(),
        human_bytes(r.a.size),
        r.b.path.display(),
        human_bytes(r.b.size),
        r.backend,
        r.seconds,
        d.bytes_differ,
        d.percent
    );
    println!(
        "  blocks     {} of {} changed in place ({}-byte blocks, {} pixels differ)",
        r.aligned.changed_blocks, r.aligned.blocks, r.aligned.block, r.aligned.changed_pixels
    );
    println!(
        "  content    unchanged {}, changed {}, inserted {}, deleted {}, moved {} (content-defined chunks)",
        human_bytes(t.unchanged),
        human_bytes(t.changed),
        human_bytes(t.inserted),
        human_bytes(t.deleted),
        human_bytes(t.moved)
    );
    if let Some(m) = &r.members {
        println!(
            "  members    {} added, {} removed, {} changed, {} unchanged",
            m.added.len(),
            m.removed.len(),
            m.changed.len(),
            m.unchanged
        );
        for (sign, list) in [("+", &m.added), ("-", &m.removed), ("~", &m.changed)] {
            for name in list.iter().take(20) {
                println!("    {sign} {name}");
            }
        }
    }
    for region in r.regions.iter().filter(|x| x.different_bytes > 0).take(20) {
        println!(
            "  region     {:<24} {:>10} bytes differ ({:.1} %)",
            region.name, region.different_bytes, region.percent
        );
    }
    for o in &r.outputs {
        println!("  wrote      {}", o.display());
    }
    println!(
        "  patch      {} (foundry-gpu patch A a-to-b.patch -o B)",
        human_bytes(r.patch_bytes)
    );
}

fn print_info(r: &fold::InfoReport) {
    println!("{}: {:?}", r.path.display(), r.kind);
    if let Some(h) = &r.header {
        println!("  version        {}", h.version);
        println!(
            "  texture        {}x{} (hilbert order {})",
            h.width, h.height, h.hilbert_order
        );
        println!(
            "  original_size  {} ({})",
            h.original_size,
            human_bytes(h.original_size)
        );
        println!("  entropy        {:.4} bits/byte (header)", h.entropy);
        println!("  sha256         {}", hex::encode(h.hash));
        println!("  flags          0x{:02x} {}", h.flags, r.flags.join(" "));
    }
    if let Some(m) = &r.metadata {
        for key in [
            "format",
            "name",
            "description",
            "grid_size",
            "data_size",
            "data_hash",
        ] {
            if let Some(v) = m.get(key) {
                println!("  {key:<14} {v}");
            }
        }
    }
    if let Some(p) = &r.parts {
        println!(
            "  parts          {} of up to {} bytes, whole {} bytes",
            p.parts.len(),
            p.part_size,
            p.size
        );
    }
    if let (Some(cap), Some(fill)) = (r.capacity_bytes, r.fill_percent) {
        println!("  capacity       {cap} bytes, {fill:.1}% used");
    }
    if let Some(e) = r.entropy {
        println!("  data entropy   {e:.4} bits/byte");
    }
    for w in &r.warnings {
        println!("  warning: {w}");
    }
    if r.valid {
        println!("  verdict        valid");
    } else {
        println!("  verdict        INVALID");
        for p in &r.problems {
            println!("    - {p}");
        }
    }
}

fn main() -> ExitCode {
    // Mesa's Vulkan drivers probe Wayland and print an error line for every
    // probe when XDG_RUNTIME_DIR is unset (headless servers, CI). Any value
    // silences the probe; this runs before any thread exists.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let matches = Cli::command().get_matches();
    // Errors name the command the user typed: `foundry-gpu unfold: error: …`.
    let command = matches.subcommand_name().unwrap_or_default().to_owned();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // A closed pipe (`| head`, `| true`) ends a command quietly by SIGPIPE, as it does Unix
    // tools; Rust ignores the signal by default, which turns the next print into a panic. The
    // daemon keeps ignoring it: a closed log pipe must not kill it mid-task, so its lines are
    // written without panicking instead.
    let daemon_runs_tasks =
        matches!(&cli.command, Command::Daemon { policy, .. } if !policy.dry_run);
    if !daemon_runs_tasks {
        // SAFETY: restores the default disposition before any thread exists. Sockets are
        // unaffected: the standard library sends on them with MSG_NOSIGNAL.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    cli.global.backend = cli.command.engine();
    cli.global.gpu_timeout = cli.command.gpu_timeout();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "foundry-gpu {command}: error: {e}");
            ExitCode::from(if e.is_input_error() {
                EXIT_USAGE
            } else {
                EXIT_FAILED
            })
        }
    }
}
