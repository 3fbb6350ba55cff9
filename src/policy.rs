//! Export policy: which keys may leave the HSM. A key leaves only if the token marks it
//! `CKA_EXTRACTABLE` and its label matches one of `policy.exportable`.

/// Glob match with `*` (any run, including empty) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
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
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether `label` matches any of `patterns`.
pub fn any_match(patterns: &[String], label: &str) -> bool {
    patterns.iter().any(|p| glob_match(p, label))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "demo-aes-256"));
        assert!(glob_match("demo-aes-*", "demo-aes-256"));
        assert!(!glob_match("demo-aes-*", "demo-rsa-3072"));
        assert!(glob_match("demo-?sa-*", "demo-rsa-3072"));
        assert!(glob_match("*-256", "demo-aes-256"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(!glob_match("demo", "demo-aes"));
        assert!(!glob_match("", "x"));
        assert!(any_match(&["x".into(), "demo-*".into()], "demo-1"));
        assert!(!any_match(&[], "demo-1"));
    }
}
