//! Databases for tests: a fresh database on the shared PostgreSQL, a fresh key prefix on the
//! shared Redis, and a throwaway PostgreSQL server for tests that stop it.
//! A database that cannot be reached fails the test; nothing is skipped.

use std::path::PathBuf;
use std::process::Command;

use sqlx::PgPool;

pub fn shared_pg() -> String {
    std::env::var("ARENA_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn shared_redis() -> String {
    std::env::var("ARENA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A unique lowercase name.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut rng = arena_sdk::rng::SplitMix64::new(nanos ^ u64::from(std::process::id()) << 32);
    format!("{prefix}{:016x}", rng.next_u64())
}

fn with_database(url: &str, db: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => format!("{url}/{db}"),
    }
}

/// A fresh, migrated database on the shared PostgreSQL.
pub struct TestDb {
    pub url: String,
    name: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let admin = shared_pg();
        let pool = arena_gameserver::persist::connect_pg(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required for this test: {e}"));
        let name = unique("arena_t_");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await.unwrap();
        pool.close().await;
        let url = with_database(&admin, &name);
        let db = arena_gameserver::persist::connect_pg(&url).await.unwrap();
        arena_gameserver::persist::migrate(&db).await.unwrap();
        db.close().await;
        TestDb { url, name }
    }

    pub async fn pool(&self) -> PgPool {
        arena_gameserver::persist::connect_pg(&self.url).await.unwrap()
    }

    pub async fn drop_db(self) {
        let pool = arena_gameserver::persist::connect_pg(&shared_pg()).await.unwrap();
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
            .execute(&pool)
            .await;
    }
}

/// Delete every key under `prefix` on the shared Redis.
pub async fn clear_redis(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut con).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut con).await.unwrap();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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

/// A PostgreSQL server of its own, in a temporary directory, that a test may stop and start.
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
        let pg = ThrowawayPg { dir, port: free_port() };
        pg.pg_ctl_start();
        pg
    }

    fn pg_ctl_start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off",
            self.port,
            self.dir.display()
        );
        let out = pg_tool("pg_ctl")
            .args(["-w", "-t", "30", "-D"])
            .arg(self.dir.join("data"))
            .args(["-o", &opts, "-l"])
            .arg(self.dir.join("log"))
            .arg("start")
            .output()
            .expect("run pg_ctl start");
        assert!(out.status.success(), "pg_ctl start failed: {}", String::from_utf8_lossy(&out.stderr));
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
        self.pg_ctl_start();
    }
}

impl Drop for ThrowawayPg {
    fn drop(&mut self) {
        let _ = pg_tool("pg_ctl").args(["-w", "-m", "immediate", "-D"]).arg(self.dir.join("data")).arg("stop").output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
