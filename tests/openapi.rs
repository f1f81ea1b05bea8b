//! openapi.yaml against the server: the spec's operations are exactly the router's
//! routes (through [`ROUTES`], which the running server's `Allow` answers check), its
//! version is the API's, every operation documents its errors as problem documents and
//! gives examples of its parameters, bodies and successes, its access control and live
//! stream limits are the ones `api::auth` and `api::live` apply, its problem types are
//! the ones the code makes, every `$ref` resolves, and the running server serves the file
//! verbatim.
//!
//! `HEAD` is implicit in the spec: every `GET` answers it (axum does), so the spec lists
//! `get` only and [`ROUTES`] must pair every `head` with a `get` and the reverse.

use std::collections::BTreeSet;

use axum::http::{HeaderMap, HeaderValue, Method, header};
use grainstore::api::ROUTES;
use grainstore::api::auth::{Scope, required_scope};
use grainstore::api::live::is_live_request;
use grainstore::api::service::{API_VERSION, OPENAPI_YAML};
use grainstore::config::{Config, Overrides};
use grainstore::server::{Server, ServerError};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The operation keys of an OpenAPI path item.
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn spec() -> Value {
    serde_norway::from_str(OPENAPI_YAML).expect("openapi.yaml is valid YAML")
}

/// Follows a local `$ref` (`#/a/b`) to what it names.
fn resolve<'a>(spec: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    spec.pointer(pointer)
}

/// `value`, or what it refers to when it is a `{"$ref": ...}` object.
fn deref<'a>(spec: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            resolve(spec, reference).unwrap_or_else(|| panic!("unresolved $ref {reference}"))
        }
        None => value,
    }
}

/// Every (path, method, operation) of the spec.
fn operations(spec: &Value) -> Vec<(String, String, &Value)> {
    let paths = spec["paths"].as_object().expect("paths is an object");
    let mut out = Vec::new();
    for (path, item) in paths {
        let item = item.as_object().expect("a path item is an object");
        for (key, operation) in item {
            if METHODS.contains(&key.as_str()) {
                out.push((path.clone(), key.clone(), operation));
            }
        }
    }
    out
}

#[test]
fn versions() {
    let spec = spec();
    assert_eq!(spec["openapi"], "3.1.0");
    assert_eq!(
        spec["info"]["version"], API_VERSION,
        "info.version must be API_VERSION"
    );
}

#[test]
fn operations_are_the_routes() {
    let spec = spec();
    let mut routes = BTreeSet::new();
    for (path, methods) in ROUTES {
        let methods: BTreeSet<&str> = methods.iter().copied().collect();
        assert_eq!(
            methods.contains("get"),
            methods.contains("head"),
            "{path}: every GET answers HEAD, and HEAD comes only with GET"
        );
        for method in methods {
            if method != "head" {
                routes.insert((path.to_string(), method.to_string()));
            }
        }
    }
    let mut documented = BTreeSet::new();
    for (path, method, _) in operations(&spec) {
        assert_ne!(
            method, "head",
            "{path}: HEAD is implicit for GET; do not list it"
        );
        assert!(
            documented.insert((path.clone(), method.clone())),
            "{method} {path} twice"
        );
    }
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routes).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.yaml: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "operations in openapi.yaml the router does not serve: {unrouted:?}"
    );
}

#[test]
fn every_operation_is_complete() {
    let spec = spec();
    let mut ids = BTreeSet::new();
    for (path, method, operation) in operations(&spec) {
        let name = format!("{} {path}", method.to_uppercase());
        let id = operation["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no operationId"));
        assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");

        // Every `{param}` of the path is declared, at the path or the operation.
        let item = &spec["paths"][&path];
        let declared: BTreeSet<String> = [&item["parameters"], &operation["parameters"]]
            .into_iter()
            .filter_map(Value::as_array)
            .flatten()
            .map(|p| deref(&spec, p))
            .filter(|p| p["in"] == "path")
            .map(|p| {
                assert_eq!(p["required"], true, "{name}: path parameters are required");
                p["name"]
                    .as_str()
                    .expect("a parameter has a name")
                    .to_owned()
            })
            .collect();
        let in_template: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_owned)
            .collect();
        assert_eq!(declared, in_template, "{name}: path parameters");

        let responses = operation["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} has no responses"));
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{name} documents no success"
        );
        let mut problems = 0;
        for (status, response) in responses {
            let code: u16 = status
                .parse()
                .unwrap_or_else(|_| panic!("{name}: status {status:?} is not a code"));
            let response = deref(&spec, response);
            assert!(
                response["headers"].get("x-request-id").is_some(),
                "{name} {status}: every response carries x-request-id"
            );
            if code >= 400 {
                let content = response["content"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{name} {status}: an error has a body"));
                assert_eq!(
                    content.keys().collect::<Vec<_>>(),
                    ["application/problem+json"],
                    "{name} {status}: errors are problem documents"
                );
                let schema = deref(&spec, &content["application/problem+json"]["schema"]);
                assert_eq!(
                    schema, &spec["components"]["schemas"]["Problem"],
                    "{name} {status}: errors use the Problem schema"
                );
                problems += 1;
            }
        }
        assert!(problems > 0, "{name} documents no problem+json error");
        assert!(
            responses.contains_key("503"),
            "{name}: any request may be shed with 503"
        );
    }
}

