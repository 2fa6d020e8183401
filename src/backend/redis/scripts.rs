//! Key names, the publish and settle scripts, and decoding of what Redis returns (the history scripts are in
//! `history.rs`).

use redis::Value;

use crate::id::EventId;
use crate::sse::Event;
use crate::topic::{validate_type, Topic, TopicSet};

/// The last id issued (`<ms>-<seq>`).
pub(super) const LAST_ID_KEY: &str = "herald:last-id";
/// The first id issued since Redis last had no [`LAST_ID_KEY`] (since history was lost).
pub(super) const EPOCH_KEY: &str = "herald:epoch";
/// Prefix of each topic's stream key.
pub(super) const STREAM_PREFIX: &str = "herald:stream:";
/// Prefix of each topic's pub/sub channel.
pub(super) const CHANNEL_PREFIX: &str = "herald:channel:";

/// The stream key of `topic`.
pub(super) fn stream_key(topic: &str) -> String {
    format!("{STREAM_PREFIX}{topic}")
}

/// The channel of `topic`.
pub(super) fn channel(topic: &str) -> String {
    format!("{CHANNEL_PREFIX}{topic}")
}

/// Publishes one event, atomically.
///
/// `KEYS`: `herald:last-id`, `herald:epoch`, then `herald:stream:{topic}` for each topic.
/// `ARGV`: history size, history age limit in milliseconds (`0` for none), type (`""` for none), data, a
/// floor id (`0-0` for none), then the topics in the order of their stream keys, then optionally a nonce
/// (`""` for none), then optionally an idempotency key. Returns the id; for a repeated idempotency key,
/// `[first id, "duplicate"]` and nothing is published.
///
/// The nonce (Herald always sends one; other publishers may leave it out) makes a publish whose reply was
/// lost decidable, see [`SETTLE`]: it is stored as each entry's `nonce` field, and the script refuses to
/// run (`HERALD_CANCELLED`) once `herald:cancel:{nonce}` exists.
///
/// The idempotency key is remembered as `herald:idempotency:{key}` (the id, for ten minutes); a publish
/// that finds it publishes nothing and returns that id. Finding it, the script rewrites it (same value,
/// same expiry): a write, so that a `WAIT` after a repeat tells whether the first publish has reached the
/// replicas (they apply writes in order).
///
/// The id follows `max(herald:last-id, floor)` as `EventId::next` does, with Redis's `TIME` as the clock.
/// When `herald:last-id` is missing (a new or emptied Redis), the newest entry of each stream counts too,
/// so that `XADD` can never be refused, and the id is recorded as `herald:epoch`. It is recorded there
/// too when the floor is above `herald:last-id`: the node has seen ids this Redis never issued, so this
/// Redis lost events (a failover with asynchronous replication), and history before this id is not
/// complete. Nothing is written before every check has passed, so the script is all or nothing. Trimming
/// deletes the oldest entries with `XDEL` rather than `XADD MAXLEN`, because only `XDEL` records
/// `max-deleted-entry-id`, which tells a resuming client that events after its id were trimmed. With an
/// age limit, entries older than it are deleted the same way.
pub(super) const PUBLISH: &str = r"
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local n = #KEYS - 2
local nonce = ARGV[6 + n]
if nonce == '' then nonce = nil end
local idem = ARGV[7 + n]
if idem == '' then idem = nil end
if idem then idem = 'herald:idempotency:' .. idem end
if nonce and redis.call('EXISTS', 'herald:cancel:' .. nonce) == 1 then
  return redis.error_reply('HERALD_CANCELLED this publish was settled as not published')
end
if idem then
  local first = redis.call('GET', idem)
  if first then
    redis.call('SET', idem, first, 'KEEPTTL')
    return {first, 'duplicate'}
  end
end
local ms, seq = parse(ARGV[5])
local last = redis.call('GET', KEYS[1])
local lost = false
if last then
  local lms, lseq = parse(last)
  if lms > ms or (lms == ms and lseq >= seq) then ms, seq = lms, lseq else lost = true end
