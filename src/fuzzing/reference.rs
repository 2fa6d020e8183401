//! Slow, obvious models of the contract (API.md), written apart from the parsers they check: what a topic,
//! a type and an id are, how a form body decodes, and which topics a request names.

/// Whether `topic` is a topic per API.md: 1 to 256 bytes of printable ASCII other than space `,` `*` `?` `#`.
pub fn is_topic(topic: &str) -> bool {
    (1..=256).contains(&topic.len()) && topic.chars().all(|c| ('!'..='~').contains(&c) && !",*?#".contains(c))
}

/// Whether `kind` is a type a publisher may send: 1 to 64 bytes of `A-Z a-z 0-9 . _ : -`, not `herald.…`.
pub fn is_publishable_type(kind: &str) -> bool {
    (1..=64).contains(&kind.len())
        && kind.chars().all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c))
        && !kind.starts_with("herald.")
}

/// The id `text` names, if it is exactly one Herald could have written: `<ms>-<seq>`, each a decimal
/// `u64` without sign or leading zero (so that the id reads back as the same text).
pub fn issued_id(text: &str) -> Option<(u64, u64)> {
    fn part(p: &str) -> Option<u64> {
        let canonical = p == "0" || (!p.is_empty() && !p.starts_with('0') && p.chars().all(|c| c.is_ascii_digit()));
        canonical.then(|| p.parse().ok()).flatten()
    }
    let mut parts = text.split('-');
    let (ms, seq) = (parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((part(ms)?, part(seq)?))
}

/// Why a request's topics are refused, in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicsRefused {
    /// No topic at all.
    None,
    /// A bad topic (before any topic too many).
    Bad,
    /// A distinct topic past the maximum (before any bad topic).
    TooMany,
}

/// Distinct topics in first-seen order, read one at a time; reading stops at the first refusal.
#[derive(Debug)]
pub struct Topics {
    names: Vec<String>,
    max: usize,
}

impl Topics {
    /// No topic yet, at most `max`.
    pub fn new(max: usize) -> Self {
        Topics { names: Vec::new(), max }
    }

    /// Adds one topic (bytes, as decoded).
    ///
    /// # Errors
    /// Why it is refused.
    pub fn add(&mut self, topic: &[u8]) -> Result<(), TopicsRefused> {
        let topic = std::str::from_utf8(topic).ok().filter(|t| is_topic(t)).ok_or(TopicsRefused::Bad)?;
        if self.names.iter().any(|n| n == topic) {
            return Ok(());
        }
        if self.names.len() == self.max {
            return Err(TopicsRefused::TooMany);
        }
        self.names.push(topic.to_owned());
        Ok(())
    }

    /// The topics.
    ///
    /// # Errors
    /// [`TopicsRefused::None`] when there is none.
    pub fn finish(self) -> Result<Vec<String>, TopicsRefused> {
        if self.names.is_empty() {
            Err(TopicsRefused::None)
        } else {
            Ok(self.names)
        }
    }
}

/// The `(name, value)` pairs of an `application/x-www-form-urlencoded` body as bytes, by the WHATWG URL
/// standard: split on `&`, skip empty pairs, the name ends at the first `=`, `+` is a space, `%XX` a byte.
pub fn form_pairs(body: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    fn unescape(mut s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let hex = |b: u8| char::from(b).to_digit(16);
        while let Some((&b, rest)) = s.split_first() {
            match (b, rest) {
                (b'%', [h, l, tail @ ..]) if hex(*h).is_some() && hex(*l).is_some() => {
                    out.push((hex(*h).unwrap_or(0) * 16 + hex(*l).unwrap_or(0)) as u8);
                    s = tail;
                    continue;
                }
                (b'+', _) => out.push(b' '),
                _ => out.push(b),
            }
            s = rest;
        }
        out
    }
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let at = pair.iter().position(|&b| b == b'=').unwrap_or(pair.len());
            (unescape(&pair[..at]), unescape(pair.get(at + 1..).unwrap_or_default()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models() {
        assert!(is_topic("https://example.com/books/1") && !is_topic("a b") && !is_topic(&"x".repeat(257)));
        assert!(is_publishable_type("doc.updated") && !is_publishable_type("herald.reset"));
        assert_eq!(issued_id("0-0"), Some((0, 0)));
        assert_eq!(issued_id("18446744073709551615-1"), Some((u64::MAX, 1)));
        for bad in ["01-1", "1-01", "1-", "-1", "1-2-3", "+1-2", "18446744073709551616-0", " 1-2"] {
            assert_eq!(issued_id(bad), None, "{bad:?}");
        }
        assert_eq!(
            form_pairs(b"a=%41+b&&c&=d%4"),
            [(b"a".to_vec(), b"A b".to_vec()), (b"c".to_vec(), vec![]), (vec![], b"d%4".to_vec())]
        );
    }
}
