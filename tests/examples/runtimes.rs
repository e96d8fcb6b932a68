//! The five example programs and the runtimes they need: each is run as an MIS developer runs
//! it, with Java compiled and C# built once per test run (not once per example run).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

/// Longest an example may take: its own poll timeout (`POLL_TIMEOUT_SECS`) plus start-up.
const RUN_DEADLINE: Duration = Duration::from_secs(90);
/// Names of languages to leave out, comma-separated; a missing runtime fails the test otherwise.
pub const SKIP_VAR: &str = "EXAMPLES_SKIP";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Bash,
    Python,
    Php,
    Java,
    CSharp,
}

pub const ALL: [Lang; 5] = [
    Lang::Bash,
    Lang::Python,
    Lang::Php,
    Lang::Java,
    Lang::CSharp,
];

impl Lang {
    pub fn name(self) -> &'static str {
        match self {
            Lang::Bash => "bash",
            Lang::Python => "python",
            Lang::Php => "php",
            Lang::Java => "java",
            Lang::CSharp => "csharp",
        }
    }

    /// The programs this language's example needs on the PATH.
    fn programs(self) -> &'static [&'static str] {
        match self {
            Lang::Bash => &["bash", "curl", "jq", "sha256sum", "iconv"],
            Lang::Python => &["python3"],
            Lang::Php => &["php"],
            Lang::Java => &["java", "javac"],
            Lang::CSharp => &["mcs", "mono"],
        }
    }
}

pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The languages to test: every one, less those `EXAMPLES_SKIP` names. Panics when a runtime
/// is missing and not skipped, so that a bare machine cannot pass by testing nothing.
///
/// Builds Java and C# the first time, so call it before starting a gateway: building blocks
/// the thread, and with it the test's runtime, where the gateway, its worker and the sandbox
/// run (a Kiva call stalled past its timeout would be held, and the example exit 5).
pub fn languages() -> Vec<Lang> {
    let skip = std::env::var(SKIP_VAR).unwrap_or_default();
    let skipped: Vec<&str> = skip.split(',').map(str::trim).collect();
    let languages: Vec<Lang> = ALL
        .into_iter()
        .filter(|lang| !skipped.contains(&lang.name()))
        .inspect(|lang| {
            for program in lang.programs() {
                assert!(
                    on_path(program),
                    "`{program}` is missing, so the {} example can't be tested: run \
                     scripts/install-deps, or set {SKIP_VAR}={} to leave it out",
                    lang.name(),
                    lang.name()
                );
            }
            if *lang == Lang::Php {
                php_has_curl();
            }
        })
        .collect();
    BUILT.get_or_init(|| build(&languages));
    languages
}

fn php_has_curl() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let status = std::process::Command::new("php")
            .args(["-r", "exit(function_exists('curl_init') ? 0 : 1);"])
            .status()
            .expect("php runs");
        assert!(
            status.success(),
            "PHP's curl extension is missing: run scripts/install-deps (php-curl)"
        );
    });
}

/// Where Java's classes and C#'s executable are, built once per test binary run.
static BUILT: OnceLock<PathBuf> = OnceLock::new();

fn built() -> &'static Path {
    BUILT.get().expect("languages() builds the examples first")
}

fn build(languages: &[Lang]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mis-examples");
    std::fs::create_dir_all(&dir).unwrap();
    if languages.contains(&Lang::Java) {
        compile("javac", |c| {
            c.arg("-d")
                .arg(&dir)
                .arg(examples_dir().join("Submit.java"));
        });
    }
    if languages.contains(&Lang::CSharp) {
        compile("mcs", |c| {
            c.arg("-r:System.Net.Http")
                .arg(format!("-out:{}", dir.join("Submit.exe").display()))
                .arg(examples_dir().join("Submit.cs"));
        });
    }
    dir
}

fn compile(compiler: &str, args: impl FnOnce(&mut std::process::Command)) {
    let mut command = std::process::Command::new(compiler);
    args(&mut command);
    let output = command.output().expect("compiler runs");
    assert!(
        output.status.success(),
        "{compiler} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// How Java is started: as its README says (`java Submit.java`, compiling at every start), or
/// from the classes compiled once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JavaLaunch {
    Source,
    Compiled,
}

pub struct Run {
    pub lang: Lang,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {} example exited {}\n--- stdout\n{}--- stderr\n{}",
            self.lang.name(),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

/// What an example is given: the gateway, the API key, the branch, and the CSV file.
pub struct Invocation<'a> {
    pub gateway_url: &'a str,
    pub api_key: &'a str,
    pub branch: &'a str,
    pub csv: &'a Path,
    pub java: JavaLaunch,
    /// `POLL_TIMEOUT_SECS`.
    pub poll_timeout_secs: u32,
    /// `PATH` for the example, when not the test's own.
    pub path: Option<&'a Path>,
    /// `REPORT_CORRECTION=true`.
    pub correction: bool,
}

impl<'a> Invocation<'a> {
    /// Branch `nairobi`, Java compiled, 30 s to follow the report, the test's `PATH`, no
    /// correction.
    pub fn new(gateway_url: &'a str, api_key: &'a str, csv: &'a Path) -> Self {
        Invocation {
            gateway_url,
            api_key,
            branch: "nairobi",
            csv,
            java: JavaLaunch::Compiled,
            poll_timeout_secs: 30,
            path: None,
            correction: false,
        }
    }
}

pub const PERIOD: &str = "2026-10";

pub async fn run(lang: Lang, how: &Invocation<'_>) -> Run {
    let examples = examples_dir();
    let mut command = match lang {
        Lang::Bash => tokio::process::Command::new(examples.join("submit.sh")),
        Lang::Python => {
            let mut c = tokio::process::Command::new("python3");
            c.arg(examples.join("submit.py"));
            c
        }
        Lang::Php => {
            let mut c = tokio::process::Command::new("php");
            c.arg(examples.join("submit.php"));
            c
        }
        Lang::Java => {
            let mut c = tokio::process::Command::new("java");
            match how.java {
                JavaLaunch::Source => c.arg(examples.join("Submit.java")),
                JavaLaunch::Compiled => c.arg("-cp").arg(built()).arg("Submit"),
            };
            c
        }
        Lang::CSharp => {
            let mut c = tokio::process::Command::new("mono");
            c.arg(built().join("Submit.exe"));
            c
        }
    };
    command
        .arg(how.csv)
        .env("GATEWAY_URL", how.gateway_url)
        .env("GATEWAY_API_KEY", how.api_key)
        .env("REPORT_PERIOD", PERIOD)
        .env("GATEWAY_BRANCH", how.branch)
        .env("POLL_TIMEOUT_SECS", how.poll_timeout_secs.to_string())
        .stdin(Stdio::null())
        .env(
            "PATH",
            how.path.map_or_else(
                || std::env::var_os("PATH").unwrap_or_default(),
                |p| p.as_os_str().to_owned(),
            ),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Unset unless a correction: the examples' default is no correction.
    if how.correction {
        command.env("REPORT_CORRECTION", "true");
    } else {
        command.env_remove("REPORT_CORRECTION");
    }
    let child = command.spawn().expect("the example starts");
    let output = tokio::time::timeout(RUN_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the {} example still runs after {RUN_DEADLINE:?}",
                lang.name()
            )
        })
        .expect("the example's output is readable");
    Run {
        lang,
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
