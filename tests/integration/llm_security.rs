//! What the `--llm` client may send and where: the host check judges the URL exactly as the
//! HTTP client parses it, and no secret of a known kind reaches the server, in text or in hex.

use super::llm_standin::{lm_studio_always, streamed_answer, StandIn, GOOD_ANSWER};
use foundry_gpu::llm::{LlmClient, LlmConfig};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn foundry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_foundry-gpu"))
}

/// `analyze FILE --json` asking the server at `url`, without the answer cache.
fn analyze_with_llm(file: &Path, url: &str) -> Output {
    foundry()
        .arg("analyze")
        .arg(file)
        .args(["--json", "--no-llm-cache", "--llm-url", url])
        .env_remove("FOUNDRY_LLM_URL")
        .env_remove("LM_API_TOKEN")
        .output()
        .expect("run foundry-gpu")
}

fn port_of(server: &StandIn) -> String {
    server.url().rsplit(':').next().unwrap().to_string()
}

#[test]
fn a_backslash_before_the_at_sign_cannot_smuggle_the_llm_url_past_the_host_check() {
    // The client's parser reads `\` as `/`: the host is 0.0.0.0, which Linux connects to the
    // local machine, so before the fix the stand-in on loopback received the digest.
    let server = lm_studio_always(streamed_answer(GOOD_ANSWER));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tool.bin");
    std::fs::write(&file, b"\x00\x01some tool\x00--help\x00").unwrap();
    let url = format!("http://0.0.0.0:{}\\@127.0.0.1", port_of(&server));
    let run = analyze_with_llm(&file, &url);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refused by policy") && stderr.contains("0.0.0.0"),
        "{stderr}"
    );
    assert!(
        server.requests().is_empty(),
        "the server was asked: {:?}",
        server
            .requests()
            .iter()
            .map(|r| &r.path)
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_tasks_llm_url_is_judged_as_the_client_parses_it() {
    let server = lm_studio_always(streamed_answer(GOOD_ANSWER));
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::write(tasks.join("tool.bin"), b"\x00\x01some tool\x00--help\x00").unwrap();
    let url = format!("http://0.0.0.0:{}\\@127.0.0.1", port_of(&server));
    let task = serde_json::json!({
        "task_id": "t", "type": "analyze_system", "source": "tool.bin", "llm_url": url,
    });
    std::fs::write(tasks.join("t.task.json"), task.to_string()).unwrap();
    let out = dir.path().join("out");
    let run = foundry()
        .current_dir(dir.path())
        .arg("daemon")
        .arg("--tasks")
        .arg(&tasks)
        .arg("--output-root")
        .arg(&out)
        .args(["--backend", "cpu", "--exit-when-idle", "--poll-ms", "50"])
        .args(["--llm", "--no-llm-cache"])
        .env_remove("FOUNDRY_LLM_URL")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        tasks.join("t.task.json.failed").exists(),
        "the task did not fail"
    );
    let error = std::fs::read_to_string(tasks.join("t.error.json")).unwrap();
    let reason: Value = serde_json::from_str(&error).unwrap();
    let reason = reason["reason"].as_str().unwrap();
    assert!(
        reason.contains("refused by policy") && reason.contains("0.0.0.0"),
        "{reason}"
    );
    assert!(server.requests().is_empty(), "the server was asked");
}

#[test]
fn the_client_refuses_every_url_whose_parsed_host_is_not_loopback() {
    let config = |url: &str| LlmConfig {
        base_url: url.into(),
        cache_dir: None,
        ..LlmConfig::default()
    };
    for bad in [
        "http://0.0.0.0:18765\\@127.0.0.1",
        "http://127.0.0.1:1234@10.0.0.1",
        "http://127.0.0.1@10.0.0.1:1234",
        "http://user:pass@127.0.0.1:1234",
        "http://127.0.0.1.evil.com:1234",
        "http://[::ffff:10.0.0.1]:1234",
        "http://0.0.0.0:1234",
        "http://[::]:1234",
        "http://LOCALHOST.evil.com",
        "ftp://127.0.0.1:1234",
    ] {
        let refused = LlmClient::new(config(bad));
        assert!(refused.is_err(), "{bad} was accepted");
        let message = refused.unwrap_err();
        assert!(!message.contains("pass@"), "{message}");
    }
    for good in [
        "http://2130706433:1234",
        "http://0x7f.1:1234",
        "http://LOCALHOST:1234",
        "http://localhost.:1234",
        "http://127.0.0.1.:1234/v1",
        "http://[::1]:1234",
    ] {
        assert!(LlmClient::new(config(good)).is_ok(), "{good} was refused");
    }
}

