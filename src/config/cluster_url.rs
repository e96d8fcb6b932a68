//! `store.url` for a Redis Cluster: `redis+cluster://[user:password@]host1:port,host2:port[?query]`
//! (`rediss+cluster://` for TLS). The nodes listed are only where the client starts: it learns
//! every master from them. Each becomes a plain node URL carrying the same credentials and query,
//! which is what redis-rs's cluster client takes.

use url::Url;

const SCHEMES: [(&str, &str); 2] = [("redis+cluster", "redis"), ("rediss+cluster", "rediss")];

/// `None` when `url` is not a cluster URL; otherwise its node URLs, or why they can't be read
/// (the reason never repeats the credentials).
pub fn cluster_node_urls(url: &str) -> Option<Result<Vec<String>, String>> {
    let (scheme, rest) = url.split_once("://")?;
    let node_scheme = SCHEMES.iter().find(|(s, _)| *s == scheme)?.1;
    Some(nodes(node_scheme, rest))
}

fn nodes(node_scheme: &str, rest: &str) -> Result<Vec<String>, String> {
    // The authority ends at the first '/' or '?' after the credentials (a password may hold
    // either, percent-encoded or not, but never an unencoded '@' after them).
    let (userinfo, after) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let end = after.find(['/', '?']).unwrap_or(after.len());
    let (hosts, tail) = after.split_at(end);
    let query = match tail.split_once('?') {
        Some((path, query)) if path.is_empty() || path == "/" => format!("?{query}"),
        None if tail.is_empty() || tail == "/" => String::new(),
        _ => {
            return Err(
                "a cluster URL has no database path (a cluster has only database 0)".into(),
            );
        }
    };
    let credentials = userinfo.map_or(String::new(), |u| format!("{u}@"));
    let urls: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|host| format!("{node_scheme}://{credentials}{host}/{query}"))
        .collect();
    if urls.is_empty() {
        return Err("a cluster URL lists no node (host:port,host:port)".into());
    }
    for (i, node) in urls.iter().enumerate() {
        let parsed =
            Url::parse(node).map_err(|e| format!("cluster node {} is unreadable: {e}", i + 1))?;
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(format!("cluster node {} has no host", i + 1));
        }
    }
    Ok(urls)
}

/// `url` as `redact_url` would show it, for a cluster URL: credentials of every node hidden.
pub(super) fn redact_cluster_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    SCHEMES.iter().find(|(s, _)| *s == scheme)?;
    let Ok(nodes) = nodes("redis", rest) else {
        return Some("(not shown: not a readable URL)".to_owned());
    };
    // Every node carries the same credentials and query: the first one, redacted, shows them.
    let first = super::redact_url(&nodes[0]);
    let hosts: Vec<String> = nodes
        .iter()
        .filter_map(|n| {
            let parsed = Url::parse(n).ok()?;
            let host = parsed.host_str()?.to_owned();
            Some(match parsed.port() {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
        })
        .collect();
    let parsed = Url::parse(&first).ok()?;
    let credentials = match (parsed.username(), parsed.password()) {
        ("", None) => String::new(),
        (user, None) => format!("{user}@"),
        (user, Some(password)) => format!("{user}:{password}@"),
    };
    let query = parsed.query().map_or(String::new(), |q| format!("/?{q}"));
    Some(format!(
        "{scheme}://{credentials}{}{query}",
        hosts.join(",")
    ))
}

#[cfg(test)]
mod tests {
    use super::cluster_node_urls;
    use crate::config::redact_url;

    #[test]
    fn a_cluster_url_becomes_one_url_per_node_with_the_same_credentials() {
        assert_eq!(
            cluster_node_urls("redis+cluster://gw:s3cret@10.0.0.1:7000,10.0.0.2:7001"),
            Some(Ok(vec![
                "redis://gw:s3cret@10.0.0.1:7000/".to_owned(),
                "redis://gw:s3cret@10.0.0.2:7001/".to_owned(),
            ]))
        );
        assert_eq!(
            cluster_node_urls("rediss+cluster://redis-a:6380/?protocol=resp3"),
            Some(Ok(vec!["rediss://redis-a:6380/?protocol=resp3".to_owned()]))
        );
        assert_eq!(cluster_node_urls("redis://db:6379"), None);
        assert_eq!(cluster_node_urls("embedded:data"), None);
    }

    #[test]
    fn unreadable_cluster_urls_are_refused_without_their_password() {
        for url in [
            "redis+cluster://",
            "redis+cluster://:hunter2@",
            "redis+cluster://:hunter2@h1:7000,h2:7001/3",
            "redis+cluster://:hunter2@h1:notaport",
        ] {
            let error = cluster_node_urls(url).unwrap().unwrap_err();
            assert!(!error.contains("hunter2"), "{url}: {error}");
        }
    }

    #[test]
    fn a_cluster_urls_credentials_are_not_shown() {
        assert_eq!(
            redact_url("redis+cluster://gw:hunter2@h1:7000,h2:7001"),
            "redis+cluster://gw:***@h1:7000,h2:7001"
        );
        assert_eq!(
            redact_url("rediss+cluster://:hunter2@h1:7000/?password=x&protocol=resp3"),
            "rediss+cluster://:***@h1:7000/?password=***&protocol=resp3"
        );
        assert_eq!(
            redact_url("redis+cluster://h1:7000,h2:7001"),
            "redis+cluster://h1:7000,h2:7001"
        );
        assert!(!redact_url("redis+cluster://:hunter2@h1:x").contains("hunter2"));
    }
}
