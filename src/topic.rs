//! Topics and event types: validation, and parsing of the `topics` query parameter.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use crate::error::Error;

/// A validated topic name, shared cheaply between the hub, histories and events.
pub type Topic = Arc<str>;

/// Longest topic, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;
/// Longest event type, in bytes.
pub const MAX_TYPE_LEN: usize = 64;
/// Prefix of the event types that Herald itself sends (`herald.reset`); refused from publishers.
pub const RESERVED_TYPE_PREFIX: &str = "herald.";

/// Checks one topic: 1 to 256 bytes of printable ASCII other than space, `,` `*` `?` `#`.
///
/// # Errors
/// [`Error::BadTopic`] naming the offending topic (shortened when long).
pub fn validate_topic(topic: &str) -> Result<(), Error> {
    let ok = !topic.is_empty()
        && topic.len() <= MAX_TOPIC_LEN
        && topic.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b'*' | b'?' | b'#'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadTopic(shorten(topic)))
    }
}

/// Distinct, valid topics in first-seen order, at most `max` of them.
///
/// Every parse of client input goes through it, so that a request naming many topics costs time in
/// proportion to its length, and is refused as soon as it names one distinct topic too many: the rest of
/// the request is not even looked at.
#[derive(Debug)]
pub struct TopicSet {
    topics: Vec<Topic>,
    seen: HashSet<Topic>,
    max: usize,
}

impl TopicSet {
    /// An empty set that holds at most `max` distinct topics.
    pub fn new(max: usize) -> Self {
        TopicSet { topics: Vec::new(), seen: HashSet::new(), max }
    }

    /// Adds one topic (commas are not separators here: a comma is a bad topic); a duplicate is merged.
    ///
    /// # Errors
    /// [`Error::BadTopic`] for an invalid topic, [`Error::TooManyTopics`] for the first distinct topic
    /// past the maximum.
    pub fn add(&mut self, topic: &str) -> Result<(), Error> {
        validate_topic(topic)?;
        if self.seen.contains(topic) {
            return Ok(());
        }
        if self.topics.len() >= self.max {
            return Err(Error::TooManyTopics { count: self.topics.len() + 1, max: self.max });
        }
        let topic = Topic::from(topic);
        self.seen.insert(topic.clone());
        self.topics.push(topic);
        Ok(())
    }

    /// [`TopicSet::add`] for a topic decoded from a form or a query, which may not be UTF-8 (then it is a
    /// bad topic, like any other byte that is not printable ASCII).
    ///
    /// # Errors
    /// As [`TopicSet::add`].
    pub fn add_bytes(&mut self, topic: &[u8]) -> Result<(), Error> {
        match std::str::from_utf8(topic) {
            Ok(topic) => self.add(topic),
            Err(_) => Err(Error::BadTopic(shorten(&String::from_utf8_lossy(topic)))),
        }
    }

    /// [`TopicSet::add_list`] for a list decoded from a query, which may not be UTF-8.
    ///
    /// # Errors
    /// As [`TopicSet::add_bytes`].
    pub fn add_list_bytes(&mut self, list: &[u8]) -> Result<(), Error> {
        list.split(|&b| b == b',').try_for_each(|part| self.add_bytes(part))
    }

    /// Adds each topic of a comma-separated list, stopping at the first error.
    ///
    /// # Errors
    /// As [`TopicSet::add`]; an empty entry (`a,,b`, a trailing comma) is a bad topic.
    pub fn add_list(&mut self, list: &str) -> Result<(), Error> {
        list.split(',').try_for_each(|part| self.add(part))
    }

    /// The topics, in first-seen order.
    ///
    /// # Errors
    /// [`Error::NoTopic`] when there is none.
    pub fn finish(self) -> Result<Vec<Topic>, Error> {
        if self.topics.is_empty() {
            return Err(Error::NoTopic);
        }
        Ok(self.topics)
    }
}

/// Collects topics from several values (each a comma-separated list), validates each, merges
/// duplicates (keeping first-seen order) and enforces `max`, reading no further than the first error.
///
/// # Errors
/// [`Error::NoTopic`] when there is none, [`Error::BadTopic`] for an invalid or empty entry,
/// [`Error::TooManyTopics`] as soon as more than `max` distinct topics were given.
pub fn parse_topic_lists<'a, I>(values: I, max: usize) -> Result<Vec<Topic>, Error>
where
    I: IntoIterator<Item = Cow<'a, str>>,
{
    let mut topics = TopicSet::new(max);
    for value in values {
        topics.add_list(&value)?;
    }
    topics.finish()
}

