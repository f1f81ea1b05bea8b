//! Access control: who a request comes from (a static bearer token or a signed JWT) and
//! whether it holds the scope its route needs.
//!
//! The tower layer that applies this lives in [`super::middleware`]; this module holds
//! the decisions: [`required_scope`] (every route's scope, in one table),
//! [`Authenticator`] (credentials to a [`Principal`]) and the 401/403 problems.
//!
//! Credentials are never logged: failures carry a reason, never the token, and the
//! `access_token` query parameter is taken out of the request before anything after
//! this layer (handlers, logs) sees the query.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::ApiError;
use crate::config::{AuthConfig, AuthMode, JwtConfig, ScopeNames, TokenConfig};

/// What a route needs the caller to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Reading flows, sources, grains, live streams, events and metrics.
    Read,
    /// Creating and updating flows, writing grains.
    Write,
    /// Deleting flows and grains.
    Delete,
    /// Everything: a token with it passes every check.
    Admin,
}

impl Scope {
    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Delete => 4,
            Scope::Admin => 8,
        }
    }
}

/// Routes anyone may call: what a load balancer, an orchestrator or a client discovering
/// the service needs before it has credentials. Everything else needs a scope.
pub const OPEN_ROUTES: &[&str] = &["/", "/healthz", "/readyz", "/openapi.yaml"];

/// The scope a request needs, by its matched route and method; `None` for open routes.
///
/// Reads (GET, HEAD) need `read`, including live streams, `/events` and `/metrics`
/// (request counts by route template and byte totals: nothing a reader could not see
/// anyway); DELETE needs `delete`; every other method `write`. A request that matched no
/// route needs `read`, so that unknown paths do not tell anonymous callers what exists.
pub fn required_scope(route: Option<&str>, method: &Method) -> Option<Scope> {
    if route.is_some_and(|r| OPEN_ROUTES.contains(&r)) {
        return None;
    }
    Some(match *method {
        Method::GET | Method::HEAD => Scope::Read,
        Method::DELETE => Scope::Delete,
        _ => Scope::Write,
    })
}

/// Who a request comes from: what the auth layer makes of its credentials, for the live
/// stream limits per credential and the request span.
#[derive(Clone, Debug)]
pub struct Principal {
    /// A stable name for logs and per-credential limits: a token's configured name, a
    /// JWT's issuer and subject, or a digest prefix. Never the credential itself.
    pub id: Arc<str>,
    /// `auth.mode = "none"`: every caller is this one.
    pub anonymous: bool,
    scopes: u8,
}

impl Principal {
    /// The caller of a service without access control.
    pub fn anonymous() -> Principal {
        /// Shared: every request of a service without access control has this principal.
        static ID: std::sync::LazyLock<Arc<str>> =
            std::sync::LazyLock::new(|| Arc::from("anonymous"));
        Principal {
            id: ID.clone(),
            anonymous: true,
            scopes: Scope::Admin.bit(),
        }
    }

    /// Whether the principal holds `scope` (`admin` holds every scope).
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes & (scope.bit() | Scope::Admin.bit()) != 0
    }
}

/// Why an `[auth]` configuration was refused.
#[derive(Debug)]
pub struct AuthConfigError {
    /// The dotted key at fault.
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn config_error(key: &'static str, reason: impl Into<String>) -> AuthConfigError {
    AuthConfigError {
        key,
        reason: reason.into(),
    }
}

/// Why a request's credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credentials at all.
    Missing,
    /// Credentials given in a way the service does not take (RFC 6750 `invalid_request`).
    BadRequest(String),
    /// Credentials that are not valid (RFC 6750 `invalid_token`); the reason never holds
    /// the credential.
    Invalid(String),
}

/// A static token's grant.
struct TokenGrant {
    principal: Principal,
}

/// The JWT verifier: one key per accepted algorithm.
struct JwtVerifier {
    keys: Vec<(Algorithm, DecodingKey)>,
    validation: Validation,
}

