//! Launches real child processes through the host side: the `shell-runner` example plugin and
//! small shell scripts that misbehave in each way a plugin can.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::runner::v1::{plan_response, DescribeRequest, PlanRequest, Workspace};
use cairn_runner_sdk::{find_plugin, launch, Error, LaunchOptions};
use tokio_stream::StreamExt;

fn shell_runner() -> PathBuf {
    // Integration tests live in target/<profile>/deps; cargo builds examples next door.
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/shell-runner");
    assert!(
        path.exists(),
        "example plugin not built at {}",
        path.display()
    );
    path
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn good_handshake_connects_and_serves() {
    let plugin = launch(&shell_runner(), LaunchOptions::default())
        .await
        .unwrap();
    let socket = plugin.handshake.socket.clone();
    let dir = socket.parent().unwrap().to_owned();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "socket directory must be private");

    let mut client = plugin.client.clone();
    let described = client
        .describe(DescribeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.vendor, "shell");

    let status = plugin.shutdown(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "plugin exit status {status}");
    assert!(
        !dir.exists(),
        "socket directory must be removed on shutdown"
    );
}

#[tokio::test]
async fn garbage_handshake_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = script(
        tmp.path(),
        "cairn-runner-garbage",
        "echo 'hello there'; sleep 5",
    );
    let err = launch(&bin, LaunchOptions::default()).await.unwrap_err();
    assert!(
        matches!(err, Error::MalformedHandshake { ref line, .. } if line == "hello there"),
        "{err}"
    );

    let bin = script(
        tmp.path(),
        "cairn-runner-v2",
        "echo '1|2|unix|/tmp/x.sock|grpc'; sleep 5",
    );
    let err = launch(&bin, LaunchOptions::default()).await.unwrap_err();
    assert!(
        matches!(err, Error::ProtocolVersion { got: 2, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn silent_plugin_times_out() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = script(tmp.path(), "cairn-runner-silent", "exec sleep 600");
    let options = LaunchOptions {
        handshake_timeout: Duration::from_millis(300),
        ..LaunchOptions::default()
    };
    let err = launch(&bin, options).await.unwrap_err();
    assert!(matches!(err, Error::HandshakeTimeout { .. }), "{err}");
}

#[tokio::test]
async fn early_exit_reports_stderr_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = script(
        tmp.path(),
        "cairn-runner-crash",
        "echo 'loading config' >&2; echo 'fatal: no such vendor' >&2; exit 3",
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let options = LaunchOptions {
        on_stderr: {
            let seen = Arc::clone(&seen);
            Arc::new(move |line: &str| seen.lock().unwrap().push(line.to_owned()))
        },
        ..LaunchOptions::default()
    };
    let err = launch(&bin, options).await.unwrap_err();
    let Error::PluginExited {
        status,
        stderr_tail,
        ..
    } = &err
    else {
        panic!("unexpected error {err}");
    };
    assert!(status.contains('3'), "{status}");
    assert_eq!(stderr_tail, "loading config\nfatal: no such vendor");
    assert_eq!(seen.lock().unwrap().len(), 2, "stderr lines are forwarded");
}

#[tokio::test]
async fn missing_plugin_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let err = find_plugin("nope", &[tmp.path().to_owned()]).unwrap_err();
    assert!(err.to_string().contains("cairn-runner-nope"), "{err}");
    assert!(
        err.to_string().contains(&tmp.path().display().to_string()),
        "{err}"
    );

    let other = tempfile::tempdir().unwrap();
    let bin = script(other.path(), "cairn-runner-found", "exit 0");
    let found = find_plugin("found", &[tmp.path().to_owned(), other.path().to_owned()]).unwrap();
    assert_eq!(found, bin);
}

fn workspace(dir: &Path, secrets: &[&str]) -> Workspace {
    Workspace {
        root_dir: dir.display().to_string(),
        project_root: String::new(),
        secret_values: secrets.iter().map(|s| s.to_string()).collect(),
        env: [("TOKEN".to_owned(), "s3cr3t-value".to_owned())].into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn vendor_output_is_streamed_redacted() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("plan.sh"),
        "echo \"token is $TOKEN\"\necho \"warn $TOKEN\" >&2\nexit 0\n",
    )
    .unwrap();
    let plugin = launch(&shell_runner(), LaunchOptions::default())
        .await
        .unwrap();
    let mut client = plugin.client.clone();
    let mut stream = client
        .plan(PlanRequest {
            workspace: Some(workspace(tmp.path(), &["s3cr3t-value"])),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut lines = Vec::new();
    let mut result = None;
    while let Some(msg) = stream.next().await {
        match msg.unwrap().event.unwrap() {
            plan_response::Event::Log(l) => lines.push(l),
            plan_response::Event::Result(r) => result = Some(r),
            plan_response::Event::Phase(_) | plan_response::Event::Saved(_) => {}
        }
    }
    assert!(result.unwrap().success);
    let mut messages: Vec<_> = lines.iter().map(|l| l.message.clone()).collect();
    messages.sort();
    assert_eq!(messages, ["token is ***", "warn ***"]);
    let mut seqs: Vec<_> = lines.iter().map(|l| l.seq).collect();
    seqs.sort();
    assert_eq!(seqs, [1, 2]);
    plugin.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test]
async fn dropping_the_stream_interrupts_the_vendor() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("interrupted");
    std::fs::write(
        tmp.path().join("plan.sh"),
        format!(
            "trap 'echo int > {m}; exit 130' INT\necho started\nwhile :; do sleep 1; done\n",
            m = marker.display()
        ),
    )
    .unwrap();
    let plugin = launch(&shell_runner(), LaunchOptions::default())
        .await
        .unwrap();
    let mut client = plugin.client.clone();
    let mut stream = client
        .plan(PlanRequest {
            workspace: Some(workspace(tmp.path(), &[])),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        let msg = stream.next().await.expect("stream ended early").unwrap();
        if let Some(plan_response::Event::Log(l)) = msg.event {
            if l.message == "started" {
                break;
            }
        }
    }
    drop(stream);
    // The plugin notices the reset stream and signals the script's process group.
    for _ in 0..600 {
        if marker.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "int");
    plugin.shutdown(Duration::from_secs(30)).await.unwrap();
}
