//! FoundryTask files: the shipped examples and every real historical task parse; JSON and YAML agree.

use foundry_gpu::task::{parse_task, read_task, TaskType};
use std::path::Path;

#[test]
fn examples_parse_and_json_equals_yaml() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("openspec/tasks/examples");
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".task.json") {
            let json = read_task(&path).unwrap();
            let yaml = read_task(&path.with_extension("yaml")).unwrap();
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
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/tasks");
    let mut parsed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".task.json") {
            let task = read_task(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!task.task_id.is_empty());
            parsed += 1;
        }
    }
    assert_eq!(parsed, 5);
    let crystallize = read_task(&dir.join("crystallize_linux.task.json")).unwrap();
    assert_eq!(crystallize.paths, ["/bin", "/etc", "/usr/bin"]);
    assert_eq!(crystallize.max_files_per_path, Some(10));
    let auto = read_task(&dir.join("auto_62d6b00f.task.json")).unwrap();
    assert!(auto.auto_generated);
    assert_eq!(auto.ai_model, "glm-4-9b-0414", "the schema's default");
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
