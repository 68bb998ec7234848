//! Generates the SDK (`$OUT_DIR/codegen.rs`) from `openapi.yaml` with progenitor, builder style:
//! `client.create_session().body(...).send().await`.

use std::path::Path;

fn main() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.yaml");
    println!("cargo:rerun-if-changed={}", src.display());
    let text = std::fs::read_to_string(&src).expect("read openapi.yaml");
    let spec: openapiv3::OpenAPI =
        serde_yaml::from_str(&text).expect("openapi.yaml is a valid OpenAPI 3.0 document");
    let mut generator = progenitor::Generator::new(
        progenitor::GenerationSettings::default()
            .with_interface(progenitor::InterfaceStyle::Builder)
            .with_tag(progenitor::TagStyle::Merged)
            .with_derive("PartialEq"),
    );
    let tokens = generator
        .generate_tokens(&spec)
        .unwrap_or_else(|e| panic!("progenitor cannot generate the SDK from openapi.yaml: {e}"));
    let file = syn::parse2(tokens).expect("generated code parses");
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR is set")).join("codegen.rs");
    std::fs::write(out, prettyplease::unparse(&file)).expect("write codegen.rs");
}
