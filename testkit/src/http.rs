//! JSON over HTTP, and waiting for a condition.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

use crate::DEV_KEY;

/// `GET url` with the development key; the status and the JSON body (`Null` if none).
pub async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    match client.get(url).bearer_auth(DEV_KEY).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// `POST url` with a JSON body and the development key; the status and the JSON body.
pub async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    match client.post(url).bearer_auth(DEV_KEY).json(body).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// The value of metric `name` (a plain sample line `name value`) in a Prometheus exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Call `probe` every 25 ms until it returns `Some`, for at most `limit`; panics naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
