//! Access control against the real server: `auth.mode` none, token and jwt (HS256,
//! RS256, ES256), 401 against 403, the scope of every route, `access_token` on event
//! streams, the checks of `exp`, `nbf`, `aud` and `iss`, configuration errors naming the
//! key, and credentials kept out of the logs.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use grainstore::api::ROUTES;
use grainstore::config::{AuthMode, Config, Overrides, Secret, TokenConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{App, logs, spawn};
use uuid::Uuid;

fn data(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/auth")
        .join(name)
}

/// A fresh random token, so that each test can look for its own tokens in the logs.
fn fresh_token(label: &str) -> String {
    format!("{label}-{}", Uuid::new_v4().simple())
}

fn token(name: &str, token: &str, scopes: &[&str]) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        token: Secret::new(token),
        token_sha256: String::new(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    }
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn send(app: &App, method: Method, path: &str, bearer: Option<&str>) -> reqwest::Response {
    let mut request = app.client.request(method, app.url(path));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("request")
}

async fn problem(response: reqwest::Response) -> (StatusCode, Option<String>, Value) {
    let status = response.status();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    let body: Value = response.json().await.expect("problem body");
    assert_eq!(body["status"], status.as_u16());
    (status, challenge, body)
}

fn assert_not_logged(secrets: &[&str]) {
    let logs = logs();
    assert!(!logs.is_empty(), "the log capture is working");
    for secret in secrets {
        assert!(
            !logs.contains(secret),
            "a credential appears in the logs: {secret}"
        );
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn mode_none_lets_everyone_in_and_ignores_access_token() {
    let app = spawn(|_| {}).await;
    let (flow, _) = app.create_flow(None).await;
    assert_eq!(send(&app, Method::GET, "/flows", None).await.status(), 200);
    assert_eq!(
        send(&app, Method::GET, "/metrics", None).await.status(),
        200
    );
    // The strict query parsing of the handler never sees access_token.
    let response = app
        .client
        .get(app.url(&format!(
            "/flows/{flow}/grains?access_token=whatever&payload=none"
        )))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    assert_eq!(
        send(&app, Method::DELETE, &format!("/flows/{flow}"), None)
            .await
            .status(),
        204
    );
}

#[tokio::test]
async fn mode_none_on_a_public_address_warns_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path());
    config.server.listen = "0.0.0.0:0".parse().unwrap();
    let _app = support::spawn_config(config).await;
    support::eventually("the warning", || logs().contains("ACCESS CONTROL IS OFF")).await;
}

#[tokio::test]
async fn token_mode_401_403_and_open_routes() {
    let reader = fresh_token("reader");
    let writer = fresh_token("writer");
    let admin = fresh_token("admin");
    let hashed = fresh_token("hashed");
    let hashed_hex = sha256_hex(&hashed);
    let (r, w, a, h) = (
        reader.clone(),
        writer.clone(),
        admin.clone(),
        hashed_hex.clone(),
    );
    let app = spawn(move |c| {
        c.auth.mode = AuthMode::Token;
        c.auth.tokens = vec![
            token("reader", &r, &["read"]),
            token("writer", &w, &["write", "delete"]),
            token("admin", &a, &["admin"]),
            TokenConfig {
                name: "hashed".into(),
                token: Secret::default(),
                token_sha256: h,
                scopes: vec!["read".into()],
            },
        ];
    })
    .await;

    for open in ["/", "/healthz", "/readyz", "/openapi.yaml"] {
        assert_eq!(
            send(&app, Method::GET, open, None).await.status(),
            200,
            "{open}"
        );
    }

    // No credentials: 401 with a bare challenge.
    let (status, challenge, body) = problem(send(&app, Method::GET, "/flows", None).await).await;
    assert_eq!(status, 401);
    assert_eq!(challenge.as_deref(), Some("Bearer realm=\"grainstore\""));
    assert_eq!(body["type"], "urn:grainstore:problem:unauthorized");

    // An unknown token: 401 invalid_token.
    let (status, challenge, _) = problem(
        send(
            &app,
            Method::GET,
            "/flows",
            Some("not-a-known-token-at-all"),
        )
        .await,
    )
    .await;
    assert_eq!(status, 401);
    assert!(challenge.unwrap().contains("error=\"invalid_token\""));

    // Another scheme: 401.
    let response = app
        .client
        .get(app.url("/flows"))
        .basic_auth("user", Some("pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // Unknown paths need credentials too, so they reveal nothing.
    assert_eq!(
        send(&app, Method::GET, "/nothing", None).await.status(),
        401
    );
    assert_eq!(
        send(&app, Method::GET, "/nothing", Some(&reader))
            .await
            .status(),
        404
    );

    // Scopes.
    let (flow, _) = app.create_flow(Some(&writer)).await;
    let (status, challenge, body) = problem(
        app.client
            .put(app.url(&format!("/flows/{}", Uuid::new_v4())))
            .bearer_auth(&reader)
            .json(&json!({"source_id": Uuid::new_v4(), "format": "urn:x-nmos:format:data"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["type"], "urn:grainstore:problem:forbidden");
    let challenge = challenge.unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"write\""), "{challenge}");
    assert_eq!(
        send(&app, Method::GET, &format!("/flows/{flow}"), Some(&reader))
            .await
            .status(),
        200
    );
    assert_eq!(
        send(&app, Method::GET, &format!("/flows/{flow}"), Some(&hashed))
            .await
            .status(),
        200
    );
    assert_eq!(
        send(&app, Method::GET, &format!("/flows/{flow}"), Some(&writer))
            .await
            .status(),
        403
    );
    let (status, challenge, _) = problem(
        send(
            &app,
            Method::DELETE,
            &format!("/flows/{flow}"),
            Some(&reader),
        )
        .await,
    )
    .await;
    assert_eq!(status, 403);
    assert!(challenge.unwrap().contains("scope=\"delete\""));
    assert_eq!(
        send(&app, Method::GET, "/metrics", Some(&reader))
            .await
            .status(),
        200
    );
    assert_eq!(
        send(&app, Method::GET, "/metrics", None).await.status(),
        401
    );
    assert_eq!(send(&app, Method::GET, "/events", None).await.status(), 401);
    // admin holds every scope.
    assert_eq!(
        send(&app, Method::GET, "/flows", Some(&admin))
            .await
            .status(),
        200
    );
    assert_eq!(
        send(
            &app,
            Method::DELETE,
            &format!("/flows/{flow}"),
            Some(&admin)
        )
        .await
        .status(),
        204
    );

    // 401s and 403s are counted in the metrics, which name no credential.
    let metrics = send(&app, Method::GET, "/metrics", Some(&reader))
        .await
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("status=\"401\""), "{metrics}");
    for secret in [&reader, &writer, &admin, &hashed] {
        assert!(!metrics.contains(secret.as_str()));
    }
    assert_not_logged(&[&reader, &writer, &admin, &hashed, &hashed_hex]);
    // The request spans name the principal instead.
    assert!(logs().contains("principal=token:reader"));
}

/// Every route of `ROUTES` and every method it takes: a token with only the scope the
/// method needs gets past authorization, and tokens with the other scopes get 403.
#[tokio::test]
async fn every_route_declares_its_scope() {
    let scopes = ["read", "write", "delete"];
    let tokens: Vec<String> = scopes.iter().map(|s| fresh_token(s)).collect();
    let configured = tokens.clone();
    let app = spawn(move |c| {
        c.auth.mode = AuthMode::Token;
        c.auth.tokens = scopes
            .iter()
            .zip(&configured)
            .map(|(s, t)| token(s, t, &[s]))
            .collect();
    })
    .await;
    let flow = Uuid::new_v4();
    for (template, methods) in ROUTES {
        let path = template
            .replace("{id}", &flow.to_string())
            .replace("{timestamp}", "1:0");
        for method in *methods {
            let method: Method = method.to_uppercase().parse().unwrap();
            let open = ["/", "/healthz", "/readyz", "/openapi.yaml"].contains(template);
            let needed = match method {
                Method::GET | Method::HEAD => "read",
                Method::DELETE => "delete",
                _ => "write",
            };
            let anonymous = send(&app, method.clone(), &path, None).await.status();
            if open {
                assert_ne!(anonymous, 401, "{method} {template} is open");
                continue;
            }
            assert_eq!(anonymous, 401, "{method} {template} without credentials");
            for (scope, token) in scopes.iter().zip(&tokens) {
                let status = send(&app, method.clone(), &path, Some(token))
                    .await
                    .status();
                if *scope == needed {
                    assert!(
                        status != 401 && status != 403,
                        "{method} {template} with {scope}: {status}"
                    );
                } else {
                    assert_eq!(status, 403, "{method} {template} with {scope}");
                }
            }
        }
    }
}

#[tokio::test]
async fn access_token_is_taken_on_event_streams_only() {
    let reader = fresh_token("sse-reader");
    let r = reader.clone();
    let app = spawn(move |c| {
        c.auth.mode = AuthMode::Token;
        c.auth.tokens = vec![token("sse", &r, &["read", "write"])];
    })
    .await;
    let (flow, _) = app.create_flow(Some(&reader)).await;
    let sse = |path: String| {
        app.client
            .get(app.url(&path))
            .header("accept", "text/event-stream")
    };
    // A subscription with other parameters beside the token.
    let response = sse(format!(
        "/flows/{flow}/grains?after=0:0&access_token={reader}&payload=none"
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    drop(response);
    let response = sse(format!("/events?access_token={reader}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    // A wrong one is refused.
    let response = sse(format!("/events?access_token=wrong-{}", Uuid::new_v4()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // Not on ordinary requests: tokens in URLs end up in proxies' logs.
    let (status, challenge, _) = problem(
        send(
            &app,
            Method::GET,
            &format!("/flows?access_token={reader}"),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 400);
    assert!(challenge.unwrap().contains("invalid_request"));
    // Not both ways at once.
    let response = sse(format!("/events?access_token={reader}"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_not_logged(&[&reader]);
}

fn hs256(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn jwt_hs256_checks_signature_exp_nbf_aud_iss_and_scopes() {
    let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let s = secret.clone();
    let app = spawn(move |c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt.algorithms = vec!["HS256".into()];
        c.auth.jwt.hs256_secret = Secret::new(s);
        c.auth.jwt.audience = vec!["grainstore".into()];
        c.auth.jwt.issuer = vec!["https://issuer.example".into()];
        c.auth.jwt.leeway_secs = 0;
        c.auth.scopes.read = "tams-api/read".into();
        c.auth.scopes.write = "tams-api/write".into();
        c.auth.scopes.delete = "tams-api/delete".into();
        c.auth.scopes.admin = "tams-api/admin".into();
    })
    .await;
    let base = json!({
        "sub": "ingest-1",
        "iss": "https://issuer.example",
        "aud": "grainstore",
        "exp": now() + 600,
        "scope": "openid tams-api/read tams-api/write",
    });
    let with = |changes: Value| {
        let mut claims = base.clone();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        hs256(&secret, &claims)
    };
    let good = with(json!({}));
    let (flow, _) = app.create_flow(Some(&good)).await;
    assert_eq!(
        send(&app, Method::GET, &format!("/flows/{flow}"), Some(&good))
            .await
            .status(),
        200
    );
    // A scope the token lacks.
    let (status, challenge, _) =
        problem(send(&app, Method::DELETE, &format!("/flows/{flow}"), Some(&good)).await).await;
    assert_eq!(status, 403);
    assert!(challenge.unwrap().contains("scope=\"tams-api/delete\""));
    // The plain scope names mean nothing here.
    let plain = with(json!({"scope": "read write delete admin"}));
    assert_eq!(
        send(&app, Method::GET, "/flows", Some(&plain))
            .await
            .status(),
        403
    );

    let refused: Vec<(&str, String, &str)> = vec![
        ("expired", with(json!({"exp": now() - 10})), "exp"),
        ("not yet valid", with(json!({"nbf": now() + 600})), "nbf"),
        ("wrong audience", with(json!({"aud": "other"})), "aud"),
        ("no audience", with(json!({"aud": null})), "aud"),
        (
            "wrong issuer",
            with(json!({"iss": "https://evil.example"})),
            "iss",
        ),
        ("no expiry", with(json!({"exp": null})), "exp"),
        (
            "wrong secret",
            hs256("another secret, long enough to be accepted", &base),
            "signature",
        ),
        ("garbage", "a.b.c".to_owned(), "JWT"),
    ];
    for (what, token, mention) in &refused {
        let (status, challenge, body) =
            problem(send(&app, Method::GET, "/flows", Some(token)).await).await;
        assert_eq!(status, 401, "{what}");
        assert!(challenge.unwrap().contains("invalid_token"), "{what}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(mention), "{what}: {detail}");
    }
    // alg "none" is never accepted.
    let unsigned = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(base.to_string())
        )
    };
    assert_eq!(
        send(&app, Method::GET, "/flows", Some(&unsigned))
            .await
            .status(),
        401
    );
    let mut secrets: Vec<&str> = refused.iter().map(|(_, t, _)| t.as_str()).collect();
    secrets.extend([good.as_str(), plain.as_str(), secret.as_str()]);
    assert_not_logged(&secrets);
}

#[tokio::test]
async fn jwt_rs256_and_es256_with_public_keys() {
    for (alg, private, public) in [
        (Algorithm::RS256, "rs256-private.pem", "rs256-public.pem"),
        (Algorithm::ES256, "es256-private.pem", "es256-public.pem"),
    ] {
        let app = spawn(|c| {
            c.auth.mode = AuthMode::Jwt;
            // Inferred from the key.
            c.auth.jwt.algorithms = vec![];
            c.auth.jwt.public_key_file = data(public);
        })
        .await;
        let pem = std::fs::read(data(private)).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let claims = json!({"sub": "viewer", "exp": now() + 600, "scope": "read"});
        let signed = jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap();
        assert_eq!(
            send(&app, Method::GET, "/flows", Some(&signed))
                .await
                .status(),
            200,
            "{alg:?}"
        );
        assert_eq!(
            app.client
                .get(app.url(&format!("/events?access_token={signed}")))
                .header("accept", "text/event-stream")
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let expired = jsonwebtoken::encode(
            &Header::new(alg),
            &json!({"sub": "viewer", "exp": now() - 120, "scope": "read"}),
            &key,
        )
        .unwrap();
        assert_eq!(
            send(&app, Method::GET, "/flows", Some(&expired))
                .await
                .status(),
            401
        );
        // Algorithm confusion: an HS256 token keyed with the public key is refused.
        let public_pem = std::fs::read(data(public)).unwrap();
        let confused = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&public_pem),
        )
        .unwrap();
        let (status, _, body) =
            problem(send(&app, Method::GET, "/flows", Some(&confused)).await).await;
        assert_eq!(status, 401);
        assert!(body["detail"].as_str().unwrap().contains("algorithm"));
        assert_not_logged(&[&signed, &expired, &confused]);
    }
}

fn load(env: &[(&str, &str)]) -> Result<Config, String> {
    Config::load_from(
        None,
        env.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>(),
        &Overrides::default(),
    )
    .map_err(|e| e.to_string())
}

#[test]
fn configuration_errors_name_the_key_and_secrets_come_from_elsewhere() {
    let err = load(&[("GRAINSTORE__AUTH__MODE", "maybe")]).unwrap_err();
    assert!(err.contains("auth.mode"), "{err}");
    let err = load(&[("GRAINSTORE__AUTH__MODE", "token")]).unwrap_err();
    assert!(err.contains("auth.tokens"), "{err}");
    let err = load(&[("GRAINSTORE__AUTH__MODE", "jwt")]).unwrap_err();
    assert!(err.contains("auth.jwt"), "{err}");
    let err = load(&[
        ("GRAINSTORE__AUTH__MODE", "jwt"),
        ("GRAINSTORE__AUTH__JWT__HS256_SECRET", "short"),
    ])
    .unwrap_err();
    assert!(err.contains("auth.jwt.hs256_secret"), "{err}");
    let err = load(&[
        ("GRAINSTORE__AUTH__MODE", "jwt"),
        (
            "GRAINSTORE__AUTH__JWT__PUBLIC_KEY_FILE",
            "/nonexistent/key.pem",
        ),
    ])
    .unwrap_err();
    assert!(err.contains("auth.jwt.public_key_file"), "{err}");

    // The HS256 secret from the environment, kept out of Debug output.
    let secret = "an HS256 secret from the environment, 32+ bytes";
    let config = load(&[
        ("GRAINSTORE__AUTH__MODE", "jwt"),
        ("GRAINSTORE__AUTH__JWT__HS256_SECRET", secret),
    ])
    .unwrap();
    assert_eq!(config.auth.jwt.hs256_secret.expose(), secret);
    assert!(!format!("{config:?}").contains(secret));

    // Tokens from a separate file, named by the environment.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let plain = "a-token-from-the-tokens-file";
    std::fs::write(
        &file,
        format!(
            "[[tokens]]\nname = \"a\"\ntoken = \"{plain}\"\nscopes = [\"read\"]\n\
             [[tokens]]\nname = \"b\"\ntoken_sha256 = \"{}\"\nscopes = [\"write\"]\n",
            sha256_hex("another")
        ),
    )
    .unwrap();
    let config = load(&[
        ("GRAINSTORE__AUTH__MODE", "token"),
        ("GRAINSTORE__AUTH__TOKENS_FILE", file.to_str().unwrap()),
    ])
    .unwrap();
    assert!(!format!("{config:?}").contains(plain));
    std::fs::write(&file, "[[tokens]]\ntoken = \"x\"\nscopes = [\"read\"]\n").unwrap();
    let err = load(&[
        ("GRAINSTORE__AUTH__MODE", "token"),
        ("GRAINSTORE__AUTH__TOKENS_FILE", file.to_str().unwrap()),
    ])
    .unwrap_err();
    assert!(err.contains("auth.tokens_file"), "{err}");
    std::fs::write(
        &file,
        "[[tokens]]\ntoken = \"long-enough-token-here\"\nscopes = [\"root\"]\n",
    )
    .unwrap();
    let err = load(&[
        ("GRAINSTORE__AUTH__MODE", "token"),
        ("GRAINSTORE__AUTH__TOKENS_FILE", file.to_str().unwrap()),
    ])
    .unwrap_err();
    assert!(err.contains("unknown scope"), "{err}");
}

#[tokio::test]
async fn tokens_file_tokens_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let reader = fresh_token("file-reader");
    std::fs::write(
        &file,
        format!(
            "[[tokens]]\nname = \"r\"\ntoken_sha256 = \"{}\"\nscopes = [\"read\"]\n",
            sha256_hex(&reader)
        ),
    )
    .unwrap();
    let app = spawn(move |c| {
        c.auth.mode = AuthMode::Token;
        c.auth.tokens_file = file;
    })
    .await;
    assert_eq!(
        send(&app, Method::GET, "/flows", Some(&reader))
            .await
            .status(),
        200
    );
    assert_eq!(send(&app, Method::GET, "/flows", None).await.status(), 401);
}