else
  for i = 3, #KEYS do
    local top = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)[1]
    if top then
      local tms, tseq = parse(top[1])
      if tms > ms or (tms == ms and tseq > seq) then ms, seq = tms, tseq end
    end
  end
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if now > ms then ms, seq = now, 0 else seq = seq + 1 end
local id = string.format('%d-%d', ms, seq)
if lost or not last then redis.call('SET', KEYS[2], id) end
redis.call('SET', KEYS[1], id)
local topics = {}
for i = 1, n do topics[i] = ARGV[5 + i] end
local joined = table.concat(topics, ',')
local max = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
for i = 1, n do
  local key = KEYS[2 + i]
  local fields = {'topics', joined}
  if ARGV[3] ~= '' then fields[#fields + 1] = 'type'; fields[#fields + 1] = ARGV[3] end
  fields[#fields + 1] = 'data'; fields[#fields + 1] = ARGV[4]
  if nonce then fields[#fields + 1] = 'nonce'; fields[#fields + 1] = nonce end
  redis.call('XADD', key, id, unpack(fields))
  local excess = redis.call('XLEN', key) - max
  if excess > 0 then
    for _, entry in ipairs(redis.call('XRANGE', key, '-', '+', 'COUNT', excess)) do
      redis.call('XDEL', key, entry[1])
    end
  end
  if ttl > 0 then
    local cutoff = string.format('%d-0', math.max(0, now - ttl))
    for _, entry in ipairs(redis.call('XRANGE', key, '-', '(' .. cutoff)) do
      redis.call('XDEL', key, entry[1])
    end
  end
end
if idem then redis.call('SET', idem, id, 'PX', 600000) end
local kind = cjson.null
if ARGV[3] ~= '' then kind = ARGV[3] end
local message = cjson.encode({id = id, topics = topics, type = kind, data = ARGV[4]})
for i = 1, n do
  redis.call('PUBLISH', 'herald:channel:' .. topics[i], message)
end
return id
";

/// Records in Redis that it lost events a node has seen: run by each node when its pub/sub connection
/// (re)connects, before it catches up.
///
/// `KEYS`: `herald:last-id`, `herald:epoch`; `ARGV[1]`: the newest id the node has seen. When
/// `herald:last-id` exists but is older than that id, this Redis never got some events that were issued
/// (a replica promoted before it received them): `herald:last-id` is raised to the node's id, so that ids
/// keep rising past it on every node, and `herald:epoch` to the id after it, so that every client resuming
/// from before is told (`herald.reset`, `history_lost`) instead of silently missing what was lost. Returns
/// 1 when it did so, else 0. (A missing `herald:last-id` is left to the publish script, which records the
/// epoch at the next publish; nodes judge that case by themselves meanwhile.)
pub(super) const REPAIR: &str = r"
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local last = redis.call('GET', KEYS[1])
if not last then return 0 end
local lms, lseq = parse(last)
local fms, fseq = parse(ARGV[1])
if not fms or fms < lms or (fms == lms and fseq <= lseq) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], string.format('%d-%d', fms, fseq + 1))
return 1
";

/// Decides a publish whose reply never came (a timeout, a dropped connection): was it published or not?
///
/// `KEYS[1]`: the stream of the event's first topic; `ARGV[1]`: the publish's nonce, `ARGV[2]`: the floor
/// id it was sent with (its id, if it ran, is greater). Returns that id when an entry with the nonce is
/// there; otherwise sets `herald:cancel:{nonce}` (for ten minutes), so that the publish, should it still
/// reach Redis, refuses to run, and returns nil: then nothing was published. Atomic with the publish
/// script, so the answer is final either way.
pub(super) const SETTLE: &str = r"
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '(' .. ARGV[2], '+')) do
  local fields = entry[2]
  for i = 1, #fields - 1, 2 do
    if fields[i] == 'nonce' and fields[i + 1] == ARGV[1] then return entry[1] end
  end
end
redis.call('SET', 'herald:cancel:' .. ARGV[1], '1', 'PX', 600000)
return false
";

/// Text of a bulk or simple string.
pub(super) fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// An id from a string value; `None` for nil or anything else.
pub(crate) fn id_of(v: &Value) -> Option<EventId> {
    text(v).and_then(|s| s.parse().ok())
}