/// One fake secret per kind: the kind the metadata must count, the line holding it, and the
/// value that must never reach the server.
struct FakeSecret {
    kind: &'static str,
    line: String,
    value: String,
}

fn corpus() -> Vec<FakeSecret> {
    let secret = |kind, line: String, value: &str| FakeSecret {
        kind,
        line,
        value: value.to_string(),
    };
    let same = |kind, value: String| FakeSecret {
        kind,
        line: value.clone(),
        value,
    };
    let alnum36 = "FAKE0123456789abcdefghijklmnopqrstuv";
    assert_eq!(alnum36.len(), 36);
    let hex64 = "0123456789abcdef".repeat(4);
    vec![
        // An AWS key glued to a letter, and one after hex.
        secret(
            "aws_access_key",
            "blobxAKIAZ7FAKEKEY0000001 end".into(),
            "AKIAZ7FAKEKEY0000001",
        ),
        secret(
            "aws_access_key",
            "0xdeadbeefASIAZ7FAKEKEY0000002".into(),
            "ASIAZ7FAKEKEY0000002",
        ),
        same("gcp_api_key", format!("AIza{}", &alnum36[..35])),
        secret(
            "private_key",
            r#"{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvFAKEsaBODY0123456789\n-----END PRIVATE KEY-----\n"}"#.into(),
            "MIIEvFAKEsaBODY0123456789",
        ),
        secret(
            "azure_storage_key",
            "DefaultEndpointsProtocol=https;AccountName=fakeacct;AccountKey=FAKEazureKey0123456789abcdefABCDEF==;EndpointSuffix=core.windows.net".into(),
            "FAKEazureKey0123456789abcdefABCDEF==",
        ),
        same("slack_token", "xoxb-0000000000-1111111111-FAKEfakeFAKEfake".into()),
        secret(
            "slack_webhook",
            "notify https://hooks.slack.com/services/T0000FAKE/B0000FAKE/FAKEfakeFAKEfake0000".into(),
            "T0000FAKE/B0000FAKE/FAKEfakeFAKEfake0000",
        ),
        same("stripe_key", "sk_live_FAKE0123456789abcdefFAKE".into()),
        same("stripe_key", "rk_live_FAKE0123456789abcdefFAKE".into()),
        same("github_token", format!("ghp_{alnum36}")),
        same("gitlab_token", "glpat-FAKE0123456789abcdefgh".into()),
        same("npm_token", format!("npm_{alnum36}")),
        same(
            "pypi_token",
            format!("pypi-AgEIcHlwaS5vcmc{}", "FAKEfake01".repeat(5)),
        ),
        same("openai_key", "sk-proj-FAKE0123456789abcdefghijklmnop".into()),
        secret(
            "twilio_key",
            "twilio api SK0123456789abcdef0123456789abcdef".into(),
            "SK0123456789abcdef0123456789abcdef",
        ),
        same(
            "sendgrid_key",
            format!(
                "SG.FAKE0123456789abcdefgh.{}",
                "FAKEfake0123456789abcdefghijklmnopqrstuvwxy"
            ),
        ),
        secret(
            "heroku_key",
            "heroku auth 01234567-89ab-cdef-0123-456789abcdef".into(),
            "01234567-89ab-cdef-0123-456789abcdef",
        ),
        same("digitalocean_token", format!("dop_v1_{hex64}")),
        same(
            "jwt",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJmYWtlIn0.ZmFrZXNpZ25hdHVyZWZha2U".into(),
        ),
        secret(
            "auth_header",
            "Authorization: Bearer FAKEopaqueToken0123456789".into(),
            "FAKEopaqueToken0123456789",
        ),
        secret(
            "auth_header",
            "Proxy-Authorization: Basic ZmFrZXVzZXI6ZmFrZXBhc3M=".into(),
            "ZmFrZXVzZXI6ZmFrZXBhc3M=",
        ),
        secret(
            "private_key",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEFAKEpemBODYline0001\n-----END RSA PRIVATE KEY-----"
                .into(),
            "MIIEFAKEpemBODYline0001",
        ),
        secret(
            "private_key",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaFAKEopensshBODY02\n-----END OPENSSH PRIVATE KEY-----"
                .into(),
            "b3BlbnNzaFAKEopensshBODY02",
        ),
        secret(
            "private_key",
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQFAKEpgpBODYline03\n-----END PGP PRIVATE KEY BLOCK-----"
                .into(),
            "lQFAKEpgpBODYline03",
        ),
        secret(
            "url_password",
            "postgres://app:FAKEpgPass01@db.internal:5432/app".into(),
            "FAKEpgPass01",
        ),
        secret(
            "url_password",
            "mongodb+srv://app:FAKEmongo02@cluster0.example.net/db".into(),
            "FAKEmongo02",
        ),
        secret(
            "password_or_token",
            "DB_PASSWORD=FAKEdbPass02".into(),
            "FAKEdbPass02",
        ),
        secret(
            "password_or_token",
            "  password: FAKEyamlPass03".into(),
            "FAKEyamlPass03",
        ),
        secret(
            "password_or_token",
            r#"{"db": {"password": "FAKEjsonPass04"}}"#.into(),
            "FAKEjsonPass04",
        ),
        secret(
            "password_or_token",
            "  'password' => 'FAKEphpPass05',".into(),
            "FAKEphpPass05",
        ),
        secret(
            "password_or_token",
            "<password>FAKExmlPass06</password>".into(),
            "FAKExmlPass06",
        ),
        secret(
            "password_or_token",
            r#"<user name="a" password="FAKExmlAttr07"/>"#.into(),
            "FAKExmlAttr07",
        ),
        secret(
            "password_or_token",
            "machine example.com login alice password FAKEnetrc08".into(),
            "FAKEnetrc08",
        ),
        secret(
            "password_or_token",
            "db.internal:5432:app:alice:FAKEpgpass09".into(),
            "FAKEpgpass09",
        ),
        secret(
            "command_line_password",
            "mysql -u root -pFAKEmysql10 app".into(),
            "FAKEmysql10",
        ),
        secret(
            "password_or_token",
            "backup --password=FAKEcli11".into(),
            "FAKEcli11",
        ),
        secret(
            "command_line_password",
            "backup --password FAKEcli12 now".into(),
            "FAKEcli12",
        ),
        secret(
            "command_line_password",
            "sshpass -p FAKEssh13 ssh host".into(),
            "FAKEssh13",
        ),
        secret(
            "command_line_password",
            "curl -u alice:FAKEcurl14 https://example.com/x".into(),
            "FAKEcurl14",
        ),
    ]
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn no_secret_of_a_known_kind_reaches_the_server_in_text_or_hex_and_each_kind_is_counted() {
    let server = lm_studio_always(streamed_answer(GOOD_ANSWER));
    let dir = tempfile::tempdir().unwrap();
    let secrets = corpus();
    // The digest samples a file's first 12 strings and hex-dumps its first 48 bytes: a few
    // secrets per file, each file starting with one, puts every secret in both.
    for (n, group) in secrets.chunks(3).enumerate() {
        let file = dir.path().join(format!("config-{n}.txt"));
        let mut text = String::new();
        for s in group {
            text.push_str(&s.line);
            text.push('\n');
        }
        std::fs::write(&file, &text).unwrap();
        let run = analyze_with_llm(&file, &server.url());
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let report: Value = serde_json::from_str(&stdout).expect("analyze --json");
        let llm = &report["semantic"]["llm"];
        assert_eq!(llm["status"], "answered", "{llm}");
        for s in group {
            assert!(
                llm["redacted"][s.kind].as_u64().unwrap_or(0) >= 1,
                "{} not counted as {} in {llm}",
                s.value,
                s.kind
            );
        }
    }
    let chats = server.chats();
    assert_eq!(chats.len(), secrets.chunks(3).count());
    // Every file starts with a secret, so every start window had bytes blanked, not left out.
    for chat in &chats {
        let prompt = chat.user_message();
        assert!(
            prompt.contains("start @0x0: ") && prompt.contains("(secret bytes redacted as 2a)"),
            "{prompt}"
        );
    }
    for chat in &chats {
        let body = chat.body.to_string();
        let prompt = chat.user_message();
        assert!(prompt.contains("Hex windows:"), "{prompt}");
        for s in &secrets {
            for (form, needle) in [("text", s.value.clone()), ("hex", hex_of(&s.value))] {
                assert!(
                    !body.contains(&needle) && !prompt.contains(&needle),
                    "{} ({}) was sent as {form}:\n{prompt}",
                    s.value,
                    s.kind
                );
            }
        }
    }
}
