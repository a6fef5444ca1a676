//! What `wss://` adds to a WebSocket connection's CPU: sealing one update frame into TLS records
//! (the tick's side) and opening one input frame (the reader's side), with the listener's own
//! configuration (TLS 1.3, ring). The handshake runs once, in memory; no sockets.

use std::hint::black_box;
use std::sync::Arc;

use arena_gameserver::certificate::Identity;
use arena_gameserver::ws::tls::{Session, server_config};
use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};

/// A client and a server connection with the handshake done, in memory.
fn pair() -> (ClientConnection, ServerConnection) {
    let id = Identity::self_signed(&["localhost".into()]).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(id.chain[0].clone()).unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client = ClientConnection::new(Arc::new(client_cfg), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut server = ServerConnection::new(server_config(&id).unwrap()).unwrap();
    for _ in 0..10 {
        transfer(&mut client, &mut server);
        transfer(&mut server, &mut client);
        if !client.is_handshaking() && !server.is_handshaking() {
            return (client, server);
        }
    }
    panic!("the handshake did not finish");
}

/// Move what `from` has to send into `to`.
fn transfer<A, B, DA, DB>(from: &mut A, to: &mut B)
where
    A: std::ops::DerefMut<Target = rustls::ConnectionCommon<DA>>,
    B: std::ops::DerefMut<Target = rustls::ConnectionCommon<DB>>,
{
    let mut wire = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut wire).unwrap();
    }
    let mut rd = &wire[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets().unwrap();
    }
}

fn seal_and_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("wss");
    // A 30-bot world's update is ~770 bytes in MessagePack (the tick bench), ~1.3 KiB in JSON.
    for size in [768usize, 2048] {
        let (_client, server) = pair();
        let mut session = Session::new(server);
        let frame = vec![0x82u8; size];
        let mut out = Vec::with_capacity(64 * 1024);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("seal_update", size), &size, |b, _| {
            b.iter(|| {
                out.clear();
                session.seal(black_box(&frame), &mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    // An input: a masked client frame of ~60 bytes, as the reader opens it.
    let (mut client, server) = pair();
    let mut session = Session::new(server);
    let input = vec![0x81u8; 64];
    let mut records = Vec::new();
    let mut plain = BytesMut::with_capacity(64 * 1024);
    let mut replies = Vec::new();
    group.bench_function("open_input/64", |b| {
        b.iter_batched(
            || {
                use std::io::Write;
                records.clear();
                client.writer().write_all(&input).unwrap();
                while client.wants_write() {
                    client.write_tls(&mut records).unwrap();
                }
                records.clone()
            },
            |cipher| {
                plain.clear();
                session.open(black_box(&cipher), &mut plain, &mut replies).unwrap();
                black_box(plain.len())
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, seal_and_open);
criterion_main!(benches);
