//! A unified line diff (pure). Common leading and trailing lines are
//! trimmed first; the middle is diffed by longest common subsequence
//! when it is small enough, else shown as one replaced block. A change
//! made from the page touches a few lines, so the LCS table stays tiny;
//! the bound keeps a wholesale rewrite from costing the Pi much memory.

/// Largest LCS table (cells) before the middle is shown as one block.
const MAX_CELLS: usize = 4_000_000;

/// One line of an edit script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Same(usize, usize),
    Del(usize),
    Add(usize),
}

fn script(a: &[&str], b: &[&str]) -> Vec<Op> {
    let pre = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..]
        .iter()
        .rev()
        .zip(b[pre..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (am, bm) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    let mut ops: Vec<Op> = (0..pre).map(|i| Op::Same(i, i)).collect();
    let (n, m) = (am.len(), bm.len());
    if n.saturating_mul(m) > MAX_CELLS {
        ops.extend((0..n).map(|i| Op::Del(pre + i)));
        ops.extend((0..m).map(|j| Op::Add(pre + j)));
    } else {
        // lcs[i][j]: LCS length of am[i..], bm[j..].
        let w = m + 1;
        let mut lcs = vec![0u32; (n + 1) * w];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i * w + j] = if am[i] == bm[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && am[i] == bm[j] {
                ops.push(Op::Same(pre + i, pre + j));
                i += 1;
                j += 1;
            } else if i < n && (j == m || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) {
                ops.push(Op::Del(pre + i));
                i += 1;
            } else {
                ops.push(Op::Add(pre + j));
                j += 1;
            }
        }
    }
    let (a0, b0) = (a.len() - suf, b.len() - suf);
    ops.extend((0..suf).map(|k| Op::Same(a0 + k, b0 + k)));
    ops
}

/// A unified diff of `old` → `new` with `context` lines around each
/// change (`---`/`+++` headers named `old_name`/`new_name`). Empty when
/// the texts are equal.
pub fn unified(old: &str, new: &str, old_name: &str, new_name: &str, context: usize) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let ops = script(&a, &b);
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| !matches!(o, Op::Same(..)))
        .map(|(k, _)| k)
        .collect();
    if changed.is_empty() {
        return String::new();
    }
    // Group changes whose context overlaps into hunks of op indexes.
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for &k in &changed {
        let lo = k.saturating_sub(context);
        let hi = (k + context + 1).min(ops.len());
        match hunks.last_mut() {
            Some(h) if lo <= h.1 => h.1 = hi,
            _ => hunks.push((lo, hi)),
        }
    }
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    for (lo, hi) in hunks {
        let slice = &ops[lo..hi];
        // Start lines: the first old/new line the hunk touches (or would).
        let a_start = slice
            .iter()
            .find_map(|o| match o {
                Op::Same(i, _) | Op::Del(i) => Some(*i),
                Op::Add(_) => None,
            })
            .unwrap_or_else(|| old_before(&ops[..lo]));
        let b_start = slice
            .iter()
            .find_map(|o| match o {
                Op::Same(_, j) | Op::Add(j) => Some(*j),
                Op::Del(_) => None,
            })
            .unwrap_or_else(|| new_before(&ops[..lo]));
        let a_len = slice.iter().filter(|o| !matches!(o, Op::Add(_))).count();
        let b_len = slice.iter().filter(|o| !matches!(o, Op::Del(_))).count();
        // Unified diffs number an empty range by the line before it.
        let a_no = if a_len == 0 { a_start } else { a_start + 1 };
        let b_no = if b_len == 0 { b_start } else { b_start + 1 };
        out += &format!("@@ -{a_no},{a_len} +{b_no},{b_len} @@\n");
        for o in slice {
            match o {
                Op::Same(i, _) => {
                    out.push(' ');
                    out += a[*i];
                }
                Op::Del(i) => {
                    out.push('-');
                    out += a[*i];
                }
                Op::Add(j) => {
                    out.push('+');
                    out += b[*j];
                }
            }
            out.push('\n');
        }
    }
    out
}

fn old_before(ops: &[Op]) -> usize {
    ops.iter().filter(|o| !matches!(o, Op::Add(_))).count()
}

fn new_before(ops: &[Op]) -> usize {
    ops.iter().filter(|o| !matches!(o, Op::Del(_))).count()
}

/// Lines added and removed.
pub fn stats(old: &str, new: &str) -> (usize, usize) {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let ops = script(&a, &b);
    let add = ops.iter().filter(|o| matches!(o, Op::Add(_))).count();
    let del = ops.iter().filter(|o| matches!(o, Op::Del(_))).count();
    (add, del)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_changed_line() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\n";
        assert_eq!(
            unified(old, new, "v1", "v2", 2),
            "--- v1\n+++ v2\n@@ -3,5 +3,5 @@\n c\n d\n-e\n+E\n f\n g\n"
        );
        assert_eq!(unified(old, old, "v1", "v2", 3), "");
        assert_eq!(stats(old, new), (1, 1));
    }

    #[test]
    fn insertion_at_start_and_far_apart_changes() {
        let old = (1..=20).map(|i| format!("l{i}\n")).collect::<String>();
        let new = format!("l0\n{}", old.replace("l15\n", ""));
        let d = unified(&old, &new, "a", "b", 1);
        assert_eq!(
            d,
            "--- a\n+++ b\n@@ -1,1 +1,2 @@\n+l0\n l1\n@@ -14,3 +15,2 @@\n l14\n-l15\n l16\n"
        );
    }

    /// Applying the diff's `-`/`+`/` ` lines in order rebuilds both texts.
    fn rebuild(d: &str) -> (Vec<String>, Vec<String>) {
        let mut a = Vec::new();
        let mut b = Vec::new();
        for l in d.lines().skip(2).filter(|l| !l.starts_with("@@")) {
            let (tag, rest) = l.split_at(1);
            match tag {
                " " => {
                    a.push(rest.to_string());
                    b.push(rest.to_string());
                }
                "-" => a.push(rest.to_string()),
                "+" => b.push(rest.to_string()),
                _ => panic!("{l}"),
            }
        }
        (a, b)
    }

    proptest! {
        #[test]
        fn whole_context_diff_rebuilds_both_texts(
            a in proptest::collection::vec("[abc]", 0..30),
            b in proptest::collection::vec("[abc]", 0..30),
        ) {
            let old: String = a.iter().map(|l| format!("{l}\n")).collect();
            let new: String = b.iter().map(|l| format!("{l}\n")).collect();
            let d = unified(&old, &new, "a", "b", 1000);
            if a == b {
                prop_assert_eq!(d, "");
            } else {
                let (ra, rb) = rebuild(&d);
                prop_assert_eq!(&ra, &a);
                prop_assert_eq!(&rb, &b);
                // LCS: no more changes than a plain replacement.
                let (add, del) = stats(&old, &new);
                prop_assert!(add <= b.len() && del <= a.len());
                prop_assert_eq!(a.len() - del, b.len() - add);
            }
        }
    }
}
