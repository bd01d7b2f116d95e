//! `phalanx config check` and `phalanx init` as an operator runs them: every parse, schema,
//! semantic and machine error in one run, each as FILE:LINE:COL; fence-agents programs, OCF
//! agents and their parameters and the key file checked on this machine
//! (`--allow-missing-agents` turns the agent checks into warnings); the key written beside the
//! config. Needs Debian's resource-agents and fence-agents (`tests/run` installs them).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// A valid one-node config (fencing by `fence_dummy`, installed by fence-agents) to build on.
const BASE: &str = "[cluster]\nname = \"x\"\n\n[[node]]\nname = \"n1\"\nlinks = [\"127.0.0.1:1\"]\n";

fn phalanx() -> Command {
    Command::new(env!("CARGO_BIN_EXE_phalanx"))
}

/// `phalanx config check [extra] FILE`: (exit code, stdout).
fn check(file: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let out = phalanx()
        .args(["config", "check"])
        .args(extra)
        .arg(file)
        .output()
        .unwrap();
    (out.status.code(), stdout(&out))
}

fn stdout(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `text` written as `DIR/cluster.toml`, with a valid key beside it.
fn config_with_key(dir: &Path, text: &str) -> std::path::PathBuf {
    let f = dir.join("cluster.toml");
    std::fs::write(&f, text).unwrap();
    let key = dir.join("phalanx.key");
    if !key.exists() {
        std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    f
}

fn assert_fence_agents_installed() {
    assert!(
        Path::new("/usr/sbin/fence_dummy").is_file() && Path::new("/usr/lib/ocf/resource.d/heartbeat/Dummy").is_file(),
        "Debian's fence-agents and resource-agents are not installed (tests/run installs them)"
    );
}

#[test]
fn schema_semantic_and_agent_errors_come_in_one_run() {
    assert_fence_agents_installed();
    let dir = tempfile::tempdir().unwrap();
    let f = config_with_key(
        dir.path(),
        &format!(
            "{BASE}bogus = 1\n\n[[fence_device]]\nname = \"pdu\"\nagent = \"fence_nosuch\"\n\n\
             [[resource]]\nid = \"d\"\nagent = \"ocf:heartbeat:Dumy\"\nmigration_threshold = \"3\"\n\
             on_fail = \"explode\"\n"
        ),
    );
    let (code, text) = check(&f, &[]);
    assert_eq!(code, Some(2), "{text}");
    let name = f.display().to_string();
    for want in [
        format!("{name}:7:1: error: unknown field `bogus`"),
        format!("{name}:11:9: error: fence device pdu: fence_nosuch"),
        format!("{name}:15:9: error: resource d: agent ocf:heartbeat:Dumy is not installed"),
        format!("{name}:16:23: error: invalid type"),
        format!("{name}:17:11: error: on_fail \"explode\" is not one of"),
    ] {
        assert!(text.contains(&want), "{want:?} not in:\n{text}");
    }
    assert!(text.contains("5 error(s)"), "{text}");
}

#[test]
fn a_fence_agent_missing_here_is_an_error_and_no_plan_is_printed() {
    assert_fence_agents_installed();
    let dir = tempfile::tempdir().unwrap();
    let device = "\n[[fence_device]]\nname = \"switch\"\nagent = \"fence_nosuch\"\n";
    let f = config_with_key(dir.path(), &format!("{BASE}{device}"));
    let (code, text) = check(&f, &[]);
    assert_eq!(code, Some(2), "{text}");
    let name = f.display().to_string();
    assert!(
        text.contains(&format!(
            "{name}:10:9: error: fence device switch: fence_nosuch is not installed on this machine"
        )),
        "{text}"
    );
    assert!(
        !text.contains("level 1"),
        "no fencing plan for a config with errors: {text}"
    );
    // On a machine without the fence agents, the flag makes it a warning.
    let (code, text) = check(&f, &["--allow-missing-agents"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("{name}:10:9: warning: fence device switch: fence_nosuch")),
        "{text}"
    );
    // An installed program passes, and the plan is printed.
    std::fs::write(&f, format!("{BASE}{}", device.replace("fence_nosuch", "fence_dummy"))).unwrap();
    let (code, text) = check(&f, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("n1: level 1: switch"), "{text}");
}

#[test]
fn a_missing_or_unreadable_key_file_is_an_error_naming_the_permission() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("cluster.toml");
    std::fs::write(&f, BASE).unwrap();
    let name = f.display().to_string();
    let key = dir.path().join("phalanx.key");
    // Missing (not written: the default, beside the config): reported at the [cluster] section.
    let (code, text) = check(&f, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains(&format!("{name}:1:1: error: key file {} does not exist", key.display())),
        "{text}"
    );
    assert!(text.contains("init`") && text.contains("0600"), "{text}");
    // Written: reported at its value.
    std::fs::write(
        &f,
        BASE.replace("name = \"x\"\n", "name = \"x\"\nkey_file = \"secret/k\"\n"),
    )
    .unwrap();
    let (code, text) = check(&f, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains(&format!(
            "{name}:3:12: error: key file {}",
            dir.path().join("secret/k").display()
        )),
        "{text}"
    );

    // Unreadable by the user that runs the check (as root: run it as nobody).
    std::fs::write(&f, BASE).unwrap();
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = phalanx();
    if nix::unistd::Uid::effective().is_root() {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    } else {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let out = cmd.args(["config", "check"]).arg(&f).output().unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!("{name}:1:1: error: key file {} cannot be read", key.display())),
        "{text}"
    );
    assert!(
        text.contains("readable by the user that runs the daemon") && text.contains("0600"),
        "{text}"
    );

    // A readable key that others may read too: a warning.
    std::fs::write(&f, BASE).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, text) = check(&f, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warning: key file") && text.contains("chmod 0600"),
        "{text}"
    );
}

