//! The route table: picks the route for a request by host, method and normalised path.
//!
//! The rule, one for every caller (the gateway, `routes explain`): among the routes that fit a
//! request (host unset or equal to the request's, method allowed, path under the prefix on a
//! segment boundary), the longest `path_prefix` wins; at equal length a route naming the host
//! wins over a host-less one ([`crate::config::precedence`]). Nothing fitting means no route: the
//! pipeline answers 404 and nothing is forwarded.

use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{Method, Uri};

use crate::config::Route;
use crate::proxy::path::{self, under_prefix};

/// Routes in the order [`crate::config::precedence`] tries them.
#[derive(Clone, Debug)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn new(routes: &[Route]) -> Self {
        let mut routes: Vec<Arc<Route>> = routes.iter().cloned().map(Arc::new).collect();
        // Stable sort keeps config order among equals; equals never overlap (config rejects it).
        routes.sort_by(|a, b| crate::config::precedence(a, b));
        Self { routes }
    }

    /// The route for `host` (no port; letter case and trailing dots do not matter), `method` and
    /// the normalised `path`.
    pub fn find(&self, host: Option<&str>, method: &Method, path: &str) -> Option<&Arc<Route>> {
        self.position(host, method, path).map(|i| &self.routes[i])
    }

    /// Like [`find`](Self::find), as the route's index in [`iter`](Self::iter) order, for
    /// callers that keep per-route state beside the table.
    pub fn position(&self, host: Option<&str>, method: &Method, path: &str) -> Option<usize> {
        self.routes.iter().position(|r| fits(r, host, method, path))
    }

    /// Every route that fits the request, the winner first: what `routes explain` shows as the
    /// routes that would otherwise have matched.
    pub fn fitting<'t>(
        &'t self,
        host: Option<&'t str>,
        method: &'t Method,
        path: &'t str,
    ) -> impl Iterator<Item = &'t Arc<Route>> {
        self.routes
            .iter()
            .filter(move |r| fits(r, host, method, path))
    }

    /// The route at `index` in [`iter`](Self::iter) order.
    pub fn get(&self, index: usize) -> Option<&Arc<Route>> {
        self.routes.get(index)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }
}

fn fits(route: &Route, host: Option<&str>, method: &Method, path: &str) -> bool {
    route
        .host
        .as_deref()
        .is_none_or(|h| host.is_some_and(|host| host.trim_end_matches('.').eq_ignore_ascii_case(h)))
        && route.methods.as_ref().is_none_or(|ms| ms.contains(method))
        && under_prefix(path, &route.path_prefix)
}

