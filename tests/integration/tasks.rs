//! FoundryTask files: the shipped examples and every real historical task parse; JSON and YAML agree.

use foundry_gpu::task::{parse_task, read_task, FoundryTask, TaskType};
use std::path::Path;

/// The task file at `path`, read as `run` reads it under the default policy.
fn read_with_default_limit(path: &Path) -> foundry_gpu::Result<FoundryTask> {
    read_task(
        path,
        path,
        None,
        foundry_gpu::policy::DEFAULT_MAX_TASK_FILE_BYTES,
    )
}

#[test]
fn model_and_server_follow_command_line_then_task_then_environment() {
    use foundry_gpu::llm::LlmConfig;
    use foundry_gpu::task::run::TaskLlm;
    let task = |extra: &str| {
        parse_task(
            Path::new("t.task.json"),
            &format!(r#"{{"task_id": "t", "type": "analyze_system", "source": "."{extra}}}"#),
        )
        .unwrap()
    };
    // `config` holds what the environment and foundry.toml said.
    let resolved = |model: Option<&str>| TaskLlm {
        config: LlmConfig {
            base_url: "http://env:1".into(),
            model: model.map(String::from),
            // The policy's llm_hosts: these test hosts are not loopback.
            allowed_hosts: vec!["env".into(), "task".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let plain = task("");
    let named = task(r#", "ai_model": "task-model", "llm_url": "http://task:2""#);
    let from_env = resolved(Some("env-model"));
    assert_eq!(
        from_env.config_for(&plain).unwrap().model.as_deref(),
        Some("env-model")
    );
    assert_eq!(
        from_env.config_for(&plain).unwrap().base_url,
        "http://env:1"
    );
    let c = from_env.config_for(&named).unwrap();
    assert_eq!(
        (c.model.as_deref(), c.base_url.as_str()),
        (Some("task-model"), "http://task:2")
    );
    // Nothing configured anywhere: the schema's default model.
    assert_eq!(
        resolved(None).config_for(&plain).unwrap().model.as_deref(),
        Some("glm-4-9b-0414")
    );
    // The command line wins over the task.
    let pinned = TaskLlm {
        model_pinned: true,
        url_pinned: true,
        ..resolved(Some("cli-model"))
    };
    let c = pinned.config_for(&named).unwrap();
    assert_eq!(
        (c.model.as_deref(), c.base_url.as_str()),
        (Some("cli-model"), "http://env:1")
    );
    // A task's llm_url must be loopback or a host the policy names.
    let elsewhere = task(r#", "llm_url": "http://10.1.2.3:1234""#);
    let e = from_env.config_for(&elsewhere).unwrap_err().to_string();
    assert!(e.contains("task t: refused by policy: llm_hosts"), "{e}");
}

#[test]
fn examples_parse_and_json_equals_yaml() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("openspec/tasks/examples");
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".task.json") {
            let json = read_with_default_limit(&path).unwrap();
            let yaml = read_with_default_limit(&path.with_extension("yaml")).unwrap();
            assert_eq!(json, yaml, "{}", path.display());
            kinds.push(json.kind);
        }
    }
    for kind in [
        TaskType::ConvertBinary,
        TaskType::ConvertDirectory,
        TaskType::WatchPath,
        TaskType::AnalyzeSystem,
        TaskType::CrystallizeSystem,
        TaskType::FoundryV2,
        TaskType::ScanKernelModules,
    ] {
        assert!(kinds.contains(&kind), "an example of {kind:?}");
    }
}

#[test]
fn every_historical_task_file_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tasks");
    let mut parsed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".task.json") {
            let task = read_with_default_limit(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!task.task_id.is_empty());
            parsed += 1;
        }
    }
    assert_eq!(parsed, 5);
    let crystallize = read_with_default_limit(&dir.join("crystallize_linux.task.json")).unwrap();
    assert_eq!(crystallize.paths, ["/bin", "/etc", "/usr/bin"]);
    assert_eq!(crystallize.max_files_per_path, Some(10));
    let auto = read_with_default_limit(&dir.join("auto_62d6b00f.task.json")).unwrap();
    assert!(auto.auto_generated);
    assert_eq!(auto.ai_model(), "glm-4-9b-0414", "the schema's default");
}

#[test]
fn the_shipped_schema_lists_the_seven_types() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("openspec/schema/foundry_task.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let types = schema["properties"]["type"]["enum"].as_array().unwrap();
    assert_eq!(types.len(), 7);
    for t in types {
        let text = format!("{{\"task_id\": \"x\", \"type\": {t}, \"source\": \"/\"}}");
        assert!(parse_task(Path::new("s.task.json"), &text).is_ok(), "{t}");
    }
}