/// Makes an event from what Redis holds, held to the rules of a publish over HTTP: every topic valid (a
/// duplicate merged), the type valid and not `herald.`-prefixed (an empty type is none). Anything may have
/// written it (the publish script is documented for other programs), and a type with a line break would
/// otherwise forge fields and events in every stream. The data may be anything: the encoder splits it into
/// `data:` lines. `None` when the event is refused.
pub(super) fn checked_event<'a>(
    id: EventId,
    topics: impl IntoIterator<Item = &'a str>,
    kind: Option<&str>,
    data: &str,
) -> Option<Event> {
    // As a publish over HTTP reads them: each valid, duplicates merged, at least one.
    let mut set = TopicSet::new(usize::MAX);
    for topic in topics {
        set.add(topic).ok()?;
    }
    let topics: Box<[Topic]> = set.finish().ok()?.into();
    let kind = validate_type(kind).ok()?;
    Some(Event::new(id, topics, kind.as_deref(), data))
}

/// One `XRANGE` entry as an event, if it is a valid Herald event (see [`checked_event`]).
pub(crate) fn decode_entry(entry: &Value) -> Option<Event> {
    let Value::Array(parts) = entry else { return None };
    let (Some(id), Some(Value::Array(fields))) = (parts.first().and_then(id_of), parts.get(1)) else { return None };
    let (mut topics, mut kind, mut data) = (None, None, None);
    for pair in fields.chunks_exact(2) {
        let field = match &pair[0] {
            Value::BulkString(b) => b.as_slice(),
            Value::SimpleString(s) => s.as_bytes(),
            _ => continue,
        };
        // A field present but not text (invalid UTF-8) refuses the entry.
        match field {
            b"topics" => topics = Some(text(&pair[1])?),
            b"type" => kind = Some(text(&pair[1])?),
            b"data" => data = Some(text(&pair[1])?),
            _ => {}
        }
    }
    checked_event(id, topics?.split(','), kind, data?)
}

/// The pub/sub message the publish script sends.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Message {
    /// The event id.
    pub(super) id: String,
    /// Its topics.
    pub(super) topics: Vec<String>,
    /// Its type, if any.
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    /// Its data.
    pub(super) data: String,
}

