//! Experiment: does submitting a tick's socket writes in one io_uring batch lower the server's
//! CPU per bot against one `send` per socket (what arena-gameserver does)? Server and client run
//! as separate processes; only the server's CPU (getrusage) is compared.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn cpu_secs() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn server(addr: &str, n: usize, mode: &str, secs: u64, msg_len: usize) {
    let listener = TcpListener::bind(addr).unwrap();
    let mut conns: Vec<TcpStream> = Vec::with_capacity(n);
    while conns.len() < n {
        let (s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
        conns.push(s);
    }
    eprintln!("{n} connections, mode {mode}");
    let msg = vec![0x82u8; msg_len];
    let mut ring = io_uring::IoUring::new(n.next_power_of_two().min(32768) as u32).unwrap();
    let tick = Duration::from_millis(50);
    let start = Instant::now();
    let warm = Duration::from_secs(3);
    let mut measured: Option<(Instant, f64)> = None;
    let (mut sent, mut blocked) = (0u64, 0u64);
    let mut next = Instant::now();
    loop {
        let now = Instant::now();
        if measured.is_none() && now - start >= warm {
            measured = Some((now, cpu_secs()));
            sent = 0;
            blocked = 0;
        }
        if let Some((t0, c0)) = measured
            && now - t0 >= Duration::from_secs(secs)
        {
            let wall = (now - t0).as_secs_f64();
            let cpu = cpu_secs() - c0;
            println!(
                "mode={mode} conns={n} msg={msg_len}B cores={:.3} per_1000={:.3} sends/s={:.0} blocked={blocked}",
                cpu / wall,
                cpu / wall / (n as f64 / 1000.0),
                sent as f64 / wall
            );
            return;
        }
        match mode {
            "send" => {
                for c in &conns {
                    match (&*c).write(&msg) {
                        Ok(_) => sent += 1,
                        Err(_) => blocked += 1,
                    }
                }
            }
            "uring" => {
                // One batch per tick: every socket's send as one SQE, one io_uring_enter.
                let mut i = 0;
                while i < conns.len() {
                    let batch = (conns.len() - i).min(ring.params().sq_entries() as usize);
                    {
                        let mut sq = ring.submission();
                        for (k, c) in conns[i..i + batch].iter().enumerate() {
                            let e = io_uring::opcode::Send::new(
                                io_uring::types::Fd(c.as_raw_fd()),
                                msg.as_ptr(),
                                msg.len() as u32,
                            )
                            .build()
                            .user_data((i + k) as u64);
                            unsafe { sq.push(&e).unwrap() };
                        }
                    }
                    ring.submit_and_wait(batch).unwrap();
                    for cqe in ring.completion() {
                        if cqe.result() > 0 { sent += 1 } else { blocked += 1 }
                    }
                    i += batch;
                }
            }
            other => panic!("mode {other}"),
        }
        next += tick;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
}

async fn client(addr: String, n: usize) {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tasks.push(tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut s = s;
            let mut buf = vec![0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let n: usize = a[3].parse().unwrap();
    match a[1].as_str() {
        "server" => server(&a[2], n, &a[4], a[5].parse().unwrap(), a[6].parse().unwrap()),
        "client" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
            .block_on(client(a[2].clone(), n)),
        _ => panic!("server|client"),
    }
    let _ = std::io::stdin().read(&mut [0u8; 0]);
}