mod run {
    use super::read_with_default_limit;
    use foundry_gpu::progress::Silent;
    use foundry_gpu::task::parse_task;
    use foundry_gpu::task::run::{run_task, RunOptions, TaskReport};
    use foundry_gpu::Backend;
    use std::path::Path;

    fn run_json(dir: &Path, name: &str, json: &str) -> foundry_gpu::Result<TaskReport> {
        let path = dir.join(name);
        std::fs::write(&path, json).unwrap();
        let task = read_with_default_limit(&path)?;
        let opts = RunOptions {
            output_root: dir.join("out"),
            task_root: dir.to_path_buf(),
            publish: None,
            // Nothing listens on the discard port: analyze_system finds no server, hermetically.
            llm: foundry_gpu::task::run::TaskLlm {
                config: foundry_gpu::llm::LlmConfig {
                    base_url: "http://127.0.0.1:9".into(),
                    cache_dir: None,
                    ..Default::default()
                },
                ..Default::default()
            },
            // The defaults, widened to the repository's samples.
            policy: std::sync::Arc::new(
                foundry_gpu::policy::Policy::new(
                    &foundry_gpu::policy::PolicySettings {
                        allow: vec![concat!(env!("CARGO_MANIFEST_DIR"), "/samples").into()],
                        ..Default::default()
                    },
                    dir,
                    &dir.join("out"),
                )
                .unwrap(),
            ),
        };
        run_task(&Backend::Cpu, &task, &path, &opts, &Silent)
    }

    fn tree(dir: &Path) {
        for (p, body) in [
            ("t/a/x.txt", "x"),
            ("t/a/y.txt", "yy"),
            ("t/b/z.bin", "zzz"),
            ("t/b/w.bin", "wwww"),
        ] {
            std::fs::create_dir_all(dir.join(p).parent().unwrap()).unwrap();
            std::fs::write(dir.join(p), body).unwrap();
        }
    }

    #[test]
    fn convert_binary_writes_brick_png_preview_and_report() {
        let dir = tempfile::tempdir().unwrap();
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/sample-elf");
        let r = run_json(
            dir.path(),
            "c.task.json",
            &format!(r#"{{"task_id": "conv", "type": "convert_binary", "source": "{}", "destination": "prog.brick", "texture_size": 4}}"#, sample.display()),
        )
        .unwrap();
        let out = dir.path().join("out/conv");
        for f in [
            "prog.brick",
            "prog.rts.png",
            "prog.preview.png",
            "conv.report.md",
        ] {
            assert!(out.join(f).exists(), "{f}");
        }
        assert!(
            r.notes.iter().any(|n| n.contains("too small")),
            "texture size grows with a note"
        );
        let md = std::fs::read_to_string(out.join("conv.report.md")).unwrap();
        for heading in [
            "## Read",
            "## Written",
            "## Skipped",
            "## Metadata highlights",
            "## Next steps",
        ] {
            assert!(md.contains(heading), "{heading}");
        }
        assert!(md.contains(&format!(
            "foundry-gpu unfold {}",
            out.join("prog.brick").display()
        )));
        let err = run_json(
            dir.path(),
            "d.task.json",
            r#"{"task_id": "d", "type": "convert_binary", "source": "."}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("convert_binary takes one file"),
            "{err}"
        );
        let err = run_json(
            dir.path(),
            "m.task.json",
            r#"{"task_id": "m", "type": "convert_binary", "source": "missing.bin"}"#,
        )
        .unwrap_err();
        assert!(err.is_input_error());
        for bad in ["/tmp/escape.brick", "../escape.brick"] {
            let text = format!(
                r#"{{"task_id": "e", "type": "convert_binary", "source": "{}", "destination": "{bad}"}}"#,
                sample.display()
            );
            let err = run_json(dir.path(), "e.task.json", &text).unwrap_err();
            assert!(err.to_string().contains("inside the output root"), "{err}");
        }
    }

    #[test]
    fn directory_types_cap_files() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let r = run_json(
            dir.path(),
            "d.task.json",
            r#"{"task_id": "dir", "type": "convert_directory", "source": "t", "max_files": 3}"#,
        )
        .unwrap();
        assert_eq!(r.files_read, 3);
        assert_eq!(r.skipped["over --max-files"], 1);
        let r = run_json(
            dir.path(),
            "c.task.json",
            r#"{"task_id": "cry", "type": "crystallize_system", "source": "/", "paths": ["t/a", "t/b"], "max_files_per_path": 1}"#,
        )
        .unwrap();
        assert_eq!(r.files_read, 2, "one file from each path");
        let r = run_json(
            dir.path(),
            "v.task.json",
            r#"{"task_id": "v2", "type": "foundry-v2", "source": "t", "include": ["**/*.bin"]}"#,
        )
        .unwrap();
        assert_eq!(r.files_read, 2);
    }

