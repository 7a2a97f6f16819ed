//! Per-route authentication policies: `any` / `all` over schemes, compiled once at load.
//!
//! `any` succeeds with the first branch that proves an identity (Oathkeeper's ordered list);
//! branches whose credential is absent are skipped, and if none succeeds the most specific
//! refusal is reported (a refused credential beats "missing"). `all` needs every branch to
//! prove an identity; the identities are combined with [`Identity::combine`].
//!
//! [`Identity::combine`]: portcullis_core::Identity::combine

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use portcullis_core::identity::SchemeSet;
use portcullis_core::{AuthError, RequestParts, Scheme, Timestamp};

use crate::authn::{Authenticated, Authenticator, RouteAuth};

/// A policy as written in configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyExpr {
    /// Every branch must succeed.
    All(Vec<PolicyExpr>),
    /// The first branch that succeeds wins.
    Any(Vec<PolicyExpr>),
    /// No authentication (must be said explicitly, and only for the whole route).
    Public,
    /// One scheme.
    Scheme(Scheme),
}

/// Why a policy does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// `any` or `all` with no branches.
    #[error("`{0}` needs at least one branch")]
    Empty(&'static str),
    /// The scheme exists in Portcullis's plan but is not built into this version yet.
    #[error("scheme `{0}` is not available in this version of portcullis")]
    NotAvailable(&'static str),
    /// `public` inside `any`/`all` (meaningless, and a likely mistake).
    #[error("`public` must be the whole policy, not a branch of `any`/`all`")]
    NestedPublic,
    /// Nested deeper than allowed.
    #[error("policy nested deeper than {0} levels")]
    TooDeep(usize),
}

/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 8;

#[derive(Clone)]
enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Leaf(Arc<dyn Authenticator>),
}

/// A compiled policy.
#[derive(Clone)]
pub struct Policy {
    root: Option<Node>,
    schemes: SchemeSet,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("public", &self.root.is_none())
            .field("schemes", &self.schemes)
            .finish()
    }
}

type BoxFut<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Authenticated>, AuthError>> + Send + 'a>>;

impl Policy {
    /// Compiles `expr` against the authenticators this build provides.
    pub fn compile(
        expr: &PolicyExpr,
        available: &HashMap<Scheme, Arc<dyn Authenticator>>,
    ) -> Result<Self, PolicyError> {
        if *expr == PolicyExpr::Public {
            return Ok(Self {
                root: None,
                schemes: SchemeSet::default(),
            });
        }
        let mut schemes = SchemeSet::default();
        let root = compile_node(expr, available, &mut schemes, 0)?;
        Ok(Self {
            root: Some(root),
            schemes,
        })
    }

    /// The authenticator of `scheme` in this policy, if it names the scheme.
    pub fn authenticator(&self, scheme: Scheme) -> Option<&Arc<dyn Authenticator>> {
        fn find(n: &Node, scheme: Scheme) -> Option<&Arc<dyn Authenticator>> {
            match n {
                Node::Leaf(a) => (a.scheme() == scheme).then_some(a),
                Node::All(v) | Node::Any(v) => v.iter().find_map(|n| find(n, scheme)),
            }
        }
        self.root.as_ref().and_then(|n| find(n, scheme))
    }

    /// Whether the route needs no authentication.
    pub fn is_public(&self) -> bool {
        self.root.is_none()
    }

    /// The schemes this policy mentions (for challenges and docs).
    pub fn schemes(&self) -> SchemeSet {
        self.schemes
    }

    /// The `WWW-Authenticate` challenges of every scheme the policy accepts.
    pub fn challenges(&self, route: &RouteAuth) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(root) = &self.root {
            collect_challenges(root, route, &mut out);
        }
        out
    }

    /// Evaluates the policy. `Ok(None)` only for public routes.
    pub async fn evaluate(
        &self,
        req: &RequestParts<'_>,
        route: &RouteAuth,
        now: Timestamp,
    ) -> Result<Option<Authenticated>, AuthError> {
        let Some(root) = &self.root else {
            return Ok(None);
        };
        // The common case, one scheme, without boxing (and without waiting when the scheme
        // can answer from memory).
        let result = match root {
            Node::Leaf(a) => match a.authenticate_now(req, route, now) {
                Some(r) => r,
                None => a.authenticate(req, route, now).await,
            },
            node => eval(node, req, route, now).await,
        };
        match result {
            Ok(Some(a)) => Ok(Some(a)),
            Ok(None) => Err(AuthError::MissingCredentials),
            Err(e) => Err(e),
        }
    }
}

