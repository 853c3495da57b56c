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
    use std::process::Command;

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
        let c = dir.path().join("m.c");
        std::fs::write(&c, "__attribute__((section(\".modinfo\"), used)) static const char m[] = \"license=Proprietary\\0name=m\\0vermagic=6.1.0-13-amd64 SMP\\0\";\nint x;\n").unwrap();
        assert!(Command::new("gcc")
            .args(["-c", "-o"])
            .arg(dir.path().join("mods/sub/m.ko"))
            .arg(&c)
            .status()
            .unwrap()
            .success());
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