    #[test]
    fn analyze_and_watch() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let r = run_json(dir.path(), "a.task.json", r#"{"task_id": "an", "type": "analyze_system", "source": "t", "intent": "what is here?"}"#).unwrap();
        assert_eq!(r.files_read, 4);
        let analysis: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("out/an/an.analysis.json")).unwrap(),
        )
        .unwrap();
        // The test's server address has nothing listening: the file says why there is no answer.
        assert!(analysis["analysis_by"]
            .as_str()
            .unwrap()
            .starts_with("local analysis only"));
        let files = analysis["files"].as_array().unwrap();
        assert!(!files.is_empty());
        for file in files {
            assert_eq!(file["semantic"]["llm"]["status"], "unavailable", "{file}");
        }
        assert_eq!(analysis["intent"], "what is here?");
        // watch_path re-folds when the bytes change.
        let watched = dir.path().join("live.txt");
        std::fs::write(&watched, "one").unwrap();
        let changer = {
            let watched = watched.clone();
            let first_brick = dir.path().join("out/w/live.txt.brick");
            std::thread::spawn(move || {
                // Change the file once the first fold has landed, however slow the machine; the
                // deadline is past the task's own 30 s bound, so only a fold that never lands
                // trips it.
                crate::harness::wait_for(
                    std::time::Duration::from_secs(60),
                    "the watch task's first fold (out/w/live.txt.brick)",
                    || first_brick.exists(),
                );
                std::fs::write(&watched, "two, longer").unwrap();
            })
        };
        // Stops after the second re-fold; max_cycles only bounds a broken run (30 s).
        let r = run_json(
            dir.path(),
            "w.task.json",
            r#"{"task_id": "w", "type": "watch_path", "source": "live.txt", "interval_ms": 100, "max_cycles": 300, "max_refolds": 2, "publish": "out/builder"}"#,
        )
        .unwrap();
        changer
            .join()
            .expect("the file was changed (the changer's panic is printed above)");
        assert_eq!(r.highlights["refolds"], 2);
        let back =
            foundry_gpu::fold::decode(&Backend::Cpu, &dir.path().join("out/w/live.txt.brick"))
                .unwrap();
        assert_eq!(back.bytes, b"two, longer");
        // `publish` resolves against the task's folder, as for every other task type.
        assert!(dir.path().join("out/builder/map/manifest.json").exists());
    }

    #[test]
    fn scan_kernel_modules_writes_the_silicon_district() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("mods/sub")).unwrap();
        crate::harness::gcc(
            &dir.path().join("mods/sub"),
            "__attribute__((section(\".modinfo\"), used)) static const char m[] = \"license=Proprietary\\0name=m\\0vermagic=6.1.0-13-amd64 SMP\\0\";\nint x;\n",
            "m.ko",
            &["-c"],
        );
        let r = run_json(
            dir.path(),
            "k.task.json",
            r#"{"task_id": "k", "type": "scan_kernel_modules", "source": "mods"}"#,
        )
        .unwrap();
        assert_eq!(r.files_read, 1);
        let s: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("out/k/metadata/silicon_district.json"))
                .unwrap(),
        )
        .unwrap();
        let sec = &s["security"];
        for key in [
            "last_scan",
            "risk_score",
            "vulnerable_drivers",
            "total_drivers",
            "critical_vulns",
            "high_vulns",
            "medium_vulns",
            "low_vulns",
            "kernel_version",
            "top_vulnerabilities",
        ] {
            assert!(sec.get(key).is_some(), "{key}");
        }
        assert_eq!(sec["total_drivers"], 1);
        assert_eq!(
            sec["vulnerable_drivers"], 1,
            "a proprietary license taints the kernel"
        );
        assert_eq!(sec["kernel_version"], "6.1.0-13-amd64");
        assert!(sec["risk_score"].as_u64().unwrap() <= 100);
    }

    #[test]
    fn historical_tasks_run_with_paths_pointed_at_fixtures() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tasks");
        std::fs::write(
            dir.path().join("tensor_fold.py"),
            "def fold(x):\n    return x\n",
        )
        .unwrap();
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/sample-elf");
        for name in [
            "convert_ls",
            "convert_tensor_fold",
            "crystallize_linux",
            "meminfo",
            "auto_62d6b00f",
        ] {
            let text = std::fs::read_to_string(fixtures.join(format!("{name}.task.json"))).unwrap();
            let mut task: serde_json::Value = serde_json::from_str(&text).unwrap();
            match name {
                "convert_ls" => task["source"] = sample.to_string_lossy().into(),
                "crystallize_linux" => task["paths"] = serde_json::json!(["t/a", "t/b"]),
                "auto_62d6b00f" => task["source"] = "t".into(),
                _ => {}
            }
            let r = run_json(dir.path(), &format!("{name}.task.json"), &task.to_string())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(r.files_read >= 1, "{name}");
            assert!(r.report_path.exists());
            assert!(parse_task(Path::new("x.task.json"), &text).is_ok());
        }
    }
}

