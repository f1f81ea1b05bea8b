//! openapi.yaml against the server: the spec's operations are exactly the router's
//! routes, its version is the API's, every operation documents its errors as problem
//! documents, every `$ref` resolves, and the running server serves the file verbatim.
//!
//! `HEAD` is implicit in the spec: every `GET` answers it (axum does), so the spec lists
//! `get` only and [`ROUTES`] must pair every `head` with a `get` and the reverse.

use std::collections::BTreeSet;

use grainstore::api::ROUTES;
use grainstore::api::service::{API_VERSION, OPENAPI_YAML};
use grainstore::config::{Config, Overrides};
use grainstore::server::Server;
use serde_json::Value;
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

/// The running server serves openapi.yaml as the file in the repository, and answers
/// HEAD for every GET.
#[tokio::test]
async fn the_server_serves_the_file() {
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

    let _ = stop.send(());
    running.await.expect("server task").expect("server run");
}
