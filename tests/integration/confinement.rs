//! Confined reads, tried as an attacker who can write the task folder would: a source whose
//! path says one thing and opens another, magic links, and a tree entry swapped for a symlink
//! to a secret while the task runs (by an attacker process of its own, as `nobody` when the
//! tests run as root). Each is judged on what was opened, never on the path.

use crate::harness::{foundry_cmd, s, Attacker};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A task folder, an output root, and a private folder outside every allowed root holding a
/// 0600 secret.
struct Scene {
    _dir: tempfile::TempDir,
    tasks: PathBuf,
    out: PathBuf,
    secret: PathBuf,
}

const SECRET: &[u8] = b"SECRET-4f1c: the bytes no task may read\n";

fn scene() -> Scene {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks");
    let private = dir.path().join("private/sub");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::create_dir_all(&private).unwrap();
    let secret = dir.path().join("private/secret.txt");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    Scene {
        out: dir.path().join("out"),
        _dir: dir,
        tasks,
        secret,
    }
}

/// `run`s the task file `name` holding `body`; returns (exit code, stderr).
fn run_task(scene: &Scene, name: &str, body: &serde_json::Value) -> (Option<i32>, String) {
    let file = scene.tasks.join(name);
    std::fs::write(&file, body.to_string()).unwrap();
    let o = foundry_cmd()
        .args(["run", s(&file), "--output-root", s(&scene.out)])
        .args(["--backend", "cpu", "-q"])
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_path_that_opens_somewhere_else_is_judged_by_where_it_opened() {
    let scene = scene();
    // LINK/../secret.txt reads as TASKS/secret.txt by name; the kernel follows LINK first.
    std::os::unix::fs::symlink(
        scene.secret.parent().unwrap().join("sub"),
        scene.tasks.join("LINK"),
    )
    .unwrap();
    let body = serde_json::json!({"task_id": "dotdot", "type": "convert_binary",
        "source": "LINK/../secret.txt"});
    let (code, err) = run_task(&scene, "dotdot.task.json", &body);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("refused by policy"), "{err}");
    assert!(
        err.contains("it opened as"),
        "the error names what was opened: {err}"
    );
    assert!(err.contains("secret.txt"), "{err}");
    let written = crate::harness::bytes_below(&scene.out);
    assert!(
        !written.windows(SECRET.len()).any(|w| w == SECRET),
        "the secret reached the outputs"
    );
    // A magic link to a descriptor is refused by the kernel, whatever it points at.
    let body = serde_json::json!({"task_id": "magic", "type": "convert_binary",
        "source": "/proc/self/fd/0"});
    let (code, err) = run_task(&scene, "magic.task.json", &body);
    assert_ne!(code, Some(0), "{err}");
}

/// A folder of the task folder that the attacker (`nobody`, in a process of its own, when the
/// tests run as root) may write.
fn attackers_folder(scene: &Scene, name: &str) -> PathBuf {
    let folder = scene.tasks.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    if crate::harness::is_root() {
        crate::harness::open_the_way_to(&folder);
        crate::harness::give_to_nobody(&folder);
    }
    folder
}

/// Runs `kind` tasks of `source` for `seconds` while the attacker swaps `a` and `b`, calling
/// `each(task_id, exit code, stderr)` after every run; returns (runs, swaps).
fn race(
    scene: &Scene,
    (a, b): (&std::path::Path, &std::path::Path),
    (kind, source): (&str, &str),
    seconds: u64,
    mut each: impl FnMut(&str, Option<i32>, &str),
) -> (u64, u64) {
    let attacker = Attacker::swapping(a, b, seconds as f64);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let id = format!("race{runs}");
        let body = serde_json::json!({"task_id": id, "type": kind, "source": source});
        let (code, err) = run_task(scene, &format!("{id}.task.json"), &body);
        each(&id, code, &err);
        runs += 1;
    }
    let (swaps, _) = attacker.finish();
    (runs, swaps)
}

#[test]
fn a_tree_entry_swapped_for_a_link_to_a_secret_never_brings_it_in() {
    let scene = scene();
    let tree = attackers_folder(&scene, "tree");
    let harmless = b"harmless bytes of a.txt\n".repeat(3);
    std::fs::write(tree.join("a.txt"), &harmless).unwrap();
    std::fs::write(tree.join("b.txt"), b"another file").unwrap();
    std::os::unix::fs::symlink(&scene.secret, tree.join("swap")).unwrap();
    let harmless_sha = hex::encode(Sha256::digest(&harmless));
    let secret_sha = hex::encode(Sha256::digest(SECRET));
    let mut a_folded = 0;
    let swapped = (tree.join("a.txt"), tree.join("swap"));
    let task = ("convert_directory", "tree");
    let (runs, swaps) = race(&scene, (&swapped.0, &swapped.1), task, 4, |id, _, _| {
        let district = scene.out.join(id).join("district.json");
        if let Ok(text) = std::fs::read_to_string(&district) {
            assert!(!text.contains(&secret_sha), "{id}: the secret is in {text}");
            a_folded += usize::from(text.contains(&harmless_sha));
        }
    });
    assert!(runs >= 5 && swaps > 1000, "{runs} runs, {swaps} swaps");
    assert!(
        a_folded > 0,
        "the harmless file was folded at least once in {runs} runs"
    );
    let written = crate::harness::bytes_below(&scene.out);
    assert!(!written.windows(SECRET.len()).any(|w| w == SECRET));
    eprintln!("{runs} runs against {swaps} swaps; a.txt folded in {a_folded}; secret never read");
}