#[test]
fn ocf_agent_and_param_errors_are_warnings_only_with_allow_missing_agents() {
    assert_fence_agents_installed();
    let dir = tempfile::tempdir().unwrap();
    let f = config_with_key(
        dir.path(),
        &format!(
            "{BASE}\n[[fence_device]]\nname = \"switch\"\nagent = \"fence_dummy\"\n\n\
             [[resource]]\nid = \"a\"\nagent = \"ocf:heartbeat:Dumy\"\n\n\
             [[resource]]\nid = \"b\"\nagent = \"ocf:heartbeat:Dummy\"\nparams = {{ stat = \"/tmp/x\" }}\n"
        ),
    );
    let name = f.display().to_string();
    let (code, text) = check(&f, &[]);
    assert_eq!(code, Some(2), "{text}");
    let misspelt = "resource a: agent ocf:heartbeat:Dumy is not installed on this machine";
    let unknown = "resource b: agent ocf:heartbeat:Dummy has no parameter \"stat\"";
    assert!(text.contains(&format!("{name}:14:9: error: {misspelt}")), "{text}");
    assert!(text.contains(&format!("{name}:18:9: error: {unknown}")), "{text}");
    let (code, text) = check(&f, &["--allow-missing-agents"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(&format!("{name}:14:9: warning: {misspelt}")), "{text}");
    assert!(text.contains(&format!("{name}:18:9: warning: {unknown}")), "{text}");
}

#[test]
fn init_writes_the_key_beside_a_config_that_does_not_exist_yet() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let conf = dir.path().join("etc/cluster.toml");
    let out = phalanx()
        .arg("--config")
        .arg(&conf)
        .arg("init")
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stdout(&out));
    let key = dir.path().join("etc/phalanx.key");
    assert!(key.is_file(), "no key beside the config: {}", stdout(&out));
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(
        !elsewhere.path().join("phalanx.key").exists(),
        "written into the current directory"
    );
    assert!(stdout(&out).contains(&key.display().to_string()), "{}", stdout(&out));
}

/// Every `toml` block of the README is TOML an operator can paste: it parses (an inline table
/// spread over two lines, which TOML 1.0 forbids, stood in the PostgreSQL section's example
/// until a walk-through of it found that `config check` refused it).
#[test]
fn every_toml_block_of_the_readme_parses() {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let mut blocks = 0;
    for (i, part) in readme.split("```toml\n").enumerate().skip(1) {
        let block = part.split("\n```").next().unwrap_or_default();
        if let Err(e) = block.parse::<toml::Table>() {
            panic!("README toml block {i} does not parse: {e}\n{block}");
        }
        blocks += 1;
    }
    assert!(blocks >= 5, "only {blocks} toml blocks found in the README");
}