/// Validates a list of single topics (the publish body's `topic`/`topics`), merging duplicates.
///
/// # Errors
/// As [`parse_topic_lists`], except that commas are not separators here (a comma is a bad topic).
pub fn collect_topics<I, S>(values: I, max: usize) -> Result<Vec<Topic>, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut topics = TopicSet::new(max);
    for value in values {
        topics.add(value.as_ref())?;
    }
    topics.finish()
}

/// Validates an event type; an empty type is the same as none.
///
/// # Errors
/// [`Error::BadType`] when it is too long, has a character outside `A-Z a-z 0-9 . _ : -`, or starts with
/// `herald.`.
pub fn validate_type(kind: Option<&str>) -> Result<Option<String>, Error> {
    let Some(kind) = kind.filter(|k| !k.is_empty()) else {
        return Ok(None);
    };
    let ok = kind.len() <= MAX_TYPE_LEN
        && kind.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        && !kind.starts_with(RESERVED_TYPE_PREFIX);
    if ok {
        Ok(Some(kind.to_owned()))
    } else {
        Err(Error::BadType(shorten(kind)))
    }
}

/// Shortens user input for error messages.
fn shorten(s: &str) -> String {
    const KEEP: usize = 80;
    if s.len() <= KEEP {
        return s.to_owned();
    }
    let mut end = KEEP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(values: &[&str], max: usize) -> Result<Vec<String>, Error> {
        parse_topic_lists(values.iter().map(|v| Cow::Borrowed(*v)), max)
            .map(|ts| ts.iter().map(|t| t.to_string()).collect())
    }

    #[test]
    fn accepts_urls_and_paths() {
        assert_eq!(
            parse(&["https://example.com/books/1,doc/42"], 64).unwrap(),
            ["https://example.com/books/1", "doc/42"]
        );
    }

    #[test]
    fn merges_duplicates_before_counting() {
        assert_eq!(parse(&["a,b", "a", "c"], 3).unwrap(), ["a", "b", "c"]);
        assert!(matches!(parse(&["a,b,c,d"], 3), Err(Error::TooManyTopics { count: 4, max: 3 })));
        assert_eq!(parse(&["b,a,b,a,c,a"], 3).unwrap(), ["b", "a", "c"]);
    }

    #[test]
    fn stops_at_the_first_topic_too_many() {
        // Nothing after the first distinct topic past the maximum is looked at: not the bad topic in the
        // same list...
        assert!(matches!(parse(&["a,b,c,d,not valid"], 3), Err(Error::TooManyTopics { count: 4, max: 3 })));
        assert!(matches!(
            collect_topics(["a", "b", "a", "c", "d", "not valid"], 3),
            Err(Error::TooManyTopics { count: 4, max: 3 })
        ));
        // ...nor the values that follow it.
        let mut read = 0;
        let values = (0..100_000).map(|i| {
            read += 1;
            Cow::Owned(format!("t{i}"))
        });
        assert!(matches!(parse_topic_lists(values, 64), Err(Error::TooManyTopics { count: 65, max: 64 })));
        assert_eq!(read, 65);
    }

    #[test]
    fn rejects_bad_topics() {
        for bad in ["", "a b", "a*", "a?", "a#", "é", "a,,b", "a,", "\u{7f}"] {
            assert!(matches!(parse(&[bad], 64), Err(Error::BadTopic(_))), "{bad:?}");
        }
        assert!(parse(&[&"x".repeat(257)], 64).is_err());
        assert!(parse(&[&"x".repeat(256)], 64).is_ok());
        assert!(matches!(parse(&[], 64), Err(Error::NoTopic)));
    }

    #[test]
    fn types() {
        assert_eq!(validate_type(Some("")).unwrap(), None);
        assert_eq!(validate_type(Some("doc.updated:v1-x_y")).unwrap().as_deref(), Some("doc.updated:v1-x_y"));
        for bad in ["herald.reset", "a b", "a\n", &"t".repeat(65)] {
            assert!(validate_type(Some(bad)).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn parsed_topics_are_valid_and_distinct(parts in proptest::collection::vec("[!-~]{0,8}", 0..10)) {
            let joined = parts.join(",");
            if let Ok(topics) = parse(&[&joined], 64) {
                for t in &topics {
                    prop_assert!(validate_topic(t).is_ok());
                    prop_assert_eq!(topics.iter().filter(|u| *u == t).count(), 1);
                }
            }
        }
    }
}
