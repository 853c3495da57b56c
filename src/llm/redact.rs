//! Redaction of what a prompt would carry off the machine: private-key blocks, passwords and
//! tokens written as `key=value` or `key: value`, and AWS-, GitHub- and JWT-shaped secrets.
//! Each is replaced by `[REDACTED kind]`, and the counts go into the brick's metadata so a
//! reader knows the model saw less than the file holds.

use regex::Regex;
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// Each kind, with the pattern that finds it and what survives of a match (`$key` keeps a
/// `key=value` pair's key, so the model still knows a password was there).
static RULES: LazyLock<Vec<(&'static str, Regex, &'static str)>> = LazyLock::new(|| {
    let rule = |kind, pattern: &str, keep| (kind, Regex::new(pattern).expect("pattern"), keep);
    vec![
        rule(
            "private_key",
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----(?s:.*?)(-----END [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----|\z)",
            "",
        ),
        rule("aws_access_key", r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", ""),
        rule(
            "github_token",
            r"\b(gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
            "",
        ),
        rule(
            "jwt",
            r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}",
            "",
        ),
        rule(
            "password_or_token",
            r#"(?i)(?P<key>\b[a-z0-9_.-]*(pass(word|wd|phrase)?|pwd|secret|token|api[_-]?key|access[_-]?key|auth[_-]?key|credentials?|private[_-]?key)\b["']?\s*[:=]\s*)(?P<value>"[^"\n]{1,512}"|'[^'\n]{1,512}'|[^\s"',;]{1,512})"#,
            "$key",
        ),
    ]
});

/// `text` with every secret replaced, and how many of each kind were.
pub fn redact(text: &str) -> (String, BTreeMap<&'static str, u64>) {
    let mut out = text.to_string();
    let mut counts = BTreeMap::new();
    for (kind, pattern, keep) in RULES.iter() {
        let mut found = 0u64;
        let replaced = pattern.replace_all(&out, |caps: &regex::Captures| {
            found += 1;
            let mut kept = String::new();
            caps.expand(keep, &mut kept);
            format!("{kept}[REDACTED {kind}]")
        });
        if found > 0 {
            out = replaced.into_owned();
            counts.insert(*kind, found);
        }
    }
    (out, counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_found_counted_and_removed() {
        let secret_key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----";
        let text = format!(
            "strings:\n{secret_key}\nDB_PASSWORD=hunter2\npassword: \"correct horse\"\napi_key='k-123'\n\
             AKIAIOSFODNN7EXAMPLE\nghp_0123456789abcdefghijABCDEFGHIJ012345\n\
             eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLXZhbHVl\nplain line /usr/lib/x"
        );
        let (out, counts) = redact(&text);
        for secret in [
            "b3BlbnNzaC1rZXktdjEAAAAA",
            "hunter2",
            "correct horse",
            "k-123",
            "AKIAIOSFODNN7EXAMPLE",
            "ghp_0123",
            "eyJhbGciOiJIUzI1NiJ9",
        ] {
            assert!(!out.contains(secret), "{secret} survived in:\n{out}");
        }
        assert!(
            out.contains("DB_PASSWORD=[REDACTED password_or_token]"),
            "{out}"
        );
        assert!(out.contains("plain line /usr/lib/x"));
        assert_eq!(counts["private_key"], 1);
        assert_eq!(counts["password_or_token"], 3);
        assert_eq!(counts["aws_access_key"], 1);
        assert_eq!(counts["github_token"], 1);
        assert_eq!(counts["jwt"], 1);
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        let text = "passwd\n/etc/passwd\nToken ring\nsecret sauce recipe\nkey = value";
        let (out, counts) = redact(text);
        assert_eq!(out, text);
        assert!(counts.is_empty(), "{counts:?}");
    }
}
