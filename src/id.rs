//! Event ids: `<ms>-<seq>`, the same shape as Redis Stream ids.
//!
//! Ids are assigned by the backend when an event is published and rise strictly across all topics of a
//! deployment, so one id orders every event a connection can see: topics merge by id, duplicates are
//! dropped by "not greater than the last id sent", and one `Last-Event-ID` resumes any set of topics.

use std::fmt;
use std::str::FromStr;

/// The longest textual id Herald accepts (`u64::MAX-u64::MAX` is 41 bytes; API.md allows 64).
pub const MAX_ID_LEN: usize = 64;

/// A deployment-wide event id: milliseconds since the Unix epoch, then a sequence within that millisecond.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// Milliseconds since the Unix epoch when the id was made (never lower than the previous id's).
    pub ms: u64,
    /// Sequence number within `ms`.
    pub seq: u64,
}

impl EventId {
    /// The smallest id; every issued id is greater.
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };

    /// Makes an id from its two parts.
    pub const fn new(ms: u64, seq: u64) -> Self {
        EventId { ms, seq }
    }

    /// The id that follows `self` when the clock reads `now_ms`: a new millisecond if the clock has moved
    /// past `self.ms`, else the next sequence number in the same millisecond (a clock that steps back
    /// never makes ids go back).
    pub fn next(self, now_ms: u64) -> Self {
        if now_ms > self.ms {
            EventId { ms: now_ms, seq: 0 }
        } else {
            EventId { ms: self.ms, seq: self.seq + 1 }
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a string is not an [`EventId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed event id")]
pub struct MalformedId;

impl FromStr for EventId {
    type Err = MalformedId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_ID_LEN {
            return Err(MalformedId);
        }
        let (ms, seq) = s.split_once('-').ok_or(MalformedId)?;
        Ok(EventId { ms: parse_digits(ms)?, seq: parse_digits(seq)? })
    }
}

/// Parses a number as [`EventId`]'s `Display` writes it: ASCII digits, no leading zero but in `0` itself
/// (`u64::from_str` alone would also take a leading `+` and leading zeros), so that an accepted id is one
/// Herald could have written and reads back as the same text.
fn parse_digits(s: &str) -> Result<u64, MalformedId> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return Err(MalformedId);
    }
    s.parse().map_err(|_| MalformedId)
}

/// What a client sent as its last event id.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LastEventId {
    /// A well-formed id (which may still be one this deployment never issued).
    Id(EventId),
    /// Something that is not an id Herald could have issued.
    Malformed,
}

impl LastEventId {
    /// Reads a `Last-Event-ID` value; surrounding ASCII whitespace is ignored.
    pub fn parse(s: &str) -> Self {
        match s.trim_ascii().parse() {
            Ok(id) => LastEventId::Id(id),
            Err(MalformedId) => LastEventId::Malformed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_orders() {
        let a: EventId = "1700000000000-0".parse().unwrap();
        let b: EventId = "1700000000000-1".parse().unwrap();
        let c: EventId = "1700000000001-0".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(a.to_string(), "1700000000000-0");
    }

    #[test]
    fn rejects_malformed() {
        for s in ["", "1", "-1", "1-", "+1-2", "1-+2", "1-2-3", "a-b", " 1-2x", "99999999999999999999-0"] {
            assert!(s.parse::<EventId>().is_err(), "{s:?}");
        }
        assert_eq!(LastEventId::parse("garbage"), LastEventId::Malformed);
        assert_eq!(LastEventId::parse(" 5-6 "), LastEventId::Id(EventId::new(5, 6)));
    }

    /// Found by the `last_event_id` fuzz target and its round-trip check: an id with leading zeros (`01-2`) was taken as the id it
    /// spells (`1-2`), so a client could resume from an id Herald never issued without being told (API.md:
    /// such an id opens the stream with `herald.reset`), and it did not read back as the text sent; and
    /// Unicode whitespace around a value (`0-0\u{b}`, `\u{a0}1-2`) was ignored, where only ASCII
    /// whitespace is.
    #[test]
    fn only_ids_written_as_herald_writes_them() {
        for s in ["01-2", "1-02", "00-0", "0-00", "0-0\u{b}", "\u{a0}1-2", "1-2\u{3000}"] {
            assert_eq!(LastEventId::parse(s), LastEventId::Malformed, "{s:?}");
        }
        for s in ["01-2", "1-02", "00-0"] {
            assert!(s.parse::<EventId>().is_err(), "{s:?}");
        }
        assert_eq!(LastEventId::parse("\t0-0 \r\n"), LastEventId::Id(EventId::ZERO));
        assert_eq!(LastEventId::parse("10-20"), LastEventId::Id(EventId::new(10, 20)));
    }

    #[test]
    fn next_never_goes_back() {
        let a = EventId::new(100, 4);
        assert_eq!(a.next(100), EventId::new(100, 5));
        assert_eq!(a.next(50), EventId::new(100, 5));
        assert_eq!(a.next(101), EventId::new(101, 0));
    }
}