/// The bundled examples run as a user runs them, and what their reports say holds: every file
/// written is listed, and the next steps write the same bytes again.
mod examples {
    use crate::harness::{foundry_cmd, s, wait_exit};
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::Duration;

    /// A kernel module built here: `.modinfo` with a license and a vermagic.
    fn build_module(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        crate::harness::gcc(
            path.parent().unwrap(),
            "__attribute__((section(\".modinfo\"), used)) static const char m[] = \"license=GPL\\0name=m\\0vermagic=6.1.0-13-amd64 SMP\\0\";\nint x;\n",
            &path.file_name().unwrap().to_string_lossy(),
            &["-c"],
        );
    }

    /// The bundled `*.task.json` examples (the YAML twins are the same tasks), sorted. Kernel
    /// modules live in /lib/modules, which a container may lack: there the scan example is
    /// copied into `dir` with a module built here as its source.
    fn bundled(dir: &Path) -> Vec<PathBuf> {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("openspec/tasks/examples");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".task.json"))
            .collect();
        files.sort();
        for file in &mut files {
            let text = std::fs::read_to_string(&*file).unwrap();
            let mut task: serde_json::Value = serde_json::from_str(&text).unwrap();
            let source = task["source"].as_str().unwrap().to_string();
            if !Path::new(&source).exists() {
                assert_eq!(task["type"], "scan_kernel_modules", "{}", file.display());
                eprintln!(
                    "{source} is missing here: the scan example reads a module built for the test"
                );
                build_module(&dir.join("modules/extra/m.ko"));
                task["source"] = "modules".into();
                *file = dir.join(file.file_name().unwrap());
                std::fs::write(&*file, task.to_string()).unwrap();
            }
        }
        assert_eq!(files.len(), 7, "one example of each type");
        files
    }

    /// `foundry-gpu ARGS` in `dir`, offline (the harness points the model at a closed port),
    /// killed and failed past `deadline`; returns stdout.
    fn run_in(dir: &Path, args: &[&str], deadline: Duration) -> Vec<u8> {
        let (out, err) = (dir.join(".stdout"), dir.join(".stderr"));
        let mut child = foundry_cmd()
            .args(args)
            .current_dir(dir)
            .env("XDG_CACHE_HOME", dir.join(".cache"))
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let status = wait_exit(&mut child, deadline);
        assert!(
            status.success(),
            "{args:?}: {status}: {}",
            std::fs::read_to_string(&err).unwrap()
        );
        std::fs::read(&out).unwrap()
    }

    fn run_task(dir: &Path, task: &Path) -> serde_json::Value {
        let stdout = run_in(
            dir,
            &[
                "run",
                s(task),
                "--output-root",
                "out",
                "--backend",
                "cpu",
                "--json",
                "-q",
            ],
            Duration::from_secs(180),
        );
        serde_json::from_slice(&stdout).unwrap()
    }

    /// Every file under `dir`, recursively.
    fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
        let mut found = BTreeSet::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                found.extend(files_under(&path));
            } else {
                found.insert(path);
            }
        }
        found
    }

    #[test]
    fn every_bundled_example_ends_by_itself_and_succeeds_offline() {
        let dir = tempfile::tempdir().unwrap();
        for task in bundled(dir.path()) {
            let started = std::time::Instant::now();
            let report = run_task(dir.path(), &task);
            eprintln!(
                "{}: {} file(s) written in {:.1} s",
                task.display(),
                report["written"].as_array().unwrap().len(),
                started.elapsed().as_secs_f64()
            );
            assert!(dir
                .path()
                .join(report["report_path"].as_str().unwrap())
                .is_file());
        }
    }

    /// A tree with nothing the policy refuses (so `snapshot` can say the task) and a one-file
    /// task that sets every fold option, besides the bundled examples.
    fn own_tasks(dir: &Path) -> Vec<PathBuf> {
        for (p, body) in [
            ("t/a/x.txt", "x"),
            ("t/a/y.txt", "yy"),
            ("t/b/z.bin", "zzz"),
            ("t/b/w.bin", "wwww"),
        ] {
            std::fs::create_dir_all(dir.join(p).parent().unwrap()).unwrap();
            std::fs::write(dir.join(p), body).unwrap();
        }
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/sample-elf"),
            dir.join("sample-elf"),
        )
        .unwrap();
        let tasks = [
            (
                "tree.task.json",
                r#"{"task_id": "tree", "type": "convert_directory", "source": "t", "max_files": 2, "exclude": ["a/y.txt"]}"#,
            ),
            (
                "v2.task.json",
                r#"{"task_id": "v2", "type": "foundry-v2", "source": "sample-elf", "destination": "prog.brick", "texture_size": 64, "preview_side": 64, "palette": "entropy", "legend": true, "sidecars": true, "sections": ".text"}"#,
            ),
        ];
        tasks
            .iter()
            .map(|(name, text)| {
                std::fs::write(dir.join(name), text).unwrap();
                dir.join(name)
            })
            .collect()
    }

    /// `value` without the fields that say when or how long: `seconds`, `last_scan`,
    /// `generated_at`.
    fn without_times(value: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::Object(fields) => Value::Object(
                fields
                    .into_iter()
                    .filter(|(k, _)| {
                        !["seconds", "last_scan", "generated_at"].contains(&k.as_str())
                    })
                    .map(|(k, v)| (k, without_times(v)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.into_iter().map(without_times).collect()),
            other => other,
        }
    }

    #[test]
    fn reports_list_every_file_written_and_the_next_steps_write_the_same_bytes_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut tasks = bundled(dir.path());
        tasks.extend(own_tasks(dir.path()));
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_foundry-gpu"))
            .parent()
            .unwrap();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut first_commands = Vec::new();
        for task in &tasks {
            let report = run_task(dir.path(), task);
            let kind = report["type"].as_str().unwrap().to_string();
            let at = |p: &serde_json::Value| dir.path().join(p.as_str().unwrap());
            let written: BTreeSet<PathBuf> = report["written"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| at(&w["path"]))
                .collect();
            let mut on_disk = files_under(&at(&report["output_dir"]));
            on_disk.remove(&at(&report["report_path"]));
            assert_eq!(
                written, on_disk,
                "{kind}: the report lists every file written, and only those"
            );
            let md = std::fs::read_to_string(at(&report["report_path"])).unwrap();
            for w in &written {
                let listed = w.strip_prefix(dir.path()).unwrap();
                assert!(
                    md.contains(&format!("`{}`", listed.display())),
                    "{kind}: report.md lists {}",
                    listed.display()
                );
            }
            let before: BTreeMap<&PathBuf, Vec<u8>> = written
                .iter()
                .map(|w| (w, std::fs::read(w).unwrap()))
                .collect();
            for w in &written {
                std::fs::remove_file(w).unwrap();
            }
            let steps: Vec<&str> = report["next_steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect();
            assert!(
                md.contains(&steps.join("\n")),
                "{kind}: report.md has the same steps"
            );
            first_commands.push(steps[0].to_string());
            for step in &steps {
                let o = Command::new("sh")
                    .args(["-c", step])
                    .current_dir(dir.path())
                    .env("PATH", &path)
                    .env("FOUNDRY_LLM_URL", "http://127.0.0.1:9")
                    .env("XDG_CACHE_HOME", dir.path().join(".cache"))
                    .output()
                    .unwrap();
                assert!(
                    o.status.success(),
                    "{kind}: {step}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            for (w, bytes) in &before {
                assert!(
                    w.exists(),
                    "{kind}: {} is written again by {}",
                    w.display(),
                    steps[0]
                );
                // A watched /proc file changes between reads; JSON records may say how long a
                // step took or when it ran, and those fields alone may differ.
                if kind == "watch_path" {
                    continue;
                }
                let now = std::fs::read(w).unwrap();
                if w.extension().is_some_and(|e| e == "json") && now != *bytes {
                    assert_eq!(
                        without_times(serde_json::from_slice(&now).unwrap()),
                        without_times(serde_json::from_slice(bytes).unwrap()),
                        "{kind}: {}",
                        w.display()
                    );
                } else {
                    crate::harness::assert_same(&format!("{kind}: {}", w.display()), bytes, &now);
                }
            }
            // A brick unfolds to the file the task read.
            if let Some(brick) = steps.iter().find_map(|s| {
                s.strip_prefix("foundry-gpu unfold ")
                    .filter(|s| s.contains(".brick -o"))
            }) {
                let unfolded = dir.path().join(brick.rsplit(" -o ").next().unwrap());
                let source = dir.path().join(report["read"][0].as_str().unwrap());
                // (A module scan reads a folder; a watched file has changed since.)
                if kind != "watch_path" && source.is_file() {
                    assert_eq!(
                        std::fs::read(&unfolded).unwrap(),
                        std::fs::read(&source).unwrap(),
                        "{kind}"
                    );
                }
            }
        }
        eprintln!("{}", first_commands.join("\n"));
        let here = dir.path().display();
        for expected in [
            format!("foundry-gpu snapshot {here}/t -o out/tree --max-files 2 --max-bytes "),
            format!("foundry-gpu fold {here}/sample-elf -o out/v2 --name prog --texture-size 64 --preview-side 64 --palette entropy --legend --sidecars --sections .text"),
            "foundry-gpu fold /bin/ls -o out/example-convert-ls --texture-size 512".into(),
        ] {
            assert!(
                first_commands.iter().any(|c| c.starts_with(&expected)),
                "{expected} in {first_commands:?}"
            );
        }
    }
}

/// What the checks of `analyze_system` found is in its report, not only in the analysis file.
mod findings {
    use crate::harness::{foundry_cmd, s};

    #[test]
    fn an_analyze_system_report_shows_its_findings() {
        let dir = tempfile::tempdir().unwrap();
        // An executable stack is a finding of the local checks.
        crate::harness::gcc(
            dir.path(),
            "int main(void) { return 0; }\n",
            "stack",
            &["-z", "execstack"],
        );
        let task = dir.path().join("a.task.json");
        std::fs::write(
            &task,
            r#"{"task_id": "an", "type": "analyze_system", "source": "stack"}"#,
        )
        .unwrap();
        let o = foundry_cmd()
            .args(["run", s(&task), "--output-root", "out", "--json", "-q"])
            .current_dir(dir.path())
            .env("XDG_CACHE_HOME", dir.path().join(".cache"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let findings = report["findings"].as_array().unwrap();
        let has = |severity: &str, text: &str| {
            findings.iter().any(|f| {
                f["severity"] == severity
                    && f["finding"].as_str().unwrap().contains(text)
                    && f["path"].as_str().unwrap().ends_with("/stack")
            })
        };
        assert!(has("medium", "executable stack (no NX)"), "{findings:#?}");
        assert!(has("info", "NX no"), "{findings:#?}");
        let md = std::fs::read_to_string(dir.path().join("out/an/an.report.md")).unwrap();
        assert!(md.contains("## Findings"), "{md}");
        assert!(md.contains("- medium: executable stack (no NX)"), "{md}");
    }
}

/// `fold --name`, which a one-file task's next step uses when its `destination` is not the
/// source's name.
mod fold_name {
    use crate::harness::{foundry, s};

    #[test]
    fn name_renames_the_outputs_in_a_folder_and_refuses_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.txt");
        std::fs::write(&input, "named").unwrap();
        let out = dir.path().join("out");
        let o = foundry(&[
            "fold",
            s(&input),
            "-o",
            s(&out),
            "--name",
            "other",
            "--backend",
            "cpu",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for ext in ["brick", "rts.png", "preview.png"] {
            assert!(out.join(format!("other.{ext}")).is_file(), "other.{ext}");
        }
        assert!(!out.join("in.txt.brick").exists());
        for (name, output) in [
            ("../escape", s(&out)),
            ("a/b", s(&out)),
            ("", s(&out)),
            ("other", &*format!("{}/one.brick", s(&out))),
        ] {
            let o = foundry(&["fold", s(&input), "-o", output, "--name", name]);
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert_eq!(
                o.status.code(),
                Some(2),
                "--name {name:?} -o {output}: {stderr}"
            );
            assert!(stderr.contains("--name"), "{stderr}");
        }
        assert!(!dir.path().join("escape.brick").exists());
    }
}