fn compile_node(
    e: &PolicyExpr,
    available: &HashMap<Scheme, Arc<dyn Authenticator>>,
    schemes: &mut SchemeSet,
    depth: usize,
) -> Result<Node, PolicyError> {
    if depth > MAX_DEPTH {
        return Err(PolicyError::TooDeep(MAX_DEPTH));
    }
    let children = |v: &[PolicyExpr],
                    name: &'static str,
                    schemes: &mut SchemeSet|
     -> Result<Vec<Node>, PolicyError> {
        if v.is_empty() {
            return Err(PolicyError::Empty(name));
        }
        v.iter()
            .map(|c| compile_node(c, available, schemes, depth + 1))
            .collect()
    };
    Ok(match e {
        PolicyExpr::Public => return Err(PolicyError::NestedPublic),
        PolicyExpr::Scheme(s) => {
            let a = available
                .get(s)
                .ok_or(PolicyError::NotAvailable(s.name()))?;
            *schemes = schemes.union(SchemeSet::one(*s));
            Node::Leaf(a.clone())
        }
        PolicyExpr::Any(v) => Node::Any(children(v, "any", schemes)?),
        PolicyExpr::All(v) => Node::All(children(v, "all", schemes)?),
    })
}

fn collect_challenges(n: &Node, route: &RouteAuth, out: &mut Vec<String>) {
    match n {
        Node::Leaf(a) => {
            for c in a.challenges(route) {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        Node::Any(v) | Node::All(v) => v.iter().for_each(|c| collect_challenges(c, route, out)),
    }
}

fn eval<'a>(
    n: &'a Node,
    req: &'a RequestParts<'a>,
    route: &'a RouteAuth,
    now: Timestamp,
) -> BoxFut<'a> {
    Box::pin(async move {
        match n {
            Node::Leaf(a) => a.authenticate(req, route, now).await,
            Node::Any(v) => {
                let mut refused: Option<AuthError> = None;
                for c in v {
                    match eval(c, req, route, now).await {
                        Ok(Some(a)) => return Ok(Some(a)),
                        Ok(None) => {}
                        Err(e) => {
                            refused.get_or_insert(e);
                        }
                    }
                }
                refused.map_or(Ok(None), Err)
            }
            Node::All(v) => {
                let mut acc: Option<Authenticated> = None;
                for c in v {
                    let got = eval(c, req, route, now)
                        .await?
                        .ok_or(AuthError::MissingCredentials)?;
                    acc = Some(match acc {
                        None => got,
                        Some(prev) => Authenticated {
                            identity: prev.identity.combine(got.identity),
                            limits: prev.limits.or(got.limits),
                            consumed: prev.consumed.union(got.consumed),
                        },
                    });
                }
                Ok(acc)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::Consumed;
    use async_trait::async_trait;
    use portcullis_core::api_key;
    use portcullis_core::identity::{Claims, Identity};

    /// A fake authenticator: answers by the value of header `x-fake-<scheme>`.
    struct Fake(Scheme);

    #[async_trait]
    impl Authenticator for Fake {
        fn scheme(&self) -> Scheme {
            self.0
        }
        fn challenge(&self, _: &RouteAuth) -> String {
            format!("Fake{}", self.0.name())
        }
        async fn authenticate(
            &self,
            req: &RequestParts<'_>,
            _: &RouteAuth,
            _: Timestamp,
        ) -> Result<Option<Authenticated>, AuthError> {
            let name = format!("x-fake-{}", self.0.name());
            match req.headers.get(name.as_str()).and_then(|v| v.to_str().ok()) {
                None => Ok(None),
                Some("bad") => Err(api_key::Error::Revoked.into()),
                Some(id) => {
                    let g = api_key::generate(&api_key::Prefix::new("t").unwrap(), &[1; 32]);
                    let p = api_key::parse(g.key.expose(), false).unwrap();
                    let proof = api_key::verify(
                        &p,
                        &api_key::Stored {
                            hash: &g.hash,
                            revoked_at: None,
                            expires_at: None,
                        },
                        Timestamp::EPOCH,
                    )
                    .unwrap();
                    let mut identity = Identity::from_api_key(
                        proof,
                        Claims {
                            client_id: None,
                            subject: None,
                            scopes: Default::default(),
                            credential_id: id.into(),
                            expires_at: None,
                        },
                    );
                    identity.schemes = SchemeSet::one(self.0);
                    Ok(Some(Authenticated {
                        identity,
                        limits: None,
                        consumed: Consumed::default(),
                    }))
                }
            }
        }
    }

    fn available() -> HashMap<Scheme, Arc<dyn Authenticator>> {
        [Scheme::ApiKey, Scheme::Mtls, Scheme::Jwt]
            .into_iter()
            .map(|s| (s, Arc::new(Fake(s)) as Arc<dyn Authenticator>))
            .collect()
    }

    async fn run(
        expr: &PolicyExpr,
        headers: &[(&str, &str)],
    ) -> Result<Option<Authenticated>, AuthError> {
        let policy = Policy::compile(expr, &available()).unwrap();
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let m = http::Method::GET;
        let req = RequestParts {
            method: &m,
            path: "/",
            query: None,
            scheme: "http",
            authority: None,
            headers: &h,
            client_ip: [127, 0, 0, 1].into(),
            conn: None,
            body: None,
        };
        policy
            .evaluate(&req, &RouteAuth::default(), Timestamp::EPOCH)
            .await
    }

    fn layered() -> PolicyExpr {
        PolicyExpr::All(vec![
            PolicyExpr::Scheme(Scheme::Mtls),
            PolicyExpr::Any(vec![
                PolicyExpr::Scheme(Scheme::Jwt),
                PolicyExpr::Scheme(Scheme::ApiKey),
            ]),
        ])
    }

    #[tokio::test]
    async fn all_needs_every_branch_and_combines() {
        let ok = run(
            &layered(),
            &[("x-fake-mtls", "cert1"), ("x-fake-api_key", "k1")],
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(ok.identity.schemes.to_string(), "api_key,mtls");
        assert_eq!(&*ok.identity.credential_id, "cert1");
        assert_eq!(
            run(&layered(), &[("x-fake-api_key", "k1")])
                .await
                .unwrap_err(),
            AuthError::MissingCredentials
        );
    }

    #[tokio::test]
    async fn any_skips_absent_and_prefers_a_refusal_over_missing() {
        let any = PolicyExpr::Any(vec![
            PolicyExpr::Scheme(Scheme::Jwt),
            PolicyExpr::Scheme(Scheme::ApiKey),
        ]);
        assert!(run(&any, &[("x-fake-api_key", "k")])
            .await
            .unwrap()
            .is_some());
        assert!(
            run(&any, &[("x-fake-jwt", "bad"), ("x-fake-api_key", "k")])
                .await
                .unwrap()
                .is_some(),
            "another branch may still succeed"
        );
        assert_eq!(
            run(&any, &[("x-fake-jwt", "bad")]).await.unwrap_err(),
            AuthError::ApiKey(api_key::Error::Revoked)
        );
        assert_eq!(
            run(&any, &[]).await.unwrap_err(),
            AuthError::MissingCredentials
        );
    }

    #[tokio::test]
    async fn public_needs_nothing() {
        assert!(run(&PolicyExpr::Public, &[]).await.unwrap().is_none());
    }

    #[test]
    fn compile_refuses_unavailable_nested_public_empty_and_deep() {
        let only_key: HashMap<Scheme, Arc<dyn Authenticator>> = [(
            Scheme::ApiKey,
            Arc::new(Fake(Scheme::ApiKey)) as Arc<dyn Authenticator>,
        )]
        .into();
        assert_eq!(
            Policy::compile(&layered(), &only_key).unwrap_err(),
            PolicyError::NotAvailable("mtls")
        );
        assert_eq!(
            Policy::compile(&PolicyExpr::Any(vec![PolicyExpr::Public]), &only_key).unwrap_err(),
            PolicyError::NestedPublic
        );
        assert_eq!(
            Policy::compile(&PolicyExpr::All(vec![]), &only_key).unwrap_err(),
            PolicyError::Empty("all")
        );
        let mut deep = PolicyExpr::Scheme(Scheme::ApiKey);
        for _ in 0..=MAX_DEPTH + 1 {
            deep = PolicyExpr::Any(vec![deep]);
        }
        assert_eq!(
            Policy::compile(&deep, &only_key).unwrap_err(),
            PolicyError::TooDeep(MAX_DEPTH)
        );
        let p = Policy::compile(&layered(), &available()).unwrap();
        assert_eq!(
            p.challenges(&RouteAuth::default()),
            ["Fakemtls", "Fakejwt", "Fakeapi_key"]
        );
    }
}
