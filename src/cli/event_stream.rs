//! Reading a `text/event-stream` body as WHATWG HTML's "event stream interpretation" says, for `herald tail`.
//!
//! Bytes are fed as they arrive, in pieces of any size; lines end with CRLF, LF or CR (a CR at the end of
//! one piece and an LF at the start of the next are one line end); a leading byte order mark is skipped;
//! each line is decoded as UTF-8 with replacement characters. The last event id follows the spec: an `id`
//! field sets the buffer, and it becomes the stream's last event id when the event is dispatched (at the
//! blank line), even for an event without data; it carries over to the next connection.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    /// The event's own `id:` field, if it had one (a `herald.reset` has none).
    pub(crate) id: Option<String>,
    /// The `event:` field, or `message`.
    pub(crate) kind: String,
    /// The `data:` lines joined with LF.
    pub(crate) data: String,
}

/// What a piece of the stream gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    /// An event was dispatched.
    Event(Event),
    /// A `retry:` field: the reconnection time in milliseconds.
    Retry(u64),
}

/// The parser of one connection's stream.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    /// The current line, not yet ended.
    line: Vec<u8>,
    /// The previous byte ended a line with CR: an LF right after it belongs to the same line end.
    after_cr: bool,
    /// Past the start of the stream (where a byte order mark is skipped).
    started: bool,
    data: String,
    kind: String,
    /// The `id` field of the event being read, if any.
    event_id: Option<String>,
    /// The spec's "last event ID buffer".
    id_buffer: String,
    /// The spec's "last event ID string": the buffer as of the last dispatch.
    last_event_id: String,
}

impl Parser {
    /// A parser for a stream opened with `last_event_id` (empty for none).
    pub(crate) fn new(last_event_id: &str) -> Parser {
        Parser { id_buffer: last_event_id.to_owned(), last_event_id: last_event_id.to_owned(), ..Parser::default() }
    }

    /// The id to reconnect with (`Last-Event-ID`); empty for none.
    pub(crate) fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Feeds the next bytes of the stream; returns what they completed.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Vec<Item> {
        let mut items = Vec::new();
        if !self.started {
            // The byte order mark may itself arrive in pieces.
            let bom = b"\xEF\xBB\xBF";
            let have = self.line.len();
            let take = (bom.len() - have).min(bytes.len());
            if bytes[..take] == bom[have..have + take] {
                if have + take < bom.len() {
                    self.line.extend_from_slice(&bytes[..take]);
                    return items;
                }
                self.line.clear();
                bytes = &bytes[take..];
            } else {
                // Not a byte order mark after all: what was held back is the line's start.
            }
            self.started = true;
        }
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.process_line(&line, &mut items);
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(b);
                }
            }
        }
        items
    }

    fn process_line(&mut self, line: &[u8], items: &mut Vec<Item>) {
        if line.is_empty() {
            self.dispatch(items);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "event" => self.kind = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => {
                self.id_buffer = value.to_owned();
                self.event_id = Some(value.to_owned());
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                // More digits than a u64 holds: as long a wait as can be.
                items.push(Item::Retry(value.parse().unwrap_or(u64::MAX)));
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, items: &mut Vec<Item>) {
        self.last_event_id.clone_from(&self.id_buffer);
        let id = self.event_id.take();
        let kind = std::mem::take(&mut self.kind);
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        let kind = if kind.is_empty() { "message".to_owned() } else { kind };
        items.push(Item::Event(Event { id, kind, data }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Option<&str>, kind: &str, data: &str) -> Item {
        Item::Event(Event { id: id.map(str::to_owned), kind: kind.to_owned(), data: data.to_owned() })
    }

    fn parse_in_pieces(stream: &[u8], piece: usize) -> (Vec<Item>, String) {
        let mut p = Parser::new("");
        let mut items = Vec::new();
        for chunk in stream.chunks(piece) {
            items.extend(p.feed(chunk));
        }
        (items, p.last_event_id().to_owned())
    }

    #[test]
    fn herald_stream() {
        let stream = b"retry: 3000\n: herald\n\nid: 1-0\nevent: doc.updated\ndata: {\"a\":1}\n\n\
            event: herald.reset\ndata: {\"topics\":[\"a\"]}\n\nid: 2-0\ndata: hello\ndata: world\n\ndata:\n\n";
        let want = vec![
            Item::Retry(3000),
            event(Some("1-0"), "doc.updated", "{\"a\":1}"),
            event(None, "herald.reset", "{\"topics\":[\"a\"]}"),
            event(Some("2-0"), "message", "hello\nworld"),
            event(None, "message", ""),
        ];
        for piece in 1..=stream.len() {
            assert_eq!(parse_in_pieces(stream, piece), (want.clone(), "2-0".to_owned()), "pieces of {piece}");
        }
    }

    #[test]
    fn line_ends_bom_and_odd_fields() {
        let stream = b"\xEF\xBB\xBFdata:a\r\ndata\rdata:  b\r\rid\nid: x\0y\nretry: 1a\nretry\nfoo: bar\n\n";
        // One event (no blank line before the lone CR), then an `id` that empties the last event id.
        let want = vec![event(None, "message", "a\n\n b")];
        for piece in 1..=stream.len() {
            assert_eq!(parse_in_pieces(stream, piece), (want.clone(), String::new()), "pieces of {piece}");
        }
    }

    #[test]
    fn the_id_counts_at_dispatch_even_without_data() {
        let mut p = Parser::new("0-1");
        assert_eq!(p.feed(b"id: 5-0\n"), vec![]);
        assert_eq!(p.last_event_id(), "0-1", "not dispatched yet");
        assert_eq!(p.feed(b"\n"), vec![]);
        assert_eq!(p.last_event_id(), "5-0");
        // A stream cut in the middle of an event does not move the id.
        p.feed(b"id: 6-0\ndata: x\n");
        assert_eq!(p.last_event_id(), "5-0");
    }

    #[test]
    fn no_bom_means_the_bytes_are_the_line() {
        let (items, _) = parse_in_pieces(b"\xEFdata: x\n\n", 1);
        assert_eq!(items, vec![]);
        let (items, _) = parse_in_pieces(b"dat", 1);
        assert_eq!(items, vec![]);
        let (items, _) = parse_in_pieces(b"da\xEF\xBB\xBFta: x\n\n", 2);
        assert_eq!(items, vec![]);
    }
}
