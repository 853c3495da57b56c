//! Server-sent events, parsed from bytes as they arrive: events split on a blank line (`\n\n` or
//! `\r\n\r\n`), `data:` lines joined, `event:`/`id:`/comment lines ignored, UTF-8 never split.

/// One complete event's `data` (lines joined with `\n`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SseItem {
    Data(String),
    /// `data: [DONE]`: the stream ended normally.
    Done,
}

/// Incremental parser: feed it chunks as they come off the socket, in any split.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the event being received; kept as bytes so a chunk ending inside a UTF-8
    /// character is completed by the next one before anything is decoded.
    pending: Vec<u8>,
}

/// A `data:` payload that is not UTF-8.
#[derive(Debug, PartialEq, Eq)]
pub struct NotUtf8;

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `chunk` and returns every event it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseItem>, NotUtf8> {
        self.pending.extend_from_slice(chunk);
        let mut items = Vec::new();
        while let Some((end, separator)) = find_event_end(&self.pending) {
            let event: Vec<u8> = self.pending.drain(..end + separator).take(end).collect();
            if let Some(item) = parse_event(&event)? {
                items.push(item);
            }
        }
        Ok(items)
    }

    /// Called at end of stream: an event not yet closed by a blank line still counts when it is
    /// complete lines (some servers end with a single newline).
    pub fn finish(&mut self) -> Result<Option<SseItem>, NotUtf8> {
        let rest = std::mem::take(&mut self.pending);
        if rest.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        parse_event(&rest)
    }
}

/// Position and length of the first blank-line separator (`\n\n`, `\r\n\r\n`, `\r\r`, or a mix).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        let first = line_break_len(&buf[i..])?;
        if first > 0 {
            if let Some(second) = line_break_len(&buf[i + first..]) {
                if second > 0 {
                    return Some((i, first + second));
                }
            } else {
                // A `\r` at the very end may still become `\r\n`: wait for more bytes.
                return None;
            }
            i += first;
        } else {
            i += 1;
        }
    }
    None
}

/// Length of a line break at the start of `buf` (0 when none); `None` when `buf` ends in a
/// lone `\r` that the next chunk may extend.
fn line_break_len(buf: &[u8]) -> Option<usize> {
    match buf {
        [b'\r', b'\n', ..] => Some(2),
        [b'\r'] => None,
        [b'\r', ..] | [b'\n', ..] => Some(1),
        _ => Some(0),
    }
}

fn parse_event(event: &[u8]) -> Result<Option<SseItem>, NotUtf8> {
    let text = std::str::from_utf8(event).map_err(|_| NotUtf8)?;
    let mut data: Option<String> = None;
    for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        if field != "data" {
            continue;
        }
        let value = value.strip_prefix(' ').unwrap_or(value);
        match &mut data {
            Some(d) => {
                d.push('\n');
                d.push_str(value);
            }
            None => data = Some(value.to_string()),
        }
    }
    Ok(data.map(|d| {
        if d.trim() == "[DONE]" {
            SseItem::Done
        } else {
            SseItem::Data(d)
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_at_once(bytes: &[u8]) -> Vec<SseItem> {
        let mut p = SseParser::new();
        let mut items = p.feed(bytes).unwrap();
        items.extend(p.finish().unwrap());
        items
    }

    fn byte_by_byte(bytes: &[u8]) -> Vec<SseItem> {
        let mut p = SseParser::new();
        let mut items = Vec::new();
        for b in bytes {
            items.extend(p.feed(std::slice::from_ref(b)).unwrap());
        }
        items.extend(p.finish().unwrap());
        items
    }

    #[test]
    fn events_split_anywhere_give_the_same_items() {
        let stream = "event: x\nid: 1\n: comment\ndata: {\"a\":\"caf\u{e9} \u{1f600}\"}\n\n\
                      data:no-space\r\n\r\ndata: line1\ndata: line2\n\ndata: [DONE]\n\n";
        let expected = vec![
            SseItem::Data("{\"a\":\"caf\u{e9} \u{1f600}\"}".into()),
            SseItem::Data("no-space".into()),
            SseItem::Data("line1\nline2".into()),
            SseItem::Done,
        ];
        assert_eq!(all_at_once(stream.as_bytes()), expected);
        assert_eq!(byte_by_byte(stream.as_bytes()), expected);
        for split in 0..stream.len() {
            let mut p = SseParser::new();
            let mut items = p.feed(&stream.as_bytes()[..split]).unwrap();
            items.extend(p.feed(&stream.as_bytes()[split..]).unwrap());
            assert_eq!(items, expected, "split at {split}");
        }
    }

    #[test]
    fn unfinished_events_are_visible() {
        let mut p = SseParser::new();
        assert!(p.feed(b"data: {\"x\":").unwrap().is_empty());
        assert_eq!(p.finish().unwrap(), Some(SseItem::Data("{\"x\":".into())));
        assert!(SseParser::new().feed(b"data: \xff\xfe\n\n").is_err());
    }
}
