//! Topics and event types: validation, and parsing of the `topics` query parameter.

use std::borrow::Cow;
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

/// Collects topics from several values (each a comma-separated list), validates each, merges
/// duplicates (keeping first-seen order) and enforces `max`.
///
/// # Errors
/// [`Error::NoTopic`] when there is none, [`Error::BadTopic`] for an invalid or empty entry,
/// [`Error::TooManyTopics`] when more than `max` distinct topics remain.
pub fn parse_topic_lists<'a, I>(values: I, max: usize) -> Result<Vec<Topic>, Error>
where
    I: IntoIterator<Item = Cow<'a, str>>,
{
    let mut topics: Vec<Topic> = Vec::new();
    let mut seen_any = false;
    for value in values {
        seen_any = true;
        for part in value.split(',') {
            validate_topic(part)?;
            if !topics.iter().any(|t| &**t == part) {
                topics.push(Arc::from(part));
            }
        }
    }
    check_count(topics, seen_any, max)
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
    let mut topics: Vec<Topic> = Vec::new();
    for value in values {
        let value = value.as_ref();
        validate_topic(value)?;
        if !topics.iter().any(|t| &**t == value) {
            topics.push(Arc::from(value));
        }
    }
    let any = !topics.is_empty();
    check_count(topics, any, max)
}

fn check_count(topics: Vec<Topic>, seen_any: bool, max: usize) -> Result<Vec<Topic>, Error> {
    if !seen_any || topics.is_empty() {
        return Err(Error::NoTopic);
    }
    if topics.len() > max {
        return Err(Error::TooManyTopics { count: topics.len(), max });
    }
    Ok(topics)
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