/// Turns credentials into a [`Principal`], as configured.
pub struct Authenticator {
    mode: AuthMode,
    realm: String,
    names: ScopeNames,
    /// SHA-256 of each token → its grant. Looking up by digest keeps the comparison off
    /// the secret itself (a timing difference can reveal at most a digest prefix).
    tokens: HashMap<[u8; 32], TokenGrant>,
    jwt: Option<JwtVerifier>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

/// The `tokens_file` layout.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenConfig>,
}

impl Authenticator {
    /// Checks `config` and loads its tokens and keys (reading `tokens_file`,
    /// `hs256_secret_file` and `public_key_file`).
    pub fn new(config: &AuthConfig) -> Result<Authenticator, AuthConfigError> {
        check_scope_names(&config.scopes)?;
        let mut auth = Authenticator {
            mode: config.mode,
            realm: config.realm.clone(),
            names: config.scopes.clone(),
            tokens: HashMap::new(),
            jwt: None,
        };
        if config.realm.contains('"') || config.realm.contains('\\') {
            return Err(config_error(
                "auth.realm",
                "must not contain quotes or backslashes",
            ));
        }
        match config.mode {
            AuthMode::None => {}
            AuthMode::Token => {
                let mut entries: Vec<(&'static str, TokenConfig)> = config
                    .tokens
                    .iter()
                    .map(|t| ("auth.tokens", t.clone()))
                    .collect();
                if !config.tokens_file.as_os_str().is_empty() {
                    let file = read_tokens_file(&config.tokens_file)?;
                    entries.extend(file.into_iter().map(|t| ("auth.tokens_file", t)));
                }
                if entries.is_empty() {
                    return Err(config_error(
                        "auth.tokens",
                        "auth.mode = \"token\" needs at least one token (in auth.tokens or auth.tokens_file)",
                    ));
                }
                for (i, (key, entry)) in entries.into_iter().enumerate() {
                    let (digest, grant) = auth.token_grant(i, key, &entry)?;
                    if auth.tokens.insert(digest, grant).is_some() {
                        return Err(config_error(key, format!("token #{i} is given twice")));
                    }
                }
            }
            AuthMode::Jwt => auth.jwt = Some(jwt_verifier(&config.jwt)?),
        }
        Ok(auth)
    }

    /// An authenticator that refuses everyone (when the configuration could not be
    /// loaded where it should already have been checked: fail closed).
    pub fn deny_all(realm: &str) -> Authenticator {
        Authenticator {
            mode: AuthMode::Token,
            realm: realm.replace(['"', '\\'], ""),
            names: ScopeNames {
                read: "read".into(),
                write: "write".into(),
                delete: "delete".into(),
                admin: "admin".into(),
            },
            tokens: HashMap::new(),
            jwt: None,
        }
    }

    /// The configured mode.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    fn token_grant(
        &self,
        index: usize,
        key: &'static str,
        entry: &TokenConfig,
    ) -> Result<([u8; 32], TokenGrant), AuthConfigError> {
        let digest: [u8; 32] = match (entry.token.is_empty(), entry.token_sha256.is_empty()) {
            (false, true) => {
                if entry.token.expose().len() < 16 {
                    return Err(config_error(
                        key,
                        format!(
                            "token #{index} is shorter than 16 characters; use a long random token"
                        ),
                    ));
                }
                Sha256::digest(entry.token.expose().as_bytes()).into()
            }
            (true, false) => parse_sha256(&entry.token_sha256).ok_or_else(|| {
                config_error(
                    key,
                    format!("token #{index}: `token_sha256` must be 64 hex digits"),
                )
            })?,
            _ => {
                return Err(config_error(
                    key,
                    format!("token #{index} must give exactly one of `token` and `token_sha256`"),
                ));
            }
        };
        if entry.scopes.is_empty() {
            return Err(config_error(key, format!("token #{index} has no scopes")));
        }
        let mut scopes = 0;
        for name in &entry.scopes {
            scopes |= self
                .scope_bit(name)
                .ok_or_else(|| {
                    config_error(
                        key,
                        format!(
                            "token #{index}: unknown scope {name:?}; the scopes are {:?}, {:?}, {:?}, {:?} (auth.scopes)",
                            self.names.read, self.names.write, self.names.delete, self.names.admin
                        ),
                    )
                })?;
        }
        let id = if entry.name.is_empty() {
            format!("token:{}", hex_prefix(&digest))
        } else {
            format!("token:{}", entry.name)
        };
        Ok((
            digest,
            TokenGrant {
                principal: Principal {
                    id: Arc::from(id),
                    anonymous: false,
                    scopes,
                },
            },
        ))
    }

