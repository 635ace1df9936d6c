//! `list`: page through the service list (`ServiceListRequest`), as a console or an SDK's
//! `getServicesOfServer` does, one page at a time on one connection, and check the pages add
//! up: every name once, as many as the count the server gave.

use std::collections::HashSet;
use std::time::Instant;

use serde::Deserialize;
use serde_json::json;
use wire::payload::json_str;

use super::Ctx;
use crate::cli::ListArgs;
use crate::stats::{OpError, Recorder, Report};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    #[serde(default)]
    count: u64,
    #[serde(default)]
    service_names: Vec<String>,
}

fn page_request(ctx: &Ctx, page_no: u64, page_size: u32) -> Vec<u8> {
    format!(
        "{{\"headers\":{{}},\"requestId\":\"\",\"namespace\":{},\"groupName\":{},\"serviceName\":\"\",\"pageNo\":{page_no},\"pageSize\":{page_size},\"selector\":\"\",\"module\":\"naming\"}}",
        json_str(&ctx.names.namespace),
        json_str(&ctx.names.group)
    )
    .into_bytes()
}

/// Runs `list`.
pub async fn run(a: &ListArgs) -> Result<Report, String> {
    let ctx = Ctx::new(&a.common)?;
    if a.page_size == 0 {
        return Err("--page-size must be > 0".into());
    }
    let (conns, _) = ctx.connect(&ctx.grpc_addrs, 1, None, "connect").await?;
    let conn = conns.into_iter().flatten().next().ok_or("no connection")?;
    let mut rec = Recorder::new();
    let mut seen: HashSet<String> = HashSet::new();
    let (mut duplicates, mut first_count) = (0u64, None);
    let mut last_count: u64;
    let start = Instant::now();
    let mut page_no = 1u64;
    loop {
        let t0 = Instant::now();
        let r = conn
            .request(
                "ServiceListRequest",
                page_request(&ctx, page_no, a.page_size),
            )
            .await
            .and_then(|reply| {
                serde_json::from_slice::<Page>(&reply.body).map_err(|_| OpError::Decode)
            });
        rec.record(&r, t0.elapsed());
        let page = match r {
            Ok(p) => p,
            Err(e) => return Err(format!("page {page_no}: {}", e.kind())),
        };
        first_count.get_or_insert(page.count);
        last_count = page.count;
        let n = page.service_names.len();
        for name in page.service_names {
            if !seen.insert(name) {
                duplicates += 1;
            }
        }
        if n < a.page_size as usize || (a.pages > 0 && page_no >= a.pages) {
            break;
        }
        page_no += 1;
    }
    let took = start.elapsed();
    println!(
        "list: {page_no} pages of {} in {:.2} s, {} names ({duplicates} duplicates), count {} -> {}",
        a.page_size,
        took.as_secs_f64(),
        seen.len(),
        first_count.unwrap_or(0),
        last_count
    );
    let mut report = Report::new("list", "page", rec, took);
    report.extra("pages", json!(page_no));
    report.extra("page_size", json!(a.page_size));
    report.extra("names", json!(seen.len()));
    report.extra("duplicates", json!(duplicates));
    report.extra("count_first", json!(first_count.unwrap_or(0)));
    report.extra("count_last", json!(last_count));
    Ok(report)
}