/// Why a pub/sub payload is not a message of the publish script.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unreadable {
    /// Not text, so not JSON (RFC 8259).
    #[error("not UTF-8: {0}")]
    NotText(#[from] std::str::Utf8Error),
    /// Not the script's JSON.
    #[error("{0}")]
    NotAMessage(#[from] serde_json::Error),
    /// An id that is not one Herald could have issued.
    #[error("a malformed id")]
    MalformedId,
}

impl Message {
    /// Reads a pub/sub payload: the message and its id.
    ///
    /// # Errors
    /// [`Unreadable`] when it is not a message of the publish script.
    pub(crate) fn read(payload: &[u8]) -> Result<(EventId, Message), Unreadable> {
        // serde_json checks the text of the strings it reads, not of those it skips: check it all first.
        let message: Message = serde_json::from_str(std::str::from_utf8(payload)?)?;
        let id = message.id.parse().map_err(|_| Unreadable::MalformedId)?;
        Ok((id, message))
    }

    /// The event the message carries, if it is a valid Herald event (see [`checked_event`]).
    pub(crate) fn event(&self, id: EventId) -> Option<Event> {
        checked_event(id, self.topics.iter().map(String::as_str), self.kind.as_deref(), &self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn decodes_stream_entries() {
        let entry = |id: &str, fields: &[&str]| {
            Value::Array(vec![bulk(id), Value::Array(fields.iter().map(|f| bulk(f)).collect())])
        };
        let reply = Value::Array(vec![
            entry("5-0", &["topics", "a,b", "type", "t.x", "data", "one"]),
            entry("6-1", &["topics", "a", "data", "two\nlines"]),
            entry("7-0", &["not", "herald"]),
        ]);
        let Value::Array(entries) = reply else { unreachable!() };
        let events: Vec<Event> = entries.iter().filter_map(decode_entry).collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].id, EventId::new(5, 0));
        assert_eq!(&*events[0].topics, &[Topic::from("a"), Topic::from("b")]);
        assert_eq!(events[1].id, EventId::new(6, 1));
        let wire = String::from_utf8_lossy(events[0].chunk.payload_slice()).into_owned();
        assert_eq!(wire, "id: 5-0\nevent: t.x\ndata: one\n\n");
    }

    #[test]
    fn refuses_what_a_publish_over_http_could_not_send() {
        let entry =
            |fields: &[&str]| Value::Array(vec![bulk("5-0"), Value::Array(fields.iter().map(|f| bulk(f)).collect())]);
        let invalid = [
            entry(&["topics", "a", "type", "t\nretry: 1\nid: 9-0\n\ndata: forged", "data", "d"]),
            entry(&["topics", "a", "type", "t\r", "data", "d"]),
            entry(&["topics", "a", "type", "herald.reset", "data", "d"]),
            entry(&["topics", "a", "type", &"t".repeat(65), "data", "d"]),
            entry(&["topics", "a,b c", "data", "d"]),
            entry(&["topics", "a\nid: 9-0", "data", "d"]),
            entry(&["topics", "a,,b", "data", "d"]),
            entry(&["topics", "", "data", "d"]),
            entry(&["topics", "a"]),
            Value::Array(vec![
                bulk("5-0"),
                Value::Array(vec![bulk("topics"), bulk("a"), bulk("data"), Value::BulkString(vec![0xff])]),
            ]),
            Value::Array(vec![
                bulk("not-an-id"),
                Value::Array(vec![bulk("topics"), bulk("a"), bulk("data"), bulk("d")]),
            ]),
        ];
        for entry in &invalid {
            assert!(decode_entry(entry).is_none(), "{entry:?}");
        }
        // Data may hold anything; an empty type is none.
        let fine = decode_entry(&entry(&["topics", "a,b", "type", "", "data", "x\r\nid: 9-0\n\nretry: 1"]));
        let wire = String::from_utf8_lossy(fine.expect("valid").chunk.payload_slice()).into_owned();
        assert_eq!(wire, "id: 5-0\ndata: x\ndata: id: 9-0\ndata: \ndata: retry: 1\n\n");
    }

    /// Found by the `redis_entries` and `redis_message` fuzz targets: a topic named twice in what Redis
    /// holds (`a,b,a`: the documented script can leave such an entry when its second `XADD` fails) made an
    /// event with that topic twice, so a tagged stream was told `topics: a,a`; a publish over HTTP merges
    /// duplicates, and so does an event from Redis now.
    #[test]
    fn duplicate_topics_from_redis_are_merged() {
        let fields = ["topics", "a,b,a", "data", "d"].map(bulk).to_vec();
        let event = decode_entry(&Value::Array(vec![bulk("5-0"), Value::Array(fields)])).expect("valid");
        assert_eq!(&*event.topics, &[Topic::from("a"), Topic::from("b")]);
        let (id, message) = Message::read(br#"{"id":"5-0","topics":["a","a"],"data":"d"}"#).expect("a message");
        let event = message.event(id).expect("valid");
        assert_eq!(&*event.topics, &[Topic::from("a")]);
        let tagged = event.tagged(&[Topic::from("a")]);
        assert_eq!(tagged.payload_slice(), b"id: 5-0\ntopics: a\ndata: d\n\n");
    }

    /// Found by the `redis_message` fuzz target: bytes that are not UTF-8 in a field Herald ignores were
    /// taken (serde skips such a field without checking its text); such a payload is not JSON, and a publish
    /// over HTTP with it is refused.
    #[test]
    fn pub_sub_payloads_must_be_utf8() {
        assert!(Message::read(b"{\"id\":\"5-0\",\"topics\":[\"a\"],\"data\":\"d\",\"x\":\"\x80\"}").is_err());
        assert!(Message::read("{\"id\":\"5-0\",\"topics\":[\"a\"],\"data\":\"d\",\"x\":\"\u{e9}\"}".as_bytes()).is_ok());
    }

    /// The encoder itself never writes a line break inside the `id:` or `event:` line, whatever it is given.
    #[test]
    fn encoder_leaves_out_fields_that_would_break_the_frame() {
        let frame = crate::sse::encode(Some("1-0\nretry: 1"), Some("t\r\n\ndata: forged"), "d");
        assert_eq!(&frame[..], b"data: d\n\n");
    }

    #[test]
    fn decodes_channel_messages() {
        let m: Message = serde_json::from_str(r#"{"data":"d","id":"1-2","topics":["a"],"type":null}"#).unwrap();
        assert_eq!(
            (m.id.as_str(), m.topics.as_slice(), m.kind, m.data.as_str()),
            ("1-2", &["a".to_string()][..], None, "d")
        );
        assert_eq!(stream_key("a/b"), "herald:stream:a/b");
        assert_eq!(channel("a/b"), "herald:channel:a/b");
    }
}