    fn scope_bit(&self, name: &str) -> Option<u8> {
        let n = &self.names;
        [
            (&n.read, Scope::Read),
            (&n.write, Scope::Write),
            (&n.delete, Scope::Delete),
            (&n.admin, Scope::Admin),
        ]
        .into_iter()
        .find(|(configured, _)| configured.as_str() == name)
        .map(|(_, scope)| scope.bit())
    }

    /// The configured name of a scope (as a token must carry it).
    pub fn scope_name(&self, scope: Scope) -> &str {
        match scope {
            Scope::Read => &self.names.read,
            Scope::Write => &self.names.write,
            Scope::Delete => &self.names.delete,
            Scope::Admin => &self.names.admin,
        }
    }

    /// The principal a bearer token stands for.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthFailure> {
        if self.mode == AuthMode::None {
            return Ok(Principal::anonymous());
        }
        let Some(token) = token else {
            return Err(AuthFailure::Missing);
        };
        match &self.jwt {
            Some(jwt) if self.mode == AuthMode::Jwt => self.verify_jwt(jwt, token),
            _ => {
                let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                self.tokens
                    .get(&digest)
                    .map(|grant| grant.principal.clone())
                    .ok_or_else(|| AuthFailure::Invalid("the token is not known".into()))
            }
        }
    }

    fn verify_jwt(&self, jwt: &JwtVerifier, token: &str) -> Result<Principal, AuthFailure> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthFailure::Invalid("the token is not a well-formed JWT".into()))?;
        let Some((alg, key)) = jwt.keys.iter().find(|(alg, _)| *alg == header.alg) else {
            return Err(AuthFailure::Invalid(format!(
                "the token's algorithm {:?} is not accepted (auth.jwt.algorithms)",
                header.alg
            )));
        };
        let mut validation = jwt.validation.clone();
        validation.algorithms = vec![*alg];
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| AuthFailure::Invalid(jwt_reason(&e)))?;
        let claims = data.claims;
        let mut scopes = 0;
        let granted: Vec<&str> = match &claims.scope {
            Some(ScopeClaim::Text(text)) => text.split_whitespace().collect(),
            Some(ScopeClaim::List(list)) => list.iter().map(String::as_str).collect(),
            None => Vec::new(),
        };
        for name in granted {
            // Scopes of other services in the same token are ignored.
            scopes |= self.scope_bit(name).unwrap_or(0);
        }
        let id = match (&claims.iss, &claims.sub) {
            (Some(iss), Some(sub)) => format!("jwt:{iss}:{sub}"),
            (None, Some(sub)) => format!("jwt::{sub}"),
            _ => {
                let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                format!("jwt:#{}", hex_prefix(&digest))
            }
        };
        Ok(Principal {
            id: Arc::from(id),
            anonymous: false,
            scopes,
        })
    }

    /// 401 with `WWW-Authenticate: Bearer …` (400 for a malformed request, as RFC 6750
    /// asks).
    pub fn unauthorized(&self, failure: &AuthFailure) -> ApiError {
        let (status, challenge, detail) = match failure {
            AuthFailure::Missing => (
                StatusCode::UNAUTHORIZED,
                format!("Bearer realm=\"{}\"", self.realm),
                "this route needs credentials: send `Authorization: Bearer TOKEN` (event streams may give `?access_token=TOKEN`)".to_owned(),
            ),
            AuthFailure::BadRequest(reason) => (
                StatusCode::BAD_REQUEST,
                format!(
                    "Bearer realm=\"{}\", error=\"invalid_request\", error_description=\"{}\"",
                    self.realm,
                    quoted(reason)
                ),
                reason.clone(),
            ),
            AuthFailure::Invalid(reason) => (
                StatusCode::UNAUTHORIZED,
                format!(
                    "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{}\"",
                    self.realm,
                    quoted(reason)
                ),
                format!("the credentials were refused: {reason}"),
            ),
        };
        let mut problem = if status == StatusCode::BAD_REQUEST {
            ApiError::new(
                status,
                "urn:grainstore:problem:bad-credentials-request",
                "Malformed credentials",
                detail,
            )
        } else {
            ApiError::new(
                status,
                "urn:grainstore:problem:unauthorized",
                "Unauthorized",
                detail,
            )
        };
        problem.www_authenticate = Some(challenge);
        problem
    }

    /// 403: valid credentials without the scope the route needs.
    pub fn forbidden(&self, scope: Scope, method: &Method, route: &str) -> ApiError {
        let name = self.scope_name(scope);
        let mut problem = ApiError::new(
            StatusCode::FORBIDDEN,
            "urn:grainstore:problem:forbidden",
            "Insufficient scope",
            format!(
                "{method} {route} needs the scope {name:?} (or {:?})",
                self.names.admin
            ),
        );
        problem.www_authenticate = Some(format!(
            "Bearer realm=\"{}\", error=\"insufficient_scope\", scope=\"{}\"",
            self.realm,
            quoted(name)
        ));
        problem
    }
}

