//! Deployment files stay valid: every promgate config in `deploy/` (files and the
//! Kubernetes ConfigMap's `promgate.toml`) passes `promgate check-config`, and every YAML
//! file parses, with `apiVersion` and `kind` on each Kubernetes document.

use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("deploy dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn check_config(path: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_promgate"))
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .expect("run promgate");
    assert!(
        output.status.success(),
        "{} fails check-config:\n{}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn deploy_configs_pass_check_config_and_manifests_parse() {
    let mut all = Vec::new();
    files(Path::new("deploy"), &mut all);
    let (mut configs, mut manifests) = (0, 0);
    for path in &all {
        let name = path.display().to_string();
        match path.extension().and_then(|ext| ext.to_str()) {
            Some("toml") => {
                check_config(path);
                configs += 1;
            }
            Some("yaml") | Some("yml") => {
                let text = std::fs::read_to_string(path).expect("read");
                let documents =
                    YamlLoader::load_from_str(&text).unwrap_or_else(|err| panic!("{name}: {err}"));
                assert!(!documents.is_empty(), "{name} is empty");
                for document in &documents {
                    assert!(
                        matches!(document, Yaml::Hash(_)),
                        "{name}: a document is not a mapping"
                    );
                    if name.contains("kubernetes") {
                        assert!(
                            document["apiVersion"].as_str().is_some(),
                            "{name}: no apiVersion"
                        );
                        assert!(document["kind"].as_str().is_some(), "{name}: no kind");
                        if let Some(embedded) = document["data"]["promgate.toml"].as_str() {
                            let dir = tempfile::tempdir().expect("tempdir");
                            let config = dir.path().join("promgate.toml");
                            std::fs::write(&config, embedded).expect("write");
                            check_config(&config);
                            configs += 1;
                        }
                    }
                }
                manifests += 1;
            }
            _ => {}
        }
    }
    assert!(configs >= 3, "promgate configs checked: {configs}");
    assert!(manifests >= 8, "YAML files parsed: {manifests}");
}
