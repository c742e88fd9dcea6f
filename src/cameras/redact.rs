//! Redaction of camera URLs and of texts that may quote them (peer error
//! messages): user info and query values never reach a log, event or error.

/// `url` without credentials and with every query value replaced by `***`.
/// Works on anything URL-like, parseable or not.
pub fn redact_url(url: &str) -> String {
    // Scheme, then the user info: it ends at the last '@' that is followed
    // by a host (up to the next '/', '?', '#' or the end). A password
    // typed with '/' or '@' in it (not percent-encoded) is still user
    // info; an '@' in a path followed by host-like text is taken as one
    // too — hiding too much, never too little.
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let userinfo_end = rest.match_indices('@').map(|(i, _)| i).rfind(|&i| {
        let after = &rest[i + 1..];
        let host = &after[..after.find(['/', '?', '#']).unwrap_or(after.len())];
        !host.is_empty()
            && host.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || matches!(c, '.' | '-' | '_' | ':' | '[' | ']' | '%' | '~')
            })
    });
    // An '@' after a '?' or '#' may be a query value's or a fragment's:
    // the user info and the query can no longer be told apart, so all of
    // it is hidden.
    if userinfo_end.is_some_and(|i| rest[..i].contains(['?', '#'])) {
        return format!("{scheme}***");
    }
    let after_user = userinfo_end.map_or(rest, |i| &rest[i + 1..]);
    let auth_end = after_user.find(['/', '?', '#']).unwrap_or(after_user.len());
    let (host, tail) = after_user.split_at(auth_end);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    if userinfo_end.is_some() {
        out.push_str("***@");
    }
    out.push_str(host);
    // A fragment can hold anything (a query value typed with '#'): hidden.
    let (tail, fragment) = match tail.find('#') {
        Some(f) if tail.len() > f + 1 => (&tail[..f], "#***"),
        Some(f) => (&tail[..f], "#"),
        None => (tail, ""),
    };
    match tail.find('?') {
        None => out.push_str(tail),
        Some(q) => {
            out.push_str(&tail[..q + 1]);
            let parts: Vec<String> = tail[q + 1..]
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) => format!("{k}=***"),
                    None => kv.to_string(),
                })
                .collect();
            out.push_str(&parts.join("&"));
        }
    }
    out.push_str(fragment);
    out
}

/// `text` with every `rtsp://`/`rtsps://` URL in it redacted, and every
/// occurrence of `secret` (when given and not empty) replaced by `***`.
pub fn redact_text(text: &str, secret: Option<&str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let lower = rest.to_ascii_lowercase();
        let Some(i) = lower.find("rtsp://").or_else(|| lower.find("rtsps://")) else {
            out.push_str(rest);
            break;
        };
        out.push_str(&rest[..i]);
        let end = rest[i..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ')'))
            .map_or(rest.len(), |e| i + e);
        out.push_str(&redact_url(&rest[i..end]));
        rest = &rest[end..];
    }
    match secret {
        Some(s) if !s.is_empty() => out.replace(s, "***"),
        _ => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strips_credentials_and_query_values() {
        assert_eq!(
            redact_url("rtsp://admin:hunter2@10.0.0.5:554/Streaming/101?token=abc&x=1"),
            "rtsp://***@10.0.0.5:554/Streaming/101?token=***&x=***"
        );
        assert_eq!(redact_url("rtsp://10.0.0.5/live"), "rtsp://10.0.0.5/live");
        assert_eq!(redact_url("rtsp://u:p@cam"), "rtsp://***@cam");
        assert_eq!(redact_url("rtsp://u:p@w@cam/x"), "rtsp://***@cam/x");
        // Unencoded '/' in the password: still user info.
        assert_eq!(
            redact_url("rtsp://admin:pa/ss@10.0.0.9/s"),
            "rtsp://***@10.0.0.9/s"
        );
        // Unencoded '?' or '#' before the '@': user info and query cannot
        // be told apart, all of it is hidden.
        assert_eq!(redact_url("rtsp://admin:pa?ss@10.0.0.9/s"), "rtsp://***");
        assert_eq!(redact_url("rtsp://admin:pa#ss@10.0.0.9:554"), "rtsp://***");
        // An '@' in a query value followed by host-like text.
        assert_eq!(redact_url("rtsp://a:x@cam/?password=@0000A"), "rtsp://***");
        assert_eq!(redact_url("rtsp://10.0.0.9:554/s"), "rtsp://10.0.0.9:554/s");
    }

    #[test]
    fn redacts_urls_inside_messages() {
        let t = redact_text(
            "DESCRIBE rtsp://admin:pw1@cam/a?user=admin&password=pw1 failed: 401 (pw1)",
            Some("pw1"),
        );
        assert!(!t.contains("pw1"), "{t}");
        assert!(!t.contains("admin:"), "{t}");
        assert!(t.contains("rtsp://***@cam/a?user=***&password=***"), "{t}");
        assert!(t.ends_with("401 (***)"), "{t}");
    }

    proptest! {
        #[test]
        fn never_leaks_userinfo(user in "[a-z0-9]{1,8}", pw in "[A-Za-z0-9!$%/?#@:]{6,12}",
                                host in "[a-z0-9.]{1,20}", path in "[a-z0-9/]{0,20}",
                                pre in ".{0,20}", post in "[ ,.;:]{1}.{0,20}") {
            let url = format!("rtsp://{user}:{pw}@{host}/{path}?password={pw}");
            let r = redact_url(&url);
            prop_assert!(!r.contains(&pw));
            let text = format!("{pre}rtsp://{user}:{pw}@{host}/{path}?password={pw}{post}");
            let r = redact_text(&text, None);
            prop_assert!(!r.contains(&format!("{user}:{pw}@")), "{}", r);
            prop_assert!(!r.contains(&format!("password={pw}")), "{}", r);
        }
    }
}