/// The claims the service reads; `exp`, `nbf`, `aud` and `iss` are checked by the
/// validation itself.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    scope: Option<ScopeClaim>,
}

/// `scope` is a space-separated string (RFC 8693); a list is taken too.
#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

fn jwt_reason(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "the token has expired (`exp`)".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (`nbf`)".into(),
        ErrorKind::InvalidAudience => "the token's audience (`aud`) is not accepted".into(),
        ErrorKind::InvalidIssuer => "the token's issuer (`iss`) is not accepted".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::InvalidAlgorithm => "the token's algorithm does not match its key".into(),
        ErrorKind::MissingRequiredClaim(claim) => {
            format!("the token lacks the required claim `{claim}`")
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            format!("the token's claim `{claim}` has the wrong type")
        }
        _ => "the token is not a valid JWT".into(),
    }
}

fn jwt_verifier(config: &JwtConfig) -> Result<JwtVerifier, AuthConfigError> {
    let secret = if !config.hs256_secret.is_empty() {
        if !config.hs256_secret_file.as_os_str().is_empty() {
            return Err(config_error(
                "auth.jwt.hs256_secret",
                "give auth.jwt.hs256_secret or auth.jwt.hs256_secret_file, not both",
            ));
        }
        Some(config.hs256_secret.expose().as_bytes().to_vec())
    } else if !config.hs256_secret_file.as_os_str().is_empty() {
        let text = std::fs::read(&config.hs256_secret_file).map_err(|e| {
            config_error(
                "auth.jwt.hs256_secret_file",
                format!("cannot read {}: {e}", config.hs256_secret_file.display()),
            )
        })?;
        let end = text
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        Some(text[..end].to_vec())
    } else {
        None
    };
    if let Some(secret) = &secret
        && secret.len() < 32
    {
        return Err(config_error(
            "auth.jwt.hs256_secret",
            "the HS256 secret must be at least 32 bytes",
        ));
    }
    let public_pem = if config.public_key_file.as_os_str().is_empty() {
        None
    } else {
        Some(std::fs::read(&config.public_key_file).map_err(|e| {
            config_error(
                "auth.jwt.public_key_file",
                format!("cannot read {}: {e}", config.public_key_file.display()),
            )
        })?)
    };
    let mut algorithms = Vec::new();
    for name in &config.algorithms {
        let alg = match name.as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => {
                return Err(config_error(
                    "auth.jwt.algorithms",
                    format!("{other:?} is not one of \"HS256\", \"RS256\", \"ES256\""),
                ));
            }
        };
        if !algorithms.contains(&alg) {
            algorithms.push(alg);
        }
    }
    if algorithms.is_empty() {
        // Inferred from the keys given.
        if secret.is_some() {
            algorithms.push(Algorithm::HS256);
        }
        if let Some(pem) = &public_pem {
            if DecodingKey::from_rsa_pem(pem).is_ok() {
                algorithms.push(Algorithm::RS256);
            } else {
                algorithms.push(Algorithm::ES256);
            }
        }
    }
    if algorithms.is_empty() {
        return Err(config_error(
            "auth.jwt.algorithms",
            "auth.mode = \"jwt\" needs a key: auth.jwt.hs256_secret(_file) or auth.jwt.public_key_file",
        ));
    }
    let mut keys = Vec::new();
    for alg in algorithms {
        let key = match alg {
            Algorithm::HS256 => {
                let Some(secret) = &secret else {
                    return Err(config_error(
                        "auth.jwt.hs256_secret",
                        "HS256 is accepted but no secret is given (auth.jwt.hs256_secret or hs256_secret_file)",
                    ));
                };
                DecodingKey::from_secret(secret)
            }
            Algorithm::RS256 | Algorithm::ES256 => {
                let Some(pem) = &public_pem else {
                    return Err(config_error(
                        "auth.jwt.public_key_file",
                        format!("{alg:?} is accepted but no public key file is given"),
                    ));
                };
                let parsed = if alg == Algorithm::RS256 {
                    DecodingKey::from_rsa_pem(pem)
                } else {
                    DecodingKey::from_ec_pem(pem)
                };
                parsed.map_err(|e| {
                    config_error(
                        "auth.jwt.public_key_file",
                        format!("not a PEM public key for {alg:?}: {e}"),
                    )
                })?
            }
            _ => unreachable!("only HS256, RS256 and ES256 are parsed above"),
        };
        keys.push((alg, key));
    }
    let mut validation = Validation::new(keys[0].0);
    validation.leeway = config.leeway_secs;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    if config.audience.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&config.audience);
        required.push("aud");
    }
    if !config.issuer.is_empty() {
        validation.set_issuer(&config.issuer);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    Ok(JwtVerifier { keys, validation })
}