/// The upstream URI for a request on `route`: the route's scheme and authority, its base path
/// joined with the normalised path (prefix removed when the route strips it), and the query as the
/// client sent it. Built with `Uri` parts, never by gluing URL strings.
pub fn upstream_uri(route: &Route, normalised_path: &str, query: Option<&str>) -> Option<Uri> {
    let forwarded = if route.strip_prefix {
        path::strip_prefix(normalised_path, &route.path_prefix)
    } else {
        normalised_path
    };
    let mut target = path::join_base(&route.upstream.base_path, forwarded);
    if let Some(query) = query {
        target.push('?');
        target.push_str(query);
    }
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(route.upstream.scheme.clone());
    parts.authority = Some(route.upstream.authority.clone());
    parts.path_and_query = Some(PathAndQuery::from_maybe_shared(bytes::Bytes::from(target)).ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn table(toml: &str) -> RouteTable {
        RouteTable::new(&Config::from_toml(toml).unwrap().routes)
    }

    fn route(name: &str, prefix: &str, extra: &str) -> String {
        format!(
            "[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"http://127.0.0.1:1\"\n{extra}\n"
        )
    }

    fn found(t: &RouteTable, host: Option<&str>, method: Method, path: &str) -> Option<String> {
        t.find(host, &method, path).map(|r| r.name.clone())
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table(
            &(route("root", "/", "") + &route("api", "/api", "") + &route("v1", "/api/v1", "")),
        );
        assert_eq!(
            found(&t, None, Method::GET, "/api/v1/x").as_deref(),
            Some("v1")
        );
        assert_eq!(
            found(&t, None, Method::GET, "/api/v2").as_deref(),
            Some("api")
        );
        assert_eq!(
            found(&t, None, Method::GET, "/other").as_deref(),
            Some("root")
        );
    }

    #[test]
    fn prefix_not_on_segment_boundary_does_not_match() {
        let t = table(&route("admin", "/admin", ""));
        assert_eq!(
            found(&t, None, Method::GET, "/admin").as_deref(),
            Some("admin")
        );
        assert_eq!(
            found(&t, None, Method::GET, "/admin/x").as_deref(),
            Some("admin")
        );
        assert_eq!(found(&t, None, Method::GET, "/administrator"), None);
        assert_eq!(found(&t, None, Method::GET, "/"), None);
    }

    #[test]
    fn host_specific_routes_win_at_equal_prefix() {
        let t = table(&(route("any", "/", "") + &route("api", "/", "host = \"API.example.com\"")));
        assert_eq!(
            found(&t, Some("api.example.com"), Method::GET, "/x").as_deref(),
            Some("api")
        );
        assert_eq!(
            found(&t, Some("other"), Method::GET, "/x").as_deref(),
            Some("any")
        );
        assert_eq!(found(&t, None, Method::GET, "/x").as_deref(), Some("any"));
    }

    #[test]
    fn a_longer_host_less_prefix_beats_a_shorter_host_specific_one() {
        let t = table(
            &(route("www", "/", "host = \"www.example.test\"\nauth = \"public\"")
                + &route("admin", "/admin", "require_roles = [\"admin\"]")),
        );
        for host in ["www.example.test", "WWW.Example.Test", "www.example.test."] {
            assert_eq!(
                found(&t, Some(host), Method::GET, "/admin/users").as_deref(),
                Some("admin"),
                "{host}"
            );
            assert_eq!(
                found(&t, Some(host), Method::GET, "/other").as_deref(),
                Some("www")
            );
        }
        let fitting: Vec<_> = t
            .fitting(Some("www.example.test"), &Method::GET, "/admin/users")
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(fitting, ["admin", "www"]);
    }

    #[test]
    fn upstream_uri_strips_the_prefix_and_keeps_the_query() {
        let t = table(
            &route("api", "/api", "strip_prefix = true").replace("127.0.0.1:1", "127.0.0.1:1/base"),
        );
        let r = t.find(None, &Method::GET, "/api/x").unwrap();
        let uri = upstream_uri(r, "/api/x", Some("a=1&b=%20")).unwrap();
        assert_eq!(uri.to_string(), "http://127.0.0.1:1/base/x?a=1&b=%20");
        assert_eq!(
            upstream_uri(r, "/api", None).unwrap().to_string(),
            "http://127.0.0.1:1/base/"
        );
    }

    #[test]
    fn host_matches_in_any_letter_case_and_with_a_trailing_dot() {
        let t = table(&route("api", "/", "host = \"api.example.com\""));
        for host in ["api.example.com", "API.Example.COM", "api.example.com."] {
            assert_eq!(
                found(&t, Some(host), Method::GET, "/x").as_deref(),
                Some("api"),
                "{host}"
            );
        }
        for host in ["api.example.co", "xapi.example.com", ""] {
            assert_eq!(found(&t, Some(host), Method::GET, "/x"), None, "{host}");
        }
        assert_eq!(found(&t, None, Method::GET, "/x"), None);
    }

    #[test]
    fn method_filter_falls_back_to_shorter_prefix() {
        let t = table(&(route("read", "/data", "methods = [\"GET\"]") + &route("root", "/", "")));
        assert_eq!(
            found(&t, None, Method::GET, "/data").as_deref(),
            Some("read")
        );
        assert_eq!(
            found(&t, None, Method::DELETE, "/data").as_deref(),
            Some("root")
        );
        let t = table(&route("read", "/data", "methods = [\"GET\"]"));
        assert_eq!(found(&t, None, Method::POST, "/data"), None);
    }
}
