//! Housekeeping of the durable store: daily activity partitions created ahead, old ones
//! detached, old snapshots pruned, old rejected activity records deleted. Several gameservers may run it; an advisory lock lets one at a
//! time do the work.

use sqlx::{PgPool, Row};

/// Snapshots kept per world.
pub const SNAPSHOTS_KEPT: i64 = 5;
const LOCK_KEY: i64 = 0x4152_454e_415f_4d41; // "ARENA_MA"

/// What one maintenance run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Maintained {
    pub partitions_created: i32,
    pub snapshots_pruned: u64,
    /// Rejected activity records older than the retention, deleted.
    pub rejected_pruned: u64,
    /// Another server held the lock: nothing was done.
    pub skipped: bool,
}

pub async fn run(pool: &PgPool, days_ahead: u32, retention_days: u32) -> Result<Maintained, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let locked: bool =
        sqlx::query("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY).fetch_one(&mut *conn).await?.try_get(0)?;
    if !locked {
        return Ok(Maintained { skipped: true, ..Maintained::default() });
    }
    let result = async {
        let created: i32 = sqlx::query("SELECT arena_activity_partitions($1, $2)")
            .bind(days_ahead as i32)
            .bind(retention_days as i32)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
        let pruned = sqlx::query(
            "DELETE FROM world_snapshots s USING (
                 SELECT world_id, fence, tick,
                        row_number() OVER (PARTITION BY world_id ORDER BY fence DESC, tick DESC) AS n
                 FROM world_snapshots) old
             WHERE s.world_id = old.world_id AND s.fence = old.fence AND s.tick = old.tick AND old.n > $1",
        )
        .bind(SNAPSHOTS_KEPT)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        let rejected_pruned = if retention_days > 0 {
            sqlx::query("DELETE FROM activity_rejected WHERE rejected_at < now() - make_interval(days => $1)")
                .bind(retention_days as i32)
                .execute(&mut *conn)
                .await?
                .rows_affected()
        } else {
            0
        };
        Ok(Maintained { partitions_created: created, snapshots_pruned: pruned, rejected_pruned, skipped: false })
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(LOCK_KEY).execute(&mut *conn).await;
    result
}