fn read_tokens_file(path: &Path) -> Result<Vec<TokenConfig>, AuthConfigError> {
    let file: TokensFile = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| {
            config_error(
                "auth.tokens_file",
                format!("cannot load {}: {e}", path.display()),
            )
        })?;
    Ok(file.tokens)
}

fn check_scope_names(names: &ScopeNames) -> Result<(), AuthConfigError> {
    let all = [
        ("auth.scopes.read", &names.read),
        ("auth.scopes.write", &names.write),
        ("auth.scopes.delete", &names.delete),
        ("auth.scopes.admin", &names.admin),
    ];
    for (i, (key, name)) in all.iter().enumerate() {
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '"') {
            return Err(config_error(
                key,
                "must be non-empty, without spaces or quotes",
            ));
        }
        if all[..i].iter().any(|(_, other)| other == name) {
            return Err(config_error(key, format!("{name:?} names two scopes")));
        }
    }
    Ok(())
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn hex_prefix(digest: &[u8; 32]) -> String {
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Text safe inside a quoted-string of a challenge.
fn quoted(text: &str) -> String {
    text.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

/// Whether a request is an event stream (what a browser's EventSource sends), the only
/// kind that may carry its token in the query.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// Removes every `access_token` parameter from the request's query, returning its value.
/// The rest of the query is kept byte for byte.
pub fn take_query_token(uri: &mut Uri) -> Result<Option<String>, AuthFailure> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    let mut token = None;
    let mut kept: Vec<&str> = Vec::new();
    let mut found = 0;
    for pair in query.split('&') {
        let name = pair.split('=').next().unwrap_or("");
        let is_token = form_urlencoded::parse(name.as_bytes())
            .next()
            .is_some_and(|(n, _)| n == "access_token");
        if is_token {
            found += 1;
            token = form_urlencoded::parse(pair.as_bytes())
                .next()
                .map(|(_, v)| v.into_owned());
        } else {
            kept.push(pair);
        }
    }
    if found == 0 {
        return Ok(None);
    }
    let path = uri.path();
    let rebuilt = if kept.iter().all(|p| p.is_empty()) {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = std::mem::take(uri).into_parts();
    // Parsing a path and query taken from a valid URI, minus some parameters, succeeds.
    parts.path_and_query = rebuilt.parse().ok();
    *uri = Uri::from_parts(parts).unwrap_or_default();
    if found > 1 {
        return Err(AuthFailure::BadRequest(
            "`access_token` is given more than once".into(),
        ));
    }
    Ok(token)
}

/// The bearer token of the `Authorization` header, if any.
pub fn header_token(headers: &HeaderMap) -> Result<Option<&str>, AuthFailure> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthFailure::BadRequest(
            "more than one Authorization header".into(),
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| AuthFailure::Invalid("the Authorization header is not valid text".into()))?;
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::Invalid(
            "the Authorization scheme must be Bearer".into(),
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthFailure::Invalid("the bearer token is empty".into()));
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_a_scope_or_is_open() {
        for (path, methods) in super::super::ROUTES {
            for method in *methods {
                let method: Method = method.to_uppercase().parse().unwrap();
                let scope = required_scope(Some(path), &method);
                if OPEN_ROUTES.contains(path) {
                    assert_eq!(scope, None, "{method} {path}");
                } else {
                    let expected = match method {
                        Method::GET | Method::HEAD => Scope::Read,
                        Method::DELETE => Scope::Delete,
                        _ => Scope::Write,
                    };
                    assert_eq!(scope, Some(expected), "{method} {path}");
                }
            }
        }
        assert_eq!(
            required_scope(Some("/events"), &Method::GET),
            Some(Scope::Read)
        );
        assert_eq!(required_scope(None, &Method::GET), Some(Scope::Read));
        assert_eq!(
            required_scope(Some("/metrics"), &Method::GET),
            Some(Scope::Read)
        );
    }

    #[test]
    fn query_token_is_removed_and_the_rest_kept() {
        let mut uri: Uri = "/flows/x/grains?after=1:0&access_token=a%2Bb&payload=none"
            .parse()
            .unwrap();
        assert_eq!(take_query_token(&mut uri), Ok(Some("a+b".into())));
        assert_eq!(uri.to_string(), "/flows/x/grains?after=1:0&payload=none");
        let mut uri: Uri = "/events?access_token=t".parse().unwrap();
        assert_eq!(take_query_token(&mut uri), Ok(Some("t".into())));
        assert_eq!(uri.to_string(), "/events");
        let mut uri: Uri = "/events?access_token=t&access_token=u".parse().unwrap();
        assert!(take_query_token(&mut uri).is_err());
        assert_eq!(uri.to_string(), "/events");
    }

    #[test]
    fn sha256_hex_parses() {
        let digest: [u8; 32] = Sha256::digest(b"test").into();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_sha256(&hex), Some(digest));
        assert_eq!(parse_sha256("zz"), None);
    }
}
