//! The shop: a small order service, as a web app on either platform would be.
//!
//! It reads its database from `DATABASE_URL` (here: given), which points at the cutover proxy,
//! and keeps a pool of connections with cached prepared statements, the way application
//! frameworks do; so a database switch under it is exactly what a real app lives through.
//!
//! - `GET /health`: 200 once the database answers.
//! - `POST /orders` `{"customer": 17, "total": "12.50"}`: 201 with the order, once committed.
//! - `GET /orders/{id}`: the order, or 404.
//! - `GET /orders?limit=N`: the latest orders.
//!
//! Every answer names the app that served it (`served_by`, and an `X-Served-By` header), which
//! is what the shadow diff is told to ignore.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// What an app instance needs.
#[derive(Clone)]
pub struct AppConfig {
    /// Where it takes HTTP requests.
    pub listen: SocketAddr,
    /// Its DATABASE_URL: the proxy's address, never a database's directly.
    pub database_url: String,
    /// The name it answers with: "old" or "new".
    pub name: String,
    /// Database connections it keeps.
    pub pool_size: usize,
}

impl std::fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL carries the password.
        f.debug_struct("AppConfig")
            .field("listen", &self.listen)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("DATABASE_URL is not a PostgreSQL URL: {0}")]
    Url(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("the connection pool: {0}")]
    Pool(String),
}

struct Shop {
    pool: Pool,
    name: String,
}

/// A running app instance.
pub struct RunningApp {
    pub addr: SocketAddr,
    pub name: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningApp {
    /// Stops taking connections; requests in flight finish.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Starts an app instance.
pub async fn start(config: AppConfig) -> Result<RunningApp, AppError> {
    let pg: tokio_postgres::Config = config
        .database_url
        .parse()
        .map_err(|e: tokio_postgres::Error| AppError::Url(e.to_string()))?;
    let manager = Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .build()
        .map_err(|e| AppError::Pool(e.to_string()))?;
    let shop = Arc::new(Shop {
        pool,
        name: config.name.clone(),
    });
    let router = Router::new()
        .route("/health", get(health))
        .route("/orders", get(list).post(create))
        .route("/orders/{id}", get(read))
        .with_state(shop);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| AppError::Listen {
            addr: config.listen,
            reason: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| AppError::Listen {
        addr: config.listen,
        reason: e.to_string(),
    })?;
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await;
    });
    Ok(RunningApp {
        addr,
        name: config.name,
        stop,
        task,
    })
}

/// An answer with the app's name in a header.
fn answer(shop: &Shop, status: StatusCode, body: serde_json::Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&shop.name) {
        r.headers_mut().insert("x-served-by", v);
    }
    r
}

/// A database error with the server's message and code ("db error" alone says nothing).
fn pg_error(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {} ({})", d.severity(), d.message(), d.code().code()),
        None => e.to_string(),
    }
}

fn failed(shop: &Shop, e: impl std::fmt::Display) -> Response {
    answer(
        shop,
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "error": e.to_string(), "served_by": shop.name }),
    )
}

async fn health(State(shop): State<Arc<Shop>>) -> Response {
    let result = async {
        let client = shop.pool.get().await.map_err(|e| e.to_string())?;
        client.query_one("SELECT 1", &[]).await.map_err(pg_error)
    }
    .await;
    match result {
        Ok(_) => answer(
            &shop,
            StatusCode::OK,
            json!({ "ok": true, "served_by": shop.name }),
        ),
        Err(e) => failed(&shop, e),
    }
}

#[derive(Deserialize)]
struct NewOrder {
    /// 1 to 5000: the demo's customers are "Customer 1" to "Customer 5000".
    customer: u32,
    /// A decimal, as text.
    total: String,
}

const ORDER_COLUMNS: &str = "o.id, o.status::text, o.total::text, c.\"FullName\"";

fn order_json(shop: &Shop, row: &tokio_postgres::Row) -> serde_json::Value {
    json!({
        "id": row.get::<_, i64>(0),
        "status": row.get::<_, String>(1),
        "total": row.get::<_, String>(2),
        "customer": row.get::<_, String>(3),
        "served_by": shop.name,
    })
}

async fn create(State(shop): State<Arc<Shop>>, Json(order): Json<NewOrder>) -> Response {
    let result = async {
        let client = shop.pool.get().await.map_err(|e| e.to_string())?;
        let stmt = client
            .prepare_cached(&format!(
                "WITH c AS (SELECT id, \"FullName\" FROM shop.\"Customers\" WHERE \"FullName\" = 'Customer ' || $1::text),
                      o AS (INSERT INTO shop.orders (customer, total) SELECT id, $2::text::numeric FROM c
                            RETURNING id, status, total, customer)
                 SELECT {ORDER_COLUMNS} FROM o JOIN c ON c.id = o.customer"
            ))
            .await
            .map_err(pg_error)?;
        client
            .query_opt(&stmt, &[&order.customer.to_string(), &order.total])
            .await
            .map_err(pg_error)
    }
    .await;
    match result {
        Ok(Some(row)) => answer(&shop, StatusCode::CREATED, order_json(&shop, &row)),
        Ok(None) => answer(
            &shop,
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "error": format!("no customer {}", order.customer), "served_by": shop.name }),
        ),
        Err(e) => failed(&shop, e),
    }
}

async fn read(State(shop): State<Arc<Shop>>, Path(id): Path<i64>) -> Response {
    let result = async {
        let client = shop.pool.get().await.map_err(|e| e.to_string())?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {ORDER_COLUMNS} FROM shop.orders o JOIN shop.\"Customers\" c ON c.id = o.customer WHERE o.id = $1"
            ))
            .await
            .map_err(pg_error)?;
        client
            .query_opt(&stmt, &[&id])
            .await
            .map_err(pg_error)
    }
    .await;
    match result {
        Ok(Some(row)) => answer(&shop, StatusCode::OK, order_json(&shop, &row)),
        Ok(None) => answer(
            &shop,
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no order {id}"), "served_by": shop.name }),
        ),
        Err(e) => failed(&shop, e),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

async fn list(State(shop): State<Arc<Shop>>, Query(q): Query<ListQuery>) -> Response {
    let limit = q.limit.unwrap_or(10).clamp(1, 100);
    let result = async {
        let client = shop.pool.get().await.map_err(|e| e.to_string())?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {ORDER_COLUMNS} FROM shop.orders o JOIN shop.\"Customers\" c ON c.id = o.customer
                  ORDER BY o.id LIMIT $1"
            ))
            .await
            .map_err(pg_error)?;
        client
            .query(&stmt, &[&limit])
            .await
            .map_err(pg_error)
    }
    .await;
    match result {
        Ok(rows) => {
            let orders: Vec<_> = rows.iter().map(|r| order_json(&shop, r)).collect();
            answer(
                &shop,
                StatusCode::OK,
                json!({ "orders": orders, "served_by": shop.name }),
            )
        }
        Err(e) => failed(&shop, e),
    }
}
