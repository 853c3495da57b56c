//! Redaction of what a prompt would carry off the machine: the secret kinds of the usual
//! scanners' default rule sets (cloud and SaaS keys, tokens, private keys, connection strings,
//! passwords in config formats and on command lines). Text has each secret replaced by
//! `[REDACTED kind]`; raw bytes (a hex window, a sampled string) have the secret's bytes
//! replaced by `*`. The counts, by kind, go into the metadata so a reader knows the model saw
//! less than the file holds.

use regex::Regex;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::LazyLock;

/// Counts of removed secrets, by kind.
pub type Counts = BTreeMap<&'static str, u64>;

/// One rule: the kind it reports, its pattern, and whether a match must also look random.
/// The secret is the pattern's `s` group when it has one (so `password=` stays and tells the
/// model a password was there), else the whole match.
struct Rule {
    kind: &'static str,
    pattern: Regex,
    /// Only matches whose Shannon entropy reaches this (bits per character) count.
    min_entropy: Option<f64>,
}

/// Key names that hold secrets in `key=value`, YAML, JSON, PHP and XML forms.
const SECRET_KEY: &str = r"[A-Za-z0-9_.-]*(?:passw(?:or)?d|passphrase|pass|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|auth[_-]?key|account[_-]?key|credentials?|private[_-]?key|client[_-]?secret)[A-Za-z0-9_.-]*";

/// Most specific first: where two rules find overlapping secrets the earlier one names it.
static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    let rule = |kind, pattern: &str| Rule {
        kind,
        pattern: Regex::new(pattern).expect("redaction pattern"),
        min_entropy: None,
    };
    vec![
        // PEM (RSA, EC, DSA, PKCS#8, encrypted), OpenSSH and PGP private key blocks; an
        // unterminated block runs to the end, since its end was cut off, not absent.
        rule(
            "private_key",
            r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----(?s:.*?)(?:-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\z)",
        ),
        rule(
            "private_key",
            r"PuTTY-User-Key-File-\d+:(?s:.*?)(?:Private-MAC: *[0-9A-Fa-f]+|\z)",
        ),
        // No word boundary before: keys are found glued to letters, hex and base64 too.
        rule(
            "aws_access_key",
            r"(?:A3T[A-Z0-9]|AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}",
        ),
        rule("gcp_api_key", r"AIza[0-9A-Za-z_-]{35}"),
        rule(
            "azure_storage_key",
            r"(?i)(?:AccountKey|SharedAccessKey|SharedAccessSignature)\s*=\s*(?P<s>[A-Za-z0-9+/=%]{16,})",
        ),
        rule(
            "slack_webhook",
            r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_-]{16,}",
        ),
        rule(
            "slack_token",
            r"xox[abposre]-[0-9A-Za-z-]{10,}|xapp-\d-[A-Za-z0-9-]{10,}",
        ),
        rule(
            "stripe_key",
            r"(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{10,}|whsec_[0-9A-Za-z]{20,}",
        ),
        rule(
            "github_token",
            r"gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}",
        ),
        rule(
            "gitlab_token",
            r"gl(?:pat|dt|ptt|rt|soat|ft|imt|cbt|agent)-[0-9A-Za-z_-]{20,}",
        ),
        rule("npm_token", r"npm_[A-Za-z0-9]{36}"),
        rule("pypi_token", r"pypi-AgE[A-Za-z0-9_-]{50,}"),
        rule(
            "sendgrid_key",
            r"SG\.[A-Za-z0-9_-]{16,32}\.[A-Za-z0-9_-]{16,64}",
        ),
        rule("digitalocean_token", r"do[opr]_v1_[a-f0-9]{64}"),
        rule(
            "heroku_key",
            r"HRKU-[A-Za-z0-9_-]{20,}|(?i)heroku[^\n]{0,30}?(?P<s>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})",
        ),
        rule(
            "twilio_key",
            r"\bSK[0-9a-fA-F]{32}\b|(?i)twilio[^\n]{0,30}?\b(?P<s>[0-9a-f]{32})\b",
        ),
        rule(
            "openai_key",
            r"\bsk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,}",
        ),
        rule(
            "jwt",
            r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
        ),
        rule(
            "auth_header",
            r#"(?i)\b(?:proxy-)?authorization["']?\s*[:=]\s*["']?(?:(?:bearer|basic|token|digest|negotiate|apikey)\s+)?(?P<s>[A-Za-z0-9._~+/=:-]{6,})"#,
        ),
        rule(
            "auth_header",
            r"\b[Bb]earer\s+(?P<s>[A-Za-z0-9._~+/-]{16,}=*)",
        ),
        // Any scheme: postgres://, mysql://, redis://, amqp://, mongodb+srv://, https://.
        rule(
            "url_password",
            r#"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@"'<>]*:(?P<s>[^\s/@"'<>]+)@"#,
        ),
        rule(
            "command_line_password",
            r#"\b(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlshow|mariadb|mariadb-dump)\b[^\n]*?\s-p(?P<s>[^\s'"]+)"#,
        ),
        rule(
            "command_line_password",
            r"\bsshpass\b[^\n]*?\s-p[ \t]*(?P<s>[^\s]+)",
        ),
        rule(
            "command_line_password",
            r#"\bcurl\b[^\n]*?\s(?:-u|--user)[ \t=]*["']?[^\s:"']*:(?P<s>[^\s"']+)"#,
        ),
        rule(
            "command_line_password",
            r"(?i)(?:^|\s)--?(?:password|passwd|pass|pwd)[ \t]+(?P<s>[^\s-][^\s]*)",
        ),
        rule(
            "password_or_token",
            &format!(r"(?i)<(?:{SECRET_KEY})>(?P<s>[^<\n]{{1,512}})</"),
        ),
        // key=value, key: value (YAML), "key": "value" (JSON), 'key' => 'value' (PHP),
        // key="value" (XML attributes), --key=value.
        rule(
            "password_or_token",
            &format!(
                r#"(?i)\b{SECRET_KEY}["']?[ \t]*(?:=>|:=|=|:)[ \t]*(?P<s>"[^"\n]{{1,512}}"|'[^'\n]{{1,512}}'|[^\s"',;<>]{{1,512}})"#
            ),
        ),
        // .netrc: `machine h login u password p`, one line or several.
        rule(
            "password_or_token",
            r"(?im)(?:^[ \t]*|\blogin[ \t]+\S+[ \t]+)(?:password|passwd)[ \t]+(?P<s>\S+)",
        ),
        // .pgpass: host:port:database:user:password.
        rule(
            "password_or_token",
            r"(?m)^[ \t]*[A-Za-z0-9_.*-]+:(?:\d+|\*):[A-Za-z0-9_*-]+:[A-Za-z0-9_*-]+:(?P<s>\S+)[ \t]*$",
        ),
        Rule {
            kind: "high_entropy_string",
            pattern: Regex::new(r"[A-Za-z0-9+/]{40,}={0,2}").expect("redaction pattern"),
            min_entropy: Some(4.5),
        },
    ]
});

