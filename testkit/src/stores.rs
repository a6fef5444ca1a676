//! Fresh stores for each test: a migrated database on the shared PostgreSQL, a key prefix on the
//! shared Redis, and a throwaway PostgreSQL server for tests that stop it. A store that cannot
//! be reached fails the test; nothing is skipped.

use std::path::PathBuf;
use std::process::Command;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The shared PostgreSQL (`ARENA_TEST_DATABASE_URL`, default the machine's).
pub fn shared_pg() -> String {
    std::env::var("ARENA_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The shared Redis (`ARENA_TEST_REDIS_URL`, default the machine's).
pub fn shared_redis() -> String {
    std::env::var("ARENA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A unique lowercase name starting with `prefix`.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let mut rng = arena_sdk::rng::SplitMix64::new(nanos as u64 ^ (u64::from(std::process::id()) << 32));
    format!("{prefix}{:016x}", rng.next_u64())
}

/// A fresh Redis key prefix (a hash tag, so every key lands in one cluster slot).
pub fn redis_prefix(name: &str) -> String {
    format!("{{{}}}", unique(name))
}

fn with_database(url: &str, db: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => format!("{url}/{db}"),
    }
}

async fn connect(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is required for this test: {e}"))
}

/// A fresh, migrated database on the shared PostgreSQL.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    name: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let admin = shared_pg();
        let pool = connect(&admin).await;
        let name = unique("arena_t_");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await.unwrap();
        pool.close().await;
        let url = with_database(&admin, &name);
        let db = connect(&url).await;
        sqlx::migrate!("../migrations").run(&db).await.expect("migrations apply");
        db.close().await;
        TestDb { url, name }
    }

    pub async fn pool(&self) -> PgPool {
        connect(&self.url).await
    }

    pub async fn drop_db(self) {
        let pool = connect(&shared_pg()).await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
            .execute(&pool)
            .await;
    }
}

/// Delete every key under `prefix` on the Redis at `url`.
pub async fn clear_redis(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut con).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut con).await.unwrap();
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("ARENA_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (or set ARENA_PG_BINDIR)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("initdb under /usr/lib/postgresql/*/bin")
}

/// Run a PostgreSQL tool as the `postgres` user when we are root (initdb refuses root).
fn pg_tool(tool: &str) -> Command {
    let path = pg_bindir().join(tool);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// A PostgreSQL server of its own, in a temporary directory, on a port it found free by
/// starting on it (retried on a clash), that a test may stop and start.
#[derive(Debug)]
pub struct ThrowawayPg {
    dir: PathBuf,
    pub port: u16,
}

impl ThrowawayPg {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("arena-pg-"));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status().unwrap().success();
            assert!(ok, "chown of {}", dir.display());
        }
        let out = pg_tool("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.join("data"))
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        // A port is only known free once the server holds it: try a few.
        for _ in 0..10 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let pg = ThrowawayPg { dir: dir.clone(), port };
            if pg.pg_ctl_start() {
                return pg;
            }
        }
        panic!("no PostgreSQL could start in {}", dir.display());
    }

    fn pg_ctl_start(&self) -> bool {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off",
            self.port,
            self.dir.display()
        );
        pg_tool("pg_ctl")
            .args(["-w", "-t", "30", "-D"])
            .arg(self.dir.join("data"))
            .args(["-o", &opts, "-l"])
            .arg(self.dir.join("log"))
            .arg("start")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stop the server (fast shutdown: connections are cut).
    pub fn stop(&self) {
        let out =
            pg_tool("pg_ctl").args(["-w", "-m", "fast", "-D"]).arg(self.dir.join("data")).arg("stop").output().unwrap();
        assert!(out.status.success(), "pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn restart(&self) {
        assert!(self.pg_ctl_start(), "PostgreSQL did not restart on port {}", self.port);
    }
}

impl Drop for ThrowawayPg {
    fn drop(&mut self) {
        let _ = pg_tool("pg_ctl").args(["-w", "-m", "immediate", "-D"]).arg(self.dir.join("data")).arg("stop").output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis server of its own (no persistence), on a port it found free by starting on it, that a
/// test may pause (SIGSTOP: clients see a server that does not answer, its data intact), resume,
/// or kill and start again empty.
#[derive(Debug)]
pub struct ThrowawayRedis {
    child: Option<std::process::Child>,
    pub port: u16,
}

impl ThrowawayRedis {
    pub fn start() -> Self {
        for _ in 0..10 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if let Some(child) = Self::spawn(port) {
                return ThrowawayRedis { child: Some(child), port };
            }
        }
        panic!("no redis-server could start (is Debian's redis-server installed?)");
    }

    fn spawn(port: u16) -> Option<std::process::Child> {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run redis-server");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(child);
            }
            if matches!(child.try_wait(), Ok(Some(_))) {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        None
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args([sig, &c.id().to_string()]).status();
        }
    }

    /// Freeze it: connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kill it (its data is gone).
    pub fn kill(&mut self) {
        self.signal("-CONT");
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.child =
            Some(Self::spawn(self.port).unwrap_or_else(|| panic!("redis-server did not restart on {}", self.port)));
    }
}

impl Drop for ThrowawayRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
