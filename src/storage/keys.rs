//! The only place that builds storage keys: parts joined by 0xFF (which never occurs in
//! UTF-8 text), integers big-endian so byte order is numeric order.

/// Separator between key parts.
pub const SEP: u8 = 0xFF;

/// Builds a key part by part.
#[derive(Default, Clone, Debug)]
pub struct KeyBuilder(Vec<u8>);

impl KeyBuilder {
    /// An empty key.
    pub fn new() -> Self {
        KeyBuilder(Vec::with_capacity(64))
    }

    /// Appends a string part followed by the separator.
    pub fn str(mut self, part: &str) -> Self {
        self.0.extend_from_slice(part.as_bytes());
        self.0.push(SEP);
        self
    }

    /// Appends the start of a string part, without the separator: a prefix matching every
    /// part that begins with `start` (e.g. every `algorithm:id` of one algorithm).
    pub fn str_start(mut self, start: &str) -> Self {
        self.0.extend_from_slice(start.as_bytes());
        self
    }

    /// Appends a big-endian u64 (fixed width, no separator needed).
    pub fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    /// The finished key.
    pub fn build(self) -> Vec<u8> {
        self.0
    }
}

/// Shorthand: a key of string parts, each followed by the separator.
pub fn strs(parts: &[&str]) -> Vec<u8> {
    parts
        .iter()
        .fold(KeyBuilder::new(), |k, p| k.str(p))
        .build()
}

/// Splits a key into its string parts (the trailing separator is required after each).
pub fn split_strs(key: &[u8]) -> Vec<&str> {
    key.split(|b| *b == SEP)
        .filter(|p| !p.is_empty())
        .filter_map(|p| std::str::from_utf8(p).ok())
        .collect()
}

/// Reads a big-endian u64 at the end of a key.
pub fn trailing_u64(key: &[u8]) -> Option<u64> {
    let start = key.len().checked_sub(8)?;
    Some(u64::from_be_bytes(key[start..].try_into().ok()?))
}

/// Reads a big-endian u64 from the first 8 bytes of a value or key.
pub fn leading_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_sort_numerically() {
        let a = KeyBuilder::new().str("room").u64(9).build();
        let b = KeyBuilder::new().str("room").u64(10).build();
        assert!(a < b);
        assert_eq!(trailing_u64(&b), Some(10));
    }

    #[test]
    fn string_parts_round_trip_and_prefixes_do_not_collide() {
        let k = strs(&["!a:x", "m.room.member", "@u:x"]);
        assert_eq!(split_strs(&k), vec!["!a:x", "m.room.member", "@u:x"]);
        // "!a" must not be a prefix-match of "!ab".
        assert!(!strs(&["!ab"]).starts_with(&strs(&["!a"])));
        let start = KeyBuilder::new().str("@u:x").str_start("alg:").build();
        assert!(strs(&["@u:x", "alg:1"]).starts_with(&start));
        assert!(!strs(&["@u:x", "alg2:1"]).starts_with(&start));
    }
}
