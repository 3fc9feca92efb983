//! Redis's glob patterns for SCAN MATCH and KEYS: `*` any run of bytes,
//! `?` any one byte, `[abc]`, `[^abc]`, `[a-z]` a class, `\x` the byte `x`.
//! Works on bytes; iterative, so a hostile pattern cannot overflow a stack.

/// Whether `text` matches `pattern`.
pub fn matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern position after it,
    // text position it matched up to).
    let mut star: Option<(usize, usize)> = None;
    while let Some(&c) = text.get(t) {
        if let Some((width, ok)) = step(pattern, p, c) {
            if ok {
                p += width;
                t += 1;
                continue;
            }
        } else if pattern.get(p) == Some(&b'*') {
            star = Some((p + 1, t));
            p += 1;
            continue;
        }
        match star {
            Some((sp, st)) => {
                star = Some((sp, st + 1));
                p = sp;
                t = st + 1;
            }
            None => return false,
        }
    }
    pattern
        .get(p..)
        .unwrap_or_default()
        .iter()
        .all(|&c| c == b'*')
}

/// Matches one pattern element at `p` against byte `c`: its width and
/// whether it matched; None at the end of the pattern or at a `*`.
fn step(pattern: &[u8], p: usize, c: u8) -> Option<(usize, bool)> {
    match *pattern.get(p)? {
        b'*' => None,
        b'?' => Some((1, true)),
        b'\\' => match pattern.get(p + 1) {
            Some(&e) => Some((2, e == c)),
            None => Some((1, c == b'\\')),
        },
        b'[' => Some(class(pattern, p, c)),
        lit => Some((1, lit == c)),
    }
}

/// A `[...]` class at `p`: its width and whether `c` is in it. An unclosed
/// class runs to the end of the pattern.
fn class(pattern: &[u8], p: usize, c: u8) -> (usize, bool) {
    let mut i = p + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    while let Some(&b) = pattern.get(i) {
        if b == b']' {
            return (i + 1 - p, hit != negate);
        }
        if b == b'\\' {
            if let Some(&e) = pattern.get(i + 1) {
                hit |= e == c;
                i += 2;
                continue;
            }
        }
        if pattern.get(i + 1) == Some(&b'-') {
            if let Some(&hi) = pattern.get(i + 2).filter(|&&h| h != b']') {
                let (lo, hi) = if b <= hi { (b, hi) } else { (hi, b) };
                hit |= (lo..=hi).contains(&c);
                i += 3;
                continue;
            }
        }
        hit |= b == c;
        i += 1;
    }
    (pattern.len() - p, hit != negate)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs_match_as_in_redis() {
        let yes = [
            ("*", ""),
            ("*", "abc"),
            ("h?llo", "hello"),
            ("h*llo", "heeeello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("user:*:name", "user:42:name"),
            ("a\\*b", "a*b"),
            ("a\\", "a\\"),
            ("*a*b*c*", "xxaxxbxxcxx"),
        ];
        let no = [
            ("h?llo", "hllo"),
            ("h[ae]llo", "hillo"),
            ("h[^e]llo", "hello"),
            ("user:*:name", "user:42:age"),
            ("a\\*b", "axb"),
            ("a\\", "ab"),
            ("abc", "abcd"),
        ];
        for (p, t) in yes {
            assert!(matches(p.as_bytes(), t.as_bytes()), "{p} ~ {t}");
        }
        for (p, t) in no {
            assert!(!matches(p.as_bytes(), t.as_bytes()), "{p} !~ {t}");
        }
    }

    #[test]
    fn a_hostile_pattern_takes_linear_steps_per_star() {
        let pattern = "*a".repeat(1000) + "b";
        let text = "a".repeat(5000);
        assert!(!matches(pattern.as_bytes(), text.as_bytes()));
    }
}
