//! Glob patterns over ids and keys: `*` matches any run of characters
//! (including `/`), `?` exactly one; everything else matches itself.
//! Used by linkage rules (`key`, `zone`) and the command allow-list.

/// True when `text` matches `pattern`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with backtracking to the last `*` (linear in practice).
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// True when the pattern has wildcards.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert!(glob_match("fire-panel-a/*", "fire-panel-a/zone-3"));
        assert!(glob_match("*", ""));
        assert!(glob_match("villa-?", "villa-1"));
        assert!(!glob_match("villa-?", "villa-12"));
        assert!(glob_match("*/comm", "fire-panel-a/comm"));
        assert!(!glob_match("fire-*", "hvac-1/fan"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    proptest! {
        #[test]
        fn literal_matches_itself(s in "[a-z0-9/-]{0,20}") {
            prop_assert!(glob_match(&s, &s));
            prop_assert!(glob_match("*", &s));
        }

        #[test]
        fn prefix_star(a in "[a-z]{0,8}", b in "[a-z/]{0,8}") {
            let pattern = format!("{a}*");
            let text = format!("{a}{b}");
            prop_assert!(glob_match(&pattern, &text));
        }
    }
}
