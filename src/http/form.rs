//! `application/x-www-form-urlencoded` decoding that keeps bytes as bytes.
//!
//! `form_urlencoded::parse` turns a percent-escape that is not UTF-8 (`caf%E9`) into U+FFFD, silently:
//! a publisher's data would be delivered changed. Here names and values are decoded into bytes, and each
//! caller decides what bytes that are not UTF-8 mean for its field (a bad topic, a malformed body). The
//! format is the WHATWG URL standard's: pairs split on `&` (empty ones skipped), the name ends at the
//! first `=`, `+` is a space, `%XX` is a byte and a `%` not followed by two hex digits is itself.

use std::borrow::Cow;

/// The decoded `(name, value)` pairs of `input`, in order, read lazily (a caller that stops early reads
/// no further).
pub(crate) fn pairs(input: &[u8]) -> impl Iterator<Item = (Cow<'_, [u8]>, Cow<'_, [u8]>)> {
    input.split(|&b| b == b'&').filter(|pair| !pair.is_empty()).map(|pair| {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &[][..]),
        };
        (decode(name), decode(value))
    })
}

/// Decodes one name or value: `+` is a space, `%XX` a byte.
pub(crate) fn decode(input: &[u8]) -> Cow<'_, [u8]> {
    if !input.iter().any(|&b| b == b'+' || b == b'%') {
        return Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let Some((&first, tail)) = rest.split_first() {
        rest = tail;
        match first {
            b'+' => out.push(b' '),
            b'%' => match tail {
                [hi, lo, after @ ..] if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                    out.push(hex(*hi) << 4 | hex(*lo));
                    rest = after;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
    }
    Cow::Owned(out)
}

/// The value of one hex digit (checked by the caller).
fn hex(digit: u8) -> u8 {
    char::from(digit).to_digit(16).map_or(0, |d| d as u8)
}

/// A decoded value as text.
///
/// # Errors
/// The bytes, when they are not UTF-8.
pub(crate) fn utf8(bytes: Cow<'_, [u8]>) -> Result<Cow<'_, str>, Vec<u8>> {
    match bytes {
        Cow::Borrowed(b) => std::str::from_utf8(b).map(Cow::Borrowed).map_err(|_| b.to_vec()),
        Cow::Owned(b) => String::from_utf8(b).map(Cow::Owned).map_err(|e| e.into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decoded(input: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs(input.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
    }

    #[test]
    fn bytes_that_are_not_utf8_are_kept() {
        assert_eq!(decoded("data=caf%E9"), [(b"data".to_vec(), b"caf\xe9".to_vec())]);
        assert_eq!(
            decoded("a=%ZZ%4&b&&=c"),
            [(b"a".to_vec(), b"%ZZ%4".to_vec()), (b"b".to_vec(), b"".to_vec()), (b"".to_vec(), b"c".to_vec())]
        );
        assert_eq!(decoded("x=a+b%2Bc%2b%e2%82%AC"), [(b"x".to_vec(), "a b+c+€".as_bytes().to_vec())]);
        assert!(utf8(decode(b"caf%E9")).is_err());
        assert_eq!(utf8(decode(b"caf%C3%A9")).as_deref(), Ok("café"));
    }

    proptest! {
        /// On input whose escapes are UTF-8, the same pairs as `form_urlencoded`.
        #[test]
        fn agrees_with_form_urlencoded_on_text(input in "([a-z=&+%]|%[0-9a-fA-F]{2}|%C3%A9|é){0,24}") {
            let ours: Vec<_> = pairs(input.as_bytes()).collect();
            if ours.iter().all(|(k, v)| std::str::from_utf8(k).is_ok() && std::str::from_utf8(v).is_ok()) {
                let theirs: Vec<_> = form_urlencoded::parse(input.as_bytes()).collect();
                let ours: Vec<_> =
                    ours.into_iter().map(|(k, v)| (utf8(k).unwrap(), utf8(v).unwrap())).collect();
                prop_assert_eq!(ours, theirs);
            }
        }
    }
}