/// A secret found in a text: where it lies and its kind.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    pub range: Range<usize>,
    pub kind: &'static str,
}

/// Bits per character of `s`.
fn shannon_entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Every secret in `text`, in order, none overlapping (overlaps are merged under the kind of
/// the more specific rule).
pub fn find(text: &str) -> Vec<Found> {
    let mut found: Vec<Found> = Vec::new();
    for rule in RULES.iter() {
        for caps in rule.pattern.captures_iter(text) {
            let whole = caps.get(0).expect("group 0");
            let secret = caps.name("s").unwrap_or(whole);
            if secret.is_empty() {
                continue;
            }
            if rule
                .min_entropy
                .is_some_and(|min| shannon_entropy(secret.as_str()) < min)
            {
                continue;
            }
            let range = secret.range();
            match found
                .iter_mut()
                .find(|f| f.range.start < range.end && range.start < f.range.end)
            {
                Some(earlier) => {
                    earlier.range =
                        earlier.range.start.min(range.start)..earlier.range.end.max(range.end);
                }
                None => found.push(Found {
                    range,
                    kind: rule.kind,
                }),
            }
        }
    }
    found.sort_by_key(|f| f.range.start);
    // A widened span may now reach its neighbour: merge those too.
    let mut merged: Vec<Found> = Vec::with_capacity(found.len());
    for f in found {
        match merged.last_mut() {
            Some(last) if f.range.start < last.range.end => {
                last.range.end = last.range.end.max(f.range.end);
            }
            _ => merged.push(f),
        }
    }
    merged
}

/// `text` with every secret replaced, and how many of each kind were.
pub fn redact(text: &str) -> (String, Counts) {
    let mut out = String::with_capacity(text.len());
    let mut counts = Counts::new();
    let mut at = 0;
    for f in find(text) {
        out.push_str(&text[at..f.range.start]);
        out.push_str(&format!("[REDACTED {}]", f.kind));
        *counts.entry(f.kind).or_default() += 1;
        at = f.range.end;
    }
    out.push_str(&text[at..]);
    (out, counts)
}

/// How far around a slice of raw bytes is read to judge it: a secret is recognised by what
/// surrounds it (`password=` before it, a PEM header lines above it).
const CONTEXT_BYTES: usize = 4096;

/// Secrets found in raw bytes, each counted once however many slices show it (a key block
/// spans several sampled strings; a password may be sampled and hex-dumped).
#[derive(Debug, Default)]
pub struct Tally {
    pub counts: Counts,
    seen: std::collections::HashSet<(usize, usize)>,
}

impl Tally {
    fn count(&mut self, whole: &Range<usize>, kind: &'static str) {
        if self.seen.insert((whole.start, whole.end)) {
            *self.counts.entry(kind).or_default() += 1;
        }
    }
}

/// The secrets overlapping `data[range]`, judged with the bytes around it: each as its range
/// relative to `range.start` and clipped to it, and its whole range in `data`. Bytes other
/// than printable ASCII, tab and line ends read as line ends (they end a string, as they do
/// for `strings`), so offsets stay bytes.
fn find_in_bytes(data: &[u8], range: Range<usize>) -> Vec<(Found, Range<usize>)> {
    let from = range.start.saturating_sub(CONTEXT_BYTES);
    let to = range.end.saturating_add(CONTEXT_BYTES).min(data.len());
    let text: String = data[from..to]
        .iter()
        .map(|&b| match b {
            0x20..=0x7e | b'\t' | b'\n' | b'\r' => b as char,
            _ => '\n',
        })
        .collect();
    let (start, end) = (range.start - from, range.end - from);
    find(&text)
        .into_iter()
        .filter(|f| f.range.start < end && start < f.range.end)
        .map(|f| {
            let whole = f.range.start + from..f.range.end + from;
            let clipped = Found {
                range: f.range.start.max(start) - start..f.range.end.min(end) - start,
                kind: f.kind,
            };
            (clipped, whole)
        })
        .collect()
}

/// `data[range]` with the bytes of every secret in it replaced by `*`; the secrets are
/// counted in `tally`.
pub fn blank_bytes(data: &[u8], range: Range<usize>, tally: &mut Tally) -> Vec<u8> {
    let mut bytes = data[range.clone()].to_vec();
    for (f, whole) in find_in_bytes(data, range) {
        bytes[f.range].fill(b'*');
        tally.count(&whole, f.kind);
    }
    bytes
}

/// `data[range]` as text with every secret in it replaced by `[REDACTED kind]`; the secrets
/// are counted in `tally`.
pub fn redact_bytes(data: &[u8], range: Range<usize>, tally: &mut Tally) -> String {
    let slice = &data[range.clone()];
    let mut out = String::new();
    let mut at = 0;
    for (f, whole) in find_in_bytes(data, range) {
        out.push_str(&String::from_utf8_lossy(&slice[at..f.range.start]));
        out.push_str(&format!("[REDACTED {}]", f.kind));
        tally.count(&whole, f.kind);
        at = f.range.end;
    }
    out.push_str(&String::from_utf8_lossy(&slice[at..]));
    out
}

/// Adds `more` to `counts`.
pub fn add_counts(counts: &mut Counts, more: &Counts) {
    for (kind, n) in more {
        *counts.entry(kind).or_default() += n;
    }
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
        let text = "passwd\n/etc/passwd\nToken ring\nsecret sauce recipe\nkey = value\n\
                    task-manager-implementation-details\n_ZN4core3fmt9Formatter9write_str17h0123456789abcdefE\n\
                    Basic configuration\nhttp://example.org:8080/path";
        let (out, counts) = redact(text);
        assert_eq!(out, text);
        assert!(counts.is_empty(), "{counts:?}");
    }

    #[test]
    fn secrets_in_raw_bytes_are_judged_with_their_context_and_clipped_to_the_slice() {
        let data = b"\x01\x02xyz mysql -u root -pS3cretPass db\x00tail";
        // The slice starts inside the command: the `mysql` before it still tells.
        let at = data.windows(4).position(|w| w == b"-pS3").unwrap();
        let mut tally = Tally::default();
        let bytes = blank_bytes(data, at + 2..at + 8, &mut tally);
        assert_eq!(bytes, b"******");
        // The same secret seen again in another slice is not counted again.
        let text = redact_bytes(data, 0..data.len(), &mut tally);
        assert_eq!(tally.counts["command_line_password"], 1);
        assert!(
            !text.contains("S3cretPass") && text.contains("-p[REDACTED"),
            "{text}"
        );
    }
}
