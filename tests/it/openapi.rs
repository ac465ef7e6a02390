//! The committed spec is the generated one.

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let generated = keyward::http::api::openapi_json();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/keyward.json");
    if std::env::var_os("KEYWARD_UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/keyward.json differs from the code; regenerate it with `KEYWARD_UPDATE_OPENAPI=1 cargo test --test it openapi`"
    );
}