/// Whether `object` (a parameter, media type or schema) has an `example` or `examples`.
fn has_example(object: &Value) -> bool {
    object.get("example").is_some()
        || object
            .get("examples")
            .is_some_and(|examples| match examples {
                Value::Array(items) => !items.is_empty(),
                Value::Object(named) => !named.is_empty(),
                _ => false,
            })
}

/// Every operation gives examples: of each parameter (on the parameter or its schema;
/// an `enum` or a boolean lists its values already), of each request body media type,
/// and of each media type of its 2xx responses (on the media type object or its schema).
#[test]
fn every_operation_has_examples() {
    let spec = spec();
    let mut missing = Vec::new();
    for (path, method, operation) in operations(&spec) {
        let name = format!("{} {path}", method.to_uppercase());
        let item = &spec["paths"][&path];
        for parameter in [&item["parameters"], &operation["parameters"]]
            .into_iter()
            .filter_map(Value::as_array)
            .flatten()
        {
            let parameter = deref(&spec, parameter);
            let schema = deref(&spec, &parameter["schema"]);
            if schema.get("enum").is_some() || schema["type"] == "boolean" {
                continue;
            }
            if !has_example(parameter) && !has_example(schema) {
                missing.push(format!(
                    "{name}: parameter {} ({})",
                    parameter["name"], parameter["in"]
                ));
            }
        }
        let media_types = |owner: &Value| -> Vec<(String, Value)> {
            deref(&spec, owner)["content"]
                .as_object()
                .map(|content| {
                    content
                        .iter()
                        .map(|(media, object)| (media.clone(), object.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut bodies: Vec<(String, Value)> = Vec::new();
        if let Some(body) = operation.get("requestBody") {
            for (media, object) in media_types(body) {
                bodies.push((format!("request body {media}"), object));
            }
        }
        if let Some(responses) = operation["responses"].as_object() {
            for (status, response) in responses {
                if status.starts_with('2') {
                    for (media, object) in media_types(response) {
                        bodies.push((format!("{status} {media}"), object));
                    }
                }
            }
        }
        for (what, object) in bodies {
            if !has_example(&object) && !has_example(deref(&spec, &object["schema"])) {
                missing.push(format!("{name}: {what}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "openapi.yaml lacks examples: {missing:#?}"
    );
}

/// The `$ref` of an operation's response for `status`, if it has one.
fn response_ref<'a>(operation: &'a Value, status: &str) -> Option<&'a str> {
    operation["responses"][status]["$ref"].as_str()
}

/// Whether `response` documents the header `name`, and whether it is required there.
fn header_of(spec: &Value, response: &Value, name: &str) -> Option<bool> {
    let response = deref(spec, response);
    let header = deref(spec, response["headers"].get(name)?);
    Some(header["required"] == true)
}

#[test]
fn access_control_is_the_servers() {
    let spec = spec();
    assert_eq!(spec["security"], json!([{ "bearerAuth": [] }]));
    let schemes = &spec["components"]["securitySchemes"];
    assert_eq!(schemes["bearerAuth"]["type"], "http");
    assert_eq!(schemes["bearerAuth"]["scheme"], "bearer");
    assert_eq!(schemes["accessTokenQuery"]["type"], "apiKey");
    assert_eq!(schemes["accessTokenQuery"]["in"], "query");
    assert_eq!(schemes["accessTokenQuery"]["name"], "access_token");

    let mut event_stream = HeaderMap::new();
    event_stream.insert(
        header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    );
    for (path, method, operation) in operations(&spec) {
        let name = format!("{} {path}", method.to_uppercase());
        let http_method: Method = method.to_uppercase().parse().expect("a method");
        let responses = &operation["responses"];
        let Some(scope) = required_scope(Some(&path), &http_method) else {
            assert_eq!(operation["security"], json!([{}]), "{name} is open");
            assert!(operation.get("x-scope").is_none(), "{name} is open");
            for status in ["401", "403"] {
                assert!(
                    responses.get(status).is_none(),
                    "{name} is open: it never answers {status}"
                );
            }
            continue;
        };
        let scope = match scope {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Delete => "delete",
            Scope::Admin => "admin",
        };
        assert_eq!(operation["x-scope"], scope, "{name}: x-scope");

        // Only event streams take `access_token`.
        let live = is_live_request(Some(&path), &http_method, &event_stream, None);
        let security = operation.get("security").cloned().unwrap_or(Value::Null);
        if live {
            assert_eq!(
                security,
                json!([{ "bearerAuth": [] }, { "accessTokenQuery": [] }]),
                "{name}: an event stream takes the header or access_token"
            );
        } else {
            assert_eq!(
                security,
                Value::Null,
                "{name}: the top-level security applies"
            );
        }

        assert_eq!(
            response_ref(operation, "401"),
            Some("#/components/responses/Unauthorized"),
            "{name}: 401"
        );
        assert!(
            matches!(
                response_ref(operation, "403"),
                Some("#/components/responses/Forbidden")
                    | Some("#/components/responses/ForbiddenOrReadOnly")
            ),
            "{name}: 403"
        );
        for status in ["400", "401", "403"] {
            assert!(
                header_of(&spec, &responses[status], "WWW-Authenticate").is_some(),
                "{name} {status}: WWW-Authenticate is documented"
            );
        }
        for status in ["401", "403"] {
            let required = header_of(&spec, &responses[status], "WWW-Authenticate");
            if response_ref(operation, status) != Some("#/components/responses/ForbiddenOrReadOnly")
            {
                assert_eq!(required, Some(true), "{name} {status}: always a challenge");
            }
        }

        // Live stream limits, and storage faults on writes, come with Retry-After.
        let mut retry = vec!["503"];
        if live {
            retry.push("429");
        }
        if http_method != Method::GET {
            retry.push("507");
        }
        for status in retry {
            assert!(responses.get(status).is_some(), "{name}: {status}");
            assert_eq!(
                header_of(&spec, &responses[status], "Retry-After"),
                Some(true),
                "{name} {status}: Retry-After"
            );
        }
    }
}

/// The `Problem` schema's `type` enum is exactly the set of problem types in `src`.
#[test]
fn problem_types_are_the_codes() {
    fn scan(dir: &std::path::Path, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                scan(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read a source file");
                const PREFIX: &str = "urn:grainstore:problem:";
                for (at, _) in text.match_indices(PREFIX) {
                    let rest = &text[at + PREFIX.len()..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_lowercase() || c == '-'))
                        .unwrap_or(rest.len());
                    found.insert(format!("{PREFIX}{}", &rest[..end]));
                }
            }
        }
    }
    let mut in_code = BTreeSet::new();
    scan(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut in_code,
    );
    let spec = spec();
    let documented: BTreeSet<String> =
        spec["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
            .as_array()
            .expect("Problem.type is an enum")
            .iter()
            .map(|v| v.as_str().expect("a URN").to_owned())
            .collect();
    assert_eq!(documented, in_code, "Problem.type against src");
}

#[test]
fn every_ref_resolves() {
    fn walk(spec: &Value, value: &Value, at: &str, broken: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(reference) = map.get("$ref") {
                    match reference.as_str() {
                        Some(r) if r.starts_with("#/") && resolve(spec, r).is_some() => {}
                        _ => broken.push(format!("{at}: {reference}")),
                    }
                }
                for (key, child) in map {
                    walk(spec, child, &format!("{at}/{key}"), broken);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(spec, child, &format!("{at}/{i}"), broken);
                }
            }
            _ => {}
        }
    }
    let spec = spec();
    let mut broken = Vec::new();
    walk(&spec, &spec, "#", &mut broken);
    assert!(broken.is_empty(), "unresolved $refs: {broken:#?}");
}

/// The real server (`api::router()` behind the whole middleware stack, with the default
/// configuration) on a free port of 127.0.0.1, with its own data directory.
struct Running {
    base: String,
    stop: oneshot::Sender<()>,
    running: tokio::task::JoinHandle<Result<(), ServerError>>,
    _data_dir: tempfile::TempDir,
}

impl Running {
    async fn start() -> Running {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".parse().expect("address")),
            data_dir: Some(data_dir.path().to_path_buf()),
        };
        let config =
            Config::load_from(None, Vec::<(String, String)>::new(), &overrides).expect("config");
        let server = Server::bind(config).await.expect("bind");
        let base = format!("http://{}", server.local_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Running {
            base,
            stop,
            running,
            _data_dir: data_dir,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.running
            .await
            .expect("server task")
            .expect("server run");
    }
}

/// The running server serves openapi.yaml as the file in the repository, and answers
/// HEAD for every GET.
#[tokio::test]
async fn the_server_serves_the_file() {
    let server = Running::start().await;
    let base = &server.base;
    let client = reqwest::Client::new();

    let response = client
        .get(format!("{base}/openapi.yaml"))
        .send()
        .await
        .expect("GET /openapi.yaml");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/yaml");
    let served = response.bytes().await.expect("body");
    let file = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
        .expect("read openapi.yaml");
    assert!(
        served[..] == file[..],
        "GET /openapi.yaml is not openapi.yaml byte for byte ({} bytes served, {} in the file)",
        served.len(),
        file.len()
    );

    for (path, methods) in ROUTES {
        if path.contains('{') || !methods.contains(&"get") {
            continue;
        }
        let get = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("GET");
        let head = client
            .head(format!("{base}{path}"))
            .send()
            .await
            .expect("HEAD");
        assert_eq!(head.status(), get.status(), "HEAD {path}");
        assert!(head.status().is_success(), "HEAD {path}: {}", head.status());
        assert_eq!(
            head.headers().get("content-type"),
            get.headers().get("content-type"),
            "HEAD {path}"
        );
        assert!(head.bytes().await.expect("HEAD body").is_empty());
    }

    server.stop().await;
}

/// `path` of ROUTES with its placeholders filled with valid values: a fresh flow or
/// source id and the timestamp `0:0`.
fn concrete(path: &str) -> String {
    path.replace("{id}", &uuid::Uuid::new_v4().to_string())
        .replace("{timestamp}", "0:0")
}

/// The problem document of `response`, after checking its status and content type.
async fn problem(response: reqwest::Response, status: u16, what: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "{what}");
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json",
        "{what}"
    );
    let problem: Value = response.json().await.expect("a problem document");
    assert_eq!(problem["status"], status, "{what}");
    problem
}

/// [`ROUTES`] is the router `api::router()` builds: its paths are the ones the router was
/// built with (`api::routed_paths`), and, as the running server tells it, for every path a
/// method it does not take (PATCH, which no route takes) is a 405 problem whose `Allow`
/// lists exactly the route's methods (`HEAD` with `GET`, which axum adds); paths ROUTES
/// does not have are 404 problems. With `operations_are_the_routes`, the spec's
/// operations are the router's.
#[tokio::test]
async fn routes_are_the_routers() {
    const PROBE: Method = Method::PATCH;
    let routed: BTreeSet<&str> = grainstore::api::routed_paths().into_iter().collect();
    let listed: BTreeSet<&str> = ROUTES.iter().map(|(path, _)| *path).collect();
    assert_eq!(routed, listed, "the router's paths against ROUTES");
    let server = Running::start().await;
    let client = reqwest::Client::new();

    for (template, methods) in ROUTES {
        assert!(
            !methods.contains(&"patch"),
            "{template}: a route takes PATCH; probe with another method"
        );
        let expected: BTreeSet<String> = methods.iter().map(|m| m.to_uppercase()).collect();
        let path = concrete(template);
        let response = client
            .request(PROBE, format!("{}{path}", server.base))
            .send()
            .await
            .expect("PATCH");
        let status = response.status();
        assert_eq!(
            status, 405,
            "PATCH {path}: {status}, not 405 (a 404: the router has no route {template}; \
             anything else: the route takes PATCH)"
        );
        let allow = response
            .headers()
            .get(header::ALLOW)
            .unwrap_or_else(|| panic!("PATCH {path}: a 405 without Allow"))
            .to_str()
            .expect("Allow is text")
            .to_owned();
        let allowed: BTreeSet<String> = allow
            .split(',')
            .map(|m| m.trim().to_uppercase())
            .filter(|m| !m.is_empty())
            .collect();
        assert_eq!(
            allowed, expected,
            "{template}: the router's methods (Allow: {allow}) against ROUTES"
        );
        let problem = problem(response, 405, &format!("PATCH {path}")).await;
        assert_eq!(
            problem["type"], "urn:grainstore:problem:method-not-allowed",
            "PATCH {path}"
        );
    }

    let id = uuid::Uuid::new_v4();
    for path in [
        format!("/flows/{id}/segments"),
        format!("/flows/{id}/grains/0:0/x"),
        format!("/flows/{id}/grains/"),
        format!("/sources/{id}/flows"),
        "/service".to_owned(),
        "/flows/".to_owned(),
    ] {
        assert!(
            !ROUTES
                .iter()
                .any(|(template, _)| concrete(template) == path),
            "{path} is in ROUTES"
        );
        for method in [Method::GET, PROBE] {
            let response = client
                .request(method.clone(), format!("{}{path}", server.base))
                .send()
                .await
                .expect("request");
            let what = format!("{method} {path}, a path the service does not have");
            let problem = problem(response, 404, &what).await;
            assert_eq!(
                problem["type"], "urn:grainstore:problem:not-found",
                "{what}"
            );
        }
    }

    server.stop().await;
}