#[test]
fn a_source_swapped_for_a_link_to_a_secret_never_brings_it_in() {
    let scene = scene();
    let folder = attackers_folder(&scene, "src");
    let harmless = b"harmless bytes of one.bin\n".repeat(40);
    std::fs::write(folder.join("one.bin"), &harmless).unwrap();
    std::os::unix::fs::symlink(&scene.secret, folder.join("swap")).unwrap();
    let (mut folded, mut refused) = (0, 0);
    let swapped = (folder.join("one.bin"), folder.join("swap"));
    let task = ("convert_binary", "src/one.bin");
    let (runs, swaps) = race(&scene, (&swapped.0, &swapped.1), task, 4, |_, code, err| {
        match code {
            Some(0) => folded += 1,
            _ if err.contains("refused by policy") && err.contains("it opened as") => refused += 1,
            // The swap landed between two steps of the path's resolution: nothing opened.
            _ => {}
        }
    });
    let written = crate::harness::bytes_below(&scene.out);
    assert!(
        !written.windows(SECRET.len()).any(|w| w == SECRET),
        "the secret reached the outputs"
    );
    eprintln!("{runs} runs against {swaps} swaps: {folded} folded the harmless file, {refused} opened the secret and were refused");
    assert!(swaps > 1000, "the attacker ran: {swaps}");
    assert!(
        folded > 0 && refused > 0,
        "both sides of the race were met in {runs} runs"
    );
}

#[test]
fn relative_task_folders_judge_sources_where_they_are() {
    let scene = scene();
    std::fs::write(scene.tasks.join("small.bin"), b"small and allowed").unwrap();
    let body = serde_json::json!({"task_id": "rel", "type": "convert_binary",
        "source": "small.bin"});
    std::fs::write(scene.tasks.join("rel.task.json"), body.to_string()).unwrap();
    let parent = scene.tasks.parent().unwrap();
    // `run tasks/rel.task.json` from the folder above, and `daemon --tasks tasks` there.
    let o = foundry_cmd()
        .current_dir(parent)
        .args(["run", "tasks/rel.task.json", "--output-root", "out-run"])
        .args(["--backend", "cpu", "-q"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(parent.join("out-run/rel/small.bin.brick").is_file());
    let o = foundry_cmd()
        .current_dir(parent)
        .args(["daemon", "--tasks", "tasks", "--output-root", "out-daemon"])
        .args([
            "--backend",
            "cpu",
            "-q",
            "--exit-when-idle",
            "--poll-ms",
            "50",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        parent.join("out-daemon/rel/small.bin.brick").is_file(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_folder_of_a_tree_swapped_for_a_link_never_brings_in_what_lies_outside_the_tree() {
    let scene = scene();
    // `outside/` is in the task folder (an allowed root), but not in the tree being folded.
    let outside = scene.tasks.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let foreign = b"bytes from outside the tree\n".repeat(5);
    std::fs::write(outside.join("f.txt"), &foreign).unwrap();
    let tree = attackers_folder(&scene, "tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    let own = b"the tree's own f.txt\n".repeat(5);
    std::fs::write(tree.join("sub/f.txt"), &own).unwrap();
    std::os::unix::fs::symlink(&outside, tree.join("swap")).unwrap();
    let (own_sha, foreign_sha) = (
        hex::encode(Sha256::digest(&own)),
        hex::encode(Sha256::digest(&foreign)),
    );
    let mut own_folded = 0;
    let swapped = (tree.join("sub"), tree.join("swap"));
    let task = ("convert_directory", "tree");
    let (runs, swaps) = race(&scene, (&swapped.0, &swapped.1), task, 4, |id, _, _| {
        if let Ok(text) = std::fs::read_to_string(scene.out.join(id).join("district.json")) {
            assert!(
                !text.contains(&foreign_sha),
                "{id}: a file from outside the tree was folded: {text}"
            );
            own_folded += usize::from(text.contains(&own_sha));
        }
    });
    assert!(runs >= 5 && swaps > 1000, "{runs} runs, {swaps} swaps");
    assert!(
        own_folded > 0,
        "the tree's own file was folded in {runs} runs"
    );
    eprintln!("{runs} runs against {swaps} swaps; sub/f.txt folded in {own_folded}, never the outside one");
}
