//! A `text/event-stream` parser written from the WHATWG HTML standard ("Server-sent events", the event
//! stream interpretation), to check what Herald writes against what a browser's EventSource would see.
//!
//! It follows the standard's algorithm line by line: one leading BOM is ignored; lines end at CRLF, a lone
//! CR or a lone LF; a blank line dispatches the event being built (nothing is dispatched when its data
//! buffer is empty); a line starting with `:` is a comment; a field's value loses one leading space; `data`
//! appends the value and a LF; `event` sets the type; `id` sets the last event id unless the value holds a
//! NUL, and the last event id persists from one event to the next; `retry` is taken only when it is all
//! ASCII digits; a final event without its blank line is never dispatched. The one field the standard does
//! not know, `topics` (tagged streams), is recorded per event so that tagged frames can be checked too.

/// One dispatched event, as a standard parser sees it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParsedEvent {
    /// The last event id at dispatch (it persists across events until an `id:` field changes it).
    pub id: Option<String>,
    /// The event type, when an `event:` field set a non-empty one (else a browser says `message`).
    pub kind: Option<String>,
    /// The data, its final LF removed.
    pub data: String,
    /// A valid `retry:` field seen since the previous dispatch (a forged one would show here).
    pub retry: Option<u64>,
    /// The last `topics:` field of the event's block.
    pub topics: Option<String>,
}

/// Parses a whole stream, returning the events a browser would dispatch, in order.
pub fn parse(stream: &str) -> Vec<ParsedEvent> {
    let stream = stream.strip_prefix('\u{feff}').unwrap_or(stream);
    let mut events = Vec::new();
    let (mut data, mut kind, mut id, mut retry, mut topics) = (String::new(), String::new(), None, None, None);
    let mut rest = stream;
    while let Some(pos) = rest.find(['\r', '\n']) {
        let line = &rest[..pos];
        let skip = if rest[pos..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[pos + skip..];
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                events.push(ParsedEvent {
                    id: id.clone(),
                    kind: (!kind.is_empty()).then(|| kind.clone()),
                    data: std::mem::take(&mut data),
                    retry: retry.take(),
                    topics: topics.take(),
                });
            }
            data.clear();
            kind.clear();
            topics = None;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "event" => value.clone_into(&mut kind),
            "id" if !value.contains('\0') => id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                retry = Some(value.parse().unwrap_or(u64::MAX));
            }
            "topics" => topics = Some(value.to_owned()),
            _ => {}
        }
    }
    events
}

/// `data` with every CRLF and lone CR turned into LF: what a parser gives back for data sent with any
/// line ends.
pub fn normalise_line_ends(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_standard() {
        let events =
            parse("\u{feff}retry: 5\n: c\nid: 1\nevent: e\ndata: a\ndata:b\r\rdata: c\r\n\r\nid\ndata\n\ndata: lost");
        assert_eq!(
            events,
            [
                ParsedEvent {
                    id: Some("1".into()),
                    kind: Some("e".into()),
                    data: "a\nb".into(),
                    retry: Some(5),
                    topics: None
                },
                ParsedEvent { id: Some("1".into()), kind: None, data: "c".into(), retry: None, topics: None },
                ParsedEvent { id: Some(String::new()), kind: None, data: String::new(), retry: None, topics: None },
            ]
        );
        // No data, no event; a NUL keeps the old id; retry must be digits only.
        assert_eq!(parse("event: x\n\nid: a\0b\nretry: +5\ndata: y\n\n")[0].retry, None);
        assert!(parse("event: x\n\n").is_empty());
        assert_eq!(normalise_line_ends("a\r\nb\rc\n"), "a\nb\nc\n");
    }
}
