//! A client in another language, written from docs/protocol.md alone, plays with a Rust bot.
//!
//! Needs `python3` with the `websockets` package (the README's test command installs it).

mod common;

use std::process::Stdio;

use arena_sdk::Encoding;
use arena_sdk::protocol::{Command, Event, ServerMsg};
use common::{TestServer, recv_until, recv_until_within};

#[tokio::test]
async fn python_client_joins_moves_chats_and_sees_another_bot() {
    let server = TestServer::default().await;
    let (mut rusty, _) = server.join(Encoding::MsgPack, "py-world", "rusty").await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk/examples/python/arena_client.py");
    let python = std::env::var("ARENA_PYTHON").unwrap_or_else(|_| "python3".into());
    let child = tokio::process::Command::new(&python)
        .args(["-u", script, "--url", &server.ws_url, "--world", "py-world", "--ticket"])
        .arg(server.ticket("py-world", "pybot"))
        .args(["--say", "hello from python", "--expect-bot", "rusty", "--expect-chat", "hi python"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));

    // Rusty greets the Python bot once it has joined, then hears it and sees it walk. A Python
    // interpreter starting on a busy 2-core machine may take seconds.
    let msg = recv_until_within(&mut rusty, std::time::Duration::from_secs(30), |m, _| {
        matches!(m, ServerMsg::Update(u) if u.events.iter().any(|e| matches!(e, Event::Joined { name, .. } if name == "pybot")))
    })
    .await;
    let ServerMsg::Update(u) = msg else { unreachable!() };
    let py = u.events.iter().find_map(|e| match e {
        Event::Joined { bot, name } if name == "pybot" => Some(*bot),
        _ => None,
    });
    let py = py.unwrap();
    rusty.input(Command::Say("hi python".into())).await.unwrap();
    recv_until(&mut rusty, |m, _| {
        matches!(m, ServerMsg::Update(u) if u.events.iter().any(|e| matches!(e, Event::Say { bot, text } if *bot == py && text == "hello from python")))
    })
    .await;

    let out = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("python client finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python client failed ({}):\n{stdout}\n{stderr}", out.status);
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["saw"], "rusty");
    assert_eq!(summary["name"], "pybot");
    assert!(summary["heard"].as_array().unwrap().iter().any(|h| h[1] == "hi python"));
    // It closed with 1000: its seat is freed at once.
    recv_until(&mut rusty, |m, _| matches!(m, ServerMsg::Update(u) if u.events.contains(&Event::Left { bot: py })))
        .await;
    server.stop().await;
}
